"""Starting and continuing a run: its id and sandbox, and, on resume, each file cut back to its last commit
and what the next tick needs rebuilt from the files.

A tick is committed whole or not at all (see `loop.py`); the registers name the byte offset of every
committed file, so whatever an interrupted tick had begun is cut off (and kept in `recovered/`) and
nothing is replayed twice.
"""

from __future__ import annotations

import secrets
import sys
import time
import traceback
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bloodwork import prompts
from bloodwork.chaos.plan import ChaosProfile
from bloodwork.chronos.context_log import history_entries
from bloodwork.chronos.files import atomic_write
from bloodwork.chronos.records import CrashData, ResumeData, RunStartData, TraceRecord, iter_records
from bloodwork.chronos.run import (
    Provenance,
    RunDirError,
    RunDirLock,
    RunManifest,
    RunPaths,
    RunStatus,
    check_run_id,
    claim_new_run_dir,
    discard_run_dir,
    git_sha,
    now_iso,
    versions,
)
from bloodwork.context.builder import HistoryEntry
from bloodwork.errors import BloodworkError
from bloodwork.kernel.config import KernelConfig
from bloodwork.kernel.registers import Registers
from bloodwork.manifold.runner import CommandRunner, SandboxError
from bloodwork.oracles.base import Oracle
from bloodwork.tasks.base import Task

if TYPE_CHECKING:
    from bloodwork.kernel.loop import Kernel


class KernelError(BloodworkError):
    """A run cannot start or continue (bad run directory, finished run, ...)."""


def new_run_id(task_id: str, spec: str, seed: int) -> str:
    slug = "".join(c if c.isalnum() else "-" for c in f"{task_id}-{spec.split(':')[0]}")[:48].strip("-")
    return f"{slug}-s{seed}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def make_runner(paths: RunPaths, config: KernelConfig, task: Task) -> CommandRunner:
    """The run's sandbox; a missing one is a KernelError, raised before anything is written."""
    try:
        return CommandRunner(paths.workspace, sandbox=config.sandbox, limits=config.limits,
                             toolchain=task.toolchain())
    except SandboxError as err:
        raise KernelError(str(err)) from err


class ResumePoint:
    """A run directory's committed state, read and checked before anything is written."""

    def __init__(self, paths: RunPaths, max_ticks: int | None) -> None:
        self.manifest = RunManifest.load(paths)
        self.registers = Registers.model_validate_json(paths.registers.read_text())
        R, manifest = self.registers, self.manifest
        extendable = R.status == RunStatus.MAX_TICKS and max_ticks is not None and max_ticks > R.tick
        # Ended, and killed after its last commit but before the manifest was final: only the paperwork is left.
        self.ended = R.status not in (RunStatus.RUNNING, RunStatus.INTERRUPTED) and not extendable
        if self.ended and manifest.status == R.status:
            raise KernelError(f"run {manifest.run_id} has ended ({R.status.value}); nothing to resume")
        if max_ticks is not None and not self.ended:
            manifest.config["max_ticks"] = max_ticks
        self.config = KernelConfig.model_validate(manifest.config)
        self.chaos = ChaosProfile.model_validate(manifest.chaos)


def truncate_uncommitted(paths: RunPaths, R: Registers) -> dict[str, int]:
    """Cut each committed file back to its recorded offset; keep the cut bytes as evidence."""
    cut: dict[str, int] = {}
    for path, offset in ((paths.journal, R.journal_offset), (paths.trace, R.trace_offset),
                         (paths.context_ticks, R.context_offset), (paths.dirty, R.dirty_offset),
                         (paths.context / "history.jsonl", R.history_offset)):
        size = path.stat().st_size if path.exists() else 0
        if offset is not None and size > offset:
            paths.recovered.mkdir(exist_ok=True)
            with open(path, "rb") as fh:
                fh.seek(offset)
                tail = fh.read()
            (paths.recovered / f"{path.name}.{R.tick}.{int(time.time())}.uncommitted").write_bytes(tail)
            with open(path, "r+b") as fh:
                fh.truncate(offset)
            cut[path.name] = size - offset
    return cut


