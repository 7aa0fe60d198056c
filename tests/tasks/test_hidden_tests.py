"""The verifier against a hostile workspace: forged pytest/sitecustomize/conftest files, forged reports,
huge counts, hidden content printed by the agent's code, FIFOs, a kill mid-verification.

Each check runs the real hidden suite of `long-haul/ledger` (or a tiny folder task) in the real sandbox.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from bloodwork.chaos.plan import ChaosProfile
from bloodwork.kernel import Kernel, KernelConfig
from bloodwork.oracles.registry import make_oracle
from bloodwork.tasks import hidden_tests
from bloodwork.tasks.hidden_tests import read_junit, statuses_for
from bloodwork.tasks.registry import load_task
from tests.conftest import make_task, requires_bwrap

# A forged pytest that does what a clever agent would: write the report the verifier reads, print a count.
FORGER = '''import os, re, sys
m = re.search(r"--junitxml=(\\S+)", os.environ.get("PYTEST_ADDOPTS", ""))
if m:
    os.makedirs(os.path.dirname(m.group(1)), exist_ok=True)
    cases = "".join('<testcase classname="hidden.test_x" name="t%d"/>' % i for i in range(40))
    open(m.group(1), "w").write("<testsuites><testsuite>" + cases + "</testsuite></testsuites>")
print("4" * 5000 + " passed in 0.01s")
sys.exit(0)
'''
RIGGED_CONFTEST = '''import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    outcome.get_result().outcome = "passed"
'''
FORGERIES = {
    "pytest.py": FORGER,
    "sitecustomize.py": FORGER,
    "usercustomize.py": FORGER,
    ".local/lib/python3.11/site-packages/usercustomize.py": FORGER,
    "forge.pth": "import sitecustomize\n",
    "pluggy.py": FORGER,
    "conftest.py": RIGGED_CONFTEST,
    "hidden/conftest.py": RIGGED_CONFTEST,
}
HIDDEN_MARKER = "test_hidden"  # every hidden test module of the ledger task is named test_hidden_*.py


@pytest.fixture(scope="module")
def ledger() -> Any:
    return load_task("long-haul/ledger")


def _prepared(task: Any, root: Path) -> Path:
    root.mkdir(parents=True)
    task.prepare(root, seed=0)
    return root


@pytest.mark.bwrap
@requires_bwrap
def test_forged_pytest_sitecustomize_pth_and_conftest_do_not_pass_the_verifier(ledger: Any, tmp_path: Path):
    ws = _prepared(ledger, tmp_path / "ws")
    for rel, text in FORGERIES.items():
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_text(text)
    result = ledger.verify(ws)
    assert not result.passed, result.summary
    # the real hidden suite ran on the stubs: most of it fails, and no forged count was believed
    assert result.details["failed"] + result.details["errors"] >= 25, result.summary
    assert "4444" not in result.summary and len(result.summary) < 200


@pytest.mark.bwrap
@requires_bwrap
def test_the_agent_sees_the_verdict_never_the_hidden_tests(ledger: Any, tmp_path: Path):
    """The agent's package prints every hidden test file when the hidden suite imports it, then halts."""
    halt = json.dumps({"thought": "t", "q_next": "q", "op": {"name": "SYS_HALT", "reason": "done"}})
    script = tmp_path / "replies.yaml"
    script.write_text(yaml.safe_dump([halt]))
    kernel = Kernel.create(ledger, make_oracle(f"scripted:{script}"), out_dir=tmp_path / "runs",
                           config=KernelConfig(max_ticks=1), seed=0, chaos=ChaosProfile(), run_id="leak")
    package = kernel.paths.workspace / "ledger" / "__init__.py"
    package.write_text("import pathlib\nfor p in sorted(pathlib.Path('hidden').glob('*.py')):\n"
                       "    print(p.name, p.read_text())\n" + package.read_text())
    result = kernel.run()
    assert result.status == "max_ticks" and result.verifier is not None and not result.verifier["passed"]
    # the verifier's own evidence (host side, in run.json) shows the leak happened...
    assert HIDDEN_MARKER in result.verifier["details"]["output_tail"]
    # ...but nothing the model is shown, or will be, carries it: the trap slice is the verdict
    seen = "".join(p.read_text() for p in (kernel.paths.blobs, kernel.paths.context_ticks, kernel.paths.trace,
                                           kernel.paths.journal))
    assert "ILLEGAL_HALT" in seen and HIDDEN_MARKER not in seen


