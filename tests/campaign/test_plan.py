"""Plans are validated before anything runs: a mistake is one line and exit 2, and no directory is made."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bloodwork.campaign.plan import PlanError, builtin_plans, load_plan, resolve_plan
from bloodwork.cli import app

CLI = [sys.executable, "-m", "bloodwork.cli"]
MINIMAL = {"name": "t", "vars": {"n": 3},
           "phases": [{"id": 0, "name": "zero", "steps": [{"name": "list", "bloodwork": ["tasks", "list"]}],
                       "checks": [{"check": "runs_finished", "runs": "{phase_dir}", "min": "{n}"}]}]}


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False)


def test_shipped_plans_load_and_name_only_known_checks() -> None:
    plans = builtin_plans()
    assert {"smoke", "bloody-data"} <= set(plans)
    for name in plans:
        plan = load_plan(resolve_plan(name))
        assert [p.id for p in plan.phases] == [0, 1, 2, 3, 4, 5]
    bloody = load_plan(resolve_plan("bloody-data"))
    assert bloody.time_budget_min is not None and bloody.time_budget_min <= 180
    profile = bloody.phase(5)
    assert {s.name for s in profile.steps} >= {"pinned", "window", "masked", "unbounded"}


def test_smoke_dry_run_uses_only_commands_this_cli_has() -> None:
    proc = _cli("campaign", "run", "smoke", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "0 step(s) use commands or options this CLI lacks" in proc.stdout
    assert "phase 5 profile (bloodwork): profile" in proc.stdout


def test_dry_run_flags_an_option_the_cli_lacks(tmp_path: Path) -> None:
    plan = json.loads(json.dumps(MINIMAL))
    plan["phases"][0]["steps"] = [{"name": "s", "bloodwork": ["sweep", "--tasks", "x", "--no-such-flag", "1"]},
                                  {"name": "t", "bloodwork": ["no-such-command"]}]
    file = tmp_path / "p.yaml"
    file.write_text(yaml.safe_dump(plan))
    proc = _cli("campaign", "run", str(file), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "unknown option(s) --no-such-flag of `sweep`" in proc.stdout
    assert "no command 'no-such-command'" in proc.stdout
    assert "2 step(s) use commands or options this CLI lacks" in proc.stdout


def _broken(change: str) -> dict:
    plan = json.loads(json.dumps(MINIMAL))
    phase = plan["phases"][0]
    if change == "unknown check":
        phase["checks"] = [{"check": "no_such_check"}]
    elif change == "bad check argument":
        phase["checks"] = [{"check": "deaths", "runs": "x", "minimum": 1}]
    elif change == "undefined var":
        phase["steps"][0]["bloodwork"] = ["tasks", "{nope}"]
    elif change == "later phase":
        phase["steps"][0]["bloodwork"] = ["tasks", "{phase3}"]
    elif change == "remedy var":
        phase["max_attempts"] = 2
        phase["remedies"] = [{"why": "w", "set": {"ghost": 1}}]
    elif change == "too many attempts":
        phase["max_attempts"] = 3
    elif change == "two kinds":
        phase["steps"][0]["python"] = ["x.py"]
    elif change == "extra key":
        phase["colour"] = "red"
    return plan


@pytest.mark.parametrize(("change", "expected"), [
    ("unknown check", "unknown check 'no_such_check'"),
    ("bad check argument", "unknown argument 'minimum'"),
    ("undefined var", "uses {nope}, which is not defined"),
    ("later phase", "only earlier phases"),
    ("remedy var", "sets ghost, which is not a var"),
    ("too many attempts", "max_attempts 3 needs 2 remedies"),
    ("two kinds", "needs exactly one of bloodwork, python, builtin"),
    ("extra key", "Extra inputs are not permitted"),
])
def test_a_bad_plan_is_refused_with_one_line(tmp_path: Path, change: str, expected: str) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(yaml.safe_dump(_broken(change)))
    with pytest.raises(PlanError) as caught:
        load_plan(file)
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_the_cli_refuses_a_bad_plan_with_exit_2_and_makes_nothing(tmp_path: Path) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(yaml.safe_dump(_broken("undefined var")))
    proc = _cli("campaign", "run", str(file), "--out", str(tmp_path / "c"))
    assert proc.returncode == 2
    assert "uses {nope}, which is not defined" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "c").exists()


def test_user_mistakes_on_directories_and_vars(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    for args, expected in (
            (["resume", str(tmp_path)], "is not a campaign directory"),
            (["audit", str(tmp_path)], "is not a campaign directory"),
            (["run", "smoke", "--out", str(tmp_path / "c"), "--set", "nope=1"], "the plan has no var 'nope'"),
            (["run", "no-such-plan", "--out", str(tmp_path / "c")], "shipped: "),
            (["run", "smoke", "--out", str(tmp_path / "full")], "is not empty")):
        result = CliRunner().invoke(app, ["campaign", *args])
        assert result.exit_code == 2, (args, result.output)
        assert expected in result.stderr and "Traceback" not in result.stderr, args
    assert not (tmp_path / "c").exists()


def test_every_campaign_command_shows_an_example() -> None:
    for command in ("run", "resume", "audit", "report", "plans"):
        result = CliRunner().invoke(app, ["campaign", command, "--help"])
        assert result.exit_code == 0 and "Example: bloodwork campaign" in result.stdout, command
