"""The tick loop: observe, build context, ask, parse, guard, commit, account.

The kernel owns all state; the model is a stateless transition function. A tick is committed whole
or not at all: its trace, context and journal lines are appended first, the journal is fsynced, and
the registers file is replaced atomically last. The registers hold the byte offsets of every
committed file, so a resume truncates whatever an interrupted tick had begun (`lifecycle.py`).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from contextlib import suppress
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from bloodwork import prompts
from bloodwork.chaos.plan import ChaosProfile, FaultPlan
from bloodwork.chronos.context_log import ContextLog
from bloodwork.chronos.files import JsonlAppender, atomic_write
from bloodwork.chronos.journal import Journal, escape_surrogates
from bloodwork.chronos.records import (
    ChaosData,
    DeathData,
    EvictData,
    LastTick,
    PanicData,
    ProbeData,
    RecoveryData,
    StopData,
    TraceRecord,
    TrapData,
    iter_records,
)
from bloodwork.chronos.run import RunDirLock, RunManifest, RunPaths, RunStatus, now_iso
from bloodwork.context.builder import ContextBuilder, HistoryEntry
from bloodwork.isa import json_schema, parse
from bloodwork.kernel import lifecycle
from bloodwork.kernel.config import KernelConfig
from bloodwork.kernel.effects import World, trap_outcome
from bloodwork.kernel.lifecycle import KernelError, make_runner, new_run_id
from bloodwork.kernel.registers import Registers, Streak
from bloodwork.kernel.tick import Tick, dirty_record
from bloodwork.kernel.traps import CHAOS_TRAPS, Act, Detectors, TrapKind, fingerprint, observation_digest
from bloodwork.manifold.runner import CommandInterrupted, CommandRunner
from bloodwork.manifold.workspace import PageFault, PathEscape, Workspace
from bloodwork.manifold.worldindex import WorldIndex
from bloodwork.oracles.base import CallInfo, Oracle
from bloodwork.oracles.chaotic import ChaoticOracle
from bloodwork.tasks.base import Task

__all__ = ["Kernel", "KernelCrash", "KernelError", "Registers", "RunResult", "new_run_id"]

ORACLE_FAULTS = ("oracle_error", "oracle_slow", "oracle_truncate")
ACTION_SHOWN_CHARS = 1500


class KernelCrash(Exception):
    """A kernel bug stopped the run; the journal and `crash.txt` say where."""


class RunResult(BaseModel):
    run_id: str
    run_dir: str
    status: RunStatus
    ticks: int
    cause_of_death: str | None = None
    verifier: dict[str, Any] | None = None


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
        self.runner = runner or make_runner(paths, config, task)
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

    # -- construction (lifecycle.py) ---------------------------------------------------------------
    @classmethod
    def create(cls, task: Task, oracle: Oracle, *, out_dir: Path, config: KernelConfig, seed: int,
               chaos: ChaosProfile, run_id: str | None = None, command_line: list[str] | None = None,
               model_options: dict[str, Any] | None = None, chaos_key: str | None = None,
               replay_of: str | None = None) -> Kernel:
        """Start a run in `out_dir/run_id` (see `lifecycle.create`)."""
        return lifecycle.create(cls, task, oracle, out_dir=out_dir, config=config, seed=seed, chaos=chaos,
                                run_id=run_id, command_line=command_line, model_options=model_options,
                                chaos_key=chaos_key, replay_of=replay_of)

    @classmethod
    def resume(cls, run_dir: Path, task: Task, oracle: Oracle, *, max_ticks: int | None = None) -> Kernel:
        """Continue a run from its last committed tick (with `max_ticks`, to a new horizon: forks use it)."""
        return lifecycle.resume(cls, run_dir, task, oracle, max_ticks=max_ticks)

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> RunResult:
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in previous:
            with suppress(ValueError):
                signal.signal(sig, self._on_signal)
        try:
            while self.R.status == RunStatus.RUNNING:
                if self._stop_reason:
                    self._end(RunStatus.INTERRUPTED)
                    break
                if self.R.tick >= self.config.max_ticks:
                    self._end(RunStatus.MAX_TICKS)
                    break
                self.step()
        except CommandInterrupted:
            # SIGTERM/SIGINT killed a waiting command: the tick in flight is dropped whole (resume re-asks
            # it). Had the tick committed already (a final verification was cut), `resume` finishes it.
            self.journal.discard()
            if self.R.status == RunStatus.RUNNING:
                self._end(RunStatus.INTERRUPTED)
        except Exception as err:
            lifecycle.record_crash(self, err)
            raise KernelCrash(f"kernel crashed at tick {self.R.tick}: {err!r}; see {self.paths.crash_report}") from err
        finally:
            for sig, handler in previous.items():
                with suppress(ValueError, TypeError):
                    signal.signal(sig, handler)
            self._close()
        return self.result()

    def stop(self, reason: str, *, now: bool = False) -> None:
        """End the run as interrupted (resumable) before its next tick; `now` also kills a command running now,
        which drops the tick in flight whole. Safe from another thread or a signal handler."""
        self._stop_reason = reason
        if now:
            self.runner.interrupt()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.stop(signal.Signals(signum).name, now=True)

    @property
    def registers(self) -> Registers:
        """A copy of the committed-or-current registers (tick, panics, budget, ...): the run's state is the kernel's."""
        return self.R.model_copy(deep=True)

    def result(self) -> RunResult:
        return RunResult(run_id=self.manifest.run_id, run_dir=str(self.paths.root), status=self.R.status,
                         ticks=self.R.tick, cause_of_death=self.R.cause_of_death, verifier=self.manifest.verifier)

    def step(self) -> None:
        """One tick, in the order its effects happen and are recorded."""
        t = self._observe()
        self._ask(t)
        self._act(t)
        self._detect(t)
        self._journal(t)
        self._account(t)
        self._remember(t)
        if t.panic is not None:
            self._panic(t)
        if t.halted is not None:
            self.journal.stage(t.n, t.halted)
            self.R.status = RunStatus.COMPLETED
            self.manifest.verifier = t.halted.verifier  # the verdict that accepted the halt is the run's
        self._trace(t)
        self._commit(t)

    # -- the steps of a tick ----------------------------------------------------------------------
    def _observe(self) -> Tick:
        """The task's own events, the world as it is, the slice the model is shown, and the context built on it."""
        R, started = self.R, time.perf_counter()
        chaos = [ChaosData.model_validate(c) for c in self.task.on_tick(self.runner, R.tick, self.manifest.seed)]
        world_before = self.world_index.digest()
        slice_text = self._slice()
        ctx, goal_present = self.builder.build(self.history, R.q, R.d, slice_text, R.goal_in_history, R.tick,
                                               R.goal_pinned_at)
        return Tick(n=R.tick, started=started, chaos=chaos, world_before=world_before,
                    slice_text=slice_text, ctx=ctx, goal_present=goal_present, call_index=R.oracle_calls,
                    history_span=(self.history[0].tick, self.history[-1].tick) if self.history else None)

    def _slice(self) -> str:
        d = self.R.d
        if d.startswith("sys://"):
            return self.blobs.get(self.R.slice_id)
        path, _, page = d.partition("#page=")
        try:
            return self.world.read_slice(path, int(page or 0))[0]
        except (PageFault, PathEscape) as err:
            return prompts.unreadable(d, str(err))

    def _ask(self, t: Tick) -> None:
        """The probe (every `probe_every` ticks), then the model's answer, parsed; its raw text goes to the dirty
        trace."""
        if self.config.probe_every and t.n % self.config.probe_every == 0:
            t.probe = self._probe(t.n, t.ctx.messages)
        t_ask = time.perf_counter()
        call = CallInfo(self.manifest.run_id, t.n, t.call_index, workspace=self.paths.workspace)
        t.completion = self.oracle.complete(t.ctx.messages, self.schema, call=call)
        t.ask_s = time.perf_counter() - t_ask
        t.verdict = parse(t.completion.text) if t.completion.error is None else None
        self.dirty.append(dirty_record(t.n, t.call_index, t.completion, t.verdict, provenance=self.oracle.provenance,
                                       model=self.oracle.spec))
        t.chaos += [ChaosData.model_validate({**i, "tick": t.n, "target": "oracle", "injected": True})
                    for i in t.completion.injected]
        t.frame = t.verdict.accepted(self.config.parse_mode) if t.verdict else None
        t.fp = fingerprint(t.frame.op.model_dump(mode="json")) if t.frame else None

    def _act(self, t: Tick) -> None:
        """A failed call or an invalid frame is a trap; a guarded op is not run; anything else is executed."""
        c, verdict = t.completion, t.verdict
        if c.error is not None:
            t.outcome = trap_outcome(TrapKind.ORACLE_FAULT, f"{c.error_class or 'error'}: {c.error}")
        elif t.frame is None:
            assert verdict is not None
            t.outcome = trap_outcome(TrapKind.SCHEMA_VIOLATION, f"{verdict.violation}: {verdict.detail}")
        elif guard := self.detectors.guard(t.n, t.fp or "", t.world_before):
            t.blocked = True
            t.outcome = trap_outcome(guard[0], guard[1] + "; the action was not run")
        else:
            verify = partial(self.task.verify, self.paths.workspace, self.runner)  # run only by a halt
            t.outcome, t.halted = self.world.execute(t.frame.op, t.n, verify)
        t.chaos += t.outcome.chaos

    def _detect(self, t: Tick) -> None:
        """Where the run goes next, progress, the loop detectors' traps, and whether the traps make a panic."""
        out = t.outcome
        t.q_next, t.reg_evict = self.builder.bound_register(t.frame.q_next if t.frame else self.R.q)
        t.d_next, t.next_slice = out.d, out.slice_text
        t.seen = observation_digest(out.slice_text, command_output=out.d.startswith("sys://exec/"))
        t.world_after = self.world_index.digest()
        out.changed = out.changed or t.world_after != t.world_before
        t.progress = out.changed or self.detectors.is_new(t.seen)
        t.traps = list(out.traps)
        act = Act(t.n, t.fp, t.world_before, t.seen) if t.fp is not None and not t.blocked else None
        if t.halted is None and (idle := self.detectors.after(t.n, act, t.seen, t.progress)):
            t.traps.append(idle)
        t.panic = self.detectors.panic(t.n, [k for k, _ in t.traps]) if t.traps else None

    def _journal(self, t: Tick) -> None:
        """The tick's events: probe, injected faults, evictions, traps, and the tick itself."""
        J, R, out = self.journal, self.R, t.outcome
        if t.probe is not None:
            J.stage(t.n, t.probe)
        for event in t.chaos:
            J.stage(t.n, event)
        t.evictions = list(t.ctx.evictions) + ([t.reg_evict.model_copy(update={"tick": t.n})] if t.reg_evict else [])
        for ev in t.evictions:
            J.stage(t.n, EvictData.model_validate(ev.model_dump()))
            if ev.section == "observation":
                R.masked_below = max(R.masked_below, ev.tick + 1)
                # An entry masked and then evicted in the same build was never shown masked.
                for entry in self.history:
                    if entry.tick == ev.tick:
                        self.ctx_log.mask_entry(ev.tick, entry.observation)
        injected = {CHAOS_TRAPS[c.kind] for c in t.chaos if c.kind in CHAOS_TRAPS}
        for kind, detail in t.traps:
            J.stage(t.n, TrapData(kind=kind.value, detail=detail[:500], injected=kind in injected, op=t.op_json,
                                  d=out.d, slice=out.slice_text[:240]))
        J.stage(t.n, t.tick_data())

    def _account(self, t: Tick) -> None:
        """A trap opens (or extends) a streak; the first clean tick that makes progress closes it: a recovery."""
        R = self.R
        if R.streak and not t.traps and t.progress and t.frame is not None:
            self.journal.stage(t.n, RecoveryData(streak_start_tick=R.streak.first_tick, traps=R.streak.traps,
                                                 mttr_ticks=t.n - R.streak.first_tick,
                                                 mttr_s=round(time.time() - R.streak.first_ts, 3), op=t.op_json))
            R.streak = None
        if t.traps:
            if R.streak is None:
                R.streak = Streak(first_tick=t.n, first_ts=time.time())
            R.streak.traps += t.kinds

    def _remember(self, t: Tick) -> None:
        """The history entry later ticks show: what the model saw, and what it answered (as it can be shown)."""
        shown = escape_surrogates(t.completion.text)  # the raw text stays in the dirty trace; this is sent back
        action = shown if len(shown) <= ACTION_SHOWN_CHARS else (
            shown[:ACTION_SHOWN_CHARS] + f"... [{len(shown) - ACTION_SHOWN_CHARS} chars cut]")
        self.history.append(HistoryEntry(tick=t.n, observation=prompts.observation(self.R.d, t.slice_text),
                                         action=action or "(no answer)"))
        self.ctx_log.add_entry(t.n, self.history[-1].observation, self.history[-1].action)
        self.R.goal_in_history = t.goal_present

    def _panic(self, t: Tick) -> None:
        """Clear the history, reset the detectors, pin the goal, spend one of the budget; none left is death."""
        R, J, cause = self.R, self.journal, t.panic
        assert cause is not None
        R.panic_budget_left -= 1
        R.panics += 1
        for entry in self.history:
            tokens = self.builder.count(entry.action) + self.builder.count(entry.observation)
            J.stage(t.n, EvictData(section="history", tick=entry.tick, reason="panic: history cleared", tokens=tokens))
        self.history.clear()
        self.detectors.reset()
        R.goal_in_history = True
        R.goal_pinned_at = t.n + 1
        J.stage(t.n, PanicData(cause=cause.value, streak=R.streak, budget_left=R.panic_budget_left, panic_no=R.panics))
        R.streak = None
        t.d_next = "sys://panic"
        t.next_slice = prompts.panic_slice(R.panics, cause.value, dict(t.traps)[cause], R.panic_budget_left,
                                           self.task.goal)
        if R.panic_budget_left <= 0:
            R.status = RunStatus.DIED
            R.cause_of_death = cause.value
            last = list(iter_records(self.paths.trace, TraceRecord))[-5:]
            J.stage(t.n, DeathData(cause=cause.value, panics=R.panics, tick=t.n,
                                   last_ticks=[LastTick(tick=r.tick, op=r.op_name, traps=r.traps) for r in last],
                                   q=t.q_next, d=t.d_next))

    def _trace(self, t: Tick) -> None:
        """The tick's trace line and the exact context it was shown."""
        R, ctx = self.R, t.ctx
        self.trace.append(t.trace_record(R.q, R.d))
        self.ctx_log.record_tick(t.n, system=self.builder.system, goal=self.builder.goal_text if t.goal_present
                                 else None, history=t.history_span, tail=ctx.tail, meta={
                                     "policy": self.config.context.policy, "masked_below": R.masked_below,
                                     "tokens": ctx.section_tokens, "total": ctx.total_tokens,
                                     "budget": self.config.context.budget_tokens, "exact": self.oracle.tokenizer.exact,
                                     "over_budget": ctx.over_budget, "evicted": [e.model_dump() for e in t.evictions]})

    def _commit(self, t: Tick) -> None:
        """Advance the registers and commit the tick; an ended run gets its final manifest."""
        R = self.R
        R.q, R.d = t.q_next, t.d_next
        R.slice_id = self.blobs.put(t.next_slice)
        R.oracle_calls = t.call_index + 1
        R.tick = t.n + 1
        self._persist()
        if R.status != RunStatus.RUNNING:
            self._finish()
        if self.on_tick is not None:
            self.on_tick({"tick": t.n, "traps": t.kinds, "panic": t.panic is not None, "status": R.status.value,
                          "harness_s": time.perf_counter() - t.started - t.ask_s})

    # -- the model and the world ------------------------------------------------------------------
    def _probe(self, tick: int, messages: list[dict[str, str]]) -> ProbeData:
        """A side query on this tick's exact context; its answer is evidence, never part of the run's state."""
        question = {"role": "user", "content": prompts.PROBE_QUESTION}
        c = self.oracle.complete([*messages, question], None,
                                 call=CallInfo(self.manifest.run_id, tick, tick, purpose="probe",
                                               workspace=self.paths.workspace))
        self.dirty.append(dirty_record(tick, tick, c, None, provenance=self.oracle.provenance, model=self.oracle.spec,
                                       purpose="probe"))
        return ProbeData(answer=c.text, error=c.error, latency_ms=round(c.latency_ms, 3),
                         context_tokens=self.builder.count("".join(m["content"] for m in messages)))

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

    def _end(self, status: RunStatus) -> None:
        self.R.status = status
        self.R.cause_of_death = None
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

    def _close(self) -> None:
        for closer in (self.task.close, self.runner.close, self.world_index.close, self.trace.close, self.dirty.close,
                       self.ctx_log.close, self.journal.close):
            with suppress(Exception):
                closer()
        if self._dir_lock is not None:
            self._dir_lock.release()
