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

from bloodwork.chaos.plan import ChaosProfile, load_profile
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
from bloodwork.kernel import Kernel, KernelConfig
from bloodwork.oracles.registry import make_oracle
from bloodwork.tasks.registry import load_task
from tests.conftest import requires_bwrap

FIXTURES = Path(__file__).parent.parent / "fixtures" / "records"
PROFILES = Path(__file__).parent.parent.parent / "src" / "bloodwork" / "chaos" / "profiles"
JOURNALS = sorted(FIXTURES.glob("*.journal.jsonl"))


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
    report = verify(FIXTURES / "garbage-died.journal.jsonl", head)
    assert report.ok and report.events == 34


@pytest.mark.parametrize(("name", "model"), [("garbage-died.trace.jsonl", TraceRecord),
                                              ("garbage-died.dirty_trace.jsonl", DirtyRecord)])
def test_trace_and_dirty_records_reserialize_to_their_bytes(name, model):
    raws = (FIXTURES / name).read_bytes().splitlines()
    records = list(iter_records(FIXTURES / name, model))
    assert len(records) == len(raws) == 9
    assert [canonical_json(r.model_dump()).encode("utf-8") for r in records] == raws


def test_a_line_of_an_unknown_kind_or_with_a_stray_key_is_refused():
    line = json.loads((FIXTURES / "garbage-died.journal.jsonl").read_bytes().splitlines()[1])
    assert isinstance(parse_event(line), TrapEvent) or parse_event(line).kind != "trap"
    with pytest.raises(ValidationError):
        parse_event({**line, "kind": "teleport"})
    with pytest.raises(ValidationError):
        parse_event({**line, "data": {**line["data"], "stray": 1}})
    with pytest.raises(ValidationError):
        CrashData(error="x")  # type: ignore[call-arg]


def test_of_kind_selects_and_types_one_kind():
    raws = (FIXTURES / "garbage-died.journal.jsonl").read_bytes().splitlines()
    events = [parse_event(json.loads(raw)) for raw in raws]
    traps = of_kind(events, TrapEvent)
    assert len(traps) == 9 and all(t.kind == "trap" for t in traps)
    assert traps[0].data.kind == "PAGE_FAULT" and not traps[0].data.injected


# Fields that differ between two runs of the same seeded script: clocks, the script's absolute path, and what a
# command prints about its own run time (a test runner's "in 0.20s": the digest of an exec result's slice).
VOLATILE = {"ts", "hash", "prev", "ask_s", "latency_ms", "mttr_s", "first_ts", "duration_s", "model", "output_tail"}


def _stable(value):
    if isinstance(value, dict):
        timed = str(value.get("d_next", "")).startswith("sys://exec/")
        return {k: "~" if k in VOLATILE or (timed and k in ("slice_digest", "next_digest", "seen")) else _stable(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _same_lines(recorded: Path, written: Path) -> None:
    """Line for line equal but for clocks; a context size may differ by one constant, the growth of the ISA
    prompt since the recording (its text is an input of the run, not the kernel's doing)."""
    want = [_stable(json.loads(raw)) for raw in recorded.read_bytes().splitlines()]
    got = [_stable(json.loads(raw)) for raw in written.read_bytes().splitlines()]
    assert len(got) == len(want), written.name
    deltas = set()
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        gd, wd = g.get("data", g), w.get("data", w)
        if "context_tokens" in gd and "context_tokens" in wd:
            deltas.add(gd.pop("context_tokens") - wd.pop("context_tokens"))
        assert g == w, f"{written.name} line {i + 1}"
    assert len(deltas) <= 1, f"{written.name}: context sizes moved unevenly {sorted(deltas)}"


def test_the_kernel_writes_the_recorded_scripted_run_again(tmp_path):
    """The scripted fixture run, run again by today's kernel: the same events, traces and calls, line for line,
    but for clocks (so the typed writers and the tick loop's shape changed nothing a reader sees)."""
    script = f"scripted:{FIXTURES / 'garbage.yaml'}"
    chaos = ChaosProfile.model_validate(yaml.safe_load((PROFILES / "default.yaml").read_text()))  # named "off"
    config = KernelConfig(max_ticks=4, panic_budget=2, sandbox="none")
    Kernel.create(load_task("long-haul/ledger"), make_oracle(script), out_dir=tmp_path, config=config, seed=1,
                  chaos=chaos, run_id="b").run()
    Kernel.resume(tmp_path / "b", load_task("long-haul/ledger"), make_oracle(script), max_ticks=30).run()
    for recorded, written in (("garbage-died.journal.jsonl", ".journal.log"),
                              ("garbage-died.trace.jsonl", "trace.jsonl"),
                              ("garbage-died.dirty_trace.jsonl", "dirty_trace.jsonl")):
        _same_lines(FIXTURES / recorded, tmp_path / "b" / written)
    assert verify(tmp_path / "b" / ".journal.log").ok


@requires_bwrap
def test_the_kernel_writes_the_recorded_expert_run_again(tmp_path):
    """The expert fixture run (heavy chaos, probes, a small context budget, a recovery, a halt) again."""
    config = KernelConfig.model_validate({"max_ticks": 14, "probe_every": 6, "context": {"budget_tokens": 1200}})
    Kernel.create(load_task("long-haul/ledger"), make_oracle("expert:long-haul/ledger"), out_dir=tmp_path,
                  config=config, seed=3, chaos=load_profile("heavy"), run_id="a").run()
    _same_lines(FIXTURES / "ledger-expert-heavy.journal.jsonl", tmp_path / "a" / ".journal.log")


def test_runs_recorded_before_the_world_digest_are_still_read_and_resumed():
    """This morning's format (v0.1): no world index in run_start, no `seen`/`world` per trace line, no
    `batch_size` per call. It parses, and a resume judges its ticks by the op and the next slice's digest."""
    from bloodwork.kernel.config import TrapConfig
    from bloodwork.kernel.traps import Detectors

    start = json.loads((FIXTURES / "garbage-died.journal.jsonl").read_bytes().splitlines()[0])
    del start["data"]["world_index"]
    assert parse_event(start).data.world_index is None
    old = []
    for raw in (FIXTURES / "garbage-died.trace.jsonl").read_bytes().splitlines():
        line = json.loads(raw)
        del line["seen"], line["world"]
        old.append(TraceRecord.model_validate(line))
    detectors = Detectors(TrapConfig())
    for rec in old:
        detectors.replay_record(rec)
    assert set(detectors.seen) <= {rec.next_digest for rec in old} and detectors.seen
    dirty = json.loads((FIXTURES / "garbage-died.dirty_trace.jsonl").read_bytes().splitlines()[0])
    del dirty["batch_size"]
    assert DirtyRecord.model_validate(dirty).batch_size is None
