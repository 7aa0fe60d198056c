"""`ops-blindbox/<scenario>`: keep a real service alive through a fault the agent is not told about.

The service (`kvd`, stdlib HTTP + SQLite, files under `builtin/ops-blindbox/service/`) is copied into
the workspace by `prepare` and started by `start` inside the run's sandbox, so the agent's commands
share its network namespace and processes. kvd records every write with a second local service, the
audit trail (`service/audit.py`, on an address of its own, 127.0.0.2), and refuses writes it cannot
record. `start` then stores sentinel records through the API.
At a tick chosen by the seed (3..10), `on_tick` makes the scenario's fault happen for real and returns
it as a chaos event; from then on each tick's `on_tick` checks the service until it is first healthy
again with its data, which dates the recovery (MTTR in ticks and seconds).

A task object lives for one run. After a resume the injection tick is recomputed from the seed (a
fault whose tick has passed is taken as having struck); the first-healthy record is not kept. A
network fault lives in the sandbox's network namespace, which a resume replaces: it is made again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shlex
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bloodwork.tasks.base import CommandRunnerLike, TaskError, VerifierResult
from bloodwork.tasks.ops.netns import make_unreachable, unavailable

DATA_DIR = Path(__file__).resolve().parents[1] / "builtin" / "ops-blindbox"
SERVICE_DIR = DATA_DIR / "service"
SCENARIO_DIR = DATA_DIR / "scenarios"
HELPER_SOURCE = Path(__file__).with_name("sandbox_helper.py").read_text()
STAGES = ("before_fault", "down", "healthy_data_lost", "recovered")
DB_PATH = "data/store.db"
INJECT_FIRST, INJECT_LAST = 3, 10
SENTINELS = 5
# Fixed, not seeded: the goal names it, and after a resume the goal is built before the seed is known.
PORT = 8417
AUDIT_HOST, AUDIT_PORT = "127.0.0.2", 8418
AUDIT_LOG = "data/audit.log"
FaultKind = Literal["kill9", "chmod", "port_squat", "config_corrupt", "net_unreachable"]
NETWORK_FAULTS = ("net_unreachable",)

GOAL = """You are on call for kvd, a key/value HTTP service that runs in this workspace (the same sandbox
as your commands). Clients use it at http://127.0.0.1:{port}. Its code, scripts, config and runbook
are in service/ (start with service/README.md); its data is in data/ and its log in logs/.

Users complain that the service goes down. Keep it up: check it (`./service/status.sh`), and when it
fails, find out why and repair it, so that it answers its health check and serves writes and reads
again on the same port, without losing any record stored before the failure (there is no backup).
Then SYS_HALT. A halt is accepted only once an outage has happened and been repaired, and the
verifier has checked the health endpoint, a write/read round trip and the records stored earlier."""


class Scenario(BaseModel):
    """One fault, as documented for people (the agent sees none of this)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9_]+$")
    fault: FaultKind
    title: str
    description: str
    symptoms: str
    repair: str = Field(min_length=1, description="shell commands that repair it; {port} is replaced")


def load_scenario(name: str) -> Scenario:
    path = SCENARIO_DIR / f"{name}.yaml"
    if not path.is_file():
        raise TaskError(f"unknown ops-blindbox scenario {name!r} (built-in: {', '.join(scenario_names())})")
    try:
        return Scenario.model_validate(yaml.safe_load(path.read_text()))
    except (yaml.YAMLError, ValidationError) as err:
        raise TaskError(f"{path}: {str(err).splitlines()[0]}") from err


def scenario_names() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))


def _h(*parts: object) -> int:
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest(), 16)


def inject_tick_for(seed: int, scenario: str) -> int:
    """The hidden tick of the fault: 3..10, from the seed and the scenario."""
    return INJECT_FIRST + _h("ops-blindbox", "inject", scenario, seed) % (INJECT_LAST - INJECT_FIRST + 1)


def sentinels_for(seed: int) -> dict[str, str]:
    """Records the task stores before the fault; losing any of them is data loss."""
    return {f"customer-{_h('key', seed, i) % 10**6:06d}":
            json.dumps({"id": i, "name": f"customer {i}", "balance": _h("value", seed, i) % 10**5})
            for i in range(SENTINELS)}


def _now() -> tuple[float, str]:
    t = time.time()
    return t, datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


def helper(runner: CommandRunnerLike, action: str, timeout_s: float = 30, **args: Any) -> dict[str, Any]:
    """Run one helper action in the sandbox; its last output line is the JSON answer. `-I`: the workspace is
    the working directory, and a `json.py` or `sqlite3/` the agent left there must not stand in for ours."""
    payload = shlex.quote(json.dumps({"action": action, **args}))
    res = runner.run(f"python3 -I - {payload} <<'BLOODWORK_HELPER'\n{HELPER_SOURCE}\nBLOODWORK_HELPER", timeout_s)
    lines = res.text.strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else None
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise TaskError(f"ops helper {action!r} failed (exit {res.exit_code}): {res.text[-300:]}")
    return answer


