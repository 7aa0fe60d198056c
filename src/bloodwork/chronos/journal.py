"""The hash-chained journal: `.journal.log`, one JSON event a line.

`hash = sha256(prev + canonical_json(line without hash))`; canonical = sorted keys, no spaces, UTF-8.
Lines of one tick are buffered and written with a single `write` + `fsync` at commit, so a tick is in
the journal whole or not at all; a torn last line (a crash mid-write) is reported and ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from bloodwork.chronos.records import Event, EventData, parse_event

GENESIS = "0" * 64
# A lone UTF-16 surrogate (a model can emit `"\ud800"`, and JSON decodes it to one) has no UTF-8 encoding.
_SURROGATE = re.compile("[\ud800-\udfff]")


def canonical_json(obj: Any) -> str:
    """Sorted keys, no spaces, non-ASCII kept as is; a lone surrogate is written as its `\\uXXXX` escape.

    The escape keeps such text lossless (`json.loads` gives back the same string) and the line valid
    UTF-8. Text UTF-8 can hold is unaffected, and so are its hashes. A high + low surrogate pair is the
    character it encodes, as JSON reads `\\ud83d\\ude00`, so a line reads back to the same bytes.
    """
    return escape_surrogates(json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False))


def escape_surrogates(text: str) -> str:
    """`text` with each lone surrogate replaced by its six-character `\\uXXXX` escape: valid UTF-8.

    Inside a JSON string the escape reads back as the surrogate; in plain text (what the kernel shows
    a model of its own past answer) it is visible, and the text can be sent to any endpoint.
    """
    if text.isascii():  # the common case, and the cheapest test (a regex scan costs ~25 us per 2 KB line)
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")  # joins pairs
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def line_hash(prev: str, body: dict[str, Any]) -> str:
    return hashlib.sha256((prev + canonical_json(body)).encode("utf-8")).hexdigest()


class JournalHead(BaseModel):
    """The last committed event, which the chain must end at: `seq` -1 and GENESIS before the first one.

    The kernel keeps it in `registers.json` (replaced atomically at every commit) and in `run.json`;
    a death bundle's `manifest.json` carries it too, so a copy kept elsewhere pins the journal.
    """

    seq: int = Field(ge=-1)
    hash: str = Field(pattern=r"^[0-9a-f]{64}$")

    def __str__(self) -> str:
        return f"seq {self.seq} hash {self.hash[:16]}"


class VerifyReport(BaseModel):
    """What `verify` found. `trusted` events (from the first) are safe to count: before a broken link,
    and, when a head was given, no further than that head and only if the chain reaches it intact."""

    ok: bool
    events: int
    last_hash: str
    trusted: int = 0
    torn_tail: bool = False
    first_bad_seq: int | None = None
    first_bad_line: int | None = None
    reason: str = ""
    head: JournalHead | None = None
    anchor: str = ""


class Journal:
    """Append-only writer. `stage` buffers a tick's events; `flush` writes and fsyncs them at once."""

    def __init__(self, path: Path, *, seq: int = 0, prev: str = GENESIS) -> None:
        self.path = path
        self.seq = seq
        self.prev = prev
        self._pending: list[str] = []
        self._flushed = (seq, prev)
        self._fh = open(path, "ab", buffering=0)  # noqa: SIM115 - lives as long as the run

    def stage(self, tick: int, data: EventData) -> None:
        """Buffer one event of this tick; its `kind` is the record's (`data.EVENT`)."""
        body = {"seq": self.seq, "ts": round(time.time(), 6), "tick": tick, "kind": data.EVENT,
                "data": data.model_dump(), "prev": self.prev}
        digest = line_hash(self.prev, body)
        body["hash"] = digest
        self._pending.append(canonical_json(body) + "\n")
        self.seq += 1
        self.prev = digest

    def flush(self) -> int:
        """Write every staged line in one call and fsync; return the file size after."""
        if self._pending:
            self._fh.write("".join(self._pending).encode("utf-8"))
            self._pending.clear()
            os.fdatasync(self._fh.fileno())
        self._flushed = (self.seq, self.prev)
        return self._fh.tell()

    def head(self) -> JournalHead:
        """The last event written and fsynced (staged lines are not part of it)."""
        seq, prev = self._flushed
        return JournalHead(seq=seq - 1, hash=prev)

    def discard(self) -> None:
        """Drop staged lines of a tick that will not be committed; the chain continues from the last flush."""
        self._pending.clear()
        self.seq, self.prev = self._flushed

    def close(self) -> None:
        self.flush()
        self._fh.close()


