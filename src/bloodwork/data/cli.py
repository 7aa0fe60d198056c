"""`bloodwork dataset build`, `bloodwork fork`, `bloodwork train sft|dpo`: `register(app)` adds them."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from bloodwork.console import console, err_console, fail, progress
from bloodwork.data.mix import DEFAULT_MIX, parse_mix
from bloodwork.errors import BloodworkError, check_writable, user_values

if TYPE_CHECKING:
    from bloodwork.data.formats import DatasetStats


class TrainKind(StrEnum):
    SFT = "sft"
    DPO = "dpo"


def dataset_build(
    inputs: Annotated[list[Path], typer.Argument(help="Run directories, sweep directories, fork directories.")],
    out: Annotated[Path, typer.Option(help="The dataset directory to write.")],
    mix: Annotated[str, typer.Option(help="Pool mix: golden=0.4,recovery=0.4,rejected=0.2 or shares G/R/X like "
                                          "15/65/20.")] = DEFAULT_MIX,
    test_fraction: Annotated[float, typer.Option(help="Share of each task's runs held out for test.")] = 0.25,
    holdout_task: Annotated[list[str] | None, typer.Option(help="A task whose runs all go to test (repeatable).")]
    = None,
    seed: Annotated[int, typer.Option(help="Seed of the split and of the mix's row choice.")] = 0,
    include_scripted: Annotated[bool, typer.Option(help="Also mine scripted, replayed and expert runs.")] = False,
    near_threshold: Annotated[float, typer.Option(help="Shingle overlap above which two rows are near "
                                                       "duplicates.")] = 0.9,
    size: Annotated[int | None, typer.Option(help="Cap on rows per split after the mix.")] = None,
    estimate_lengths: Annotated[bool, typer.Option(help="Count tokens at 4 chars/token even if the model "
                                                        "is installed.")] = False,
    provenance: Annotated[list[str] | None, typer.Option(help="Keep only rows of this provenance (fnmatch "
                                                              "pattern, repeatable): real, 'teacher:*', ...")] = None,
) -> None:
    """Build SFT / DPO / KTO files from real runs: golden, failure-recovery and rejected pools, mixed.

    Example: bloodwork dataset build runs/sweep1 runs/forks --out runs/data1 --mix 40/40/20
    --holdout-task repo-fix/sqlparse-784 --holdout-task ops-blindbox/kill9
    """
    from bloodwork.data.build import BuildOptions, build_dataset

    with user_values():
        options = BuildOptions(mix=parse_mix(mix), test_fraction=test_fraction, holdout_tasks=holdout_task or [],
                               seed=seed, include_scripted=include_scripted, near_threshold=near_threshold,
                               size=size, exact_lengths=not estimate_lengths, provenance=provenance or [])
    check_writable(out)
    with progress("dataset") as bar:
        task = bar.add_task("reading runs", total=None)

        def on_run(i: int, n: int) -> None:
            bar.update(task, completed=i + 1, total=n)

        stats = build_dataset(inputs, out, options, generator="bloodwork dataset build " + " ".join(sys.argv[3:]),
                              on_run=on_run)
    _print_build(stats, out)
    if not stats.leak_check.ok:
        fail(f"split leak: {stats.leak_check.shared_prompts} shared states, groups {stats.leak_check.shared_groups}",
             code=1)


def _print_build(stats: DatasetStats, out: Path) -> None:
    """What went in, what dedup and the mix removed, each split's make-up, where the files are."""
    console.print(f"{stats.runs_used} runs used; excluded: {stats.runs_excluded or 'none'}")
    console.print("candidates: " + ", ".join(f"{k} {v}" for k, v in stats.candidates.items())
                  + f"; removed: exact {stats.dedup.exact}, near {stats.dedup.near}, contradictory "
                  f"{stats.dedup.contradictory}, cross-split {stats.dedup.cross_split}")
    console.print("distinct states (before -> after dedup): " + ", ".join(
        f"{k} {d.before} -> {d.after}" for k, d in stats.distinct_states.items() if not k.startswith("input ")))
    if stats.filtered_out:
        console.print(f"provenance filter {stats.provenance_filter}: removed {stats.filtered_out}")
    for split, rep in stats.mix.items():
        achieved = ", ".join(f"{p} {v:.0%}" if v is not None else f"{p} -" for p, v in rep.achieved.items())
        console.print(f"{split}: {rep.total} rows ({achieved}); limited by {rep.limiting}")
        console.print("  by provenance: " + ", ".join(f"{k} {v:.0%}" for k, v in rep.achieved_by_provenance.items()))
        if rep.total == 0:
            err_console.print(f"[yellow]warning:[/yellow] the {split} split is empty: pool {rep.limiting} has no rows "
                              "for its share; change --mix or add runs")
    console.print(f"DPO pairs: {stats.dpo.fork_pairs} from forks ({stats.dpo.fork_pairs_withheld} withheld: their "
                  f"state is also a test state), {stats.dpo.same_prompt_pairs} same-prompt; "
                  f"split leak check: {'ok' if stats.leak_check.ok else 'LEAK'}")
    if stats.train_length is not None:
        over = sum(stats.train_length.over.values())
        console.print(f"train length: {stats.train_length.chosen} tokens ({stats.train_length.rule}); rows over it: "
                      f"{over} (train_length.json)")
    console.print(f"files: {out} (stats in failure_recovery_dataset_stats.json, sha256s in manifest.json)")


