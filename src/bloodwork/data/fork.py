"""`bloodwork fork RUN --tick T --samples K`: same-prompt preference pairs from a recorded state.

1. The prompt is `messages_at(RUN/context, T)`: exactly what the model got at tick T.
2. The run is rebuilt to tick T by replaying its raw outputs with the same seeds and chaos key, under the
   original model's tokenizer (the context budget is counted in it, so evictions come out the same); the
   rebuilt journal must match the original's tick for tick, else the fork stops before any model call.
3. The model is asked K times at that prompt with temperature > 0 (a per-call seed each); a local model
   decodes the K samples as one batch, with the answers it would give them one at a time.
4. Each candidate gets its own copy of the rebuilt run, extended with `Kernel.resume(max_ticks=T+h)`:
   at tick T the kernel gets the candidate, after it the model itself greedily, so branches differ by
   the candidate only. Each branch's context at T is checked against the prompt of step 1: byte for byte
   (recorded), and with wall-clock timings masked (required: real commands run again, and `0.41s` or
   pytest's `in 0.13s` differ run to run). The pair's prompt is always the recorded one, so chosen and
   rejected share it byte for byte.
5. Outcomes are labelled from each branch's journal: positive (completed, recovered, progressed),
   negative (trapped, thrashed), neutral (idle; faulted: only environment traps such as a natural
   LOG_FLOOD; a fault injected at T; a failed call). A branch that
   progressed at T and then panicked within the horizon has a contradictory label, as does an op
   labelled both ways across branches; such candidates are refused, never paired.

With `teacher=SPEC` (an `expert:TASK` reference policy, or an API model) the teacher is asked too, at the
same prompt and with the rebuilt run's workspace (`CallInfo.workspace`); its answer is one more branch, run
for one tick only, and it is *kept* only if it verifiably recovers or progresses (see `teacher.verdict`).
Its candidate carries `provenance: teacher:<spec>`; a teacher answer that is not kept is neutral, never a
rejected row, and a kept one never counts as the student's behaviour.

Rebuilt and branched runs are tagged `replay` (their prefix is replayed) and live under the fork
directory; dataset builds skip them and read `fork.json` instead.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from bloodwork.chaos.plan import ChaosProfile
from bloodwork.chronos.context_log import messages_at
from bloodwork.chronos.journal import canonical_json, read_events
from bloodwork.chronos.records import ChaosEvent, DeathEvent, Event, PanicEvent, TickEvent, TrapEvent, of_kind
from bloodwork.chronos.run import Provenance, RunManifest, RunPaths, now_iso
from bloodwork.data.formats import Messages, prompt_sha256
from bloodwork.data.teacher import judge_teacher, teacher_options
from bloodwork.errors import BloodworkError
from bloodwork.evidence.replay import signature
from bloodwork.isa import json_schema, parse
from bloodwork.kernel import Kernel, KernelConfig
from bloodwork.kernel.traps import ENVIRONMENT_TRAPS, LOOP_TRAPS, fingerprint
from bloodwork.manifold.workspace import copy_plain_tree
from bloodwork.oracles.base import CallInfo, Completion, Message, Oracle, Tokenizer, complete_many
from bloodwork.oracles.registry import make_oracle
from bloodwork.oracles.replay import ReplayOracle
from bloodwork.tasks.registry import load_task

FORK_FILE = "fork.json"
Label = Literal["completed", "recovered", "progressed", "trapped", "thrashed", "idle", "faulted", "injected",
                "failed"]
Polarity = Literal["positive", "negative", "neutral"]
POLARITY: dict[str, Polarity] = {"completed": "positive", "recovered": "positive", "progressed": "positive",
                                 "trapped": "negative", "thrashed": "negative", "idle": "neutral", "faulted": "neutral",
                                 "injected": "neutral", "failed": "neutral"}
# A branch whose only natural traps are environment faults (kernel/traps.py's table: a refused write, a
# failed model call, runaway output) is `faulted` (neutral), not `trapped`.
_TIMING = re.compile(r"\b\d+(?:\.\d+)?s\b")
_DIGEST = re.compile(r"\b(sha256 )[0-9a-f]{12,64}\b")


class ForkError(BloodworkError, ValueError):
    """The fork cannot be made: bad tick, a run that does not replay, a model that cannot be built."""


class Candidate(BaseModel):
    index: int
    source: Literal["student", "teacher"] = "student"
    provenance: str = Field(default="", description="the fork's provenance for a student sample, "
                                                    "teacher:<spec> for the teacher's answer")
    text: str
    error: str | None = None
    latency_ms: float
    strict_ok: bool
    lenient_ok: bool
    violation: str | None
    op: str | None
    fingerprint: str | None = Field(description="of the parsed op (strict or lenient), None without a frame")
    branch_dir: str = ""
    context_identical: bool = Field(default=False, description="the branch's context at the fork tick, byte for byte")
    context_equivalent: bool = Field(default=False, description="... the same once timings and output digests are "
                                                                "masked (what pairing requires)")
    label: Label = "failed"
    polarity: Polarity = "neutral"
    contradictory: bool = False
    evidence: list[str] = Field(default_factory=list)
    kept: bool | None = Field(default=None, description="teacher only: it verifiably recovered or progressed")
    score_before: float | None = Field(default=None, description="teacher only: the verifier's partial score at "
                                                                 "the fork state (the rebuilt run's)")
    score_after: float | None = Field(default=None, description="teacher only: ... after its action (its branch's)")


class Pair(BaseModel):
    chosen: int
    rejected: int


class Refusal(BaseModel):
    candidates: list[int]
    reason_class: Literal["contradictory label", "context differs", "identical texts"]
    reason: str


class ForkRecord(BaseModel):
    """`fork.json`: the prompt, every candidate with its branch and label, the pairs and the refusals."""

    schema_version: int = 1
    fork_id: str
    source_run: str
    run_id: str
    group: str
    task: str
    tick: int
    provenance: str
    model: str
    teacher: str | None = None
    sampling: dict[str, Any]
    horizon: int
    prompt: Messages
    prompt_sha256: str
    base_dir: str
    replay_events_checked: int
    candidates: list[Candidate]
    pairs: list[Pair]
    refused: list[Refusal]
    created_at: str
    command_line: list[str]


class _RecordedPrefix:
    """The run's raw outputs (a ReplayOracle) counted in the original model's tokenizer."""

    provenance = Provenance.REPLAY

    def __init__(self, run_dir: Path, tokenizer: Tokenizer) -> None:
        self._replay = ReplayOracle(f"replay:{run_dir}", str(run_dir))
        self.spec = self._replay.spec
        self.tokenizer = tokenizer

    def complete(self, messages: list[Message], schema: dict[str, Any] | None = None, *,
                 call: CallInfo | None = None) -> Completion:
        return self._replay.complete(messages, schema, call=call)

    def describe(self) -> dict[str, Any]:
        return {**self._replay.describe(), "tokens": "counted as by the original model"}

    def close(self) -> None:
        self._replay.close()


class _ForkOracle:
    """At the fork tick the kernel gets the candidate; every later call goes to the continuation model."""

    def __init__(self, inner: Oracle, tick: int, candidate: Completion, index: int) -> None:
        self.inner = inner
        self.spec = inner.spec
        self.provenance = inner.provenance
        self.tokenizer = inner.tokenizer
        self.tick = tick
        self.candidate = candidate
        self.index = index

    def complete(self, messages: list[Message], schema: dict[str, Any] | None = None, *,
                 call: CallInfo | None = None) -> Completion:
        if call is not None and call.tick == self.tick and call.purpose == "tick":
            return self.candidate.model_copy(deep=True)
        return self.inner.complete(messages, schema, call=call)

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "fork": {"tick": self.tick, "candidate": self.index}}

    def close(self) -> None:
        return None  # the continuation model is shared by every branch


def mask_volatile(messages: Messages) -> str:
    """The messages with wall-clock timings (`0.41s`, `in 0.13s`) and the digests of output that holds them
    masked: a rebuilt run reruns real commands, and their timings differ from the recorded ones."""
    return _DIGEST.sub(r"\1#", _TIMING.sub("#s", canonical_json(messages)))


def find_forks(paths: list[Path]) -> list[ForkRecord]:
    found = []
    for path in paths:
        files = [path / FORK_FILE] if (path / FORK_FILE).is_file() else sorted(path.rglob(FORK_FILE))
        found += [ForkRecord.model_validate_json(f.read_text()) for f in files if f.is_file()]
    return list({f.fork_id: f for f in found}.values())


def is_fork_artifact(run_dir: Path) -> bool:
    """A run rebuilt or branched by a fork (it lives under a directory holding fork.json)."""
    return any((parent / FORK_FILE).is_file() for parent in run_dir.resolve().parents)


def rebuild(run_dir: Path, tick: int, tokenizer: Tokenizer, out_dir: Path) -> tuple[Path, int]:
    """Replay RUN to just before `tick`; return the rebuilt run and how many journal events were compared."""
    paths = RunPaths(run_dir)
    m = RunManifest.load(paths)
    task = load_task(m.task_source or m.task)
    config = KernelConfig.model_validate({**m.config, "max_ticks": max(tick, 1)})
    kernel = Kernel.create(task, _RecordedPrefix(run_dir, tokenizer), out_dir=out_dir, config=config, seed=m.seed,
                           chaos=ChaosProfile.model_validate(m.chaos), run_id=f"{m.run_id}-t{tick}",
                           chaos_key=m.chaos_key or m.run_id, replay_of=m.run_id,
                           command_line=["bloodwork", "fork", str(run_dir), "--tick", str(tick)])
    if tick == 0:
        kernel.stop("fork at tick 0: nothing to replay")  # ends before its first tick, resumable
    kernel.run()
    original = [s for s in signature(read_events(paths.journal)) if s[0] < tick]
    rebuilt = [s for s in signature(read_events(kernel.paths.journal)) if s[0] < tick]
    if original != rebuilt:
        first = next((i for i, (a, b) in enumerate(zip(original, rebuilt, strict=False)) if a != b),
                     min(len(original), len(rebuilt)))
        raise ForkError(f"the replay of {m.run_id} diverges before tick {tick} (event {first}); it cannot be forked")
    return kernel.paths.root, len(original)


def label_branch(events: list[Event], tick: int, horizon: int) -> tuple[Label, bool, list[str]]:
    """(label, contradictory, evidence) from a branch's journal, ticks tick .. tick+horizon-1."""
    at = [e for e in events if e.tick == tick]
    later = [e for e in events if tick < e.tick < tick + horizon]
    tick_event = next(iter(of_kind(at, TickEvent)), None)
    traps = [e.data for e in of_kind(at, TrapEvent)]
    natural = [t.kind for t in traps if not t.injected]
    injected = [t.kind for t in traps if t.injected]
    injected += [f"chaos {e.data.kind}" for e in of_kind(at, ChaosEvent) if e.data.target == "oracle"]
    evidence = [f"tick {tick}: trap {k}{' (injected)' if k in injected else ''}" for k in natural + injected]
    later_loops = [(e.tick, e.kind, e.data.kind if isinstance(e, TrapEvent) else e.data.cause) for e in later
                   if (isinstance(e, TrapEvent) and e.data.kind in LOOP_TRAPS and not e.data.injected)
                   or isinstance(e, PanicEvent | DeathEvent)]
    evidence += [f"tick {t}: {kind} {what}" for t, kind, what in later_loops]
    label: Label
    if tick_event is None:
        label = "failed"
    elif injected:
        label = "injected"
    elif any(e.kind == "halt" for e in at):
        label = "completed"
    elif set(natural) - ENVIRONMENT_TRAPS:
        label = "thrashed" if set(natural) & LOOP_TRAPS else "trapped"
    elif natural:
        label = "faulted"
    elif any(e.kind == "recovery" for e in at):
        label = "recovered"
    elif tick_event.data.progress:
        label = "progressed"
    elif later_loops:
        label = "thrashed"  # an idle answer that the loop detectors caught within the horizon
    else:
        label = "idle"
    contradictory = POLARITY[label] == "positive" and any(e.kind in ("panic", "death") for e in later)
    return label, contradictory, evidence


