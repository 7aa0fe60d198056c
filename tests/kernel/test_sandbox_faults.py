"""A real run through what used to hang or crash the kernel: a FIFO the agent made, a stopped command
server, a workspace flood, a FIFO left for the verifier; and SIGTERM/SIGINT while a long command runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bloodwork.chronos.files import read_jsonl
from bloodwork.chronos.journal import read_events, verify
from tests.conftest import Runner, events, frame, requires_bwrap


@pytest.mark.bwrap
@requires_bwrap
def test_fifos_a_stopped_server_and_a_flood_are_traps_and_the_run_goes_on(runner: Runner) -> None:
    ops = [
        {"name": "SYS_EXEC", "cmd": "mkfifo pipe && echo made"},
        {"name": "SYS_WRITE", "path": "pipe", "content": "into the fifo"},
        {"name": "SYS_READ", "path": "pipe"},
        {"name": "SYS_EXEC", "cmd": "kill -STOP $PPID; sleep 30", "timeout_s": 1},
        {"name": "SYS_EXEC", "cmd": "echo alive"},
        {"name": "SYS_EXEC", "cmd": "for i in $(seq 40); do head -c 1000000 /dev/zero > f$i; sleep 0.05; done"},
        {"name": "SYS_EXEC", "cmd": "rm -f f*; echo cleaned"},
        {"name": "SYS_WRITE", "path": "hello.txt", "content": "hello\n"},
        {"name": "SYS_HALT", "reason": "hello written; the fifo stays"},
    ]
    start = time.monotonic()
    result, paths = runner.run([frame(op) for op in ops], sandbox="bwrap", limits={"workspace_bytes": 3_000_000})
    took = time.monotonic() - start
    assert result.status == "completed", result
    assert took < 60
    traps = {r["tick"]: r["traps"] for r in read_jsonl(paths.trace)}
    assert traps == {0: [], 1: ["IO_FAULT"], 2: ["PAGE_FAULT"], 3: ["EXEC_TIMEOUT"], 4: [], 5: ["IO_FAULT"],
                     6: [], 7: [], 8: []}
    details = {e.tick: e.data.detail for e in events(paths, "trap")}
    assert "FIFO" in details[1] and "FIFO" in details[2]
    assert "quota" in details[5]
    slices = [json.loads(line)["text"] for line in paths.blobs.read_text().splitlines()]
    assert any("sandbox fault" in s and "did not answer" in s for s in slices)
    manifest = json.loads(paths.manifest.read_text())
    assert manifest["sandbox"]["restarts"] == 1 and manifest["verifier"]["passed"]
    assert "seccomp" in manifest["sandbox"]["ptrace_and_setid"]
    assert verify(paths.journal).ok


POLICY = '''
import json
from pathlib import Path

FLAG = Path(__file__).with_name("resumed")

def policy(call, messages):
    if call.tick == 0 and not FLAG.exists():
        op = {"name": "SYS_EXEC", "cmd": "touch started && sleep 100", "timeout_s": 110}
    elif call.tick <= 1:
        op = {"name": "SYS_WRITE", "path": "hello.txt", "content": "hello\\n"}
    else:
        op = {"name": "SYS_HALT", "reason": "done"}
    return json.dumps({"thought": "t", "q_next": "q", "op": op})
'''


@pytest.mark.bwrap
@requires_bwrap
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_a_run_cleanly_while_a_long_command_runs(runner: Runner, sig: signal.Signals) -> None:
    script = runner.root / "policy.py"
    script.write_text(POLICY)
    run_dir = runner.root / "runs" / "sig"
    proc = subprocess.Popen([sys.executable, "-m", "bloodwork.cli", "run", str(runner.task_dir), "--model",
                             f"scripted:{script}", "--ticks", "10", "--out", str(runner.root / "runs"),
                             "--run-id", "sig"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (run_dir / "workspace" / "started").exists():
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    sent = time.monotonic()
    os.kill(proc.pid, sig)
    proc.communicate(timeout=30)
    assert time.monotonic() - sent < 5
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["ticks"] == 0
    assert verify(run_dir / ".journal.log").ok
    assert [e.data.reason for e in read_events(run_dir / ".journal.log") if e.kind == "stop"] == [sig.name]
    if sig != signal.SIGTERM:
        return  # one resume is enough: both signals take the same path
    (script.with_name("resumed")).touch()
    resumed = subprocess.run([sys.executable, "-m", "bloodwork.cli", "resume", str(run_dir)], capture_output=True,
                             text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["status"] == "completed" and manifest["ticks"] == 3 and manifest["resumes"] == 1
    assert [r["tick"] for r in read_jsonl(run_dir / "trace.jsonl")] == [0, 1, 2]
    assert verify(run_dir / ".journal.log").ok
