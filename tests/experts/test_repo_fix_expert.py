"""`expert:repo-fix/<instance>` reproduces, applies the gold patch, tests, writes PR.md and halts, from a fresh
checkout and from a student's mess (a deleted test, a wrong fix, junk); and through injected faults."""

from __future__ import annotations

from pathlib import Path

import pytest

from bloodwork.chronos.files import read_jsonl
from bloodwork.chronos.run import RunManifest, RunPaths
from bloodwork.experts.observe import exec_view
from bloodwork.experts.repo_fix import pytest_run, related_tests
from bloodwork.isa import MAX_CMD
from bloodwork.manifold.runner import bwrap_available
from bloodwork.oracles.base import OracleConfigError
from bloodwork.oracles.registry import make_oracle
from bloodwork.tasks.repofix import builtin_instances
from tests.conftest import frame
from tests.experts.conftest import expert_run, student_run, take_over

pytestmark = pytest.mark.skipif(not bwrap_available(), reason="verification runs the sandbox's python3")
TASK = "repo-fix/inflection-humanize"
BUGGY = 'word = re.sub(r"_id", "", word)'
HIDDEN_TEST = "test_bloodwork_humanize.py"


def _stage(run: Path) -> str:
    m = RunManifest.load(RunPaths(run))
    assert m.status.value == "completed" and m.verifier is not None and m.verifier["passed"], m.verifier
    return m.verifier["stage"]


def test_fresh_checkout_reaches_pr_drafted_in_order(tmp_path: Path) -> None:
    done = expert_run(tmp_path, TASK, 15)
    assert _stage(done.run) == "pr_drafted"
    steps = [(f["op"]["name"], f["op"].get("path", "")) for f in done.frames()]
    assert steps == [("SYS_WRITE", HIDDEN_TEST), ("SYS_EXEC", ""), ("SYS_EDIT", "inflection/__init__.py"),
                     ("SYS_EXEC", ""), ("SYS_WRITE", "PR.md"), ("SYS_HALT", "")]
    trace_exits = [r["result"]["exit"] for r in read_jsonl(RunPaths(done.run).trace) if "exit" in r["result"]]
    assert trace_exits == [1, 0]  # the reproduction fails on the released code, the tests pass after the fix
    assert not done.events("trap")


def test_takes_over_a_wrong_fix_a_deleted_test_and_junk(tmp_path: Path) -> None:
    student = student_run(tmp_path, TASK, [
        frame({"name": "SYS_EXEC", "cmd": "rm test_inflection.py"}),
        frame({"name": "SYS_EDIT", "path": "inflection/__init__.py", "search": BUGGY,
               "replace": 'word = re.sub(r"id", "", word)'}),
        frame({"name": "SYS_WRITE", "path": "repro.py", "content": "print('cannot reproduce')\n"}),
        "The fix looks right to me.",
    ], 4)
    took = take_over(student, TASK, 12)
    assert _stage(took.run) == "pr_drafted"
    steps = [(f["op"]["name"], f["op"].get("path", "")) for f in took.frames()]
    assert steps[:3] == [("SYS_WRITE", HIDDEN_TEST), ("SYS_WRITE", "test_inflection.py"),
                         ("SYS_EDIT", "inflection/__init__.py")]  # the library was touched: no second reproduction
    assert took.ticks_used == 6 and not took.events("panic")
    edit = took.frames()[2]["op"]
    assert 'r"id"' in edit["search"] and 'r"_id$"' in edit["replace"]


def test_recovers_from_injected_faults_under_chaos_default(tmp_path: Path) -> None:
    # Seed and run id chosen so the reproduction run hangs (killed at its timeout) and its rerun is flooded;
    # the flood keeps the exit code, so the policy reads the failure through it.
    done = expert_run(tmp_path, TASK, 20, seed=35, chaos="default", run_id="rf35")
    assert _stage(done.run) == "pr_drafted"
    assert [(e.data.kind, e.data.injected) for e in done.events("trap")] == [("EXEC_TIMEOUT", True),
                                                                                   ("LOG_FLOOD", True)]
    assert done.result.ticks == 7 and done.events("recovery")


