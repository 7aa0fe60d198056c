"""extract counts each event exactly once, tells injected from natural, and bundles deaths verifiably."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bloodwork.chronos.files import sha256_file
from bloodwork.evidence.extract import answered_tick_calls, call_times, extract
from bloodwork.evidence.replay import replay_run
from tests.conftest import frame

READ_A = frame({"name": "SYS_READ", "path": "a.txt"})
MISSING = frame({"name": "SYS_READ", "path": "missing.txt"})
WRITE = frame({"name": "SYS_WRITE", "path": "w.txt", "content": "abcdef"})


def test_planted_events_are_counted_exactly_once(runner, tmp_path):
    # run 1 (natural): PAGE_FAULT at 1, recovery at 2; then 3 violations -> panic at 5; then death by 3 more
    # and 3 more violations (panic budget 3: panics at 5, 8, 11; death at 11).
    read_b = frame({"name": "SYS_READ", "path": "b.txt"})
    replies = [READ_A, MISSING, read_b, "x", "y", "z", "x", "y", "z", "x", "y", "z"]
    _, natural = runner.run(replies, run_id="nat", panic_budget=3)
    # run 2 (injected): three writes denied by chaos -> 3 injected IO_FAULT traps and an injected panic
    _, injected = runner.run([WRITE] * 3, chaos={"write_deny": 1.0}, run_id="inj", panic_budget=5)
    out = tmp_path / "evidence"
    # give the same runs twice (directly and via their parent folder): each event still counts once
    report = extract([natural.root, injected.root, natural.root.parent], out, generator="test")
    lines = (out / "thrashing.journal").read_text().splitlines()
    header, rows = json.loads(lines[0]), [json.loads(x) for x in lines[1:]]
    assert header["header"] and header["runs"] == 2 and header["events"] == len(rows)
    nat = [r for r in rows if r["run_id"] == "nat"]
    assert [(r["event"], r["kind"], r["tick"]) for r in nat] == [
        ("trap", "PAGE_FAULT", 1), ("recovery", "RECOVERY", 2),
        ("trap", "SCHEMA_VIOLATION", 3), ("trap", "SCHEMA_VIOLATION", 4), ("trap", "SCHEMA_VIOLATION", 5),
        ("panic", "SCHEMA_VIOLATION", 5),
        ("trap", "SCHEMA_VIOLATION", 6), ("trap", "SCHEMA_VIOLATION", 7), ("trap", "SCHEMA_VIOLATION", 8),
        ("panic", "SCHEMA_VIOLATION", 8),
        ("trap", "SCHEMA_VIOLATION", 9), ("trap", "SCHEMA_VIOLATION", 10), ("trap", "SCHEMA_VIOLATION", 11),
        ("panic", "SCHEMA_VIOLATION", 11), ("death", "SCHEMA_VIOLATION", 11)]
    assert all(r["origin"] == "natural" and r["provenance"] == "scripted" for r in nat)
    inj = [r for r in rows if r["run_id"] == "inj"]
    assert [(r["event"], r["origin"]) for r in inj] == [("trap", "injected")] * 3 + [("panic", "injected")]
    assert len({(r["run_id"], r["seq"]) for r in rows}) == len(rows)
    assert header["counts"] == {"death:natural": 1, "panic:injected": 1, "panic:natural": 3, "recovery:natural": 1,
                                "trap:injected": 3, "trap:natural": 10}
    assert report.traps_by_kind["SCHEMA_VIOLATION"] == {"natural": 9}
    assert report.traps_by_kind["IO_FAULT"] == {"injected": 3}
    assert report.natural_events == 0  # scripted runs are never counted as real natural events
    assert report.runs_by_status == {"died": 1, "max_ticks": 1}
    assert report.strict_violation.k == 9 and report.strict_violation.n == 15


def test_death_bundle_hashes_match_and_replay_reproduces(runner, tmp_path):
    _, paths = runner.run([READ_A, MISSING, MISSING, MISSING, "x", MISSING, "y", MISSING, MISSING, MISSING],
                          run_id="dies", panic_budget=2)
    out = tmp_path / "evidence"
    extract([paths.root], out, generator="test")
    bundle = out / "deaths" / "dies"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["cause_of_death"] and manifest["tick_of_death"] is not None
    assert len(manifest["panic_history"]) == 2
    for name, digest in manifest["files"].items():
        assert sha256_file(bundle / name) == digest
    assert {".journal.log", "trace.jsonl", "dirty_trace.jsonl", "run.json"} <= set(manifest["files"])
    report = replay_run(bundle, tmp_path / "replays")
    assert report.same and report.replay_status == "died" and report.compared > 10
    res = subprocess.run([sys.executable, "-m", "bloodwork.cli", "replay", str(bundle), "--out",
                          str(tmp_path / "replays2")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "reproduced" in res.stdout


def test_replay_notices_a_divergence(runner, tmp_path):
    _, paths = runner.run([READ_A, MISSING, READ_A], run_id="orig")
    dirty = paths.dirty.read_text().splitlines()
    record = json.loads(dirty[1])
    record["text"] = READ_A  # the recorded answer of tick 1 is no longer the one that trapped
    dirty[1] = json.dumps(record)
    paths.dirty.write_text("\n".join(dirty) + "\n")
    report = replay_run(paths.root, tmp_path / "replays")
    assert not report.same and report.first_divergence is not None


def test_call_times_split_the_wait_for_a_shared_model_from_the_model_time(tmp_path: Path):
    # two workers share one model: the second call waited 700 ms for the lock, then ran 300 ms
    calls = [
        {"provenance": "real", "latency_ms": 400.0, "queue_ms": 0.5, "batch_size": 1.0},
        {"provenance": "real", "latency_ms": 1000.0, "queue_ms": 700.0, "batch_size": 2.5},
        {"provenance": "real", "latency_ms": 250.0},  # recorded before queue_ms and batch_size existed
        {"provenance": "scripted", "latency_ms": 1.0, "queue_ms": 0.0},  # not a model's time
        {"provenance": "real", "latency_ms": 9000.0, "queue_ms": 0.0, "error": "timeout"},
        {"provenance": "real", "latency_ms": 5000.0, "queue_ms": 0.0, "purpose": "probe"},
    ]
    base = {"tick": 0, "purpose": "tick", "model": "m", "text": "{}", "error": None, "error_class": None,
            "prompt_tokens": 1, "completion_tokens": 1, "retries": 0, "finish_reason": "stop", "injected": [],
            "strict_ok": True, "lenient_ok": True, "violation": None, "lenient_violation": None, "ts": 0.0}
    (tmp_path / "dirty_trace.jsonl").write_text("".join(json.dumps({**base, "call_index": i, **c}) + "\n"
                                                        for i, c in enumerate(calls)))
    times = call_times(answered_tick_calls(tmp_path))
    assert times.latency_ms.n == times.queued_ms.n == times.model_ms.n == 3
    assert times.latency_ms.max == 1000.0 and times.queued_ms.max == 700.0
    assert times.model_ms.max == 399.5 and sorted([times.model_ms.p50, times.model_ms.mean]) == [300.0, 316.5]
    assert times.batch_size.n == 2 and times.batch_size.max == 2.5  # only calls that recorded one
