"""The hash-chained journal: `.journal.log`, one JSON event a line.

`hash = sha256(prev + canonical_json(line without hash))`; canonical = sorted keys, no spaces, UTF-8.
Lines of one tick are buffered and written with a single `write` + `fsync` at commit, so a tick is in
the journal whole or not at all; a torn last line (a crash mid-write) is reported and ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

GENESIS = "0" * 64


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def line_hash(prev: str, body: dict[str, Any]) -> str:
    return hashlib.sha256((prev + canonical_json(body)).encode("utf-8")).hexdigest()


class Event(BaseModel):
    """One journal line."""

    seq: int
    ts: float
    tick: int
    kind: str
    data: dict[str, Any]
    prev: str
    hash: str


class JournalCorrupt(Exception):
    """The chain is broken at `seq` (the first bad line)."""

    def __init__(self, seq: int, lineno: int, reason: str) -> None:
        super().__init__(f"journal broken at seq {seq} (line {lineno}): {reason}")
        self.seq, self.lineno, self.reason = seq, lineno, reason


class VerifyReport(BaseModel):
    ok: bool
    events: int
    last_hash: str
    torn_tail: bool = False
    first_bad_seq: int | None = None
    first_bad_line: int | None = None
    reason: str = ""


class Journal:
    """Append-only writer. `stage` buffers a tick's events; `flush` writes and fsyncs them at once."""

    def __init__(self, path: Path, *, seq: int = 0, prev: str = GENESIS) -> None:
        self.path = path
        self.seq = seq
        self.prev = prev
        self._pending: list[str] = []
        self._flushed = (seq, prev)
        self._fh = open(path, "ab", buffering=0)  # noqa: SIM115 - lives as long as the run

    def stage(self, tick: int, kind: str, data: dict[str, Any]) -> Event:
        body = {"seq": self.seq, "ts": round(time.time(), 6), "tick": tick, "kind": kind,
                "data": data, "prev": self.prev}
        digest = line_hash(self.prev, body)
        body["hash"] = digest
        self._pending.append(canonical_json(body) + "\n")
        self.seq += 1
        self.prev = digest
        return Event.model_validate(body)

    def flush(self) -> int:
        """Write every staged line in one call and fsync; return the file size after."""
        if self._pending:
            self._fh.write("".join(self._pending).encode("utf-8"))
            self._pending.clear()
            os.fdatasync(self._fh.fileno())
        self._flushed = (self.seq, self.prev)
        return self._fh.tell()

    def discard(self) -> None:
        """Drop staged lines of a tick that will not be committed; the chain continues from the last flush."""
        self._pending.clear()
        self.seq, self.prev = self._flushed

    def close(self) -> None:
        self.flush()
        self._fh.close()


def iter_events(path: Path) -> Iterator[Event]:
    """Read events without checking the chain; a torn last line is skipped."""
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                return
            yield Event.model_validate_json(raw)


def read_events(path: Path) -> list[Event]:
    return list(iter_events(path))


def verify(path: Path) -> VerifyReport:
    """Check every line's hash and link. A torn last line (no newline) is tolerated and reported."""
    prev = GENESIS
    count = 0
    with open(path, "rb") as fh:
        data = fh.read()
    lines = data.split(b"\n")
    torn = lines[-1] != b""
    complete = lines[:-1]
    for lineno, raw in enumerate(complete, start=1):
        expected_seq = count
        try:
            line = json.loads(raw.decode("utf-8"))
            body = {k: v for k, v in line.items() if k != "hash"}
            claimed = line["hash"]
            seq = line["seq"]
        except (ValueError, KeyError, TypeError, AttributeError):
            return VerifyReport(ok=False, events=count, last_hash=prev, first_bad_seq=expected_seq,
                                first_bad_line=lineno, reason="line is not a journal event", torn_tail=torn)
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
            continue
        return VerifyReport(ok=False, events=count, last_hash=prev, first_bad_seq=expected_seq,
                            first_bad_line=lineno, reason=reason, torn_tail=torn)
    return VerifyReport(ok=True, events=count, last_hash=prev, torn_tail=torn)
