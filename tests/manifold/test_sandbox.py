"""Escape attempts through file ops and through commands: each is refused or fails inside the sandbox."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from bloodwork.manifold.runner import CommandRunner, Limits
from bloodwork.manifold.workspace import IOFault, PageFault, PathEscape, Workspace
from tests.conftest import requires_bwrap


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    return secret


@pytest.fixture
def ws(tmp_path: Path, outside: Path) -> Workspace:
    root = tmp_path / "ws"
    (root / "sub").mkdir(parents=True)
    (root / "ok.txt").write_text("fine")
    (root / "link-out").symlink_to(outside)
    (root / "dir-out").symlink_to(outside.parent)
    (root / "sub" / "up").symlink_to("..")
    (root / "abs-etc").symlink_to("/etc")
    return Workspace(root)


ESCAPING_READS = ["../secret.txt", "/etc/passwd", "/proc/self/root/etc/passwd", "sub/../../secret.txt", "link-out",
                  "dir-out/secret.txt", "abs-etc/passwd", "sub/up/../secret.txt", "~/.bashrc", "file:///etc/passwd",
                  "ok.txt\x00../../secret.txt", "./../ws/../secret.txt"]


@pytest.mark.parametrize("path", ESCAPING_READS)
def test_reads_that_leave_the_workspace_are_refused(ws, path):
    with pytest.raises((PathEscape, PageFault)) as info:
        ws.read_text(path)
    assert "top secret" not in str(info.value)


@pytest.mark.parametrize("path", ["../evil.txt", "/tmp/evil.txt", "link-out", "dir-out/evil.txt", "abs-etc/evil"])
def test_writes_that_leave_the_workspace_are_refused(ws, outside, path):
    with pytest.raises((PathEscape, IOFault)):
        ws.write_text(path, "pwned")
    assert outside.read_text() == "top secret"
    assert not (outside.parent / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()


def test_inside_paths_still_work(ws):
    assert ws.write_text("new/dir/file.txt", "x") is True
    assert ws.write_text("new/dir/file.txt", "x") is False
    assert ws.read_text("sub/../new/dir/file.txt") == "x"


def test_fifo_is_not_read(ws):
    os.mkfifo(ws.root / "pipe")
    with pytest.raises(PageFault):
        ws.read_text("pipe")


@pytest.fixture
def sandbox(tmp_path: Path):
    ws_dir = tmp_path / "box"
    ws_dir.mkdir()
    runner = CommandRunner(ws_dir, sandbox="bwrap", limits=Limits(nproc=64, fsize_bytes=1_000_000,
                                                                    mem_bytes=512 * 1024**2))
    yield runner
    runner.close()


@requires_bwrap
@pytest.mark.parametrize("cmd", [
    "cat {secret}",
    "echo pwned > {secret}",
    "echo pwned > /tmp/../{secret}",
    "ln -s {secret} l && cat l",
    "cat /proc/1/root{secret}",
    "touch /usr/pwned",
    "echo pwned > /etc/pwned-host-file && cat /proc/1/root/etc/hostname",
])
def test_commands_cannot_touch_host_files(sandbox, outside, cmd):
    res = sandbox.run(cmd.format(secret=outside), 10)
    assert "top secret" not in res.text
    assert outside.read_text() == "top secret"
    assert not Path("/usr/pwned").exists() and not Path("/etc/pwned-host-file").exists()


@requires_bwrap
def test_commands_have_no_network(sandbox):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    accepted: list[object] = []
    thread = threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True)
    thread.start()
    code = (f"import socket; s=socket.socket(); s.settimeout(2); s.connect(('127.0.0.1', {port})); print('CONNECTED')")
    res = sandbox.run(f'python3 -c "{code}"', 10)
    assert "CONNECTED" not in res.text and res.exit_code != 0
    res = sandbox.run("python3 -c \"import socket; socket.create_connection(('1.1.1.1', 80), timeout=2)\"", 10)
    assert res.exit_code != 0 and "unreachable" in res.text.lower()
    time.sleep(0.2)
    assert not accepted
    server.close()


@requires_bwrap
def test_workspace_is_writable_and_host_is_not_visible(sandbox):
    res = sandbox.run(f"echo hi > made.txt && cat made.txt && ls {sandbox.workspace.parent} 2>&1", 10)
    assert "hi" in res.text and (sandbox.workspace / "made.txt").read_text() == "hi\n"
    assert "No such file" in res.text


@requires_bwrap
def test_timeout_kills_the_whole_process_group(sandbox):
    start = time.monotonic()
    res = sandbox.run("sleep 100 & sleep 100 & echo started; wait", 1)
    assert res.timed_out and time.monotonic() - start < 5
    assert "started" in res.text
    after = sandbox.run("ps -e -o comm= | grep -c '^sleep' || true", 10)
    assert after.text.strip() == "0"


@requires_bwrap
def test_resource_limits_hold(sandbox):
    assert "File size limit exceeded" in sandbox.run("head -c 5000000 /dev/zero > big; echo done", 10).text \
        or (sandbox.workspace / "big").stat().st_size <= 1_000_000
    assert sandbox.run("python3 -c 'bytearray(1024**3)'", 10).exit_code != 0
    forks = sandbox.run("for i in $(seq 200); do sleep 2 & done 2>&1 | grep -c fork; true", 15)
    assert int(forks.text.strip().splitlines()[-1]) > 0
    assert sandbox.describe()["nproc_enforced_by"].startswith(("pids cgroup", "RLIMIT_NPROC"))


@requires_bwrap
def test_a_command_that_kills_the_server_gets_a_fresh_sandbox(sandbox):
    res = sandbox.run("kill -9 $PPID", 10)
    assert res.exit_code != 0
    assert sandbox.run("echo alive", 10).text == "alive\n"


def test_a_group_left_behind_never_costs_a_later_runner_its_process_limit(tmp_path):
    """A runner's pids cgroup can outlive it (its owner was killed, its last process was slow to die). Later
    runners of the same process, often allocated at the same address, must still get a group of their own."""
    left: list[Path] = []
    try:
        for _ in range(30):
            runner = CommandRunner(tmp_path)  # never closed: its group stays behind
            if runner._cgroup.path is None:
                pytest.skip("no writable pids cgroup here (not root, or no pids controller)")
            assert runner.describe()["nproc_enforced_by"] == "pids cgroup"
            assert runner._cgroup.path not in left
            left.append(runner._cgroup.path)
            del runner
    finally:
        for path in left:
            path.rmdir()
