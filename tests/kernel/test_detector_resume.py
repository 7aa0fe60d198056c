"""A resumed run judges repeats exactly as an uninterrupted one: detector state is rebuilt from trace.jsonl
(op fingerprints, world digests, observation digests) and the world index from a fresh scan of the files."""

from __future__ import annotations

from pathlib import Path

from bloodwork.chaos.plan import ChaosProfile
from bloodwork.chronos.files import read_jsonl
from bloodwork.chronos.run import RunStatus
from bloodwork.kernel import Kernel, KernelConfig
from bloodwork.oracles.registry import make_oracle
from bloodwork.tasks.folder import FolderTask
from tests.kernel.trajectories import exec_, frame, halt, hello_task, read, scripted

# Ticks 0-4: the same command on an unchanged workspace (WATCHDOG at 4); 5-8: A B A B (THRASHING at 8);
# then a write and a verified halt. The cuts at 3 and 8 split both patterns across a resume.
REPLIES = [exec_("cat a.txt")] * 5 + [read("a.txt"), read("b.txt"), read("a.txt"), read("b.txt"),
                                      frame({"name": "SYS_WRITE", "path": "hello.txt", "content": "hello\n"}), halt()]
COMPARED = ("tick", "traps", "blocked", "progress", "changed", "seen", "world", "panic", "next_digest")


def _run(root: Path, cuts: list[int]) -> list[dict]:
    task = hello_task(root)
    spec = scripted(root, REPLIES)
    horizons = [*cuts, len(REPLIES)]
    kernel = Kernel.create(task, make_oracle(spec), out_dir=root / "runs", config=KernelConfig(max_ticks=horizons[0]),
                           seed=3, chaos=ChaosProfile(name="off", rates={}), run_id="r")
    result = kernel.run()
    for horizon in horizons[1:]:
        assert result.status == RunStatus.MAX_TICKS
        kernel = Kernel.resume(kernel.paths.root, FolderTask(task.folder), make_oracle(spec), max_ticks=horizon)
        result = kernel.run()
    assert result.status == RunStatus.COMPLETED, result
    return [{k: r.get(k) for k in COMPARED} for r in read_jsonl(kernel.paths.trace)]


def test_resume_rebuilds_the_detectors_exactly(tmp_path: Path):
    straight = _run(tmp_path / "straight", [])
    resumed = _run(tmp_path / "resumed", [3, 8])
    assert [r["traps"] for r in straight][4] == ["WATCHDOG"] and [r["traps"] for r in straight][8] == ["THRASHING"]
    assert resumed == straight
