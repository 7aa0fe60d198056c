"""`bloodwork sweep`: a grid of runs (tasks x models x chaos x seeds), in parallel, resumable.

All workers live in one process and share one oracle per model spec: an embedded model is loaded once
(~400 MB) instead of once per worker, and its engine decodes the workers' concurrent calls as one batch.
Everything else runs in parallel too: sandboxed commands, verifiers, journaling. A sweep directory holds
`sweep.json` (the grid) and `runs/<cell_id>/` per cell; running the same sweep again skips finished
cells, resumes interrupted ones and starts the rest.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bloodwork.chaos.plan import ChaosProfile, apply_overrides, load_profile, parse_rates
from bloodwork.chronos.files import atomic_write
from bloodwork.chronos.run import RunManifest, RunPaths, RunStatus
from bloodwork.errors import BloodworkError
from bloodwork.kernel import Kernel, KernelConfig, KernelCrash
from bloodwork.oracles.base import Oracle
from bloodwork.oracles.registry import make_oracle
from bloodwork.slug import slug
from bloodwork.tasks.registry import load_task

TERMINAL = {RunStatus.COMPLETED.value, RunStatus.DIED.value, RunStatus.MAX_TICKS.value, RunStatus.CRASHED.value}


class SweepError(BloodworkError, ValueError):
    """The sweep's grid is invalid, or the directory holds a different sweep."""


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tasks: list[str] = Field(min_length=1)
    models: list[str] = Field(min_length=1)
    chaos: list[str] = Field(min_length=1, description="profile names or KIND=RATE[,KIND=RATE] entries")
    seeds: list[int] = Field(min_length=1)
    ticks: int = Field(default=60, ge=1)
    panic_budget: int = Field(default=3, ge=1)
    workers: int = Field(default=2, ge=1)
    config: dict[str, Any] = Field(default_factory=dict, description="kernel config overrides")
    model_options: dict[str, Any] = Field(default_factory=dict)
    temperature: float | None = Field(default=None, ge=0, description="sampling temperature of every run (seeded "
                                      "per run and call); None or 0 = greedy")

    def grid_key(self) -> dict[str, Any]:
        """What makes two sweeps the same sweep (the worker count does not)."""
        return self.model_dump(exclude={"workers"} | ({"temperature"} if self.temperature is None else set()))

    def oracle_options(self, seed: int) -> dict[str, Any]:
        """The options every run's oracle gets (and its manifest records): the run's seed, the sweep's model
        options, and the temperature when one is set (the seed then drives the sampling, call by call)."""
        extra = {} if self.temperature is None else {"temperature": self.temperature}
        return {"seed": seed, **self.model_options, **extra}


class Cell(BaseModel):
    cell_id: str
    task: str
    model: str
    chaos: str
    seed: int

    @property
    def chaos_key(self) -> str:
        """What the cell's fault draws are keyed by: task, chaos and seed, not the model. Every model of a sweep
        meets the same draws, and a scripted model's file path (part of the run id) cannot change them."""
        return f"{self.task}|{self.chaos}|s{self.seed}"


class CellResult(BaseModel):
    cell_id: str
    status: str
    ticks: int
    cause_of_death: str | None = None
    action: str
    error: str | None = None


def _config_tag(spec: SweepSpec) -> str:
    """A non-default kernel config puts its hash into the run ids: two sweeps that differ only by config
    (a context policy, say) must not make runs with the same id, which extract and profile count once."""
    default = KernelConfig().model_dump(exclude={"max_ticks", "panic_budget"})
    if not spec.config or spec.config == default:
        return ""
    return "__k" + hashlib.sha256(json.dumps(spec.config, sort_keys=True).encode()).hexdigest()[:8]


def _temperature_tag(spec: SweepSpec) -> str:
    """Sampled runs get their temperature in their ids: a greedy and a sampled sweep of one grid must not make
    runs with the same id (a dataset or extract over both would count one of them only)."""
    return f"__t{spec.temperature:g}" if spec.temperature else ""


def cells(spec: SweepSpec) -> list[Cell]:
    tag = _temperature_tag(spec) + _config_tag(spec)
    return [Cell(cell_id=f"{slug(t, 40, digest=True)}__{slug(m, 40, digest=True)}__{slug(c, 24, digest=True)}__s{s}"
                         f"{tag}", task=t, model=m, chaos=c, seed=s)
            for t in spec.tasks for m in spec.models for c in spec.chaos for s in spec.seeds]


def chaos_profile(entry: str) -> ChaosProfile:
    """A profile name or file, or `KIND=RATE,KIND=RATE` on top of `off`."""
    if "=" not in entry:
        return load_profile(entry)
    rates = parse_rates(entry.split(","), f"chaos entry {entry!r}")
    return apply_overrides(ChaosProfile(name=entry), rates, env={}).model_copy(update={"name": entry})


