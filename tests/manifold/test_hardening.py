"""The sandbox as a hostile agent would try it: the host's environment, setuid plants, ptrace, a stopped or
lying command server, FIFOs, /tmp and workspace floods, kills. Every test drives the real runner (real
bwrap, real processes and signals) and checks what a broken implementation would get wrong."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from bloodwork.manifold.runner import REPLY_GRACE_S, CommandInterrupted, CommandRunner, Limits, PidsCgroup
from bloodwork.manifold.toolchain import Toolchain
from bloodwork.manifold.workspace import IOFault, PageFault, Workspace
from tests.conftest import requires_bwrap

FAKE_KEY = "sk-fake-host-secret-0123456789abcdef"
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a uid to drop to; opening another uid's fds)")


def _runner(tmp_path: Path, sandbox: str = "bwrap", **limits: int) -> CommandRunner:
    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    return CommandRunner(ws, sandbox=sandbox, limits=Limits(**limits))  # type: ignore[arg-type]


def _setid_files(root: Path) -> list[str]:
    return [str(p) for p in [root, *root.rglob("*")]
            if not p.is_symlink() and p.lstat().st_mode & (stat.S_ISUID | stat.S_ISGID)]


@pytest.mark.bwrap
@requires_bwrap
def test_no_host_variable_reaches_any_process_in_the_sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    monkeypatch.setenv("BLOODWORK_TEST_MARKER", "host-only")
    runner = _runner(tmp_path)
    try:
        inside = runner.run("sleep 5 & cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'; env", 10)
        assert "PATH=" in inside.text and FAKE_KEY not in inside.text and "BLOODWORK_TEST_MARKER" not in inside.text
        # From the host, as root: every process of the sandbox, bwrap itself and its pid 1 included.
        assert runner._proc is not None
        top = psutil.Process(runner._proc.pid)
        procs = [top, *top.children(recursive=True)]
        assert len(procs) >= 4  # bwrap, its pid 1, the server, the background sleep
        for proc in procs:
            env = proc.environ()
            assert "OPENAI_API_KEY" not in env and "BLOODWORK_TEST_MARKER" not in env, (proc.cmdline()[:3], env)
    finally:
        runner.close()


def test_commands_without_bwrap_get_no_host_variable_either(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    runner = _runner(tmp_path, sandbox="none")
    try:
        out = runner.run("env", 10).text
        assert "PATH=" in out and FAKE_KEY not in out
    finally:
        runner.close()


@pytest.mark.bwrap
@requires_bwrap
@root_only
def test_commands_run_unprivileged_and_cannot_plant_setuid_files(tmp_path: Path):
    runner = _runner(tmp_path)
    ws = runner.workspace
    assert ws is not None
    try:
        res = runner.run("id -u; cat /proc/self/status | grep -E '^(CapEff|NoNewPrivs)'; "
                         "cp /usr/bin/env suid_env; chmod 6755 suid_env; install -m 4755 /usr/bin/env inst; "
                         "cp -p /usr/bin/su su_copy; mkdir -m 2755 sgid_dir; "
                         "python3 -c \"import os; os.open('made', os.O_CREAT | os.O_WRONLY, 0o4755)\"; "
                         "ls -ln", 20)
        lines = res.text.splitlines()
        assert lines[0] == "65534" and "CapEff:\t0000000000000000" in res.text and "NoNewPrivs:\t1" in res.text
        assert "Operation not permitted" in res.text
        assert _setid_files(ws) == []
        assert all(p.lstat().st_uid != 0 for p in ws.rglob("*")), "the sandbox made a root-owned file"
    finally:
        runner.close()
    assert _setid_files(ws) == []
    assert ws.stat().st_uid == ws.parent.stat().st_uid, "the workspace is given back to its folder's owner"


@root_only
def test_without_bwrap_a_setuid_file_does_not_survive_the_run(tmp_path: Path):
    runner = _runner(tmp_path, sandbox="none")
    ws = runner.workspace
    assert ws is not None
    try:
        runner.run("cp /usr/bin/env suid_env && chmod 6755 suid_env && mkdir -m 2755 d && cp suid_env d/x "
                   "&& chmod 4755 d/x", 10)
        assert len(_setid_files(ws)) == 3  # nothing stops root without a sandbox while it runs...
    finally:
        runner.close()
    assert _setid_files(ws) == []  # ...but the bits are gone when it closes


@pytest.mark.bwrap
@requires_bwrap
def test_ptrace_is_refused_and_pid_1_cannot_be_stopped(tmp_path: Path):
    runner = _runner(tmp_path)
    try:
        res = runner.run("strace -f true 2>&1 | tail -1; "
                         "python3 -c \"import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); "
                         "print('attach', libc.ptrace(16, os.getppid(), 0, 0), ctypes.get_errno())\"; "
                         "kill -STOP 1; echo stop1=$?", 10)
        assert "Operation not permitted" in res.text
        assert "attach -1 1" in res.text  # EPERM
        assert "stop1=0" not in res.text
        assert runner.run("echo alive", 10).text == "alive\n"
    finally:
        runner.close()


@pytest.mark.bwrap
@requires_bwrap
def test_a_stopped_server_is_killed_and_replaced_within_the_timeout(tmp_path: Path):
    runner = _runner(tmp_path)
    try:
        start = time.monotonic()
        res = runner.run("kill -STOP $PPID; sleep 30", 2)
        took = time.monotonic() - start
        assert res.timed_out and res.fault is not None and "did not answer" in res.fault
        assert took < 2 + REPLY_GRACE_S + 1.5, took
        assert runner.run("echo alive", 10).text == "alive\n" and runner.restarts == 1
    finally:
        runner.close()


@pytest.mark.bwrap
@requires_bwrap
def test_the_server_reply_pipe_cannot_be_opened_from_a_command(tmp_path: Path):
    runner = _runner(tmp_path)
    try:
        res = runner.run("printf 'forged 0\\n' > /proc/$PPID/fd/1; echo rc=$?; cat /proc/$PPID/environ", 10)
        assert "Permission denied" in res.text and "rc=0" not in res.text and res.fault is None
        assert runner.run("echo next", 10).text == "next\n" and runner.restarts == 0
    finally:
        runner.close()


def _forged_header(seq: int, kept: int) -> str:
    fake_sha = hashlib.sha256(b"hello").hexdigest()
    head = json.dumps({"collected": -1, "duration_s": 0.1, "exit": 0, "kept": kept, "over_quota": None, "seq": seq,
                       "sha256": fake_sha, "size": 5, "timed_out": False}, sort_keys=True)
    return head + " " + "0" * 64


@root_only
@pytest.mark.parametrize(("payload", "why"), [
    ("FORGED_VALID:5", "MAC does not match"),          # well-formed, right sequence number, no key
    ("FORGED_VALID:8388608", "did not answer"),          # a huge length: the host waits for its deadline
    ("FORGED_VALID:99999999", "malformed reply header"),  # over the largest body there can be
    ("GARBAGE", "malformed reply header"),
])
def test_a_lying_server_is_caught_and_replaced(tmp_path: Path, payload: str, why: str):
    """Without bwrap, root can write to the server's stdout (no sandbox stops it); the host must not believe it."""
    runner = _runner(tmp_path, sandbox="none")
    try:
        assert runner.run("true", 10).exit_code == 0
        if payload.startswith("FORGED_VALID"):
            line = _forged_header(runner._seq + 1, int(payload.split(":")[1]))
            write = f"printf '%s\\nhello' '{line}'"
        else:
            write = "yes 'garbage on the pipe' | head -c 5000"
        start = time.monotonic()
        res = runner.run(f"{write} > /proc/$PPID/fd/1; sleep 0.3; echo real", 2)
        assert time.monotonic() - start < 2 + REPLY_GRACE_S + 1.5
        assert res.fault is not None and why in res.fault, res.fault
        assert "hello" not in res.text and res.exit_code == -1
        assert runner.run("echo next", 10).text == "next\n" and runner.restarts == 1
    finally:
        runner.close()


