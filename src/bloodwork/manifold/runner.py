"""Commands in the workspace: one long-lived sandbox per run, a timeout, limits, a whole-group kill.

The host side of the command server (`sandbox_server.py`); the bwrap command line, the pids cgroup and
the workspace's ownership are built in `isolation.py`. What holds, and by what (run as root, with `bwrap`):

- nothing of the host's environment reaches the sandbox: `bwrap` itself starts with an empty one, so no
  process inside (pid 1 included) has a host variable, and the server's PATH/HOME/LANG are set here (with
  a task's `Toolchain`, its PATH and variables; its folders are mounted read-only like the interpreter's);
- commands run as an unprivileged uid (SANDBOX_UID) with no capabilities and no_new_privs, on nosuid and
  nodev mounts; the seccomp filter (`seccomp.py`) refuses ptrace and setuid/setgid modes; the workspace is
  lent to that uid at each start and given back to its folder's owner at close, and cleared of
  setuid/setgid bits both times;
- `/tmp` is a tmpfs of `Limits.tmp_bytes`; the workspace's total size is polled by the server while a
  command runs, and a command that takes it over `Limits.workspace_bytes` is killed;
- every reply is read against a deadline (the command's timeout + REPLY_GRACE_S), its header is bounded
  and validated, its body length-checked, and the whole frame authenticated with a MAC (keyed BLAKE2b:
  ~1 us, where OpenSSL 3's HMAC costs tens) under a secret made for each sandbox (given to the server on
  its stdin, in a process no command can inspect). A late, forged or garbled reply kills the sandbox; the
  command's result says so (`fault`) and the next command gets a fresh sandbox. A stop request
  (`interrupt()`, from SIGTERM/SIGINT) kills a waiting command at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import select
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bloodwork.manifold import sandbox_server, seccomp
from bloodwork.manifold.isolation import SHM_BYTES, PidsCgroup, bwrap_argv, bwrap_available, sanitize_tree
from bloodwork.manifold.toolchain import Toolchain

SERVER_SOURCE = Path(sandbox_server.__file__).read_text()
KEEP_BYTES = sandbox_server.KEEP_BYTES
_EMPTY_SHA = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
# `nobody`: owns nothing on the host, and runs nothing else here. Used only when we are root.
SANDBOX_UID = 65534
REPLY_GRACE_S = 3.0  # the server needs ~0.7 s past a timeout to kill, drain and answer; more under load
MAX_HEADER_BYTES = 4096
_POLL_S = 0.1  # how often a wait looks at the stop flag
SandboxKind = Literal["auto", "bwrap", "none"]


class SandboxError(Exception):
    """The sandbox could not be started or died."""


class CommandInterrupted(Exception):
    """A stop was requested while a command ran or was about to: the command and its sandbox were killed."""


class _Fault(Exception):
    """The server broke the protocol (late, forged, garbled): it is killed and the command reports it."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class Limits(BaseModel):
    cpu_s: int = 120
    mem_bytes: int = 2 * 1024**3
    fsize_bytes: int = 256 * 1024**2
    nproc: int = 256
    tmp_bytes: int = Field(default=256 * 1024**2, gt=0, description="size of the sandbox's /tmp (a tmpfs)")
    workspace_bytes: int = Field(default=1024**3, gt=0, description="total size the workspace may reach")


class _Header(BaseModel):
    """A reply header as the server writes it; anything else is a forged or garbled reply."""

    model_config = ConfigDict(extra="forbid", strict=True)

    seq: int = Field(ge=0)
    exit: int = Field(ge=-128, le=255)
    timed_out: bool
    duration_s: float = Field(ge=0, le=10**6)
    size: int = Field(ge=0, le=2**62)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    kept: int = Field(ge=0, le=KEEP_BYTES)
    over_quota: int | None = Field(default=None, ge=0, le=2**62)
    collected: int = Field(ge=-1, le=KEEP_BYTES + 1)
    spawn_error: str | None = Field(default=None, max_length=1000)


@dataclass
class ExecResult:
    exit_code: int
    output: bytes
    size: int
    sha256: str
    timed_out: bool
    duration_s: float
    spawn_error: str | None = None
    # Why the runner or the server cut the command short (a late, forged or garbled reply; the workspace
    # over its quota). The kernel turns it into a trap: EXEC_TIMEOUT when `timed_out`, else IO_FAULT.
    fault: str | None = None
    # The file named by `run(..., collect=PATH)`, read by the server after the command (None: absent).
    collected: bytes | None = None

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", errors="replace")


