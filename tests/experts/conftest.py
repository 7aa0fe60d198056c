"""Student runs and expert take-overs: a scripted student leaves a real state, the expert is resumed on a copy."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from bloodwork.chronos.files import read_jsonl
from bloodwork.chronos.journal import Event, read_events
from bloodwork.chronos.run import RunManifest, RunPaths
from bloodwork.kernel import Kernel, KernelConfig, RunResult
from bloodwork.oracles.registry import make_oracle
from bloodwork.sweep import chaos_profile
from bloodwork.tasks.registry import load_task


def student_run(root: Path, task: str, replies: list[str] | Path, ticks: int, *, seed: int = 0,
                chaos: str = "off", run_id: str = "student") -> Path:
    """A run of a scripted student (a reply list, or a policy file) that stops after `ticks` ticks."""
    if isinstance(replies, list):
        script = root / f"{run_id}.yaml"
        script.write_text(yaml.safe_dump(replies))
        replies = script
    kernel = Kernel.create(load_task(task), make_oracle(f"scripted:{replies}"), out_dir=root / "runs",
                           config=KernelConfig(max_ticks=ticks), seed=seed, chaos=chaos_profile(chaos), run_id=run_id)
    kernel.run()
    return kernel.paths.root


@dataclass
class TakeOver:
    result: RunResult
    run: Path
    from_tick: int

    @property
    def ticks_used(self) -> int:
        return self.result.ticks - self.from_tick

    def events(self, kind: str) -> list[Event]:
        return [e for e in read_events(RunPaths(self.run).journal) if e.kind == kind and e.tick >= self.from_tick]

    def frames(self) -> list[dict]:
        return [r["frame"] for r in read_jsonl(RunPaths(self.run).trace) if r["tick"] >= self.from_tick]

    def calls(self) -> list[dict]:
        return read_jsonl(RunPaths(self.run).dirty)


def take_over(student: Path, task: str, extra_ticks: int) -> TakeOver:
    """The expert resumed on a copy of the student's run, from its last committed state."""
    copy = student.with_name(student.name + "-expert")
    shutil.copytree(student, copy, symlinks=True)
    start = RunManifest.load(RunPaths(copy)).ticks
    oracle = make_oracle(f"expert:{task}")
    try:
        result = Kernel.resume(copy, load_task(task), oracle, max_ticks=start + extra_ticks).run()
    finally:
        oracle.close()
    return TakeOver(result, copy, start)


def expert_run(root: Path, task: str, ticks: int, *, seed: int = 0, chaos: str = "off",
               run_id: str = "expert") -> TakeOver:
    oracle = make_oracle(f"expert:{task}")
    try:
        kernel = Kernel.create(load_task(task), oracle, out_dir=root / "runs", config=KernelConfig(max_ticks=ticks),
                               seed=seed, chaos=chaos_profile(chaos), run_id=run_id)
        result = kernel.run()
    finally:
        oracle.close()
    return TakeOver(result, kernel.paths.root, 0)