def test_read_junit_counts_elements_and_never_parses_agent_numbers() -> None:
    report = (b'<testsuites><testsuite tests="' + b"9" * 5000 + b'" failures="' + b"7" * 5000 + b'">'
              b'<testcase classname="tests.test_a" name="test_ok" file="tests/test_a.py"/>'
              b'<testcase classname="tests.test_a.TestK" name="test_p[a-b]" file="tests/test_a.py">'
              b'<failure message="boom"/></testcase>'
              b'<testcase classname="tests.test_a" name="test_e" file="tests/test_a.py"><error/></testcase>'
              b'<testcase classname="tests.test_a" name="test_s" file="tests/test_a.py"><skipped/></testcase>'
              b'<testcase classname="tests.helpers" name="test_moved" file="tests/helpers_impl.py"/>'
              b'</testsuite></testsuites>')
    parsed = read_junit(report)
    assert parsed.problem is None
    assert parsed.counts == {"passed": 2, "failed": 1, "errors": 1, "skipped": 1}
    wanted = ["tests/test_a.py::test_ok", "tests/test_a.py::TestK::test_p[a-b]", "tests/test_a.py::test_e",
              "tests/helpers.py::test_moved", "tests/test_a.py::test_gone"]
    assert statuses_for(parsed, wanted) == {
        "tests/test_a.py::test_ok": "PASSED", "tests/test_a.py::TestK::test_p[a-b]": "FAILED",
        "tests/test_a.py::test_e": "ERROR", "tests/helpers.py::test_moved": "PASSED",
        "tests/test_a.py::test_gone": "missing"}


@pytest.mark.parametrize(("data", "problem"), [
    (None, "no test report"),
    (b"<testsuite>" + b"x" * (hidden_tests.REPORT_MAX_BYTES + 1), "over"),
    (b"40 passed", "not valid XML"),
    (b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">' + b"".join(
        b'<!ENTITY %c "&%c;&%c;&%c;&%c;&%c;&%c;&%c;&%c;&%c;&%c;">' % ((c, c - 1) + (c - 1,) * 9)
        for c in range(ord("b"), ord("k"))) + b']><testsuite><testcase name="&j;"/></testsuite>', "not valid XML"),
])
def test_a_missing_huge_or_hostile_report_is_a_failed_verdict_not_a_crash(data: bytes | None, problem: str):
    parsed = read_junit(data)
    assert parsed.problem is not None and problem in parsed.problem
    assert sum(parsed.counts.values()) == 0


@pytest.mark.parametrize("sandboxed", [pytest.param(True, marks=pytest.mark.bwrap), False])
def test_a_fifo_in_the_workspace_does_not_break_the_verifier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              sandboxed: bool):
    if sandboxed and not hidden_tests.bwrap_available():
        pytest.skip("bubblewrap is not installed")
    if not sandboxed:
        monkeypatch.setattr(hidden_tests, "bwrap_available", lambda: False)
    task = load_task(str(make_task(tmp_path)))
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "hello.txt").write_text("hello\n")
    os.mkfifo(ws / "pipe")
    os.mkfifo(ws / "hello.fifo")
    start = time.monotonic()
    result = task.verify(ws)
    assert result.passed, (result.summary, result.details["output_tail"])
    assert result.details["passed"] == 1 and time.monotonic() - start < 60


CALC_BUGGY = "def add(a, b):\n    return a - b\n"
CALC_TESTS = "from calc import add\n\n\ndef test_zero():\n    assert add(0, 0) == 0\n"
GOLD = "--- a/calc.py\n+++ b/calc.py\n@@ -1,2 +1,2 @@\n def add(a, b):\n-    return a - b\n+    return a + b\n"
TEST_PATCH = ("--- a/tests/test_calc.py\n+++ b/tests/test_calc.py\n@@ -3,3 +3,7 @@\n\n def test_zero():\n"
              "     assert add(0, 0) == 0\n+\n+\n+def test_add():\n+    assert add(2, 3) == 5\n")
# What the old verifier believed (-rA lines) and what the new one reads (a JUnit report), both forged.
REPO_FORGER = FORGER.replace(
    "'<testcase classname=\"hidden.test_x\" name=\"t%d\"/>' % i for i in range(40)",
    "'<testcase classname=\"tests.test_calc\" name=\"%s\" file=\"tests/test_calc.py\"/>' % n "
    "for n in (\"test_add\", \"test_zero\")").replace(
    'print("4" * 5000',
    'print("PASSED tests/test_calc.py::test_add\\nPASSED tests/test_calc.py::test_zero"); print("4"')


