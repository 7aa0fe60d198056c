"""`bloodwork ...`: the command line. User mistakes end in one red line and exit code 2, never a traceback."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.table import Column, Table

from bloodwork import isa
from bloodwork.chaos.plan import ChaosConfigError, apply_overrides, load_profile
from bloodwork.chronos.journal import JournalHead
from bloodwork.chronos.run import RunManifest, RunPaths
from bloodwork.console import console, err_console, fail, one_line, progress
from bloodwork.kernel import Kernel, KernelCrash, KernelError, RunResult
from bloodwork.kernel.config import ConfigError, load_config
from bloodwork.oracles.base import OracleConfigError
from bloodwork.oracles.registry import make_oracle
from bloodwork.tasks.base import TaskError
from bloodwork.tasks.registry import list_tasks, load_task

app = typer.Typer(help="Run long-horizon LLM agents under seeded chaos and harvest what went wrong.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
tasks_app = typer.Typer(help="Built-in and user tasks.", no_args_is_help=True)
isa_app = typer.Typer(help="The syscall frame the model must emit.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")
app.add_typer(isa_app, name="isa")

USER_ERRORS = (TaskError, OracleConfigError, ChaosConfigError, ConfigError, KernelError, ValidationError, OSError)


class UserError(Exception):
    """A mistake in what the user asked for: one line, exit 2."""


def _drive(kernel: Kernel) -> RunResult:
    total = kernel.config.max_ticks
    with progress(kernel.manifest.run_id[:40], transient=False) as bar_view:
        bar = bar_view.add_task("", total=total, completed=kernel.registers.tick)
        traps: Counter[str] = Counter()

        def on_tick(info: dict[str, Any]) -> None:
            traps.update(info["traps"])
            shown = " ".join(f"{k}:{v}" for k, v in traps.most_common(3))
            R = kernel.registers
            bar_view.update(bar, completed=info["tick"] + 1,
                            description=f"panics {R.panics} budget {R.panic_budget_left} {shown}")

        kernel.on_tick = on_tick
        return kernel.run()


def _run_to_end(kernel: Kernel) -> None:
    """Drive a created or resumed kernel to its end and print the outcome; a crash exits 3."""
    try:
        result = _drive(kernel)
    except KernelCrash as err:
        fail(str(err), code=3)
    _print_result(result)


def _print_result(result: RunResult) -> None:
    death = f", cause of death {result.cause_of_death}" if result.cause_of_death else ""
    console.print(f"run [bold]{result.run_id}[/bold]: status [bold]{result.status.value}[/bold] after "
                  f"{result.ticks} ticks{death}")
    if result.verifier:
        console.print(f"verifier: {result.verifier.get('summary')}")
    console.print(f"files: {result.run_dir}")


@app.command()
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
    try:
        cfg = load_config(config, flags={"max_ticks": ticks, "panic_budget": panic_budget, "context.policy": policy,
                                         "context.budget_tokens": budget, "probe_every": probe_every})
        profile = apply_overrides(load_profile(chaos), _parse_rates(rate or []))
        the_task = load_task(task)
        options: dict[str, Any] = {"seed": seed} | ({"max_new_tokens": max_new_tokens} if max_new_tokens else {})
        oracle = make_oracle(model, **options)
        if not _writable(out):
            raise UserError(f"output folder {out} is not writable")
        kernel = Kernel.create(the_task, oracle, out_dir=out, config=cfg, seed=seed, chaos=profile, run_id=run_id,
                               command_line=["bloodwork", *sys.argv[1:]], model_options=options)
    except (UserError, *USER_ERRORS) as err:
        fail(one_line(err))
    _run_to_end(kernel)


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".bloodwork-write-probe"
        probe.write_text("")
        probe.unlink()
    except OSError:
        return False
    return True


def _parse_rates(items: list[str]) -> dict[str, float]:
    rates = {}
    for item in items:
        kind, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--rate expects KIND=RATE, got {item!r}")
        try:
            rates[kind.strip()] = float(value)
        except ValueError as err:
            raise UserError(f"--rate {item!r}: {value!r} is not a number") from err
    return rates


def _load_run(run_dir: Path) -> tuple[RunPaths, RunManifest]:
    paths = RunPaths(run_dir)
    if not paths.manifest.is_file():
        raise UserError(f"{run_dir} is not a run directory (no run.json)")
    return paths, RunManifest.load(paths)


@app.command()
def resume(run_dir: Annotated[Path, typer.Argument(help="The run directory to continue.")]) -> None:
    """Continue an interrupted or killed run from its last committed tick.

    Example: bloodwork resume runs/long-haul-ledger-scripted-s0-20261127-101500-ab12
    """
    try:
        _, manifest = _load_run(run_dir)
        task = load_task(manifest.task_source or manifest.task)
        oracle = make_oracle(manifest.model, **manifest.oracle.get("options", {}))
        kernel = Kernel.resume(run_dir, task, oracle)
    except (UserError, *USER_ERRORS) as err:
        fail(one_line(err))
    _run_to_end(kernel)


@app.command()
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
        fail(f"{run_dir} has no .journal.log")
    try:
        pinned = _parse_head(head) if head else None
    except UserError as err:
        fail(str(err))
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
        raise UserError(f"--head {text!r}: give SEQ:HASH, the last event's sequence number and its 64 hex digits") \
            from err


@app.command()
def show(
    run_dir: Annotated[Path, typer.Argument(help="The run directory.")],
    last: Annotated[int, typer.Option(help="Show only the last N ticks (0 = all).")] = 0,
) -> None:
    """A readable timeline of a run: ticks, ops, traps, panics, recoveries, death.

    Example: bloodwork show runs/my-run --last 40
    """
    if last < 0:
        fail(f"--last must be 0 (all) or a number of ticks, got {last}")
    try:
        paths, manifest = _load_run(run_dir)
    except (UserError, *USER_ERRORS) as err:
        fail(one_line(err))
    from bloodwork.chronos.journal import iter_events

    console.print(f"[bold]{manifest.run_id}[/bold]  task {manifest.task}  model {manifest.model} "
                  f"({manifest.provenance.value})  seed {manifest.seed}  chaos {manifest.chaos.get('name')}  "
                  f"sandbox {manifest.sandbox.get('kind')}")
    table = Table(show_lines=False, pad_edge=False)
    for col in ("tick", "event", "detail"):
        table.add_column(col)
    events = list(iter_events(paths.journal))
    if last:
        first_tick = max(0, manifest.ticks - last)
        events = [e for e in events if e.tick >= first_tick]
    styles = {"trap": "yellow", "panic": "bold red", "death": "bold white on red", "recovery": "green",
              "chaos": "magenta", "halt": "bold green"}
    for e in events:
        if e.kind == "tick":
            detail = f"{e.data.op or '-'}" + ("" if e.data.strict_ok else
                                              f"  [{e.data.violation or 'oracle error'}]")
        elif e.kind == "trap":
            detail = f"{e.data.kind}{' (injected)' if e.data.injected else ''}: {e.data.detail[:90]}"
        elif e.kind == "evict":
            detail = f"{e.data.section} of tick {e.data.tick} ({e.data.tokens} tokens): {e.data.reason}"
        else:
            detail = json.dumps(e.data.model_dump())[:110]
        table.add_row(str(e.tick), f"[{styles.get(e.kind, '')}]{e.kind}[/]" if e.kind in styles else e.kind, detail)
    console.print(table)
    console.print(f"status {manifest.status.value}, {manifest.ticks} ticks"
                  + (f", cause of death {manifest.cause_of_death}" if manifest.cause_of_death else ""))


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(";" if ";" in value else ",") if v.strip()]


def _seeds(value: str) -> list[int]:
    seeds: list[int] = []
    for part in _csv(value):
        lo, sep, hi = part.partition("-")
        try:
            seeds += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
        except ValueError as err:
            raise UserError(f"--seeds {value!r}: use numbers and ranges like 0-3,7") from err
    return seeds


@app.command()
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
    from bloodwork.sweep import Sweep, SweepError, SweepSpec

    if engine not in ("local", "ray"):
        fail(f"--engine {engine!r}: use local or ray")
    if engine == "local" and (ray_address or shared_out or retries != 2):
        fail("--ray-address, --shared-out and --retries apply to --engine ray only")
    try:
        base = load_config(config, flags={"max_ticks": ticks, "panic_budget": panic_budget},
                           defaults={"max_ticks": SweepSpec.model_fields["ticks"].default})
        options = {"max_new_tokens": max_new_tokens} if max_new_tokens else {}
        spec = SweepSpec(tasks=_csv(tasks), models=_csv(models), chaos=_csv(chaos), seeds=_seeds(seeds),
                         ticks=base.max_ticks, panic_budget=base.panic_budget, workers=workers,
                         config=base.model_dump(exclude={"max_ticks", "panic_budget"}), model_options=options,
                         temperature=temperature)
        if engine == "ray":
            from bloodwork.sweep_ray import RaySweep

            runner: Any = RaySweep(spec, out, address=ray_address, shared_out=shared_out, retries=retries)
        else:
            runner = Sweep(spec, out)
        runner.prepare()
        if engine == "ray":
            try:
                runner.connect()  # a local Ray instance takes seconds to start
            except KeyboardInterrupt:
                runner.close()
                err_console.print("interrupted before any run started")
                raise typer.Exit(130) from None
    except (UserError, SweepError, *USER_ERRORS) as err:
        fail(one_line(err))
    from bloodwork.sweep import cells

    grid = cells(spec)
    pending = {c.cell_id for c in runner.pending()}
    where = f"{workers} workers" if engine == "local" else f"Ray at {runner.address or 'a local instance'}"
    console.print(f"sweep {out}: {len(grid)} runs, {len(grid) - len(pending)} already finished, {where}")
    with progress("sweep", transient=False) as bar_view:
        overall = bar_view.add_task("", total=len(grid), completed=len(grid) - len(pending))
        lines: dict[str, Any] = {}
        nodes: dict[str, Any] = {}

        def on_tick(cell_id: str, info: dict[str, Any]) -> None:
            if cell_id not in lines:
                lines[cell_id] = bar_view.add_task(cell_id[:50], total=spec.ticks)
            bar_view.update(lines[cell_id], completed=info["tick"] + 1)

        def on_cell(res: Any) -> None:
            if res.cell_id in lines:
                bar_view.remove_task(lines.pop(res.cell_id))
            if res.action != "kept":
                bar_view.advance(overall)
                bar_view.update(overall, description=f"last: {res.status}")
                if res.error:
                    err_console.print(f"[red]{res.cell_id} {res.status}:[/red] {res.error}")

        def on_progress(p: Any) -> None:  # the Ray engine: per node, then the runs going on
            for label, n in p.nodes.items():
                if label not in nodes:
                    nodes[label] = bar_view.add_task("", total=len(grid))
                bar_view.update(nodes[label], completed=n.done,
                                description=f"node {label}: {n.running} running, {n.failed} failed")
            going = {r.cell_id: r for r in p.running}
            for cell_id in [c for c in lines if c not in going]:
                bar_view.remove_task(lines.pop(cell_id))
            for r in going.values():
                if r.cell_id not in lines:
                    lines[r.cell_id] = bar_view.add_task("", total=spec.ticks)
                bar_view.update(lines[r.cell_id], completed=0 if r.tick is None else r.tick + 1,
                                description=f"{r.cell_id[:50]} on {r.node}" + (f" (attempt {r.attempt})"
                                                                                 if r.attempt > 1 else ""))

        try:
            if engine == "ray":
                results = runner.run(on_cell=on_cell, on_progress=on_progress)
            else:
                results = runner.run(on_cell=on_cell, on_tick=on_tick)
        except KeyboardInterrupt:
            err_console.print("interrupted: rerun the same command to resume")
            raise typer.Exit(130) from None
        finally:
            runner.close()
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


@app.command()
def extract(
    inputs: Annotated[list[Path], typer.Argument(help="Run directories, sweep directories, or folders of runs.")],
    out: Annotated[Path, typer.Option(help="Where the evidence goes.")] = Path("runs/evidence"),
) -> None:
    """Write the thrashing journal, death bundles and the sweep report from raw run files.

    Example: bloodwork extract runs/sweep1 --out runs/sweep1/evidence
    """
    from bloodwork.chronos.run import RunsNotFound
    from bloodwork.evidence.extract import extract as run_extract

    try:
        # The arguments as parsed, not sys.argv: called in-process (the demo), argv is the caller's.
        generator = "bloodwork extract " + " ".join([*map(str, inputs), "--out", str(out)])
        report = run_extract(inputs, out, generator=generator)
    except (RunsNotFound, *USER_ERRORS) as err:
        fail(one_line(err))
    console.print(f"{report.runs} runs; by status: " + ", ".join(f"{k} {v}" for k, v in report.runs_by_status.items()))
    console.print(f"deaths: {len(report.deaths)}; natural events from real-model runs: {report.natural_events}; "
                  f"injected: {report.injected_events}")
    console.print(f"strict violation rate: {report.strict_violation}")
    console.print(f"thrashing journal: {out / 'thrashing.journal'}")
    console.print(f"death bundles:     {out / 'deaths'}")
    console.print(f"sweep report:      {out / 'sweep_report.md'} (+ .json)")


@app.command()
def replay(
    run_dir: Annotated[Path, typer.Argument(help="A run directory or a death bundle.")],
    out: Annotated[Path, typer.Option(help="Folder that receives the replayed run.")] = Path("runs/replays"),
) -> None:
    """Re-run a run from its raw outputs and seeds; exit 1 if its ticks, traps or death differ, or if its journal
    does not verify (a cut or rewritten journal is refused, never "reproduced").

    Example: bloodwork replay runs/sweep1/evidence/deaths/<run_id>
    """
    from bloodwork.evidence.replay import ReplayRefused, replay_run

    try:
        _load_run(run_dir)
        report = replay_run(run_dir, out)
    except ReplayRefused as err:
        fail(f"refused: {err}", code=1)
    except (UserError, *USER_ERRORS) as err:
        fail(one_line(err))
    except KernelCrash as err:
        fail(str(err), code=3)
    if report.same:
        console.print(f"reproduced: {report.compared} events identical ({report.original_status}); "
                      f"replay in {report.replay_dir}")
        return
    err_console.print(f"[red]diverged[/red] at event {report.first_divergence}; replay in {report.replay_dir}")
    raise typer.Exit(1)


@app.command()
def profile(
    runs: Annotated[list[Path], typer.Argument(help="Run directories, sweeps, or folders of runs.")],
    out: Annotated[Path, typer.Option(help="Where the profile and heatmaps go.")] = Path("runs/profile"),
    compare: Annotated[bool, typer.Option(help="Compare runs that differ only by context policy.")] = False,
    semantic: Annotated[bool, typer.Option(help="Score probes with the offline embedding model too.")] = True,
) -> None:
    """The context-degradation profile: late forgetting, eviction effectiveness, refetches, heatmaps.

    Example: bloodwork profile runs/profiling --compare --out runs/profiling/profile
    """
    from bloodwork.evidence.profile import ProfileError, profile_runs

    try:
        report = profile_runs(runs, out, compare, generator="bloodwork profile " + " ".join(sys.argv[2:]),
                              semantic=semantic)
    except (ProfileError, *USER_ERRORS) as err:
        fail(one_line(err))
    for run in report.runs:
        f, e = run.forgetting, run.eviction
        verdict = "n/a" if f.flagged is None else ("FORGETS" if f.flagged else "no late forgetting")
        onset = f" from tick {f.onset_tick}" if f.flagged and f.onset_tick is not None else ""
        console.print(f"{run.run_id} ({run.provenance}, {e.policy}): {verdict}{onset}; context max {e.max_tokens} / "
                      f"p95 {e.p95_tokens} of {e.budget} tokens ({e.ticks_over_budget} ticks over), slope "
                      f"{e.slope_second_half.slope} tok/tick (2nd half); refetch {e.refetch}")
    console.print(f"profile: {out / 'context_decay_profile.json'}\nheatmaps: {out}/*.png")


@app.command()
def serve(
    model: Annotated[str, typer.Option("--model", "-m", help="A local spec: local:smollm2[+constrained][+lora=PATH].")]
    = "local:smollm2",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8765,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    max_new_tokens: Annotated[int | None, typer.Option(help="Cap on every request's max_tokens (default 192).")]
    = None,
) -> None:
    """Serve a local model as an OpenAI-compatible API (/v1/chat/completions, /v1/models, streaming, tool
    calls, JSON answers by constrained decoding; what it cannot honour is a 400).

    Example: bloodwork serve --model local:smollm2 --port 8765   # then OPENAI_BASE_URL=http://127.0.0.1:8765/v1
    """
    from bloodwork.oracles.serve import ServeError
    from bloodwork.oracles.serve import serve as run_server

    try:
        run_server(model, host=host, port=port, **({"max_new_tokens": max_new_tokens} if max_new_tokens else {}))
    except (ServeError, *USER_ERRORS) as err:
        fail(one_line(err))


@tasks_app.command("list")
def tasks_list() -> None:
    """List the built-in tasks, then those found on BLOODWORK_TASK_PATH.

    Example: BLOODWORK_TASK_PATH=tasks/mine bloodwork tasks list
    """
    table = Table(Column("id", no_wrap=True), "kind", "synthetic", "from", "verifier")
    try:
        tasks = list_tasks()
    except USER_ERRORS as err:
        fail(one_line(err))
    for task in tasks:
        meta = task.metadata
        table.add_row(task.id, str(meta.get("kind")), str(meta.get("synthetic")),
                      str(meta.get("task_folder", "built-in")), str(meta.get("verifier", ""))[:60])
    console.print(table)


@tasks_app.command("import")
def tasks_import(
    file: Annotated[Path, typer.Argument(help="SWE-bench-style JSONL, one instance a line (fields: see README, "
                                              "'Bring your own repo-fix instance').")],
    repo_dir: Annotated[Path, typer.Option(help="A local git checkout holding every row's base_commit.")],
    out: Annotated[Path, typer.Option(help="Folder that receives one task folder per instance.")] =
    Path("tasks/imported"),
) -> None:
    """Import SWE-bench-style instances into self-contained task folders (instance.yaml + base.tar.gz).

    Required per row: instance_id, repo, base_commit, problem_statement, FAIL_TO_PASS, patch, test_patch.
    Every row is checked first (fields, base commit, and that pytest collects every test id in the
    instance's own environment, built and cached on first use); a bad row refuses the whole file.
    Run an imported task by path (`bloodwork run OUT/ID`) or by id with BLOODWORK_TASK_PATH=OUT.

    Example: bloodwork tasks import rows.jsonl --repo-dir ~/src/click --out tasks/click
    """
    from bloodwork.tasks.repofix.importer import import_instances

    try:
        with err_console.status("checking the rows (the first import of a repo/version builds its environment)"):
            imported = import_instances(file, repo_dir, out)
    except USER_ERRORS as err:
        fail(one_line(err))
    for item in imported:
        for warning in item.warnings:
            err_console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
    table = Table("instance", "folder", "test ids collected", "environment")
    for item in imported:
        table.add_row(item.instance_id, str(item.folder), str(item.collected), str(item.environment.get("key", "")))
    console.print(table)
    console.print(f"imported {len(imported)} instances into {out}; run one with "
                  f"`BLOODWORK_TASK_PATH={out} bloodwork run repo-fix/{imported[0].instance_id}`", highlight=False)


@tasks_app.command("validate")
def tasks_validate(
    ids: Annotated[list[str] | None, typer.Argument(
        help="Instance ids (built-in or on BLOODWORK_TASK_PATH), instance files or task folders "
             "(default: every built-in instance).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON (every run's evidence).")]
    = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show each pytest run: command, exit code, "
                                                                  "pytest's own errors, output tail.")] = False,
) -> None:
    """Check each repo-fix instance: every test id collected, the base fails FAIL_TO_PASS, the gold patch passes all.

    Exit 1 if any instance fails its check.

    Example: bloodwork tasks validate sqlparse-784 --verbose
    """
    from bloodwork.tasks.registry import find_instance
    from bloodwork.tasks.repofix.validate import validate_instances

    try:
        chosen = [find_instance(i) for i in ids] if ids else None
        with err_console.status("validating (the first run downloads the sdists and builds the environments)"):
            results = validate_instances(chosen)
    except USER_ERRORS as err:
        fail(one_line(err))
    if as_json:
        print(json.dumps([r.model_dump(mode="json", exclude=None if verbose else {"runs"}) for r in results],
                         indent=2))
    else:
        table = Table("instance", "ok", "all collected", "base fails F2P", "gold passes all", "problems", "seconds")
        for r in results:
            table.add_row(r.instance_id, "yes" if r.ok else "[red]NO[/red]", str(r.collected_all),
                          str(r.base_fails_f2p), str(r.gold_passes_all), "; ".join(r.problems)[:300],
                          f"{r.duration_s:.1f}")
        console.print(table)
        if verbose:
            for r in results:
                console.rule(f"{r.instance_id}: environment {r.environment.get('key', '(none)')}")
                for run in r.runs:
                    console.print(f"[bold]{run.tree}[/bold] exit {run.exit_code}"
                                  f"{' (timed out)' if run.timed_out else ''}: {run.command}", highlight=False)
                    for line in run.errors:
                        console.print(f"  {line}", highlight=False, markup=False)
                    console.print(run.output_tail[-1500:], highlight=False, markup=False)
    if not all(r.ok for r in results):
        raise typer.Exit(1)


@isa_app.command("schema")
def isa_schema() -> None:
    """Print the frame's JSON Schema (generated from the code).

    Example: bloodwork isa schema > frame.schema.json
    """
    print(json.dumps(isa.json_schema(), indent=2))


def _register_upper_layers() -> None:
    """Dataset, training, matrix and campaign commands live with their packages; they add themselves here."""
    from bloodwork.campaign.cli import register as register_campaign
    from bloodwork.data.cli import register as register_data
    from bloodwork.matrix.cli import register as register_matrix

    register_data(app)
    register_matrix(app)
    register_campaign(app)


_register_upper_layers()


def main() -> None:
    try:
        app()
    except UserError as err:
        err_console.print(f"[red]error:[/red] {err}")
        sys.exit(2)


if __name__ == "__main__":
    main()
