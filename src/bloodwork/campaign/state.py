"""The campaign's state, persisted atomically in its directory after every change.

`campaign.json` says which phase runs, each attempt's vars, remedy, steps (command line, exit status,
wall time, log), check results and gate. A step is recorded as started before it runs and as finished
after, so a campaign killed at any point resumes at the interrupted step of the interrupted phase.
A lock file keeps two runners out of one directory; the kernel drops the lock when its holder dies.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import BaseModel, Field

from bloodwork.campaign.checks import CheckResult
from bloodwork.chronos.files import atomic_write
from bloodwork.chronos.run import now_iso
from bloodwork.errors import BloodworkError

STATE_FILE = "campaign.json"
PLAN_COPY = "plan.yaml"
LOCK_FILE = ".campaign.lock"
Gate = Literal["GO", "NO-GO"]
StepStatus = Literal["running", "ok", "failed", "timeout", "missing"]


class CampaignError(BloodworkError, ValueError):
    """A campaign directory that cannot be used: missing, busy, or holding another campaign."""


class StepRecord(BaseModel):
    name: str
    argv: list[str] = Field(default_factory=list)
    status: StepStatus = "running"
    exit: int | None = None
    wall_s: float | None = None
    log: str | None = Field(default=None, description="stdout + stderr, relative to the campaign directory")
    started_at: str = Field(default_factory=now_iso)
    ended_at: str | None = None
    note: str = ""


class Attempt(BaseModel):
    n: int
    dir: str
    vars: dict[str, Any]
    remedy: dict[str, Any] | None = None
    status: Literal["running", "done"] = "running"
    stage: Literal["implement", "evidence", "audit", "done"] = "implement"
    steps: list[StepRecord] = Field(default_factory=list)
    checks: list[CheckResult] = Field(default_factory=list)
    gate: Gate | None = None
    blockers: int = 0
    findings: int = 0
    interruptions: list[str] = Field(default_factory=list)
    started_at: str = Field(default_factory=now_iso)
    ended_at: str | None = None
    wall_s: float = 0.0


class PhaseState(BaseModel):
    id: int
    name: str
    status: Literal["pending", "running", "done", "skipped"] = "pending"
    attempts: list[Attempt] = Field(default_factory=list)
    gate: Gate | None = None
    note: str = ""
    wall_s: float = 0.0


class Session(BaseModel):
    """One process that worked on the campaign (run, then each resume)."""

    command: str
    pid: int
    started_at: str = Field(default_factory=now_iso)
    ended_at: str | None = None
    ended: Literal["finished", "stopped"] | None = None


class CampaignState(BaseModel):
    schema_version: int = 1
    plan: str
    plan_source: str
    plan_sha256: str
    sets: dict[str, str] = Field(default_factory=dict)
    auditor: str | None = None
    auditor_calls: int = 0
    status: Literal["running", "done", "stopped"] = "running"
    created_at: str = Field(default_factory=now_iso)
    updated_at: str = Field(default_factory=now_iso)
    wall_s: float = 0.0
    sessions: list[Session] = Field(default_factory=list)
    phases: list[PhaseState]

    def phase(self, phase_id: int) -> PhaseState:
        return next(p for p in self.phases if p.id == phase_id)

    def gates(self) -> dict[int, Gate | None]:
        return {p.id: p.gate for p in self.phases}


def state_path(root: Path) -> Path:
    return root / STATE_FILE


def save(root: Path, state: CampaignState) -> None:
    state.updated_at = now_iso()
    atomic_write(state_path(root), state.model_dump_json(indent=1))


def load(root: Path) -> CampaignState:
    path = state_path(root)
    if not path.is_file():
        raise CampaignError(f"{root} is not a campaign directory (no {STATE_FILE})")
    try:
        return CampaignState.model_validate_json(path.read_text())
    except ValueError as err:
        raise CampaignError(f"{path} is not a campaign state file: {str(err).splitlines()[0]}") from err


class Lock:
    """An exclusive flock on the campaign directory, held while a runner works in it."""

    def __init__(self, root: Path) -> None:
        self.path = root / LOCK_FILE
        self._fh: IO[str] | None = None

    def __enter__(self) -> Lock:
        self._fh = open(self.path, "a+")  # noqa: SIM115 - held until __exit__
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.seek(0)
            holder = self._fh.read().strip() or "another process"
            self._fh.close()
            raise CampaignError(f"{self.path.parent} is in use by pid {holder}") from None
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(str(os.getpid()))
        self._fh.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
