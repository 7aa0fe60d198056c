"""A run's timeline as `bloodwork show` prints it: one row per journal event, read from the journal alone."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from bloodwork.chronos.journal import Event, iter_events

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
    if e.kind == "tick":
        return f"{e.data.get('op') or '-'}" + ("" if e.data.get("strict_ok") else
                                               f"  [{e.data.get('violation') or 'oracle error'}]")
    if e.kind == "trap":
        return f"{e.data['kind']}{' (injected)' if e.data.get('injected') else ''}: {e.data['detail'][:90]}"
    if e.kind == "evict":
        return f"{e.data['section']} of tick {e.data['tick']} ({e.data['tokens']} tokens): {e.data['reason']}"
    return json.dumps(e.data)[:110]


def timeline(journal: Path, *, from_tick: int = 0) -> Iterator[TimelineRow]:
    """The events of ticks `from_tick` on, in journal order."""
    for e in iter_events(journal):
        if e.tick >= from_tick:
            yield TimelineRow(e.tick, e.kind, describe_event(e))