def make_pairs(candidates: list[Candidate]) -> tuple[list[Pair], list[Refusal]]:
    """Chosen x rejected over usable candidates; contradictions and foreign contexts are refused."""
    refused: list[Refusal] = []
    for c in candidates:
        if not c.context_equivalent and c.polarity != "neutral":
            refused.append(Refusal(candidates=[c.index], reason_class="context differs",
                                   reason=f"candidate {c.index}: its branch saw another context at the fork tick"))
    by_op: dict[str, set[Polarity]] = {}
    for c in candidates:
        if c.fingerprint and c.polarity != "neutral":
            by_op.setdefault(c.fingerprint, set()).add(c.polarity)
    for c in candidates:
        if c.fingerprint and {"positive", "negative"} <= by_op.get(c.fingerprint, set()):
            c.contradictory = True
            c.evidence.append("the same op was labelled positive and negative in other branches")
        if c.contradictory and c.polarity != "neutral":
            refused.append(Refusal(candidates=[c.index], reason_class="contradictory label",
                                   reason=f"candidate {c.index} ({c.label}): {'; '.join(c.evidence) or 'mixed'}"))
    usable = [c for c in candidates if c.context_equivalent and not c.contradictory]
    pairs: list[Pair] = []
    for good in (c for c in usable if c.polarity == "positive"):
        for bad in (c for c in usable if c.polarity == "negative"):
            if good.text == bad.text:
                refused.append(Refusal(candidates=[good.index, bad.index], reason_class="identical texts",
                                       reason="chosen and rejected are the same text"))
                continue
            pairs.append(Pair(chosen=good.index, rejected=bad.index))
    return pairs, refused


