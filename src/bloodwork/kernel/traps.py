"""Trap kinds, their properties in one table, and the detectors that watch the run: watchdog, thrashing, panics.

A trap must be a fault a user would call a fault. The loop detectors therefore judge an op together with
the world it acted on: the workspace's content digest before the op (`manifold.worldindex`) and the
observation it produced. The same op on an unchanged workspace with the same observation is a repeat; the
same test run after an edit is progress. The detectors' verdicts are checked on labelled trajectories
(tests/kernel/test_detector_bench.py, bench/detectors.py).

Detector state is rebuilt from `trace.jsonl` on resume (`replay_record`), so the registers file stays
small and a resumed run judges its next tick exactly as an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from bloodwork.chronos.journal import canonical_json
from bloodwork.chronos.records import TraceRecord
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


@dataclass(frozen=True)
class TrapSpec:
    """What a trap kind is.

    always_panics: one is a panic by itself (a loop verdict), not only a streak of three.
    chaos: the chaos kinds whose injection shows up as this trap (marked `injected` in the journal).
    fault: whose fault a natural one is. `environment` traps say something about the world rather than the
      answer (a write the disk refused), so a fork branch whose only traps are these is neutral.
    negative: a natural one makes its tick a `rejected` training example (data/mine.py).
    loop: a loop detector's verdict (repeat, no progress, oscillation), as opposed to a fault of one op.
    """

    always_panics: bool
    chaos: frozenset[str]
    fault: Literal["model", "environment"]
    negative: bool
    loop: bool = False


TRAPS: dict[TrapKind, TrapSpec] = {
    TrapKind.SCHEMA_VIOLATION: TrapSpec(False, frozenset({"oracle_truncate"}), "model", negative=True),
    TrapKind.PAGE_FAULT: TrapSpec(False, frozenset(), "model", negative=False),
    TrapKind.PATH_ESCAPE: TrapSpec(False, frozenset(), "model", negative=False),
    TrapKind.IO_FAULT: TrapSpec(False, frozenset({"write_deny", "disk_full"}), "environment", negative=False),
    TrapKind.EXEC_TIMEOUT: TrapSpec(False, frozenset({"exec_timeout"}), "model", negative=False),
    # A natural flood is output over the hard ceiling: its size says more about the program than the action.
    TrapKind.LOG_FLOOD: TrapSpec(False, frozenset({"log_flood"}), "environment", negative=False),
    TrapKind.WATCHDOG: TrapSpec(True, frozenset(), "model", negative=True, loop=True),
    TrapKind.THRASHING: TrapSpec(True, frozenset(), "model", negative=True, loop=True),
    TrapKind.ILLEGAL_HALT: TrapSpec(False, frozenset(), "model", negative=True),
    TrapKind.ORACLE_FAULT: TrapSpec(False, frozenset({"oracle_error"}), "environment", negative=False),
}

ALWAYS_PANIC = frozenset(k for k, s in TRAPS.items() if s.always_panics)
CHAOS_TRAPS: dict[str, TrapKind] = {chaos: k for k, s in TRAPS.items() for chaos in s.chaos}
NEGATIVE_TRAPS = frozenset(k.value for k, s in TRAPS.items() if s.negative)
ENVIRONMENT_TRAPS = frozenset(k.value for k, s in TRAPS.items() if s.fault == "environment")
LOOP_TRAPS = frozenset(k.value for k, s in TRAPS.items() if s.loop)


def fingerprint(op: dict[str, object]) -> str:
    """The action fingerprint: the op with all its fields, canonical; the thought and register do not count."""
    return hashlib.sha256(canonical_json(op).encode()).hexdigest()[:16]


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="replace")).hexdigest()[:16]


# What differs between two runs of the same command on the same files without saying anything new:
# wall-clock timings (pytest's `in 0.13s`), the size and digest of output that holds them, the tick in a
# spill file's name, memory addresses in reprs. One pattern, one pass: this runs on every command's output.
_VOLATILE = re.compile(r"\b(?:\d+(?:\.\d+)?m?s|sha256 [0-9a-f]{12,64}|\d+ bytes|exec-\d+\.out|0x[0-9a-fA-F]{6,16})\b")


def observation_digest(text: str, *, command_output: bool) -> str:
    """The digest the detectors compare observations by. A command's output has its volatile parts masked;
    any other slice (a file, a write's result, a trap) is compared as it is."""
    return digest(_VOLATILE.sub("#", text) if command_output else text)


@dataclass(frozen=True)
class Act:
    """One op that ran: its fingerprint, the world digest it acted on, the observation digest it produced."""

    tick: int
    fp: str
    world: str
    seen: str


class Detectors:
    def __init__(self, cfg: TrapConfig) -> None:
        self.cfg = cfg
        self.acts: deque[Act] = deque()
        self.recent: deque[tuple[int, TrapKind]] = deque()
        self.seen: OrderedDict[str, None] = OrderedDict()
        self.idle = 0

    def guard(self, tick: int, fp: str, world: str) -> tuple[TrapKind, str] | None:
        """Look at a proposed op before it runs, on the world it would act on.

        WATCHDOG: this op already ran `watchdog_repeats - 1` times within the window on this same world
        state and produced the same observation each time; running it again would show nothing new.
        THRASHING (oscillation): the last three ops were A, B, A on unchanging world states with the
        same observations, and this is B again on B's world state.
        """
        cfg = self.cfg
        same = Counter(a.seen for a in self.acts
                       if a.fp == fp and a.world == world and tick - a.tick < cfg.watchdog_window)
        repeats = 1 + max(same.values(), default=0)
        if repeats >= cfg.watchdog_repeats:
            return TrapKind.WATCHDOG, (f"the same action on an unchanged workspace with the same result, {repeats} "
                                       f"times within {cfg.watchdog_window} ticks")
        if cfg.thrash_oscillation and len(self.acts) >= 3:
            a, b, c = list(self.acts)[-3:]
            if (a.fp, a.world, a.seen) == (c.fp, c.world, c.seen) and (a.fp, a.world) != (b.fp, b.world) \
                    and (b.fp, b.world) == (fp, world):
                return TrapKind.THRASHING, "A-B-A-B oscillation between two unchanged world states, nothing new shown"
        return None

    def is_new(self, seen: str) -> bool:
        return seen not in self.seen

    def after(self, tick: int, act: Act | None, seen: str, progress: bool) -> tuple[TrapKind, str] | None:
        """Record a tick's op (None when it did not run) and outcome; report thrashing by lack of progress."""
        cfg = self.cfg
        if act is not None:
            self.acts.append(act)
            while self.acts and tick - self.acts[0].tick >= cfg.watchdog_window:
                self.acts.popleft()
        self.seen[seen] = None
        self.seen.move_to_end(seen)
        while len(self.seen) > cfg.seen_window:
            self.seen.popitem(last=False)
        self.idle = 0 if progress else self.idle + 1
        if self.idle >= cfg.thrash_idle_ticks:
            return TrapKind.THRASHING, f"{self.idle} ticks without a workspace change or anything new shown"
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
        self.acts.clear()
        self.recent.clear()
        self.idle = 0

    def replay_record(self, rec: TraceRecord) -> None:
        """Rebuild state from one committed trace record (resume).

        Records written before the world digest existed carry no `world`: their ops count as acting on
        one unknown world state, i.e. they are judged by the op and the observation alone."""
        op = (rec.frame or {}).get("op")
        seen = rec.seen or rec.next_digest
        world = rec.world[0] if rec.world else ""
        act = Act(rec.tick, fingerprint(op), world, seen) if op and not rec.blocked else None
        self.after(rec.tick, act, seen, rec.progress)
        self.panic(rec.tick, [TrapKind(k) for k in rec.traps])
        if rec.panic:
            self.reset()
