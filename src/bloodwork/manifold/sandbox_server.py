"""The command server that lives inside the sandbox for the whole run (stdlib only).

Started once per run (inside `bwrap` where available). The host's first line is the handshake: a secret
for this sandbox, the uid and gid to drop to, and the workspace quota. The server first makes itself
non-dumpable (so no command can open its `/proc/PID/fd`, `/proc/PID/mem` or read the secret; ptrace is
refused by the seccomp filter too), sets no_new_privs, reads the handshake, and drops to the unprivileged
uid: it never holds the secret while anything else runs as the same user and can look at it.

Then it reads one JSON request a line and answers each with a frame: a header line `JSON SP MAC LF`
(MAC = keyed BLAKE2b(secret, JSON LF body)), then the raw output bytes and, where asked, the bytes of one
file the command left (a test report). The host checks the length, the sequence number and the MAC, so
a command cannot forge a reply. Each command gets its own session (so the whole process group is
killed on timeout or when the workspace goes over its quota) and resource limits. Spawning one process per
command here costs ~1 ms; a fresh `bwrap` per command would cost 5-15 ms.
"""

import contextlib
import ctypes
import hashlib
import json
import os
import selectors
import signal
import stat
import subprocess
import sys
import time

KEEP_BYTES = 8 * 1024 * 1024
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
QUOTA_FIRST_CHECK_S = 0.1
QUOTA_WALK_S = 0.5  # one walk of a huge tree must not delay the timeout handling (the host waits 3 s more)


def _prctl(libc, option, value):
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def _drop(libc, init):
    """To the unprivileged uid (which clears every capability), then non-dumpable again: a uid change
    resets dumpability to the system default (fs.suid_dumpable)."""
    if init.get("uid") is not None:
        os.setgroups([])
        os.setresgid(init["gid"], init["gid"], init["gid"])
        os.setresuid(init["uid"], init["uid"], init["uid"])
    _prctl(libc, PR_SET_DUMPABLE, 0)


def _limited(req):
    """The command behind `ulimit`s (a shell builtin), so the spawn needs no Python preexec hook."""
    limits = "ulimit -t {}; ulimit -v {}; ulimit -f {}; ulimit -c 0".format(
        int(req["cpu_s"]), req["mem_bytes"] // 1024, req["fsize_bytes"] // 512)
    if req.get("nproc"):
        limits += f"; ulimit -p {req['nproc']}"
    return limits + "\n" + req["cmd"]


def _kill_group(pid):
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def disk_usage(root, budget_s=QUOTA_WALK_S):
    """Bytes allocated under `root` (st_blocks, symlinks not followed), unreadable corners skipped. A walk
    that runs out of time returns what it counted so far: a lower bound, which is enough to say "over"."""
    total = 0
    stack = [root]
    give_up = time.monotonic() + budget_s
    while stack and time.monotonic() < give_up:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            total += st.st_blocks * 512
            if stat.S_ISDIR(st.st_mode):
                stack.append(entry.path)
    return total


def _collect(path):
    """Take a regular file the command left (never a FIFO, device or symlink): up to KEEP_BYTES + 1 of its
    bytes (more means too big), and it is removed, with its folder if that is then empty. None if absent."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with contextlib.suppress(OSError):
        os.unlink(path)
        os.rmdir(os.path.dirname(path))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = bytearray()
        while len(data) < KEEP_BYTES + 1:
            chunk = os.read(fd, KEEP_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
        return bytes(data)
    finally:
        os.close(fd)


def run(req, quota):
    start = time.monotonic()
    proc = subprocess.Popen(["/bin/sh", "-c", _limited(req)], cwd=req["cwd"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            close_fds=True)
    digest = hashlib.sha256()
    kept = bytearray()
    size = 0
    timed_out = False
    over_quota = None
    deadline = start + req["timeout_s"]
    next_quota = start + QUOTA_FIRST_CHECK_S
    stdout = proc.stdout
    assert stdout is not None  # stdout=PIPE above
    sel = selectors.DefaultSelector()
    sel.register(stdout, selectors.EVENT_READ)
    fd = stdout.fileno()
    exited_at = None
    while True:
        now = time.monotonic()
        if exited_at is None and not timed_out and proc.poll() is not None:
            # The shell is done; a background child may still hold the pipe: read a little more, then go.
            exited_at = now
            deadline = min(deadline, now + 0.2)
        if quota and over_quota is None and not timed_out and now >= next_quota:
            used = disk_usage(quota["root"])
            took = time.monotonic() - now
            next_quota = now + max(QUOTA_FIRST_CHECK_S, 20 * took)
            # Over the quota and grown since the last look: a command that cleans up a workspace left over
            # it (`rm` seen before it has deleted anything) is the remedy, not the fault.
            grown, quota["last_used"] = used > quota.get("last_used", 0), used
            if used > quota["bytes"] and grown:
                over_quota = used
                _kill_group(proc.pid)
                deadline = min(deadline, now + 0.5)
        if now >= deadline:
            if timed_out or exited_at is not None or over_quota is not None:
                break
            timed_out = True
            _kill_group(proc.pid)
            deadline = now + 0.5
        wait = min(deadline, next_quota) if quota and over_quota is None else deadline
        if not sel.select(timeout=max(0.0, min(wait - now, 0.05))):
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        size += len(chunk)
        digest.update(chunk)
        if len(kept) < KEEP_BYTES:
            kept += chunk[: KEEP_BYTES - len(kept)]
    sel.close()
    stdout.close()
    if timed_out or over_quota is not None:
        _kill_group(proc.pid)
    code = proc.wait()
    header = {"exit": code, "timed_out": timed_out, "duration_s": round(time.monotonic() - start, 6),
              "size": size, "sha256": digest.hexdigest(), "kept": len(kept), "over_quota": over_quota}
    return header, bytes(kept)


def main():
    inp = sys.stdin.buffer
    out = sys.stdout.buffer
    # Any failure here ends the server before it answers: the host sees the sandbox die, never a soft one.
    libc = ctypes.CDLL(None, use_errno=True)
    _prctl(libc, PR_SET_DUMPABLE, 0)
    _prctl(libc, PR_SET_NO_NEW_PRIVS, 1)
    init = json.loads(inp.readline())
    _drop(libc, init)
    key = bytes.fromhex(init["secret"])
    quota = init.get("quota")
    for line in inp:
        req = json.loads(line)
        try:
            header, body = run(req, quota)
        except OSError as err:
            header, body = {"exit": 127, "timed_out": False, "duration_s": 0.0, "size": 0,
                            "sha256": hashlib.sha256(b"").hexdigest(), "kept": 0, "over_quota": None,
                            "spawn_error": str(err)[:500]}, b""
        collected = _collect(req["collect"]) if req.get("collect") else None
        header["collected"] = -1 if collected is None else len(collected)
        header["seq"] = req["seq"]
        payload = body + (collected or b"")
        head = json.dumps(header, sort_keys=True).encode()
        mac = hashlib.blake2b(head + b"\n" + payload, key=key, digest_size=32).hexdigest().encode()
        out.write(head + b" " + mac + b"\n" + payload)
        out.flush()


if __name__ == "__main__":
    main()