@pytest.mark.bwrap
@requires_bwrap
def test_an_interrupt_kills_a_waiting_command_at_once(tmp_path: Path):
    runner = _runner(tmp_path)
    try:
        runner.run("true", 10)
        threading.Timer(0.5, runner.interrupt).start()
        start = time.monotonic()
        with pytest.raises(CommandInterrupted):
            runner.run("sleep 60", 100)
        assert time.monotonic() - start < 3  # 0.5 s, then a kill: far from the 60 s sleep and 100 s timeout
        with pytest.raises(CommandInterrupted):
            runner.run("echo never", 10)
    finally:
        runner.close()


@pytest.mark.bwrap
@requires_bwrap
def test_tmp_is_a_capped_tmpfs(tmp_path: Path):
    runner = _runner(tmp_path, tmp_bytes=4_000_000)
    try:
        res = runner.run("head -c 10000000 /dev/zero > /tmp/big; echo rc=$?; du -sb /tmp | cut -f1", 10)
        assert "No space left on device" in res.text and "rc=1" in res.text
        assert int(res.text.split()[-1]) <= 4_100_000
        shm = runner.run("head -c 80000000 /dev/zero > /dev/shm/big; echo rc=$?", 10)
        assert "No space left on device" in shm.text and "rc=1" in shm.text
    finally:
        runner.close()


