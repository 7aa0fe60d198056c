"""The exact context of every tick, stored compactly: `context/` of a run.

Sending a model 40 history turns a tick must not cost 40 lines on disk a tick. Each text is stored
once (`blobs.jsonl`, by content id); each history entry once, when it is made (`history.jsonl`, and again
when it is masked); each tick's record names the system and goal texts, the span of history entries it
showed, and its own tail (`ticks.jsonl`). `messages_at(tick)` rebuilds exactly what was sent.

Layout of the messages (the context builder's, see `bloodwork.context.builder`): system, [goal],
(observation, action) per history entry oldest first, tail.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bloodwork.chronos.files import BlobStore, JsonlAppender, load_blobs, read_jsonl


class ContextLog:
    def __init__(self, context_dir: Path) -> None:
        self.blobs = BlobStore(context_dir / "blobs.jsonl")
        self.entries = JsonlAppender(context_dir / "history.jsonl")
        self.ticks = JsonlAppender(context_dir / "ticks.jsonl")

    def add_entry(self, tick: int, observation: str, action: str) -> None:
        self.entries.append({"tick": tick, "obs": self.blobs.put(observation), "act": self.blobs.put(action)})

    def mask_entry(self, tick: int, observation: str) -> None:
        self.entries.append({"tick": tick, "obs": self.blobs.put(observation), "masked": True})

    def record_tick(self, tick: int, *, system: str, goal: str | None, history: tuple[int, int] | None, tail: str,
                    meta: dict[str, Any]) -> int:
        rec = {"tick": tick, "system": self.blobs.put(system), "goal": self.blobs.put(goal) if goal else None,
               "history": list(history) if history else None, "tail": self.blobs.put(tail), **meta}
        return self.ticks.append(rec)

    def close(self) -> None:
        for f in (self.blobs, self.entries, self.ticks):
            f.close()


def history_entries(context_dir: Path) -> dict[int, dict[str, Any]]:
    """Each entry's latest version (masked if it was masked), by tick; texts resolved."""
    blobs = load_blobs(context_dir / "blobs.jsonl")
    entries: dict[int, dict[str, Any]] = {}
    for rec in read_jsonl(context_dir / "history.jsonl"):
        entry = entries.setdefault(rec["tick"], {"tick": rec["tick"], "masked": False})
        entry["observation"] = blobs[rec["obs"]]
        if "act" in rec:
            entry["action"] = blobs[rec["act"]]
        entry["masked"] = bool(rec.get("masked"))
    return entries


def messages_at(context_dir: Path, tick: int) -> list[dict[str, str]]:
    """The exact messages sent to the model at `tick` (masking as it stood then)."""
    blobs = load_blobs(context_dir / "blobs.jsonl")
    record = next((r for r in read_jsonl(context_dir / "ticks.jsonl") if r["tick"] == tick), None)
    if record is None:
        raise KeyError(f"no context recorded for tick {tick}")
    masked_below = record.get("masked_below", -1)
    versions: dict[int, dict[str, str]] = {}
    for rec in read_jsonl(context_dir / "history.jsonl"):
        if "act" in rec:
            versions[rec["tick"]] = {"obs": rec["obs"], "act": rec["act"]}
        elif rec["tick"] < masked_below and rec["tick"] in versions:
            versions[rec["tick"]]["obs"] = rec["obs"]
    messages = [{"role": "system", "content": blobs[record["system"]]}]
    if record.get("goal"):
        messages.append({"role": "user", "content": blobs[record["goal"]]})
    if record.get("history"):
        first, last = record["history"]
        for t in range(first, last + 1):
            messages.append({"role": "user", "content": blobs[versions[t]["obs"]]})
            messages.append({"role": "assistant", "content": blobs[versions[t]["act"]]})
    messages.append({"role": "user", "content": blobs[record["tail"]]})
    return messages
