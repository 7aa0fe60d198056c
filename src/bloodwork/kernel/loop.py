"""The tick loop: observe, build context, ask, parse, guard, commit, account.

The kernel owns all state; the model is a stateless transition function. A tick is committed whole
or not at all: its trace, context and journal lines are appended first, the journal is fsynced, and
the registers file is replaced atomically last. The registers hold the byte offsets of every
committed file, so a resume truncates whatever an interrupted tick had begun (keeping those bytes in
`recovered/`) and replays nothing twice.
"""

from __future__ import annotations

import secrets
import signal
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from bloodwork import prompts
from bloodwork.chaos.plan import ChaosProfile, FaultPlan
from bloodwork.chronos.context_log import ContextLog, history_entries
from bloodwork.chronos.files import JsonlAppender, atomic_write
from bloodwork.chronos.journal import Journal, escape_surrogates
from bloodwork.chronos.records import (
    ChaosData,
    CrashData,
    DeathData,
    DirtyRecord,
    EvictData,
    HaltData,
    LastTick,
    PanicData,
    ProbeData,
    RecoveryData,
    ResumeData,
    RunStartData,
    StopData,
    Streak,
    TickData,
    TraceRecord,
    TrapData,
    iter_records,
)
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
from bloodwork.context.builder import ContextBuilder, HistoryEntry
from bloodwork.isa import (
    Frame,
    ParseResult,
    SysEdit,
    SysExec,
    SysHalt,
    SysRead,
    SysWrite,
    json_schema,
    parse,
)
from bloodwork.kernel.config import KernelConfig
from bloodwork.kernel.effects import Outcome, World, trap_outcome
from bloodwork.kernel.traps import CHAOS_TRAPS, Act, Detectors, TrapKind, digest, fingerprint, observation_digest
from bloodwork.manifold.runner import CommandInterrupted, CommandRunner, SandboxError
from bloodwork.manifold.workspace import PageFault, PathEscape, Workspace
from bloodwork.manifold.worldindex import WorldIndex
from bloodwork.oracles.base import CallInfo, Completion, Oracle
from bloodwork.oracles.chaotic import ChaoticOracle
from bloodwork.tasks.base import Task

ORACLE_FAULTS = ("oracle_error", "oracle_slow", "oracle_truncate")
ACTION_SHOWN_CHARS = 1500


class KernelError(Exception):
    """A run cannot start or continue (bad run directory, finished run, ...)."""


class KernelCrash(Exception):
    """A kernel bug stopped the run; the journal and `crash.txt` say where."""


class Registers(BaseModel):
    """Everything the next tick needs, persisted atomically after each committed tick (small by design)."""

    tick: int = 0
    q: str = ""
    d: str = "sys://start"
    slice_id: str = ""
    oracle_calls: int = 0
    panic_budget_left: int
    panics: int = 0
    goal_in_history: bool = True
    goal_pinned_at: int = 0
    history_span: tuple[int, int] | None = None
    masked_below: int = -1
    streak: Streak | None = None
    journal_offset: int = 0
    journal_seq: int = 0
    journal_prev: str = "0" * 64
    trace_offset: int = 0
    context_offset: int = 0
    # None in runs recorded before these files were cut back on resume: they are then left as they are
    dirty_offset: int | None = None
    history_offset: int | None = None
    status: RunStatus = RunStatus.RUNNING
    cause_of_death: str | None = None


class RunResult(BaseModel):
    run_id: str
    run_dir: str
    status: RunStatus
    ticks: int
    cause_of_death: str | None = None
    verifier: dict[str, Any] | None = None


def new_run_id(task_id: str, spec: str, seed: int) -> str:
    slug = "".join(c if c.isalnum() else "-" for c in f"{task_id}-{spec.split(':')[0]}")[:48].strip("-")
    return f"{slug}-s{seed}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