def restore_history(paths: RunPaths, R: Registers) -> list[HistoryEntry]:
    """The history window the next tick shows, from the context store."""
    if not R.history_span:
        return []
    entries = history_entries(paths.context)
    first, last = R.history_span
    return [HistoryEntry(tick=t, observation=entries[t]["observation"], action=entries[t]["action"],
                         masked=entries[t]["masked"]) for t in range(first, last + 1)]


def create(cls: type[Kernel], task: Task, oracle: Oracle, *, out_dir: Path, config: KernelConfig, seed: int,
           chaos: ChaosProfile, run_id: str | None = None, command_line: list[str] | None = None,
           model_options: dict[str, Any] | None = None, chaos_key: str | None = None,
           replay_of: str | None = None) -> Kernel:
    """Start a run in `out_dir/run_id`.

    What can fail without touching the disk (the run id, the manifest, the sandbox) is built first.
    Then the directory is claimed under a lock and filled; if anything fails, the directory is removed
    again. A kill -9 before the first commit can still leave it half-built (no registers.json): the
    next `create` with that run id replaces it, and `resume` starts it again from its run.json.
    """
    run_id = run_id or new_run_id(task.id, oracle.spec, seed)
    try:
        check_run_id(run_id)
        provenance = Provenance(oracle.provenance)
    except ValueError as err:
        raise KernelError(str(err)) from err
    paths = RunPaths(out_dir / run_id)
    runner = make_runner(paths, config, task)
    manifest = RunManifest(run_id=run_id, task=task.id, task_source=getattr(task, "source", task.id),
                           task_meta=task.metadata, model=oracle.spec, provenance=provenance, seed=seed,
                           chaos=chaos.model_dump(), chaos_key=chaos_key or run_id, replay_of=replay_of,
                           config=config.model_dump(), oracle={**oracle.describe(), "options": model_options or {}},
                           sandbox=runner.describe(), versions=versions(), git_sha=git_sha(),
                           command_line=command_line or sys.argv, started_at=now_iso())
    try:
        lock = claim_new_run_dir(paths)
    except RunDirError as err:
        runner.close()
        raise KernelError(str(err)) from err
    kernel: Kernel | None = None
    try:
        paths.create()
        manifest.save(paths)
        task.prepare(paths.workspace, seed)
        kernel = cls(paths, task, oracle, config, manifest, Registers(panic_budget_left=config.panic_budget),
                     chaos, runner=runner)
        kernel.task.start(kernel.runner, seed=seed, resumed=False)
        listing = kernel.runner.run("find . -path ./.git -prune -o -type f -print | sort | head -100", 10).text
        kernel.R.slice_id = kernel.blobs.put(prompts.start_slice(listing))
        kernel.journal.stage(0, RunStartData(run_id=run_id, task=task.id, model=oracle.spec,
                                             provenance=oracle.provenance, seed=seed, chaos=chaos.name,
                                             panic_budget=config.panic_budget, sandbox=runner.kind,
                                             world_index=kernel.world_index.kind))
        kernel._persist()
        kernel._save_manifest()
    except BaseException:
        (kernel._close if kernel is not None else runner.close)()
        discard_run_dir(paths, lock)
        raise
    kernel._dir_lock = lock
    return kernel


def resume(cls: type[Kernel], run_dir: Path, task: Task, oracle: Oracle, *, max_ticks: int | None = None) -> Kernel:
    """Continue a run from its last committed tick (with `max_ticks`, to a new horizon: forks use it)."""
    paths = RunPaths(run_dir)
    if not paths.registers.is_file():
        return _restart_creation(cls, paths, task, oracle, max_ticks)
    if not paths.manifest.is_file():
        raise KernelError(f"{run_dir} is not a bloodwork run directory")
    try:
        lock = RunDirLock(paths.root)
    except RunDirError as err:
        raise KernelError(str(err)) from err
    try:
        kernel = _resume_locked(cls, paths, task, oracle, ResumePoint(paths, max_ticks))
    except BaseException:
        lock.release()
        raise
    kernel._dir_lock = lock
    return kernel


