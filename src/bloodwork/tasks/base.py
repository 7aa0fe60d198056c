"""The task protocol: a goal, a workspace to prepare, a hidden verifier, metadata.

A task never shows its verifier to the agent: hidden tests live outside the workspace and are placed next
to a *copy* of the workspace only when a halt is verified, inside a sandbox of the verifier's own; the
agent sees the verdict (`summary`), never the tests or their output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, Field

from bloodwork.errors import BloodworkError
from bloodwork.manifold.toolchain import Toolchain


class TaskError(BloodworkError, ValueError):
    """A task definition is malformed or cannot be found."""


class VerifierResult(BaseModel):
    """What the hidden verifier found. `passed` decides a halt; the rest is evidence."""

    passed: bool
    summary: str
    stage: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    duration_s: float = 0.0


class CommandRunnerLike(Protocol):
    """The run's sandbox (`bloodwork.manifold.runner.CommandRunner`): tasks start services in it."""

    def run(self, cmd: str, timeout_s: float) -> Any: ...


@runtime_checkable
class Task(Protocol):
    """What the kernel needs from a task. The kernel calls, in order:

    `prepare` (fill the empty workspace; a failure is a `TaskError`), `toolchain` (the interpreter the
    sandbox's commands get: None for bloodwork's own, else e.g. a repo-fix instance's environment),
    `start` (processes, inside the run's sandbox, once the sandbox exists; also after a resume, with
    `resumed=True`), `on_tick` before every tick (task-level
    faults; each returned dict is journaled as an injected `chaos` event), `verify` on every `SYS_HALT`
    and at the end of the run, `close` when the run stops.
    """

    id: str
    goal: str
    metadata: dict[str, Any]

    def prepare(self, workspace: Path, seed: int) -> None: ...

    def toolchain(self) -> Toolchain | None: ...

    def start(self, runner: CommandRunnerLike, *, seed: int, resumed: bool) -> None: ...

    def on_tick(self, runner: CommandRunnerLike, tick: int, seed: int) -> list[dict[str, Any]]: ...

    def verify(self, workspace: Path, runner: CommandRunnerLike) -> VerifierResult:
        """Judge the world as it is now; never modifies the workspace."""
        ...

    def close(self) -> None: ...
