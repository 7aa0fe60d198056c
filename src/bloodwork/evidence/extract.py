"""`bloodwork extract`: the thrashing journal, death bundles and the sweep report, from raw run files only.

Every event is taken from a run's hash-chained journal (which is verified first), once, keyed by
(run_id, seq); every figure in the report is a count over those files. Injected and natural faults
are told apart by the journal's own `injected` flags, and scripted or replayed runs keep their provenance.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field

from bloodwork.chronos.files import sha256_file
from bloodwork.chronos.journal import Event, JournalHead, VerifyReport, verify
from bloodwork.chronos.records import DirtyRecord, PanicEvent, iter_records, of_kind
from bloodwork.chronos.run import RunManifest, RunPaths, committed_head, find_runs, verified_events, verify_run
from bloodwork.evidence.stats import Distribution, Rate, distribution, wilson

BUNDLED = (".journal.log", "trace.jsonl", "dirty_trace.jsonl", "run.json")
Origin = Literal["injected", "natural", "mixed"]


class ThrashEvent(BaseModel):
    run_id: str
    seq: int
    tick: int
    event: str
    kind: str
    origin: Origin
    provenance: str
    model: str
    task: str
    chaos: str
    op: dict[str, Any] | None = None
    snippet: str = ""
    data: dict[str, Any] = Field(default_factory=dict)


class RunSummary(BaseModel):
    run_id: str
    path: str
    status: str
    provenance: str
    model: str
    task: str
    chaos: str
    seed: int
    ticks: int
    cause_of_death: str | None
    journal_ok: bool
    torn_tail: bool


def _streak_origins(events: list[Event]) -> dict[int, Origin]:
    """The origin of each panic/death: injected if every trap of its streak was injected, natural if none."""
    origins: dict[int, Origin] = {}
    streak: list[bool] = []
    last_panic: Origin = "natural"
    for e in events:
        if e.kind == "trap":
            streak.append(e.data.injected)
        elif e.kind == "panic":
            last_panic = origins[e.seq] = _origin(streak)
            streak = []
        elif e.kind == "death":
            origins[e.seq] = last_panic
        elif e.kind == "recovery":
            origins[e.seq] = _origin(streak)
            streak = []
    return origins


def _origin(flags: list[bool]) -> Origin:
    if flags and all(flags):
        return "injected"
    if any(flags):
        return "mixed"
    return "natural"


def run_events(run: Path) -> tuple[RunSummary, list[ThrashEvent], list[Event]]:
    paths = RunPaths(run)
    manifest = RunManifest.load(paths)
    events, report = verified_events(paths)
    summary = RunSummary(run_id=manifest.run_id, path=str(run), status=manifest.status.value,
                         provenance=manifest.provenance.value, model=manifest.model, task=manifest.task,
                         chaos=str(manifest.chaos.get("name")), seed=manifest.seed, ticks=manifest.ticks,
                         cause_of_death=manifest.cause_of_death, journal_ok=report.ok, torn_tail=report.torn_tail)
    origins = _streak_origins(events)
    out = []
    for e in events:
        origin: Origin
        if e.kind == "trap":
            kind, origin = e.data.kind, "injected" if e.data.injected else "natural"
        elif e.kind == "recovery":
            kind, origin = "RECOVERY", origins.get(e.seq, "natural")
        elif e.kind in ("panic", "death"):
            kind, origin = e.data.cause, origins.get(e.seq, "natural")
        else:
            continue
        data = e.data.model_dump()
        out.append(ThrashEvent(run_id=manifest.run_id, seq=e.seq, tick=e.tick, event=e.kind, kind=kind, origin=origin,
                               provenance=summary.provenance, model=summary.model, task=summary.task,
                               chaos=summary.chaos, op=data.pop("op", None), snippet=str(data.pop("slice", ""))[:160],
                               data=data))
    return summary, out, events


class DeathManifest(BaseModel):
    run_id: str
    cause_of_death: str | None
    tick_of_death: int | None
    panic_history: list[dict[str, Any]]
    model: str
    provenance: str
    seed: int
    task: str
    chaos: dict[str, Any]
    files: dict[str, str]
    reproduce: dict[str, str]
    journal_head: JournalHead | None = Field(default=None, description="the run's committed head: the bundled "
                                             "journal must end exactly there (None in bundles made before 0.2)")


def write_death_bundle(run: Path, events: list[Event], out: Path) -> DeathManifest:
    paths = RunPaths(run)
    manifest = RunManifest.load(paths)
    bundle = out / manifest.run_id
    bundle.mkdir(parents=True, exist_ok=True)
    for name in BUNDLED:
        shutil.copy2(run / name, bundle / name)
    for name in ("context",):
        if (run / name).is_dir():
            shutil.copytree(run / name, bundle / name, dirs_exist_ok=True)
    death = next((e for e in events if e.kind == "death"), None)
    panics = [{"tick": e.tick, **e.data.model_dump()} for e in of_kind(events, PanicEvent)]
    cfg = manifest.config
    chaos_file = bundle / "chaos.yaml"
    chaos_file.write_text(yaml.safe_dump({k: v for k, v in manifest.chaos.items() if k != "name"}))
    rerun = (f"bloodwork run {manifest.task_source or manifest.task} --model {manifest.model} "
             f"--seed {manifest.seed} --ticks {cfg.get('max_ticks')} --panic-budget {cfg.get('panic_budget')} "
             f"--chaos {chaos_file}")
    files = {str(p.relative_to(bundle)): sha256_file(p) for p in sorted(bundle.rglob("*"))
             if p.is_file() and p.name != "manifest.json"}
    dm = DeathManifest(run_id=manifest.run_id, cause_of_death=manifest.cause_of_death,
                       tick_of_death=death.tick if death else None, panic_history=panics, model=manifest.model,
                       provenance=manifest.provenance.value, seed=manifest.seed, task=manifest.task,
                       chaos=manifest.chaos, files=files,
                       reproduce={"exact (raw outputs, same seeds)": f"bloodwork replay {bundle}",
                                  "fresh (the model asked again)": rerun},
                       journal_head=committed_head(paths))
    (bundle / "manifest.json").write_text(dm.model_dump_json(indent=2))
    return dm


def verify_bundle(bundle: Path) -> VerifyReport:
    """A death bundle: every file against its sha256 in manifest.json, and the journal against the head there."""
    try:
        dm = DeathManifest.model_validate_json((bundle / "manifest.json").read_bytes())
    except (OSError, ValueError) as err:
        return VerifyReport(ok=False, events=0, last_hash="", reason=f"manifest.json is missing or unreadable: {err}")
    for name, digest in dm.files.items():
        path = bundle / name
        if not path.is_file() or sha256_file(path) != digest:
            return VerifyReport(ok=False, events=0, last_hash="", reason=f"{name} does not match its sha256 in "
                                "manifest.json" if path.is_file() else f"{name} is missing")
    if not (bundle / ".journal.log").is_file():
        return VerifyReport(ok=False, events=0, last_hash="", reason=".journal.log is missing")
    report = verify(bundle / ".journal.log", dm.journal_head)
    report.anchor = "manifest.json" if dm.journal_head else "nothing (a bundle made before heads were recorded)"
    return report


def verify_run_or_bundle(root: Path) -> VerifyReport:
    """`verify_run` for a run directory, `verify_bundle` for a death bundle (a folder without registers)."""
    paths = RunPaths(root)
    if not paths.registers.exists() and (root / "manifest.json").is_file():
        return verify_bundle(root)
    return verify_run(paths)


class CallTimes(BaseModel):
    """Per model call of real models. Several workers share one model: a call may wait to be admitted to the
    model's batch, or for other calls' prefills. `latency_ms` is what the loop waited, `queued_ms` that wait,
    `model_ms` the rest (the model's own time, spent in decode steps it may have shared with `batch_size`
    calls). Reporting only the first would make the model look slower the more workers a sweep has."""

    latency_ms: Distribution
    queued_ms: Distribution
    model_ms: Distribution
    batch_size: Distribution = Field(default_factory=lambda: distribution([]),
                                     description="calls decoded together, mean over each call's decode steps "
                                                 "(calls recorded before the engine have none)")


class SweepReport(BaseModel):
    generator: str
    runs: int
    provenance: dict[str, int]
    runs_by_status: dict[str, int]
    deaths: list[dict[str, Any]]
    deaths_by_chaos: dict[str, Rate]
    traps_by_kind: dict[str, dict[str, int]]
    natural_events: int
    injected_events: int
    recovery: Rate
    mttr_ticks: Distribution
    mttr_s: Distribution
    strict_violation: Rate
    lenient_violation: Rate
    violation_classes: dict[str, int]
    call_times: CallTimes
    journals_failing_verify: list[str]


def answered_tick_calls(run: Path) -> list[DirtyRecord]:
    """A run's dirty-trace records of tick calls that got an answer (not probes, not failed calls)."""
    return [r for r in iter_records(RunPaths(run).dirty, DirtyRecord) if r.purpose == "tick" and not r.error]


