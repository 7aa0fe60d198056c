"""Checks over run directories: journals verify, natural events, deaths, struggle chains, task recovery."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from pydantic import Field

from bloodwork.campaign.checks.base import CheckArgs, CheckContext, check, select_runs
from bloodwork.chronos.journal import read_events, verify
from bloodwork.chronos.records import ChaosEvent, DeathEvent, of_kind
from bloodwork.chronos.run import RunManifest, RunPaths
from bloodwork.evidence.extract import answered_tick_calls, run_events

# Faults the chaos layer injects into one call (their traps are counted as traps); anything else in a
# `chaos` event is a task-level fault that struck the task's world (a killed service, a chmod, ...).
CALL_FAULTS = {"exec_timeout", "exec_fail", "write_deny", "disk_full", "log_flood", "oracle_error", "oracle_slow",
               "oracle_truncate"}


# -- runs and journals ---------------------------------------------------------------------------------

class RunsArgs(CheckArgs):
    runs: str
    provenance: str = "any"


@check("journals_verify", RunsArgs)
def journals_verify(a: RunsArgs, ctx: CheckContext) -> tuple[bool, Any, str, str, list[str]]:
    """Every run's hash-chained journal verifies (a torn last line is allowed, as `bloodwork verify` does)."""
    runs = select_runs(a.runs, a.provenance)
    bad = [ctx.rel(r) for r in runs if not verify(RunPaths(r).journal).ok]
    return (bool(runs) and not bad, {"runs": len(runs), "failing": bad}, "every journal verifies (and >= 1 run)",
            f"{len(runs) - len(bad)}/{len(runs)} journals verify", [ctx.rel(r / ".journal.log") for r in runs])


class EventsArgs(CheckArgs):
    runs: str
    min: int = Field(ge=0)
    provenance: str = "real"
    events: list[str] = Field(default_factory=lambda: ["trap", "panic", "recovery", "death"])


@check("natural_events", EventsArgs)
def natural_events(a: EventsArgs, ctx: CheckContext) -> tuple[bool, Any, str, str, list[str]]:
    """Thrashing events (traps, panics, recoveries, deaths) whose streak holds no injected fault, counted from
    the journals with the same origin rule as `bloodwork extract`."""
    runs = select_runs(a.runs, a.provenance)
    by_kind: Counter[str] = Counter()
    for run in runs:
        _, thrash, _ = run_events(run)
        by_kind.update(f"{e.event}:{e.kind}" for e in thrash if e.origin == "natural" and e.event in a.events)
    total = sum(by_kind.values())
    return (total >= a.min, {"natural": total, "runs": len(runs), "by_kind": dict(by_kind.most_common())},
            f">= {a.min} natural events in {a.provenance} runs", f"{total} natural events in {len(runs)} runs",
            [ctx.rel(r / ".journal.log") for r in runs])


class DeathsArgs(CheckArgs):
    runs: str
    min: int = Field(default=1, ge=0)
    provenance: str = "any"


def _deaths(runs: list[Path]) -> list[tuple[Path, RunManifest, int, int, int]]:
    """(run, manifest, death tick, first trap tick, traps) of every run that died by spending its panic budget."""
    out = []
    for run in runs:
        m = RunManifest.load(RunPaths(run))
        if m.status.value != "died":
            continue
        events = read_events(RunPaths(run).journal)
        death = next(iter(of_kind(events, DeathEvent)), None)
        if death is None or death.data.panics < int(m.config.get("panic_budget", 0)):
            continue
        traps = [e.tick for e in events if e.kind == "trap"]
        out.append((run, m, death.tick, min(traps, default=death.tick), len(traps)))
    return out


@check("deaths", DeathsArgs)
def deaths(a: DeathsArgs, ctx: CheckContext) -> tuple[bool, Any, str, str, list[str]]:
    """Runs that died because their panic budget was spent (the death event's panics reach the budget)."""
    runs = select_runs(a.runs, a.provenance)
    found = _deaths(runs)
    causes = Counter(m.cause_of_death for _, m, *_ in found)
    return (len(found) >= a.min, {"deaths": len(found), "runs": len(runs), "causes": dict(causes.most_common())},
            f">= {a.min} deaths by an exhausted panic budget", ", ".join(f"{k} {v}" for k, v in causes.items()) or
            "no deaths", [ctx.rel(r / ".journal.log") for r, *_ in found] or [ctx.rel(a.runs)])