def test_unknown_task_or_task_without_a_reference_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(OracleConfigError, match="expert:repo-fix/nope: unknown repo-fix instance"):
        make_oracle("expert:repo-fix/nope")
    (tmp_path / "t" / "files").mkdir(parents=True)
    (tmp_path / "t" / "task.yaml").write_text("id: t\nsynthetic: true\ngoal: g\nverifier: {command: 'true'}\n")
    with pytest.raises(OracleConfigError, match="no reference solution"):
        make_oracle(f"expert:{tmp_path / 't'}")


def test_test_runs_select_exactly_when_they_fit_and_read_failures_when_they_cannot() -> None:
    prefix = "python3 -m pytest -q --tb=line "
    few = pytest_run(prefix, ["tests/t.py::test_a[1]", "tests/t.py::test_a[2]", "tests/t.py::K::test_b"], "tests")
    assert few.exact and few.cmd == prefix + "tests/t.py::test_a tests/t.py::K::test_b"
    ok = exec_view(f"$ {few.cmd}\n[exit 0, 9 bytes of output]\n3 passed\n")
    assert ok is not None and few.passed(ok)
    many = [f"tests/test_{i % 3}.py::TestLongClassName{i % 7}::test_a_rather_long_test_name_{i}" for i in range(200)]
    coarse = pytest_run(prefix, many, "tests")
    assert not coarse.exact and coarse.cmd.startswith(prefix + "-rfE ") and len(coarse.cmd) <= MAX_CMD - 100
    assert "TestLongClassName3" in coarse.cmd and "test_a_rather" not in coarse.cmd  # by class
    unrelated = exec_view(f"$ {coarse.cmd}\n[exit 1, 9 bytes of output]\nFAILED tests/test_0.py::TestX::test_old - "
                          "assert 0\n1 failed, 200 passed in 1.0s\n")
    wanted = exec_view(f"$ {coarse.cmd}\n[exit 1, 9 bytes of output]\nFAILED {many[5]} - assert 0\n"
                       "1 failed, 199 passed in 1.0s\n")
    assert unrelated is not None and coarse.passed(unrelated)  # a failure outside the wanted tests
    assert wanted is not None and not coarse.passed(wanted)
    for instance in builtin_instances():  # every built-in selects its hidden tests exactly
        assert pytest_run(prefix, instance.hidden_tests, instance.test_dir).exact, instance.instance_id


def test_the_reproduction_leaves_out_tests_of_other_changes_in_the_release() -> None:
    base = "import x\n\n\ndef test_old():\n    assert x.a()\n\n\nclass TestK:\n    def test_m(self):\n        pass\n"
    hidden = ("import x\n\n\ndef test_old():\n    assert x.a(1)\n\n\n@pytest.mark.parametrize('v', [1, 2])\n"
              "def test_other_feature(v):\n    assert x.other(v)\n\n\ndef test_the_bug():\n    assert x.b()\n\n\n"
              "class TestK:\n    def test_m(self):\n        pass\n\n    def test_new_unrelated(self):\n        x.c()\n")
    kept = related_tests("tests/t.py", hidden, base, ["tests/t.py::test_the_bug", "tests/other.py::test_z"])
    assert "def test_the_bug" in kept and "assert x.a(1)" in kept and "def test_m" in kept  # its own and the base's
    assert "test_other_feature" not in kept and "parametrize" not in kept and "test_new_unrelated" not in kept
    compile(kept, "t.py", "exec")
    assert related_tests("tests/data.sql", "select 1;", None, []) == "select 1;"
    assert related_tests("tests/t.py", "def broken(:\n", None, []) == "def broken(:\n"
