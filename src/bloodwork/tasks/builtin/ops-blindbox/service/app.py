"""kvd: a small key/value HTTP service on SQLite (Python standard library only).

    python3 service/app.py serve|start|stop|status [--config service/config.json]

`serve` runs in the foreground; `start` launches `serve` in the background (its own session, output
to the log file), writes the pid file and waits until the health check passes, starting the audit
service (service/audit.py) first when it is not running; `stop` ends both; `status` prints the
process states and the health check. Relative paths in the config are relative to the folder above
service/. Every request opens its own database connection, so the health check sees the database as
it is now, not as it was at start.

Every write (PUT, DELETE) is first recorded with the audit service at the config's `audit` address;
a write that cannot be recorded is refused (503), and the health check fails while the audit service
cannot be reached.

API: GET /health, GET /kv/<key>, PUT /kv/<key> (the body is the value), DELETE /kv/<key>.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIELDS = {"host": str, "port": int, "db_path": str, "log_path": str, "pid_file": str, "audit": dict}
AUDIT_PID_FILE = ROOT / "run" / "audit.pid"
AUDIT_TIMEOUT_S = 2.0
START_WAIT_S = 5.0
log = logging.getLogger("kvd")


class ConfigError(Exception):
    pass


def load_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}") from err
    except ValueError as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    for name, kind in FIELDS.items():
        if name not in data:
            raise ConfigError(f"{path}: missing key {name!r}")
        if not isinstance(data[name], kind) or isinstance(data[name], bool):
            raise ConfigError(f"{path}: {name!r} must be a {kind.__name__}")
    if not 0 < data["port"] < 65536:
        raise ConfigError(f"{path}: port {data['port']} is out of range")
    audit = data["audit"]
    if set(audit) != {"host", "port"} or not isinstance(audit["host"], str) or not isinstance(audit["port"], int):
        raise ConfigError(f"{path}: 'audit' must be {{\"host\": string, \"port\": integer}}")
    for name in ("db_path", "log_path", "pid_file"):
        data[name] = str(ROOT / data[name])
    return data


def connect(cfg: dict[str, Any]) -> sqlite3.Connection:
    return sqlite3.connect(cfg["db_path"], timeout=5)


def audit_call(cfg: dict[str, Any], method: str, path: str, body: dict[str, str] | None = None) -> str | None:
    """None when the audit service answered 200, else why not."""
    url = f"http://{cfg['audit']['host']}:{cfg['audit']['port']}{path}"
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method),
                                    timeout=AUDIT_TIMEOUT_S) as resp:
            return None if resp.status == 200 else f"{url} answered {resp.status}"
    except urllib.error.HTTPError as err:
        return f"{url} answered {err.code}"
    except (OSError, ValueError) as err:
        return f"{url} unreachable: {getattr(err, 'reason', err)}"


class Handler(BaseHTTPRequestHandler):
    cfg: dict[str, Any] = {}

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _key(self) -> str | None:
        if not self.path.startswith("/kv/") or len(self.path) <= 4:
            self._send(404, {"error": f"no route {self.path}"})
            return None
        return self.path[4:]

    def _db(self, action: Callable[[sqlite3.Connection], None]) -> None:
        try:
            conn = connect(self.cfg)
            try:
                action(conn)
            finally:
                conn.close()
        except sqlite3.Error as err:
            log.error("database error on %s %s: %s", self.command, self.path, err)
            self._send(503, {"status": "error", "error": f"database: {err}"})

    def _audited(self, op: str, key: str) -> bool:
        """Record the write with the audit service first; refuse it (503) when that fails."""
        why = audit_call(self.cfg, "POST", "/record", {"op": op, "key": key})
        if why is not None:
            log.error("audit failed on %s %s: %s", self.command, self.path, why)
            self._send(503, {"status": "error", "error": f"audit: {why}"})
        return why is None

    def do_GET(self) -> None:
        if self.path == "/health":
            def health(conn: sqlite3.Connection) -> None:
                keys = conn.execute("SELECT count(*) FROM kv").fetchone()[0]
                conn.execute("BEGIN IMMEDIATE")
                conn.rollback()
                why = audit_call(self.cfg, "GET", "/health")
                if why is not None:
                    log.error("health: audit: %s", why)
                    self._send(503, {"status": "error", "error": f"audit: {why}"})
                else:
                    self._send(200, {"status": "ok", "keys": keys})
            self._db(health)
            return
        key = self._key()
        if key is None:
            return

        def get(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
            if row is None:
                self._send(404, {"error": f"no key {key!r}"})
            else:
                self._send(200, {"key": key, "value": row[0]})
        self._db(get)

    def do_PUT(self) -> None:
        key = self._key()
        if key is None:
            return
        value = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode("utf-8", "replace")
        if not self._audited("put", key):
            return

        def put(conn: sqlite3.Connection) -> None:
            with conn:
                conn.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, value))
            self._send(200, {"ok": True, "key": key})
        self._db(put)

    def do_DELETE(self) -> None:
        key = self._key()
        if key is None or not self._audited("delete", key):
            return

        def delete(conn: sqlite3.Connection) -> None:
            with conn:
                conn.execute("DELETE FROM kv WHERE key = ?", (key,))
            self._send(200, {"ok": True, "key": key})
        self._db(delete)

    def log_message(self, fmt: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), fmt % args)


def serve(cfg: dict[str, Any]) -> int:
    logging.basicConfig(filename=cfg["log_path"], level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    log.info("starting: pid %d, %s:%d, db %s", os.getpid(), cfg["host"], cfg["port"], cfg["db_path"])
    try:
        conn = connect(cfg)
        with conn:
            conn.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.close()
    except sqlite3.Error as err:
        log.error("cannot open the database %s: %s", cfg["db_path"], err)
        return 1
    Handler.cfg = cfg
    try:
        server = ThreadingHTTPServer((cfg["host"], cfg["port"]), Handler)
    except OSError as err:
        log.error("cannot listen on %s:%d: %s", cfg["host"], cfg["port"], err)
        return 1
    Path(cfg["pid_file"]).write_text(f"{os.getpid()}\n")
    # shutdown() waits for serve_forever() to return, so it cannot run in the thread that serves.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    log.info("listening on %s:%d", cfg["host"], cfg["port"])
    try:
        server.serve_forever()
    finally:
        server.server_close()
        Path(cfg["pid_file"]).unlink(missing_ok=True)
    log.info("stopped")
    return 0


def probe(cfg: dict[str, Any]) -> tuple[bool, str]:
    url = f"http://{cfg['host']}:{cfg['port']}/health"
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            body = resp.read().decode(errors="replace")
            return resp.status == 200 and json.loads(body).get("status") == "ok", f"{resp.status} {body}"
    except urllib.error.HTTPError as err:
        return False, f"{err.code} {' '.join(err.read().decode(errors='replace').split())[:200]}"
    except (OSError, ValueError) as err:
        return False, f"no answer from {url}: {getattr(err, 'reason', err)}"


def running_pid(cfg: dict[str, Any]) -> int | None:
    try:
        pid = int(Path(cfg["pid_file"]).read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def tail(path: str, n: int = 5) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError as err:
        return f"(cannot read {path}: {err.strerror})"


def audit_pid() -> int | None:
    try:
        pid = int(AUDIT_PID_FILE.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def start_audit(cfg: dict[str, Any], config_path: Path) -> bool:
    """Start the audit service unless it runs; True once it answers its health check."""
    if audit_pid() is not None:
        return True
    with open(cfg["log_path"], "ab") as logfile:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("audit.py")), "serve", "--config",
                                 str(config_path)], stdin=subprocess.DEVNULL, stdout=logfile, stderr=logfile,
                                start_new_session=True, cwd=ROOT)
    deadline = time.monotonic() + START_WAIT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            print(f"audit service failed to start (exit code {proc.returncode}); last log lines:\n"
                  f"{tail(cfg['log_path'])}")
            return False
        if audit_call(cfg, "GET", "/health") is None and audit_pid() == proc.pid:
            print(f"audit service started (pid {proc.pid}) on {cfg['audit']['host']}:{cfg['audit']['port']}")
            return True
        time.sleep(0.1)
    print(f"audit service not healthy after {START_WAIT_S:.0f} s: {audit_call(cfg, 'GET', '/health')}")
    return False


def start(cfg: dict[str, Any], config_path: Path) -> int:
    for name in ("db_path", "log_path", "pid_file"):
        Path(cfg[name]).parent.mkdir(parents=True, exist_ok=True)
    if not start_audit(cfg, config_path):
        return 1
    pid = running_pid(cfg)
    if pid is not None:
        print(f"already running (pid {pid})")
        return 0
    with open(cfg["log_path"], "ab") as logfile:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "serve", "--config", str(config_path)],
                                stdin=subprocess.DEVNULL, stdout=logfile, stderr=logfile, start_new_session=True,
                                cwd=ROOT)
    deadline = time.monotonic() + START_WAIT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            print(f"failed to start (exit code {proc.returncode}); last log lines:\n{tail(cfg['log_path'])}")
            return 1
        healthy, answer = probe(cfg)
        if healthy and running_pid(cfg) == proc.pid:
            print(f"started (pid {proc.pid}) on {cfg['host']}:{cfg['port']}")
            return 0
        time.sleep(0.1)
    print(f"not healthy after {START_WAIT_S:.0f} s (pid {proc.pid}): {answer}")
    print(f"last log lines:\n{tail(cfg['log_path'])}")
    return 1


def _stop_one(name: str, pid_file: Path, pid: int | None) -> None:
    if pid is None:
        pid_file.unlink(missing_ok=True)
        print(f"{name}: not running")
        return
    os.kill(pid, signal.SIGTERM)
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except OSError:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    print(f"{name}: stopped (pid {pid})")


def stop(cfg: dict[str, Any]) -> int:
    _stop_one("kvd", Path(cfg["pid_file"]), running_pid(cfg))
    _stop_one("audit", AUDIT_PID_FILE, audit_pid())
    return 0


def status(cfg: dict[str, Any]) -> int:
    pid = running_pid(cfg)
    if pid is not None:
        print(f"process: running (pid {pid})")
    elif Path(cfg["pid_file"]).exists():
        print(f"process: not running (stale pid file {cfg['pid_file']})")
    else:
        print("process: not running (no pid file)")
    apid = audit_pid()
    print(f"audit: {f'running (pid {apid})' if apid else 'not running'}, "
          f"configured at {cfg['audit']['host']}:{cfg['audit']['port']}")
    healthy, answer = probe(cfg)
    print(f"health: {'ok' if healthy else 'FAILING'}: {answer}")
    return 0 if healthy else 1


def main() -> int:
    parser = argparse.ArgumentParser(description="kvd key/value service")
    parser.add_argument("command", choices=["serve", "start", "stop", "status"])
    parser.add_argument("--config", default=str(ROOT / "service" / "config.json"))
    args = parser.parse_args()
    config_path = Path(args.config).resolve()
    try:
        cfg = load_config(config_path)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    actions = {"serve": lambda: serve(cfg), "start": lambda: start(cfg, config_path),
               "stop": lambda: stop(cfg), "status": lambda: status(cfg)}
    return actions[args.command]()


if __name__ == "__main__":
    sys.exit(main())
