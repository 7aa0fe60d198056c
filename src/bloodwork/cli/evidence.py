"""`bloodwork extract|replay|profile`: evidence from raw run files."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from bloodwork.cli.edge import load_run
from bloodwork.console import console, err_console, fail
from bloodwork.errors import check_writable


def extract(
    inputs: Annotated[list[Path], typer.Argument(help="Run directories, sweep directories, or folders of runs.")],
    out: Annotated[Path, typer.Option(help="Where the evidence goes.")] = Path("runs/evidence"),
) -> None:
    """Write the thrashing journal, death bundles and the sweep report from raw run files.

    Example: bloodwork extract runs/sweep1 --out runs/sweep1/evidence
    """
    from bloodwork.evidence.extract import extract as run_extract

    # The arguments as parsed, not sys.argv: called in-process (the demo), argv is the caller's.
    generator = "bloodwork extract " + " ".join([*map(str, inputs), "--out", str(out)])
    check_writable(out)
    report = run_extract(inputs, out, generator=generator)
    console.print(f"{report.runs} runs; by status: " + ", ".join(f"{k} {v}" for k, v in report.runs_by_status.items()))
    console.print(f"deaths: {len(report.deaths)}; natural events from real-model runs: {report.natural_events}; "
                  f"injected: {report.injected_events}")
    console.print(f"strict violation rate: {report.strict_violation}")
    console.print(f"thrashing journal: {out / 'thrashing.journal'}")
    console.print(f"death bundles:     {out / 'deaths'}")
    console.print(f"sweep report:      {out / 'sweep_report.md'} (+ .json)")


def replay(
    run_dir: Annotated[Path, typer.Argument(help="A run directory or a death bundle.")],
    out: Annotated[Path, typer.Option(help="Folder that receives the replayed run.")] = Path("runs/replays"),
) -> None:
    """Re-run a run from its raw outputs and seeds; exit 1 if its ticks, traps or death differ, or if its journal
    does not verify (a cut or rewritten journal is refused, never "reproduced").

    Example: bloodwork replay runs/sweep1/evidence/deaths/<run_id>
    """
    from bloodwork.evidence.replay import ReplayRefused, replay_run

    load_run(run_dir)
    check_writable(out)
    try:
        report = replay_run(run_dir, out)
    except ReplayRefused as err:
        fail(f"refused: {err}", code=1)
    if report.same:
        console.print(f"reproduced: {report.compared} events identical ({report.original_status}); "
                      f"replay in {report.replay_dir}")
        return
    err_console.print(f"[red]diverged[/red] at event {report.first_divergence}; replay in {report.replay_dir}")
    raise typer.Exit(1)


def profile(
    runs: Annotated[list[Path], typer.Argument(help="Run directories, sweeps, or folders of runs.")],
    out: Annotated[Path, typer.Option(help="Where the profile and heatmaps go.")] = Path("runs/profile"),
    compare: Annotated[bool, typer.Option(help="Compare runs that differ only by context policy.")] = False,
    semantic: Annotated[bool, typer.Option(help="Score probes with the offline embedding model too.")] = True,
) -> None:
    """The context-degradation profile: late forgetting, eviction effectiveness, refetches, heatmaps.

    Example: bloodwork profile runs/profiling --compare --out runs/profiling/profile
    """
    from bloodwork.evidence.profile import profile_runs

    check_writable(out)
    report = profile_runs(runs, out, compare, generator="bloodwork profile " + " ".join(sys.argv[2:]),
                          semantic=semantic)
    for run in report.runs:
        f, e = run.forgetting, run.eviction
        verdict = "n/a" if f.flagged is None else ("FORGETS" if f.flagged else "no late forgetting")
        onset = f" from tick {f.onset_tick}" if f.flagged and f.onset_tick is not None else ""
        console.print(f"{run.run_id} ({run.provenance}, {e.policy}): {verdict}{onset}; context max {e.max_tokens} / "
                      f"p95 {e.p95_tokens} of {e.budget} tokens ({e.ticks_over_budget} ticks over), slope "
                      f"{e.slope_second_half.slope} tok/tick (2nd half); refetch {e.refetch}")
    console.print(f"profile: {out / 'context_decay_profile.json'}\nheatmaps: {out}/*.png")
