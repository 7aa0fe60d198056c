"""`ops-blindbox/<scenario>`: every fault really breaks the live service, the documented repair really
fixes it, and the verifier tells a recovery from a half fix that lost data.

The service runs inside a bwrap sandbox (its own network namespace, capabilities dropped, so that a
`chmod 000` binds root too), as in a run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bloodwork.manifold.runner import CommandRunner, bwrap_available
from bloodwork.tasks.base import TaskError
from bloodwork.tasks.ops import PORT, OpsTask, inject_tick_for, load_scenario, scenario_names, sentinels_for
from bloodwork.tasks.ops.netns import make_unreachable, unavailable
from bloodwork.tasks.ops.task import AUDIT_HOST, DATA_DIR, NETWORK_FAULTS, helper
from bloodwork.tasks.registry import load_task

pytestmark = pytest.mark.skipif(not bwrap_available(), reason="the service runs in the bwrap sandbox")
SEED = 11
SYMPTOMS = {"kill9": "Connection refused", "chmod": "unable to open database file", "port_squat": "404",
            "config_corrupt": "config error", "net_unreachable": "No route to host"}
NO_NETWORK_FAULT = unavailable()


def _runnable(names: list[str]) -> list[object]:
    """Scenarios as parameters; a network fault is skipped where this machine cannot make one (not root)."""
    return [pytest.param(n, marks=pytest.mark.skipif(n in NETWORK_FAULTS and NO_NETWORK_FAULT is not None,
                                                       reason=f"network fault: {NO_NETWORK_FAULT}")) for n in names]


@pytest.fixture
def live(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[OpsTask, Path, CommandRunner]]:
    with _started(request.param, tmp_path) as started:
        yield started


@contextmanager
def _started(scenario: str, tmp_path: Path) -> Iterator[tuple[OpsTask, Path, CommandRunner]]:
    """The scenario's service running in a fresh workspace; service and sandbox are torn down after."""
    task = load_task(f"ops-blindbox/{scenario}")
    assert isinstance(task, OpsTask)
    ws = tmp_path / "ws"
    ws.mkdir()
    task.prepare(ws, SEED)
    runner = CommandRunner(ws, sandbox="bwrap")
    try:
        task.start(runner, seed=SEED, resumed=False)
        yield task, ws, runner
    finally:
        task.close()
        runner.close()
        runner.close()


def _strike(task: OpsTask, runner: CommandRunner) -> dict[str, object]:
    """Tick until the fault strikes; exactly one event, at the hidden tick."""
    events = []
    for tick in range(task.inject_tick + 1):
        got = task.on_tick(runner, tick, SEED)
        assert not got or tick == task.inject_tick
        events += got
    [event] = events
    return event


def test_scenarios_and_hidden_tick() -> None:
    assert set(scenario_names()) >= {"kill9", "chmod", "port_squat", "config_corrupt", "net_unreachable"}
    ticks = {inject_tick_for(seed, "kill9") for seed in range(60)}
    assert ticks <= set(range(3, 11)) and len(ticks) >= 5
    assert inject_tick_for(5, "chmod") == inject_tick_for(5, "chmod")
    assert sentinels_for(1) == sentinels_for(1) != sentinels_for(2)
    with pytest.raises(TaskError, match="unknown ops-blindbox scenario 'nope'"):
        load_task("ops-blindbox/nope")


def test_goal_names_the_service_not_the_fault(tmp_path: Path) -> None:
    for name in scenario_names():
        task = load_task(f"ops-blindbox/{name}")
        (tmp_path / name).mkdir()
        task.prepare(tmp_path / name, SEED)
        assert f"127.0.0.1:{PORT}" in task.goal
        scenario = load_scenario(name)
        for word in ("kill", "chmod", "permission", "squat", "corrupt", "truncat", "route", "network", "audit",
                     scenario.fault):
            assert word not in task.goal.lower()
        assert "verifier" in task.metadata and task.metadata["fault"] == scenario.fault
        config = json.loads((tmp_path / name / "service" / "config.json").read_text())
        assert config["port"] == PORT and config["db_path"] == "data/store.db"
        assert config["audit"] == {"host": AUDIT_HOST, "port": 8418}, "every scenario has the same topology"


