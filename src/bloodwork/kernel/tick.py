"""One tick's working state, and the records it is written as (journal `tick` event, trace line, dirty line)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from bloodwork.chronos.records import ChaosData, DirtyRecord, HaltData, ProbeData, TickData, TraceRecord
from bloodwork.context.builder import BuiltContext, Eviction
from bloodwork.isa import Frame, ParseResult
from bloodwork.kernel.effects import Outcome
from bloodwork.kernel.traps import TrapKind, digest
from bloodwork.oracles.base import Completion


@dataclass
class Tick:
    """One tick's working state, filled in by the steps of `Kernel.step` in order."""

    n: int
    started: float
    chaos: list[ChaosData]
    world_before: str
    slice_text: str
    ctx: BuiltContext
    goal_present: bool
    history_span: tuple[int, int] | None
    call_index: int
    probe: ProbeData | None = None
    completion: Completion = field(default_factory=Completion)
    ask_s: float = 0.0
    verdict: ParseResult | None = None
    frame: Frame | None = None
    fp: str | None = None
    blocked: bool = False
    outcome: Outcome = field(default_factory=lambda: Outcome(d="", slice_text=""))
    halted: HaltData | None = None
    q_next: str = ""
    reg_evict: Eviction | None = None
    seen: str = ""
    world_after: str = ""
    progress: bool = False
    traps: list[tuple[TrapKind, str]] = field(default_factory=list)
    panic: TrapKind | None = None
    evictions: list[Eviction] = field(default_factory=list)
    d_next: str = ""
    next_slice: str = ""

    @property
    def kinds(self) -> list[str]:
        return [k.value for k, _ in self.traps]

    @property
    def op_json(self) -> dict[str, Any] | None:
        return self.frame.op.model_dump(mode="json", exclude={"content"}) if self.frame else None

    def tick_data(self) -> TickData:
        op_json, v = self.op_json, self.verdict
        return TickData(
            op=op_json["name"] if op_json else None, fp=self.fp, call_index=self.call_index,
            strict_ok=v.strict_ok if v else None, lenient_ok=v.lenient_ok if v else None,
            violation=v.violation if v else None, blocked=self.blocked, progress=self.progress,
            changed=self.outcome.changed, d_next=self.outcome.d, slice_digest=digest(self.outcome.slice_text),
            context_tokens=self.ctx.total_tokens, latency_ms=round(self.completion.latency_ms, 3),
            ask_s=round(self.ask_s, 6), traps=self.kinds)

    def trace_record(self, q: str, d: str) -> TraceRecord:
        """The trace line of this tick, which started from register values `q` and `d`."""
        v = self.verdict
        return TraceRecord(
            tick=self.n, q=q, d=d, slice_digest=digest(self.slice_text), next_digest=digest(self.outcome.slice_text),
            frame=self.frame.model_dump(mode="json") if self.frame else None, call_index=self.call_index,
            verdict="strict" if v and v.strict_ok else "lenient" if v and v.lenient_ok else "invalid",
            q_next=self.q_next, d_next=self.d_next, result=self.outcome.result, traps=self.kinds,
            blocked=self.blocked, progress=self.progress, changed=self.outcome.changed, seen=self.seen,
            world=(self.world_before, self.world_after), panic=self.panic.value if self.panic else None,
            ts=round(time.time(), 3))


def dirty_record(tick: int, call_index: int, c: Completion, verdict: ParseResult | None, *, provenance: str,
                 model: str, purpose: Literal["tick", "probe"] = "tick") -> DirtyRecord:
    """A model call as it came back: its raw text, timings and both parse verdicts."""
    return DirtyRecord(
        tick=tick, call_index=call_index, purpose=purpose, provenance=provenance, model=model, text=c.text,
        error=c.error, error_class=c.error_class, latency_ms=round(c.latency_ms, 3), ttft_ms=c.ttft_ms,
        queue_ms=c.queue_ms, prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens,
        retries=c.retries, finish_reason=c.finish_reason, batch_size=c.batch_size, injected=c.injected,
        strict_ok=verdict.strict_ok if verdict else None, lenient_ok=verdict.lenient_ok if verdict else None,
        violation=verdict.violation if verdict else None,
        lenient_violation=verdict.lenient_violation if verdict else None, ts=round(time.time(), 3))
