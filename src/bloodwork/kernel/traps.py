"""Trap kinds and the detectors that watch the action stream: watchdog, thrashing, panics.

Detector state is rebuilt from `trace.jsonl` on resume (`replay_record`), so the registers file stays
small and a resumed run judges its next tick exactly as an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from enum import StrEnum

from bloodwork.chronos.journal import canonical_json
from bloodwork.kernel.config import TrapConfig


class TrapKind(StrEnum):
    SCHEMA_VIOLATION = "SCHEMA_VIOLATION"
    PAGE_FAULT = "PAGE_FAULT"
    PATH_ESCAPE = "PATH_ESCAPE"
    IO_FAULT = "IO_FAULT"
    EXEC_TIMEOUT = "EXEC_TIMEOUT"
    LOG_FLOOD = "LOG_FLOOD"
    WATCHDOG = "WATCHDOG"
    THRASHING = "THRASHING"
    ILLEGAL_HALT = "ILLEGAL_HALT"
    ORACLE_FAULT = "ORACLE_FAULT"


ALWAYS_PANIC = frozenset({TrapKind.WATCHDOG, TrapKind.THRASHING})


def fingerprint(op: dict[str, object]) -> str:
    """The action fingerprint: the op with all its fields, canonical; the thought and register do not count."""
    return hashlib.sha256(canonical_json(op).encode()).hexdigest()[:16]


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="replace")).hexdigest()[:16]


class Detectors:
    def __init__(self, cfg: TrapConfig) -> None:
        self.cfg = cfg
        self.fps: deque[tuple[int, str]] = deque()
        self.recent: deque[tuple[int, TrapKind]] = deque()
        self.seen: OrderedDict[str, None] = OrderedDict()
        self.idle = 0

    def guard(self, tick: int, fp: str) -> tuple[TrapKind, str] | None:
        """Look at a proposed op before it runs."""
        cfg = self.cfg
        repeats = 1 + sum(1 for t, f in self.fps if f == fp and tick - t < cfg.watchdog_window)
        if repeats >= cfg.watchdog_repeats:
            return TrapKind.WATCHDOG, f"the same action {repeats} times within {cfg.watchdog_window} ticks"
        if cfg.thrash_oscillation and len(self.fps) >= 3:
            (_, a), (_, b), (_, c) = list(self.fps)[-3:]
            if a != b and a == c and b == fp:
                return TrapKind.THRASHING, "A-B-A-B oscillation between two actions"
        return None

    def is_new(self, slice_digest: str) -> bool:
        return slice_digest not in self.seen

    def after(self, tick: int, fp: str | None, slice_digest: str, progress: bool) -> tuple[TrapKind, str] | None:
        """Record a tick's action and outcome; report thrashing by lack of world progress."""
        cfg = self.cfg
        if fp is not None:
            self.fps.append((tick, fp))
            while self.fps and tick - self.fps[0][0] >= cfg.watchdog_window:
                self.fps.popleft()
        self.seen[slice_digest] = None
        self.seen.move_to_end(slice_digest)
        while len(self.seen) > cfg.seen_window:
            self.seen.popitem(last=False)
        self.idle = 0 if progress else self.idle + 1
        if self.idle >= cfg.thrash_idle_ticks:
            return TrapKind.THRASHING, f"{self.idle} ticks without world progress"
        return None

    def panic(self, tick: int, traps: list[TrapKind]) -> TrapKind | None:
        """Add this tick's traps; a panic is WATCHDOG/THRASHING or one kind N times within M ticks."""
        cfg = self.cfg
        for kind in traps:
            self.recent.append((tick, kind))
        while self.recent and tick - self.recent[0][0] >= cfg.panic_window:
            self.recent.popleft()
        for kind in traps:
            if kind in ALWAYS_PANIC:
                return kind
        for kind in traps:
            if sum(1 for _, k in self.recent if k == kind) >= cfg.panic_streak:
                return kind
        return None

    def reset(self) -> None:
        """After a panic the slate is clean: the recovery protocol starts a new streak."""
        self.fps.clear()
        self.recent.clear()
        self.idle = 0

    def replay_record(self, rec: dict) -> None:
        """Rebuild state from one committed trace record (resume)."""
        tick = rec["tick"]
        op = (rec.get("frame") or {}).get("op")
        self.after(tick, fingerprint(op) if op and not rec.get("blocked") else None, rec["next_digest"],
                   rec["progress"])
        self.panic(tick, [TrapKind(k) for k in rec["traps"]])
        if rec.get("panic"):
            self.reset()
