"""Runs with a known story for the dataset tests: which tick is golden, a recovery, or rejected is planted."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pytest

from bloodwork.chaos.plan import ChaosProfile
from bloodwork.chronos.run import RunPaths
from bloodwork.kernel import Kernel, KernelConfig
from bloodwork.oracles.base import CallInfo, CharEstimate, Completion
from bloodwork.tasks.folder import FolderTask
from tests.conftest import Runner, frame

READ_A = frame({"name": "SYS_READ", "path": "a.txt"})
MISSING = frame({"name": "SYS_READ", "path": "missing.txt"})
HALT = frame({"name": "SYS_HALT", "reason": "done"})
RUNS = 3
WORDS = ("alpha", "bravo", "charlie", "delta", "foxtrot", "golf")


def story(i: int) -> list[str]:
    """Per tick: golden, PAGE_FAULT, recovery, rejected (not JSON), recovery, golden, rejected (illegal halt),
    recovery, golden (verified halt). Run `i` writes its own words (numbers would make the runs near
    duplicates of each other), so runs share only their first states."""
    w = WORDS[i]
    return [READ_A, MISSING, frame({"name": "SYS_WRITE", "path": f"{w}.txt", "content": w}),
            f"not json, {w} said", frame({"name": "SYS_WRITE", "path": f"{w}-notes.txt", "content": f"{w} notes"}),
            frame({"name": "SYS_EXEC", "cmd": f"echo {w}"}), HALT,
            frame({"name": "SYS_WRITE", "path": "hello.txt", "content": "hello"}), HALT]


POOL_OF_TICK = {0: "golden", 2: "recovery", 3: "rejected", 4: "recovery", 5: "golden", 6: "rejected", 7: "recovery",
                8: "golden"}


class PretendRealOracle:
    """TEST DOUBLE, not a model: scripted replies under provenance 'real', so that the provenance filter of
    `dataset build` can be tested apart from everything else."""

    provenance: Literal["real"] = "real"
    spec = "test:pretend-real"

    def __init__(self, replies: list[str]) -> None:
        self.replies = replies
        self.tokenizer = CharEstimate()

    def complete(self, messages: Any, schema: Any = None, *, call: CallInfo | None = None) -> Completion:
        return Completion(text=self.replies[call.call_index if call else 0], latency_ms=1.0)

    def describe(self) -> dict[str, Any]:
        return {"backend": "test double"}

    def close(self) -> None:
        return None


class Story:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.runner = Runner(root)
        self.runs = [self.runner.run(story(i), run_id=f"run{i}")[1].root for i in range(RUNS)]

    def pretend_real_run(self) -> Path:
        out = self.root / "real"
        kernel = Kernel.create(FolderTask(self.runner.task_dir), PretendRealOracle(story(5)), out_dir=out,
                               config=KernelConfig(max_ticks=9), seed=1, chaos=ChaosProfile(name="off"),
                               run_id="real5")
        kernel.run()
        return RunPaths(out / "real5").root


@pytest.fixture(scope="session")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Story:
    return Story(tmp_path_factory.mktemp("story"))
