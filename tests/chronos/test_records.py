"""The typed records read recorded runs back to the very bytes that were hashed, and the kernel writes them.

The fixtures were recorded by the code before the records were typed (`bloodwork run long-haul/ledger
--model expert:long-haul/ledger --chaos heavy --seed 3 --probe-every 6 --budget 1200`, and a scripted run
of `garbage.yaml` stopped at 4 ticks then resumed to its death, sandbox none): every event kind but `crash`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from bloodwork.chronos.journal import JournalHead, canonical_json, verify
from bloodwork.chronos.records import (
    CrashData,
    DirtyRecord,
    TraceRecord,
    TrapEvent,
    event_line,
    iter_records,
    of_kind,
    parse_event,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "records"
PROFILES = Path(__file__).parent.parent.parent / "src" / "bloodwork" / "chaos" / "profiles"
JOURNALS = sorted(FIXTURES.glob("*.journal.log"))


@pytest.mark.parametrize("journal", JOURNALS, ids=lambda p: p.name)
def test_every_recorded_event_parses_and_reserializes_to_its_bytes(journal):
    lines = journal.read_bytes().splitlines()
    assert len(lines) > 20
    for raw in lines:
        event = parse_event(json.loads(raw))
        assert canonical_json(event_line(event)).encode("utf-8") == raw, event.kind


def test_the_fixtures_hold_every_kind_but_crash():
    kinds = {json.loads(raw)["kind"] for journal in JOURNALS for raw in journal.read_bytes().splitlines()}
    assert kinds == {"run_start", "resume", "probe", "chaos", "evict", "trap", "tick", "recovery", "panic", "death",
                     "halt", "stop"}


def test_the_recorded_journal_still_verifies_against_its_committed_head():
    registers = json.loads((FIXTURES / "garbage-died.registers.json").read_text())
    head = JournalHead(seq=registers["journal_seq"] - 1, hash=registers["journal_prev"])
    report = verify(FIXTURES / "garbage-died.journal.log", head)
    assert report.ok and report.events == 34


@pytest.mark.parametrize(("name", "model"), [("garbage-died.trace.jsonl", TraceRecord),
                                              ("garbage-died.dirty_trace.jsonl", DirtyRecord)])
def test_trace_and_dirty_records_reserialize_to_their_bytes(name, model):
    raws = (FIXTURES / name).read_bytes().splitlines()
    records = list(iter_records(FIXTURES / name, model))
    assert len(records) == len(raws) == 9
    assert [canonical_json(r.model_dump()).encode("utf-8") for r in records] == raws


def test_a_line_of_an_unknown_kind_or_with_a_stray_key_is_refused():
    line = json.loads((FIXTURES / "garbage-died.journal.log").read_bytes().splitlines()[1])
    assert isinstance(parse_event(line), TrapEvent) or parse_event(line).kind != "trap"
    with pytest.raises(ValidationError):
        parse_event({**line, "kind": "teleport"})
    with pytest.raises(ValidationError):
        parse_event({**line, "data": {**line["data"], "stray": 1}})
    with pytest.raises(ValidationError):
        CrashData(error="x")  # type: ignore[call-arg]


def test_of_kind_selects_and_types_one_kind():
    events = [parse_event(json.loads(raw)) for raw in (FIXTURES / "garbage-died.journal.log").read_bytes().splitlines()]
    traps = of_kind(events, TrapEvent)
    assert len(traps) == 9 and all(t.kind == "trap" for t in traps)
    assert traps[0].data.kind == "PAGE_FAULT" and not traps[0].data.injected


# Fields that differ between two runs of the same seeded script: clocks, and the script's absolute path.
VOLATILE = {"ts", "hash", "prev", "ask_s", "latency_ms", "mttr_s", "first_ts", "duration_s", "model"}


def _stable(value):
    if isinstance(value, dict):
        return {k: "~" if k in VOLATILE else _stable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def test_the_kernel_writes_the_recorded_run_again(tmp_path):
    """The scripted fixture run, run again by today's kernel: the same events, traces and calls, line for line,
    but for clocks (so the typed writers and the tick loop's shape changed nothing a reader sees)."""
    from bloodwork.chaos.plan import ChaosProfile
    from bloodwork.kernel import Kernel, KernelConfig
    from bloodwork.oracles.registry import make_oracle
    from bloodwork.tasks.registry import load_task

    script = f"scripted:{FIXTURES / 'garbage.yaml'}"
    chaos = ChaosProfile.model_validate(yaml.safe_load((PROFILES / "default.yaml").read_text()))
    config = KernelConfig(max_ticks=4, panic_budget=2, sandbox="none")
    Kernel.create(load_task("long-haul/ledger"), make_oracle(script), out_dir=tmp_path, config=config, seed=1,
                  chaos=chaos, run_id="b").run()
    Kernel.resume(tmp_path / "b", load_task("long-haul/ledger"), make_oracle(script), max_ticks=30).run()
    for recorded, written in (("garbage-died.journal.log", ".journal.log"), ("garbage-died.trace.jsonl", "trace.jsonl"),
                              ("garbage-died.dirty_trace.jsonl", "dirty_trace.jsonl")):
        want = [_stable(json.loads(raw)) for raw in (FIXTURES / recorded).read_bytes().splitlines()]
        got = [_stable(json.loads(raw)) for raw in (tmp_path / "b" / written).read_bytes().splitlines()]
        assert got == want, written
    assert verify(tmp_path / "b" / ".journal.log").ok