class CommandRunner:
    """Runs shell commands in the workspace through the in-sandbox server (restarted if it dies).

    `workspace=None` gives a workspace of its own in memory (a tmpfs of `Limits.workspace_bytes`, bwrap
    only) that vanishes with the sandbox; `mounts` are extra read-only binds (host path, path inside).
    `stop` is the event `interrupt()` sets; runners made for one run can share it. `toolchain`: the
    interpreter the commands get (a task's own environment) instead of bloodwork's.
    """

    def __init__(self, workspace: Path | None, *, sandbox: SandboxKind = "auto", limits: Limits | None = None,
                 mounts: Sequence[tuple[Path, str]] = (), stop: threading.Event | None = None,
                 toolchain: Toolchain | None = None) -> None:
        self.workspace = workspace.resolve() if workspace is not None else None
        self.limits = limits or Limits()
        self.toolchain = toolchain
        if sandbox == "auto":
            sandbox = "bwrap" if bwrap_available() else "none"
        if sandbox == "bwrap" and not bwrap_available():
            raise SandboxError("sandbox 'bwrap' requested but bwrap is not installed")
        if sandbox == "none" and (workspace is None or mounts):
            raise SandboxError("an in-memory workspace and extra mounts need the bwrap sandbox")
        self.kind: Literal["bwrap", "none"] = sandbox
        self.mounts = [(src.resolve(), dest) for src, dest in mounts]
        self.stop = stop if stop is not None else threading.Event()
        # Only root can hand the sandbox another uid; anyone else's sandbox runs as themselves. The workspace
        # is lent to that uid while the sandbox runs, and given back (to its folder's owner) at close.
        self._owner = (SANDBOX_UID, SANDBOX_UID) if self.kind == "bwrap" and os.geteuid() == 0 else None
        # Read at the first start: a runner may be made before its workspace exists (a run checks its sandbox
        # before it creates its directory).
        self._home_owner: tuple[int, int] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._secret = b""
        self._seq = 0
        self._buf = bytearray()
        self._asked_at = 0.0
        self._rpoll = self._wpoll = select.poll()
        self._lock = threading.Lock()
        self._started = False
        self.restarts = 0
        self._cgroup = PidsCgroup(self.limits.nproc)

    @property
    def _inside(self) -> str:
        """The workspace as commands see it."""
        return "/ws" if self.kind == "bwrap" or self.workspace is None else str(self.workspace)

    def describe(self) -> dict[str, object]:
        """What the manifest records about isolation."""
        isolated = self.kind == "bwrap"
        filtered = isolated and seccomp.program() is not None
        lim = self.limits
        return {
            "kind": self.kind, "network": "none (own netns, loopback only)" if isolated else "host",
            "system": "read-only" if isolated else "host",
            "writable": ("workspace and /tmp only" if isolated else "anything the user can write"),
            "environment": ("empty: bwrap starts with no host variable; " if isolated else "")
            + f"only {', '.join(self._variables())} set" + ("" if isolated else " (the host is reachable otherwise)"),
            "user": (f"uid {SANDBOX_UID}, no capabilities, no_new_privs (the server drops from root before "
                     "any command)" if self._owner else "the host user, no capabilities" if isolated else
                     "the host user"),
            "ptrace_and_setid": seccomp.DESCRIPTION if filtered else "not filtered",
            "setuid_files": ("refused by seccomp; nosuid mounts; setuid/setgid bits cleared from the workspace "
                             "at each start and at close" if filtered else
                             "setuid/setgid bits cleared from the workspace at each start and at close"),
            "tmp": f"tmpfs of {lim.tmp_bytes} bytes (/dev/shm: {SHM_BYTES})" if isolated else "host /tmp",
            "workspace_quota": (f"{lim.workspace_bytes} bytes: " + (
                "an in-memory tmpfs of that size" if self.workspace is None else
                "total size polled by the server while a command runs (first after 0.1 s); a command over it "
                "is killed")),
            "replies": (f"authenticated (keyed BLAKE2b, a secret per sandbox), length-checked, deadline = the "
                        f"command's timeout + {REPLY_GRACE_S:g} s; a late, forged or garbled reply kills and "
                        "restarts the sandbox"),
            "limits": lim.model_dump(),
            "nproc_enforced_by": "pids cgroup" if self._cgroup.path else
            ("RLIMIT_NPROC (per uid, host-wide)" if os.geteuid() != 0 or self._owner
             else "nothing (root is exempt from RLIMIT_NPROC)"),
            "process_group_kill": True, "restarts": self.restarts,
            "toolchain": self.toolchain.model_dump(mode="json") if self.toolchain else None,
        }

    def _variables(self) -> dict[str, str]:
        """The server's whole environment (the commands inherit it): the toolchain's PATH and variables, if any."""
        tools = (self.toolchain.variables(self._inside) if self.toolchain
                 else {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"})
        return {**tools, "HOME": self._inside, "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}

    def _start(self) -> subprocess.Popen[bytes]:
        if self.workspace is not None:
            if self._owner is not None and self._home_owner is None:
                with contextlib.suppress(OSError):  # no folder: no workspace to lend either (bwrap will say so)
                    parent = self.workspace.parent.stat()
                    self._home_owner = (parent.st_uid, parent.st_gid)
            sanitize_tree(self.workspace, self._owner)
        argv = [sys.executable, "-I", "-c", SERVER_SOURCE]
        seccomp_fd = seccomp.program_fd() if self.kind == "bwrap" else None
        if self.kind == "bwrap":
            argv = bwrap_argv(workspace=self.workspace, limits=self.limits, variables=self._variables(),
                              owner=self._owner, toolchain=self.toolchain, mounts=self.mounts,
                              seccomp_fd=seccomp_fd) + argv
            env: dict[str, str] = {}
        else:
            env = self._variables()
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    cwd="/", env=env, start_new_session=True, preexec_fn=self._cgroup.enter,
                                    pass_fds=() if seccomp_fd is None else (seccomp_fd,))
        except OSError as err:
            raise SandboxError(f"cannot start the sandbox: {err}") from err
        finally:
            if seccomp_fd is not None:
                os.close(seccomp_fd)
        assert proc.stdin is not None and proc.stdout is not None
        os.set_blocking(proc.stdin.fileno(), False)
        self._rpoll, self._wpoll = select.poll(), select.poll()
        self._rpoll.register(proc.stdout.fileno(), select.POLLIN)
        self._wpoll.register(proc.stdin.fileno(), select.POLLOUT)
        self._secret = secrets.token_bytes(32)
        self._buf.clear()
        quota = None if self.workspace is None else {"root": self._inside, "bytes": self.limits.workspace_bytes}
        init = {"secret": self._secret.hex(), "uid": self._owner and self._owner[0],
                "gid": self._owner and self._owner[1], "quota": quota}
        self._asked_at = time.monotonic()
        try:
            self._send(proc, json.dumps(init).encode() + b"\n", self._asked_at + 10)
        except _Fault as err:
            self._kill_proc(proc)
            raise SandboxError(f"cannot start the sandbox: {err}") from err
        except BaseException:
            self._kill_proc(proc)
            raise
        return proc

    def interrupt(self) -> None:
        """Stop: the command running now (and any later one) is killed and raises CommandInterrupted."""
        self.stop.set()

    def run(self, cmd: str, timeout_s: float, *, collect: str | None = None) -> ExecResult:
        """Run `cmd` in the workspace; `collect` names a file (inside the sandbox) to return afterwards."""
        with self._lock:
            if self.stop.is_set():
                raise CommandInterrupted("a stop was requested")
            start = time.monotonic()
            try:
                if self._proc is None or self._proc.poll() is not None:
                    if self._started:
                        self.restarts += 1
                    self._kill()
                    self._started = True
                    self._proc = self._start()
                return self._ask(self._proc, cmd, timeout_s, collect)
            except CommandInterrupted:
                self._kill()
                raise
            except _Fault as err:
                self._kill()
                message = f"sandbox fault: {err}; the sandbox was killed and is restarted for the next command"
                return ExecResult(exit_code=-1, output=b"", size=0, sha256=_EMPTY_SHA, timed_out=err.timed_out,
                                  duration_s=round(time.monotonic() - start, 6), spawn_error=message, fault=message)
            except SandboxError as err:
                # The command took the server down with it (e.g. `kill -9 $PPID`), or it would not start:
                # that is the command's result, not a kernel failure. The next command gets a fresh sandbox.
                self._kill()
                return ExecResult(exit_code=-9, output=b"", size=0, sha256=_EMPTY_SHA, timed_out=False,
                                  duration_s=round(time.monotonic() - start, 6),
                                  spawn_error=f"sandbox died during the command: {err}")

    # -- the protocol ------------------------------------------------------------------------------
    def _send(self, proc: subprocess.Popen[bytes], data: bytes, deadline: float) -> None:
        assert proc.stdin is not None
        fd = proc.stdin.fileno()
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:  # a full pipe: the server is not reading (stopped?) or slow
                self._wait(self._wpoll, deadline)
            except (BrokenPipeError, ConnectionResetError) as err:
                raise SandboxError("the sandbox server died") from err

    def _wait(self, poller: select.poll, deadline: float) -> None:
        """Until the polled pipe is ready (or hung up); raises on a stop request or when the deadline passes."""
        while True:
            if self.stop.is_set():
                raise CommandInterrupted("a stop was requested")
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Fault(f"the command server did not answer within {deadline - self._asked_at:.0f} s "
                             "(stopped, traced or hung)", timed_out=True)
            if poller.poll(int(min(left, _POLL_S) * 1000) + 1):
                return

    def _fill(self, fd: int, deadline: float) -> None:
        self._wait(self._rpoll, deadline)
        chunk = os.read(fd, 65536)  # bigger costs an allocation per read; replies are small
        if not chunk:
            raise SandboxError("the sandbox server died")
        self._buf += chunk

    def _ask(self, proc: subprocess.Popen[bytes], cmd: str, timeout_s: float, collect: str | None) -> ExecResult:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        self._asked_at = time.monotonic()
        deadline = self._asked_at + timeout_s + REPLY_GRACE_S
        # Bytes that came in between two commands are read as the next reply's header: garbage or a forged
        # reply fails the checks below like any other.
        self._seq += 1
        lim = self.limits
        req = {"seq": self._seq, "cmd": cmd, "timeout_s": timeout_s, "cwd": self._inside,
               "cpu_s": max(1, int(min(lim.cpu_s, timeout_s + 5))), "mem_bytes": lim.mem_bytes,
               "fsize_bytes": lim.fsize_bytes, "nproc": None if self._cgroup.path else lim.nproc,
               "collect": collect}
        self._send(proc, json.dumps(req).encode() + b"\n", deadline)
        while (end := self._buf.find(b"\n")) < 0:
            if len(self._buf) > MAX_HEADER_BYTES:
                raise _Fault(f"a reply header over {MAX_HEADER_BYTES} bytes (garbage or a forged reply)")
            self._fill(fd, deadline)
        line = bytes(self._buf[:end])
        del self._buf[:end + 1]
        head, _, mac = line.rpartition(b" ")
        try:
            header = _Header.model_validate_json(head)
        except ValidationError as err:
            raise _Fault("a malformed reply header (garbage or a forged reply)") from err
        if header.seq != self._seq:
            raise _Fault(f"a reply for request {header.seq}, not {self._seq} (a forged reply)")
        need = header.kept + max(header.collected, 0)
        body_deadline = max(deadline, time.monotonic() + REPLY_GRACE_S)
        while len(self._buf) < need:
            self._fill(fd, body_deadline)
        payload = bytes(self._buf[:need])
        del self._buf[:need]
        expected = hashlib.blake2b(head + b"\n" + payload, key=self._secret, digest_size=32).hexdigest().encode()
        if not hmac.compare_digest(expected, mac):
            raise _Fault("a reply whose MAC does not match (a forged reply)")
        if self._buf:
            raise _Fault("bytes on the reply pipe after the reply (garbage or a forged reply)")
        body = payload[:header.kept]
        fault = None
        if header.over_quota is not None:
            fault = (f"the workspace went over its size quota ({header.over_quota} of "
                     f"{lim.workspace_bytes} bytes used): the command was killed; delete files to go on")
        return ExecResult(exit_code=header.exit, output=body, size=header.size, sha256=header.sha256,
                          timed_out=header.timed_out, duration_s=header.duration_s,
                          spawn_error=header.spawn_error or fault, fault=fault,
                          collected=payload[header.kept:] if header.collected >= 0 else None)

    # -- ending ------------------------------------------------------------------------------------
    def _kill_proc(self, proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, 9)
        self._cgroup.kill_all()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        proc.wait()

    def _kill(self) -> None:
        if self._proc is not None:
            self._kill_proc(self._proc)
            self._proc = None
        self._buf.clear()

    def close(self) -> None:
        with self._lock:
            self._kill()
            self._cgroup.remove()
            if self.workspace is not None:
                sanitize_tree(self.workspace, self._home_owner if self._started else None)
