"""How a sandbox is held on the host: the bwrap command line, a pids cgroup per sandbox, the workspace's
owner and setuid bits, whether bwrap is here at all. `CommandRunner` (runner.py) puts them together."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bloodwork._proc import pid_alive
from bloodwork.manifold.toolchain import Toolchain

if TYPE_CHECKING:
    from bloodwork.manifold.runner import Limits

SHM_BYTES = 64 * 1024**2  # the sandbox's /dev/shm (a tmpfs, like /tmp)


def bwrap_available() -> bool:
    return shutil.which("bwrap") is not None


def sanitize_tree(root: Path, owner: tuple[int, int] | None) -> None:
    """Clear setuid/setgid bits everywhere under `root` and, with `owner`, hand every entry to that uid/gid.

    Symlinks are never followed (the walk holds directory descriptors; links are chowned themselves).
    Called when no sandbox process runs on the tree, so nothing can swap an entry under the walk.
    """
    def fix(name: str, dir_fd: int | None) -> None:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return
        with contextlib.suppress(OSError):
            if owner is not None and (st.st_uid, st.st_gid) != owner:
                os.chown(name, *owner, dir_fd=dir_fd, follow_symlinks=False)
            if st.st_mode & (stat.S_ISUID | stat.S_ISGID) and not stat.S_ISLNK(st.st_mode):
                os.chmod(name, stat.S_IMODE(st.st_mode) & ~(stat.S_ISUID | stat.S_ISGID), dir_fd=dir_fd)

    if not root.is_dir() or root.is_symlink():
        return
    fix(str(root), None)
    for _, dirs, files, dir_fd in os.fwalk(root, follow_symlinks=False):
        for name in (*dirs, *files):
            fix(name, dir_fd)


class PidsCgroup:
    """A pids cgroup capping the sandbox's process count.

    RLIMIT_NPROC counts every process of a uid on the host, so sandboxes sharing SANDBOX_UID would share
    it; where the pids controller is writable (root, cgroup v1 or v2) each sandbox gets a cgroup of its
    own instead. Groups left by a killed process (`bloodwork-PID-...` with PID gone) are removed here.

    Its name is random, not derived from the object: a group that outlives its runner (its last process
    took too long to die) must never be taken for the next runner's, which would then find the name in
    use and silently run without a process limit.
    """

    ROOTS = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))
    REMOVE_WAIT_S = 5.0

    def __init__(self, limit: int) -> None:
        self.path: Path | None = None
        for root in self.ROOTS:
            if not (root / "cgroup.procs").exists() or not os.access(root, os.W_OK):
                continue
            self._remove_stale(root)
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

    @staticmethod
    def _remove_stale(root: Path) -> None:
        with contextlib.suppress(OSError):
            for entry in root.glob("bloodwork-*-*"):
                owner = entry.name.split("-")[1]
                if owner.isdigit() and not pid_alive(int(owner)):
                    PidsCgroup._empty_and_remove(entry)

    @classmethod
    def _empty_and_remove(cls, path: Path) -> None:
        # Killed processes leave the group only once they have exited, which takes a while on a loaded machine.
        deadline = time.monotonic() + cls.REMOVE_WAIT_S
        while True:
            try:
                for pid in (path / "cgroup.procs").read_text().split():
                    with contextlib.suppress(OSError):
                        os.kill(int(pid), 9)
                path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.02)

    def enter(self) -> None:
        """Runs in the child before exec: everything the sandbox spawns is counted."""
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def kill_all(self) -> None:
        if self.path is not None:
            with contextlib.suppress(OSError):
                for pid in (self.path / "cgroup.procs").read_text().split():
                    with contextlib.suppress(OSError):
                        os.kill(int(pid), 9)

    def remove(self) -> None:
        """Kill whatever is left in the group, then remove it (it must be empty to go)."""
        if self.path is not None:
            self._empty_and_remove(self.path)


def bwrap_argv(*, workspace: Path | None, limits: Limits, variables: dict[str, str], owner: tuple[int, int] | None,
               toolchain: Toolchain | None, mounts: Sequence[tuple[Path, str]], seccomp_fd: int | None) -> list[str]:
    """bwrap as root: drop every capability (but those the server needs to drop its uid), unshare every
    namespace, read-only system, writable /ws and a capped /tmp. `owner`: the uid/gid the server becomes
    (root only); `variables`: the server's whole environment."""
    if owner is not None:
        # Every namespace but the user one: in a user namespace root's bwrap maps only uid 0, and the
        # server must become a real, unprivileged host uid (files it makes belong to nobody, not root).
        argv = ["bwrap", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
                "--unshare-cgroup-try", "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        argv = ["bwrap", "--unshare-all", "--cap-drop", "ALL"]
    argv += ["--die-with-parent", "--new-session"]
    argv += ["--clearenv"]
    for name, value in variables.items():
        argv += ["--setenv", name, value]
    if workspace is None:
        argv += ["--perms", "0777", "--size", str(limits.workspace_bytes), "--tmpfs", "/ws"]
    else:
        argv += ["--bind", str(workspace), "/ws"]
    argv += ["--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
             "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/sbin", "/sbin",
             "--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", str(limits.tmp_bytes), "--tmpfs", "/tmp",
             # multiprocessing's semaphores live here; bwrap's own /dev/shm is root's
             "--perms", "1777", "--size", str(SHM_BYTES), "--tmpfs", "/dev/shm"]
    binds = [(etc, etc) for etc in ("/etc/alternatives", "/etc/ld.so.cache", "/etc/localtime")
             if os.path.exists(etc)]
    # The interpreter that runs the server (and the agent's `python3`, unless a toolchain brings its own:
    # a per-instance venv under ~/.cache and its base interpreter) lives outside /usr here.
    prefixes = {sys.prefix, sys.base_prefix, os.path.realpath(sys.base_prefix),
                *(toolchain.prefixes if toolchain else ())}
    binds += [(prefix, prefix) for prefix in sorted(prefixes) if not prefix.startswith("/usr")]
    binds += [(str(src), dest) for src, dest in mounts]
    # bwrap (as root) makes missing parents of a mount point 0700: the sandbox user could not pass them.
    parents = {str(p) for _, dest in binds for p in Path(dest).parents if str(p) not in ("/", "/ws")}
    for parent in sorted(parents, key=lambda p: p.count("/")):
        argv += ["--perms", "0755", "--dir", parent]
    for src, dest in binds:
        argv += ["--ro-bind", src, dest]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    # Not /ws: bwrap's root has no capability left to enter a 0700 workspace the sandbox user owns.
    argv += ["--chdir", "/"]
    return argv
