"""The run directory's layout and its manifest (`run.json`)."""

from __future__ import annotations

import platform
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from bloodwork.chronos.files import atomic_write

SCHEMA_VERSION = 1


class Provenance(StrEnum):
    """Who produced a run's answers. Only `real` is a model's own behaviour: `scripted` (fixtures),
    `replay` (recorded answers played back) and `expert` (a task's reference policy, `expert:TASK`)
    are never counted as one."""

    REAL = "real"
    SCRIPTED = "scripted"
    REPLAY = "replay"
    EXPERT = "expert"


# What `--include-scripted` lets into datasets and eval sets next to `real`: everything that is not a model.
NOT_MODEL_BEHAVIOUR = frozenset({Provenance.SCRIPTED.value, Provenance.REPLAY.value, Provenance.EXPERT.value})


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    DIED = "died"
    MAX_TICKS = "max_ticks"
    INTERRUPTED = "interrupted"
    CRASHED = "crashed"


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "run.json"

    @property
    def journal(self) -> Path:
        return self.root / ".journal.log"

    @property
    def trace(self) -> Path:
        return self.root / "trace.jsonl"

    @property
    def dirty(self) -> Path:
        return self.root / "dirty_trace.jsonl"

    @property
    def context(self) -> Path:
        return self.root / "context"

    @property
    def context_ticks(self) -> Path:
        return self.context / "ticks.jsonl"

    @property
    def blobs(self) -> Path:
        return self.context / "blobs.jsonl"

    @property
    def workspace(self) -> Path:
        return self.root / "workspace"

    @property
    def spill(self) -> Path:
        return self.root / "spill"

    @property
    def registers(self) -> Path:
        return self.root / "registers.json"

    @property
    def crash_report(self) -> Path:
        return self.root / "crash.txt"

    @property
    def recovered(self) -> Path:
        return self.root / "recovered"

    def create(self) -> None:
        for d in (self.root, self.context, self.workspace, self.spill):
            d.mkdir(parents=True, exist_ok=True)


class RunManifest(BaseModel):
    """Everything needed to know what a run was and to reproduce it."""

    schema_version: int = SCHEMA_VERSION
    run_id: str
    task: str
    task_source: str = ""
    task_meta: dict[str, Any] = Field(default_factory=dict)
    model: str
    provenance: Provenance
    seed: int
    chaos_key: str = ""
    replay_of: str | None = None
    chaos: dict[str, Any] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)
    sandbox: dict[str, Any] = Field(default_factory=dict)
    oracle: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    git_sha: str | None = None
    command_line: list[str] = Field(default_factory=list)
    status: RunStatus = RunStatus.RUNNING
    cause_of_death: str | None = None
    ticks: int = 0
    started_at: str = ""
    ended_at: str | None = None
    verifier: dict[str, Any] | None = None
    resumes: int = 0

    def save(self, paths: RunPaths) -> None:
        atomic_write(paths.manifest, self.model_dump_json(indent=2))

    @classmethod
    def load(cls, paths: RunPaths) -> RunManifest:
        return cls.model_validate_json(paths.manifest.read_text())


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def git_sha() -> str | None:
    """The sha of the bloodwork checkout this code runs from, if it is one."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("bloodwork", "pydantic", "torch", "transformers", "peft", "openai"):
        try:
            found[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return found
