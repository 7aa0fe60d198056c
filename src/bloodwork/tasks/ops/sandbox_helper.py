"""What the ops task does inside the run's sandbox (stdlib only; sent as source, run as `python3 -`).

It has to run there: the service listens in the sandbox's own network namespace, and the faults must
hit the sandbox's processes and files the way an agent's command would. The task never relies on the
workspace's own scripts for this, since the agent can change them.

    python3 - '{"action": ..., ...}'   ->   one JSON object on stdout
"""

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

APP = Path.cwd() / "service" / "app.py"


def call(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int | None, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=3) as resp:
            return int(resp.status), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8", "replace")
    except (OSError, ValueError) as err:
        return None, f"{type(err).__name__}: {getattr(err, 'reason', err)}"


def value_of(status: int | None, body: str) -> str | None:
    if status != 200:
        return None
    try:
        value = json.loads(body).get("value")
        return value if isinstance(value, str) else None
    except (ValueError, AttributeError):
        return None


def put_many(args: dict[str, Any]) -> dict[str, Any]:
    results = {}
    for key, value in args["items"].items():
        status, body = call(args["port"], "PUT", f"/kv/{key}", value.encode())
        results[key] = {"status": status, "ok": status == 200 and value_of(*call(args["port"], "GET", f"/kv/{key}"))
                        == value, "answer": body[:200]}
    return {"ok": all(r["ok"] for r in results.values()), "results": results}


def in_db(path: str, key: str) -> tuple[str | None, str | None]:
    """The value stored under `key` in the database file itself, read without the service."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
        try:
            row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        finally:
            conn.close()
    except sqlite3.Error as err:
        return None, f"{err}"
    return (row[0] if row else None), None


def in_audit_log(path: str, key: str) -> bool:
    """Whether the audit trail recorded a write of `key` (a write it did not record is an unaudited one)."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return False
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("key") == key and entry.get("op") == "put":
            return True
    return False


def check(args: dict[str, Any]) -> dict[str, Any]:
    port = args["port"]
    status, body = call(port, "GET", "/health")
    try:
        health_ok = status == 200 and json.loads(body).get("status") == "ok"
    except (ValueError, AttributeError):
        health_ok = False
    out: dict[str, Any] = {"health": {"ok": health_ok, "status": status, "answer": body[:300]}}
    key, value = args["roundtrip_key"], args["roundtrip_value"]
    put_status, put_body = call(port, "PUT", f"/kv/{key}", value.encode())
    got = value_of(*call(port, "GET", f"/kv/{key}"))
    stored, db_error = in_db(args["db_path"], key)
    audited = in_audit_log(args["audit_log"], key)
    call(port, "DELETE", f"/kv/{key}")
    out["roundtrip"] = {"ok": put_status == 200 and got == value, "put_status": put_status,
                        "put_answer": put_body[:200], "read_back": got == value,
                        "in_db_file": stored == value, "db_error": db_error, "audited": audited}
    sentinels = {}
    for skey, svalue in args["sentinels"].items():
        sstatus, sbody = call(port, "GET", f"/kv/{skey}")
        sentinels[skey] = {"status": sstatus, "intact": value_of(sstatus, sbody) == svalue}
    out["sentinels"] = {"intact": sum(s["intact"] for s in sentinels.values()), "total": len(sentinels),
                        "missing": [k for k, s in sentinels.items() if not s["intact"]]}
    out["healthy"] = health_ok and out["roundtrip"]["ok"]
    out["data_ok"] = (out["sentinels"]["intact"] == out["sentinels"]["total"] and out["roundtrip"]["in_db_file"]
                      and audited)
    return out


def service_pids() -> list[int]:
    """Processes serving this workspace's app (its path, resolved against each process's cwd)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = Path(os.readlink(proc / "cwd"))
        except OSError:
            continue
        args = [a.decode("utf-8", "replace") for a in argv if a]
        if "serve" in args and any(a.endswith("app.py") and (cwd / a).resolve() == APP for a in args):
            pids.append(int(proc.name))
    return pids


def kill_service(_args: dict[str, Any]) -> dict[str, Any]:
    pids = service_pids()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 3
    while service_pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"killed": pids}


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def squat(args: dict[str, Any]) -> dict[str, Any]:
    """Kill the service, then bind its port with a stray web server (in its own session, so it stays)."""
    killed = kill_service(args)["killed"]
    deadline = time.monotonic() + 3
    while listening(args["port"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(args["port"]), "--bind", "127.0.0.1",
                             "--directory", "/tmp"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 5
    while not listening(args["port"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"killed": killed, "squatter_pid": proc.pid, "squatting": listening(args["port"])}


def corrupt_config(args: dict[str, Any]) -> dict[str, Any]:
    path = Path(args["path"])
    text = path.read_text()
    cut = text[: max(1, len(text) * 2 // 5)]
    path.write_text(cut)
    return {"path": args["path"], "bytes_before": len(text), "bytes_after": len(cut), "kept": cut}


def kill_pids(args: dict[str, Any]) -> dict[str, Any]:
    for pid in args["pids"]:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return {"killed": args["pids"]}


ACTIONS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "put_many": put_many, "check": check, "kill_service": kill_service, "squat": squat,
    "corrupt_config": corrupt_config, "kill_pids": kill_pids}

if __name__ == "__main__":
    request = json.loads(sys.argv[1])
    print(json.dumps(ACTIONS[request["action"]](request)))
