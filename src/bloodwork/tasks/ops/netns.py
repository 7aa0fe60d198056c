"""Network faults inside the sandbox's own network namespace, made from outside it.

Nothing in the sandbox can change its routes (every capability is dropped there, on purpose), so
the fault is made by the host, as root: it finds a process of the sandbox's network namespace
(by the namespace's inode, which a command in the sandbox reads from `/proc/self/ns/net`), holds
that namespace open, checks it is the sandbox's and not the host's, and runs
`nsenter --net=... ip route add unreachable ADDRESS/32 table local` in it. A /32 route in the
`local` table beats its `127.0.0.0/8` entry, so connecting to that loopback address fails with
"No route to host" while every other address keeps working. The namespace, and the route with it,
dies with the sandbox.

Never without an isolated namespace: when the sandbox shares the host's network (`sandbox: none`)
the fault is refused, since it would hit the host.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Any

from bloodwork.tasks.base import CommandRunnerLike, TaskError

_NS = re.compile(r"^net:\[(\d+)\]$")


def _inode(link: str) -> int | None:
    m = _NS.match(link.strip())
    return int(m.group(1)) if m else None


def unavailable() -> str | None:
    """Why this machine cannot make the fault (None when it can)."""
    if os.geteuid() != 0:
        return "needs root on the host (to enter the sandbox's network namespace)"
    missing = [tool for tool in ("nsenter", "ip") if _tool(tool) is None]
    return f"needs {' and '.join(missing)} on the host" if missing else None


def _tool(name: str) -> str | None:
    """On PATH, or in /usr/sbin (root's PATH has it; a user's may not)."""
    return shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)


def sandbox_netns(runner: CommandRunnerLike) -> int:
    """The inode of the sandbox's network namespace; refused when it is the host's own."""
    res = runner.run("readlink /proc/self/ns/net", 10)
    inode = _inode(res.text)
    if inode is None:
        raise TaskError(f"cannot read the sandbox's network namespace: {res.text.strip()[:200]!r}")
    if inode == _inode(os.readlink("/proc/self/ns/net")):
        raise TaskError("the sandbox shares the host's network namespace (no bwrap): a network fault would hit "
                        "the host, so it is refused")
    return inode


def _open_netns(inode: int) -> int:
    """A file descriptor on the namespace: the process found may exit, the descriptor keeps it valid."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        except OSError:
            continue
        if os.fstat(fd).st_ino == inode:
            return fd
        os.close(fd)
    raise TaskError(f"no process of the sandbox's network namespace net:[{inode}] is visible from the host")


def ip_in_sandbox(runner: CommandRunnerLike, *args: str) -> dict[str, Any]:
    """Run `ip ARGS` in the sandbox's network namespace, from the host (as root)."""
    why = unavailable()
    if why:
        raise TaskError(f"a network fault {why}")
    inode = sandbox_netns(runner)
    fd = _open_netns(inode)
    try:
        cmd = [str(_tool("nsenter")), f"--net=/proc/self/fd/{fd}", str(_tool("ip")), *args]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=10, pass_fds=(fd,), check=False)
    finally:
        os.close(fd)
    if res.returncode != 0:
        raise TaskError(f"ip {' '.join(args)} in the sandbox failed: {res.stderr.strip()[:200]}")
    return {"netns": f"net:[{inode}]", "command": f"ip {' '.join(args)}"}


def make_unreachable(runner: CommandRunnerLike, address: str) -> dict[str, Any]:
    """From now on, connecting to `address` in the sandbox fails with "No route to host"."""
    return ip_in_sandbox(runner, "route", "add", "unreachable", f"{address}/32", "table", "local")