def iter_events(path: Path) -> Iterator[Event]:
    """Read typed events without checking the chain; a torn last line is skipped.

    `json.loads` first: pydantic's own JSON reader refuses the `\\ud800` escapes of lone surrogates.
    """
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                return
            yield parse_event(json.loads(raw))


def read_events(path: Path) -> list[Event]:
    return list(iter_events(path))


def verify(path: Path, head: JournalHead | None = None) -> VerifyReport:
    """Check every line's hash and link, and, given the committed `head`, that the chain ends exactly there.

    Without a head a valid chain proves only that it is self-consistent: a cut tail, appended events with
    recomputed hashes, or a journal fabricated from GENESIS all pass. A torn last line (no newline, a crash
    mid-write) is tolerated and reported.
    """
    report, at_head = _verify_chain(path, head.seq if head else None)
    report.head = head
    if head is None or not report.ok:
        return report
    committed = head.seq + 1
    if report.events < committed:
        trusted, bad, reason = report.events, report.events, (
            f"the journal ends at seq {report.events - 1} but its committed head is {head}: "
            f"{committed - report.events} committed event(s) are missing")
    elif at_head != head.hash:
        trusted, bad, reason = 0, head.seq, (
            f"the event at seq {head.seq} does not hash to the committed head {head}: the journal was rewritten")
    elif report.events > committed:
        trusted, bad, reason = committed, committed, (
            f"{report.events - committed} event(s) after the committed head {head}: appended, or the uncommitted "
            "tail of a killed run (`bloodwork resume` cuts that)")
    else:
        return report
    return report.model_copy(update={"ok": False, "trusted": trusted, "first_bad_seq": bad,
                                     "first_bad_line": bad + 1, "reason": reason})


def _verify_chain(path: Path, watch_seq: int | None) -> tuple[VerifyReport, str | None]:
    """The chain's own check, and the hash of the event at `watch_seq` (GENESIS for -1) if it was reached."""
    prev = GENESIS
    count = 0
    watched = GENESIS if watch_seq == -1 else None
    with open(path, "rb") as fh:
        data = fh.read()
    lines = data.split(b"\n")
    torn = lines[-1] != b""
    for lineno, raw in enumerate(lines[:-1], start=1):
        expected_seq = count
        try:
            line = json.loads(raw.decode("utf-8"))
            body = {k: v for k, v in line.items() if k != "hash"}
            claimed = line["hash"]
            seq = line["seq"]
        except (ValueError, KeyError, TypeError, AttributeError):
            reason = "line is not a journal event"
        else:
            if seq != expected_seq:
                reason = f"seq {seq} where {expected_seq} was expected"
            elif canonical_json(line).encode("utf-8") != raw:
                reason = "line is not in canonical form (bytes were changed)"
            elif line.get("prev") != prev:
                reason = "prev does not match the previous hash"
            elif line_hash(prev, body) != claimed:
                reason = "hash does not match the content"
            else:
                prev = claimed
                count += 1
                if seq == watch_seq:
                    watched = claimed
                continue
        return VerifyReport(ok=False, events=count, last_hash=prev, trusted=count, first_bad_seq=expected_seq,
                            first_bad_line=lineno, reason=reason, torn_tail=torn), watched
    return VerifyReport(ok=True, events=count, last_hash=prev, trusted=count, torn_tail=torn), watched
