"""`bloodwork run|resume|verify|show`: one run, from its start to its timeline."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from bloodwork.chaos.plan import apply_overrides, load_profile, parse_rates
from bloodwork.chronos.journal import JournalHead
from bloodwork.chronos.run import RunPaths
from bloodwork.cli.edge import load_run
from bloodwork.console import console, err_console, progress
from bloodwork.errors import BloodworkError, check_writable
from bloodwork.kernel import Kernel, RunResult
from bloodwork.kernel.config import load_config
from bloodwork.oracles.registry import make_oracle
from bloodwork.tasks.registry import load_task


def run(
    task: Annotated[str, typer.Argument(help="Task id (built-in or on BLOODWORK_TASK_PATH, see `bloodwork tasks "
                                             "list`), a task folder, or a repo-fix instance file (YAML/JSON).")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model spec, e.g. local:smollm2, scripted:FILE.")] =
    "local:smollm2",
    ticks: Annotated[int | None, typer.Option("--ticks", "-n", help="Maximum ticks; overrides $BLOODWORK_TICKS, "
                                              "which overrides --config [default: 200].", show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the fault plan and the model's sampling.")] = 0,
    panic_budget: Annotated[int | None, typer.Option(help="Panics before the run dies; overrides "
                                                     "$BLOODWORK_PANIC_BUDGET, which overrides --config [default: 3].",
                                                     show_default=False)] = None,
    out: Annotated[Path, typer.Option(help="Folder that receives the run directory.")] = Path("runs"),
    run_id: Annotated[str | None, typer.Option(help="Name of the run directory (default: generated).")] = None,
    chaos: Annotated[str, typer.Option(help="Chaos profile: off, default, heavy, or a YAML file.")] = "off",
    rate: Annotated[list[str] | None, typer.Option(help="Override one chaos rate, KIND=RATE (repeatable).")] = None,
    config: Annotated[Path | None, typer.Option(help="Kernel config YAML (thresholds, context, limits); the "
                                                "environment and explicit flags override it.")] = None,
    policy: Annotated[str | None, typer.Option(help="Context policy: pinned, window, masked, unbounded.")] = None,
    budget: Annotated[int | None, typer.Option(help="Context budget in tokens.")] = None,
    probe_every: Annotated[int | None, typer.Option(help="Ask a goal probe every K ticks (0 = off).")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Cap on generated tokens per call (local models).")]
    = None,
) -> None:
    """Run TASK with MODEL until it halts, dies or runs out of ticks.

    TASK is a built-in id (`long-haul/ledger`, `repo-fix/<instance>`, `ops-blindbox/<scenario>`), the id of a
    task on BLOODWORK_TASK_PATH (e.g. `repo-fix/<id>` after `bloodwork tasks import`), a task folder, or a
    repo-fix instance file. A repo-fix task prepares its environment first (built once, then cached).

    Example: bloodwork run long-haul/ledger --model scripted:expert.py --ticks 60 --chaos default --seed 7
    """
    cfg = load_config(config, flags={"max_ticks": ticks, "panic_budget": panic_budget, "context.policy": policy,
                                     "context.budget_tokens": budget, "probe_every": probe_every})
    profile = apply_overrides(load_profile(chaos), parse_rates(rate or [], "--rate"))
    the_task = load_task(task)
    options: dict[str, Any] = {"seed": seed} | ({"max_new_tokens": max_new_tokens} if max_new_tokens else {})
    oracle = make_oracle(model, **options)
    check_writable(out)
    out.mkdir(parents=True, exist_ok=True)  # the folder the user named is there even if the run is refused
    kernel = Kernel.create(the_task, oracle, out_dir=out, config=cfg, seed=seed, chaos=profile, run_id=run_id,
                           command_line=["bloodwork", *sys.argv[1:]], model_options=options)
    _print_result(_drive(kernel))


def resume(run_dir: Annotated[Path, typer.Argument(help="The run directory to continue.")]) -> None:
    """Continue an interrupted or killed run from its last committed tick.

    Example: bloodwork resume runs/long-haul-ledger-scripted-s0-20261127-101500-ab12
    """
    _, manifest = load_run(run_dir)
    task = load_task(manifest.task_source or manifest.task)
    oracle = make_oracle(manifest.model, **manifest.oracle.get("options", {}))
    _print_result(_drive(Kernel.resume(run_dir, task, oracle)))


def verify(
    run_dir: Annotated[Path, typer.Argument(help="A run directory or a death bundle.")],
    head: Annotated[str | None, typer.Option(help="The head SEQ:HASH you hold from elsewhere (e.g. a bundle's "
                                             "manifest.json); the journal must end exactly there.")] = None,
) -> None:
    """Check the journal's hash chain and that it ends exactly at its committed head. Exit 1 if not.

    The head comes from registers.json (a run) or manifest.json (a death bundle, whose files are checked
    against their sha256 too); `--head` pins one you keep elsewhere. A torn last line is only reported.

    Example: bloodwork verify runs/my-run --head 41:5d1c0f...
    """
    from bloodwork.evidence.extract import verify_run_or_bundle

    paths = RunPaths(run_dir)
    if not paths.journal.is_file():
        raise BloodworkError(f"{run_dir} has no .journal.log")
    pinned = _parse_head(head) if head else None
    report = verify_run_or_bundle(run_dir)
    if report.ok and pinned is not None and pinned != report.head:
        report = report.model_copy(update={"ok": False, "first_bad_seq": None, "reason": (
            f"the journal ends at the head {report.head} named by {report.anchor}, not at --head {pinned}")})
    if report.torn_tail:
        console.print("note: the last line is torn (a crash mid-write); it is ignored")
    if not report.ok:
        where = f" at seq {report.first_bad_seq} (line {report.first_bad_line})" if report.first_bad_seq is not None \
            else ""
        err_console.print(f"[red]journal broken[/red]{where}: {report.reason}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    console.print(f"journal ok: {report.events} events, ending at the committed head named by {report.anchor}"
                  f"{' and --head' if pinned else ''}: {report.events - 1}:{report.last_hash}")


def _parse_head(text: str) -> JournalHead:
    seq, _, digest = text.partition(":")
    try:
        return JournalHead(seq=int(seq), hash=digest.lower())
    except ValueError as err:
        raise BloodworkError(f"--head {text!r}: give SEQ:HASH, the last event's sequence number and its 64 hex "
                             "digits") from err


def show(
    run_dir: Annotated[Path, typer.Argument(help="The run directory.")],
    last: Annotated[int, typer.Option(help="Show only the last N ticks (0 = all).")] = 0,
) -> None:
    """A readable timeline of a run: ticks, ops, traps, panics, recoveries, death.

    Example: bloodwork show runs/my-run --last 40
    """
    from bloodwork.chronos.timeline import STYLES, timeline

    if last < 0:
        raise BloodworkError(f"--last must be 0 (all) or a number of ticks, got {last}")
    paths, manifest = load_run(run_dir)
    console.print(f"[bold]{manifest.run_id}[/bold]  task {manifest.task}  model {manifest.model} "
                  f"({manifest.provenance.value})  seed {manifest.seed}  chaos {manifest.chaos.get('name')}  "
                  f"sandbox {manifest.sandbox.get('kind')}")
    table = Table("tick", "event", "detail", show_lines=False, pad_edge=False)
    for row in timeline(paths.journal, from_tick=max(0, manifest.ticks - last) if last else 0):
        table.add_row(str(row.tick), f"[{STYLES[row.kind]}]{row.kind}[/]" if row.kind in STYLES else row.kind,
                      row.detail)
    console.print(table)
    console.print(f"status {manifest.status.value}, {manifest.ticks} ticks"
                  + (f", cause of death {manifest.cause_of_death}" if manifest.cause_of_death else ""))

def _drive(kernel: Kernel) -> RunResult:
    total = kernel.config.max_ticks
    with progress(kernel.manifest.run_id[:40], transient=False) as bar_view:
        bar = bar_view.add_task("", total=total, completed=kernel.registers.tick)
        traps: Counter[str] = Counter()

        def on_tick(info: dict[str, Any]) -> None:
            traps.update(info["traps"])
            shown = " ".join(f"{k}:{v}" for k, v in traps.most_common(3))
            registers = kernel.registers
            bar_view.update(bar, completed=info["tick"] + 1,
                            description=f"panics {registers.panics} budget {registers.panic_budget_left} {shown}")

        kernel.on_tick = on_tick
        return kernel.run()


def _print_result(result: RunResult) -> None:
    death = f", cause of death {result.cause_of_death}" if result.cause_of_death else ""
    console.print(f"run [bold]{result.run_id}[/bold]: status [bold]{result.status.value}[/bold] after "
                  f"{result.ticks} ticks{death}")
    if result.verifier:
        console.print(f"verifier: {result.verifier.get('summary')}")
    console.print(f"files: {result.run_dir}")