def _resume_locked(cls: type[Kernel], paths: RunPaths, task: Task, oracle: Oracle, point: ResumePoint) -> Kernel:
    manifest, registers = point.manifest, point.registers
    runner = make_runner(paths, point.config, task)  # before anything is written: a missing sandbox changes nothing
    if point.ended:
        kernel = cls(paths, task, oracle, point.config, manifest, registers, point.chaos, runner=runner)
        manifest.resumes += 1
        kernel._finish()
        return kernel
    recovered = truncate_uncommitted(paths, registers)
    registers.status = RunStatus.RUNNING
    kernel = cls(paths, task, oracle, point.config, manifest, registers, point.chaos, runner=runner)
    for rec in iter_records(paths.trace, TraceRecord):
        kernel.detectors.replay_record(rec)
    kernel.history = restore_history(paths, registers)
    manifest.resumes += 1
    manifest.status = RunStatus.RUNNING
    manifest.verifier = None  # a verdict on the world as the run last ended; the run goes on from here
    kernel._save_manifest()
    kernel.task.start(kernel.runner, seed=manifest.seed, resumed=True)
    kernel.journal.stage(registers.tick, ResumeData(at_tick=registers.tick, discarded_uncommitted=recovered,
                                                    resumes=manifest.resumes))
    kernel._persist()
    return kernel


def _restart_creation(cls: type[Kernel], paths: RunPaths, task: Task, oracle: Oracle,
                      max_ticks: int | None) -> Kernel:
    """A run killed before its first commit has nothing to continue: start it again from its run.json."""
    try:
        manifest = RunManifest.load(paths)
    except (OSError, ValueError) as err:
        raise KernelError(f"{paths.root} is not a bloodwork run directory (no registers.json, no readable "
                          "run.json); a run killed that early is started again with `bloodwork run ... "
                          "--run-id` of the same name") from err
    config = KernelConfig.model_validate({**manifest.config, **({"max_ticks": max_ticks} if max_ticks else {})})
    return create(cls, task, oracle, out_dir=paths.root.parent, config=config, seed=manifest.seed,
                  chaos=ChaosProfile.model_validate(manifest.chaos), run_id=manifest.run_id,
                  command_line=manifest.command_line, model_options=manifest.oracle.get("options"),
                  chaos_key=manifest.chaos_key, replay_of=manifest.replay_of)


def record_crash(kernel: Kernel, err: BaseException) -> None:
    """A kernel bug: its traceback in crash.txt, a `crash` event that still ends the chain at its committed head,
    and a manifest that says so (each step best effort: the kernel is in an unknown state)."""
    report = "".join(traceback.format_exception(err))
    with suppress(OSError):
        kernel.paths.crash_report.write_text(report, errors="backslashreplace")
    with suppress(Exception):
        kernel.journal.discard()
        committed = Registers.model_validate_json(kernel.paths.registers.read_text())
        anchored = kernel.journal.head().hash == committed.journal_prev  # not so if _persist itself failed
        kernel.journal.stage(kernel.R.tick, CrashData(error=repr(err)[:500], report=kernel.paths.crash_report.name))
        offset = kernel.journal.flush()
        if anchored:
            # The committed registers (not the half-updated ones in memory) get the new head, so the chain
            # still ends at its recorded head, and a resume keeps the crash event.
            committed.journal_offset, committed.journal_seq, committed.journal_prev = (
                offset, kernel.journal.seq, kernel.journal.prev)
            atomic_write(kernel.paths.registers, committed.model_dump_json(), sync_dir=False)
    with suppress(Exception):
        kernel.manifest.status = RunStatus.CRASHED
        kernel.manifest.ended_at = now_iso()
        kernel._save_manifest()