class ChainArgs(CheckArgs):
    runs: str
    min_ticks: int = Field(ge=1)
    bundles: str | None = Field(default=None, description="death bundles of `extract` (replayed instead of runs)")
    replay: bool = True
    provenance: str = "any"


@check("struggle_chain", ChainArgs)
def struggle_chain(a: ChainArgs, ctx: CheckContext) -> tuple[bool, Any, str, str, list[str]]:
    """A death after a long struggle: from the run's first trap to its death >= min_ticks ticks, and
    `bloodwork replay` of its bundle reproduces the same ticks, traps and death (exit 0)."""
    found = sorted(_deaths(select_runs(a.runs, a.provenance)), key=lambda d: d[3] - d[2])
    chains = [d for d in found if d[2] - d[3] >= a.min_ticks]
    longest = {"run": found[0][1].run_id, "chain_ticks": found[0][2] - found[0][3]} if found else None
    if not chains:
        return (False, {"longest": longest, "deaths": len(found)}, f"a death >= {a.min_ticks} ticks after its first "
                "trap that replays identically", "no death after a long enough struggle",
                [ctx.rel(r / ".journal.log") for r, *_ in found] or [ctx.rel(a.runs)])
    tried = []
    for run, m, died, first, traps in chains[:3]:
        value = {"run": m.run_id, "chain_ticks": died - first, "first_trap_tick": first, "death_tick": died,
                 "traps": traps, "cause": m.cause_of_death, "replay": "not asked"}
        source = Path(a.bundles) / m.run_id if a.bundles else run
        evidence = [ctx.rel(run / ".journal.log"), ctx.rel(source)]
        if not a.replay:
            return True, value, f">= {a.min_ticks} ticks of struggle before a death", "replay not asked", evidence
        if not (source / "run.json").is_file():
            tried.append(f"{m.run_id}: no bundle at {ctx.rel(source)}")
            continue
        log = f"replay-{m.run_id}"
        code = ctx.run_command(["replay", str(source), "--out", str(ctx.scratch / "replays")], log)
        value["replay"] = "identical" if code == 0 else f"diverged (exit {code})"
        evidence.append(ctx.rel(ctx.scratch / f"{log}.log"))
        if code == 0:
            return True, value, f">= {a.min_ticks} ticks of struggle, replayed identically", \
                f"{m.run_id}: {died - first} ticks from first trap to death, replay identical", evidence
        tried.append(f"{m.run_id}: replay exit {code}")
    return (False, {"tried": tried, "longest": longest}, f"a death >= {a.min_ticks} ticks after its first trap that "
            "replays identically", "; ".join(tried), [ctx.rel(r / ".journal.log") for r, *_ in chains[:3]])


class TaskArgs(CheckArgs):
    runs: str
    task: str = Field(description="task id or prefix, e.g. repo-fix/ or ops-blindbox/kill9")
    min_failures: int = Field(default=1, ge=0)
    min_recoveries: int = Field(default=1, ge=0)


@check("task_failure_recovery", TaskArgs)
def task_failure_recovery(a: TaskArgs, ctx: CheckContext) -> tuple[bool, Any, str, str, list[str]]:
    """A task's runs hold failures (traps, and task-level faults that struck) and recoveries (`recovery`
    events, and verifier verdicts of a world recovered after a fault), counted from journals and manifests."""
    runs = select_runs(a.runs, task=a.task)
    traps = faults = events = verified = 0
    stages: Counter[str] = Counter()
    for run in runs:
        paths = RunPaths(run)
        m = RunManifest.load(paths)
        for e in read_events(paths.journal):
            traps += e.kind == "trap"
            faults += isinstance(e, ChaosEvent) and e.data.kind not in CALL_FAULTS
            events += e.kind == "recovery"
        verdict = m.verifier or {}
        stages[str(verdict.get("stage") or m.status.value)] += 1
        verified += verdict.get("stage") == "recovered"
    failures, recoveries = traps + faults, events + verified
    value = {"runs": len(runs), "failures": {"traps": traps, "task_faults": faults},
             "recoveries": {"recovery_events": events, "verified_recovered": verified}, "stages": dict(stages)}
    ok = bool(runs) and failures >= a.min_failures and recoveries >= a.min_recoveries
    return (ok, value, f">= {a.min_failures} failure and >= {a.min_recoveries} recovery in {a.task} runs",
            f"{len(runs)} runs: {failures} failures, {recoveries} recoveries; stages {dict(stages)}",
            [ctx.rel(r / f) for r in runs for f in (".journal.log", "run.json")] or [ctx.rel(a.runs)])


