"""One run as training material: its verified journal, the raw text behind each committed tick, the
exact prompt of each tick, and which pool (if any) the tick belongs to.

Pools are decided from journal events only (the hash chain is verified first; events past a break are
ignored), never from a report:

- *golden*: a tick event without traps, not blocked, with a strict frame, that made world progress and
  is not a recovery;
- *recovery*: the tick of a `recovery` event (it ends a trap streak); its prompt holds the window from
  the trap on, as far as the context kept it;
- *rejected*: a tick with a natural (not injected) THRASHING, WATCHDOG, SCHEMA_VIOLATION or ILLEGAL_HALT.

The three tests are exclusive (recovery and golden need a trap-free tick; rejected needs a trap, and a
recovery tick is never golden), so the pools are disjoint by construction; `build` checks it again.
A positive target must be the strictly valid raw text: a lenient-only frame would teach prose around JSON.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from bloodwork.chronos.context_log import messages_at
from bloodwork.chronos.files import read_jsonl
from bloodwork.chronos.records import (
    ChaosEvent,
    DirtyRecord,
    Event,
    RecoveryData,
    RecoveryEvent,
    TickEvent,
    TrapEvent,
    iter_records,
    of_kind,
)
from bloodwork.chronos.run import RunManifest, RunPaths, verified_events
from bloodwork.data.formats import Messages, Pool, prompt_sha256
from bloodwork.kernel.traps import NEGATIVE_TRAPS


@dataclass
class TickView:
    """What the verified journal, the dirty trace and the context store say about one committed tick."""

    tick: int
    op: str | None
    fingerprint: str | None
    strict_ok: bool
    progress: bool
    blocked: bool
    traps: list[str]
    natural_traps: list[str]
    injected: bool
    recovery: RecoveryData | None
    halted: bool
    text: str | None
    error: str | None
    history: tuple[int, int] | None
    violation: str | None


@dataclass
class Example:
    """A candidate row: a tick of a run, its exact prompt, its raw answer, its pool."""

    pool: Pool
    run_id: str
    group: str
    task: str
    tick: int
    provenance: str
    model: str
    source: str
    prompt: Messages
    completion: str
    op: str | None
    traps: list[str]
    detail: str
    window_complete: bool = True
    temperature: float = 0.0
    kind: str = "run"  # where the row comes from: run (a tick), fork (a student sample), teacher (a kept relabel)
    variant: str = ""  # "" for a run's tick; FORK_ID/kCANDIDATE for a fork's candidates (one tick, many answers)
    prompt_sha: str = field(init=False)
    completion_sha: str = field(init=False)

    def __post_init__(self) -> None:
        self.prompt_sha = prompt_sha256(self.prompt)
        self.completion_sha = hashlib.sha256(self.completion.encode("utf-8")).hexdigest()

    @property
    def row_id(self) -> str:
        variant = f"|{self.variant}" if self.variant else ""
        return hashlib.sha256(f"{self.run_id}|{self.tick}|{self.pool}{variant}".encode()).hexdigest()[:16]

    @property
    def positive(self) -> bool:
        return self.pool != "rejected"


class RunView:
    """A run's committed ticks, from its files. Only events before a broken chain link are believed."""

    def __init__(self, run_dir: Path, source: str = "") -> None:
        self.paths = RunPaths(run_dir)
        self.manifest = RunManifest.load(self.paths)
        self.source = source or str(run_dir)
        self.events: list[Event]
        self.events, report = verified_events(self.paths)
        self.journal_ok = report.ok
        self.group = self.manifest.replay_of or self.manifest.run_id
        self.ticks = self._ticks()

    @property
    def run_id(self) -> str:
        return self.manifest.run_id

    @property
    def provenance(self) -> str:
        return self.manifest.provenance.value

    @property
    def temperature(self) -> float:
        """The run's sampling temperature (its oracle's options, else what the oracle described; 0 = greedy)."""
        oracle = self.manifest.oracle
        value = (oracle.get("options") or {}).get("temperature", oracle.get("temperature", 0.0))
        return float(value) if isinstance(value, int | float) else 0.0

    def _ticks(self) -> dict[int, TickView]:
        calls = {r.call_index: r for r in iter_records(self.paths.dirty, DirtyRecord) if r.purpose == "tick"}
        windows = {r["tick"]: tuple(r["history"]) if r.get("history") else None
                   for r in read_jsonl(self.paths.context_ticks)}
        by_tick: dict[int, list[Event]] = {}
        for e in self.events:
            by_tick.setdefault(e.tick, []).append(e)
        views: dict[int, TickView] = {}
        for tick, evs in by_tick.items():
            tick_event = next(iter(of_kind(evs, TickEvent)), None)
            if tick_event is None:
                continue
            d = tick_event.data
            traps = [e.data for e in of_kind(evs, TrapEvent)]
            chaos_on_oracle = any(e.data.target == "oracle" for e in of_kind(evs, ChaosEvent))
            call = calls.get(d.call_index)
            views[tick] = TickView(
                tick=tick, op=d.op, fingerprint=d.fp, strict_ok=bool(d.strict_ok), progress=d.progress,
                blocked=d.blocked, traps=[t.kind for t in traps],
                natural_traps=[t.kind for t in traps if not t.injected],
                injected=chaos_on_oracle or any(t.injected for t in traps),
                recovery=next((e.data for e in of_kind(evs, RecoveryEvent)), None),
                halted=any(e.kind == "halt" for e in evs), text=call.text if call else None,
                error=call.error if call else "no raw output recorded", history=windows.get(tick),
                violation=d.violation)
        return views

    def prompt(self, tick: int) -> Messages:
        """Exactly what the kernel's context builder sent at `tick`."""
        return messages_at(self.paths.context, tick)

    def classify(self, t: TickView) -> tuple[Pool | None, str]:
        """The tick's pool, or None with the reason it is no row ('' when it matched no pool at all)."""
        if t.recovery is not None:
            return self._positive("recovery", t)
        if not t.traps and not t.blocked and t.op and t.progress:
            return self._positive("golden", t)
        if set(t.natural_traps) & NEGATIVE_TRAPS:
            if t.error is not None or not (t.text or "").strip():
                return None, "rejected without raw text"
            return "rejected", ""
        return None, ""

    @staticmethod
    def _positive(pool: Pool, t: TickView) -> tuple[Pool | None, str]:
        if t.error is not None or t.text is None:
            return None, f"{pool} without raw text"
        if not t.strict_ok:
            return None, f"{pool} target not strictly valid"
        return pool, ""

    def examples(self, skipped: dict[str, int]) -> list[Example]:
        """Every tick that belongs to a pool, as an Example; the reasons for the others go to `skipped`."""
        out: list[Example] = []
        for tick in sorted(self.ticks):
            t = self.ticks[tick]
            pool, reason = self.classify(t)
            if pool is None:
                if reason:
                    skipped[reason] = skipped.get(reason, 0) + 1
                continue
            try:
                prompt = self.prompt(tick)
            except KeyError:
                skipped["no recorded context"] = skipped.get("no recorded context", 0) + 1
                continue
            out.append(self._example(pool, t, prompt))
        return out

    def _example(self, pool: Pool, t: TickView, prompt: Messages) -> Example:
        m = self.manifest
        window_complete = True
        if pool == "recovery":
            assert t.recovery is not None
            start = t.recovery.streak_start_tick
            window_complete = t.history is not None and t.history[0] <= start
            detail = (f"streak from tick {start} ({','.join(t.recovery.traps)}), "
                      f"mttr {t.recovery.mttr_ticks} ticks")
            traps = list(dict.fromkeys(t.recovery.traps))
        elif pool == "rejected":
            traps = t.natural_traps
            detail = t.violation or ""
        else:
            traps, detail = [], "halt accepted" if t.halted else ""
        return Example(pool=pool, run_id=m.run_id, group=self.group, task=m.task, tick=t.tick,
                       provenance=self.provenance, model=m.model, source=self.source, prompt=prompt,
                       completion=t.text or "", op=t.op, traps=traps, detail=detail, window_complete=window_complete,
                       temperature=self.temperature)