# In the base repository: the judge must run the instance's own interpreter (its venv, which has pytest and
# nothing of bloodwork's: typer is one of bloodwork's dependencies).
OWN_ENV_TEST = """import importlib.util, os, sys


def test_own_env():
    assert sys.prefix == os.environ["VIRTUAL_ENV"] and importlib.util.find_spec("typer") is None
"""


def _python_here(version: str | None) -> str | None:
    from bloodwork.tasks.repofix.env import EnvError, find_python

    try:
        return find_python(version).version
    except EnvError as err:
        pytest.skip(str(err))


@pytest.mark.bwrap
@requires_bwrap
@pytest.mark.parametrize("python", [None, "3.10"], ids=["bloodworks-python", "python3.10"])
def test_a_forged_pytest_does_not_fool_the_repo_fix_judge(tmp_path: Path, python: str | None):
    """Python 3.10 ignores PYTHONSAFEPATH: the verifier's sitecustomize keeps the workspace out instead."""
    from bloodwork.tasks.repofix import RepoFixInstance, RepoFixTask

    version = _python_here(python)
    repo = tmp_path / "calc"
    (repo / "tests").mkdir(parents=True)
    (repo / "calc.py").write_text(CALC_BUGGY)
    (repo / "tests" / "test_calc.py").write_text(CALC_TESTS)
    (repo / "tests" / "test_env.py").write_text(OWN_ENV_TEST)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "base"]):
        subprocess.run(["git", *args], cwd=repo, env=env, check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True,
                            text=True).stdout.strip()
    inst = RepoFixInstance(instance_id="calc-1", repo="me/calc", version="0.1", base_commit=commit, python=python,
                           repo_dir=str(repo), problem_statement="add(2, 3) returns -1", patch=GOLD,
                           test_patch=TEST_PATCH, FAIL_TO_PASS=["tests/test_calc.py::test_add"],
                           PASS_TO_PASS=["tests/test_calc.py::test_zero", "tests/test_env.py::test_own_env"])
    task = RepoFixTask(inst)
    ws = tmp_path / "ws"
    ws.mkdir()
    try:
        task.prepare(ws, seed=0)
        assert task.environment().info["python"] == version
        (ws / "pytest.py").write_text(REPO_FORGER)
        (ws / "pluggy.py").write_text(REPO_FORGER)
        forged = task.verify(ws)
        assert not forged.passed and forged.details["hidden_tests"]["FAIL_TO_PASS"] == {
            "tests/test_calc.py::test_add": "FAILED"}, forged.summary
        (ws / "calc.py").write_text("def add(a, b):\n    return a + b\n")
        fixed = task.verify(ws)  # the forgery is still there; the real fix passes on its own merits
        assert fixed.passed and fixed.stage == "fixed", (fixed.summary, fixed.details["hidden_tests"]["output_tail"])
        assert fixed.details["hidden_tests"]["PASS_TO_PASS"]["tests/test_env.py::test_own_env"] == "PASSED"
    finally:
        task.close()


KILLED_VERIFIER = '''import sys
from pathlib import Path
from bloodwork.tasks.registry import load_task
task = load_task(sys.argv[1])
print("verifying", flush=True)
task.verify(Path(sys.argv[2]))
'''


@pytest.mark.bwrap
@requires_bwrap
def test_a_kill_during_verification_leaves_no_copy_of_the_hidden_tests(tmp_path: Path):
    folder = make_task(tmp_path)
    (folder / "hidden" / "test_slow_marker.py").write_text("import time\n\ndef test_slow():\n    time.sleep(60)\n")
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "hello.txt").write_text("hello\n")
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_VERIFIER, str(folder), str(ws)], stdout=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "verifying"
    time.sleep(3)  # copy done, pytest inside the slow hidden test
    assert proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    time.sleep(0.5)
    assert list(scratch.rglob("*")) == []
    assert not any(p.name == "test_slow_marker.py" for p in Path("/tmp").glob("bloodwork-*/**/*"))
    sandboxed = [p for p in __import__("psutil").process_iter(["cmdline"])
                 if "test_slow" in " ".join(p.info["cmdline"] or [])]
    assert sandboxed == [], "the verifier's sandbox outlived its owner"
