"""`bloodwork fork SWEEP --all-traps`: a fork at every trap state of every run of a sweep (or run directory).

A *trap state* is a state at which a trap streak is open: from the tick after a trap (natural or injected; the
slice shows the trap frame) up to the tick that recovered, or to the run's end when it never did (the states
where the student kept failing, DAgger's states). That is where failure-recovery rows come from: a sample that
recovers is a recovery row, one that traps or thrashes a rejected row, the two a same-prompt pair; and a
teacher's answer, kept only if it verifiably recovers (`data.teacher`), a relabel. `--every K` adds every
K-th tick as well (golden material and pairs at ordinary states).

Each state is one `fork_run` into `OUT/<run_id>/t<TICK>/`; `OUT/forks.json` indexes them. Resumable: a
state whose `fork.json` exists is kept, a state folder without one (a fork killed midway) is made again,
a state that cannot be forked (its run does not replay, its kernel crashed) is recorded with the reason
and the others go on.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from bloodwork.chronos.files import atomic_write
from bloodwork.chronos.run import NOT_MODEL_BEHAVIOUR, RunManifest, RunPaths, find_runs, now_iso, verified_events
from bloodwork.data.fork import FORK_FILE, ForkError, ForkRecord, fork_run, is_fork_artifact
from bloodwork.kernel import KernelCrash

INDEX_FILE = "forks.json"
OWN_EXPERT = "expert"  # --teacher expert: each run's own task's reference policy, expert:<task>


class ForkState(BaseModel):
    run_id: str
    run_dir: str
    task: str
    tick: int
    why: str = Field(description="'after trap KIND at tick T' or 'every K ticks'")
    teacher: str | None = None
    status: Literal["done", "kept", "failed", "pending"] = "pending"
    fork_dir: str = ""
    candidates: int = 0
    pairs: int = 0
    teacher_kept: bool | None = None
    error: str | None = None


class AllForks(BaseModel):
    """`forks.json`: every state forked (or not, with why), and the totals."""

    created_at: str
    updated_at: str
    inputs: list[str]
    options: dict[str, object]
    runs: int
    runs_skipped: dict[str, int]
    states: list[ForkState]
    totals: dict[str, int]


def trap_states(run_dir: Path, every: int | None = None) -> list[tuple[int, str]]:
    """(tick, why) of the states to fork in one run, from its verified journal, in tick order: every tick at which
    a trap streak is open (from the tick after a trap up to the tick that recovered, or the run's last tick),
    and with `every`, every K-th tick."""
    m = RunManifest.load(RunPaths(run_dir))
    events, _ = verified_events(RunPaths(run_dir))
    by_tick: dict[int, list[str]] = {}
    for e in events:
        if e.kind == "trap":
            injected = " (injected)" if e.data.injected else ""
            by_tick.setdefault(e.tick, []).append(f"{e.data.kind}{injected}")
        elif e.kind == "recovery":
            by_tick.setdefault(e.tick, []).append("")  # "" marks the recovery
        elif e.kind == "panic":
            by_tick.setdefault(e.tick, []).append("!")  # "!" marks a panic (it ends the kernel's streak)
    found: dict[int, str] = {}
    streak: str | None = None
    for tick in range(m.ticks):
        if streak is not None:
            found[tick] = streak
        marks = by_tick.get(tick, [])
        if "" in marks:
            streak = None
        traps = [k for k in marks if k not in ("", "!")]
        if "!" in marks:
            # The panic ran the recovery protocol: the kernel's streak is over, so an answer here can progress
            # but not "recover"; the student is still failing, so the state is forked all the same.
            streak = f"after the panic at tick {tick} ({', '.join(traps)}), not recovered since"
        elif traps and (streak is None or streak.startswith("after the panic")):
            streak = f"in a trap streak since tick {tick} ({', '.join(traps)})"
    if every:
        for tick in range(0, m.ticks, every):
            found.setdefault(tick, f"every {every} ticks")
    return sorted(found.items())


def teacher_for(task: str, teachers: list[str]) -> str | None:
    """The teacher that can answer at a state of `task`: its own reference policy for `expert`, an `expert:`
    spec of that very task, else the first model teacher (an API model answers any task)."""
    for spec in teachers:
        if spec == OWN_EXPERT:
            return f"expert:{task}"
        if spec.startswith("expert:"):
            if spec.removeprefix("expert:") == task:
                return spec
            continue
        return spec
    return None


def _state_dir(out: Path, run_id: str, tick: int) -> Path:
    return out / run_id / f"t{tick}"


def _forkable_runs(inputs: list[Path], out: Path, include_scripted: bool, skipped: dict[str, int]) -> list[Path]:
    """The runs under `inputs` whose provenance may be forked, minus fork artifacts (counted in `skipped`)."""
    runs: list[Path] = []
    allowed = {"real"} | (NOT_MODEL_BEHAVIOUR if include_scripted else set())
    out_resolved = out.resolve()
    for run in find_runs(inputs):
        if is_fork_artifact(run) or out_resolved in run.resolve().parents:
            skipped["fork artifacts"] = skipped.get("fork artifacts", 0) + 1
            continue
        provenance = RunManifest.load(RunPaths(run)).provenance.value
        if provenance not in allowed:
            key = f"provenance {provenance} (use --include-scripted)"
            skipped[key] = skipped.get(key, 0) + 1
            continue
        runs.append(run)
    return runs


def _planned_states(runs: list[Path], teachers: list[str], samples: int, every: int | None,
                    skipped: dict[str, int]) -> list[ForkState]:
    """The trap states of each run to fork; a run with no sampling and no teacher for its task is skipped."""
    plan: list[ForkState] = []
    for run in runs:
        m = RunManifest.load(RunPaths(run))
        teacher = teacher_for(m.task, teachers)
        if samples == 0 and teacher is None:
            skipped[f"no teacher for {m.task}"] = skipped.get(f"no teacher for {m.task}", 0) + 1
            continue
        plan += [ForkState(run_id=m.run_id, run_dir=str(run), task=m.task, tick=t, why=why, teacher=teacher)
                 for t, why in trap_states(run, every)]
    return plan


def fork_all(inputs: list[Path], out: Path, *, samples: int, horizon: int, every: int | None = None,
             teachers: list[str] | None = None, temperature: float = 0.8, top_p: float = 0.95, seed: int = 0,
             model: str | None = None, include_scripted: bool = False,
             on_progress: Callable[[int, int, str], None] | None = None) -> AllForks:
    teachers = teachers or []
    if samples < 0 or (samples < 2 and not teachers):
        raise ForkError("--all-traps needs --samples >= 2, or a --teacher (then --samples may be 0)")
    skipped: dict[str, int] = {}
    runs = _forkable_runs(inputs, out, include_scripted, skipped)
    plan = _planned_states(runs, teachers, samples, every, skipped)
    out.mkdir(parents=True, exist_ok=True)
    options: dict[str, object] = {"samples": samples, "horizon": horizon, "every": every, "teachers": teachers,
                                  "temperature": temperature, "top_p": top_p, "seed": seed, "model": model}
    index = AllForks(created_at=now_iso(), updated_at=now_iso(), inputs=[str(p) for p in inputs], options=options,
                     runs=len(runs), runs_skipped=skipped, states=plan, totals={})
    earlier = _earlier_states(out / INDEX_FILE, {(s.run_id, s.tick) for s in plan})
    index.inputs = sorted({*index.inputs, *earlier[0]})
    index.states = earlier[1] + plan  # states of other runs forked into the same folder by an earlier pass
    progress = on_progress or (lambda _i, _n, _msg: None)
    for i, state in enumerate(plan):
        target = _state_dir(out, state.run_id, state.tick)
        state.fork_dir = str(target)
        where = f"{state.run_id} t{state.tick}"
        if (target / FORK_FILE).is_file():
            _summarize(state, ForkRecord.model_validate_json((target / FORK_FILE).read_text()), "kept")
            progress(i + 1, len(plan), f"{where}: kept from an earlier pass")
            continue
        if target.exists():
            shutil.rmtree(target)  # a fork killed midway: made again from the start
        progress(i, len(plan), f"{where}: {state.why}")

        def on_step(message: str, where: str = where, i: int = i) -> None:
            progress(i, len(plan), f"{where}: {message}")

        try:
            record = fork_run(Path(state.run_dir), state.tick, samples, out=target, horizon=horizon,
                              temperature=temperature, top_p=top_p, seed=seed, model=model, teacher=state.teacher,
                              on_step=on_step,
                              command_line=["bloodwork", "fork", state.run_dir, "--tick", str(state.tick),
                                            "--samples", str(samples), "--horizon", str(horizon)]
                              + (["--teacher", state.teacher] if state.teacher else []))
        except (ForkError, KernelCrash, OSError) as err:
            state.status, state.error = "failed", str(err).splitlines()[0][:300]
        else:
            _summarize(state, record, "done")
        index.updated_at = now_iso()
        index.totals = _totals(index.states)
        atomic_write(out / INDEX_FILE, index.model_dump_json(indent=2))
        progress(i + 1, len(plan), f"{where}: {state.status}")
    index.updated_at = now_iso()
    index.totals = _totals(index.states)
    atomic_write(out / INDEX_FILE, index.model_dump_json(indent=2))
    return index


def _earlier_states(path: Path, planned: set[tuple[str, int]]) -> tuple[list[str], list[ForkState]]:
    """Inputs and states of an earlier pass into the same folder that this pass does not plan again."""
    if not path.is_file():
        return [], []
    before = AllForks.model_validate_json(path.read_text())
    return before.inputs, [s for s in before.states if (s.run_id, s.tick) not in planned]


def _summarize(state: ForkState, record: ForkRecord, status: Literal["done", "kept"]) -> None:
    state.status = status
    state.candidates = len(record.candidates)
    state.pairs = len(record.pairs)
    teacher = next((c for c in record.candidates if c.source == "teacher"), None)
    state.teacher_kept = teacher.kept if teacher else None


def _totals(plan: list[ForkState]) -> dict[str, int]:
    totals = {"states": len(plan), "forked": 0, "failed": 0, "pending": 0, "pairs": 0, "teacher_asked": 0,
              "teacher_kept": 0}
    for s in plan:
        if s.status in ("done", "kept"):
            totals["forked"] += 1
        else:
            totals[s.status] += 1
        totals["pairs"] += s.pairs
        totals["teacher_asked"] += s.teacher_kept is not None
        totals["teacher_kept"] += bool(s.teacher_kept)
    return totals
