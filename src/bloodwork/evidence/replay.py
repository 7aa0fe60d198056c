"""`bloodwork replay RUN`: run a recorded run again from its raw outputs and seeds, and compare.

The replayed model answers with the recorded raw texts (errors and injected oracle faults included);
the fault plan keeps the original's key, so every kernel-level injection is decided as it was. What
must come out the same is the journal's sequence of ops, traps, chaos, panics, recoveries and death.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

from pydantic import BaseModel

from bloodwork.chaos.plan import ChaosProfile
from bloodwork.chronos.journal import read_events
from bloodwork.chronos.records import (
    ChaosEvent,
    DeathEvent,
    Event,
    HaltEvent,
    PanicEvent,
    RecoveryEvent,
    TickEvent,
    TrapEvent,
)
from bloodwork.chronos.run import RunManifest, RunPaths
from bloodwork.evidence.extract import verify_run_or_bundle
from bloodwork.kernel import Kernel, KernelConfig
from bloodwork.oracles.replay import ReplayOracle
from bloodwork.tasks.registry import load_task


class ReplayRefused(ValueError):
    """The original's journal does not verify against its committed head: a replay would be compared with
    events nobody can vouch for (a cut tail would make a shorter run "reproduce")."""


class ReplayReport(BaseModel):
    original: str
    replay: str
    replay_dir: str
    same: bool
    compared: int
    original_status: str
    replay_status: str
    first_divergence: dict[str, object] | None = None


def signature(events: list[Event]) -> list[tuple[int, str, str]]:
    """What a replay must reproduce: per event its tick, kind and what kind of thing happened."""
    return [(e.tick, e.kind, detail) for e in events if (detail := _detail(e)) is not None]


def _detail(e: Event) -> str | None:
    """What kind of thing an event says happened; None for the events a replay need not reproduce."""
    match e:
        case TickEvent():
            return f"{e.data.op}|{','.join(e.data.traps)}"
        case TrapEvent():
            return f"{e.data.kind}|injected={e.data.injected}"
        case ChaosEvent():
            return e.data.kind
        case PanicEvent() | DeathEvent():
            return e.data.cause
        case RecoveryEvent():
            return str(e.data.mttr_ticks)
        case HaltEvent():
            return ""
    return None


def replay_run(run_dir: Path, out_dir: Path) -> ReplayReport:
    paths = RunPaths(run_dir)
    manifest = RunManifest.load(paths)
    check = verify_run_or_bundle(run_dir)
    if not check.ok:
        raise ReplayRefused(f"the journal of {manifest.run_id} does not verify ({check.reason}); nothing to replay "
                            "against")
    task = load_task(manifest.task_source or manifest.task)
    oracle = ReplayOracle(f"replay:{run_dir}", str(run_dir))
    config = KernelConfig.model_validate(manifest.config)
    run_id = f"{manifest.run_id}-replay-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    kernel = Kernel.create(task, oracle, out_dir=out_dir, config=config, seed=manifest.seed,
                           chaos=ChaosProfile.model_validate(manifest.chaos), run_id=run_id,
                           chaos_key=manifest.chaos_key or manifest.run_id, replay_of=manifest.run_id,
                           command_line=["bloodwork", "replay", str(run_dir)])
    result = kernel.run()
    original = signature(read_events(paths.journal))
    replayed = signature(read_events(kernel.paths.journal))
    divergence = None
    for i, (a, b) in enumerate(zip(original, replayed, strict=False)):
        if a != b:
            divergence = {"index": i, "original": list(a), "replay": list(b)}
            break
    if divergence is None and len(original) != len(replayed):
        i = min(len(original), len(replayed))
        divergence = {"index": i, "original": list(original[i]) if i < len(original) else None,
                      "replay": list(replayed[i]) if i < len(replayed) else None}
    return ReplayReport(original=manifest.run_id, replay=run_id, replay_dir=str(kernel.paths.root),
                        same=divergence is None, compared=len(original), original_status=manifest.status.value,
                        replay_status=result.status.value, first_divergence=divergence)
