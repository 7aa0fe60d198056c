"""`expert:TASK`: a built-in task's reference policy, as an oracle.

A reference policy answers the right next action at ANY state a run can be in, not a fixed script by
tick: it reads the run's workspace (read-only, through `CallInfo.workspace`) and the kernel's last
message (register, pointer, slice), compares the workspace with the task's reference (the finished
modules, the gold patch, the scenario's repair) and answers one frame. It keeps no memory between
calls, so it can take over from a student at tick 25 of a broken run, answer at a forked state, or
drive a whole run. Its runs and records are tagged `provenance: expert` and never count as model
behaviour.

`ExpertOracle.propose(workspace, tick, messages)` is the teacher's entry point (a fork asks it at a
copy of the workspace); `complete` wraps it in the oracle protocol for the kernel and the matrix.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bloodwork.chronos.run import Provenance
from bloodwork.errors import BloodworkError
from bloodwork.experts.edits import Op
from bloodwork.experts.observe import LastMessage, last_message, pinned_goal
from bloodwork.manifold.workspace import Workspace
from bloodwork.oracles.base import CallInfo, CharEstimate, Completion, Message


@dataclass(frozen=True)
class State:
    """Everything a policy may look at: the workspace (read-only), the tick and the last message."""

    ws: Workspace
    tick: int
    last: LastMessage


@dataclass(frozen=True)
class Decision:
    """One frame's worth of answer."""

    thought: str
    q_next: str
    op: Op

    def frame(self) -> str:
        return json.dumps({"thought": self.thought, "q_next": self.q_next, "op": self.op})


class Policy(Protocol):
    """A task family's reference policy (long-haul, repo-fix, ops)."""

    task_id: str
    goal: str

    def decide(self, state: State) -> Decision: ...

    def describe(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class TaskMismatch(BloodworkError, ValueError):
    """The state belongs to another task than the policy's."""


def halt(thought: str, reason: str) -> Decision:
    return Decision(thought, "done: " + reason[:200], {"name": "SYS_HALT", "reason": reason})


class ExpertOracle:
    """The oracle protocol around a policy. Tokens are estimated (4 chars/token), as for scripted oracles."""

    provenance = Provenance.EXPERT

    def __init__(self, spec: str, policy: Policy) -> None:
        self.spec = spec
        self.policy = policy
        self.task_id = policy.task_id
        self.tokenizer = CharEstimate()

    def propose(self, workspace: Path, tick: int, messages: list[Message]) -> Decision:
        """The next action at this state. Raises TaskMismatch when the messages pin another task's goal
        (an expert asked inside a sweep over other tasks), FileNotFoundError without a workspace."""
        goal = pinned_goal(messages)
        if goal is not None and goal != self.policy.goal:
            raise TaskMismatch(f"{self.spec} is the reference policy of {self.task_id}; this run pins another goal")
        if not workspace.is_dir():
            raise FileNotFoundError(f"no workspace at {workspace}")
        return self.policy.decide(State(ws=Workspace(workspace), tick=tick, last=last_message(messages)))

    def complete(self, messages: list[Message], schema: dict[str, Any] | None = None, *,
                 call: CallInfo | None = None) -> Completion:
        start = time.perf_counter()
        if call is None or call.workspace is None:
            return Completion(error=f"{self.spec} reads the run's workspace, and this call names none "
                              "(CallInfo.workspace): a frozen state cannot be answered", error_class="bad_request")
        try:
            decision = self.propose(Path(call.workspace), call.tick, messages)
        except TaskMismatch as err:
            return Completion(error=str(err), error_class="bad_request")
        except Exception as err:  # an oracle reports failures as data, never raises into the kernel
            return Completion(error=f"{self.spec} failed: {err!r}", error_class="internal",
                              latency_ms=(time.perf_counter() - start) * 1000)
        text = decision.frame() if call.purpose != "probe" else (
            f"My goal is the task {self.task_id}. Next: {decision.thought}")
        return Completion(text=text, latency_ms=(time.perf_counter() - start) * 1000,
                          completion_tokens=self.tokenizer.count(text), finish_reason="stop")

    def describe(self) -> dict[str, Any]:
        return {"backend": "expert", "task": self.task_id, **self.policy.describe(),
                "tokens": "estimate (4 chars/token)"}

    def close(self) -> None:
        self.policy.close()
