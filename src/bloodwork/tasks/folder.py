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
metadata: {...}          # anything else worth recording in the manifest
```
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bloodwork.manifold.runner import CommandRunner
from bloodwork.tasks.base import CommandRunnerLike, TaskError, VerifierResult, pytest_counts


class VerifierSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: str
    timeout_s: float = Field(default=120, gt=0)


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
        try:
            raw = yaml.safe_load(spec_path.read_text())
            self.spec = TaskFile.model_validate(raw)
        except yaml.YAMLError as err:
            raise TaskError(f"{spec_path}: not valid YAML ({str(err).splitlines()[0]})") from err
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "task"
            raise TaskError(f"{spec_path}: {where}: {first['msg']}") from err
        self.id = self.spec.id
        self.goal = self.spec.goal.strip()
        self.metadata = {"kind": self.spec.kind, "synthetic": self.spec.synthetic,
                         "verifier": f"hidden tests: {self.spec.verifier.command}", **self.spec.metadata}

    def prepare(self, workspace: Path, seed: int) -> None:
        files = self.folder / "files"
        if files.is_dir():
            shutil.copytree(files, workspace, dirs_exist_ok=True)

    def toolchain(self) -> None:
        return None

    def start(self, runner: CommandRunnerLike, *, seed: int, resumed: bool) -> None:
        return None

    def verify(self, workspace: Path, runner: CommandRunnerLike | None = None) -> VerifierResult:
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="bloodwork-verify-") as tmp:
            copy = Path(tmp) / "ws"
            shutil.copytree(workspace, copy, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
            hidden = self.folder / "hidden"
            if hidden.is_dir():
                # Whatever the agent put at ./hidden goes first: it must not shadow or rig the hidden suite.
                planted = copy / "hidden"
                if planted.is_symlink() or planted.is_file():
                    planted.unlink()
                elif planted.is_dir():
                    shutil.rmtree(planted)
                shutil.copytree(hidden, planted)
            runner = CommandRunner(copy)
            try:
                res = runner.run(self.spec.verifier.command, self.spec.verifier.timeout_s)
            finally:
                runner.close()
        counts = pytest_counts(res.text)
        passed = res.exit_code == 0 and not res.timed_out and counts["failed"] == 0 and counts["errors"] == 0
        summary = (f"{counts['passed']} passed, {counts['failed']} failed, {counts['errors']} errors"
                   + (" (timed out)" if res.timed_out else ""))
        return VerifierResult(passed=passed, summary=summary, stage="verified" if passed else "failing",
                              details={"exit_code": res.exit_code, **counts, "output_tail": res.text[-2000:]},
                              duration_s=round(time.monotonic() - start, 3))

    def on_tick(self, runner: CommandRunnerLike, tick: int, seed: int) -> list[dict[str, Any]]:
        return []

    def close(self) -> None:
        return None
