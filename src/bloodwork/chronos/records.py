"""The records a run writes: journal events (one model per `kind`), trace lines and dirty-trace lines.

The kernel builds these models and every reader parses them, so a field has one name and one type in
the whole code base. Their dump is the on-disk form: `canonical_json(model.model_dump())` is byte for
byte what was hashed into the chain, so a model has no defaults that a writer did not write (a default
would add a key to the dump of a line that lacked it) and keeps a float a float. `tests/chronos/
test_records.py` re-serializes recorded journals through these models and compares the bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class Record(BaseModel):
    """A line's content; an unknown key is a format error, not something to carry along silently."""

    model_config = ConfigDict(extra="forbid")


class EventData(Record):
    """The `data` of one journal event; `EVENT` is its `kind`."""

    EVENT: ClassVar[str]


class RunStartData(EventData):
    EVENT = "run_start"
    run_id: str
    task: str
    model: str
    provenance: str
    seed: int
    chaos: str
    panic_budget: int
    sandbox: str
    world_index: str | None = None  # runs recorded before 2026-11-29 have no world index


class ResumeData(EventData):
    EVENT = "resume"
    at_tick: int
    discarded_uncommitted: dict[str, int] = Field(description="bytes cut per file, kept under recovered/")
    resumes: int


class ProbeData(EventData):
    EVENT = "probe"
    answer: str
    error: str | None
    latency_ms: float
    context_tokens: int


class ChaosData(EventData):
    """One injected fault. Its producers (the world, a task, the oracle wrapper) may add keys of their own
    (`replayed` on a replayed oracle fault), so this one record keeps what it does not know."""

    model_config = ConfigDict(extra="allow")
    EVENT = "chaos"
    kind: str
    tick: int
    target: str
    params: dict[str, Any]
    injected: bool


class EvictData(EventData):
    EVENT = "evict"
    section: Literal["history", "observation", "goal", "register", "slice"]
    tick: int
    tokens: int
    reason: str


class TrapData(EventData):
    EVENT = "trap"
    kind: str
    detail: str
    injected: bool
    op: dict[str, Any] | None = Field(description="the frame's op without file content; None without a frame")
    d: str
    slice: str


class TickData(EventData):
    EVENT = "tick"
    op: str | None
    fp: str | None
    call_index: int
    strict_ok: bool | None
    lenient_ok: bool | None
    violation: str | None
    blocked: bool
    progress: bool
    changed: bool
    d_next: str
    slice_digest: str
    context_tokens: int
    latency_ms: float
    ask_s: float
    traps: list[str]


class RecoveryData(EventData):
    EVENT = "recovery"
    streak_start_tick: int
    traps: list[str]
    mttr_ticks: int
    mttr_s: float
    op: dict[str, Any] | None


class Streak(Record):
    """A run of trapped ticks: where it began and which traps it has seen (kept in the registers too)."""

    first_tick: int
    first_ts: float
    traps: list[str] = Field(default_factory=list)


class PanicData(EventData):
    EVENT = "panic"
    cause: str
    streak: Streak | None
    budget_left: int
    panic_no: int


class LastTick(Record):
    tick: int
    op: str | None
    traps: list[str]


class DeathData(EventData):
    EVENT = "death"
    cause: str
    panics: int
    tick: int
    last_ticks: list[LastTick]
    q: str
    d: str


class HaltData(EventData):
    EVENT = "halt"
    reason: str
    verifier: dict[str, Any]


class StopData(EventData):
    EVENT = "stop"
    status: str
    reason: str | None


class CrashData(EventData):
    EVENT = "crash"
    error: str
    report: str


class _Line(Record):
    """The chain fields every journal line has around its `data`."""

    seq: int
    ts: float
    tick: int
    prev: str
    hash: str


class RunStartEvent(_Line):
    kind: Literal["run_start"]
    data: RunStartData


class ResumeEvent(_Line):
    kind: Literal["resume"]
    data: ResumeData


class ProbeEvent(_Line):
    kind: Literal["probe"]
    data: ProbeData


