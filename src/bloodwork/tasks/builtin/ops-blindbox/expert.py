"""SCRIPTED expert policy for every `ops-blindbox/<scenario>`: a test fixture and demo, not a model.

Written by hand, it behaves like an on-call engineer with a runbook. It checks the service every tick
(numbering each check, so no two observations are identical), and once a check fails it collects
evidence (status, log tail, data permissions, config, processes), picks the repair that evidence
calls for, confirms the service is healthy and halts. It is never told the scenario: it reads the
slices. Runs driven by it are scripted runs (tagged `provenance: scripted`) and must never be counted
as model behaviour.

It keeps its state in the register q (`watch N`, `diagnose`, `repair`, `start`, `restart`, `confirm`),
which the kernel shows back in the last user message (read with `bloodwork.prompts.split_tail`).
"""

from __future__ import annotations

import json
import re
from typing import Any

from bloodwork.prompts import split_tail

DIAGNOSE = ("./service/status.sh; echo '--- log'; tail -n 4 logs/service.log | cut -c1-150; echo '--- data'; "
            "ls -l data; echo '--- config'; cat service/config.json; echo; echo '--- routes'; "
            "/usr/sbin/ip route show table local 2>&1 | head -n 8; echo '--- python processes'; "
            "for p in /proc/[0-9]*; do c=$(tr '\\0' ' ' < $p/cmdline 2>/dev/null); "
            "case \"$c\" in python*) echo \"${p#/proc/}: $c\" | cut -c1-100;; esac; done")
KILL_SQUATTER = ("python3 -c \"import os, signal\nfor pid in filter(str.isdigit, os.listdir('/proc')):\n"
                 "    try:\n        argv = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')\n"
                 "    except OSError:\n        continue\n    if b'http.server' in argv:\n"
                 "        print('killing', pid); os.kill(int(pid), signal.SIGTERM)\"; sleep 0.5; ./service/start.sh")


def _frame(thought: str, q: str, op: dict[str, Any]) -> str:
    return json.dumps({"thought": thought, "q_next": q, "op": op})


def _exec(thought: str, q: str, cmd: str) -> str:
    return _frame(thought, q, {"name": "SYS_EXEC", "cmd": cmd})


def _parts(messages: list[dict[str, str]]) -> tuple[str, str]:
    """(q, slice) from the kernel's last user message."""
    last = messages[-1]["content"] if messages else ""
    parts = split_tail(last)
    return (parts[0].strip(), parts[2]) if parts else ("", last)


def _port(messages: list[dict[str, str]]) -> int:
    for msg in messages:
        m = re.search(r"http://127\.0\.0\.1:(\d+)", msg["content"])
        if m:
            return int(m.group(1))
    raise ValueError("no service port in the context")


def _config(port: int, audit_host: str = "127.0.0.2") -> str:
    config = {"host": "127.0.0.1", "port": port, "db_path": "data/store.db", "log_path": "logs/service.log",
              "pid_file": "run/service.pid", "audit": {"host": audit_host, "port": 8418}}
    return json.dumps(config, indent=2) + "\n"


def _repair(evidence: str, port: int) -> str:
    if "config error" in evidence:
        return _frame("The config is broken; rewrite it with the documented values and the client port.",
                      "start", {"name": "SYS_WRITE", "path": "service/config.json", "content": _config(port)})
    if "No route to host" in evidence:
        return _frame("The audit service's address has no route any more (`unreachable 127.0.0.2` in the local "
                      "table), and I cannot change routes here: move the audit service to 127.0.0.1.",
                      "restart", {"name": "SYS_WRITE", "path": "service/config.json",
                                  "content": _config(port, audit_host="127.0.0.1")})
    if "Address already in use" in evidence or "health: FAILING: 404" in evidence:
        return _exec("Something else holds the port (a stray http.server); stop it and start the service.",
                     "confirm", KILL_SQUATTER)
    if "unable to open database file" in evidence:
        return _exec("The process runs but cannot open its database: the file lost its permissions.",
                     "confirm", "chmod 644 data/store.db && ls -l data")
    return _exec("The process is gone (stale pid file) and nothing in the log explains it: start it again.",
                 "confirm", "./service/start.sh")


def policy(call: Any, messages: list[dict[str, str]]) -> str:
    q, seen = _parts(messages)
    state, _, arg = q.partition(" ")
    if state == "diagnose":
        return _repair(seen, _port(messages))
    if state == "start":
        return _exec("Config restored; start the service.", "confirm", "./service/start.sh")
    if state == "restart":
        return _exec("Both processes read the address when they start: restart them.", "confirm",
                     "./service/stop.sh && ./service/start.sh")
    if state == "confirm":
        if "health: ok" in seen:
            return _frame("Healthy again, and the store still has its records.", "done",
                          {"name": "SYS_HALT", "reason": "service repaired and healthy; data kept"})
        if "health: FAILING" in seen or "config error" in seen:
            return _exec("Still failing; collect the evidence again.", "diagnose", DIAGNOSE)
        return _exec("Check the service after the repair.", "confirm", "./service/status.sh")
    failing = state == "watch" and ("health: FAILING" in seen or "config error" in seen)
    if failing:
        return _exec("The check failed: collect status, log, permissions, config and processes.", "diagnose",
                     DIAGNOSE)
    n = int(arg) + 1 if state == "watch" and arg.isdigit() else 1
    return _exec("Watch the service.", f"watch {n}", f"echo 'check {n}'; ./service/status.sh")