def _candidate(index: int, done: Completion, provenance: str, source: Literal["student", "teacher"] = "student"
               ) -> Candidate:
    verdict = parse(done.text) if done.error is None else None
    frame = verdict.frame if verdict else None
    return Candidate(index=index, source=source, provenance=provenance, text=done.text, error=done.error,
                     latency_ms=round(done.latency_ms, 3),
                     strict_ok=bool(verdict and verdict.strict_ok), lenient_ok=bool(verdict and verdict.lenient_ok),
                     violation=verdict.violation if verdict else None, op=frame.op.name if frame else None,
                     fingerprint=fingerprint(frame.op.model_dump(mode="json")) if frame else None)


def _branch(cand: Candidate, done: Completion, base: Path, out: Path, continuation: Oracle, *, tick: int,
            horizon: int, prompt: Messages) -> None:
    """Run one candidate from a copy of the rebuilt run and label what happened."""
    branch = out / "branches" / f"k{cand.index}" / base.name
    left_out = copy_plain_tree(base, branch)
    cand.branch_dir = str(branch)
    if left_out:
        cand.evidence.append(f"left out of the branch's copy (FIFO, socket or device): {', '.join(left_out)}")
    if done.error is not None:
        cand.evidence.append(f"the call failed: {done.error}")
        return
    m = RunManifest.load(RunPaths(branch))
    task = load_task(m.task_source or m.task)
    Kernel.resume(branch, task, _ForkOracle(continuation, tick, done, cand.index), max_ticks=tick + horizon).run()
    seen = messages_at(RunPaths(branch).context, tick)
    cand.context_identical = prompt_sha256(seen) == prompt_sha256(prompt)
    cand.context_equivalent = cand.context_identical or mask_volatile(seen) == mask_volatile(prompt)
    if cand.context_equivalent and not cand.context_identical:
        cand.evidence.append("the branch's context differs from the recorded one in timings only")
    cand.label, cand.contradictory, evidence = label_branch(read_events(RunPaths(branch).journal), tick, horizon)
    cand.evidence += evidence
    cand.polarity = POLARITY[cand.label]


