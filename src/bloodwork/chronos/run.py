"""The run directory's layout and its manifest (`run.json`)."""

from __future__ import annotations

import fcntl
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from itertools import islice
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bloodwork.chronos.files import atomic_write, read_jsonl
from bloodwork.chronos.journal import GENESIS, Event, JournalHead, VerifyReport, iter_events, verify
from bloodwork.errors import BloodworkError

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


# What a run directory holds before its first commit (atomic_write's temporaries included): a directory
# with nothing else and no registers.json is a run killed while being created, safe to replace.
HALF_BUILT = frozenset({"run.json", "run.json.tmp", ".journal.log", "trace.jsonl", "dirty_trace.jsonl", "context",
                        "workspace", "spill", "registers.json.tmp"})


class RunDirError(BloodworkError, ValueError):
    """A run directory cannot be claimed: it exists, it is in use, or it cannot be made."""


def check_run_id(run_id: str) -> None:
    """A run id names one folder under --out: no separators, no `.`/`..`, not hidden, not too long."""
    problem = ("is empty" if not run_id else "contains '/'" if "/" in run_id else "contains a NUL" if "\0" in run_id
               else "starts with '.'" if run_id.startswith(".") else
               "is longer than 200 bytes" if len(run_id.encode("utf-8", "surrogatepass")) > 200 else None)
    if problem:
        raise RunDirError(f"run id {run_id!r} {problem}: it must name one folder inside the output folder")


class RunDirLock:
    """An exclusive `flock` on a run directory, held while a kernel builds or drives it; a killed
    process's lock goes with it, so a lock that can be taken means nobody is using the directory."""

    def __init__(self, root: Path, *, create: bool = False) -> None:
        self.root = root
        try:
            if create:
                root.mkdir(parents=True, exist_ok=True)
            self._fd: int | None = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as err:
            raise RunDirError(f"cannot {'create' if create else 'open'} the run directory {root}: "
                              f"{err.strerror}") from err
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.release()
            raise RunDirError(f"{root} is in use by another process (a run being created, run or resumed)") from None
        except OSError:
            self.release()  # a file system without flock on directories (some network mounts): run unlocked

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.release()


def claim_new_run_dir(paths: RunPaths) -> RunDirLock:
    """Make (or take over) the directory of a new run and lock it.

    An existing directory is refused unless it is empty or half-built: no registers.json (nothing was
    ever committed) and nothing but the files a run makes before its first commit. A half-built one is
    what a kill -9 during creation leaves; it is emptied, so it never blocks its run id.
    """
    lock = RunDirLock(paths.root, create=True)
    if paths.registers.exists():
        lock.release()
        raise RunDirError(f"{paths.root} exists already; choose another --run-id or resume it")
    entries = os.listdir(paths.root)
    if set(entries) - HALF_BUILT:
        lock.release()
        raise RunDirError(f"{paths.root} exists and is not a run directory; choose another --run-id")
    for name in entries:
        _remove(paths.root / name)
    return lock


def discard_run_dir(paths: RunPaths, lock: RunDirLock) -> None:
    """Remove a run directory whose creation failed (the caller holds its lock), then let the lock go."""
    try:
        shutil.rmtree(paths.root, ignore_errors=True)
    finally:
        lock.release()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


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
    journal_head: JournalHead | None = Field(default=None, description="the journal's committed head when this "
                                             "manifest was saved (final once the run has ended)")

    def save(self, paths: RunPaths) -> None:
        atomic_write(paths.manifest, self.model_dump_json(indent=2))

    @classmethod
    def load(cls, paths: RunPaths) -> RunManifest:
        return cls.model_validate_json(paths.manifest.read_text())


class CommittedState(BaseModel):
    """The part of `registers.json` that anchors the journal (the kernel owns the rest of that file)."""

    model_config = ConfigDict(extra="ignore")

    journal_seq: int = Field(ge=0)
    journal_prev: str

    @property
    def head(self) -> JournalHead:
        return JournalHead(seq=self.journal_seq - 1, hash=self.journal_prev)


def committed_head(paths: RunPaths) -> JournalHead | None:
    """The head recorded with the registers at the last commit; None if there is no readable registers file."""
    try:
        return CommittedState.model_validate_json(paths.registers.read_bytes()).head
    except (OSError, ValueError, ValidationError):
        return None


def verify_run(paths: RunPaths) -> VerifyReport:
    """The journal against its committed head (registers.json), and run.json's head against the chain.

    A final manifest (the run ended) must name the same head; a running one (a killed run) names an
    earlier head, which must still be on the chain.
    """
    head = committed_head(paths)
    if not paths.journal.is_file() or head is None:
        return VerifyReport(ok=False, events=0, last_hash=GENESIS, reason=f"no {paths.journal.name}" if head else
                            "no committed head: registers.json is missing or unreadable (a run killed while being "
                            "created?)")
    report = verify(paths.journal, head)
    report.anchor = "registers.json"
    if not report.ok:
        return report
    try:
        manifest = RunManifest.load(paths)
    except (OSError, ValueError):
        return report.model_copy(update={"ok": False, "trusted": 0, "reason": "run.json is missing or unreadable"})
    saved = manifest.journal_head
    if saved is None or saved == head:
        return report
    if manifest.status != RunStatus.RUNNING:
        reason = (f"run.json of this {manifest.status.value} run names the head {saved}, registers.json {head}: "
                  "one of them was changed")
    elif (saved.hash == GENESIS) if saved.seq == -1 else any(e["seq"] == saved.seq and e["hash"] == saved.hash
                                                              for e in read_jsonl(paths.journal)):
        return report  # a run killed mid-way: run.json was last saved at an earlier commit on the same chain
    else:
        reason = f"run.json names the head {saved}, which is not on the journal's chain"
    return report.model_copy(update={"ok": False, "trusted": 0, "first_bad_seq": None, "reason": reason})


def verified_events(paths: RunPaths) -> tuple[list[Event], VerifyReport]:
    """The events a count may use: `verify_run`'s trusted prefix (all of them when the journal verifies).

    Only that prefix is parsed: lines past it may be anything a forger wrote.
    """
    report = verify_run(paths)
    events = list(islice(iter_events(paths.journal), report.trusted)) if report.trusted else []
    return events, report


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


class RunsNotFound(BloodworkError, ValueError):
    """A path given as runs does not exist, or no run directory is under the paths given."""


def find_runs(paths: list[Path]) -> list[Path]:
    """Run directories under the given paths (a run, a sweep, or any folder of runs); bundles excluded, and
    so are a Ray sweep's `interrupted/` partial attempts (their cell's finished run is counted; name the
    folder itself to extract them)."""
    found: list[Path] = []
    for path in paths:
        if not path.exists():
            raise RunsNotFound(f"{path} does not exist")
        if (path / "run.json").is_file() and (path / ".journal.log").is_file():
            found.append(path)
            continue
        for manifest in sorted(path.rglob("run.json")):
            run = manifest.parent
            if "workspace" in run.parts or {"deaths", "interrupted"} & set(run.relative_to(path).parts):
                continue
            if (run / ".journal.log").is_file():
                found.append(run)
    if not found:
        raise RunsNotFound(f"no run directories under {', '.join(map(str, paths))}")
    return sorted(set(found))
