"""A run's timeline as `bloodwork show` prints it: one row per journal event, read from the journal alone."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from bloodwork.chronos.journal import Event, iter_events
from bloodwork.chronos.records import EvictData, TickData, TrapData

# rich styles of the events a reader looks for first; the rest stay plain
STYLES = {"trap": "yellow", "panic": "bold red", "death": "bold white on red", "recovery": "green",
          "chaos": "magenta", "halt": "bold green"}


class TimelineRow(NamedTuple):
    tick: int
    kind: str
    detail: str


def describe_event(e: Event) -> str:
    """What happened, in one short line: the op of a tick (and why it was not strict), a trap's kind and
    detail, what an eviction dropped; the raw data of anything else."""
    data = e.data
    if isinstance(data, TickData):
        return f"{data.op or '-'}" + ("" if data.strict_ok else f"  [{data.violation or 'oracle error'}]")
    if isinstance(data, TrapData):
        return f"{data.kind}{' (injected)' if data.injected else ''}: {data.detail[:90]}"
    if isinstance(data, EvictData):
        return f"{data.section} of tick {data.tick} ({data.tokens} tokens): {data.reason}"
    return json.dumps(data.model_dump(mode="json"))[:110]


def timeline(journal: Path, *, from_tick: int = 0) -> Iterator[TimelineRow]:
    """The events of ticks `from_tick` on, in journal order."""
    for e in iter_events(journal):
        if e.tick >= from_tick:
            yield TimelineRow(e.tick, e.kind, describe_event(e))
