"""`expert:long-haul/ledger` drives the ledger task to a verified halt from a fresh start and from the
states students leave: a buggy module mid-run, half-written and broken files with a trap as the last
slice, a panic; and under chaos `default` it recovers from the faults injected into its own ops."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bloodwork.chronos.run import RunManifest, RunPaths
from bloodwork.oracles.base import CallInfo
from bloodwork.oracles.registry import make_oracle
from bloodwork.tasks.registry import BUILTIN, load_task
from tests.conftest import frame
from tests.experts.conftest import expert_run, student_run, take_over

pytestmark = pytest.mark.bwrap
TASK = "long-haul/ledger"
FOLDER = BUILTIN / TASK
SOLUTION = FOLDER / "solution" / "ledger"
MODULES = 6


def _verified(run: Path) -> dict:
    m = RunManifest.load(RunPaths(run))
    assert m.status.value == "completed", m.verifier
    assert m.verifier is not None and m.verifier["passed"], m.verifier["summary"]
    return m.verifier


def test_fresh_run_is_short_verified_and_tagged_expert(tmp_path: Path) -> None:
    done = expert_run(tmp_path, TASK, 20)
    _verified(done.run)
    ops = [f["op"]["name"] for f in done.frames()]
    assert ops == ["SYS_WRITE"] * MODULES + ["SYS_EXEC", "SYS_HALT"]
    order = [f["op"]["path"] for f in done.frames()[:MODULES]]
    assert order == [f"ledger/{m}.py" for m in ("money", "accounts", "transaction", "journal", "parser", "reports")]
    assert not done.events("trap") and not done.events("panic")
    assert RunManifest.load(RunPaths(done.run)).provenance.value == "expert"
    assert {c["provenance"] for c in done.calls()} == {"expert"}


def test_takes_over_mid_run_with_a_buggy_module_and_fixes_it_by_an_edit(tmp_path: Path) -> None:
    # The scripted fixture's first 21 ticks: four modules done, the parser written with its deliberate bug
    # (it drops the last transaction), and the example test failing on it: the last slice.
    student = student_run(tmp_path, TASK, FOLDER / "expert.py", 21)
    last = json.loads((student / "trace.jsonl").read_text().splitlines()[-1])
    assert last["frame"]["op"]["name"] == "SYS_EXEC" and last["result"]["exit"] == 1
    took = take_over(student, TASK, 12)
    _verified(took.run)
    first = took.frames()[0]["op"]
    assert first["name"] == "SYS_EDIT" and first["path"] == "ledger/parser.py" and "flush()" in first["replace"]
    assert took.ticks_used <= 5  # the edit, reports.py, the tests, the halt
    by_provenance = {(c["tick"] >= took.from_tick, c["provenance"]) for c in took.calls()}
    assert by_provenance == {(False, "scripted"), (True, "expert")}


def test_takes_over_from_half_written_and_broken_files_at_a_trap(tmp_path: Path) -> None:
    money = (SOLUTION / "money.py").read_text()
    student = student_run(tmp_path, TASK, [
        frame({"name": "SYS_WRITE", "path": "ledger/money.py", "content": money[: len(money) // 2]}),
        frame({"name": "SYS_WRITE", "path": "ledger/accounts.py", "content": "def account_kind(:\n"}),
        frame({"name": "SYS_WRITE", "path": "conftest.py", "content": "raise RuntimeError('planted')\n"}),
        frame({"name": "SYS_EXEC", "cmd": "rm tests/test_examples.py"}),
        "I will write the parser next.",  # prose: a SCHEMA_VIOLATION trap is the last slice
    ], 5)
    assert RunManifest.load(RunPaths(student)).ticks == 5
    took = take_over(student, TASK, 20)
    _verified(took.run)
    ops = [(f["op"]["name"], f["op"].get("path", f["op"].get("cmd", ""))) for f in took.frames()]
    assert ops[0] == ("SYS_EDIT", "ledger/money.py")  # cut short: completed, not rewritten
    assert ("SYS_WRITE", "tests/test_examples.py") in ops and ("SYS_EXEC", "rm -rf -- conftest.py") in ops
    assert took.ticks_used <= 12 and not took.events("panic")


def test_takes_over_after_a_panic(tmp_path: Path) -> None:
    read = frame({"name": "SYS_READ", "path": "SPEC.md"})
    student = student_run(tmp_path, TASK, [read] * 5, 5)  # the 5th identical read is a WATCHDOG panic
    registers = json.loads((student / "registers.json").read_text())
    assert registers["d"] == "sys://panic" and registers["panic_budget_left"] == 2
    took = take_over(student, TASK, 12)
    _verified(took.run)
    assert took.ticks_used == MODULES + 2


def test_answers_at_any_state_without_running_anything(tmp_path: Path) -> None:
    """The teacher's entry point: the same state gives the same answer; no call names no workspace."""
    oracle = make_oracle(f"expert:{TASK}")
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "ledger").mkdir()
    for rel in ("money.py", "accounts.py"):
        (ws / "ledger" / rel).write_text((SOLUTION / rel).read_text())
    before = sorted(p.name for p in ws.rglob("*"))
    decision = oracle.propose(ws, 30, [])
    assert decision.op == {"name": "SYS_WRITE", "path": "ledger/transaction.py",
                           "content": (SOLUTION / "transaction.py").read_text()}
    assert "2/6" in decision.q_next and sorted(p.name for p in ws.rglob("*")) == before
    own_goal = [{"role": "user", "content": f"GOAL:\n{load_task(TASK).goal}"}]
    answer = oracle.complete(own_goal, call=CallInfo("r", 30, 0, workspace=ws))
    assert json.loads(answer.text)["op"] == decision.op and answer.error is None
    assert oracle.complete([], call=CallInfo("r", 30, 0)).error_class == "bad_request"  # no workspace named
    other = oracle.complete([{"role": "user", "content": "GOAL:\nKeep kvd up."}],
                            call=CallInfo("r", 30, 0, workspace=ws))
    assert other.error_class == "bad_request" and "another goal" in (other.error or "")


def test_keeps_working_under_chaos_default(tmp_path: Path) -> None:
    # Seed and run id chosen so the plan injects a write_deny into a module write (the file is left half
    # written) and a hang into the test run; the plan's decisions are hashed, so the run is reproducible.
    done = expert_run(tmp_path, TASK, 30, seed=19, chaos="default", run_id="c19")
    _verified(done.run)
    injected = [(e.data.kind, e.data.injected) for e in done.events("trap")]
    assert injected == [("IO_FAULT", True), ("EXEC_TIMEOUT", True)]
    assert len(done.events("recovery")) == 2 and not done.events("panic")
    assert done.ticks_used == MODULES + 2 + 2  # each fault costs one tick: the module completed, the tests rerun
