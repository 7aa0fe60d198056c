"""Shared fixtures: a tiny task folder and a helper that runs the real kernel with a scripted oracle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from bloodwork.chaos.plan import ChaosProfile
from bloodwork.chronos.journal import GENESIS, Event, canonical_json, line_hash, read_events
from bloodwork.chronos.run import RunPaths
from bloodwork.kernel import Kernel, KernelConfig, RunResult
from bloodwork.oracles.registry import make_oracle
from bloodwork.tasks.folder import FolderTask

requires_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")


def forge_chain(path: Path, events: list[dict[str, Any]], *, seq: int = 0, prev: str = GENESIS) -> None:
    """What an attacker with write access does: append lines of any content with every hash recomputed,
    so the chain is valid (not through `Journal`, which writes only the kernel's records)."""
    with open(path, "a", encoding="utf-8") as fh:
        for e in events:
            body = {"seq": seq, "ts": 1.0, "tick": e["tick"], "kind": e["kind"], "data": e["data"], "prev": prev}
            prev = line_hash(prev, body)
            fh.write(canonical_json({**body, "hash": prev}) + "\n")
            seq += 1


def frame(op: dict[str, Any], thought: str = "t", q: str = "q") -> str:
    return json.dumps({"thought": thought, "q_next": q, "op": op})


def make_task(root: Path, files: dict[str, str] | None = None, goal: str = "Write hello.txt containing hello.") -> Path:
    folder = root / "task"
    (folder / "files").mkdir(parents=True, exist_ok=True)
    (folder / "hidden").mkdir(exist_ok=True)
    (folder / "task.yaml").write_text(yaml.safe_dump({
        "id": "test/hello", "kind": "unit", "synthetic": True, "goal": goal,
        "verifier": {"command": "python3 -m pytest -q -p no:cacheprovider hidden", "timeout_s": 60}}))
    (folder / "hidden" / "test_hello.py").write_text(
        "from pathlib import Path\n\ndef test_hello():\n    assert Path('hello.txt').read_text().strip() == 'hello'\n")
    for name, text in (files or {}).items():
        path = folder / "files" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


class Runner:
    """Runs the real kernel on a scripted reply list and reads back what it left (without a sandbox unless
    `sandbox=` says otherwise)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.task_dir = make_task(root, files={"a.txt": "alpha\n", "b.txt": "beta\n", "sub/c.txt": "gamma\n"})

    def run(self, replies: list[str] | str, *, chaos: dict[str, float] | None = None, run_id: str = "r",
            **config: Any) -> tuple[RunResult, RunPaths]:
        if isinstance(replies, str):
            spec = f"scripted:{replies}"
        else:
            script = self.root / f"{run_id}.yaml"
            script.write_text(yaml.safe_dump(replies))
            spec = f"scripted:{script}"
        # No sandbox unless a test asks for one: what these runs check (traps, journal, context, chaos) does not
        # depend on isolation, so they run the same on a machine without bubblewrap.
        cfg = KernelConfig.model_validate({"max_ticks": len(replies) if isinstance(replies, list) else 50,
                                           "sandbox": "none", **config})
        kernel = Kernel.create(FolderTask(self.task_dir), make_oracle(spec), out_dir=self.root / "runs", config=cfg,
                               seed=1, chaos=ChaosProfile(name="test", rates=chaos or {}), run_id=run_id)
        return kernel.run(), kernel.paths


@pytest.fixture
def runner(tmp_path: Path) -> Runner:
    return Runner(tmp_path)


def events(paths: RunPaths, kind: str | None = None) -> list[Event]:
    return [e for e in read_events(paths.journal) if kind is None or e.kind == kind]
