"""audit: the audit-trail service kvd records every write with (Python standard library only).

    python3 service/audit.py serve [--config service/config.json]

It listens on the address in the config's `audit` object (an address of its own, as a separate host
would have) and appends one JSON line per recorded write to data/audit.log. kvd refuses a write it
could not record. `app.py start` starts it when it is not running; `app.py stop` stops it too.

API: GET /health, POST /record (body: {"op": "put" | "delete", "key": KEY}).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LOG = ROOT / "data" / "audit.log"
PID_FILE = ROOT / "run" / "audit.pid"
_lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(200, {"status": "ok"})
        else:
            self._send(404, {"error": f"no route {self.path}"})

    def do_POST(self) -> None:
        if self.path != "/record":
            self._send(404, {"error": f"no route {self.path}"})
            return
        try:
            entry = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            line = json.dumps({"ts": round(time.time(), 3), "op": str(entry["op"]), "key": str(entry["key"])})
        except (ValueError, KeyError, TypeError) as err:
            self._send(400, {"error": f"bad record: {err}"})
            return
        try:
            with _lock, open(LOG, "a") as fh:
                fh.write(line + "\n")
        except OSError as err:
            self._send(503, {"error": f"cannot write {LOG.name}: {err.strerror}"})
            return
        self._send(200, {"ok": True})

    def log_message(self, fmt: str, *args: Any) -> None:
        return None


def serve(config_path: Path) -> int:
    try:
        cfg = json.loads(config_path.read_text())["audit"]
        host, port = str(cfg["host"]), int(cfg["port"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"config error: {config_path}: no usable audit address ({err})", file=sys.stderr)
        return 2
    LOG.parent.mkdir(parents=True, exist_ok=True)
    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as err:
        print(f"cannot listen on {host}:{port}: {err}", file=sys.stderr)
        return 1
    PID_FILE.parent.mkdir(parents=True, exist_ok=True)
    PID_FILE.write_text(f"{os.getpid()}\n")
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    print(f"audit listening on {host}:{port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        PID_FILE.unlink(missing_ok=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="audit-trail service")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--config", default=str(ROOT / "service" / "config.json"))
    args = parser.parse_args()
    return serve(Path(args.config).resolve())


if __name__ == "__main__":
    sys.exit(main())
