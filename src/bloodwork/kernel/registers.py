"""The registers: everything the next tick needs, persisted atomically after each committed tick."""

from __future__ import annotations

from pydantic import BaseModel

from bloodwork.chronos.records import Streak
from bloodwork.chronos.run import RunStatus

__all__ = ["Registers", "Streak"]


class Registers(BaseModel):
    """Small by design: the run's position (tick, q, d, slice), its accounting, and the byte offsets of every
    committed file, which a resume cuts each file back to."""

    tick: int = 0
    q: str = ""
    d: str = "sys://start"
    slice_id: str = ""
    oracle_calls: int = 0
    panic_budget_left: int
    panics: int = 0
    goal_in_history: bool = True
    goal_pinned_at: int = 0
    history_span: tuple[int, int] | None = None
    masked_below: int = -1
    streak: Streak | None = None
    journal_offset: int = 0
    journal_seq: int = 0
    journal_prev: str = "0" * 64
    trace_offset: int = 0
    context_offset: int = 0
    # None in runs recorded before these files were cut back on resume: they are then left as they are
    dirty_offset: int | None = None
    history_offset: int | None = None
    status: RunStatus = RunStatus.RUNNING
    cause_of_death: str | None = None
