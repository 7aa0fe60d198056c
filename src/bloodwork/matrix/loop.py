"""The closed-loop part of a matrix row: K chaos runs of one model on each loop task (the held-out tasks).

Answers to frozen states say whether a model can emit a frame; only runs say whether it can keep a task
alive under faults. Each run is a real kernel run (journaled, verifiable, replayable) with seed i; the
figures are counted from their journals and manifests, each with its n and a 95 % interval:

- panics per 100 ticks (all runs' panics over all their ticks; exact Poisson interval);
- ticks before death (over the runs that died; Student-t interval of the mean);
- share of runs that die (Wilson);
- verified progress at the end: the final verifier's partial score (`data.teacher.partial_score`: the share of
  hidden tests passing, the repo-fix stage reached, the ops verdict), its mean with a t interval, and the
  stages reached, counted.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from pydantic import BaseModel, Field

from bloodwork.chronos.journal import read_events
from bloodwork.chronos.records import RecoveryEvent, of_kind
from bloodwork.chronos.run import RunManifest, RunPaths
from bloodwork.data.teacher import partial_score
from bloodwork.evidence.stats import Distribution, MeanCI, Rate, RateCI, distribution, mean_ci, poisson_rate, wilson
from bloodwork.kernel import Kernel, KernelConfig, KernelCrash
from bloodwork.oracles.base import Oracle
from bloodwork.slug import slug
from bloodwork.sweep import chaos_profile
from bloodwork.tasks.registry import load_task


class LoopSpec(BaseModel):
    task: str
    runs: int = Field(description="runs per task")
    ticks: int
    chaos: str
    panic_budget: int = 3
    tasks: list[str] = Field(default_factory=list, description="every loop task (the first is `task`); empty in "
                                                               "matrices made before a row could loop on several")

    def all_tasks(self) -> list[str]:
        return self.tasks or [self.task]


class LoopResult(BaseModel):
    spec: LoopSpec
    run_dirs: list[str]
    statuses: dict[str, int]
    completed: Rate
    died: Rate
    panics: Distribution
    mttr_ticks: Distribution
    ticks: Distribution
    panics_per_100_ticks: RateCI | None = None
    ticks_before_death: MeanCI | None = None
    progress: MeanCI | None = Field(default=None, description="final verifier partial score, 0..1, per run")
    stages: dict[str, int] = Field(default_factory=dict, description="final verifier stage (task: stage) -> runs")
    by_task: dict[str, dict[str, int]] = Field(default_factory=dict, description="task -> status -> runs")


def closed_loop(oracle: Oracle, spec: LoopSpec, out_dir: Path,
                on_run: Callable[[], None] | None = None) -> LoopResult:
    config = KernelConfig(max_ticks=spec.ticks, panic_budget=spec.panic_budget)
    profile = chaos_profile(spec.chaos)
    runs: list[Path] = []
    tasks = spec.all_tasks()
    for task in tasks:
        for seed in range(spec.runs):
            name = f"{slug(oracle.spec)}-{slug(task)}-s{seed}" if len(tasks) > 1 else f"{slug(oracle.spec)}-s{seed}"
            # Every row meets the same fault draws for a task and seed: they are keyed without the model.
            kernel = Kernel.create(load_task(task), oracle, out_dir=out_dir, config=config, seed=seed, chaos=profile,
                                   run_id=name, chaos_key=f"{task}|{spec.chaos}|s{seed}",
                                   command_line=["bloodwork", "matrix", "loop"])
            with suppress(KernelCrash):  # the manifest then says `crashed`, and the row counts it
                kernel.run()
            runs.append(kernel.paths.root)
            if on_run:
                on_run()
    return loop_result(spec, runs)


def loop_result(spec: LoopSpec, runs: list[Path]) -> LoopResult:
    """The row's loop figures, counted from the runs' manifests and journals (also what a recount reads)."""
    statuses: dict[str, int] = {}
    panics, mttr, ticks, before_death, progress = [], [], [], [], []
    stages: dict[str, int] = {}
    by_task: dict[str, dict[str, int]] = {}
    for run in runs:
        m = RunManifest.load(RunPaths(run))
        statuses[m.status.value] = statuses.get(m.status.value, 0) + 1
        per_task = by_task.setdefault(m.task, {})
        per_task[m.status.value] = per_task.get(m.status.value, 0) + 1
        events = read_events(RunPaths(run).journal)
        panics.append(sum(1 for e in events if e.kind == "panic"))
        mttr += [e.data.mttr_ticks for e in of_kind(events, RecoveryEvent)]
        ticks.append(m.ticks)
        if m.status.value == "died":
            before_death.append(m.ticks)
        score = partial_score(m.verifier)
        progress.append(score if score is not None else 0.0)  # a run without a verdict verified nothing
        stage = f"{m.task}: {(m.verifier or {}).get('stage') or 'no verdict'}"
        stages[stage] = stages.get(stage, 0) + 1
    return LoopResult(spec=spec, run_dirs=[str(r) for r in runs], statuses=statuses,
                      completed=wilson(statuses.get("completed", 0), len(runs)),
                      died=wilson(statuses.get("died", 0), len(runs)), panics=distribution(panics),
                      mttr_ticks=distribution(mttr), ticks=distribution(ticks),
                      panics_per_100_ticks=poisson_rate(sum(panics), sum(ticks)),
                      ticks_before_death=mean_ci(before_death), progress=mean_ci(progress),
                      stages=dict(sorted(stages.items())), by_task=dict(sorted(by_task.items())))