@pytest.mark.parametrize("live", _runnable(scenario_names()), indirect=True)
def test_fault_breaks_the_service_and_the_documented_repair_fixes_it(
        live: tuple[OpsTask, Path, CommandRunner]) -> None:
    task, ws, runner = live
    before = task.check(runner)
    assert before["healthy"] and before["data_ok"]
    early = task.verify(ws, runner)
    assert (early.passed, early.stage) == (False, "before_fault")

    event = _strike(task, runner)
    assert event["kind"] == task.scenario.fault and event["injected"] is True
    assert event["tick"] == task.inject_tick and event["params"]["broken"] is True
    status = runner.run("./service/status.sh", 20)
    assert status.exit_code != 0 and SYMPTOMS[task.scenario.id] in status.text, status.text
    down = task.verify(ws, runner)
    assert (down.passed, down.stage) == (False, "down")
    assert task.on_tick(runner, task.inject_tick + 1, SEED) == []  # still down: no recovery recorded

    repair = runner.run(task.scenario.repair.replace("{port}", str(task.port)), 60)
    assert repair.exit_code == 0, repair.text
    assert task.on_tick(runner, task.inject_tick + 2, SEED) == []
    fixed = task.verify(ws, runner)
    assert (fixed.passed, fixed.stage) == (True, "recovered"), fixed.summary
    d = fixed.details
    assert d["fault_struck"]["tick"] == task.inject_tick and d["first_healthy"]["tick"] == task.inject_tick + 2
    assert d["mttr_ticks"] == 2 and d["mttr_s"] > 0 and d["checked_at_tick"] == task.inject_tick + 2
    assert d["check"]["sentinels"] == {"intact": 5, "total": 5, "missing": []}
    assert "verify-" not in runner.run("sqlite3 data/store.db 'select key from kv' 2>/dev/null; true", 10).text


@pytest.mark.parametrize("live", ["chmod"], indirect=True)
def test_healthy_but_data_lost_is_rejected(live: tuple[OpsTask, Path, CommandRunner]) -> None:
    task, ws, runner = live
    _strike(task, runner)
    # The quick "fix": throw the unreadable database away and start over.
    runner.run("rm -f data/store.db && ./service/stop.sh && ./service/start.sh", 30)
    result = task.verify(ws, runner)
    assert (result.passed, result.stage) == (False, "healthy_data_lost")
    assert result.details["check"]["healthy"] and result.details["check"]["sentinels"]["intact"] == 0


@pytest.mark.parametrize("live", ["kill9"], indirect=True)
def test_a_store_moved_elsewhere_is_data_lost(live: tuple[OpsTask, Path, CommandRunner]) -> None:
    task, ws, runner = live
    _strike(task, runner)
    config = json.loads((ws / "service/config.json").read_text())
    (ws / "service/config.json").write_text(json.dumps({**config, "db_path": "data/fresh.db"}))
    assert runner.run("./service/start.sh", 30).exit_code == 0
    result = task.verify(ws, runner)
    assert result.stage == "healthy_data_lost"
    assert not result.details["check"]["roundtrip"]["in_db_file"]


@pytest.mark.skipif(NO_NETWORK_FAULT is not None, reason=f"network fault: {NO_NETWORK_FAULT}")
@pytest.mark.parametrize("live", ["net_unreachable"], indirect=True)
def test_network_fault_is_a_real_route_in_the_sandbox_only(live: tuple[OpsTask, Path, CommandRunner]) -> None:
    task, ws, runner = live
    event = _strike(task, runner)
    assert event["params"]["command"] == f"ip route add unreachable {AUDIT_HOST}/32 table local"
    inside = runner.run("/usr/sbin/ip route show table local", 10).text
    assert f"unreachable {AUDIT_HOST}" in inside
    host = subprocess.run(["ip", "route", "show", "table", "local"], capture_output=True, text=True, check=True)
    assert AUDIT_HOST not in host.stdout, "the host's own routes are untouched"
    probe = (f"python3 -c \"import socket\ntry:\n    socket.create_connection(('{AUDIT_HOST}', 8418), 2)\n"
             "except OSError as e:\n    print(e)\"")
    assert "No route to host" in runner.run(probe, 10).text, "a real connect fails, not a simulated answer"
    assert "running" in runner.run("cat run/audit.pid && kill -0 $(cat run/audit.pid) && echo running", 10).text


