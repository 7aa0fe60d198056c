"""The trap detectors on labelled scripted trajectories (tests/kernel/trajectories.py).

Healthy work traps nothing: a developer who edits and reruns a test suite with 5-20 KB of output forty
times, and every built-in task's reference policy (`expert:TASK`) from a fresh start with chaos off.
Pathological agents trap, panic and die at the tick the default thresholds imply. bench/detectors.py runs
the whole set and prints each detector's confusion table.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bloodwork.chronos.files import read_jsonl
from bloodwork.chronos.journal import verify
from bloodwork.chronos.run import RunStatus
from tests.conftest import events
from tests.kernel.trajectories import REGIONS, builtin_task_ids, expert_name, trajectories

BY_NAME = {t.name: t for t in trajectories()}


def test_the_labelled_set_is_big_enough_for_the_bench():
    labels = [t.label for t in BY_NAME.values()]
    assert labels.count("healthy") >= 20 and labels.count("pathological") >= 20
    assert all((t.pathology is None) == (t.label == "healthy") for t in BY_NAME.values())


def test_a_developer_rerunning_a_long_test_report_forty_times_traps_nothing(tmp_path: Path):
    result, paths = BY_NAME["dev-40-vv"].run(tmp_path)
    assert result.status == RunStatus.COMPLETED, result
    assert events(paths, "trap") == [] and events(paths, "panic") == []
    trace = read_jsonl(paths.trace)
    runs = [r for r in trace if (r["frame"]["op"]["name"] == "SYS_EXEC")]
    assert len(runs) == 41
    sizes = [r["result"]["bytes"] for r in runs[:-1]]
    assert min(sizes) >= 5_000 and max(sizes) <= 20_000, (min(sizes), max(sizes))
    assert all("spill" in r["result"] for r in runs)  # every run was paged, none was a trap
    # half of the reruns follow an edit that changed only a comment: the same report on a new world state
    cycles = list(zip(runs[:40], runs[1:40], strict=False))
    assert all(b["world"][0] != a["world"][0] for a, b in cycles)
    assert sum(a["seen"] == b["seen"] for a, b in cycles) >= 15
    assert len(REGIONS) == 40


@pytest.mark.parametrize("task_id", builtin_task_ids())
def test_every_builtin_tasks_expert_finishes_its_task_without_a_trap(tmp_path: Path, task_id: str):
    result, paths = BY_NAME[expert_name(task_id)].run(tmp_path)
    assert result.status == RunStatus.COMPLETED and result.verifier and result.verifier["passed"], result
    assert events(paths, "trap") == [] and events(paths, "panic") == []
    assert all(not r["traps"] for r in read_jsonl(paths.trace))


@pytest.mark.parametrize("name", ["garbage-0", "missing-0", "oscillate-0", "oscillate-3", "illegal-halt-0",
                                  "same-command-1", "runaway-0", "idle-0"])
def test_a_pathological_agent_dies_at_the_computed_tick(tmp_path: Path, name: str):
    traj = BY_NAME[name]
    result, paths = traj.run(tmp_path)
    assert result.status == RunStatus.DIED and result.cause_of_death == traj.pathology, result
    deaths = events(paths, "death")
    assert [d.tick for d in deaths] == [traj.death_tick]
    panics = events(paths, "panic")
    assert len(panics) == 3 and {p.data.cause for p in panics} == {traj.pathology}
    assert {e.data.kind for e in events(paths, "trap")} >= {traj.pathology}
    assert all(not e.data.injected for e in events(paths, "trap"))
    assert verify(paths.journal).ok
