"""The closed-loop part of a matrix row: K short chaos runs of one model on one task.

Answers to frozen states say whether a model can emit a frame; only runs say whether it can keep a task
alive under faults. Each run is a real kernel run (journaled, verifiable, replayable) with seed i; the
figures are counted from their journals and manifests.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from pydantic import BaseModel

from bloodwork.chronos.journal import read_events
from bloodwork.chronos.run import RunManifest, RunPaths
from bloodwork.evidence.stats import Distribution, Rate, distribution, wilson
from bloodwork.kernel import Kernel, KernelConfig, KernelCrash
from bloodwork.oracles.base import Oracle
from bloodwork.sweep import chaos_profile
from bloodwork.tasks.registry import load_task


class LoopSpec(BaseModel):
    task: str
    runs: int
    ticks: int
    chaos: str
    panic_budget: int = 3


class LoopResult(BaseModel):
    spec: LoopSpec
    run_dirs: list[str]
    statuses: dict[str, int]
    completed: Rate
    died: Rate
    panics: Distribution
    mttr_ticks: Distribution
    ticks: Distribution


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:60]


def closed_loop(oracle: Oracle, spec: LoopSpec, out_dir: Path,
                on_run: Callable[[], None] | None = None) -> LoopResult:
    config = KernelConfig(max_ticks=spec.ticks, panic_budget=spec.panic_budget)
    profile = chaos_profile(spec.chaos)
    runs: list[Path] = []
    for seed in range(spec.runs):
        kernel = Kernel.create(load_task(spec.task), oracle, out_dir=out_dir, config=config, seed=seed, chaos=profile,
                               run_id=f"{slug(oracle.spec)}-s{seed}", command_line=["bloodwork", "matrix", "loop"])
        with suppress(KernelCrash):  # the manifest then says `crashed`, and the row counts it
            kernel.run()
        runs.append(kernel.paths.root)
        if on_run:
            on_run()
    return loop_result(spec, runs)


def loop_result(spec: LoopSpec, runs: list[Path]) -> LoopResult:
    """The row's loop figures, counted from the runs' manifests and journals (also what a recount reads)."""
    statuses: dict[str, int] = {}
    panics, mttr, ticks = [], [], []
    for run in runs:
        m = RunManifest.load(RunPaths(run))
        statuses[m.status.value] = statuses.get(m.status.value, 0) + 1
        events = read_events(RunPaths(run).journal)
        panics.append(sum(1 for e in events if e.kind == "panic"))
        mttr += [e.data["mttr_ticks"] for e in events if e.kind == "recovery"]
        ticks.append(m.ticks)
    return LoopResult(spec=spec, run_dirs=[str(r) for r in runs], statuses=statuses,
                      completed=wilson(statuses.get("completed", 0), len(runs)),
                      died=wilson(statuses.get("died", 0), len(runs)), panics=distribution(panics),
                      mttr_ticks=distribution(mttr), ticks=distribution(ticks))
