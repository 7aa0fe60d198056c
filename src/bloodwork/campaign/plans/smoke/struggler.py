"""SCRIPTED struggler for the smoke plan: a test fixture, not a model (its runs are `provenance: scripted`).

On the long-haul task it works in cycles of 12 ticks: productive writes, then a read of a file that does
not exist (PAGE_FAULT) and an answer in prose (SCHEMA_VIOLATION): two traps of different kinds, too few to
panic, recovered by the productive writes that follow.
From tick COLLAPSE on it alternates reads of missing files and prose: trap after trap spends the panic
budget and the run dies, dozens of ticks after its first trap. The frame depends on `call.tick` alone,
so a run replays identically from its raw outputs.
"""

from __future__ import annotations

import json
from typing import Any

COLLAPSE = 30
PROSE = ("Let me think about where the notes went before I do anything else.",
         "The spec probably wants the money module first, so I will look at that.",
         "I am not sure which file holds the parser; maybe I should list the directory.",
         "Something is wrong with my notes. I will start over from the beginning of the task.",
         "Before writing code I want to re-read what the accounts module is supposed to do.",
         "Perhaps the tests will tell me what is missing if I run them now.",
         "I keep losing track of the ledger format; the examples folder may explain it.")


def _op(tick: int) -> dict[str, Any]:
    if tick >= COLLAPSE or tick % 12 == 8:
        return {"name": "SYS_READ", "path": f"notes/missing-{tick}.txt"}
    if tick % 12 == 10:
        return {"name": "SYS_READ", "path": "SPEC.md"}
    return {"name": "SYS_WRITE", "path": f"notes/step-{tick}.txt", "content": f"progress note {tick}\n"}


def policy(call: Any, messages: list[dict[str, str]]) -> str:
    if call.purpose == "probe":
        return "My goal is to implement the ledger package as SPEC.md describes."
    if (call.tick < COLLAPSE and call.tick % 12 == 9) or (call.tick >= COLLAPSE and call.tick % 2):
        return PROSE[call.tick % len(PROSE)]
    thought = "the notes I need are missing" if _op(call.tick)["name"] == "SYS_READ" else "writing a progress note"
    return json.dumps({"thought": thought, "q_next": f"tick {call.tick}", "op": _op(call.tick)})
