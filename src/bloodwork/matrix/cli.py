"""`bloodwork matrix --models ... --eval-set FILE` and `bloodwork matrix freeze`: `register(app)` adds them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from bloodwork.console import console, csv, progress
from bloodwork.errors import BloodworkError, check_writable, user_values

if TYPE_CHECKING:
    from bloodwork.matrix.report import MatrixReport
    from bloodwork.matrix.run import MatrixOptions


def _labels(items: list[str], specs: list[str]) -> dict[str, str]:
    """SPEC=TEXT, where SPEC is one of --models (a spec may itself hold '=', as in +lora=PATH)."""
    labels = {}
    for item in items:
        spec = max((s for s in specs if item.startswith(s + "=")), key=len, default=None)
        if spec is None or not item[len(spec) + 1:]:
            raise BloodworkError(f"--label expects SPEC=TEXT with SPEC one of --models, got {item!r}")
        labels[spec] = item[len(spec) + 1:]
    return labels


def matrix(
    ctx: typer.Context,
    models: Annotated[str | None, typer.Option(help="Comma-separated model specs (';' if a spec holds commas).")]
    = None,
    eval_set: Annotated[Path | None, typer.Option(help="A frozen eval set (bloodwork matrix freeze).")] = None,
    out: Annotated[Path, typer.Option(help="Folder for model_matrix.json/.md/.png, answers and loop runs.")]
    = Path("runs/matrix"),
    max_new_tokens: Annotated[int, typer.Option(help="Token cap per answer, every model alike.")] = 96,
    loop_task: Annotated[list[str] | None, typer.Option(help="Task of the closed-loop runs (repeatable: the held-out "
                                                             "tasks) [default: long-haul/ledger].",
                                                        show_default=False)] = None,
    loop_runs: Annotated[int, typer.Option(help="Closed-loop chaos runs per model and loop task (0 = none).")] = 2,
    loop_ticks: Annotated[int, typer.Option(help="Ticks per closed-loop run.")] = 12,
    loop_chaos: Annotated[str, typer.Option(help="Chaos of the closed-loop runs (profile or KIND=RATE,...).")]
    = "default",
    panic_budget: Annotated[int, typer.Option(help="Panic budget of the closed-loop runs.")] = 3,
    label: Annotated[list[str] | None, typer.Option(help="Row label, SPEC=TEXT (repeatable).")] = None,
    allow_mixed: Annotated[bool, typer.Option(help="Keep earlier rows scored on another eval set or ISA, "
                                                   "marked as not comparable.")] = False,
    fresh: Annotated[bool, typer.Option(help="Start a new matrix instead of adding rows to OUT's.")] = False,
) -> None:
    """Score models side by side on a frozen eval set (raw-text validity, op agreement, latency), then run each
    a few times under chaos. Rows of models that cannot run stay, with the reason.

    Example: bloodwork matrix --models local:smollm2,openai:local:smollm2 --eval-set runs/eval.jsonl --out runs/m1

    Example (a fine-tuned row in-process and served by bloodwork serve through the OpenAI client, closed loops on
    two held-out tasks): bloodwork matrix --models "local:smollm2;local:smollm2+lora=runs/sft;served:local:smollm2
    +lora=runs/sft" --eval-set runs/eval.jsonl --loop-task repo-fix/sqlparse-784 --loop-task ops-blindbox/kill9
    --loop-runs 8 --loop-ticks 40 --out runs/m2
    """
    if ctx.invoked_subcommand is not None:
        return
    if not models or eval_set is None:
        raise BloodworkError("give --models and --eval-set (see bloodwork matrix --help), or use bloodwork matrix "
                             "freeze")
    from bloodwork.matrix.run import run_matrix

    specs = csv(models)
    options = _options(specs, loop_task or ["long-haul/ledger"], runs=loop_runs, ticks=loop_ticks, chaos=loop_chaos,
                       panic_budget=panic_budget, max_new_tokens=max_new_tokens, labels=_labels(label or [], specs),
                       allow_mixed=allow_mixed, fresh=fresh)
    check_writable(out)
    with progress("matrix") as bar:
        task = bar.add_task("", total=None)
        report = run_matrix(specs, eval_set, out, options, generator="bloodwork matrix " + " ".join(sys.argv[2:]),
                            on_start=lambda n: bar.update(task, total=n), on_tick=lambda: bar.advance(task))
    _print_matrix(report, out)


def _options(specs: list[str], loop_tasks: list[str], *, runs: int, ticks: int, chaos: str, panic_budget: int,
             max_new_tokens: int, labels: dict[str, str], allow_mixed: bool, fresh: bool) -> MatrixOptions:
    """The matrix's options; the loop's tasks and chaos are loaded once here, so a typo stops it before any
    model is asked."""
    from bloodwork.matrix.loop import LoopSpec
    from bloodwork.matrix.run import MatrixOptions

    with user_values():
        loop = LoopSpec(task=loop_tasks[0], tasks=loop_tasks if len(loop_tasks) > 1 else [], runs=runs, ticks=ticks,
                        chaos=chaos, panic_budget=panic_budget)
        options = MatrixOptions(max_new_tokens=max_new_tokens, loop=loop if runs > 0 else None, labels=labels,
                                allow_mixed=allow_mixed, fresh=fresh)
    if runs > 0:
        from bloodwork.sweep import chaos_profile
        from bloodwork.tasks.registry import load_task

        for name in loop_tasks:
            load_task(name)
        chaos_profile(chaos)
    return options


def _print_matrix(report: MatrixReport, out: Path) -> None:
    for row in report.rows:
        loop_text = f"; loop completed {row.loop.completed}, died {row.loop.died}" if row.loop else ""
        if row.scores is None:
            console.print(f"{row.label}: {row.status} ({row.reason}){loop_text}")
            continue
        console.print(f"{row.label}: strict {row.scores.strict_valid}, p50 {row.scores.latency_ms.p50} ms{loop_text}")
    console.print(f"matrix: {out / 'model_matrix.md'} (+ .json, .png)")


def freeze(
    inputs: Annotated[list[Path], typer.Argument(help="Runs or sweeps to draw states from.")],
    out: Annotated[Path, typer.Option(help="The eval set file (JSONL); FILE.meta.json gets its sha256.")],
    n: Annotated[int, typer.Option(help="How many states.")] = 40,
    seed: Annotated[int, typer.Option(help="Seed of the draw.")] = 0,
    holdout_of: Annotated[Path | None, typer.Option(help="A dataset: never draw from its train runs or "
                                                         "states.")] = None,
    include_scripted: Annotated[bool, typer.Option(help="Also draw from scripted, replayed and expert runs.")] = False,
) -> None:
    """Freeze an eval set of recorded states from held-out runs, stored with its sha256.

    Example: bloodwork matrix freeze runs/sweep1 --holdout-of runs/data1 --n 40 --out runs/eval.jsonl
    """
    from bloodwork.matrix.evalset import freeze as run_freeze

    if n < 1:
        raise BloodworkError("--n must be at least 1")
    check_writable(out.parent)
    with progress("freeze") as bar:
        task = bar.add_task("reading runs", total=None)
        meta = run_freeze(inputs, out, n=n, seed=seed, holdout_of=holdout_of, include_scripted=include_scripted,
                          generator="bloodwork matrix freeze " + " ".join(sys.argv[3:]),
                          on_run=lambda i, total: bar.update(task, completed=i + 1, total=total))
    console.print(f"{meta.rows} states from {len(meta.runs)} runs: "
                  + ", ".join(f"{k} {v}" for k, v in sorted(meta.categories.items())))
    console.print(f"eval set: {out} sha256 {meta.sha256}")


def recount(
    matrix_dir: Annotated[Path, typer.Argument(help="A matrix folder (holds model_matrix.json).")],
    write: Annotated[bool, typer.Option(help="Rewrite the matrix files from the recount (e.g. for a figure "
                                             "added since the matrix was made).")] = False,
) -> None:
    """Recompute every figure of a matrix from its raw answers, eval set and loop runs; exit 1 if any differs.

    Example: bloodwork matrix recount runs/m1
    """
    from bloodwork.matrix.recount import recount as run_recount

    result = run_recount(matrix_dir, write=write)
    console.print(f"recounted {result.rows_recounted} rows: {result.answers_rescored} answers scored again from "
                  f"their raw text, {result.loop_runs_recounted} loop runs counted again from their journals")
    for d in result.differences[:20]:
        console.print(f"[red]differs[/red] {d.row}: {d.figure}: stored {d.stored!r}, recounted {d.recounted!r}",
                      highlight=False)
    if len(result.differences) > 20:
        console.print(f"... and {len(result.differences) - 20} more differences")
    if result.added:
        verb = "written" if write else "not stored (use --write to add them)"
        console.print(f"{len(result.added)} figures {verb}, e.g. {result.added[0]}")
    if result.differences:
        if write:
            console.print(f"{len(result.differences)} differences: the matrix files now hold the recount")
            return
        raise typer.Exit(1)
    console.print("every stored figure agrees with the raw files")


def register(app: typer.Typer) -> None:
    """Add `matrix` (with its `freeze` and `recount` subcommands) to the bloodwork CLI."""
    matrix_app = typer.Typer(invoke_without_command=True)  # the help is `matrix`'s docstring
    matrix_app.callback()(matrix)
    matrix_app.command("freeze")(freeze)
    matrix_app.command("recount")(recount)
    app.add_typer(matrix_app, name="matrix")
