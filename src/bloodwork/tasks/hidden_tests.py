"""Running a task's own (trusted) test command on the agent's work, and reading the verdict from a channel
the agent cannot write. Used by the folder tasks (long-haul) and the repo-fix judge.

- The interpreter and import path cannot be shadowed from the workspace: the command runs with
  `PYTHONSAFEPATH=1` (`python3 -m pytest` does not put the working directory first, so a workspace
  `pytest.py` is never imported), `PYTHONNOUSERSITE=1`, HOME outside the workspace and PYTHONPATH holding
  only our plugin folder (read-only), so a workspace `sitecustomize.py`, `usercustomize.py` or `.pth` file
  is never on the startup path either. The plugin (`pytest_plugin/bloodwork_cwd_first.py`) puts the working
  directory first once pytest is loaded, as `python -m pytest` would. Python < 3.11 ignores PYTHONSAFEPATH:
  the plugin folder's `sitecustomize.py` does its job there. The sandbox's PATH holds the interpreter's own
  directory (a task's own environment, with a `Toolchain`) and the system, never the workspace.
- The verdict is read from a JUnit XML report pytest writes in the sandbox's `/tmp` and the command server
  returns after the command (at most REPORT_MAX_BYTES), never from the command's output: a workspace file
  that prints "40 passed" proves nothing. Counts are numbers of `testcase` elements, so no number the agent
  prints is ever parsed, and the verdict shown to the agent carries counts only.
- `verify_folder` runs in a fresh sandbox of its own: the workspace is mounted read-only and copied into
  an in-memory workspace inside it, the hidden tests are mounted read-only over `hidden/` (never copied
  onto the host), so a kill during verification leaves nothing behind.

What this cannot stop: the tests import the agent's code, which then runs inside the test process and
could tamper with pytest from within. That is code written to cheat the harness, visible in the workspace.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bloodwork.manifold.runner import CommandRunner, ExecResult, SandboxKind, bwrap_available
from bloodwork.manifold.workspace import copy_plain_tree
from bloodwork.tasks.base import CommandRunnerLike, VerifierResult

REPORT_MAX_BYTES = 4 * 1024 * 1024
OUTPUT_TAIL_CHARS = 2000
COPY_TIMEOUT_S = 120
PLUGIN_DIR = Path(__file__).with_name("pytest_plugin")
PLUGIN_INSIDE = "/opt/bloodwork-pytest"  # where bwrap mounts PLUGIN_DIR
ReportKind = Literal["junit", "exit_code"]


def verifier_mounts(sandbox: SandboxKind) -> list[tuple[Path, str]]:
    """The read-only mounts a verifier's runner needs (`CommandRunner(..., mounts=...)`)."""
    kind = "bwrap" if sandbox == "bwrap" or (sandbox == "auto" and bwrap_available()) else "none"
    return [(PLUGIN_DIR, PLUGIN_INSIDE)] if kind == "bwrap" else []


def report_path() -> str:
    """A fresh report path: in the sandbox's own /tmp (bwrap), or a private one on the host (no sandbox).
    The server takes the file away when it returns it."""
    return f"/tmp/bloodwork-report-{secrets.token_hex(6)}/junit.xml"


def trusted_command(command: str, report: str, kind: str, env: dict[str, str] | None = None) -> str:
    """The shell script that runs `command` with an unshadowable interpreter setup, pytest's JUnit report
    going to `report` (through PYTEST_ADDOPTS, so the task's own command line is kept as it is). `kind` is
    the runner's (`bwrap`: the plugin folder is mounted; `none`: it is used where it is). `env` is the
    task's own environment for the command; its PYTHONPATH is applied by the plugin, after pytest loaded."""
    env = dict(env or {})
    plugin = PLUGIN_INSIDE if kind == "bwrap" else str(PLUGIN_DIR)
    folder = shlex.quote(os.path.dirname(report))
    addopts = f"{env.get('PYTEST_ADDOPTS', '')} -p bloodwork_cwd_first --junitxml={report} -o junit_family=xunit1"
    exports = {**env, "PYTHONSAFEPATH": "1", "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1",
               "HOME": "/tmp", "PYTHONPATH": plugin, "BLOODWORK_PYTHONPATH": env.get("PYTHONPATH", ""),
               "PYTEST_ADDOPTS": addopts.strip()}
    assigned = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(exports.items()))
    return (f"rm -rf {folder}; mkdir -p {folder} && unset PYTHONHOME PYTHONSTARTUP PYTHONUSERBASE PYTHONINSPECT; "
            f"export {assigned}; {command}")


@dataclass
class TestReport:
    """What a JUnit report says: each test's status by pytest node id, and the counts."""

    __test__ = False  # not a pytest test class, despite the name

    statuses: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: {"passed": 0, "failed": 0, "errors": 0, "skipped": 0})
    problem: str | None = None


def _node_id(file: str | None, classname: str, name: str) -> str:
    """Back from JUnit's (xunit1) file, classname and name to pytest's node id."""
    if file and file.endswith(".py"):
        module = file[:-3].replace("/", ".")
        if classname == module or classname.startswith(module + "."):
            return "::".join([file, *filter(None, classname[len(module) + 1:].split(".")), name])
    # A test defined in another module than it was collected from: classname is the collecting module.
    return f"{classname.replace('.', '/')}.py::{name}" if classname else name