class ChaosEvent(_Line):
    kind: Literal["chaos"]
    data: ChaosData


class EvictEvent(_Line):
    kind: Literal["evict"]
    data: EvictData


class TrapEvent(_Line):
    kind: Literal["trap"]
    data: TrapData


class TickEvent(_Line):
    kind: Literal["tick"]
    data: TickData


class RecoveryEvent(_Line):
    kind: Literal["recovery"]
    data: RecoveryData


class PanicEvent(_Line):
    kind: Literal["panic"]
    data: PanicData


class DeathEvent(_Line):
    kind: Literal["death"]
    data: DeathData


class HaltEvent(_Line):
    kind: Literal["halt"]
    data: HaltData


class StopEvent(_Line):
    kind: Literal["stop"]
    data: StopData


class CrashEvent(_Line):
    kind: Literal["crash"]
    data: CrashData


Event = Annotated[RunStartEvent | ResumeEvent | ProbeEvent | ChaosEvent | EvictEvent | TrapEvent | TickEvent
                  | RecoveryEvent | PanicEvent | DeathEvent | HaltEvent | StopEvent | CrashEvent,
                  Field(discriminator="kind")]
_EVENT = TypeAdapter[Event](Event)
E = TypeVar("E", bound=_Line)


def parse_event(line: dict[str, Any]) -> Event:
    """One decoded journal line as its typed event (pydantic.ValidationError if it is not one)."""
    return _EVENT.validate_python(line)


def event_line(event: _Line) -> dict[str, Any]:
    """The line as it is hashed and written: the inverse of `parse_event`."""
    return event.model_dump()


def of_kind(events: Iterable[Event], kind: type[E]) -> list[E]:
    """The events of one kind, typed as such: `of_kind(events, TrapEvent)`."""
    return [e for e in events if isinstance(e, kind)]


class TraceRecord(Record):
    """One committed tick in `trace.jsonl`: the state it started from, the frame, and where it led."""

    tick: int
    q: str
    d: str
    slice_digest: str
    next_digest: str
    frame: dict[str, Any] | None
    call_index: int
    verdict: Literal["strict", "lenient", "invalid"]
    q_next: str
    d_next: str
    result: dict[str, Any]
    traps: list[str]
    blocked: bool
    progress: bool
    changed: bool
    # Both absent from runs recorded before the loop detectors judged the world (2026-11-29): such a tick's
    # observation is its next slice, and its world one unknown state (`Detectors.replay_record`).
    seen: str | None = None
    world: tuple[str, str] | None = Field(default=None, description="the workspace digest before and after the tick")
    panic: str | None
    ts: float

    @property
    def op_name(self) -> str | None:
        return (self.frame or {}).get("op", {}).get("name")


class DirtyRecord(Record):
    """One model call in `dirty_trace.jsonl`, its raw text untouched (a tick's call or a probe)."""

    tick: int
    call_index: int
    purpose: Literal["tick", "probe"]
    provenance: str
    model: str
    text: str
    error: str | None
    error_class: str | None
    latency_ms: float
    ttft_ms: float | None = None  # absent from calls recorded before the engine
    queue_ms: float | None = None  # absent from calls recorded before the shared model's queue
    prompt_tokens: int | None
    completion_tokens: int | None
    retries: int
    finish_reason: str | None
    batch_size: float | None = None  # absent from calls recorded before the batching engine
    injected: list[dict[str, Any]]
    strict_ok: bool | None
    lenient_ok: bool | None
    violation: str | None
    lenient_violation: str | None
    ts: float


R = TypeVar("R", bound=Record)


def iter_records(path: Path, model: type[R]) -> Iterator[R]:
    """The complete lines of a JSONL file as `model`s (a torn last line is skipped; no file, no lines).

    `json.loads` first: pydantic's JSON reader refuses the `\\ud800` escape of a lone surrogate.
    """
    if not path.exists():
        return
    with open(path, "rb") as fh:
        for raw in fh:
            if raw.endswith(b"\n"):
                yield model.model_validate(json.loads(raw))