def fork(
    run_dir: Annotated[Path, typer.Argument(help="The run to fork (with --all-traps: a sweep, a folder of runs or a "
                                                 "run).")],
    tick: Annotated[int | None, typer.Option(help="The tick whose exact context is asked again.")] = None,
    all_traps: Annotated[bool, typer.Option("--all-traps", help="Fork every trap state (the tick after each trap) "
                                                                "of every run under RUN_DIR; resumable.")] = False,
    every: Annotated[int | None, typer.Option(help="With --all-traps: also every K-th tick.", min=1)] = None,
    samples: Annotated[int, typer.Option(help="How many answers to sample (0 with --teacher: the teacher only).")]
    = 4,
    horizon: Annotated[int, typer.Option(help="Ticks each branch runs from the fork tick on.")] = 3,
    teacher: Annotated[list[str] | None, typer.Option(help="A teacher asked at each state: expert:TASK, an API "
                                                           "model, or 'expert' for each run's own task's reference "
                                                           "policy (repeatable; the one that fits the run's task "
                                                           "answers). Kept only if it verifiably recovers.")] = None,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (> 0).")] = 0.8,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling.")] = 0.95,
    seed: Annotated[int, typer.Option(help="Sampling seed (each sample gets its own call seed).")] = 0,
    model: Annotated[str | None, typer.Option(help="Model spec (default: the run's own).")] = None,
    include_scripted: Annotated[bool, typer.Option(help="With --all-traps: also fork scripted, replayed and expert "
                                                        "runs.")] = False,
    out: Annotated[Path | None, typer.Option(help="Fork directory (default runs/forks/<run>-t<T>, or "
                                                  "runs/forks/<name>-all with --all-traps).")] = None,
) -> None:
    """Re-ask the model K times at tick T's exact context, run each answer a few ticks, label and pair them;
    with --all-traps, at every trap state of a whole sweep; with --teacher, a teacher's answer too.

    Example: bloodwork fork runs/sweep1/runs/<run_id> --tick 12 --samples 4 --horizon 3 --out runs/forks/f1

    Example: bloodwork fork runs/sweep1 --all-traps --samples 4 --horizon 2 --teacher expert --out runs/forks/all
    """
    if all_traps:
        _fork_all(run_dir, every=every, samples=samples, horizon=horizon, teachers=teacher or [],
                  temperature=temperature, top_p=top_p, seed=seed, model=model, include_scripted=include_scripted,
                  out=out or Path("runs/forks") / f"{run_dir.name}-all")
        return
    if tick is None:
        raise BloodworkError("give --tick T (one state), or --all-traps (every trap state of every run)")
    if every is not None or include_scripted:
        raise BloodworkError("--every and --include-scripted apply to --all-traps only")
    _fork_one(run_dir, tick, samples=samples, horizon=horizon, teachers=teacher or [], temperature=temperature,
              top_p=top_p, seed=seed, model=model, target=out or Path("runs/forks") / f"{run_dir.name}-t{tick}")


def _fork_one(run_dir: Path, tick: int, *, samples: int, horizon: int, teachers: list[str], temperature: float,
              top_p: float, seed: int, model: str | None, target: Path) -> None:
    """One state: the model (and a teacher that fits the run's task) asked again, each answer run a few ticks."""
    from bloodwork.data.fork import fork_run
    from bloodwork.data.fork_all import teacher_for

    mentor = None
    if teachers:
        from bloodwork.chronos.run import RunManifest, RunPaths

        mentor = teacher_for(RunManifest.load(RunPaths(run_dir)).task, teachers) if (
            run_dir / "run.json").is_file() else teachers[0]
        if mentor is None:
            raise BloodworkError(f"no --teacher fits the task of {run_dir}")
    check_writable(target)
    with progress("fork") as bar:
        task = bar.add_task("", total=2 * samples + 1 + 2 * bool(mentor))

        def on_step(message: str) -> None:
            bar.update(task, advance=1, description=message)

        record = fork_run(run_dir, tick, samples, out=target, horizon=horizon, temperature=temperature,
                          top_p=top_p, seed=seed, model=model, teacher=mentor, on_step=on_step)
    for c in record.candidates:
        kept = "" if c.kept is None else ("  KEPT" if c.kept else "  not kept")
        console.print(f"{c.source} {c.index}: {c.label:<10} {c.polarity:<8} op {c.op or '-':<10} "
                      f"{'strict' if c.strict_ok else c.violation or 'error'}"
                      f"{'  CONTRADICTORY' if c.contradictory else ''}{kept}")
    console.print(f"{len(record.pairs)} pairs, {len(record.refused)} refused; {target / 'fork.json'}")