def call_times(calls: list[DirtyRecord]) -> CallTimes:
    """Timings of the real-model calls among these (calls without a recorded queue wait count as 0)."""
    real = [c for c in calls if c.provenance == "real"]
    latency = [c.latency_ms for c in real]
    queued = [c.queue_ms or 0.0 for c in real]
    return CallTimes(latency_ms=distribution(latency), queued_ms=distribution(queued),
                     model_ms=distribution([round(t - q, 3) for t, q in zip(latency, queued, strict=True)]),
                     batch_size=distribution([c.batch_size for c in real if c.batch_size is not None]))


def violation_rates(calls: list[DirtyRecord]) -> tuple[Rate, Rate, dict[str, int]]:
    """Strict and lenient violation rates of answered calls, and the strict violations by class."""
    classes = Counter(c.violation for c in calls if c.violation)
    return (wilson(sum(not c.strict_ok for c in calls), len(calls)),
            wilson(sum(not c.lenient_ok for c in calls), len(calls)), dict(classes.most_common()))


def extract(inputs: list[Path], out: Path, generator: str) -> SweepReport:
    runs = find_runs(inputs)
    out.mkdir(parents=True, exist_ok=True)
    summaries: list[RunSummary] = []
    all_events: list[ThrashEvent] = []
    seen: set[tuple[str, int]] = set()
    deaths: list[dict[str, Any]] = []
    for run in runs:
        summary, thrash, events = run_events(run)
        if summary.run_id in {s.run_id for s in summaries}:
            continue  # the same run reached twice (e.g. a run and its sweep): count it once
        summaries.append(summary)
        for ev in thrash:
            if (ev.run_id, ev.seq) not in seen:
                seen.add((ev.run_id, ev.seq))
                all_events.append(ev)
        if summary.status == "died":
            dm = write_death_bundle(run, events, out / "deaths")
            deaths.append({"run_id": dm.run_id, "cause": dm.cause_of_death, "tick": dm.tick_of_death,
                           "chaos": summary.chaos, "provenance": summary.provenance, "model": summary.model})

    counts = Counter(f"{e.event}:{e.origin}" for e in all_events)
    header = {"header": True, "generator": generator, "runs": len(summaries), "events": len(all_events),
              "counts": dict(sorted(counts.items())),
              "provenance": dict(Counter(s.provenance for s in summaries))}
    with open(out / "thrashing.journal", "w") as fh:
        fh.write(json.dumps(header, sort_keys=True) + "\n")
        for ev in all_events:
            fh.write(ev.model_dump_json() + "\n")

    by_chaos: dict[str, list[bool]] = defaultdict(list)
    for s in summaries:
        by_chaos[s.chaos].append(s.status == "died")
    traps: dict[str, Counter[str]] = defaultdict(Counter)
    for e in all_events:
        if e.event == "trap":
            traps[e.kind][e.origin] += 1
    recoveries = [e for e in all_events if e.event == "recovery"]
    panics = [e for e in all_events if e.event == "panic"]
    run_dirs = [Path(s.path) for s in summaries]
    calls = [c for run in run_dirs for c in answered_tick_calls(run)]
    strict, lenient, classes = violation_rates(calls)
    report = SweepReport(
        generator=generator, runs=len(summaries), provenance=dict(Counter(s.provenance for s in summaries)),
        runs_by_status=dict(Counter(s.status for s in summaries).most_common()), deaths=deaths,
        deaths_by_chaos={k: wilson(sum(v), len(v)) for k, v in sorted(by_chaos.items())},
        traps_by_kind={k: dict(v) for k, v in sorted(traps.items(), key=lambda kv: -sum(kv[1].values()))},
        natural_events=sum(1 for e in all_events if e.origin == "natural" and e.provenance == "real"),
        injected_events=sum(1 for e in all_events if e.origin == "injected"),
        recovery=wilson(len(recoveries), len(recoveries) + len(panics)),
        mttr_ticks=distribution([e.data["mttr_ticks"] for e in recoveries]),
        mttr_s=distribution([e.data["mttr_s"] for e in recoveries]),
        strict_violation=strict, lenient_violation=lenient, violation_classes=classes, call_times=call_times(calls),
        journals_failing_verify=[s.run_id for s in summaries if not s.journal_ok])
    (out / "sweep_report.json").write_text(report.model_dump_json(indent=2))
    (out / "sweep_report.md").write_text(render_markdown(report))
    return report


