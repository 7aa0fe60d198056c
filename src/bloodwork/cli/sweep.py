"""`bloodwork sweep`: a grid of runs in parallel, on threads here or on a Ray cluster; resumable."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer

from bloodwork.console import console, csv, err_console, progress
from bloodwork.errors import BloodworkError, check_writable, user_values
from bloodwork.kernel.config import load_config
from bloodwork.sweep import Sweep, SweepSpec, cells


def sweep(
    tasks: Annotated[str, typer.Option(help="Comma-separated task ids or folders.")],
    models: Annotated[str, typer.Option(help="Comma-separated model specs.")] = "local:smollm2",
    chaos: Annotated[str, typer.Option(help="Profiles (off,default,heavy,FILE) or KIND=RATE entries; "
                                            "separate entries with ';' when an entry has commas.")] = "default",
    seeds: Annotated[str, typer.Option(help="Seeds: 0-3,7.")] = "0",
    ticks: Annotated[int | None, typer.Option(help="Maximum ticks per run; overrides $BLOODWORK_TICKS, "
                                              "which overrides --config [default: 60].", show_default=False)] = None,
    panic_budget: Annotated[int | None, typer.Option(help="Panics before a run dies; overrides "
                                                     "$BLOODWORK_PANIC_BUDGET, which overrides --config [default: 3].",
                                                     show_default=False)] = None,
    workers: Annotated[int, typer.Option(help="Runs in parallel (they share one loaded model per spec); with "
                                              "--engine ray, the CPUs of the Ray instance the sweep starts.")] = 2,
    out: Annotated[Path, typer.Option(help="Sweep directory (run it again to resume).")] = Path("runs/sweep"),
    config: Annotated[Path | None, typer.Option(help="Kernel config YAML applied to every run.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Cap on generated tokens per call (local models).")]
    = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature of every run, seeded per run and "
                                                      "call (recorded in run.json and on dataset rows); 0 or "
                                                      "absent = greedy.", min=0)] = None,
    engine: Annotated[str, typer.Option(help="local (threads in this process) or ray (a Ray cluster).")] = "local",
    ray_address: Annotated[str | None, typer.Option(help="Ray only: the cluster (default RAY_ADDRESS; without "
                                                         "either, a local Ray instance lives for this sweep).")]
    = None,
    shared_out: Annotated[bool, typer.Option(help="Ray only: --out is on a filesystem every node shares; runs "
                                                  "write there directly instead of being shipped back.")] = False,
    retries: Annotated[int, typer.Option(help="Ray only: new attempts for a run whose worker or node died.")] = 2,
) -> None:
    """Run a grid of tasks x models x chaos x seeds in parallel; finished runs are kept on a rerun.

    Example: bloodwork sweep --tasks long-haul/ledger --models local:smollm2 --chaos default,heavy --seeds 0-3
    --ticks 60 --workers 2 --out runs/sweep1

    Example (seeded sampling, so seeds differ): bloodwork sweep --tasks long-haul/ledger --seeds 0-3
    --temperature 0.7 --out runs/sweep-t07

    Example (a Ray cluster): bloodwork sweep --tasks long-haul/ledger --models local:smollm2 --seeds 0-63
    --engine ray --ray-address 10.0.0.5:6379 --out runs/sweep2
    """

    if engine not in ("local", "ray"):
        raise BloodworkError(f"--engine {engine!r}: use local or ray")
    if engine == "local" and (ray_address or shared_out or retries != 2):
        raise BloodworkError("--ray-address, --shared-out and --retries apply to --engine ray only")
    spec = _spec(tasks, models, chaos, seeds, ticks=ticks, panic_budget=panic_budget, workers=workers, config=config,
                 max_new_tokens=max_new_tokens, temperature=temperature)
    check_writable(out)
    runner = _runner(spec, out, engine, ray_address=ray_address, shared_out=shared_out, retries=retries)
    results = _watch(runner, spec, out, engine)
    _summary(results, out)


def _spec(tasks: str, models: str, chaos: str, seeds: str, *, ticks: int | None, panic_budget: int | None,
          workers: int, config: Path | None, max_new_tokens: int | None, temperature: float | None) -> SweepSpec:
    """The grid from the options, its kernel settings merged once (defaults < --config < environment < flags)."""
    base = load_config(config, flags={"max_ticks": ticks, "panic_budget": panic_budget},
                       defaults={"max_ticks": SweepSpec.model_fields["ticks"].default})
    options = {"max_new_tokens": max_new_tokens} if max_new_tokens else {}
    with user_values():
        return SweepSpec(tasks=csv(tasks), models=csv(models), chaos=csv(chaos), seeds=_seeds(seeds),
                         ticks=base.max_ticks, panic_budget=base.panic_budget, workers=workers,
                         config=base.model_dump(exclude={"max_ticks", "panic_budget"}), model_options=options,
                         temperature=temperature)


def _seeds(value: str) -> list[int]:
    seeds: list[int] = []
    for part in csv(value):
        lo, sep, hi = part.partition("-")
        try:
            seeds += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
        except ValueError as err:
            raise BloodworkError(f"--seeds {value!r}: use numbers and ranges like 0-3,7") from err
    return seeds


def _runner(spec: SweepSpec, out: Path, engine: str, *, ray_address: str | None, shared_out: bool,
            retries: int) -> Any:
    """A prepared sweep (every task and chaos entry checked, the sweep directory claimed); with Ray, connected."""
    if engine == "local":
        runner: Any = Sweep(spec, out)
        runner.prepare()
        return runner
    from bloodwork.sweep_ray import RaySweep

    runner = RaySweep(spec, out, address=ray_address, shared_out=shared_out, retries=retries)
    runner.prepare()
    try:
        runner.connect()  # a local Ray instance takes seconds to start
    except KeyboardInterrupt:
        runner.close()
        err_console.print("interrupted before any run started")
        raise typer.Exit(130) from None
    return runner


def _watch(runner: Any, spec: SweepSpec, out: Path, engine: str) -> list[Any]:
    """Run what is pending under one bar for the sweep, one per run going on (and, with Ray, one per node)."""
    grid = cells(spec)
    pending = {c.cell_id for c in runner.pending()}
    where = f"{spec.workers} workers" if engine == "local" else f"Ray at {runner.address or 'a local instance'}"
    console.print(f"sweep {out}: {len(grid)} runs, {len(grid) - len(pending)} already finished, {where}")
    with progress("sweep", transient=False) as bar_view:
        view = _SweepView(bar_view, total=len(grid), done=len(grid) - len(pending), ticks=spec.ticks)
        try:
            if engine == "ray":
                return list(runner.run(on_cell=view.on_cell, on_progress=view.on_progress))
            return list(runner.run(on_cell=view.on_cell, on_tick=view.on_tick))
        except KeyboardInterrupt:
            err_console.print("interrupted: rerun the same command to resume")
            raise typer.Exit(130) from None
        finally:
            runner.close()


class _SweepView:
    """The bars of a sweep: the whole grid, each run going on, and with Ray each node."""

    def __init__(self, bar_view: Any, *, total: int, done: int, ticks: int) -> None:
        self.bars, self.total, self.ticks = bar_view, total, ticks
        self.overall = bar_view.add_task("", total=total, completed=done)
        self.lines: dict[str, Any] = {}
        self.nodes: dict[str, Any] = {}

    def on_tick(self, cell_id: str, info: dict[str, Any]) -> None:
        if cell_id not in self.lines:
            self.lines[cell_id] = self.bars.add_task(cell_id[:50], total=self.ticks)
        self.bars.update(self.lines[cell_id], completed=info["tick"] + 1)

    def on_cell(self, res: Any) -> None:
        if res.cell_id in self.lines:
            self.bars.remove_task(self.lines.pop(res.cell_id))
        if res.action != "kept":
            self.bars.advance(self.overall)
            self.bars.update(self.overall, description=f"last: {res.status}")
            if res.error:
                err_console.print(f"[red]{res.cell_id} {res.status}:[/red] {res.error}")

    def on_progress(self, p: Any) -> None:  # the Ray engine: per node, then the runs going on
        for label, n in p.nodes.items():
            if label not in self.nodes:
                self.nodes[label] = self.bars.add_task("", total=self.total)
            self.bars.update(self.nodes[label], completed=n.done,
                             description=f"node {label}: {n.running} running, {n.failed} failed")
        going = {r.cell_id: r for r in p.running}
        for cell_id in [c for c in self.lines if c not in going]:
            self.bars.remove_task(self.lines.pop(cell_id))
        for r in going.values():
            if r.cell_id not in self.lines:
                self.lines[r.cell_id] = self.bars.add_task("", total=self.ticks)
            self.bars.update(self.lines[r.cell_id], completed=0 if r.tick is None else r.tick + 1,
                             description=f"{r.cell_id[:50]} on {r.node}" + (f" (attempt {r.attempt})"
                                                                              if r.attempt > 1 else ""))


def _summary(results: list[Any], out: Path) -> None:
    """Runs by status, retries, and exit 1 if any run could not be run."""
    counts = Counter(r.status for r in results)
    console.print("runs by status: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    retried = [r for r in results if getattr(r, "attempts", 1) > 1]
    if retried:
        console.print(f"retried after a worker or node died: {len(retried)} runs (every attempt: "
                      f"{out}/ray_attempts.jsonl)")
    failed = [r for r in results if r.status == "failed"]
    if failed:
        err_console.print(f"{len(failed)} runs could not be run; rerun the same command to try them again")
        raise typer.Exit(1)
    console.print(f"next: bloodwork extract {out} --out {out}/evidence")
