"""SCRIPTED on-goal worker for the smoke plan's context profile: a test fixture, not a model.

It keeps working on the long-haul task's files (reads of SPEC.md and the package, writes of new module
drafts, a line count now and then) and restates its goal when the kernel probes it, so every context
policy sees the same valid frames and the profile's verdicts say something about the policies only.
"""

from __future__ import annotations

import json
from typing import Any

READS = ("SPEC.md", "ledger/money.py", "ledger/accounts.py", "ledger/parser.py")


def _op(tick: int) -> dict[str, Any]:
    k = tick % 4
    if k == 0:
        return {"name": "SYS_READ", "path": READS[(tick // 4) % len(READS)]}
    if k == 1:
        return {"name": "SYS_WRITE", "path": f"drafts/module_{tick}.py", "content": f"# draft {tick}\nVALUE = {tick}\n"}
    if k == 2:
        return {"name": "SYS_READ", "path": f"drafts/module_{tick - 1}.py"}
    return {"name": "SYS_EXEC", "cmd": f"wc -l SPEC.md drafts/module_{tick - 2}.py"}


def policy(call: Any, messages: list[dict[str, str]]) -> str:
    if call.purpose == "probe":
        return "My goal is to implement the ledger package in ledger/ as SPEC.md describes, module by module."
    return json.dumps({"thought": f"working on the ledger, tick {call.tick}", "q_next": f"tick {call.tick}",
                       "op": _op(call.tick)})