@pytest.mark.bwrap
@requires_bwrap
def test_a_command_that_fills_the_workspace_past_its_quota_is_killed(tmp_path: Path):
    runner = _runner(tmp_path, workspace_bytes=5_000_000)
    ws = runner.workspace
    assert ws is not None
    try:
        res = runner.run("for i in $(seq 60); do head -c 1000000 /dev/zero > f$i; sleep 0.05; done; echo done", 30)
        assert res.fault is not None and "quota" in res.fault and not res.timed_out
        assert "done" not in res.text
        used = sum(p.stat().st_size for p in ws.iterdir())
        assert 4_000_000 < used < 12_000_000, used  # stopped within a few writes of the quota
        # The clean-up starts over the quota and is looked at before it has deleted anything: not killed.
        cleanup = runner.run("sleep 0.5; rm f*; echo cleaned", 10)
        assert cleanup.fault is None and cleanup.text == "cleaned\n"
        assert runner.run("head -c 1000 /dev/zero > small; echo ok", 10).fault is None
    finally:
        runner.close()


def test_file_ops_refuse_fifos_sockets_and_devices_without_hanging(tmp_path: Path):
    import socket

    ws = Workspace(tmp_path)
    os.mkfifo(tmp_path / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    (tmp_path / "dir").mkdir()
    start = time.monotonic()
    for name in ("pipe", "sock"):
        with pytest.raises(IOFault, match="not a regular file"):
            ws.write_text(name, "x")
        with pytest.raises(PageFault, match="not a regular file"):
            ws.read_text(name)
    with pytest.raises(IOFault):
        ws.write_text("dir", "x")
    assert time.monotonic() - start < 1
    assert stat.S_ISFIFO((tmp_path / "pipe").lstat().st_mode)
    sock.close()


@pytest.mark.bwrap
@requires_bwrap
def test_kill_9_of_the_owner_leaves_no_pids_cgroup_behind(tmp_path: Path):
    import subprocess
    import sys

    script = ("import sys, time; from pathlib import Path; from bloodwork.manifold.runner import CommandRunner; "
              "r = CommandRunner(Path(sys.argv[1]), sandbox='bwrap'); r.run('true', 10); "
              "print(r._cgroup.path, flush=True); time.sleep(60)")
    ws = tmp_path / "ws"
    ws.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", script, str(ws)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    proc.kill()
    proc.wait()
    proc.stdout.close()
    if line == "None":
        pytest.skip("no writable pids cgroup here")
    left = Path(line)
    assert left.is_dir()  # the killed process could not clean up...
    group = PidsCgroup(8)  # ...the next sandbox does
    try:
        assert not left.exists()
    finally:
        group.remove()


@pytest.mark.bwrap
@requires_bwrap
@root_only
def test_a_toolchain_in_a_private_folder_is_usable_by_the_unprivileged_sandbox_user(tmp_path: Path,
                                                                                      monkeypatch: pytest.MonkeyPatch):
    # Where per-instance environments live (~/.cache under a 0700 /root): only the mounts can let uid 65534 in.
    private = tmp_path / "home"
    private.mkdir(mode=0o700)
    venv = private / ".cache" / "envs" / "x" / "venv"
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    subprocess.run([str(base), "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    tools = Toolchain(bin_dir=str(venv / "bin"), prefixes=(str(venv), sys.base_prefix),
                      env={"VIRTUAL_ENV": str(venv)}, pythonpath=("src",))
    ws = tmp_path / "ws"
    (ws / "src").mkdir(parents=True)
    (ws / "src" / "mod.py").write_text("WHERE = __file__\n")
    runner = CommandRunner(ws, sandbox="bwrap", toolchain=tools)
    try:
        res = runner.run("id -u; command -v python3; python3 -c 'import sys, mod; print(sys.prefix); "
                         "print(mod.WHERE)'; echo \"$VIRTUAL_ENV|$PYTHONPATH\"; env", 20)
        lines = res.text.splitlines()
        assert res.exit_code == 0, res.text
        assert lines[:5] == ["65534", f"{venv}/bin/python3", str(venv), "/ws/src/mod.py", f"{venv}|/ws/src"]
        assert FAKE_KEY not in res.text, "the toolchain's variables are added to an empty environment, nothing else"
        assert runner.describe()["toolchain"]["bin_dir"] == str(venv / "bin")
        assert runner.run(f"touch {venv}/x", 10).exit_code != 0, "the environment is mounted read-only"
    finally:
        runner.close()
