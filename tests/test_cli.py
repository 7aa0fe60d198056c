"""The CLI on bad input: one clear line, the documented exit code, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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