def _fork_all(inputs: Path, *, every: int | None, samples: int, horizon: int, teachers: list[str],
              temperature: float, top_p: float, seed: int, model: str | None, include_scripted: bool,
              out: Path) -> None:
    from bloodwork.data.fork_all import INDEX_FILE, fork_all

    if not inputs.exists():
        raise BloodworkError(f"{inputs} does not exist")
    check_writable(out)
    with progress("fork --all-traps", transient=False) as bar:
        task = bar.add_task("finding trap states", total=None)

        def on_progress(done: int, total: int, message: str) -> None:
            bar.update(task, completed=done, total=total, description=message[:90])

        index = fork_all([inputs], out, samples=samples, horizon=horizon, every=every, teachers=teachers,
                         temperature=temperature, top_p=top_p, seed=seed, model=model,
                         include_scripted=include_scripted, on_progress=on_progress)
    t = index.totals
    console.print(f"{index.runs} runs, {t.get('states', 0)} states: {t.get('forked', 0)} forked, "
                  f"{t.get('failed', 0)} failed; {t.get('pairs', 0)} pairs; teacher kept "
                  f"{t.get('teacher_kept', 0)}/{t.get('teacher_asked', 0)}"
                  + (f"; runs skipped: {index.runs_skipped}" if index.runs_skipped else ""))
    for s in [s for s in index.states if s.status == "failed"][:10]:
        err_console.print(f"[yellow]{s.run_id} t{s.tick}:[/yellow] {s.error}")
    console.print(f"index: {out / INDEX_FILE}; rerun the same command to resume")


def train(
    kind: Annotated[TrainKind, typer.Argument(help="sft or dpo.")],
    data: Annotated[Path, typer.Option(help="Dataset directory (from bloodwork dataset build).")],
    out: Annotated[Path, typer.Option(help="Adapter directory to write.")],
    base: Annotated[str, typer.Option(help="Base model spec.")] = "local:smollm2",
    rank: Annotated[int, typer.Option(help="LoRA rank.")] = 16,
    alpha: Annotated[int, typer.Option(help="LoRA alpha.")] = 32,
    dropout: Annotated[float, typer.Option(help="LoRA dropout.")] = 0.05,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default 2e-4 SFT, 5e-5 DPO).")] = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 30,
    batch: Annotated[int, typer.Option(help="Rows per forward pass (memory grows with it).")] = 1,
    grad_accum: Annotated[int, typer.Option(help="Forward passes per optimizer step.")] = 4,
    max_length: Annotated[int | None, typer.Option(help="Longest row in tokens; longer rows are dropped, not cut "
                                                   "[default: the dataset's train_length.json, measured by dataset "
                                                   "build; else 2048].", show_default=False)] = None,
    beta: Annotated[float, typer.Option(help="DPO beta.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    threads: Annotated[int, typer.Option(help="CPU threads for torch.")] = 2,
) -> None:
    """Train a LoRA adapter with TRL on a dataset's train split; it loads as local:smollm2+lora=OUT.

    Example: bloodwork train sft --data runs/data1 --base local:smollm2 --out runs/adapters/sft1 --steps 30
    """
    from bloodwork.data.train import TrainConfig
    from bloodwork.data.train import train as run_training

    with user_values():
        cfg = TrainConfig(kind=kind.value, base=base, rank=rank, alpha=alpha, dropout=dropout, lr=lr, steps=steps,
                          batch=batch, grad_accum=grad_accum, max_length=max_length, beta=beta, seed=seed,
                          threads=threads)
    check_writable(out)
    with progress(f"train {kind.value}") as bar:
        task = bar.add_task("loading", total=steps)

        def on_step(step: int, loss: float | None) -> None:
            bar.update(task, completed=step, description=f"loss {loss:.4f}" if loss is not None else "")

        record = run_training(data, out, cfg, on_step=on_step)
    losses = [s.loss for s in record.steps]
    console.print(f"{len(record.steps)} steps in {record.duration_s:.1f} s ({record.seconds_per_step['mean']} s/step "
                  f"mean) on {record.device}; loss {losses[0]:.4f} -> {losses[-1]:.4f}" if losses else "no steps")
    console.print(f"{record.data['rows_used']} rows used, {record.data['dropped_too_long']} dropped as too long")
    console.print(f"adapter: {out}  (use it as local:smollm2+lora={out})")


def register(app: typer.Typer) -> None:
    """Add `dataset build`, `fork` and `train` to the bloodwork CLI."""
    dataset_app = typer.Typer(help="Training datasets from real runs.", no_args_is_help=True)
    dataset_app.command("build")(dataset_build)
    app.add_typer(dataset_app, name="dataset")
    app.command("fork")(fork)
    app.command("train")(train)