def _forkable(paths: RunPaths, tick: int, samples: int, *, out: Path, horizon: int, temperature: float,
              teacher: str | None) -> RunManifest:
    """The run's manifest, once the fork's arguments are known to be usable (else ForkError)."""
    if not paths.manifest.is_file():
        raise ForkError(f"{paths.root} is not a run directory (no run.json)")
    m = RunManifest.load(paths)
    if not 0 <= tick < m.ticks:
        raise ForkError(f"run {m.run_id} has ticks 0..{m.ticks - 1}; tick {tick} cannot be forked")
    if (samples < 2 and teacher is None) or samples < 0 or horizon < 1 or (samples and temperature <= 0):
        raise ForkError("a fork needs --samples >= 2 (or >= 0 with --teacher), --horizon >= 1 and --temperature > 0")
    if out.exists() and any(out.iterdir()):
        raise ForkError(f"{out} exists already; choose another --out")
    return m


def fork_run(run_dir: Path, tick: int, samples: int, *, out: Path, horizon: int = 3, temperature: float = 0.8,
             top_p: float = 0.95, seed: int = 0, model: str | None = None, teacher: str | None = None,
             on_step: Callable[[str], None] | None = None, command_line: list[str] | None = None) -> ForkRecord:
    paths = RunPaths(run_dir)
    m = _forkable(paths, tick, samples, out=out, horizon=horizon, temperature=temperature, teacher=teacher)
    step = on_step or (lambda _msg: None)
    prompt = messages_at(paths.context, tick)
    sha = prompt_sha256(prompt)
    spec = model or m.model
    options = {**(m.oracle.get("options", {}) if spec == m.model else {}), "seed": seed}
    sampling = {"temperature": temperature, "top_p": top_p, "seed": seed}
    # Built before anything is written: a spec that cannot be built is a user mistake, not a half fork.
    sampler = make_oracle(spec, **{**options, "temperature": temperature, "top_p": top_p})
    continuation = make_oracle(spec, **{**options, "temperature": 0.0})
    mentor = make_oracle(teacher, **teacher_options(teacher)) if teacher else None
    try:
        step("rebuilding the run to the fork tick")  # first: a run that does not replay costs no model call
        out.mkdir(parents=True, exist_ok=True)
        base, compared = rebuild(run_dir, tick, continuation.tokenizer, out / "base")
        schema = json_schema()
        calls = [CallInfo(m.run_id, tick, k, purpose="fork") for k in range(samples)]
        if calls:
            step(f"sampling {samples} candidates")
        completions = complete_many(sampler, prompt, schema, calls) if calls else []  # one batch on a local model
        candidates = [_candidate(k, c, sampler.provenance) for k, c in enumerate(completions)]
        for cand, done in zip(candidates, completions, strict=True):
            step(f"branch {cand.index + 1}/{samples}")
            _branch(cand, done, base, out, continuation, tick=tick, horizon=horizon, prompt=prompt)
        if mentor is not None:
            step(f"asking the teacher {teacher}")
            # The teacher sees the state as the student did, and the rebuilt run's workspace (a copy: the base
            # is never run again), so a reference policy can read the files it reasons about.
            done = mentor.complete(prompt, schema, call=CallInfo(m.run_id, tick, samples, purpose="fork",
                                                                 workspace=RunPaths(base).workspace))
            cand = _candidate(samples, done, f"teacher:{teacher}", "teacher")
            step("running the teacher's answer in a copy of the workspace")
            _branch(cand, done, base, out, continuation, tick=tick, horizon=1, prompt=prompt)
            judge_teacher(cand, base, tick)
            candidates.append(cand)
    finally:
        sampler.close()
        continuation.close()
        if mentor is not None:
            mentor.close()
    pairs, refused = make_pairs(candidates)
    fork_id = hashlib.sha256(f"{m.run_id}|{tick}|{spec}|{sampling}|{time.time()}".encode()).hexdigest()[:16]
    record = ForkRecord(fork_id=fork_id, source_run=str(run_dir), run_id=m.run_id,
                        group=m.replay_of or m.run_id, task=m.task, tick=tick, provenance=sampler.provenance,
                        model=spec, teacher=teacher, sampling={**sampling, "options": options}, horizon=horizon,
                        prompt=prompt, prompt_sha256=sha, base_dir=str(base), replay_events_checked=compared,
                        candidates=candidates, pairs=pairs, refused=refused, created_at=now_iso(),
                        command_line=command_line or ["bloodwork", "fork", str(run_dir), "--tick", str(tick),
                                                      "--samples", str(samples)])
    (out / FORK_FILE).write_text(record.model_dump_json(indent=2))
    return record