class Kernel:
    """One run: a task, an oracle, a run directory. `create` starts one, `resume` continues one."""

    def __init__(self, paths: RunPaths, task: Task, oracle: Oracle, config: KernelConfig, manifest: RunManifest,
                 registers: Registers, chaos: ChaosProfile, runner: CommandRunner | None = None) -> None:
        self.paths = paths
        self.task = task
        self.config = config
        self.manifest = manifest
        self.R = registers
        # A replay keeps the original's key, so the plan decides every injection exactly as it did then.
        self.plan = FaultPlan(chaos, manifest.seed, manifest.chaos_key or manifest.run_id)
        if oracle.provenance != "replay" and any(chaos.rate(k) for k in ORACLE_FAULTS):
            oracle = ChaoticOracle(oracle, self.plan)
        self.oracle = oracle
        self.runner = runner or _make_runner(paths, config, task)
        self.world = World(Workspace(paths.workspace), self.runner, paths.spill, self.plan, config)
        # The loop detectors' world state: a content digest kept up to date from what changed, not a tree walk.
        self.world_index = WorldIndex(paths.workspace)
        self.journal = Journal(paths.journal, seq=registers.journal_seq, prev=registers.journal_prev)
        self.trace = JsonlAppender(paths.trace)
        self.dirty = JsonlAppender(paths.dirty)
        self.ctx_log = ContextLog(paths.context)
        self.blobs = self.ctx_log.blobs
        self.builder = ContextBuilder(config.context, oracle.tokenizer, prompts.ISA_PROMPT, task.goal)
        self.detectors = Detectors(config.traps)
        self.history: list[HistoryEntry] = []
        self.schema = json_schema()
        self._stop_reason: str | None = None
        self._dir_lock: RunDirLock | None = None
        self.on_tick: Callable[[dict[str, Any]], None] | None = None

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def create(cls, task: Task, oracle: Oracle, *, out_dir: Path, config: KernelConfig, seed: int,
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
        runner = _make_runner(paths, config, task)
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
            kernel.R.slice_id = kernel.blobs.put(kernel._start_slice())
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

    @classmethod
    def resume(cls, run_dir: Path, task: Task, oracle: Oracle, *, max_ticks: int | None = None) -> Kernel:
        """Continue a run from its last committed tick (with `max_ticks`, to a new horizon: forks use it)."""
        paths = RunPaths(run_dir)
        if not paths.registers.is_file():
            return cls._restart_creation(paths, task, oracle, max_ticks)
        if not paths.manifest.is_file():
            raise KernelError(f"{run_dir} is not a bloodwork run directory")
        try:
            lock = RunDirLock(paths.root)
        except RunDirError as err:
            raise KernelError(str(err)) from err
        try:
            kernel = cls._resume_locked(paths, task, oracle, max_ticks)
        except BaseException:
            lock.release()
            raise
        kernel._dir_lock = lock
        return kernel

    @classmethod
    def _resume_locked(cls, paths: RunPaths, task: Task, oracle: Oracle, max_ticks: int | None) -> Kernel:
        manifest = RunManifest.load(paths)
        registers = Registers.model_validate_json(paths.registers.read_text())
        extendable = registers.status == RunStatus.MAX_TICKS and max_ticks is not None and max_ticks > registers.tick
        ended = registers.status not in (RunStatus.RUNNING, RunStatus.INTERRUPTED) and not extendable
        if ended and manifest.status == registers.status:
            raise KernelError(f"run {manifest.run_id} has ended ({registers.status.value}); nothing to resume")
        if max_ticks is not None and not ended:
            manifest.config["max_ticks"] = max_ticks
        config = KernelConfig.model_validate(manifest.config)
        chaos = ChaosProfile.model_validate(manifest.chaos)
        runner = _make_runner(paths, config, task)  # before anything is written: a missing sandbox changes nothing
        if ended:
            # Killed after its last commit but before the manifest was final: only finish the paperwork.
            kernel = cls(paths, task, oracle, config, manifest, registers, chaos, runner=runner)
            manifest.resumes += 1
            kernel._finish()
            return kernel
        recovered = cls._truncate_uncommitted(paths, registers)
        registers.status = RunStatus.RUNNING
        kernel = cls(paths, task, oracle, config, manifest, registers, chaos, runner=runner)
        for rec in iter_records(paths.trace, TraceRecord):
            kernel.detectors.replay_record(rec)
        if registers.history_span:
            entries = history_entries(paths.context)
            first, last = registers.history_span
            kernel.history = [HistoryEntry(tick=t, observation=entries[t]["observation"], action=entries[t]["action"],
                                           masked=entries[t]["masked"]) for t in range(first, last + 1)]
        manifest.resumes += 1
        manifest.status = RunStatus.RUNNING
        manifest.verifier = None  # a verdict on the world as the run last ended; the run goes on from here
        kernel._save_manifest()
        kernel.task.start(kernel.runner, seed=manifest.seed, resumed=True)
        kernel.journal.stage(registers.tick, ResumeData(at_tick=registers.tick, discarded_uncommitted=recovered,
                                                        resumes=manifest.resumes))
        kernel._persist()
        return kernel

    @classmethod
    def _restart_creation(cls, paths: RunPaths, task: Task, oracle: Oracle, max_ticks: int | None) -> Kernel:
        """A run killed before its first commit has nothing to continue: start it again from its run.json."""
        try:
            manifest = RunManifest.load(paths)
        except (OSError, ValueError) as err:
            raise KernelError(f"{paths.root} is not a bloodwork run directory (no registers.json, no readable "
                              "run.json); a run killed that early is started again with `bloodwork run ... "
                              "--run-id` of the same name") from err
        config = KernelConfig.model_validate({**manifest.config, **({"max_ticks": max_ticks} if max_ticks else {})})
        return cls.create(task, oracle, out_dir=paths.root.parent, config=config, seed=manifest.seed,
                          chaos=ChaosProfile.model_validate(manifest.chaos), run_id=manifest.run_id,
                          command_line=manifest.command_line, model_options=manifest.oracle.get("options"),
                          chaos_key=manifest.chaos_key, replay_of=manifest.replay_of)

    @staticmethod
    def _truncate_uncommitted(paths: RunPaths, R: Registers) -> dict[str, int]:
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

    def _start_slice(self) -> str:
        listing = self.runner.run("find . -path ./.git -prune -o -type f -print | sort | head -100", 10).text
        return prompts.start_slice(listing)

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> RunResult:
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in previous:
            with suppress(ValueError):
                signal.signal(sig, self._request_stop)
        try:
            while self.R.status == RunStatus.RUNNING:
                if self._stop_reason:
                    self._end(RunStatus.INTERRUPTED, None)
                    break
                if self.R.tick >= self.config.max_ticks:
                    self._end(RunStatus.MAX_TICKS, None)
                    break
                self.step()
        except CommandInterrupted:
            # SIGTERM/SIGINT killed a waiting command: the tick in flight is dropped whole (resume re-asks
            # it). Had the tick committed already (a final verification was cut), `resume` finishes it.
            self.journal.discard()
            if self.R.status == RunStatus.RUNNING:
                self._end(RunStatus.INTERRUPTED, None)
        except Exception as err:
            self._crash(err)
            raise KernelCrash(f"kernel crashed at tick {self.R.tick}: {err!r}; see {self.paths.crash_report}") from err
        finally:
            for sig, handler in previous.items():
                with suppress(ValueError, TypeError):
                    signal.signal(sig, handler)
            self._close()
        return self.result()

    def _request_stop(self, signum: int, _frame: Any) -> None:
        self._stop_reason = signal.Signals(signum).name
        self.runner.interrupt()  # a command (or verification) waiting now is killed at once

    def result(self) -> RunResult:
        return RunResult(run_id=self.manifest.run_id, run_dir=str(self.paths.root), status=self.R.status,
                         ticks=self.R.tick, cause_of_death=self.R.cause_of_death, verifier=self.manifest.verifier)

    def _observe(self) -> str:
        d = self.R.d
        if d.startswith("sys://"):
            return self.blobs.get(self.R.slice_id)
        path, _, page = d.partition("#page=")
        try:
            return self.world.read_slice(path, int(page or 0))[0]
        except (PageFault, PathEscape) as err:
            return prompts.unreadable(d, str(err))

    def step(self) -> None:
        R = self.R
        tick = R.tick
        started = time.perf_counter()
        chaos = [ChaosData.model_validate(c) for c in self.task.on_tick(self.runner, tick, self.manifest.seed)]
        world_before = self.world_index.digest()
        slice_text = self._observe()
        ctx, goal_present = self.builder.build(self.history, R.q, R.d, slice_text, R.goal_in_history, tick,
                                               R.goal_pinned_at)
        ctx_history_span = (self.history[0].tick, self.history[-1].tick) if self.history else None
        probe = self._probe(tick, ctx.messages) if self.config.probe_every and tick % self.config.probe_every == 0 \
            else None
        call_index = R.oracle_calls
        t_ask = time.perf_counter()
        call = CallInfo(self.manifest.run_id, tick, call_index, workspace=self.paths.workspace)
        completion = self.oracle.complete(ctx.messages, self.schema, call=call)
        ask_s = time.perf_counter() - t_ask
        verdict = parse(completion.text) if completion.error is None else None
        self.dirty.append(self._dirty_record(tick, call_index, completion, verdict))
        chaos += [ChaosData.model_validate({**i, "tick": tick, "target": "oracle", "injected": True})
                  for i in completion.injected]

        frame = verdict.accepted(self.config.parse_mode) if verdict else None
        fp = fingerprint(frame.op.model_dump(mode="json")) if frame else None
        blocked = False
        halted: HaltData | None = None
        if completion.error is not None:
            outcome = trap_outcome(TrapKind.ORACLE_FAULT, f"{completion.error_class or 'error'}: {completion.error}")
        elif frame is None:
            assert verdict is not None
            outcome = trap_outcome(TrapKind.SCHEMA_VIOLATION, f"{verdict.violation}: {verdict.detail}")
        elif guard := self.detectors.guard(tick, fp or "", world_before):
            blocked = True
            outcome = trap_outcome(guard[0], guard[1] + "; the action was not run")
        else:
            outcome, halted = self._execute(frame, tick)

        chaos += outcome.chaos
        q_next, reg_evict = self.builder.bound_register(frame.q_next if frame else R.q)
        slice_digest = digest(outcome.slice_text)
        seen = observation_digest(outcome.slice_text, command_output=outcome.d.startswith("sys://exec/"))
        world_after = self.world_index.digest()
        outcome.changed = outcome.changed or world_after != world_before
        progress = outcome.changed or self.detectors.is_new(seen)
        traps = list(outcome.traps)
        act = Act(tick, fp, world_before, seen) if fp is not None and not blocked else None
        if halted is None and (idle := self.detectors.after(tick, act, seen, progress)):
            traps.append(idle)
        kinds = [k for k, _ in traps]
        injected_kinds = {CHAOS_TRAPS[c.kind] for c in chaos if c.kind in CHAOS_TRAPS}
        panic_kind = self.detectors.panic(tick, kinds) if kinds else None

        J = self.journal
        if probe is not None:
            J.stage(tick, probe)
        for event in chaos:
            J.stage(tick, event)
        evictions = list(ctx.evictions) + ([reg_evict.model_copy(update={"tick": tick})] if reg_evict else [])
        for ev in evictions:
            J.stage(tick, EvictData.model_validate(ev.model_dump()))
            if ev.section == "observation":
                R.masked_below = max(R.masked_below, ev.tick + 1)
                # An entry masked and then evicted in the same build was never shown masked.
                for entry in self.history:
                    if entry.tick == ev.tick:
                        self.ctx_log.mask_entry(ev.tick, entry.observation)
        op_json = frame.op.model_dump(mode="json", exclude={"content"}) if frame else None
        for kind, detail in traps:
            J.stage(tick, TrapData(kind=kind.value, detail=detail[:500], injected=kind in injected_kinds, op=op_json,
                                   d=outcome.d, slice=outcome.slice_text[:240]))
        J.stage(tick, TickData(op=op_json["name"] if op_json else None, fp=fp, call_index=call_index,
                               strict_ok=verdict.strict_ok if verdict else None,
                               lenient_ok=verdict.lenient_ok if verdict else None,
                               violation=verdict.violation if verdict else None, blocked=blocked,
                               progress=progress, changed=outcome.changed, d_next=outcome.d,
                               slice_digest=slice_digest, context_tokens=ctx.total_tokens,
                               latency_ms=round(completion.latency_ms, 3), ask_s=round(ask_s, 6),
                               traps=[k.value for k in kinds]))

        if R.streak and not traps and progress and frame is not None:
            now = time.time()
            J.stage(tick, RecoveryData(streak_start_tick=R.streak.first_tick, traps=R.streak.traps,
                                       mttr_ticks=tick - R.streak.first_tick,
                                       mttr_s=round(now - R.streak.first_ts, 3), op=op_json))
            R.streak = None
        if traps:
            if R.streak is None:
                R.streak = Streak(first_tick=tick, first_ts=time.time())
            R.streak.traps += [k.value for k in kinds]

        d_next, next_slice = outcome.d, outcome.slice_text
        observation = prompts.observation(R.d, slice_text)
        shown = escape_surrogates(completion.text)  # the raw text stays in the dirty trace; this is sent back
        action = shown if len(shown) <= ACTION_SHOWN_CHARS else (
            shown[:ACTION_SHOWN_CHARS] + f"... [{len(shown) - ACTION_SHOWN_CHARS} chars cut]")
        self.history.append(HistoryEntry(tick=tick, observation=observation, action=action or "(no answer)"))
        self.ctx_log.add_entry(tick, observation, self.history[-1].action)
        R.goal_in_history = goal_present
        if panic_kind is not None:
            R.panic_budget_left -= 1
            R.panics += 1
            for entry in self.history:
                tokens = self.builder.count(entry.action) + self.builder.count(entry.observation)
                J.stage(tick, EvictData(section="history", tick=entry.tick, reason="panic: history cleared",
                                        tokens=tokens))
            self.history.clear()
            self.detectors.reset()
            R.goal_in_history = True
            R.goal_pinned_at = tick + 1
            J.stage(tick, PanicData(cause=panic_kind.value, streak=R.streak, budget_left=R.panic_budget_left,
                                    panic_no=R.panics))
            R.streak = None
            d_next = "sys://panic"
            next_slice = prompts.panic_slice(R.panics, panic_kind.value, dict(traps)[panic_kind], R.panic_budget_left,
                                             self.task.goal)
            if R.panic_budget_left <= 0:
                R.status = RunStatus.DIED
                R.cause_of_death = panic_kind.value
                last = list(iter_records(self.paths.trace, TraceRecord))[-5:]
                J.stage(tick, DeathData(cause=panic_kind.value, panics=R.panics, tick=tick,
                                        last_ticks=[LastTick(tick=r.tick, op=r.op_name, traps=r.traps) for r in last],
                                        q=q_next, d=d_next))
        if halted is not None:
            J.stage(tick, halted)
            R.status = RunStatus.COMPLETED
            self.manifest.verifier = halted.verifier  # the verdict that accepted the halt is the run's

        self.trace.append(TraceRecord(
            tick=tick, q=R.q, d=R.d, slice_digest=digest(slice_text), next_digest=slice_digest,
            frame=frame.model_dump(mode="json") if frame else None, call_index=call_index,
            verdict="strict" if verdict and verdict.strict_ok else ("lenient" if verdict and verdict.lenient_ok
                                                                    else "invalid"),
            q_next=q_next, d_next=d_next, result=outcome.result, traps=[k.value for k in kinds], blocked=blocked,
            progress=progress, changed=outcome.changed, seen=seen, world=(world_before, world_after),
            panic=panic_kind.value if panic_kind else None, ts=round(time.time(), 3)))
        goal_shown = self.builder.goal_text if goal_present else None
        self.ctx_log.record_tick(tick, system=self.builder.system, goal=goal_shown, history=ctx_history_span,
                                 tail=ctx.tail, meta={
                                     "policy": self.config.context.policy, "masked_below": R.masked_below,
                                     "tokens": ctx.section_tokens, "total": ctx.total_tokens,
                                     "budget": self.config.context.budget_tokens, "exact": self.oracle.tokenizer.exact,
                                     "over_budget": ctx.over_budget, "evicted": [e.model_dump() for e in evictions]})
        R.q, R.d = q_next, d_next
        R.slice_id = self.blobs.put(next_slice)
        R.oracle_calls = call_index + 1
        R.tick = tick + 1
        self._persist()
        if R.status != RunStatus.RUNNING:
            self._finish()
        if self.on_tick is not None:
            self.on_tick({"tick": tick, "traps": [k.value for k in kinds], "panic": bool(panic_kind),
                          "status": R.status.value, "harness_s": time.perf_counter() - started - ask_s})

    def _probe(self, tick: int, messages: list[dict[str, str]]) -> ProbeData:
        """A side query on this tick's exact context; its answer is evidence, never part of the run's state."""
        question = {"role": "user", "content": prompts.PROBE_QUESTION}
        c = self.oracle.complete([*messages, question], None,
                                 call=CallInfo(self.manifest.run_id, tick, tick, purpose="probe",
                                               workspace=self.paths.workspace))
        self.dirty.append(self._dirty_record(tick, tick, c, None, purpose="probe"))
        return ProbeData(answer=c.text, error=c.error, latency_ms=round(c.latency_ms, 3),
                         context_tokens=self.builder.count("".join(m["content"] for m in messages)))

    def _execute(self, frame: Frame, tick: int) -> tuple[Outcome, HaltData | None]:
        op = frame.op
        if isinstance(op, SysHalt):
            verdict = self.task.verify(self.paths.workspace, self.runner)
            if verdict.passed:
                return Outcome(d="sys://halt", slice_text=prompts.halt_accepted(verdict.summary),
                               changed=True), HaltData(reason=op.reason, verifier=verdict.model_dump())
            return trap_outcome(TrapKind.ILLEGAL_HALT, prompts.halt_refused(verdict.summary)), None
        if isinstance(op, SysRead):
            return self.world.read(op, tick), None
        if isinstance(op, SysWrite):
            return self.world.write(op, tick), None
        if isinstance(op, SysEdit):
            return self.world.edit(op, tick), None
        assert isinstance(op, SysExec)
        return self.world.exec(op, tick), None

    def _dirty_record(self, tick: int, call_index: int, c: Completion, verdict: ParseResult | None,
                      purpose: Literal["tick", "probe"] = "tick") -> DirtyRecord:
        return DirtyRecord(
            tick=tick, call_index=call_index, purpose=purpose, provenance=self.oracle.provenance,
            model=self.oracle.spec, text=c.text, error=c.error, error_class=c.error_class,
            latency_ms=round(c.latency_ms, 3), ttft_ms=c.ttft_ms, queue_ms=c.queue_ms, prompt_tokens=c.prompt_tokens,
            completion_tokens=c.completion_tokens, retries=c.retries, finish_reason=c.finish_reason,
            batch_size=c.batch_size, injected=c.injected, strict_ok=verdict.strict_ok if verdict else None,
            lenient_ok=verdict.lenient_ok if verdict else None, violation=verdict.violation if verdict else None,
            lenient_violation=verdict.lenient_violation if verdict else None, ts=round(time.time(), 3))

    # -- commit and end ---------------------------------------------------------------------------
    def _persist(self) -> None:
        """The commit point: files appended, journal fsynced, then the registers replaced atomically."""
        R = self.R
        R.history_span = (self.history[0].tick, self.history[-1].tick) if self.history else None
        R.trace_offset = self.trace.tell()
        R.context_offset = self.ctx_log.ticks.tell()
        R.dirty_offset = self.dirty.tell()
        R.history_offset = self.ctx_log.entries.tell()
        R.journal_offset = self.journal.flush()
        R.journal_seq, R.journal_prev = self.journal.seq, self.journal.prev  # the head `bloodwork verify` checks
        atomic_write(self.paths.registers, R.model_dump_json(), sync_dir=False)

    def _save_manifest(self) -> None:
        """run.json with the journal's committed head as of now."""
        self.manifest.journal_head = self.journal.head()
        self.manifest.save(self.paths)

    def _end(self, status: RunStatus, cause: str | None) -> None:
        self.R.status = status
        self.R.cause_of_death = cause
        self.journal.stage(self.R.tick, StopData(status=status.value, reason=self._stop_reason))
        self._persist()
        self._finish()

    def _finish(self) -> None:
        """Final verifier result and manifest; the registers keep the resumable state."""
        m = self.manifest
        m.status = self.R.status
        m.cause_of_death = self.R.cause_of_death
        m.ticks = self.R.tick
        if self.R.status != RunStatus.INTERRUPTED:
            m.ended_at = now_iso()
            if m.verifier is None or self.R.status != RunStatus.COMPLETED:
                m.verifier = self.task.verify(self.paths.workspace, self.runner).model_dump()
        m.sandbox = self.runner.describe()
        self._save_manifest()

    def _crash(self, err: BaseException) -> None:
        report = "".join(traceback.format_exception(err))
        with suppress(OSError):
            self.paths.crash_report.write_text(report, errors="backslashreplace")
        with suppress(Exception):
            self.journal.discard()
            committed = Registers.model_validate_json(self.paths.registers.read_text())
            anchored = self.journal.head().hash == committed.journal_prev  # not so if _persist itself failed
            self.journal.stage(self.R.tick, CrashData(error=repr(err)[:500], report=self.paths.crash_report.name))
            offset = self.journal.flush()
            if anchored:
                # The committed registers (not the half-updated ones in memory) get the new head, so the chain
                # still ends at its recorded head, and a resume keeps the crash event.
                committed.journal_offset, committed.journal_seq, committed.journal_prev = (
                    offset, self.journal.seq, self.journal.prev)
                atomic_write(self.paths.registers, committed.model_dump_json(), sync_dir=False)
        with suppress(Exception):
            self.manifest.status = RunStatus.CRASHED
            self.manifest.ended_at = now_iso()
            self._save_manifest()

    def _close(self) -> None:
        for closer in (self.task.close, self.runner.close, self.world_index.close, self.trace.close, self.dirty.close,
                       self.ctx_log.close, self.journal.close):
            with suppress(Exception):
                closer()
        if self._dir_lock is not None:
            self._dir_lock.release()


def _make_runner(paths: RunPaths, config: KernelConfig, task: Task) -> CommandRunner:
    try:
        return CommandRunner(paths.workspace, sandbox=config.sandbox, limits=config.limits,
                             toolchain=task.toolchain())
    except SandboxError as err:
        raise KernelError(str(err)) from err

