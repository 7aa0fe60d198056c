"""The Ray engine on a real two-node Ray cluster on this machine (every node bound to 127.0.0.1).

The cluster is started once for the module (Ray on two shared cores takes seconds per node) and stopped
at the end, also when a test fails: every process of a node shares the session its `ray start` opened,
so the fixture ends exactly those sessions.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import bloodwork.sweep
from bloodwork.chronos.files import read_jsonl, sha256_file
from bloodwork.chronos.journal import read_events, verify
from bloodwork.chronos.run import RunManifest, RunPaths, find_runs
from bloodwork.sweep import Sweep, SweepError, SweepSpec, cells
from tests.conftest import make_task

# Ray's own switch: with it off, a node and a driver use 127.0.0.1, and Ray's servers listen on loopback only.
# It is read when ray is imported, so it is set before anything here imports ray.
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}

# `ray start` refuses to join a second node while that switch is off; this passes its guard and keeps the
# node's address on loopback (the test's own cluster, nothing else).
JOIN_ON_LOOPBACK = """
import sys
import ray._private.ray_constants as rc
import ray._private.services as services
rc.ENABLE_RAY_CLUSTER = True
services.get_node_ip_address = lambda address=None: "127.0.0.1"
from ray.scripts.scripts import main
sys.argv = ["ray", *sys.argv[1:]]
main()
"""

POLICY = '''
import json, time

def policy(call, messages):
    time.sleep(DELAY)
    t = call.tick
    if t == HALT_AT - 1:
        op = {"name": "SYS_WRITE", "path": "hello.txt", "content": "hello\\n"}
    elif t == HALT_AT:
        op = {"name": "SYS_HALT", "reason": "hello.txt written"}
    elif t % 5 == 2:
        op = {"name": "SYS_READ", "path": "missing-%d.txt" % t}
    elif t % 5 == 4:
        op = {"name": "SYS_WRITE", "path": "notes/t%d.txt" % t, "content": "tick %d\\n" % t}
    else:
        op = {"name": "SYS_EXEC", "cmd": "echo %d >> log.txt && wc -l log.txt" % t}
    return json.dumps({"thought": "tick %d" % t, "q_next": "at %d" % t, "op": op})
'''


def quick_task(root: Path) -> Path:
    """conftest's hello task with a verifier that is one grep, not a pytest run (each run verifies once)."""
    folder = make_task(root)
    spec = yaml.safe_load((folder / "task.yaml").read_text())
    spec["verifier"] = {"command": "grep -qx hello hello.txt", "timeout_s": 30, "report": "exit_code"}
    (folder / "task.yaml").write_text(yaml.safe_dump(spec))
    return folder