class ValidArgs(CheckArgs):
    runs: str
    policies: int = Field(default=4, ge=1)
    seeds: int = Field(default=2, ge=1)
    min_ticks: int = Field(default=128, ge=1)
    min_valid: float = Field(default=0.8, ge=0, le=1)


@check("profile_informative", ValidArgs)
def profile_informative(a: ValidArgs, ctx: CheckContext) -> tuple[bool, Any, str, str, list[str]]:
    """Enough profiling runs for the context policies to differ: per policy, runs of distinct seeds that
    lasted >= min_ticks and whose model answered a strictly valid frame on >= min_valid of its tick calls."""
    qualified: dict[str, set[int]] = defaultdict(set)
    per_run = {}
    runs = select_runs(a.runs)
    for run in runs:
        paths = RunPaths(run)
        m = RunManifest.load(paths)
        calls = answered_tick_calls(run)
        valid = sum(1 for c in calls if c.strict_ok) / len(calls) if calls else 0.0
        policy = str(m.config.get("context", {}).get("policy"))
        ok = m.ticks >= a.min_ticks and valid >= a.min_valid
        per_run[m.run_id] = {"policy": policy, "seed": m.seed, "ticks": m.ticks, "valid": round(valid, 4), "ok": ok}
        if ok:
            qualified[policy].add(m.seed)
    good = {p: len(s) for p, s in qualified.items() if len(s) >= a.seeds}
    return (len(good) >= a.policies, {"policies_ok": dict(sorted(good.items())), "runs": per_run},
            f">= {a.policies} policies x >= {a.seeds} seeds x >= {a.min_ticks} ticks, valid frames >= "
            f"{a.min_valid:.0%}", f"{len(good)} policies qualify of {len({r['policy'] for r in per_run.values()})}",
            [ctx.rel(r / f) for r in runs for f in ("run.json", "dirty_trace.jsonl")] or [ctx.rel(a.runs)])


class VerdictArgs(CheckArgs):
    profile: str = Field(description="a folder holding context_decay_profile.json")
    min_ticks: int = Field(default=120, ge=1)


@check("profile_verdicts", VerdictArgs)
def profile_verdicts(a: VerdictArgs, ctx: CheckContext) -> tuple[bool, Any, str, str, list[str]]:
    """The profile states, for every run of >= min_ticks ticks, whether late forgetting occurred (a verdict,
    not 'no verdict') and whether eviction held the budget."""
    file = Path(a.profile) / "context_decay_profile.json"
    data = json.loads(file.read_text())
    long_runs = [r for r in data["runs"] if r["ticks"] >= a.min_ticks]
    verdicts = {r["run_id"]: {"ticks": r["ticks"], "policy": r["eviction"]["policy"],
                              "late_forgetting": r["forgetting"]["flagged"],
                              "within_budget": r["eviction"]["within_budget"]} for r in long_runs}
    stated = [v for v in verdicts.values() if v["late_forgetting"] is not None]
    ok = bool(long_runs) and len(stated) == len(long_runs)
    return (ok, {"runs": verdicts, "forgetting": sum(bool(v["late_forgetting"]) for v in stated),
                 "over_budget": sum(not v["within_budget"] for v in verdicts.values())},
            f"every run of >= {a.min_ticks} ticks has a forgetting verdict and an eviction verdict (>= 1 such run)",
            f"{len(stated)}/{len(long_runs)} long runs with a verdict", [ctx.rel(file)])
