"""Tasks defined as YAML folders: `task.yaml`, `files/` (the starting workspace), `hidden/` (verifier).

```yaml
id: long-haul/ledger
kind: long-haul
synthetic: true          # built by us, not taken from a real project
goal: |
  What the agent must achieve (shown to it, pinned in its context).
verifier:
  command: python3 -m pytest -q -p no:cacheprovider hidden   # run in a copy of the workspace
  timeout_s: 120
  report: junit          # the verdict: pytest's JUnit report (default), or `exit_code` for other commands
metadata: {...}          # anything else worth recording in the manifest
```

How the command is run and judged (a sandbox of its own, an unshadowable interpreter, a report the agent
cannot write): `bloodwork.tasks.hidden_tests`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bloodwork.errors import describe, read_yaml
from bloodwork.tasks.base import CommandRunnerLike, TaskError, VerifierResult
from bloodwork.tasks.hidden_tests import verify_folder


class VerifierSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: str
    timeout_s: float = Field(default=120, gt=0)
    report: Literal["junit", "exit_code"] = "junit"


class TaskFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    kind: str = "long-haul"
    synthetic: bool
    goal: str = Field(min_length=1)
    verifier: VerifierSpec
    metadata: dict[str, Any] = Field(default_factory=dict)


class FolderTask:
    """A task whose whole definition is a folder; verification runs pytest on hidden tests in a sandbox."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.source = str(folder.resolve())
        spec_path = folder / "task.yaml"
        if not spec_path.is_file():
            raise TaskError(f"{folder} has no task.yaml")
        raw = read_yaml(spec_path, TaskError)
        try:
            self.spec = TaskFile.model_validate(raw)
        except ValidationError as err:
            raise TaskError(f"{spec_path}: {describe(err, 'task')}") from err
        self.id = self.spec.id
        self.goal = self.spec.goal.strip()
        self.metadata = {"kind": self.spec.kind, "synthetic": self.spec.synthetic,
                         "verifier": f"hidden tests: {self.spec.verifier.command} "
                         f"(verdict from {self.spec.verifier.report}, in a sandbox of its own)", **self.spec.metadata}

    def prepare(self, workspace: Path, seed: int) -> None:
        files = self.folder / "files"
        if files.is_dir():
            shutil.copytree(files, workspace, dirs_exist_ok=True)

    def toolchain(self) -> None:
        return None

    def start(self, runner: CommandRunnerLike, *, seed: int, resumed: bool) -> None:
        return None

    def verify(self, workspace: Path, runner: CommandRunnerLike | None = None) -> VerifierResult:
        spec = self.spec.verifier
        return verify_folder(workspace, self.folder / "hidden", spec.command, spec.timeout_s, report=spec.report,
                             parent=runner)

    def on_tick(self, runner: CommandRunnerLike, tick: int, seed: int) -> list[dict[str, Any]]:
        return []

    def close(self) -> None:
        return None
