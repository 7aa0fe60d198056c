"""The built-in `long-haul/ledger` task: it loads, its stubs fail the hidden suite, and the scripted
expert's frames pass it, both replayed op by op (writes, edits, sandboxed commands) and through the
real kernel.

The expert is a scripted fixture (`expert.py` in the task folder); replaying it here checks the task,
not any model.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from bloodwork.chaos.plan import ChaosProfile
from bloodwork.chronos.journal import read_events
from bloodwork.isa import parse
from bloodwork.kernel import Kernel, KernelConfig
from bloodwork.manifold.runner import CommandRunner, bwrap_available
from bloodwork.manifold.workspace import Workspace, page_of
from bloodwork.oracles.base import CallInfo
from bloodwork.oracles.registry import make_oracle
from bloodwork.tasks.registry import BUILTIN, load_task

TASK_ID = "long-haul/ledger"
FOLDER = BUILTIN / TASK_ID
MODULES = ("money", "accounts", "transaction", "journal", "parser", "reports")

bwrap_only = pytest.mark.skipif(not bwrap_available(), reason="the verifier's python3 is the sandbox's")


def _call(tick: int, call_index: int = 0) -> CallInfo:
    return CallInfo(run_id="ledger-test", tick=tick, call_index=call_index)


@pytest.fixture(scope="module")
def expert() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ledger_expert_under_test", FOLDER / "expert.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def task() -> Any:
    return load_task(TASK_ID)


def _frames(expert: ModuleType) -> Iterator[tuple[int, dict[str, Any]]]:
    """(tick, op) for every tick of the plan, read back from the raw frame text through the ISA parser."""
    for tick in range(len(expert.PLAN)):
        result = parse(expert.policy(_call(tick, tick), []))
        assert result.strict_ok and result.frame is not None, (tick, result.violation, result.detail)
        yield tick, result.frame.op.model_dump()


def _apply(ws: Workspace, op: dict[str, Any]) -> None:
    """Apply one SYS_WRITE or SYS_EDIT the way the ISA defines it (an edit needs exactly one match)."""
    if op["name"] == "SYS_WRITE":
        ws.write_text(op["path"], op["content"])
    elif op["name"] == "SYS_EDIT":
        text = ws.read_text(op["path"])
        assert text.count(op["search"]) == 1, f"edit of {op['path']} does not match exactly once"
        ws.write_text(op["path"], text.replace(op["search"], op["replace"]))


def _prepared(task: Any, tmp_path: Path) -> Workspace:
    root = tmp_path / "workspace"
    root.mkdir(parents=True)
    task.prepare(root, seed=0)
    return Workspace(root)


def test_task_loads_as_a_synthetic_long_haul_task(task: Any) -> None:
    assert task.id == TASK_ID
    assert task.metadata["synthetic"] is True
    assert task.metadata["kind"] == "long-haul"
    assert task.metadata["expected_ticks_competent"] >= 30
    assert "SPEC.md" in task.goal and 3 <= len(task.goal.splitlines()) <= 6
    assert sorted(task.metadata["files_to_implement"]) == sorted(f"ledger/{m}.py" for m in MODULES)


def test_prepared_workspace_has_the_spec_stubs_and_examples_but_no_hidden_tests(task: Any,
                                                                               tmp_path: Path) -> None:
    ws = _prepared(task, tmp_path)
    for module in MODULES:
        assert "raise NotImplementedError" in ws.read_text(f"ledger/{module}.py")
    assert ws.exists("SPEC.md") and ws.exists("tests/test_examples.py") and ws.exists("ledger/errors.py")
    assert not (ws.root / "hidden").exists()
    assert not any(p.name.startswith("test_hidden") for p in ws.root.rglob("*"))


def test_expert_plan_is_long_strict_and_stateless(expert: ModuleType) -> None:
    ticks = len(expert.PLAN)
    assert 30 <= ticks <= 45
    names = []
    for tick in range(ticks):
        raw = expert.policy(_call(tick, 0), [])
        assert raw == expert.policy(_call(tick, 7), [{"role": "user", "content": "ignored"}])
        result = parse(raw)
        assert result.strict_ok, (tick, result.violation, result.detail)
        assert result.frame is not None and len(result.frame.q_next) < 300
        names.append(result.frame.op.name)
    assert names[0] == "SYS_READ" and json.loads(expert.policy(_call(0, 0), []))["op"]["path"] == "SPEC.md"
    assert names[-1] == "SYS_HALT" and "SYS_HALT" not in names[:-1]
    assert names.count("SYS_EDIT") >= 1 and names.count("SYS_EXEC") >= 5
    halt = expert.policy(_call(ticks - 1, 0), [])
    assert expert.policy(_call(ticks, 0), []) == halt and expert.policy(_call(ticks + 50, 0), []) == halt


@pytest.mark.bwrap
@bwrap_only
def test_fresh_workspace_fails_verification(task: Any, tmp_path: Path) -> None:
    result = task.verify(_prepared(task, tmp_path).root)
    assert not result.passed
    assert result.details["failed"] >= 25, result.summary


@pytest.mark.bwrap
@bwrap_only
def test_expert_replay_runs_for_real_and_passes(task: Any, expert: ModuleType, tmp_path: Path) -> None:
    ws = _prepared(task, tmp_path)
    runner = CommandRunner(ws.root)
    exits: dict[int, bool] = {}
    try:
        for tick, op in _frames(expert):
            if op["name"] == "SYS_READ":
                _, pages = page_of(ws.read_text(op["path"]), op["page"])
                assert op["page"] < pages, f"tick {tick} reads past the last page of {op['path']}"
            elif op["name"] == "SYS_EXEC":
                res = runner.run(op["cmd"], 60)
                assert not res.timed_out and res.spawn_error is None, (tick, res.text[-500:])
                exits[tick] = res.exit_code == 0
                assert exits[tick] == expert.EXPECT_EXIT[tick], f"tick {tick}: {op['cmd']}\n{res.text[-1500:]}"
            else:
                _apply(ws, op)
    finally:
        runner.close()
    fails = [tick for tick, ok in exits.items() if not ok]
    assert len(fails) >= 1, "the expert never sees a failing run"
    ops = [op["name"] for _, op in _frames(expert)]
    for tick in fails:
        assert "SYS_EDIT" in ops[tick + 1:tick + 3], f"no fix right after the failing run at tick {tick}"
    assert exits[max(exits)], "the last command before the halt must pass"
    result = task.verify(ws.root)
    assert result.passed, result.details["output_tail"]
    assert result.details["passed"] >= 25


@pytest.mark.bwrap
@bwrap_only
def test_half_solution_fails_verification(task: Any, expert: ModuleType, tmp_path: Path) -> None:
    ws = _prepared(task, tmp_path)
    written: list[str] = []
    for _, op in _frames(expert):
        if op["name"] in ("SYS_WRITE", "SYS_EDIT"):
            if op["path"] == "ledger/parser.py":
                break
            _apply(ws, op)
            written.append(op["path"])
    assert {"ledger/money.py", "ledger/journal.py"} <= set(written)
    result = task.verify(ws.root)
    assert not result.passed
    assert result.details["passed"] >= 10 and result.details["failed"] >= 5, result.summary


@pytest.mark.bwrap
@bwrap_only
def test_every_deliberate_mistake_is_caught_by_the_hidden_suite(task: Any, expert: ModuleType,
                                                                tmp_path: Path) -> None:
    """All modules written, each of the expert's fixes left out in turn: the verifier must refuse."""
    edits = [tick for tick, op in _frames(expert) if op["name"] == "SYS_EDIT"]
    assert len(edits) >= 1
    for skipped in edits:
        ws = _prepared(task, tmp_path / f"skip-{skipped}")
        for tick, op in _frames(expert):
            if tick != skipped:
                _apply(ws, op)
        result = task.verify(ws.root)
        assert not result.passed, f"the hidden suite passes without the fix at tick {skipped}"
        assert 1 <= result.details["failed"] <= 10, result.summary
        shutil.rmtree(ws.root)


