"""A sweep runs its grid, and an interrupted sweep resumes without redoing finished runs."""

from __future__ import annotations

import pytest

from bloodwork.chronos.files import sha256_file
from bloodwork.chronos.run import RunManifest, RunPaths
from bloodwork.sweep import Sweep, SweepError, SweepSpec, cells
from tests.conftest import make_task

POLICY = '''
import json, time

def policy(call, messages):
    time.sleep(0.01)
    op = {"name": "SYS_EXEC", "cmd": "echo %d >> log.txt" % call.tick}
    return json.dumps({"thought": "", "q_next": "", "op": op})
'''


def test_interrupted_sweep_resumes_without_redoing(tmp_path):
    task = make_task(tmp_path)
    script = tmp_path / "p.py"
    script.write_text(POLICY)
    spec = SweepSpec(tasks=[str(task)], models=[f"scripted:{script}"], chaos=["off", "exec_fail=0.5"], seeds=[0, 1],
                     ticks=12, workers=1)
    first = Sweep(spec, tmp_path / "sweep")

    def stop_after_first(res):
        first.stop()

    done = first.run(on_cell=stop_after_first)
    finished = [r for r in done if r.status == "max_ticks"]
    assert len(finished) >= 1 and len(done) == 4
    kept = {r.cell_id: sha256_file(tmp_path / "sweep" / "runs" / r.cell_id / ".journal.log") for r in finished}

    second = Sweep(spec, tmp_path / "sweep")
    results = {r.cell_id: r for r in second.run()}
    assert len(results) == 4 and all(r.status == "max_ticks" for r in results.values())
    for cell_id, digest in kept.items():
        assert results[cell_id].action == "kept"
        assert sha256_file(tmp_path / "sweep" / "runs" / cell_id / ".journal.log") == digest
    assert {r.action for r in results.values()} - {"kept"} <= {"ran", "resumed"}
    assert len({c.cell_id for c in cells(spec)}) == 4


def test_a_different_grid_in_the_same_directory_is_refused(tmp_path):
    task = make_task(tmp_path)
    script = tmp_path / "s.yaml"
    script.write_text("- x\n")
    Sweep(SweepSpec(tasks=[str(task)], models=[f"scripted:{script}"], chaos=["off"], seeds=[0]),
          tmp_path / "s").prepare()
    with pytest.raises(SweepError):
        Sweep(SweepSpec(tasks=[str(task)], models=[f"scripted:{script}"], chaos=["off"], seeds=[1]),
              tmp_path / "s").prepare()


def test_sweeps_that_differ_only_by_kernel_config_make_different_run_ids(tmp_path):
    from bloodwork.kernel import KernelConfig

    default = KernelConfig().model_dump(exclude={"max_ticks", "panic_budget"})
    window = {**default, "context": {**default["context"], "policy": "window"}}
    grid = {"tasks": ["long-haul/ledger"], "models": ["scripted:x.yaml"], "chaos": ["off"], "seeds": [0]}
    plain, pinned, windowed = (cells(SweepSpec(**grid, config=c))[0].cell_id for c in ({}, default, window))
    assert plain == pinned == "long-haul-ledger__scripted-x-yaml__off__s0"  # default sweeps keep their ids
    assert windowed.startswith(plain + "__k") and windowed != plain


def test_a_sampled_sweep_records_its_temperature_and_keeps_greedy_ids(tmp_path):
    grid = {"tasks": ["long-haul/ledger"], "models": ["scripted:x.yaml"], "chaos": ["off"], "seeds": [3]}
    greedy, zero, sampled = (SweepSpec(**grid, temperature=t) for t in (None, 0.0, 0.7))
    assert cells(greedy)[0].cell_id == cells(zero)[0].cell_id == "long-haul-ledger__scripted-x-yaml__off__s3"
    assert cells(sampled)[0].cell_id == "long-haul-ledger__scripted-x-yaml__off__s3__t0.7"
    # An old sweep.json (no temperature) is the same grid as a greedy sweep today, not as a sampled one.
    assert greedy.grid_key() == SweepSpec(**grid).grid_key() != sampled.grid_key()
    assert sampled.oracle_options(3) == {"seed": 3, "temperature": 0.7}
    assert greedy.oracle_options(3) == {"seed": 3}


def test_the_temperature_reaches_every_run_manifest(tmp_path):
    task = make_task(tmp_path)
    script = tmp_path / "p.py"
    script.write_text(POLICY)
    spec = SweepSpec(tasks=[str(task)], models=[f"scripted:{script}"], chaos=["off"], seeds=[0, 1], ticks=2,
                     temperature=0.5, model_options={"max_new_tokens": 8})
    results = Sweep(spec, tmp_path / "sweep").run()
    assert len(results) == 2
    for r in results:
        manifest = RunManifest.load(RunPaths(tmp_path / "sweep" / "runs" / r.cell_id))
        assert manifest.oracle["options"]["temperature"] == 0.5
        assert manifest.oracle["options"]["seed"] == manifest.seed and r.cell_id.endswith(f"__s{manifest.seed}__t0.5")
