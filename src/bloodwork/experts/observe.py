"""What a reference policy reads of the kernel's messages: the register, the pointer and the slice.

The layouts are written and parsed back in ONE module, `bloodwork.prompts`: the tick's last user message
(`prompts.tail`, read with `prompts.split_tail`), the pinned goal (`prompts.GOAL_PREFIX`) and the head above
a command's output (`prompts.exec_head`, read with `prompts.split_exec_head`). Nothing here copies a literal.
"""

from __future__ import annotations

from dataclasses import dataclass

from bloodwork import prompts
from bloodwork.oracles.base import Message


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
        parts = prompts.split_tail(message.get("content", ""))
        if parts is not None:
            return LastMessage(*parts)
    return LastMessage(q="", d="", slice=messages[-1].get("content", "") if messages else "", found=False)


def pinned_goal(messages: list[Message]) -> str | None:
    """The goal the kernel pinned (`prompts.goal_text`), or None once it has left the context."""
    for message in messages:
        content = message.get("content", "")
        if message.get("role") == "user" and content.startswith(prompts.GOAL_PREFIX):
            return content[len(prompts.GOAL_PREFIX):]
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
    parts = prompts.split_exec_head(slice_text)
    return None if parts is None else ExecView(*parts)
