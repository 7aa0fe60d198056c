"""kill -9 of a real `bloodwork run` at random points, then `bloodwork resume`: nothing lost, nothing twice."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from bloodwork.chronos.files import read_jsonl
from bloodwork.chronos.journal import read_events, verify
from bloodwork.chronos.run import RunPaths, verify_run
from tests.conftest import make_task

TICKS = 36
POLICY = '''
import json, time

def policy(call, messages):
    time.sleep(0.03)
    t = call.tick
    if t == {last}:
        op = {{"name": "SYS_HALT", "reason": "all notes written"}}
    elif t == {last} - 1:
        op = {{"name": "SYS_WRITE", "path": "hello.txt", "content": "hello\\n"}}
    elif t % 3 == 2:
        op = {{"name": "SYS_EXEC", "cmd": "ls notes | wc -l"}}
    else:
        op = {{"name": "SYS_WRITE", "path": "notes/n%03d.txt" % t, "content": "note %d\\n" % t}}
    return json.dumps({{"thought": "step %d" % t, "q_next": "at %d" % t, "op": op}})
'''


def bloodwork(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "bloodwork.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)


def test_kill9_and_resume_loses_and_duplicates_nothing(tmp_path: Path):
    task = make_task(tmp_path)
    script = tmp_path / "policy.py"
    script.write_text(POLICY.format(last=TICKS - 1))
    run_dir = tmp_path / "runs" / "k9"
    rng = random.Random(1234)
    first_args = (str(task), "--model", f"scripted:{script}", "--ticks", str(TICKS + 5), "--out",
                  str(tmp_path / "runs"), "--run-id", "k9")
    proc = bloodwork("run", *first_args)
    kills = 0
    for _ in range(6):
        time.sleep(rng.uniform(0.4, 1.6))
        if proc.poll() is not None:
            break
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        if (run_dir / "run.json").is_file() and json.loads((run_dir / "run.json").read_text())["status"] != "running":
            proc = None  # it finished between the last look and the kill (a loaded machine): nothing to resume
            break
        if (run_dir / "registers.json").is_file():
            # the chain reaches its committed head intact (a kill between the journal's fsync and the
            # registers' rename leaves events after it, which the resume cuts)
            report = verify_run(RunPaths(run_dir))
            assert report.head is not None and report.trusted == report.head.seq + 1, report
            proc = bloodwork("resume", str(run_dir))
        elif (run_dir / "run.json").is_file():
            proc = bloodwork("resume", str(run_dir))  # killed while being created: starts again from run.json
        else:
            proc = bloodwork("run", *first_args)  # killed before run.json: the same --run-id replaces it
    if proc is not None:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    assert kills >= 2, "the run finished before it could be killed twice; slow the policy down"

    manifest = json.loads((run_dir / "run.json").read_text())
    # a kill that lands while `resume` is still starting up leaves no resume behind: at most one per kill
    assert manifest["status"] == "completed" and manifest["resumes"] <= kills
    assert verify_run(RunPaths(run_dir)).ok
    trace = read_jsonl(run_dir / "trace.jsonl")
    assert [r["tick"] for r in trace] == list(range(TICKS))
    journal = read_events(run_dir / ".journal.log")
    tick_events = [e.tick for e in journal if e.kind == "tick"]
    assert tick_events == list(range(TICKS))
    assert verify(run_dir / ".journal.log").ok
    notes = sorted(p.name for p in (run_dir / "workspace" / "notes").iterdir())
    assert notes == [f"n{t:03d}.txt" for t in range(TICKS - 2) if t % 3 != 2]
    # every raw output is kept, including those of ticks that were cut off and asked again
    dirty = read_jsonl(run_dir / "dirty_trace.jsonl")
    assert {r["tick"] for r in dirty} == set(range(TICKS)) and len(dirty) >= TICKS


def test_resume_refuses_a_finished_run(tmp_path: Path):
    task = make_task(tmp_path)
    script = tmp_path / "s.yaml"
    script.write_text('- \'{"thought": "", "q_next": "", "op": {"name": "SYS_WRITE", "path": "hello.txt", '
                      '"content": "hello"}}\'\n- \'{"thought": "", "q_next": "", "op": {"name": "SYS_HALT", '
                      '"reason": "ok"}}\'\n')
    done = bloodwork("run", str(task), "--model", f"scripted:{script}", "--out", str(tmp_path), "--run-id", "d")
    assert done.wait(60) == 0
    again = bloodwork("resume", str(tmp_path / "d"))
    _, err = again.communicate(timeout=60)
    assert again.returncode == 2
    assert "nothing to resume" in err.decode() and "Traceback" not in err.decode()
