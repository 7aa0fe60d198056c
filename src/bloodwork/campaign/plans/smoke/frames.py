"""SCRIPTED matrix row for the smoke plan: a fake model that answers by call index (not a model).

Four answers in five are valid frames (a read, a write, a command, in turn); every fifth is prose, so
the matrix's schema-violation figures are not trivially zero or one.
"""

from __future__ import annotations

import json
from typing import Any

OPS = ({"name": "SYS_READ", "path": "SPEC.md"},
       {"name": "SYS_WRITE", "path": "notes.txt", "content": "reading the spec\n"},
       {"name": "SYS_EXEC", "cmd": "ls"})


def policy(call: Any, messages: list[dict[str, str]]) -> str:
    if call.call_index % 5 == 4:
        return "I would read the spec first."
    op = OPS[call.call_index % len(OPS)]
    return json.dumps({"thought": "continue", "q_next": f"call {call.call_index}", "op": op})