def render_markdown(r: SweepReport) -> str:
    """Failures first: deaths, panics and traps lead; there is no headline pass rate."""
    lines = [f"# Sweep report ({r.runs} runs)", "", f"Generated by `{r.generator}` from the raw run files.",
             f"Provenance of the runs: {', '.join(f'{k}: {v}' for k, v in r.provenance.items())}.", ""]
    if r.journals_failing_verify:
        lines += [f"**Journals that fail verification:** {', '.join(r.journals_failing_verify)}", ""]
    lines += ["## Deaths", "", "| chaos | died / runs | rate [95 % CI] |", "|---|---|---|"]
    lines += [f"| {k} | {v.k}/{v.n} | {v} |" for k, v in r.deaths_by_chaos.items()]
    lines += ["", "| run | cause | tick | provenance |", "|---|---|---|---|"]
    lines += [f"| {d['run_id']} | {d['cause']} | {d['tick']} | {d['provenance']} |" for d in r.deaths] or [
        "| none | | | |"]
    lines += ["", "## Traps by kind", "", "| trap | natural | injected | mixed |", "|---|---|---|---|"]
    lines += [f"| {k} | {v.get('natural', 0)} | {v.get('injected', 0)} | {v.get('mixed', 0)} |"
              for k, v in r.traps_by_kind.items()]
    lines += ["", f"Natural events from real-model runs: {r.natural_events}; injected events: {r.injected_events}.", "",
              "## Recovery", "", f"- streaks recovered before a panic: {r.recovery}",
              f"- MTTR in ticks: p50 {r.mttr_ticks.p50}, p95 {r.mttr_ticks.p95}, max {r.mttr_ticks.max} "
              f"(n={r.mttr_ticks.n})",
              f"- MTTR in seconds: p50 {r.mttr_s.p50}, p95 {r.mttr_s.p95} (n={r.mttr_s.n})", "",
              "## Schema violations (raw text, scored before any clean-up)", "",
              f"- strict violation rate: {r.strict_violation}", f"- lenient violation rate: {r.lenient_violation}",
              f"- classes: {', '.join(f'{k} {v}' for k, v in r.violation_classes.items()) or 'none'}", "",
              "## Latency per model call (real models only)", "",
              "| ms | p50 | p95 | mean | n |", "|---|---|---|---|---|",
              *(f"| {name} | {d.p50} | {d.p95} | {d.mean} | {d.n} |" for name, d in (
                  ("what the loop waited", r.call_times.latency_ms),
                  ("of which queued for a model shared by workers", r.call_times.queued_ms),
                  ("the model's own time", r.call_times.model_ms))), "",
              f"Calls decoded together by the local engine (per call, mean over its decode steps): p50 "
              f"{r.call_times.batch_size.p50}, p95 {r.call_times.batch_size.p95} (n={r.call_times.batch_size.n}).",
              "",
              "## Runs by status", ""]
    lines += [f"- {k}: {v}" for k, v in r.runs_by_status.items()]
    return "\n".join(lines) + "\n"