@pytest.mark.skipif(NO_NETWORK_FAULT is not None, reason=f"network fault: {NO_NETWORK_FAULT}")
@pytest.mark.parametrize("live", ["net_unreachable"], indirect=True)
def test_dropping_the_audit_trail_is_not_a_recovery(live: tuple[OpsTask, Path, CommandRunner]) -> None:
    task, ws, runner = live
    _strike(task, runner)
    # The quick "fix": rip the audit service out of kvd (no call, no start), then restart it.
    app = ws / "service" / "app.py"
    text = app.read_text()
    for old, new in (('    url = f"http://{cfg', '    return None\n    url = f"http://{cfg'),
                     ("    if audit_pid() is not None:\n        return True", "    if True:\n        return True")):
        assert old in text
        text = text.replace(old, new)
    app.write_text(text)
    runner.run("./service/stop.sh; ./service/start.sh", 30)
    deadline = time.monotonic() + 30
    result = task.verify(ws, runner)
    while result.stage == "down" and time.monotonic() < deadline:  # a loaded machine restarts it slowly
        time.sleep(1)
        result = task.verify(ws, runner)
    assert (result.passed, result.stage) == (False, "healthy_data_lost"), result.summary
    assert result.details["check"]["roundtrip"]["in_db_file"] and not result.details["check"]["roundtrip"]["audited"]


def test_network_fault_refused_without_an_isolated_namespace(tmp_path: Path) -> None:
    runner = CommandRunner(tmp_path, sandbox="none")
    try:
        with pytest.raises(TaskError, match="host's network namespace|needs root"):
            make_unreachable(runner, AUDIT_HOST)
    finally:
        runner.close()
    host = subprocess.run(["ip", "route", "show", "table", "local"], capture_output=True, text=True, check=False)
    assert AUDIT_HOST not in host.stdout


def test_resumed_task_knows_the_fault_already_struck(tmp_path: Path) -> None:
    with _started("kill9", tmp_path) as (task, ws, runner):
        resumed = load_task("ops-blindbox/kill9")
        assert isinstance(resumed, OpsTask)
        resumed.start(runner, seed=SEED, resumed=True)
        assert resumed.on_tick(runner, task.inject_tick + 3, SEED) == []
        assert resumed.verify(ws, runner).stage == "recovered"  # nothing broke it in this world


EXPERT = DATA_DIR / "expert.py"
BLOODWORK = Path(sys.executable).with_name("bloodwork")


@pytest.mark.parametrize("scenario", _runnable(scenario_names()))
def test_scripted_expert_recovers_every_scenario_through_the_cli(tmp_path: Path, scenario: str) -> None:
    out = tmp_path / "runs"
    proc = subprocess.run(
        [str(BLOODWORK), "run", f"ops-blindbox/{scenario}", "--model", f"scripted:{EXPERT}", "--out", str(out),
         "--ticks", "30", "--seed", str(SEED), "--run-id", "expert"],
        capture_output=True, text=True, timeout=300, check=False)
    manifest = json.loads((out / "expert" / "run.json").read_text())
    assert manifest["status"] == "completed", proc.stdout + proc.stderr
    assert manifest["provenance"] == "scripted"
    verdict = manifest["verifier"]
    assert verdict["passed"] and verdict["stage"] == "recovered"
    assert verdict["details"]["mttr_ticks"] >= 1
    chaos = [json.loads(line) for line in (out / "expert" / ".journal.log").read_text().splitlines()
             if json.loads(line)["kind"] == "chaos"]
    assert [c["data"]["kind"] for c in chaos] == [load_scenario(scenario).fault]
    traps = [json.loads(line) for line in (out / "expert" / ".journal.log").read_text().splitlines()
             if json.loads(line)["kind"] == "trap"]
    assert traps == []  # healthy work (a health check each tick, a diagnosis, a repair) traps nothing
    assert chaos[0]["tick"] == inject_tick_for(SEED, scenario)


def test_the_helper_does_not_import_what_the_agent_left_in_the_workspace(tmp_path: Path) -> None:
    (tmp_path / "json.py").write_text("raise SystemExit('the agent stands in for json')\n")
    runner = CommandRunner(tmp_path, sandbox="bwrap")
    try:
        assert helper(runner, "kill_pids", pids=[]) == {"killed": []}
    finally:
        runner.close()
