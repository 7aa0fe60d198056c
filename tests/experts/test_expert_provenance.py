"""Runs driven by a reference policy are tagged `expert` and never counted as model behaviour: datasets and
eval sets leave them out unless asked (like scripted runs), and the sweep report's model figures skip them.
Any task folder with a `solution/` gets a reference policy; a tiny one keeps this fast."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bloodwork.chaos.plan import ChaosProfile
from bloodwork.chronos.run import NOT_MODEL_BEHAVIOUR, RunManifest, RunPaths
from bloodwork.data.build import BuildError, BuildOptions, build_dataset
from bloodwork.data.mix import parse_mix
from bloodwork.evidence.extract import extract
from bloodwork.kernel import Kernel, KernelConfig
from bloodwork.matrix.evalset import EvalSetError, freeze
from bloodwork.oracles.registry import make_oracle
from bloodwork.tasks.folder import FolderTask
from tests.conftest import frame, make_task
from tests.data.conftest import PretendRealOracle


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("prov")
    folder = make_task(root)
    (folder / "solution").mkdir()
    (folder / "solution" / "hello.txt").write_text("hello\n")
    spec = yaml.safe_load((folder / "task.yaml").read_text())
    (folder / "task.yaml").write_text(yaml.safe_dump({**spec, "metadata": {"visible_test_command": "cat hello.txt"}}))
    out = root / "runs"
    for run_id, oracle in (("by-expert", make_oracle(f"expert:{folder}")),
                           ("by-model", PretendRealOracle([frame({"name": "SYS_WRITE", "path": "hello.txt",
                                                                  "content": "hello\n"}),
                                                           frame({"name": "SYS_HALT", "reason": "done"})]))):
        Kernel.create(FolderTask(folder), oracle, out_dir=out, config=KernelConfig(max_ticks=6), seed=0,
                      chaos=ChaosProfile(name="off"), run_id=run_id).run()
    return out / "by-expert", out / "by-model"


def test_an_expert_run_is_tagged_expert_everywhere(runs: tuple[Path, Path]) -> None:
    expert, _ = runs
    m = RunManifest.load(RunPaths(expert))
    assert (m.status.value, m.provenance.value, m.ticks) == ("completed", "expert", 3)
    assert m.oracle["backend"] == "expert" and "expert" in NOT_MODEL_BEHAVIOUR and "real" not in NOT_MODEL_BEHAVIOUR


def test_datasets_leave_expert_runs_out_unless_asked(runs: tuple[Path, Path], tmp_path: Path) -> None:
    expert, model = runs
    options = BuildOptions(mix=parse_mix("1/1/1"), exact_lengths=False)
    with pytest.raises(BuildError, match="provenance expert"):
        build_dataset([expert], tmp_path / "none", options, generator="test")
    stats = build_dataset([expert, model], tmp_path / "real", options, generator="test")
    assert stats.runs_used == 1 and stats.runs_excluded == {"provenance expert (use --include-scripted)": 1}
    assert stats.candidates["golden"] == 2  # the model's write and halt
    asked = build_dataset([expert, model], tmp_path / "both", options.model_copy(update={"include_scripted": True}),
                          generator="test")
    assert asked.runs_used == 2 and asked.candidates["golden"] > 2 and not asked.runs_excluded


def test_eval_sets_and_sweep_figures_do_not_count_expert_runs(runs: tuple[Path, Path], tmp_path: Path) -> None:
    expert, model = runs
    with pytest.raises(EvalSetError, match="no eligible state"):
        freeze([expert], tmp_path / "eval.jsonl", n=2, seed=0)
    report = extract([expert, model], tmp_path / "evidence", generator="test")
    assert report.provenance == {"expert": 1, "real": 1}
    assert report.call_times.latency_ms.n == 2  # the model's two calls; the expert's three are not model timings