def _cell_state(run_dir: Path) -> str | None:
    paths = RunPaths(run_dir)
    if not paths.registers.is_file():
        return None
    manifest = RunManifest.load(paths)
    return manifest.status.value


class Sweep:
    def __init__(self, spec: SweepSpec, out: Path) -> None:
        self.spec = spec
        self.out = out
        self.runs = out / "runs"
        self._oracles: dict[str, Oracle] = {}
        self._oracle_lock = threading.Lock()
        self._kernels: dict[str, Kernel] = {}
        self._stopping = False
        # What each run's manifest records as the command that made it (the Ray engine's nodes name the driver's).
        self.command_line = ["bloodwork", "sweep", str(out)]
        # Validate everything that can be wrong before any run starts.
        self.profiles = {c: chaos_profile(c) for c in spec.chaos}
        self.tasks = {t: load_task(t) for t in spec.tasks}
        self.config = KernelConfig.model_validate({**spec.config, "max_ticks": spec.ticks,
                                                   "panic_budget": spec.panic_budget})

    def prepare(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.runs.mkdir(exist_ok=True)
        saved = self.out / "sweep.json"
        if saved.is_file():
            before = SweepSpec.model_validate_json(saved.read_text())
            if before.grid_key() != self.spec.grid_key():
                raise SweepError(f"{self.out} holds a different sweep; choose another --out")
        atomic_write(saved, self.spec.model_dump_json(indent=2))

    def oracle(self, spec: str, seed: int) -> Oracle:
        key = f"{spec}|{seed}"
        with self._oracle_lock:
            if key not in self._oracles:
                self._oracles[key] = make_oracle(spec, **self.spec.oracle_options(seed))
            return self._oracles[key]

    def pending(self) -> list[Cell]:
        return [c for c in cells(self.spec) if _cell_state(self.runs / c.cell_id) not in TERMINAL]

    def run_cell(self, cell: Cell, on_tick: Callable[[dict[str, Any]], None] | None = None) -> CellResult:
        run_dir = self.runs / cell.cell_id
        state = _cell_state(run_dir)
        if state in TERMINAL:
            m = RunManifest.load(RunPaths(run_dir))
            return CellResult(cell_id=cell.cell_id, status=m.status.value, ticks=m.ticks,
                              cause_of_death=m.cause_of_death, action="kept")
        task = load_task(cell.task)
        oracle = self.oracle(cell.model, cell.seed)
        if state is None:  # never started, or killed before its first commit (create replaces that)
            kernel = Kernel.create(task, oracle, out_dir=self.runs, config=self.config, seed=cell.seed,
                                   chaos=self.profiles[cell.chaos], run_id=cell.cell_id, chaos_key=cell.chaos_key,
                                   command_line=self.command_line,
                                   model_options=self.spec.oracle_options(cell.seed))
            action = "ran"
        else:
            kernel = Kernel.resume(run_dir, task, oracle)
            action = "resumed"
        self._kernels[cell.cell_id] = kernel
        kernel.on_tick = on_tick
        if self._stopping:
            kernel.stop("sweep interrupted")
        try:
            result = kernel.run()
        except KernelCrash as err:
            return CellResult(cell_id=cell.cell_id, status="crashed", ticks=kernel.registers.tick, action=action,
                              error=str(err))
        finally:
            self._kernels.pop(cell.cell_id, None)
        return CellResult(cell_id=cell.cell_id, status=result.status.value, ticks=result.ticks,
                          cause_of_death=result.cause_of_death, action=action)

    def stop(self) -> None:
        """Ask every running cell to stop after its current tick (it can be resumed later)."""
        self._stopping = True
        for kernel in list(self._kernels.values()):
            kernel.stop("sweep interrupted")

    def run(self, on_cell: Callable[[CellResult], None] | None = None,
            on_tick: Callable[[str, dict[str, Any]], None] | None = None) -> list[CellResult]:
        self.prepare()
        todo = cells(self.spec)
        results: list[CellResult] = []
        with ThreadPoolExecutor(max_workers=self.spec.workers, thread_name_prefix="cell") as pool:
            futures = {pool.submit(self._run_watched, c, on_tick): c for c in todo}
            try:
                for future in as_completed(futures):
                    res = future.result()
                    results.append(res)
                    if on_cell:
                        on_cell(res)
            except KeyboardInterrupt:
                self.stop()
                for future in futures:
                    future.cancel()
                raise
        return results

    def _run_watched(self, cell: Cell, on_tick: Callable[[str, dict[str, Any]], None] | None) -> CellResult:
        if self._stopping:
            return CellResult(cell_id=cell.cell_id, status="not started", ticks=0, action="skipped")
        callback = (lambda info: on_tick(cell.cell_id, info)) if on_tick else None
        return self.run_cell(cell, callback)

    def close(self) -> None:
        for oracle in self._oracles.values():
            oracle.close()
