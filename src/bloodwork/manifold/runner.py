"""Commands in the workspace: one long-lived sandbox per run, a timeout, limits, a whole-group kill."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from bloodwork.manifold.toolchain import Toolchain

SERVER_SOURCE = (Path(__file__).with_name("sandbox_server.py")).read_text()
_EMPTY_SHA = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
SandboxKind = Literal["auto", "bwrap", "none"]


class SandboxError(Exception):
    """The sandbox could not be started or died."""


class Limits(BaseModel):
    cpu_s: int = 120
    mem_bytes: int = 2 * 1024**3
    fsize_bytes: int = 256 * 1024**2
    nproc: int = 256


@dataclass
class ExecResult:
    exit_code: int
    output: bytes
    size: int
    sha256: str
    timed_out: bool
    duration_s: float
    spawn_error: str | None = None

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", errors="replace")


class PidsCgroup:
    """A pids cgroup capping the sandbox's process count.

    RLIMIT_NPROC alone is no limit for root (the kernel exempts uid 0), so where the pids controller
    is writable (root, cgroup v1 or v2) the whole sandbox goes into a cgroup of its own.

    Its name is random, not derived from the object: a group that outlives its runner (its owner was
    killed, or its last process took too long to die) must never be taken for the next runner's, which
    would then find the name in use and silently run without a process limit.
    """

    ROOTS = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))
    REMOVE_WAIT_S = 5.0

    def __init__(self, limit: int) -> None:
        self.path: Path | None = None
        for root in self.ROOTS:
            if not (root / "cgroup.procs").exists() or not os.access(root, os.W_OK):
                continue
            path = root / f"bloodwork-{os.getpid()}-{secrets.token_hex(6)}"
            try:
                path.mkdir()
            except OSError:
                continue
            try:
                (path / "pids.max").write_text(str(limit))
            except OSError:  # this hierarchy has no pids controller: the group is ours to remove
                with contextlib.suppress(OSError):
                    path.rmdir()
                continue
            self.path = path
            return

    def enter(self) -> None:
        """Runs in the child before exec: everything the sandbox spawns is counted."""
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def remove(self) -> None:
        """Kill whatever is left in the group, then remove it (it must be empty to go)."""
        if self.path is None:
            return
        # Killed processes leave the group only once they have exited, which takes a while on a loaded machine.
        deadline = time.monotonic() + self.REMOVE_WAIT_S
        while True:
            try:
                pids = (self.path / "cgroup.procs").read_text().split()
                for pid in pids:
                    with contextlib.suppress(OSError):
                        os.kill(int(pid), 9)
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.02)


def bwrap_available() -> bool:
    return shutil.which("bwrap") is not None


def _bwrap_argv(workspace: Path, toolchain: Toolchain | None = None) -> list[str]:
    """bwrap as root: drop every capability, unshare every namespace, read-only system, writable /ws."""
    variables = toolchain.variables("/ws") if toolchain else {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    argv = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--clearenv"]
    for name, value in variables.items():
        argv += ["--setenv", name, value]
    argv += ["--setenv", "HOME", "/ws", "--setenv", "LANG", "C.UTF-8",
            "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
            "--bind", str(workspace), "/ws", "--ro-bind", "/usr", "/usr",
            "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
            "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/sbin", "/sbin",
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for etc in ("/etc/alternatives", "/etc/ld.so.cache", "/etc/localtime"):
        if os.path.exists(etc):
            argv += ["--ro-bind", etc, etc]
    # The interpreter that runs the server (and the agent's `python3`, unless a toolchain brings its own)
    # lives outside /usr here.
    for prefix in sorted({sys.prefix, sys.base_prefix, os.path.realpath(sys.base_prefix),
                          *(toolchain.prefixes if toolchain else ())}):
        if not prefix.startswith("/usr"):
            argv += ["--ro-bind", prefix, prefix]
    argv += ["--chdir", "/ws"]
    return argv


class CommandRunner:
    """Runs shell commands in the workspace through the in-sandbox server (restarted if it dies)."""

    def __init__(self, workspace: Path, *, sandbox: SandboxKind = "auto", limits: Limits | None = None,
                 toolchain: Toolchain | None = None) -> None:
        self.workspace = workspace.resolve()
        self.limits = limits or Limits()
        self.toolchain = toolchain
        if sandbox == "auto":
            sandbox = "bwrap" if bwrap_available() else "none"
        if sandbox == "bwrap" and not bwrap_available():
            raise SandboxError("sandbox 'bwrap' requested but bwrap is not installed")
        self.kind: Literal["bwrap", "none"] = sandbox
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self.restarts = 0
        self._cgroup = PidsCgroup(self.limits.nproc)

    def describe(self) -> dict[str, object]:
        """What the manifest records about isolation."""
        isolated = self.kind == "bwrap"
        return {"kind": self.kind, "network": "none (own netns, loopback only)" if isolated else "host",
                "system": "read-only" if isolated else "host", "writable": "workspace only" if isolated
                else "anything the user can write", "limits": self.limits.model_dump(),
                "nproc_enforced_by": "pids cgroup" if self._cgroup.path else
                ("RLIMIT_NPROC" if os.geteuid() != 0 else "nothing (root is exempt from RLIMIT_NPROC)"),
                "process_group_kill": True, "restarts": self.restarts,
                "toolchain": self.toolchain.model_dump(mode="json") if self.toolchain else None}

    def _start(self) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-I", "-c", SERVER_SOURCE]
        env = None
        if self.kind == "bwrap":
            argv = _bwrap_argv(self.workspace, self.toolchain) + argv
        elif self.toolchain is not None:  # no isolation: the commands inherit the server's environment
            env = {**os.environ, **self.toolchain.variables(str(self.workspace))}
        try:
            return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                    stderr=subprocess.DEVNULL, cwd=self.workspace, start_new_session=True,
                                    preexec_fn=self._cgroup.enter)
        except OSError as err:
            raise SandboxError(f"cannot start the sandbox: {err}") from err

    def run(self, cmd: str, timeout_s: float) -> ExecResult:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                if self._proc is not None:
                    self.restarts += 1
                self._proc = self._start()
            try:
                return self._ask(self._proc, cmd, timeout_s)
            except (BrokenPipeError, SandboxError) as err:
                # The command took the server down with it (e.g. `kill -9 $PPID`): that is the
                # command's result, not a kernel failure. The next command gets a fresh sandbox.
                self._kill()
                return ExecResult(exit_code=-9, output=b"", size=0, sha256=_EMPTY_SHA, timed_out=False,
                                  duration_s=0.0, spawn_error=f"sandbox died during the command: {err}")

    def _ask(self, proc: subprocess.Popen[bytes], cmd: str, timeout_s: float) -> ExecResult:
        assert proc.stdin and proc.stdout
        cwd = "/ws" if self.kind == "bwrap" else str(self.workspace)
        req = {"cmd": cmd, "timeout_s": timeout_s, "cwd": cwd,
               "cpu_s": max(1, int(min(self.limits.cpu_s, timeout_s + 5))), "mem_bytes": self.limits.mem_bytes,
               "fsize_bytes": self.limits.fsize_bytes, "nproc": self.limits.nproc}
        proc.stdin.write(json.dumps(req).encode() + b"\n")
        proc.stdin.flush()
        header_line = proc.stdout.readline()
        if not header_line:
            raise SandboxError("the sandbox server died")
        header = json.loads(header_line)
        body = proc.stdout.read(header["kept"]) if header["kept"] else b""
        return ExecResult(exit_code=header["exit"], output=body, size=header["size"], sha256=header["sha256"],
                          timed_out=header["timed_out"], duration_s=header["duration_s"],
                          spawn_error=header.get("spawn_error"))

    def _kill(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, 9)
            self._proc.wait()
            self._proc = None

    def close(self) -> None:
        with self._lock:
            if self._proc is not None and self._proc.stdin:
                with contextlib.suppress(BrokenPipeError):
                    self._proc.stdin.close()
            self._kill()
            self._cgroup.remove()