class OpsTask:
    """One scenario as a task; `verify` judges the live service through the run's sandbox."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.id = f"ops-blindbox/{scenario.id}"
        self.source = self.id
        self.goal = GOAL.format(port=PORT)
        self.port = PORT
        self.metadata: dict[str, Any] = {
            "kind": "ops-blindbox", "synthetic": True, "scenario": scenario.id, "fault": scenario.fault,
            "title": scenario.title, "description": scenario.description.strip(),
            "inject_tick": f"{INJECT_FIRST}..{INJECT_LAST}, from sha256 of the seed",
            "stages": list(STAGES),
            "verifier": ("through the run's sandbox: GET /health answers 200 ok, a PUT/GET round trip on the "
                         "client port returns the value, lands in data/store.db and in the audit trail "
                         f"{AUDIT_LOG}, and all sentinel records "
                         "stored at start read back unchanged; recovered = all of that after the fault struck "
                         "(`passed`); healthy_data_lost = healthy but a sentinel is gone or the store moved; "
                         "down = not healthy; before_fault = halted before the fault. MTTR = first tick at "
                         "which that check passed (checked every tick after the fault) minus the fault's tick"),
        }
        self.seed: int | None = None
        self.inject_tick = INJECT_LAST
        self.sentinels: dict[str, str] = {}
        self._runner: CommandRunnerLike | None = None
        self._fault: dict[str, Any] | None = None
        self._first_healthy: dict[str, Any] | None = None
        self._last_tick: int | None = None
        self._stray_pids: list[int] = []

    def _configure(self, seed: int) -> None:
        self.seed = seed
        self.inject_tick = inject_tick_for(seed, self.scenario.id)
        self.sentinels = sentinels_for(seed)

    def toolchain(self) -> None:
        return None

    def prepare(self, workspace: Path, seed: int) -> None:
        if self.scenario.fault in NETWORK_FAULTS and (why := unavailable()):
            raise TaskError(f"{self.id}: the network fault {why}")
        self._configure(seed)
        shutil.copytree(SERVICE_DIR, workspace / "service", ignore=shutil.ignore_patterns("__pycache__"))
        for script in ("start.sh", "stop.sh", "status.sh"):
            (workspace / "service" / script).chmod(0o755)
        (workspace / "service" / "config.json").write_text(json.dumps(
            {"host": "127.0.0.1", "port": self.port, "db_path": DB_PATH, "log_path": "logs/service.log",
             "pid_file": "run/service.pid", "audit": {"host": AUDIT_HOST, "port": AUDIT_PORT}}, indent=2) + "\n")
        for folder in ("data", "logs", "run"):
            (workspace / folder).mkdir(exist_ok=True)

    def start(self, runner: CommandRunnerLike, *, seed: int, resumed: bool) -> None:
        """Start the service in the run's sandbox; on a fresh run, store the sentinel records."""
        self._configure(seed)
        self._runner = runner
        res = runner.run("./service/start.sh", 30)
        if resumed:
            return
        if res.exit_code != 0:
            raise TaskError(f"the kvd service did not start: {res.text.strip()[-300:]}")
        stored = helper(runner, "put_many", port=self.port, items=self.sentinels)
        if not stored["ok"]:
            raise TaskError(f"the kvd service did not store the sentinel records: {stored['results']}")

    def check(self, runner: CommandRunnerLike) -> dict[str, Any]:
        """Health, a round trip with a fresh key (removed after), and every sentinel record."""
        t, _ = _now()
        key = f"verify-{int(t * 1000)}"
        try:
            return helper(runner, "check", port=self.port, db_path=DB_PATH, sentinels=self.sentinels,
                          roundtrip_key=key, roundtrip_value=f"round trip at {t:.3f}", audit_log=AUDIT_LOG)
        except TaskError as err:  # the sandbox itself is broken: the service is not reachable either
            return {"healthy": False, "data_ok": False, "error": str(err),
                    "health": {"ok": False, "status": None, "answer": str(err)[:300]},
                    "roundtrip": {"ok": False, "in_db_file": False, "audited": False},
                    "sentinels": {"intact": 0, "total": len(self.sentinels), "missing": sorted(self.sentinels)}}

    def _inject(self, runner: CommandRunnerLike, tick: int) -> dict[str, Any]:
        fault = self.scenario.fault
        try:
            target, params = self._strike(runner)
        except TaskError as err:
            target, params = "service", {"error": str(err)}
        after = self.check(runner)
        t, iso = _now()
        params.update(scenario=self.scenario.id, inject_tick=self.inject_tick, broken=not after["healthy"],
                      health_after=after["health"])
        self._fault = {"tick": tick, "ts": t, "at": iso}
        return {"kind": fault, "target": target, "params": params, "tick": tick, "injected": True}

    def _strike(self, runner: CommandRunnerLike) -> tuple[str, dict[str, Any]]:
        """Make the scenario's fault happen; returns what it hit and how."""
        fault = self.scenario.fault
        if fault == "kill9":
            target, params = "service process", helper(runner, "kill_service")
        elif fault == "chmod":
            res = runner.run(f"chmod 000 {DB_PATH}", 10)
            target, params = DB_PATH, {"command": f"chmod 000 {DB_PATH}", "exit_code": res.exit_code}
        elif fault == "port_squat":
            target, params = f"port {self.port}", helper(runner, "squat", port=self.port)
            self._stray_pids.append(params["squatter_pid"])
            params["restart"] = runner.run("./service/start.sh", 30).text.strip()[-300:]
        elif fault == "net_unreachable":
            target = f"route to {AUDIT_HOST} (the audit service, port {AUDIT_PORT})"
            params = make_unreachable(runner, AUDIT_HOST)
        else:
            target, params = "service/config.json", helper(runner, "corrupt_config", path="service/config.json")
            params["killed"] = helper(runner, "kill_service")["killed"]
            params["restart"] = runner.run("./service/start.sh", 30).text.strip()[-300:]
        return target, params

    def on_tick(self, runner: CommandRunnerLike, tick: int, seed: int) -> list[dict[str, Any]]:
        if self.seed != seed:
            self._configure(seed)
        self._last_tick = tick
        if self._fault is None:
            if tick == self.inject_tick:
                return [self._inject(runner, tick)]
            if tick > self.inject_tick:  # resumed after the fault struck: it is in the world already
                self._fault = {"tick": self.inject_tick, "ts": None, "at": None, "reconstructed": True}
                if self.scenario.fault in NETWORK_FAULTS:  # ...except a route: the new sandbox has a new namespace
                    try:
                        self._fault["remade"] = self._strike(runner)[1]
                    except TaskError as err:
                        self._fault["remade"] = {"error": str(err)}
            return []
        if self._first_healthy is None:
            result = self.check(runner)
            if result["healthy"] and result["data_ok"]:
                t, iso = _now()
                self._first_healthy = {"tick": tick, "ts": t, "at": iso, "by": "per-tick check"}
        return []

    def verify(self, workspace: Path, runner: CommandRunnerLike) -> VerifierResult:
        start = time.monotonic()
        result = self.check(runner)
        t, iso = _now()
        tick = self._last_tick
        if self._fault is None:
            stage = "before_fault"
        elif not result["healthy"]:
            stage = "down"
        elif not result["data_ok"]:
            stage = "healthy_data_lost"
        else:
            stage = "recovered"
        details: dict[str, Any] = {"scenario": self.scenario.id, "fault": self.scenario.fault, "port": self.port,
                                   "inject_tick": self.inject_tick, "fault_struck": self._fault,
                                   "checked_at_tick": tick, "checked_at": iso, "check": result}
        if stage == "recovered" and self._fault is not None:
            first = self._first_healthy or {"tick": tick, "ts": t, "at": iso, "by": "this check"}
            details["first_healthy"] = first
            details["mttr_ticks"] = None if first["tick"] is None else first["tick"] - self._fault["tick"]
            details["mttr_s"] = round(first["ts"] - self._fault["ts"], 3) if self._fault["ts"] else None
        sent = result["sentinels"]
        summary = {
            "before_fault": "nothing has failed yet: keep watching the service",
            "down": f"the service is down: health {result['health']['status'] or 'no answer'}, round trip "
                    f"{'ok' if result['roundtrip']['ok'] else 'failing'}",
            "healthy_data_lost": f"healthy, but data was lost: {sent['intact']}/{sent['total']} earlier records "
                                 f"intact, round trip stored in {DB_PATH}: {result['roundtrip']['in_db_file']}, "
                                 f"in the audit trail: {result['roundtrip']['audited']}",
            "recovered": f"recovered with all {sent['total']} earlier records intact"
                         + (f" (MTTR {details['mttr_ticks']} ticks)" if details.get("mttr_ticks") is not None else ""),
        }[stage]
        return VerifierResult(passed=stage == "recovered", summary=summary, stage=stage, details=details,
                              duration_s=round(time.monotonic() - start, 3))

    def close(self) -> None:
        """Stray processes die with a bwrap sandbox; without one (`sandbox none`) they must be ended here."""
        runner = self._runner
        if runner is not None and getattr(runner, "kind", "bwrap") == "none":
            with contextlib.suppress(TaskError):
                helper(runner, "kill_service")
                if self._stray_pids:
                    helper(runner, "kill_pids", pids=self._stray_pids)
        self._runner = None
