"""Each trap detector's confusion table on labelled scripted trajectories, and what each threshold trades.

The trajectories are tests/kernel/trajectories.py's: >= 20 healthy (a developer editing and rerunning a
test suite with long output, readers paging through long files and spilled output, a debugger who
reverts an edit, a poller with backoff, every built-in task's reference policy `expert:TASK`) and >= 20
pathological (garbage, re-reading a missing path, A-B-A-B oscillation, halting while the verifier fails, the
same command on an unchanged workspace, runaway output, edits that change nothing). None is a model's run:
they are scripted (`provenance: scripted`) or reference-policy runs (`provenance: expert`).

1. Every trajectory runs once under the default thresholds. A detector's row counts, over the
   pathological trajectories it is meant to catch, how many it caught (TP) or missed (FN), and over the
   healthy ones how many it fired on (FP) or left alone (TN). `death` is the same for the whole kernel.
2. Each threshold is then moved one way and the other, one at a time. The pathological trajectories of the
   detector it governs are re-run for real. The healthy ones are re-judged from their recorded traces
   (op fingerprint, world digest, observation digest, progress, output size per tick): a healthy run
   traps nothing under the defaults, so every tick up to a detector's first firing is exactly what the
   kernel would have seen under the other threshold, and whether it fires is exact.

Usage: python bench/detectors.py [--out bench/results/detectors.json] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bloodwork.chronos.files import read_jsonl  # noqa: E402
from bloodwork.chronos.journal import read_events  # noqa: E402
from bloodwork.kernel import KernelConfig  # noqa: E402
from bloodwork.kernel.traps import Act, Detectors, TrapKind, fingerprint  # noqa: E402
from tests.kernel.trajectories import Trajectory, trajectories  # noqa: E402

# Which detector each pathology is meant to trip; THRASHING has two rules, told apart by their detail.
DETECTORS = ("SCHEMA_VIOLATION", "PAGE_FAULT", "ILLEGAL_HALT", "LOG_FLOOD", "WATCHDOG", "THRASHING/oscillation",
             "THRASHING/idle")
VARIANTS: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    ("watchdog_repeats=3", {"traps": {"watchdog_repeats": 3}}, ("WATCHDOG",)),
    ("watchdog_repeats=8", {"traps": {"watchdog_repeats": 8}}, ("WATCHDOG",)),
    ("thrash_idle_ticks=4", {"traps": {"thrash_idle_ticks": 4}}, ("THRASHING/idle",)),
    ("thrash_idle_ticks=10", {"traps": {"thrash_idle_ticks": 10}}, ("THRASHING/idle",)),
    ("thrash_oscillation=off", {"traps": {"thrash_oscillation": False}}, ("THRASHING/oscillation",)),
    ("output_ceiling_bytes=65536", {"output_ceiling_bytes": 65536}, ("LOG_FLOOD",)),
    ("output_ceiling_bytes=8388608", {"output_ceiling_bytes": 8388608}, ("LOG_FLOOD",)),
]


def meant_for(t: Trajectory) -> str | None:
    if t.pathology == "THRASHING":
        return "THRASHING/oscillation" if t.name.startswith("oscillate") else "THRASHING/idle"
    return t.pathology


def detector_of(kind: str, detail: str) -> str:
    if kind == "THRASHING":
        return "THRASHING/oscillation" if "oscillation" in detail else "THRASHING/idle"
    return kind


def outcome(paths: Any, result: Any) -> dict[str, Any]:
    """What one run did: first tick of each detector, death, and the trace the re-judging needs."""
    fired: dict[str, int] = {}
    for e in read_events(paths.journal):
        if e.kind == "trap":
            fired.setdefault(detector_of(e.data["kind"], e.data.get("detail", "")), e.tick)
    deaths = [e.tick for e in read_events(paths.journal) if e.kind == "death"]
    panics = [[e.tick, e.data["cause"]] for e in read_events(paths.journal) if e.kind == "panic"]
    trace = read_jsonl(paths.trace)
    return {"status": result.status.value, "cause": result.cause_of_death, "ticks": result.ticks,
            "death_tick": deaths[0] if deaths else None, "fired": fired, "panics": panics,
            "max_output_bytes": max((r["result"].get("bytes", 0) for r in trace), default=0),
            "trace": [{k: r.get(k) for k in ("tick", "frame", "blocked", "progress", "seen", "world", "traps",
                                             "result")} for r in trace]}


def rejudge(trace: list[dict[str, Any]], config: KernelConfig) -> dict[str, int]:
    """First tick each rule fires on a recorded healthy trace under `config` (no panics happened in it)."""
    det = Detectors(config.traps)
    fired: dict[str, int] = {}
    for r in trace:
        tick = r["tick"]
        op = (r.get("frame") or {}).get("op")
        world = (r.get("world") or ["", ""])[0]
        if r["result"].get("bytes", 0) > config.output_ceiling_bytes:
            fired.setdefault("LOG_FLOOD", tick)
        act = None
        if op and not r["blocked"]:
            fp = fingerprint(op)
            if guard := det.guard(tick, fp, world):
                fired.setdefault(detector_of(guard[0].value, guard[1]), tick)
            act = Act(tick, fp, world, r["seen"])
        if idle := det.after(tick, act, r["seen"], r["progress"]):
            fired.setdefault(detector_of(idle[0].value, idle[1]), tick)
        det.panic(tick, [TrapKind(k) for k in r["traps"]])
    return fired


def table(runs: dict[str, dict[str, Any]], labelled: list[Trajectory], detectors: tuple[str, ...]) -> dict[str, Any]:
    rows = {}
    for d in detectors:
        pos = [t for t in labelled if meant_for(t) == d]
        neg = [t for t in labelled if t.label == "healthy"]
        tp = [t.name for t in pos if d in runs[t.name]["fired"]]
        fp = [t.name for t in neg if d in runs[t.name]["fired"]]
        others = [t.name for t in labelled if t.label == "pathological" and meant_for(t) != d
                  and d in runs[t.name]["fired"]]
        rows[d] = {"TP": len(tp), "FN": len(pos) - len(tp), "FP": len(fp), "TN": len(neg) - len(fp),
                   "missed": [t.name for t in pos if t.name not in tp], "false_alarms": fp,
                   "also_fired_on": others}
    return rows


def print_table(title: str, rows: dict[str, Any]) -> None:
    print(f"\n{title}")
    print(f"  {'detector':<24}{'TP':>4}{'FN':>4}{'FP':>4}{'TN':>4}  notes")
    for d, r in rows.items():
        notes = "; ".join(f"{k}: {','.join(v)}" for k, v in (("missed", r["missed"]), ("false alarms",
                          r["false_alarms"]), ("also fired on", r["also_fired_on"])) if v)
        print(f"  {d:<24}{r['TP']:>4}{r['FN']:>4}{r['FP']:>4}{r['TN']:>4}  {notes}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results/detectors.json"))
    parser.add_argument("--keep", type=Path, help="keep the run directories here (default: a temporary folder)")
    args = parser.parse_args()
    labelled = trajectories()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bw-detectors-"))
    runs: dict[str, dict[str, Any]] = {}
    start = time.time()
    try:
        for t in labelled:
            result, paths = t.run(work / "default" / t.name)
            runs[t.name] = outcome(paths, result)
            r = runs[t.name]
            expected = "" if t.label == "healthy" else f" (expected death at {t.death_tick} of {t.pathology})"
            print(f"{t.label:<12} {t.name:<34} {r['status']:<10} {r['cause'] or '':<17} death {r['death_tick']}"
                  f"{expected}; fired {r['fired']}", flush=True)
        default_rows = table(runs, labelled, DETECTORS)
        deaths = {"healthy_died": [t.name for t in labelled if t.label == "healthy" and runs[t.name]["death_tick"]
                                   is not None],
                  "pathological_survived": [t.name for t in labelled if t.label == "pathological"
                                            and runs[t.name]["death_tick"] is None],
                  "death_tick_as_computed": sum(runs[t.name]["death_tick"] == t.death_tick for t in labelled
                                                if t.label == "pathological"),
                  "pathological": sum(t.label == "pathological" for t in labelled)}
        print_table("default thresholds (one run each)", default_rows)
        print(f"  death: {deaths}")
        variants = {}
        for name, change, dets in VARIANTS:
            config = KernelConfig.model_validate(change)
            vruns = {}
            for t in labelled:
                if t.label == "healthy":
                    vruns[t.name] = {"fired": rejudge(runs[t.name]["trace"], config)}
                elif meant_for(t) in dets:
                    result, paths = t.run(work / name / t.name, change)
                    vruns[t.name] = outcome(paths, result)
                else:
                    vruns[t.name] = {"fired": {}}
            rows = table(vruns, labelled, dets)
            print_table(f"{name} (pathological re-run, healthy re-judged from traces)", rows)
            fates = {t.name: {k: vruns[t.name][k] for k in ("status", "cause", "death_tick", "panics")}
                     for t in labelled if t.label == "pathological" and meant_for(t) in dets}
            print("  re-run: " + "; ".join(f"{n} {f['status']} (panics {f['panics']})" for n, f in fates.items()))
            variants[name] = {"change": change, "rows": rows, "pathological_outcomes": fates}
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    defaults = KernelConfig()
    report = {"benchmark": "detectors", "defaults": defaults.traps.model_dump()
              | {"output_ceiling_bytes": defaults.output_ceiling_bytes, "panic_budget": defaults.panic_budget},
              "trajectories": {t.name: {"label": t.label, "pathology": t.pathology, "meant_for": meant_for(t),
                                        "death_tick_expected": t.death_tick,
                                        **{k: v for k, v in runs[t.name].items() if k != "trace"}}
                               for t in labelled},
              "counts": {"healthy": sum(t.label == "healthy" for t in labelled),
                         "pathological": sum(t.label == "pathological" for t in labelled)},
              "default": {"rows": default_rows, "deaths": deaths}, "variants": variants,
              "provenance": "scripted and expert (no model)", "wall_s": round(time.time() - start, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out} ({report['counts']}, {report['wall_s']} s)")


if __name__ == "__main__":
    main()
