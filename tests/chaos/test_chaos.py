"""The fault plan: seeded and reproducible, different across seeds, and every fault has a real effect."""

from __future__ import annotations

import time

import pytest

from bloodwork.chaos.plan import ChaosConfigError, ChaosProfile, FaultPlan, apply_overrides, load_profile
from bloodwork.chronos.files import read_jsonl
from tests.conftest import events, frame


def decisions(seed: int, run_id: str = "run") -> list[bool]:
    plan = FaultPlan(ChaosProfile(rates={"exec_timeout": 0.3}), seed, run_id)
    return [plan.decide(t, 0, "exec_timeout") for t in range(400)]


def test_plans_are_reproducible_and_differ_across_seeds():
    assert decisions(1) == decisions(1)
    assert decisions(1) != decisions(2)
    assert decisions(1, "a") != decisions(1, "b")
    rate = sum(decisions(3)) / 400
    assert 0.22 < rate < 0.38  # the hash behaves like a uniform draw


def test_rate_zero_and_one():
    plan = FaultPlan(ChaosProfile(rates={"log_flood": 1.0, "exec_fail": 0.0}), 0, "r")
    assert all(plan.decide(t, 0, "log_flood") for t in range(50))
    assert not any(plan.decide(t, 0, "exec_fail") for t in range(50))


def test_profiles_and_overrides():
    default = load_profile("default")
    assert default.rates == {"exec_timeout": 0.10, "write_deny": 0.05, "log_flood": 0.10}
    assert default.log_flood_chars == 50_000
    assert load_profile("off").rates == {}
    env = {"VOYAGER_CHAOS_EXEC_TIMEOUT_RATE": "0.5", "BLOODWORK_CHAOS_DISK_FULL_RATE": "0.2",
           "VOYAGER_CHAOS_LOG_FLOOD_CHARS": "1234"}
    merged = apply_overrides(default, {"write_deny": 0.9}, env=env)
    assert merged.rates["exec_timeout"] == 0.5 and merged.rates["disk_full"] == 0.2
    assert merged.rates["write_deny"] == 0.9 and merged.log_flood_chars == 1234
    with pytest.raises(ChaosConfigError):
        apply_overrides(default, {"meteor": 0.1}, env={})
    with pytest.raises(ChaosConfigError):
        apply_overrides(default, {}, env={"BLOODWORK_CHAOS_EXEC_FAIL_RATE": "lots"})
    with pytest.raises(ChaosConfigError):
        load_profile("hurricane")


EXEC = frame({"name": "SYS_EXEC", "cmd": "echo hello"})
WRITE = frame({"name": "SYS_WRITE", "path": "out.txt", "content": "0123456789" * 4})


def test_exec_timeout_really_hangs_and_is_killed(runner):
    start = time.monotonic()
    _, paths = runner.run([EXEC], chaos={"exec_timeout": 1.0})
    assert time.monotonic() - start >= 2.0  # the profile's 2 s timeout really elapsed
    trace = read_jsonl(paths.trace)[0]
    assert trace["traps"] == ["EXEC_TIMEOUT"] and trace["result"]["timed_out"]
    assert [c.data.kind for c in events(paths, "chaos")] == ["exec_timeout"]


def test_exec_fail_is_a_real_failed_command(runner):
    _, paths = runner.run([EXEC], chaos={"exec_fail": 1.0})
    trace = read_jsonl(paths.trace)[0]
    assert trace["result"]["exit"] == 1 and trace["traps"] == []  # a non-zero exit is data, not a trap


@pytest.mark.parametrize(("kind", "errno_name"), [("write_deny", "EACCES"), ("disk_full", "ENOSPC")])
def test_write_faults_leave_a_partial_file(runner, kind, errno_name):
    _, paths = runner.run([WRITE], chaos={kind: 1.0})
    assert (paths.workspace / "out.txt").read_text() == ("0123456789" * 4)[:20]
    trap = events(paths, "trap")[0]
    assert trap.data.kind == "IO_FAULT" and trap.data.injected
    assert events(paths, "chaos")[0].data.params["errno"] == errno_name


def test_log_flood_buries_the_output_and_spills_it(runner):
    _, paths = runner.run([EXEC], chaos={"log_flood": 1.0})
    trace = read_jsonl(paths.trace)[0]
    assert trace["traps"] == ["LOG_FLOOD"] and trace["result"]["bytes"] >= 50_000
    spilled = (paths.spill / trace["result"]["spill"]).read_text()
    assert spilled.startswith("hello\n") and len(spilled) >= 50_000


def test_oracle_faults_reach_the_kernel_as_traps(runner):
    _, paths = runner.run([EXEC], chaos={"oracle_error": 1.0}, run_id="err")
    assert read_jsonl(paths.trace)[0]["traps"] == ["ORACLE_FAULT"]
    assert events(paths, "trap")[0].data.injected
    _, paths = runner.run([EXEC], chaos={"oracle_truncate": 1.0}, run_id="trunc")
    dirty = read_jsonl(paths.dirty)[0]
    assert dirty["injected"][0]["kind"] == "oracle_truncate" and not dirty["strict_ok"]
    assert events(paths, "trap")[0].data.kind == "SCHEMA_VIOLATION" and events(paths, "trap")[0].data.injected
    _, paths = runner.run([EXEC], chaos={"oracle_slow": 1.0}, run_id="slow")
    assert read_jsonl(paths.dirty)[0]["latency_ms"] >= 2000