def write_policy(folder: Path, *, delay: float, halt_at: int) -> Path:
    path = folder / "policy.py"
    path.write_text(POLICY.replace("DELAY", str(delay)).replace("HALT_AT", str(halt_at)))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A head and a second node, each started in a session of its own so that it can be ended by id."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        src = str(Path(bloodwork.sweep.__file__).resolve().parents[1])
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
                    "BLOODWORK_RAY_SCRATCH": str(root / "scratch")}
        self.sessions: dict[str, int] = {}
        self.ray = str(Path(sys.executable).parent / "ray")

    def _start(self, name: str, argv: list[str]) -> None:
        log = self.root / f"{name}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(argv, env=self.env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        self.sessions[name] = proc.pid
        if proc.wait(timeout=240) != 0:
            raise RuntimeError(f"{name} did not start:\n{log.read_text()[-2000:]}")

    def start(self) -> None:
        # Fast health checks, so that a killed node is declared dead in seconds rather than half a minute;
        # workers at the tests' own priority (Ray's default nice 15 starves them on a busy shared machine).
        checks = json.dumps({"health_check_period_ms": 1000, "health_check_timeout_ms": 2000,
                             "health_check_failure_threshold": 5, "worker_niceness": 0})
        self._start("head", [self.ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={self.port}",
                             "--num-cpus=1", "--object-store-memory=100000000", "--include-dashboard=false",
                             "--disable-usage-stats", f"--temp-dir={self.root / 't'}", f"--system-config={checks}"])
        self.add_node()

    def add_node(self) -> None:
        self._start("node2", [sys.executable, "-c", JOIN_ON_LOOPBACK, "start", f"--address={self.address}",
                              "--node-ip-address=127.0.0.1", "--num-cpus=1", "--object-store-memory=100000000"])

    def kill(self, name: str) -> None:
        """SIGKILL every process of the session the node's `ray start` opened."""
        import psutil

        sid = self.sessions.pop(name)
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) == sid:
                    proc.kill()
            except (ProcessLookupError, psutil.Error):
                continue

    def stop(self) -> None:
        for name in list(self.sessions):
            self.kill(name)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # Loopback, and a token of the test's own that every node and driver here presents (nothing lands in
    # ~/.ray). Set before ray is imported: Ray reads these switches then.
    env = {**LOOPBACK, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    pytest.importorskip("ray")
    # Short: Ray's socket paths live under it and must stay under 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="bwray-", dir="/tmp"))
    c: Cluster | None = None
    try:
        c = Cluster(root)
        c.start()
        yield c
    finally:
        if c is not None:
            c.stop()
        shutil.rmtree(root, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---- comparing run directories, timestamps aside ----------------------------------------------------

# Wall-clock keys: `ts`, durations (`_s`, `_ms`), datetimes (`_at`) and timestamps (`_ts`, a panic streak's
# `first_ts`: which cells panic depends on their run ids, which depend on the tmp path).
TIMING_KEY = re.compile(r"^(ts|hash|prev)$|_(s|ms|at|ts)$")
TIMING_TEXT = re.compile(r"\b\d+(?:\.\d+)?s\b")


def scrub(value: Any) -> Any:
    """Drop timestamps, durations and the hash chain built on them; mask durations inside texts."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if not TIMING_KEY.search(k)}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    if isinstance(value, str):
        return TIMING_TEXT.sub("#s", value)
    return value


def evidence(run_dir: Path) -> dict[str, Any]:
    paths = RunPaths(run_dir)
    report = verify(paths.journal)
    assert report.ok and not report.torn_tail, (run_dir, report)
    manifest = json.loads(paths.manifest.read_text())
    workspace = {str(p.relative_to(paths.workspace)): p.read_bytes()
                 for p in sorted(paths.workspace.rglob("*")) if p.is_file()}
    return {"files": sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()),
            "manifest": scrub({k: v for k, v in manifest.items() if k != "command_line"}),
            "events": [scrub(e.model_dump()) for e in read_events(paths.journal)],
            "trace": scrub(read_jsonl(paths.trace)), "dirty": scrub(read_jsonl(paths.dirty)),
            "context": scrub(read_jsonl(paths.context_ticks)), "blobs": scrub(read_jsonl(paths.blobs)),
            "workspace": workspace}


def attempts(out: Path) -> list[dict[str, Any]]:
    return read_jsonl(out / "ray_attempts.jsonl")


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **LOOPBACK, "COLUMNS": "250"}
    return subprocess.run([sys.executable, "-m", "bloodwork.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


# ---- tests -------------------------------------------------------------------------------------------

def test_runs_on_two_nodes_equal_the_local_engines(cluster: Cluster, tmp_path: Path) -> None:
    task = quick_task(tmp_path)
    policy = write_policy(tmp_path, delay=0.02, halt_at=8)
    spec = SweepSpec(tasks=[str(task)], models=[f"scripted:{policy}"], chaos=["off", "exec_fail=0.3,write_deny=0.3"],
                     seeds=[0, 1, 2], ticks=10, workers=2)
    grid = cells(spec)
    assert len(grid) == 6
    local_out, ray_out = tmp_path / "local", tmp_path / "ray"
    local = Sweep(spec, local_out)
    try:
        local.run()
    finally:
        local.close()

    args = ["sweep", "--engine", "ray", "--ray-address", cluster.address, "--tasks", str(task),
            "--models", f"scripted:{policy}", "--chaos", "off;exec_fail=0.3,write_deny=0.3", "--seeds", "0-2",
            "--ticks", "10", "--out", str(ray_out)]
    done = cli(*args)
    assert done.returncode == 0, done.stderr[-3000:]

    statuses = set()
    for cell in grid:
        ours, theirs = evidence(ray_out / "runs" / cell.cell_id), evidence(local_out / "runs" / cell.cell_id)
        for part in ours:
            assert ours[part] == theirs[part], (cell.cell_id, part)
        manifest = RunManifest.load(RunPaths(ray_out / "runs" / cell.cell_id))
        assert manifest.command_line == ["bloodwork", "sweep", str(ray_out)]
        statuses.add(manifest.status.value)
    assert "completed" in statuses
    kinds = {e["kind"] for c in grid for e in evidence(ray_out / "runs" / c.cell_id)["events"]}
    assert {"trap", "chaos", "recovery"} <= kinds

    log = attempts(ray_out)
    ends = [r for r in log if r["event"] == "end"]
    assert sorted(r["cell_id"] for r in ends) == sorted(c.cell_id for c in grid)
    assert all(r["outcome"] == "ok" and r["ship_bytes"] > 0 for r in ends)
    assert len({r["node_id"] for r in ends}) == 2, "the runs should spread over both nodes"
    assert not (ray_out / ".incoming").exists() and not (ray_out / "interrupted").exists()
    # Each attempt's start is logged, also when it ended before the driver's poll saw it running.
    starts = [r for r in log if r["event"] == "start"]
    assert sorted((r["cell_id"], r["attempt"]) for r in starts) == sorted((r["cell_id"], r["attempt"]) for r in ends)
    # Each run wrote in its node's scratch, and the node deleted it once shipped.
    wrote = [Path(r["run_dir"]) for r in starts]
    assert wrote and all(p.is_relative_to(cluster.root / "scratch") and not p.exists() for p in wrote)

    # Started again with the same --out: every run is kept as it is, nothing is submitted.
    digests = {c.cell_id: sha256_file(ray_out / "runs" / c.cell_id / ".journal.log") for c in grid}
    again = cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "6 already finished" in again.stdout
    assert {c.cell_id: sha256_file(ray_out / "runs" / c.cell_id / ".journal.log") for c in grid} == digests
    assert attempts(ray_out) == log


def test_interrupted_runs_resume_from_the_furthest_copy(cluster: Cluster, tmp_path: Path) -> None:
    """1. Without an address the command starts its own Ray instance and stops it, also on Ctrl-C; the runs
    it interrupted come back whole. 2. On the cluster, a driver killed outright leaves its runs in the
    nodes' scratch. 3. The next sweep resumes each run from its furthest copy: there, the node's."""
    import psutil

    task = quick_task(tmp_path)
    # 18 s a run: a loaded machine's Ray may report a start late, and the run must still be going then
    policy = write_policy(tmp_path, delay=0.6, halt_at=999)
    out = tmp_path / "sweep"
    args = ["sweep", "--engine", "ray", "--tasks", str(task), "--models", f"scripted:{policy}", "--chaos", "off",
            "--seeds", "0-1", "--ticks", "30", "--out", str(out)]
    grid = cells(SweepSpec(tasks=[str(task)], models=[f"scripted:{policy}"], chaos=["off"], seeds=[0, 1], ticks=30))

    proc = _start_when_runs_go(args, out, starts=1, scratch=tmp_path / "scratch")
    ours = lambda: [p for p in psutil.process_iter(["name"]) if _sid(p.pid) == proc.pid]  # noqa: E731
    assert any("raylet" in (p.info["name"] or "") for p in ours()), "the command started no Ray instance"
    proc.send_signal(signal.SIGINT)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "rerun the same command to resume" in text, text[-2000:]
    deadline = time.monotonic() + 30
    while ours() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ours(), f"the command left Ray processes behind: {[p.info['name'] for p in ours()]}"
    interrupted = {c.cell_id: RunManifest.load(RunPaths(out / "runs" / c.cell_id)).ticks for c in grid
                   if (out / "runs" / c.cell_id / "run.json").is_file()}
    assert interrupted, "no interrupted run came back"
    for cell_id, ticks in interrupted.items():
        paths = RunPaths(out / "runs" / cell_id)
        assert RunManifest.load(paths).status.value == "interrupted" and ticks < 30 and verify(paths.journal).ok
    assert max(interrupted.values()) > 0, "no interrupted run had committed a tick"

    cluster_args = [*args, "--ray-address", cluster.address]
    before = len([r for r in attempts(out) if r["event"] == "start"])
    proc = _start_when_runs_go(cluster_args, out, starts=before + 2)
    proc.kill()
    proc.communicate(timeout=60)
    orphans = {r["cell_id"] for r in attempts(out)[before:] if r["event"] == "start"}
    assert orphans == {c.cell_id for c in grid}

    done = cli(*cluster_args)
    assert done.returncode == 0, done.stderr[-3000:]
    last = {r["cell_id"]: r for r in attempts(out) if r["event"] == "end"}
    for cell in grid:
        paths = RunPaths(out / "runs" / cell.cell_id)
        manifest = RunManifest.load(paths)
        assert manifest.status.value == "max_ticks" and manifest.ticks == 30 and verify(paths.journal).ok
        assert last[cell.cell_id]["resumed_from"] == "node scratch", last[cell.cell_id]
        # resumed once by the killed driver's attempt (from the interrupted copy, if there was one), then here
        assert manifest.resumes == (2 if cell.cell_id in interrupted else 1)


def _committed_in(scratch: Path) -> int:
    """Runs under a node scratch folder that committed a tick."""
    return sum(1 for r in scratch.glob("bloodwork-ray/*/*/runs/*/registers.json") if r.stat().st_size)


def _start_when_runs_go(args: list[str], out: Path, *, starts: int, scratch: Path | None = None
                        ) -> subprocess.Popen[str]:
    """Start the CLI in a session of its own; return once `starts` attempts began and ran a few ticks. With
    `scratch` (the command's own Ray instance keeps its runs there), a run that committed a tick counts as
    begun too: on a loaded machine the driver may log a start only when the run has ended."""
    env = {**os.environ, "COLUMNS": "250"}
    env.pop("RAY_ADDRESS", None)
    if scratch is not None:
        env["BLOODWORK_RAY_SCRATCH"] = str(scratch)
    # SIGINT as a terminal has it: an earlier in-process test may leave it ignored, and children inherit that
    proc = subprocess.Popen([sys.executable, "-m", "bloodwork.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    try:
        while (len([r for r in _maybe_attempts(out) if r["event"] == "start"]) < starts
               and (scratch is None or _committed_in(scratch) < starts)):
            assert proc.poll() is None, proc.communicate()[0][-2000:]
            assert time.monotonic() < deadline, "the runs did not start"
            time.sleep(0.3)
    except BaseException:
        proc.kill()
        raise
    time.sleep(2.0)  # a few ticks committed
    return proc


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _maybe_attempts(out: Path) -> list[dict[str, Any]]:
    return attempts(out) if (out / "ray_attempts.jsonl").is_file() else []


@pytest.mark.model
def test_local_models_are_served_by_one_host_per_node(cluster: Cluster, tmp_path: Path) -> None:
    from bloodwork.sweep_ray import RaySweep

    task = quick_task(tmp_path)
    spec = SweepSpec(tasks=[str(task)], models=["local:smollm2"], chaos=["off"], seeds=[0, 1], ticks=2,
                     model_options={"max_new_tokens": 8})
    sweep = RaySweep(spec, tmp_path / "sweep", address=cluster.address)
    try:
        results = sweep.run()
        held = sweep.held_models()
    finally:
        sweep.close()
    assert sorted(r.status for r in results) == ["max_ticks", "max_ticks"]
    assert len(held) == 2, "one host per node"
    # A node's host built the model for the runs on that node; a node that ran nothing holds nothing.
    ran_on = {r["cell_id"]: r["node_id"] for r in attempts(tmp_path / "sweep") if r["event"] == "end"}
    for node, keys in held.items():
        mine = [c for c in cells(spec) if ran_on[c.cell_id] == node]
        assert bool(keys) == bool(mine) and all(k.startswith("local:smollm2") for k in keys), (node, keys)
    for cell in cells(spec):
        paths = RunPaths(tmp_path / "sweep" / "runs" / cell.cell_id)
        assert verify(paths.journal).ok
        manifest = RunManifest.load(paths)
        assert manifest.provenance.value == "real" and manifest.oracle["backend"] == "local"
        calls = read_jsonl(paths.dirty)
        # Counted by the model's own tokenizer, which came from the node's host: an exact int per call.
        assert len(calls) == 2 and all(isinstance(c["prompt_tokens"], int) and c["prompt_tokens"] > 50
                                       for c in calls)


def test_with_a_shared_output_runs_write_there_and_resume_in_place(cluster: Cluster, tmp_path: Path) -> None:
    import ray

    from bloodwork.sweep_ray import RaySweep

    task = quick_task(tmp_path)
    policy = write_policy(tmp_path, delay=0.2, halt_at=999)
    spec = SweepSpec(tasks=[str(task)], models=[f"scripted:{policy}"], chaos=["off"], seeds=[0, 1], ticks=12)
    local = Sweep(spec, tmp_path / "local")
    try:
        local.run()
    finally:
        local.close()
    out = tmp_path / "shared"
    sweep = RaySweep(spec, out, address=cluster.address, shared_out=True)
    killed: list[str] = []

    def on_progress(p: Any) -> None:
        for r in p.running:
            if not killed and (r.tick or 0) >= 3 and r.pid and r.node_id == ray.get_runtime_context().get_node_id():
                killed.append(r.cell_id)
                os.kill(r.pid, signal.SIGKILL)

    try:
        results = {r.cell_id: r for r in sweep.run(on_progress=on_progress)}
    finally:
        sweep.close()
    assert killed, "no worker was killed"
    ends = [r for r in attempts(out) if r["event"] == "end" and r["outcome"] == "ok"]
    assert len(ends) == 2 and all("ship_bytes" not in r for r in ends), "nothing is shipped with a shared output"
    for cell in cells(spec):
        if cell.cell_id == killed[0]:
            assert results[cell.cell_id].resumed_from == "shared out" and results[cell.cell_id].attempts == 2
            paths = RunPaths(out / "runs" / cell.cell_id)
            assert RunManifest.load(paths).resumes == 1 and RunManifest.load(paths).ticks == 12
            assert verify(paths.journal).ok
        else:
            assert evidence(out / "runs" / cell.cell_id) == evidence(tmp_path / "local" / "runs" / cell.cell_id)


def test_a_killed_node_and_a_killed_worker_leave_every_run_verified(cluster: Cluster, tmp_path: Path) -> None:
    import ray

    from bloodwork.sweep_ray import RaySweep

    if "node2" not in cluster.sessions:
        cluster.add_node()
    task = quick_task(tmp_path)
    policy = write_policy(tmp_path, delay=0.2, halt_at=999)
    spec = SweepSpec(tasks=[str(task)], models=[f"scripted:{policy}"], chaos=["off", "exec_fail=0.3"],
                     seeds=[0, 1, 2], ticks=12)
    out = tmp_path / "sweep"
    sweep = RaySweep(spec, out, address=cluster.address, retries=2)
    killed: dict[str, str] = {}

    def on_progress(p: Any) -> None:
        head = ray.get_runtime_context().get_node_id()
        for r in p.running:
            if (r.tick or 0) < 3 or r.attempt > 1 or r.cell_id in killed.values():
                continue
            if "node" not in killed and r.node_id != head:
                killed["node"] = r.cell_id
                cluster.kill("node2")
            elif "worker" not in killed and r.node_id == head and r.pid:
                killed["worker"] = r.cell_id
                os.kill(r.pid, signal.SIGKILL)

    try:
        results = {r.cell_id: r for r in sweep.run(on_progress=on_progress)}
    finally:
        sweep.close()
    assert set(killed) == {"node", "worker"}, f"the faults did not happen: {killed}"
    assert len(results) == 6
    for cell in cells(spec):
        paths = RunPaths(out / "runs" / cell.cell_id)
        report = verify(paths.journal)
        assert report.ok and not report.torn_tail
        assert RunManifest.load(paths).status.value == "max_ticks" and results[cell.cell_id].ticks == 12
    # `bloodwork extract OUT` counts each cell once: the interrupted partial attempts are left out.
    assert find_runs([out]) == sorted(out / "runs" / c.cell_id for c in cells(spec))
    log = attempts(out)
    for cell_id, res in results.items():
        failures = [r for r in log if r["cell_id"] == cell_id and r["event"] == "end" and r.get("outcome") != "ok"]
        assert len(failures) == res.attempts - 1, (cell_id, failures)

    # The killed worker's node lived on: its retry resumed from the last committed tick in that node's scratch.
    worker = results[killed["worker"]]
    assert worker.attempts == 2 and worker.resumed_from == "node scratch"
    paths = RunPaths(out / "runs" / killed["worker"])
    assert RunManifest.load(paths).resumes == 1
    assert [e.kind for e in read_events(paths.journal)].count("resume") == 1

    # The killed node took its scratch with it: the run started again elsewhere, and what the driver had
    # mirrored of the lost attempt is kept as interrupted evidence whose journal verifies.
    lost = results[killed["node"]]
    assert lost.attempts >= 2 and lost.resumed_from is None
    assert RunManifest.load(RunPaths(out / "runs" / killed["node"])).resumes == 0
    assert any(r.get("outcome") == "node died" for r in log if r["cell_id"] == killed["node"]), log
    kept = [p for p in (out / "interrupted").iterdir() if p.name.startswith(killed["node"] + ".a")]
    assert kept
    partial = RunPaths(kept[0])
    assert verify(partial.journal).ok
    manifest = RunManifest.load(partial)
    assert manifest.status.value == "interrupted" and 1 <= manifest.ticks < 12
    assert json.loads((kept[0] / "interrupted.json").read_text())["reason"] == "node died"


# ---- no cluster needed -------------------------------------------------------------------------------

def test_ray_is_not_imported_unless_the_ray_engine_runs(tmp_path: Path) -> None:
    code = ("import sys, bloodwork.cli, bloodwork.sweep, bloodwork.sweep_ray; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_ray_options_are_refused_where_they_do_not_apply(tmp_path: Path) -> None:
    script = tmp_path / "s.yaml"
    script.write_text(yaml.safe_dump(["x"]))
    base = ["sweep", "--tasks", str(make_task(tmp_path)), "--models", f"scripted:{script}", "--chaos", "off",
            "--out", str(tmp_path / "o")]
    for extra, says in ((["--engine", "spark"], "use local or ray"),
                        (["--shared-out"], "--engine ray only"),
                        (["--engine", "ray", "--ray-address", f"127.0.0.1:{free_port()}"], "no Ray cluster answers")):
        done = cli(*base, *extra, timeout=120)
        assert done.returncode == 2, done.stderr
        assert says in done.stderr and "Traceback" not in done.stderr
    # Without ray installed (an import that fails), the same one line says what to install.
    code = "import sys; sys.modules['ray'] = None; from bloodwork.cli import main; sys.argv[0] = 'bloodwork'; main()"
    done = subprocess.run([sys.executable, "-c", code, *base, "--engine", "ray"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 2 and "pip install 'bloodwork[ray]'" in done.stderr, done.stderr


def test_a_shipped_run_cannot_write_outside_its_folder(tmp_path: Path) -> None:
    from bloodwork.sweep_ray import pack, unpack

    run = tmp_path / "cell"
    (run / "workspace").mkdir(parents=True)
    (run / "workspace" / "a.txt").write_text("a")
    (run / "workspace" / "link").symlink_to("/etc/hostname")
    back = unpack(pack(run), tmp_path / "back", "cell")
    assert (back / "workspace" / "a.txt").read_text() == "a"
    assert os.readlink(back / "workspace" / "link") == "/etc/hostname"  # kept as the agent left it
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("elsewhere/evil.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(SweepError):
        unpack(buf.getvalue(), tmp_path / "back2", "cell")
    assert not (tmp_path / "back2" / "elsewhere").exists()
