"""A step runs a product command as a subprocess of the same interpreter, with the same code.

Its output goes to a log file, its command line, exit status and wall time into the campaign state. A
child gets the parent-death signal, so `kill -9` of the campaign takes its running command with it (the
resumed campaign runs that command again; the product's commands resume their own work). It runs in its
own process group, so a timeout kills it whole.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bloodwork.campaign import baseline
from bloodwork.campaign.baseline import PACKAGE_DIR
from bloodwork.campaign.plan import Step
from bloodwork.campaign.state import StepRecord, StepStatus
from bloodwork.chronos.files import atomic_write
from bloodwork.chronos.run import now_iso

PR_SET_PDEATHSIG = 1
BASELINE_FILE = "baseline.json"
# Looked up once in the parent: between fork and exec the child only calls it (no dlopen, no allocation that
# could wait on a lock another thread of the parent held at fork time, e.g. a local auditor model's).
_PRCTL = None
with contextlib.suppress(OSError, AttributeError):
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL)


def child_env() -> dict[str, str]:
    """The parent's environment, with this bloodwork's source first on the path (the same code runs) and a
    wide terminal for rich, so tables in logs are not folded into one-letter columns."""
    env = dict(os.environ)
    src = str(PACKAGE_DIR.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    env.setdefault("COLUMNS", "200")
    return env


def bloodwork_argv(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "bloodwork.cli", *args]


def execute(argv: list[str], log: Path, cwd: Path, timeout_s: float | None = None) -> tuple[int | None, bool, float]:
    """(exit status, timed out, wall seconds). The log gets the command line, then stdout and stderr."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log, "w") as fh:
        fh.write("$ " + " ".join(argv) + "\n")
        fh.flush()
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd,
                                env=child_env(), start_new_session=True, preexec_fn=_die_with_parent)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None, True, round(time.monotonic() - start, 3)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    return code, False, round(time.monotonic() - start, 3)


def run_step(step: Step, args: list[str], phase_dir: Path, root: Path, log: Path) -> StepRecord:
    """Run one (already substituted) step and return its record."""
    rel_log = str(log.relative_to(root))
    timeout = step.timeout_min * 60 if step.timeout_min else None
    if step.builtin == "baseline":
        start = time.monotonic()
        out = phase_dir / BASELINE_FILE
        atomic_write(out, json.dumps(baseline.freeze(), indent=1))
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"(builtin) baseline freeze -> {out}\n")
        return StepRecord(name=step.name, argv=["(builtin)", "baseline", str(out)], status="ok", exit=0,
                          wall_s=round(time.monotonic() - start, 3), log=rel_log, ended_at=now_iso())
    if step.python is not None:
        script = Path(args[0])
        if not script.is_file():
            return StepRecord(name=step.name, argv=[sys.executable, *args], status="missing", log=None,
                              ended_at=now_iso(), note=f"script {script} not found (no source checkout?)")
        argv = [sys.executable, *args]
    else:
        argv = bloodwork_argv(args)
    code, timed_out, wall = execute(argv, log, root, timeout)
    status: StepStatus
    if timed_out:
        status, note = "timeout", f"killed after {step.timeout_min} min"
    elif code in step.allow_exit:
        status, note = "ok", ""
    else:
        status, note = "failed", f"exit {code} (allowed: {step.allow_exit})"
    return StepRecord(name=step.name, argv=argv, status=status, exit=code, wall_s=wall, log=rel_log,
                      ended_at=now_iso(), note=note)
