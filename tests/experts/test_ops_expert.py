"""`expert:ops-blindbox/<scenario>` watches the live service, diagnoses, applies the scenario's own repair
text and halts once the service is healthy with its data: for a built-in scenario, for a scenario file
added without code, from a state a student made worse, and through injected faults."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from bloodwork.chronos.run import RunManifest, RunPaths
from bloodwork.manifold.runner import bwrap_available
from bloodwork.tasks.ops import inject_tick_for
from bloodwork.tasks.ops import task as ops_task
from tests.conftest import frame
from tests.experts.conftest import expert_run, student_run, take_over

pytestmark = pytest.mark.skipif(not bwrap_available(), reason="the service runs in the bwrap sandbox")


def _recovered(run: Path) -> dict:
    m = RunManifest.load(RunPaths(run))
    assert m.status.value == "completed" and m.verifier is not None, m.verifier
    assert m.verifier["stage"] == "recovered" and m.verifier["details"]["check"]["sentinels"]["intact"] == 5
    return m.verifier


def _cmds(frames: list[dict]) -> list[str]:
    return [f["op"].get("cmd", f["op"]["name"]) for f in frames]


def test_fresh_run_watches_diagnoses_repairs_and_halts(tmp_path: Path) -> None:
    seed = 27
    assert inject_tick_for(seed, "port_squat") == 3
    done = expert_run(tmp_path, "ops-blindbox/port_squat", 20, seed=seed)
    verdict = _recovered(done.run)
    cmds = _cmds(done.frames())
    assert [c.split(";")[0] for c in cmds[:4]] == [f"echo 'check at tick {t}'" for t in range(4)]
    assert cmds[4].startswith("./service/status.sh; s=$?")  # the diagnosis
    assert "http.server" in cmds[5] and cmds[5].endswith("./service/status.sh")  # the scenario's repair, checked
    assert cmds[6] == "SYS_HALT" and verdict["details"]["mttr_ticks"] == 3


def test_a_scenario_file_added_without_code_is_repaired_by_its_own_text(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    scenarios = tmp_path / "scenarios"
    shutil.copytree(ops_task.SCENARIO_DIR, scenarios)
    repair = "./service/stop.sh; rm -f run/service.pid; ./service/start.sh"
    (scenarios / "kill9_restart.yaml").write_text(yaml.safe_dump({
        "id": "kill9_restart", "fault": "kill9", "title": "Killed, and restarted by the book",
        "description": "The process dies.", "symptoms": "Connection refused.", "repair": repair}))
    monkeypatch.setattr(ops_task, "SCENARIO_DIR", scenarios)
    done = expert_run(tmp_path, "ops-blindbox/kill9_restart", 20, seed=11)
    _recovered(done.run)
    assert any(c.startswith(repair + "\n") for c in _cmds(done.frames()))


def test_takes_over_from_a_student_who_made_it_worse(tmp_path: Path) -> None:
    seed = 14
    assert inject_tick_for(seed, "kill9") == 3
    student = student_run(tmp_path, "ops-blindbox/kill9", [
        *(frame({"name": "SYS_EXEC", "cmd": f"echo 'look {t}'; ./service/status.sh"}) for t in range(4)),
        frame({"name": "SYS_EXEC", "cmd": "./service/stop.sh"}),
        frame({"name": "SYS_WRITE", "path": "service/config.json", "content": "{\"port\": "}),
        frame({"name": "SYS_EXEC", "cmd": "chmod 000 data/store.db"}),
        "The service is broken beyond repair.",
    ], 8, seed=seed)
    took = take_over(student, "ops-blindbox/kill9", 15)
    _recovered(took.run)
    cmds = _cmds(took.frames())
    remedies = [c.split("\n")[0] for c in cmds if c.endswith("echo '--- check'; ./service/status.sh")]
    # kill9's remedy alone cannot start a service whose config is broken: the other scenarios' follow
    assert remedies == ["./service/start.sh", "chmod 644 data/store.db && ./service/status.sh",
                        "cat > service/config.json <<'JSON'"]
    assert cmds[-1] == "SYS_HALT" and took.ticks_used <= 7 and not took.events("panic")


def test_recovers_from_injected_faults_under_chaos_default(tmp_path: Path) -> None:
    # Seed and run id chosen so the plan hangs a check, floods another, and hangs the first command after
    # the fault strikes at tick 10; the plan's decisions are hashed, so the run is reproducible.
    done = expert_run(tmp_path, "ops-blindbox/config_corrupt", 30, seed=3, chaos="default", run_id="c3")
    _recovered(done.run)
    injected = [(e.tick, e.data.kind) for e in done.events("trap") if e.data.injected]
    assert (10, "EXEC_TIMEOUT") in injected and len(injected) >= 3
    assert not done.events("panic")
