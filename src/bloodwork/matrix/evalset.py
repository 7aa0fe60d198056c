"""`bloodwork matrix freeze`: a frozen eval set of states drawn from held-out runs, stored with its sha256.

A state is one tick of a recorded run: the exact messages the model got (`messages_at`), what it
answered then, and, when that answer was good (a golden or recovery tick), the op it took as the
reference for op agreement. States are drawn by a seeded hash, round-robin over categories so that
recoveries and traps are not drowned by ordinary ticks; identical prompts are kept once.

Held out means: with `--holdout-of DATASET`, no run of the dataset's train split and no state that
appears in its train files can be drawn. The file is JSONL; `FILE.meta.json` holds its sha256, and
loading checks it, so a matrix can never score a silently edited eval set.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from bloodwork.chronos.files import atomic_write, sha256_file
from bloodwork.chronos.run import NOT_MODEL_BEHAVIOUR, find_runs, now_iso
from bloodwork.data.fork import is_fork_artifact
from bloodwork.data.formats import SPLITS_FILE, Messages, SplitAssignment, prompt_sha256
from bloodwork.data.mine import RunView, TickView
from bloodwork.errors import BloodworkError
from bloodwork.isa import parse
from bloodwork.kernel.traps import fingerprint
from bloodwork.matrix.hashes import prompt_template_sha256

Category = Literal["recovery", "rejected", "golden", "trap", "idle"]
CATEGORY_ORDER: tuple[Category, ...] = ("recovery", "rejected", "golden", "trap", "idle")


class EvalSetError(BloodworkError, ValueError):
    """No eligible state, or an eval set whose bytes no longer match its recorded sha256."""


class ReferenceOp(BaseModel):
    name: str
    fingerprint: str
    op: dict[str, Any]


class EvalState(BaseModel):
    state_id: str
    run_id: str
    group: str
    task: str
    tick: int
    provenance: str
    model: str
    category: Category
    messages: Messages
    prompt_sha256: str
    recorded_text: str
    recorded_verdict: Literal["strict", "lenient", "invalid", "error"]
    reference: ReferenceOp | None


class EvalSetMeta(BaseModel):
    """`FILE.meta.json`: how the set was drawn, and the sha256 of the JSONL bytes."""

    sha256: str
    rows: int
    seed: int
    created_at: str
    generator: str
    sources: list[str]
    runs: list[str]
    categories: dict[str, int]
    holdout_of: str | None
    holdout_manifest_sha256: str | None
    include_scripted: bool
    prompt_template_sha256: str


def meta_path(file: Path) -> Path:
    return file.with_name(file.name + ".meta.json")


def _category(view: RunView, t: TickView) -> Category:
    pool, _ = view.classify(t)
    if pool is not None:
        return pool
    return "trap" if t.traps else "idle"


def _reference(pool: Category, text: str | None) -> ReferenceOp | None:
    if pool not in ("golden", "recovery") or not text:
        return None
    frame = parse(text).frame
    if frame is None:
        return None
    op = frame.op.model_dump(mode="json")
    return ReferenceOp(name=frame.op.name, fingerprint=fingerprint(op), op=op)


def _trained(dataset: Path) -> tuple[set[str], set[str], str]:
    """Groups of the dataset's train split, the prompt hashes in its train files, its manifest sha256."""
    splits = SplitAssignment.model_validate_json((dataset / SPLITS_FILE).read_text())
    groups = {g for g, s in splits.groups.items() if s == "train"}
    prompts: set[str] = set()
    for path in sorted((dataset / "train").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            prompts.add(prompt_sha256(row["messages"][:-1] if "messages" in row else row["prompt"]))
    return groups, prompts, sha256_file(dataset / "manifest.json")


def _states(view: RunView) -> list[EvalState]:
    out = []
    for tick in sorted(view.ticks):
        t = view.ticks[tick]
        try:
            messages = view.prompt(tick)
        except KeyError:
            continue
        category = _category(view, t)
        verdict = parse(t.text) if t.text is not None and t.error is None else None
        out.append(EvalState(
            state_id=f"{view.run_id}@{tick}", run_id=view.run_id, group=view.group, task=view.manifest.task,
            tick=tick, provenance=view.provenance, model=view.manifest.model, category=category, messages=messages,
            prompt_sha256=prompt_sha256(messages), recorded_text=t.text or "",
            recorded_verdict="error" if verdict is None else "strict" if verdict.strict_ok else
            "lenient" if verdict.lenient_ok else "invalid", reference=_reference(category, t.text)))
    return out


def freeze(inputs: list[Path], out: Path, *, n: int, seed: int, holdout_of: Path | None = None,
           include_scripted: bool = False, generator: str = "",
           on_run: Callable[[int, int], None] | None = None) -> EvalSetMeta:
    if holdout_of is not None and not (holdout_of / SPLITS_FILE).is_file():
        raise EvalSetError(f"{holdout_of} is not a dataset directory (no {SPLITS_FILE})")
    trained_groups, trained_prompts, manifest_sha = _trained(holdout_of) if holdout_of else (set(), set(), None)
    runs = [r for r in find_runs(inputs) if not is_fork_artifact(r)]
    allowed = {"real"} | (NOT_MODEL_BEHAVIOUR if include_scripted else set())
    by_category: dict[Category, list[EvalState]] = defaultdict(list)
    used_runs: list[str] = []
    for i, run in enumerate(runs):
        if on_run:
            on_run(i, len(runs))
        view = RunView(run)
        if view.provenance not in allowed or view.group in trained_groups or view.run_id in used_runs:
            continue
        used_runs.append(view.run_id)
        for state in _states(view):
            if state.prompt_sha256 not in trained_prompts:
                by_category[state.category].append(state)
    if not by_category:
        kinds = "real, scripted, replayed or expert" if include_scripted else "real (others need --include-scripted)"
        raise EvalSetError(f"no eligible state: no held-out {kinds} runs under the inputs")

    def rank(s: EvalState) -> str:
        return hashlib.sha256(f"{seed}|{s.state_id}".encode()).hexdigest()

    queues = {c: sorted(by_category[c], key=rank) for c in CATEGORY_ORDER}
    chosen: list[EvalState] = []
    seen: set[str] = set()
    while len(chosen) < n and any(queues.values()):
        for c in CATEGORY_ORDER:
            while queues[c] and len(chosen) < n:
                state = queues[c].pop(0)
                if state.prompt_sha256 not in seen:
                    seen.add(state.prompt_sha256)
                    chosen.append(state)
                    break
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, "".join(s.model_dump_json() + "\n" for s in chosen))
    meta = EvalSetMeta(sha256=sha256_file(out), rows=len(chosen), seed=seed, created_at=now_iso(), generator=generator,
                       sources=[str(p) for p in inputs], runs=sorted(used_runs),
                       categories=dict(Counter(s.category for s in chosen)),
                       holdout_of=str(holdout_of) if holdout_of else None, holdout_manifest_sha256=manifest_sha,
                       include_scripted=include_scripted, prompt_template_sha256=prompt_template_sha256())
    atomic_write(meta_path(out), meta.model_dump_json(indent=2))
    return meta


def load_evalset(file: Path) -> tuple[EvalSetMeta, list[EvalState]]:
    if not file.is_file() or not meta_path(file).is_file():
        raise EvalSetError(f"{file} is not a frozen eval set (it needs {meta_path(file).name}; "
                           "make one with bloodwork matrix freeze)")
    meta = EvalSetMeta.model_validate_json(meta_path(file).read_text())
    actual = sha256_file(file)
    if actual != meta.sha256:
        raise EvalSetError(f"{file} changed since it was frozen (sha256 {actual[:12]} != {meta.sha256[:12]})")
    states = [EvalState.model_validate_json(line) for line in file.read_text(encoding="utf-8").splitlines()]
    return meta, states
