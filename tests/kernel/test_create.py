"""Creating and resuming a run directory under real kills: a half-built run never blocks its run id, a failed
creation leaves nothing, and a resume cuts every file an interrupted tick had begun, the dirty trace included."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bloodwork.chaos.plan import ChaosProfile
from bloodwork.chronos.files import read_jsonl
from bloodwork.chronos.journal import read_events
from bloodwork.chronos.run import RunPaths, verify_run
from bloodwork.kernel import Kernel, KernelConfig
from bloodwork.oracles.registry import make_oracle
from bloodwork.tasks.base import TaskError
from bloodwork.tasks.folder import FolderTask
from tests.conftest import frame, make_task

SLOW_CREATOR = '''
import sys, time
from pathlib import Path
from bloodwork.chaos.plan import ChaosProfile
from bloodwork.kernel import Kernel, KernelConfig
from bloodwork.oracles.registry import make_oracle
from bloodwork.tasks.folder import FolderTask

class SlowStart(FolderTask):
    def start(self, runner, *, seed, resumed):
        Path(sys.argv[3]).write_text("creating")
        time.sleep(60)

Kernel.create(SlowStart(Path(sys.argv[1])), make_oracle("scripted:" + sys.argv[2]), out_dir=Path(sys.argv[4]),
              config=KernelConfig(max_ticks=2, sandbox="none"), seed=0, chaos=ChaosProfile(), run_id="half")
'''


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bloodwork.cli", *args], capture_output=True, text=True, timeout=120)


def wait_for(path: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the process never got there"
        time.sleep(0.05)


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    script = tmp_path / "replies.yaml"
    script.write_text(yaml.safe_dump([frame({"name": "SYS_WRITE", "path": "hello.txt", "content": "hello"}),
                                      frame({"name": "SYS_HALT", "reason": "done"})]))
    config = tmp_path / "none.yaml"
    config.write_text("sandbox: none\n")
    return {"task": make_task(tmp_path), "script": script, "config": config, "out": tmp_path / "runs",
            "marker": tmp_path / "creating", "creator": tmp_path / "creator.py"}


def kill_while_creating(s: dict[str, Path]) -> Path:
    """A real creator, SIGKILLed while its run directory is half-built (after run.json, before registers)."""
    s["creator"].write_text(SLOW_CREATOR)
    proc = subprocess.Popen([sys.executable, str(s["creator"]), str(s["task"]), str(s["script"]), str(s["marker"]),
                             str(s["out"])], start_new_session=True)
    try:
        wait_for(s["marker"], proc)
        busy = cli("run", str(s["task"]), "--model", f"scripted:{s['script']}", "--out", str(s["out"]), "--run-id",
                   "half", "--config", str(s["config"]))
        assert busy.returncode == 2 and "in use by another process" in busy.stderr  # never clean a live creation
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    run_dir = s["out"] / "half"
    assert (run_dir / "run.json").is_file() and not (run_dir / "registers.json").exists()
    return run_dir


def test_a_half_built_run_does_not_block_its_run_id(setup):
    run_dir = kill_while_creating(setup)
    res = cli("run", str(setup["task"]), "--model", f"scripted:{setup['script']}", "--out", str(setup["out"]),
              "--run-id", "half", "--config", str(setup["config"]))
    assert res.returncode == 0, res.stderr
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"
    assert verify_run(RunPaths(run_dir)).ok


def test_resume_starts_a_half_built_run_again_from_its_run_json(setup):
    run_dir = kill_while_creating(setup)
    res = cli("resume", str(run_dir))
    assert res.returncode == 0, res.stderr
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["status"] == "completed" and manifest["config"]["max_ticks"] == 2
    assert [e.kind for e in read_events(run_dir / ".journal.log")].count("run_start") == 1


def test_a_creation_that_fails_leaves_no_directory(tmp_path: Path):
    class BrokenStart(FolderTask):
        def start(self, runner, *, seed, resumed):  # type: ignore[no-untyped-def]
            raise TaskError("the task's service did not come up")

    script = tmp_path / "s.yaml"
    script.write_text("- x\n")
    with pytest.raises(TaskError):
        Kernel.create(BrokenStart(make_task(tmp_path)), make_oracle(f"scripted:{script}"), out_dir=tmp_path / "runs",
                      config=KernelConfig(sandbox="none"), seed=0, chaos=ChaosProfile(), run_id="broken")
    assert not (tmp_path / "runs" / "broken").exists()


def test_an_existing_directory_that_is_not_a_run_is_never_emptied(tmp_path: Path):
    mine = tmp_path / "runs" / "mine"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me")
    script = tmp_path / "s.yaml"
    script.write_text("- x\n")
    res = cli("run", str(make_task(tmp_path)), "--model", f"scripted:{script}", "--out", str(tmp_path / "runs"),
              "--run-id", "mine")
    assert res.returncode == 2 and "not a run directory" in res.stderr
    assert (mine / "notes.txt").read_text() == "keep me"


POLICY = '''
import json
from pathlib import Path

def policy(call, messages):
    marker = Path({marker!r})
    if call.tick == 3 and not marker.exists():
        marker.write_text("asked")  # the kill lands while this tick's command runs: after its dirty record
        op = {{"name": "SYS_EXEC", "cmd": "sleep 3", "timeout_s": 10}}
    elif call.tick == 5:
        op = {{"name": "SYS_HALT", "reason": "done"}}
    elif call.tick == 4:
        op = {{"name": "SYS_WRITE", "path": "hello.txt", "content": "hello"}}
    else:
        op = {{"name": "SYS_WRITE", "path": "n%d.txt" % call.tick, "content": "tick %d" % call.tick}}
    return json.dumps({{"thought": "", "q_next": "at %d" % call.tick, "op": op}})
'''


def test_resume_cuts_the_dirty_trace_of_an_uncommitted_tick(setup, tmp_path: Path):
    script = tmp_path / "policy.py"
    script.write_text(POLICY.format(marker=str(setup["marker"])))
    proc = subprocess.Popen([sys.executable, "-m", "bloodwork.cli", "run", str(setup["task"]), "--model",
                             f"scripted:{script}", "--out", str(setup["out"]), "--run-id", "d", "--config",
                             str(setup["config"])], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    wait_for(setup["marker"], proc)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run_dir = setup["out"] / "d"
    asked = [r for r in read_jsonl(run_dir / "dirty_trace.jsonl") if r["tick"] == 3]
    assert len(asked) == 1 and "sleep 3" in asked[0]["text"]  # recorded, never committed

    res = cli("resume", str(run_dir))
    assert res.returncode == 0, res.stderr
    dirty = read_jsonl(run_dir / "dirty_trace.jsonl")
    assert [(r["tick"], r["call_index"]) for r in dirty] == [(t, t) for t in range(6)]  # each call once
    assert "sleep 3" not in json.dumps(dirty[3])
    cut = [p for p in (run_dir / "recovered").iterdir() if p.name.startswith("dirty_trace.jsonl.3.")]
    assert len(cut) == 1 and "sleep 3" in cut[0].read_text()
    resume = next(e for e in read_events(run_dir / ".journal.log") if e.kind == "resume")
    assert resume.data.discarded_uncommitted["dirty_trace.jsonl"] == cut[0].stat().st_size
    assert verify_run(RunPaths(run_dir)).ok
