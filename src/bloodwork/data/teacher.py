"""Teachers at the states where the student fails (DAgger-style relabelling), and the check that keeps them honest.

`bloodwork fork --teacher SPEC` asks a teacher (an `expert:TASK` reference policy, or an API model) what to do
at a forked state, runs its answer for one tick in a copy of the rebuilt run (real sandbox, real chaos plan),
and keeps the answer only if it *verifiably* helps:

1. the branch's tick has no trap at all (natural or injected), and the answer is strictly valid;
2. the kernel's own measure says it moved on: the tick is a `recovery` (it ends the open trap streak), a
   tick with world progress, or an accepted halt;
3. the task's verifier scores the branch's workspace no lower than the rebuilt run's (`partial_score`):
   a teacher that makes progress by breaking what already passed is not a teacher.

A teacher answer that fails any of these is recorded (with the reason) and is neither a positive nor a
rejected row: it is not the student's behaviour, and it is not a mistake the student made.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from bloodwork.chronos.journal import read_events
from bloodwork.chronos.records import TrapEvent, of_kind
from bloodwork.chronos.run import RunManifest, RunPaths

if TYPE_CHECKING:
    from bloodwork.data.fork import Candidate

KEPT_LABELS = frozenset({"recovered", "progressed", "completed"})
# Repo-fix stages in order (tasks.repofix.judge.STAGES) and the ops verdicts: recovered beats a healthy service
# whose data was lost, which beats a service that is down; before the fault struck, a healthy service.
REPO_FIX_STAGES = ("none", "reproduced", "fixed", "tested", "pr_drafted")
OPS_RANK = {"down": 0.0, "before_fault": 0.5, "healthy_data_lost": 0.5, "recovered": 1.0}


def teacher_options(spec: str) -> dict[str, Any]:
    """Greedy answers from a model teacher (a teacher's best guess, not a sample); policies take no options."""
    scheme = spec.partition(":")[0]
    return {"temperature": 0.0} if scheme in ("local", "openai", "gemini", "kimi") else {}


def partial_score(verifier: dict[str, Any] | None) -> float | None:
    """The verifier's verdict as a number in [0, 1], by task family; None when there is no verdict.

    - repo-fix: the stage reached (`reproduced` .. `pr_drafted`) over the last stage;
    - ops: down 0, healthy before the fault or with data lost 0.5, recovered 1;
    - hidden tests (long-haul, folder tasks): the share of test cases that pass;
    - anything else: passed 1, else 0.
    """
    if not verifier:
        return None
    stage = verifier.get("stage")
    if stage in REPO_FIX_STAGES:
        return REPO_FIX_STAGES.index(stage) / (len(REPO_FIX_STAGES) - 1)
    if stage in OPS_RANK:
        return OPS_RANK[stage]
    details = verifier.get("details") or {}
    counted = [details.get(k) for k in ("passed", "failed", "errors")]
    if all(isinstance(n, int) for n in counted):
        total = sum(counted)  # type: ignore[arg-type]
        return round(counted[0] / total, 6) if total else 0.0  # type: ignore[operator]
    return 1.0 if verifier.get("passed") else 0.0


def _score(run_dir: Path) -> float | None:
    return partial_score(RunManifest.load(RunPaths(run_dir)).verifier)


def judge_teacher(cand: Candidate, base: Path, tick: int) -> None:
    """Decide `cand.kept` from its branch (already run and labelled at `tick`) against the rebuilt run `base`."""
    cand.score_before = _score(base)
    reasons: list[str] = []
    branch = Path(cand.branch_dir) if cand.branch_dir else None
    if cand.error is not None or branch is None or not (branch / "run.json").is_file():
        reasons.append("the teacher gave no answer that could run")
    else:
        cand.score_after = _score(branch)
        tick_traps = [e.data.kind for e in of_kind(read_events(RunPaths(branch).journal), TrapEvent) if e.tick == tick]
        if tick_traps:
            reasons.append("its tick trapped: " + ", ".join(tick_traps))
        if not cand.strict_ok:
            reasons.append(f"not a strictly valid frame ({cand.violation})")
        if cand.label not in KEPT_LABELS:
            reasons.append(f"no recovery or progress by the kernel's measure (label {cand.label})")
        if cand.contradictory or not cand.context_equivalent:
            reasons.append("contradictory label or another context at the fork tick")
        if cand.score_after is None:
            reasons.append("the branch has no verifier verdict")
        elif cand.score_before is not None and cand.score_after < cand.score_before:
            reasons.append(f"the verifier's partial score fell ({cand.score_before} -> {cand.score_after})")
    cand.kept = not reasons
    cand.polarity = "positive" if cand.kept else "neutral"
    cand.evidence.append("teacher kept: recovers or progresses, verifier score "
                         f"{cand.score_before} -> {cand.score_after}" if cand.kept
                         else "teacher not kept: " + "; ".join(reasons))