def read_junit(data: bytes | None) -> TestReport:
    """Statuses and counts from a JUnit XML report (PASSED, FAILED, ERROR, SKIPPED), or the problem with it."""
    if data is None:
        return TestReport(problem="no test report (pytest did not run to the end)")
    if len(data) > REPORT_MAX_BYTES:
        return TestReport(problem=f"test report over {REPORT_MAX_BYTES} bytes")
    try:
        root = ElementTree.fromstring(data)
    except ElementTree.ParseError:
        return TestReport(problem="test report is not valid XML")
    out = TestReport()
    for case in root.iter("testcase"):
        tags = {child.tag for child in case}
        status = ("FAILED" if "failure" in tags else "ERROR" if "error" in tags else
                  "SKIPPED" if "skipped" in tags else "PASSED")
        out.counts[{"FAILED": "failed", "ERROR": "errors", "SKIPPED": "skipped", "PASSED": "passed"}[status]] += 1
        node = _node_id(case.get("file"), case.get("classname", ""), case.get("name", ""))
        out.statuses.setdefault(node, status)
    return out


def statuses_for(report: TestReport, wanted: list[str]) -> dict[str, str]:
    """Each wanted test id's status; `missing` when the report does not name it."""
    return {t: report.statuses.get(t, "missing") for t in wanted}


def _verdict(res: ExecResult, kind: ReportKind, started: float) -> VerifierResult:
    tail = res.text[-OUTPUT_TAIL_CHARS:]
    if kind == "exit_code":
        passed = res.exit_code == 0 and not res.timed_out and res.fault is None
        summary = f"verifier command exit {res.exit_code}" + (" (timed out)" if res.timed_out else "")
        return VerifierResult(passed=passed, summary=summary, stage="verified" if passed else "failing",
                              details={"exit_code": res.exit_code, "report": kind, "fault": res.fault,
                                       "output_tail": tail}, duration_s=round(time.monotonic() - started, 3))
    report = read_junit(res.collected)
    c = report.counts
    passed = (res.exit_code == 0 and not res.timed_out and res.fault is None and report.problem is None
              and c["failed"] == 0 and c["errors"] == 0 and c["passed"] > 0)
    summary = (f"{c['passed']} passed, {c['failed']} failed, {c['errors']} errors"
               + (" (timed out)" if res.timed_out else "") + (f"; {report.problem}" if report.problem else ""))
    return VerifierResult(passed=passed, summary=summary, stage="verified" if passed else "failing",
                          details={"exit_code": res.exit_code, **c, "report": kind, "report_problem": report.problem,
                                   "fault": res.fault, "output_tail": tail},
                          duration_s=round(time.monotonic() - started, 3))


def verify_folder(workspace: Path, hidden: Path | None, command: str, timeout_s: float, *,
                  report: ReportKind = "junit", parent: CommandRunnerLike | None = None) -> VerifierResult:
    """Run `command` on a copy of `workspace` with `hidden` at `hidden/`, in a sandbox of its own (unless
    bwrap is missing or the run's own runner, `parent`, is unisolated)."""
    started = time.monotonic()
    stop = getattr(parent, "stop", None)
    path = report_path()
    hidden = hidden if hidden is not None and hidden.is_dir() else None
    # A run made unisolated on purpose (`sandbox: none`) is verified the same way.
    if bwrap_available() and getattr(parent, "kind", "bwrap") != "none":
        mounts = [(workspace, "/src"), *verifier_mounts("bwrap")] + ([(hidden, "/ws/hidden")] if hidden else [])
        runner = CommandRunner(None, sandbox="bwrap", mounts=mounts, stop=stop)
        try:
            runner.run("cp -a /src/. /ws/ 2>&1 | head -20; find /ws -path /ws/hidden -prune -o "
                       "\\( -name __pycache__ -o -name .pytest_cache \\) -prune -exec rm -rf {} +", COPY_TIMEOUT_S)
            res = runner.run(trusted_command(command, path, "bwrap"), timeout_s, collect=path)
        finally:
            runner.close()
        return _verdict(res, report, started)
    # No bwrap: nothing is isolated anyway (the agent's commands could read the hidden tests); a host copy.
    with tempfile.TemporaryDirectory(prefix="bloodwork-verify-") as tmp:
        copy = Path(tmp) / "ws"
        copy_plain_tree(workspace, copy, skip_names=("__pycache__", ".pytest_cache"))
        if hidden:
            planted = copy / "hidden"
            if planted.is_dir() and not planted.is_symlink():
                shutil.rmtree(planted)
            elif planted.exists() or planted.is_symlink():
                planted.unlink()
            shutil.copytree(hidden, planted)
        path = f"{tmp}/report/junit.xml"
        runner = CommandRunner(copy, sandbox="none", stop=stop)
        try:
            res = runner.run(trusted_command(command, path, "none"), timeout_s, collect=path)
        finally:
            runner.close()
    return _verdict(res, report, started)