RIGGED_CONFTEST = '''import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    outcome.get_result().outcome = "passed"
'''


@pytest.mark.bwrap
@bwrap_only
def test_workspace_conftest_and_pytest_ini_cannot_rig_the_verifier(task: Any, tmp_path: Path) -> None:
    ws = _prepared(task, tmp_path)
    ws.write_text("conftest.py", RIGGED_CONFTEST)
    ws.write_text("hidden/conftest.py", RIGGED_CONFTEST)
    ws.write_text("pytest.ini", "[pytest]\naddopts = -k nothing_matches\n")
    result = task.verify(ws.root)
    assert not result.passed and result.details["failed"] >= 25, result.summary


@pytest.mark.bwrap
@bwrap_only
def test_real_kernel_run_with_the_scripted_expert_completes(task: Any, expert: ModuleType, tmp_path: Path) -> None:
    """The whole loop (context, guard, traps, halt verification) on the task, driven by the script."""
    oracle = make_oracle(f"scripted:{FOLDER / 'expert.py'}")
    kernel = Kernel.create(task, oracle, out_dir=tmp_path / "runs", config=KernelConfig(max_ticks=60), seed=1,
                           chaos=ChaosProfile(name="none", rates={}), run_id="ledger-expert")
    result = kernel.run()
    assert result.status == "completed", result
    assert result.ticks == len(expert.PLAN)
    assert result.verifier is not None and result.verifier["passed"]
    kinds = [event.kind for event in read_events(kernel.paths.journal)]
    assert "trap" not in kinds and "panic" not in kinds
