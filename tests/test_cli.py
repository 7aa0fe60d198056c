"""The CLI on bad input: one clear line, the documented exit code, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from bloodwork.chaos.plan import ChaosConfigError
from bloodwork.cli import app
from bloodwork.cli.edge import Boundary
from tests.conftest import make_task, requires_bwrap


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bloodwork.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def assert_one_line_error(res: subprocess.CompletedProcess[str], code: int, needle: str) -> None:
    assert res.returncode == code, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert needle in lines[0]


def test_malformed_task_yaml(tmp_path):
    folder = make_task(tmp_path)
    (folder / "task.yaml").write_text("id: [unclosed\n")
    assert_one_line_error(cli("run", str(folder), "--model", "scripted:x.yaml"), 2, "not valid YAML")


def test_task_yaml_missing_a_field(tmp_path):
    folder = make_task(tmp_path)
    (folder / "task.yaml").write_text("id: t\nsynthetic: true\nverifier: {command: 'true'}\n")
    assert_one_line_error(cli("run", str(folder), "--model", "scripted:x.yaml"), 2, "goal")


def test_unknown_task():
    assert_one_line_error(cli("run", "no-such-task", "--model", "scripted:x.yaml"), 2, "unknown task")


def test_unknown_model_spec(tmp_path):
    folder = make_task(tmp_path)
    assert_one_line_error(cli("run", str(folder), "--model", "magic:gpt"), 2, "unknown model spec")


def test_missing_script_file(tmp_path):
    folder = make_task(tmp_path)
    assert_one_line_error(cli("run", str(folder), "--model", f"scripted:{tmp_path}/nope.yaml"), 2, "not found")


def test_unknown_chaos_profile(tmp_path):
    folder = make_task(tmp_path)
    script = tmp_path / "s.yaml"
    script.write_text("- x\n")
    assert_one_line_error(cli("run", str(folder), "--model", f"scripted:{script}", "--chaos", "storm"), 2,
                          "unknown chaos profile")


def test_unwritable_output_folder(tmp_path):
    folder = make_task(tmp_path)
    script = tmp_path / "s.yaml"
    script.write_text("- x\n")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert_one_line_error(cli("run", str(folder), "--model", f"scripted:{script}", "--out", str(blocker / "runs")),
                          2, "not writable")


@pytest.mark.parametrize("command", ["verify", "show", "resume"])
def test_missing_run_directory(tmp_path, command):
    res = cli(command, str(tmp_path / "nope"))
    assert res.returncode == 2 and "Traceback" not in res.stderr


@requires_bwrap
def test_tampered_journal_exits_1_with_first_bad_seq(tmp_path):
    folder = make_task(tmp_path)
    script = tmp_path / "s.yaml"
    script.write_text("".join(f"- '{{\"thought\": \"\", \"q_next\": \"\", \"op\": {{\"name\": \"SYS_EXEC\", "
                              f"\"cmd\": \"echo {i}\"}}}}'\n" for i in range(6)))
    assert cli("run", str(folder), "--model", f"scripted:{script}", "--out", str(tmp_path), "--run-id", "r",
               "--ticks", "6").returncode == 0
    assert cli("verify", str(tmp_path / "r")).returncode == 0
    journal = tmp_path / "r" / ".journal.log"
    lines = journal.read_bytes().split(b"\n")
    lines[4] = lines[4].replace(b'"tick":', b'"tick": ', 1)
    journal.write_bytes(b"\n".join(lines))
    res = cli("verify", str(tmp_path / "r"))
    assert res.returncode == 1 and "seq 4" in res.stderr


@requires_bwrap
def test_show_prints_a_timeline(tmp_path):
    folder = make_task(tmp_path)
    script = tmp_path / "s.yaml"
    script.write_text("- not json\n- '{\"thought\": \"\", \"q_next\": \"\", \"op\": {\"name\": \"SYS_READ\", "
                      "\"path\": \"nope\"}}'\n")
    cli("run", str(folder), "--model", f"scripted:{script}", "--out", str(tmp_path), "--run-id", "r", "--ticks", "2")
    res = cli("show", str(tmp_path / "r"))
    assert res.returncode == 0
    assert "SCHEMA_VIOLATION" in res.stdout and "PAGE_FAULT" in res.stdout and "max_ticks" in res.stdout


def test_isa_schema_prints_json():
    res = cli("isa", "schema")
    assert res.returncode == 0 and '"SYS_HALT"' in res.stdout


def test_every_command_help_has_an_example():
    for args in (["run"], ["resume"], ["verify"], ["show"], ["tasks", "list"], ["isa", "schema"], ["sweep"],
                 ["extract"], ["replay"], ["profile"], ["serve"], ["tasks", "import"], ["tasks", "validate"],
                 ["dataset", "build"], ["fork"], ["train"], ["matrix"], ["matrix", "freeze"]):
        res = cli(*args, "--help")
        assert res.returncode == 0 and "Example:" in res.stdout, args


def test_serve_refuses_a_port_in_use():
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert_one_line_error(cli("serve", "--model", "local:smollm2", "--port", str(port)), 2, "already in use")


def test_api_spec_without_a_key(tmp_path, monkeypatch):
    folder = make_task(tmp_path)
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("OPENAI_", "GEMINI_", "KIMI_",
                                                                                  "MOONSHOT_"))}
    res = subprocess.run([sys.executable, "-m", "bloodwork.cli", "run", str(folder), "--model", "gemini:gemini-2.0"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert_one_line_error(res, 2, "GEMINI_API_KEY")


def test_adapter_path_that_is_not_an_adapter(tmp_path):
    folder = make_task(tmp_path)
    assert_one_line_error(cli("run", str(folder), "--model", f"local:smollm2+lora={tmp_path}"), 2, "adapter")


@requires_bwrap
def test_a_kernel_crash_exits_3_and_leaves_a_readable_journal(tmp_path):
    folder = make_task(tmp_path)
    script = tmp_path / "boom.py"
    script.write_text("import json\n\ndef policy(call, messages):\n    if call.tick == 2:\n"
                      "        raise RuntimeError('bug in the policy')\n"
                      "    return json.dumps({'thought': '', 'q_next': '', 'op': {'name': 'SYS_EXEC', "
                      "'cmd': 'echo %d' % call.tick}})\n")
    res = cli("run", str(folder), "--model", f"scripted:{script}", "--out", str(tmp_path), "--run-id", "c")
    assert res.returncode == 3 and "Traceback" not in res.stderr and "crash" in res.stderr
    run = tmp_path / "c"
    assert "bug in the policy" in (run / "crash.txt").read_text()
    assert '"status": "crashed"' in (run / "run.json").read_text()
    assert cli("verify", str(run)).returncode == 0
    kinds = [__import__("json").loads(x)["kind"] for x in (run / ".journal.log").read_text().splitlines()]
    assert kinds.count("tick") == 2 and kinds[-1] == "crash"


READ = "- '{\"thought\": \"\", \"q_next\": \"\", \"op\": {\"name\": \"SYS_READ\", \"path\": \"hello.txt\"}}'\n"


def _env(**extra: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("BLOODWORK_TICKS", "BLOODWORK_PANIC_BUDGET")}
    return env | extra


def _config_of(run_dir: Path) -> dict:
    import json

    return json.loads((run_dir / "run.json").read_text())["config"]


@pytest.mark.parametrize(("env", "flags", "expected"), [
    ({}, [], (4, 9)),                                                      # the file over the defaults
    ({"BLOODWORK_TICKS": "2"}, [], (2, 9)),                                # the environment over the file
    ({"BLOODWORK_TICKS": "2"}, ["--ticks", "3", "--panic-budget", "5"], (3, 5)),  # flags over both
])
def test_run_merges_file_environment_and_flags(tmp_path, env, flags, expected):
    folder = make_task(tmp_path)
    script = tmp_path / "s.yaml"
    script.write_text(READ * 5)
    config = tmp_path / "kernel.yaml"
    config.write_text("sandbox: none\nmax_ticks: 4\npanic_budget: 9\n")
    res = subprocess.run([sys.executable, "-m", "bloodwork.cli", "run", str(folder), "--model", f"scripted:{script}",
                          "--out", str(tmp_path), "--run-id", "r", "--config", str(config), *flags],
                         capture_output=True, text=True, env=_env(**env), timeout=120)
    assert res.returncode == 0, res.stderr
    cfg = _config_of(tmp_path / "r")
    assert (cfg["max_ticks"], cfg["panic_budget"]) == expected
    assert f"after {expected[0]} ticks" in res.stdout


def test_sweep_merges_file_environment_and_flags(tmp_path):
    import json

    folder = make_task(tmp_path)
    script = tmp_path / "s.yaml"
    script.write_text(READ * 5)
    config = tmp_path / "kernel.yaml"
    config.write_text("sandbox: none\nmax_ticks: 2\npanic_budget: 9\n")
    for out, flags, expected in ((tmp_path / "a", [], (2, 5)), (tmp_path / "b", ["--ticks", "1"], (1, 5))):
        res = subprocess.run([sys.executable, "-m", "bloodwork.cli", "sweep", "--tasks", str(folder), "--models",
                              f"scripted:{script}", "--chaos", "off", "--workers", "1", "--out", str(out),
                              "--config", str(config), *flags], capture_output=True, text=True,
                             env=_env(BLOODWORK_PANIC_BUDGET="5"), timeout=120)
        assert res.returncode == 0, res.stderr
        spec = json.loads((out / "sweep.json").read_text())
        assert (spec["ticks"], spec["panic_budget"]) == expected
        (cell,) = (out / "runs").iterdir()
        assert (_config_of(cell)["max_ticks"], _config_of(cell)["panic_budget"]) == expected


def test_a_negative_probe_interval_is_refused(tmp_path):
    folder = make_task(tmp_path)
    assert_one_line_error(cli("run", str(folder), "--model", "scripted:x.yaml", "--probe-every", "-1"), 2,
                          "probe_every: Input should be greater than or equal to 0")


def test_a_missing_bwrap_is_one_line_and_leaves_no_directory(tmp_path):
    folder = make_task(tmp_path)
    script = tmp_path / "s.yaml"
    script.write_text(READ)
    config = tmp_path / "kernel.yaml"
    config.write_text("sandbox: bwrap\n")
    res = subprocess.run([sys.executable, "-m", "bloodwork.cli", "run", str(folder), "--model", f"scripted:{script}",
                          "--out", str(tmp_path / "runs"), "--config", str(config)], capture_output=True, text=True,
                         env=_env(PATH=str(tmp_path / "no-bwrap-here")), timeout=120)
    assert_one_line_error(res, 2, "bwrap")
    assert list((tmp_path / "runs").iterdir()) == []


def test_a_run_id_that_leaves_the_output_folder_is_refused(tmp_path):
    folder = make_task(tmp_path)
    script = tmp_path / "s.yaml"
    script.write_text(READ)
    out = tmp_path / "a" / "b"
    assert_one_line_error(cli("run", str(folder), "--model", f"scripted:{script}", "--out", str(out), "--run-id",
                              "../../x"), 2, "run id '../../x' contains '/'")
    assert not (tmp_path / "x").exists() and list(out.iterdir()) == []


def test_show_refuses_a_negative_last(tmp_path):
    assert_one_line_error(cli("show", str(tmp_path), "--last", "-3"), 2, "--last must be 0")


@pytest.mark.parametrize(("rate", "needle"), [
    ("exec_timeout=2", "chaos rate for exec_timeout must be within 0..1, got 2.0"),
    ("bogus=0.1", "unknown chaos kind 'bogus'"),
])
def test_a_bad_rate_says_which_and_why(tmp_path, rate, needle):
    folder = make_task(tmp_path)
    assert_one_line_error(cli("run", str(folder), "--model", "scripted:x.yaml", "--rate", rate), 2, needle)


def _edge_app() -> typer.Typer:
    """Two commands behind the CLI's real edge: one the user got wrong, one with a bug (an OSError: the
    user did not cause it, so it is not theirs)."""
    demo = typer.Typer(cls=Boundary)

    @demo.command()
    def mistake() -> None:
        raise ChaosConfigError("unknown chaos profile 'storm'")

    @demo.command()
    def bug() -> None:
        raise PermissionError(13, "Permission denied", "/internal/cache")

    return demo


def test_the_edge_renders_a_user_mistake_as_one_line_and_exit_2(tmp_path, monkeypatch):
    monkeypatch.setenv("BLOODWORK_CRASH_DIR", str(tmp_path))
    res = CliRunner().invoke(_edge_app(), ["mistake"])
    assert res.exit_code == 2 and res.stderr.strip() == "error: unknown chaos profile 'storm'"
    usage = CliRunner().invoke(_edge_app(), ["no-such-command"])  # typer's own answer to a usage mistake stays
    assert usage.exit_code == 2 and "No such command" in usage.stderr and "bug" not in usage.stderr
    assert not list(tmp_path.iterdir())


def test_the_edge_turns_a_bug_into_exit_3_and_a_crash_report(tmp_path, monkeypatch):
    monkeypatch.setenv("BLOODWORK_CRASH_DIR", str(tmp_path))
    res = CliRunner().invoke(_edge_app(), ["bug"])
    assert res.exit_code == 3 and "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "PermissionError" in lines[0]
    [report] = tmp_path.iterdir()
    assert str(report) in res.stderr.replace("\n", "")
    text = report.read_text()
    assert "Traceback" in text and "raise PermissionError" in text and "command: bloodwork" in text


@pytest.mark.parametrize(("args", "needle"), [
    (["run", "long-haul/ledger", "--rate", "exec_fail"], "--rate: expected KIND=RATE, got 'exec_fail'"),
    (["run", "long-haul/ledger", "--rate", "exec_fail=often"], "--rate: 'exec_fail=often': 'often' is not a number"),
    (["run", "long-haul/ledger", "--rate", "meteor=0.5"], "unknown chaos kind 'meteor'"),
    (["sweep", "--tasks", "long-haul/ledger", "--chaos", "exec_fail=often"],
     "chaos entry 'exec_fail=often': 'exec_fail=often': 'often' is not a number"),
])
def test_kind_rate_mistakes_are_one_line(tmp_path, args, needle):
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "Traceback" not in res.stderr, res.output
    assert len(res.stderr.strip().splitlines()) == 1 and needle in res.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("run.json"))


@pytest.mark.parametrize("command", [["extract", "."], ["sweep", "--tasks", "long-haul/ledger"],
                                     ["matrix", "freeze", "."], ["dataset", "build", "."]])
def test_an_output_path_through_a_file_is_the_users_mistake(tmp_path, command):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    res = CliRunner().invoke(app, [*command, "--out", str(blocker / "out")])
    assert res.exit_code == 2 and "not writable" in res.stderr and "bug" not in res.stderr, res.output
    assert blocker.read_text() == ""
