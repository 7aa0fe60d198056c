"""The command server that lives inside the sandbox for the whole run (stdlib only).

Started once per run (inside `bwrap` where available), it reads one JSON request a line on stdin and
answers each with a JSON header line followed by the raw output bytes. Each command gets its own
session (so the whole process group is killed on timeout) and resource limits. Spawning one process
per command here costs ~1 ms; a fresh `bwrap` per command would cost 5-15 ms.
"""

import contextlib
import hashlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time

KEEP_BYTES = 8 * 1024 * 1024


def _limited(req):
    """The command behind `ulimit`s (a shell builtin), so the spawn needs no Python preexec hook."""
    limits = "ulimit -t {}; ulimit -v {}; ulimit -f {}; ulimit -p {}; ulimit -c 0".format(
        int(req["cpu_s"]), req["mem_bytes"] // 1024, req["fsize_bytes"] // 512, req["nproc"])
    return limits + "\n" + req["cmd"]


def _kill_group(pid):
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def run(req):
    start = time.monotonic()
    proc = subprocess.Popen(["/bin/sh", "-c", _limited(req)], cwd=req["cwd"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            close_fds=True)
    digest = hashlib.sha256()
    kept = bytearray()
    size = 0
    timed_out = False
    deadline = start + req["timeout_s"]
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    fd = proc.stdout.fileno()
    exited_at = None
    while True:
        now = time.monotonic()
        if exited_at is None and not timed_out and proc.poll() is not None:
            # The shell is done; a background child may still hold the pipe: read a little more, then go.
            exited_at = now
            deadline = min(deadline, now + 0.2)
        if now >= deadline:
            if timed_out or exited_at is not None:
                break
            timed_out = True
            _kill_group(proc.pid)
            deadline = now + 0.5
        if not sel.select(timeout=max(0.0, min(deadline - now, 0.05))):
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        size += len(chunk)
        digest.update(chunk)
        if len(kept) < KEEP_BYTES:
            kept += chunk[: KEEP_BYTES - len(kept)]
    sel.close()
    proc.stdout.close()
    if timed_out:
        _kill_group(proc.pid)
    code = proc.wait()
    return {"exit": code, "timed_out": timed_out, "duration_s": round(time.monotonic() - start, 6),
            "size": size, "sha256": digest.hexdigest(), "kept": len(kept)}, bytes(kept)


def main():
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        req = json.loads(line)
        try:
            header, body = run(req)
        except OSError as err:
            header, body = {"exit": 127, "timed_out": False, "duration_s": 0.0, "size": 0,
                            "sha256": hashlib.sha256(b"").hexdigest(), "kept": 0,
                            "spawn_error": str(err)}, b""
        out.write(json.dumps(header).encode() + b"\n" + body)
        out.flush()


if __name__ == "__main__":
    main()
