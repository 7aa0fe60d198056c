"""What a reference policy reads of the kernel's messages: the register, the pointer and the slice.

The kernel's last user message is `REGISTER q:\\n<q>\\n\\nSLICE at d=<d>:\\n<slice>\\n\\nAnswer with one JSON
frame.` (built in `context/builder.py`). `last_message` is the ONE place that knows that layout, so when the
model-facing strings move to one module it is the one function to point there (with `pinned_goal`, which
reads the goal message). `exec_view` reads the head the kernel writes above a command's output
(`kernel/effects.py`): `$ CMD` then `[exit N, ...]`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bloodwork.oracles.base import Message

_TAIL = re.compile(r"REGISTER q:\n(?P<q>.*?)\n\nSLICE at d=(?P<d>[^\n]*):\n(?P<slice>.*)"
                   r"\n\nAnswer with one JSON frame\.?\s*\Z", re.DOTALL)
_EXEC_HEAD = re.compile(r"\$ (?P<cmd>.*?)\n\[exit (?P<exit>-?\d+)(?P<timeout>, TIMED OUT after [^\],]*)?"
                        r"(?:, [\d.]+s)?, \d+ bytes of output\]\n", re.DOTALL)


@dataclass(frozen=True)
class LastMessage:
    """The register, pointer and slice of this tick; `found` is False when no message has that layout."""

    q: str
    d: str
    slice: str
    found: bool = True


def last_message(messages: list[Message]) -> LastMessage:
    """The newest message in the kernel's tick layout (a goal probe appends its question after it)."""
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        m = _TAIL.match(message.get("content", ""))
        if m:
            return LastMessage(q=m["q"], d=m["d"], slice=m["slice"])
    return LastMessage(q="", d="", slice=messages[-1].get("content", "") if messages else "", found=False)


def pinned_goal(messages: list[Message]) -> str | None:
    """The goal the kernel pinned (`GOAL:\n<goal>`), or None once it has left the context."""
    for message in messages:
        content = message.get("content", "")
        if message.get("role") == "user" and content.startswith("GOAL:\n"):
            return content[len("GOAL:\n"):]
    return None


@dataclass(frozen=True)
class ExecView:
    """A command's result as the kernel showed it."""

    cmd: str
    exit_code: int
    timed_out: bool
    output: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


def exec_view(slice_text: str) -> ExecView | None:
    """The command, exit code and output of an exec slice; None for any other slice."""
    m = _EXEC_HEAD.match(slice_text)
    if m is None:
        return None
    return ExecView(cmd=m["cmd"], exit_code=int(m["exit"]), timed_out=bool(m["timeout"]),
                    output=slice_text[m.end():])
