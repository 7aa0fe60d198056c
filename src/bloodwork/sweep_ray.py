"""`bloodwork sweep --engine ray`: the local engine's grid, spread over a Ray cluster.

Each run is a Ray task that declares what it needs (one CPU and some memory); Ray decides where it runs.
Local models live in one `ModelHost` actor per node, which loads each model once and answers every run on
its node; API, scripted and replay specs need no actor. No shared filesystem is assumed: a run writes
its directory in its node's scratch space and returns it as a tarball; the driver verifies the journal
and places the directory at `OUT/runs/<cell_id>/`, exactly where and as the local engine would. With
`shared_out`, runs write there directly (the path must be the same on every node).

Faults: a run whose worker or node dies is retried, at most `retries` times. Where its directory is
reachable (its node is still alive, the driver holds an interrupted copy, or the output is shared) the
retry resumes from the last committed tick with the kernel's resume; otherwise it starts again, and the
journal prefix the driver mirrored while the run went on is kept under `OUT/interrupted/<cell_id>.a<N>/`
with status `interrupted`. Every attempt is two lines of `OUT/ray_attempts.jsonl` (start, end).

`ray` is imported only inside functions of this module, and only when this engine runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from bloodwork.chronos.files import atomic_write
from bloodwork.chronos.journal import canonical_json, verify
from bloodwork.chronos.run import RunManifest, RunPaths, RunStatus
from bloodwork.oracles.base import CallInfo, Completion, Message, Oracle
from bloodwork.sweep import TERMINAL, Cell, CellResult, Sweep, SweepError, SweepSpec, _cell_state, cells

RAY_MISSING = "the ray engine needs Ray on this machine and on every node: pip install 'bloodwork[ray]'"
NAMESPACE = "bloodwork"
RUN_CPUS = 1
RUN_MEMORY = 512 * 2**20  # a kernel, its sandbox server and the commands it runs
HOST_MEMORY = 2 * 2**30  # SmolLM2 in float32 held 1.06 GB RSS in one process (README)
HOST_THREADS = 16  # concurrent calls a host accepts: the runs of its node, whose calls the model's engine queues
REPORT_EVERY_S = 0.5  # how often a run tells the driver its tick and sends its newly committed journal lines
POLL_S = 0.5
HOST_WAIT_S = 120.0
STOP_WAIT_S = 60.0
ATTEMPTS_FILE = "ray_attempts.jsonl"
_LOCAL_TOKEN = secrets.token_hex(32)  # for the Ray instances this process starts; never written anywhere
INTERRUPTED_DIR = "interrupted"


class RunLost(Exception):
    """The run could not go on for a reason outside it (its model host died): retry it."""


class _HostLost(BaseException):
    """Raised inside the kernel's loop when the node's model host is gone.

    A BaseException on purpose: the kernel turns an Exception into a `crashed` run (a kernel bug), and a
    lost actor is neither the run's nor the kernel's fault. Like KeyboardInterrupt, it unwinds the loop and
    leaves the run at its last committed tick, ready for a resume."""


def needs_host(model: str) -> bool:
    """Local models are loaded on the node (once, in its host); every other spec is a client or a script."""
    return model.partition(":")[0] == "local"


def sweep_key(spec: SweepSpec, out: Path) -> str:
    """Names this sweep on the cluster (scratch folders, actors): the grid plus where its results go."""
    text = canonical_json({"grid": spec.grid_key(), "out": str(out.resolve())})
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def scratch_dir(key: str, node_id: str) -> Path:
    """Where a node keeps the runs of one sweep; `BLOODWORK_RAY_SCRATCH` moves it off the default temp dir."""
    root = Path(os.environ.get("BLOODWORK_RAY_SCRATCH") or tempfile.gettempdir())
    return root / "bloodwork-ray" / key / node_id[:16]


def host_name(key: str, node_id: str) -> str:
    return f"bloodwork-host-{key}-{node_id}"


# ---- moving run directories between nodes ------------------------------------------------------------

def pack(run_dir: Path) -> bytes:
    """A run directory as gzip'd tar bytes (level 1: journals are JSON text; speed matters more than size)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        tar.add(run_dir, arcname=run_dir.name)
    return buf.getvalue()


def unpack(data: bytes, dest: Path, name: str) -> Path:
    """Extract a packed run into `dest/name`; every member must lie under `name/` (symlinks are kept as links)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.name != name and not member.name.startswith(f"{name}/"):
                raise SweepError(f"a shipped run holds {member.name!r} outside {name}/")
        tar.extractall(dest, filter="tar")
    return dest / name


# ---- what crosses the wire -------------------------------------------------------------------------

class Job(BaseModel):
    """One attempt at one cell, as the driver sends it."""

    spec: SweepSpec
    cell: Cell
    attempt: int
    out: str = Field(description="the driver's --out, absolute: where shared-output runs write")
    command_line: list[str]
    key: str
    shared_out: bool = False
    partial: bytes | None = Field(default=None, description="a packed interrupted run the driver holds")


class RayCellResult(CellResult):
    attempts: int = 1
    node: str | None = None
    resumed_from: str | None = None


class AttemptRecord(BaseModel):
    """A line of `ray_attempts.jsonl`: an attempt started (where) or ended (how, what it cost to ship)."""

    cell_id: str
    attempt: int
    event: str  # start | end
    node_id: str | None = None
    node_ip: str | None = None
    pid: int | None = None
    resumed_from: str | None = None
    run_dir: str | None = None  # where the attempt wrote, on its node
    began: float | None = None  # the node's clock when the attempt began (`ts` is the driver's when it learnt)
    outcome: str | None = None  # ok | node died | worker died | ... | error | cancelled
    status: str | None = None
    ticks: int | None = None
    error: str | None = None
    kept: str | None = None
    ship_bytes: int | None = None
    pack_s: float | None = None
    fetch_s: float | None = None
    place_s: float | None = None
    run_s: float | None = None
    ts: float = Field(default_factory=lambda: round(time.time(), 3))


class NodeCounts(BaseModel):
    label: str
    done: int = 0
    running: int = 0
    failed: int = 0


class RunningRun(BaseModel):
    cell_id: str
    attempt: int
    node: str
    node_id: str
    pid: int | None = None
    tick: int | None = None


class Progress(BaseModel):
    """What the driver knows now: per node, runs done / running / failed (failed attempts included)."""

    total: int
    finished: int
    nodes: dict[str, NodeCounts]
    running: list[RunningRun]


# ---- actors ------------------------------------------------------------------------------------------

class Board:
    """Lives on the driver's node. Runs report to it without waiting; the driver reads it every poll.

    It also mirrors each run's committed journal lines, so a run whose node dies leaves its journal (a
    verifiable prefix) and manifest with the driver."""

    def __init__(self) -> None:
        self.live: dict[str, dict[str, Any]] = {}

    def started(self, key: str, info: dict[str, Any]) -> None:
        self.live[key] = {**info, "tick": None, "manifest": None, "journal": bytearray()}

    def report(self, key: str, tick: int, manifest: str | None, journal: bytes) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry["tick"] = tick
        if manifest is not None:
            entry["manifest"] = manifest
        entry["journal"] += journal

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {k: {f: v for f, v in e.items() if f not in ("manifest", "journal")} for k, e in self.live.items()}

    def take(self, key: str) -> dict[str, Any] | None:
        entry = self.live.pop(key, None)
        if entry is not None:
            entry["journal"] = bytes(entry["journal"])
        return entry


class ModelHost:
    """One per node: holds the models of the grid's local specs, built as the local engine builds them
    (`Sweep.oracle`, so a batching engine behind `make_oracle` serves all runs of the node together)."""

    def __init__(self, spec: SweepSpec) -> None:
        self.sweep = Sweep(spec, Path(tempfile.gettempdir()))  # only its oracle cache is used

    def identity(self, model: str, seed: int) -> tuple[str, str, dict[str, Any], Any]:
        oracle = self.sweep.oracle(model, seed)
        return oracle.spec, oracle.provenance, oracle.describe(), oracle.tokenizer

    def complete(self, model: str, seed: int, messages: list[Message], schema: dict[str, Any] | None,
                 call: CallInfo | None) -> Completion:
        return self.sweep.oracle(model, seed).complete(messages, schema, call=call)

    def held(self) -> list[str]:
        """The oracles this host has built (`spec|seed`, as the local engine keys them)."""
        return sorted(self.sweep._oracles)


class HostedOracle:
    """An Oracle whose model lives in the node's ModelHost; the kernel sees the same spec, tokenizer and
    description as with the model in-process."""

    def __init__(self, host: Any, model: str, seed: int) -> None:
        import ray

        self._ray = ray
        self._host, self._model, self._seed = host, model, seed
        try:
            self.spec, self.provenance, self._describe, self.tokenizer = ray.get(host.identity.remote(model, seed))
        except ray.exceptions.RayActorError as err:
            raise RunLost(f"the model host of this node died: {_one_line(err)}") from err

    def complete(self, messages: list[Message], schema: dict[str, Any] | None = None, *,
                 call: CallInfo | None = None) -> Completion:
        try:
            return self._ray.get(self._host.complete.remote(self._model, self._seed, messages, schema, call))
        except self._ray.exceptions.RayActorError as err:
            raise _HostLost(f"the model host of this node died: {err}") from err

    def describe(self) -> dict[str, Any]:
        return dict(self._describe)

    def close(self) -> None:
        return None  # the host keeps the model for the node's other runs


# ---- the node side -----------------------------------------------------------------------------------

class _NodeSweep(Sweep):
    """The local engine's `run_cell` on a node: hosted oracles for local models, the driver's command line."""

    def __init__(self, spec: SweepSpec, root: Path, command_line: list[str], key: str) -> None:
        super().__init__(spec, root)
        self.command_line = command_line
        self.key = key

    def oracle(self, spec: str, seed: int) -> Oracle:
        if not needs_host(spec):
            return super().oracle(spec, seed)
        with self._oracle_lock:
            cache_key = f"{spec}|{seed}"
            if cache_key not in self._oracles:
                self._oracles[cache_key] = HostedOracle(_node_host(self.key), spec, seed)
            return self._oracles[cache_key]


_node_sweeps: dict[tuple[str, str, bool], _NodeSweep] = {}


def _node_sweep(job: Job, root: Path) -> _NodeSweep:
    """One per worker process and sweep: tasks and scripted policies load once, not once per run."""
    cache_key = (job.key, str(root), job.shared_out)
    if cache_key not in _node_sweeps:
        _node_sweeps[cache_key] = _NodeSweep(job.spec, root, job.command_line, job.key)
    return _node_sweeps[cache_key]


def _node_host(key: str) -> Any:
    """The ModelHost of the node this code runs on (the driver creates one per node; wait for it)."""
    import ray

    name = host_name(key, ray.get_runtime_context().get_node_id())
    deadline = time.monotonic() + HOST_WAIT_S
    while True:
        try:
            return ray.get_actor(name)
        except ValueError:
            if time.monotonic() > deadline:
                raise RunLost(f"no model host on this node after {HOST_WAIT_S:.0f} s") from None
            time.sleep(0.5)


class _Reporter:
    """The kernel's on_tick hook on a node: tick and new journal bytes to the Board, at most every REPORT_EVERY_S."""

    def __init__(self, board: Any, key: str, run_dir: Path, mirror: bool) -> None:
        self.board, self.key, self.paths, self.mirror = board, key, RunPaths(run_dir), mirror
        self.offset = 0
        self.sent_manifest = False
        self.last = 0.0

    def __call__(self, info: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - self.last < REPORT_EVERY_S:
            return
        self.last = now
        chunk = b""
        manifest = None
        if self.mirror:
            # on_tick runs right after a commit: the file holds committed lines only, each one whole.
            with open(self.paths.journal, "rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
            self.offset += len(chunk)
            if not self.sent_manifest:
                manifest = self.paths.manifest.read_text()
                self.sent_manifest = True
        self.board.report.remote(self.key, info["tick"], manifest, chunk)


def _committed_tick(run_dir: Path) -> int:
    """How far a run directory got: its registers' tick (-1 when nothing was committed)."""
    paths = RunPaths(run_dir)
    if not paths.registers.is_file():
        return -1
    return int(json.loads(paths.registers.read_text())["tick"])


def run_attempt(job: Job, board: Any) -> dict[str, Any]:
    """The Ray task: run (or resume) one cell on this node and hand its directory back."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    node_ip = ray.util.get_node_ip_address()
    key = f"{job.cell.cell_id}#{job.attempt}"
    root = Path(job.out) if job.shared_out else scratch_dir(job.key, node_id)
    run_dir = root / "runs" / job.cell.cell_id
    resumed_from = None
    if _cell_state(run_dir) is not None:
        resumed_from = "shared out" if job.shared_out else "node scratch"
    if job.partial is not None:
        # The driver's copy, unless this node holds the same run further on (it began from that copy).
        staging = scratch_dir(job.key, node_id) / "incoming" / f"{job.cell.cell_id}.a{job.attempt}"
        incoming = unpack(job.partial, staging, job.cell.cell_id)
        if _committed_tick(incoming) > _committed_tick(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            os.replace(incoming, run_dir)
            resumed_from = "driver copy"
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):
            staging.parent.rmdir()
    began = round(time.time(), 3)
    board.started.remote(key, {"node_id": node_id, "node_ip": node_ip, "pid": os.getpid(), "run_dir": str(run_dir),
                               "resumed_from": resumed_from, "began": began})
    sweep = _node_sweep(job, root)
    sweep._stopping = False  # the sweep object outlives attempts in this worker
    # `ray.cancel` arrives as SIGINT. Whenever it lands (the kernel installs its own handler only while
    # its loop runs), the run stops after its current tick, or before its first, and still comes back.
    previous = signal.signal(signal.SIGINT, lambda _signum, _frame: sweep.stop())
    started = time.perf_counter()
    try:
        result = sweep.run_cell(job.cell, _Reporter(board, key, run_dir, mirror=not job.shared_out))
    except _HostLost as err:
        raise RunLost(str(err)) from None
    finally:
        signal.signal(signal.SIGINT, previous)
    answer: dict[str, Any] = {"result": result.model_dump(), "node_id": node_id, "node_ip": node_ip,
                              "pid": os.getpid(), "resumed_from": resumed_from, "run_dir": str(run_dir), "began": began,
                              "run_s": round(time.perf_counter() - started, 4), "tar": None, "pack_s": None}
    if not job.shared_out:
        t = time.perf_counter()
        answer["tar"] = pack(run_dir)
        answer["pack_s"] = round(time.perf_counter() - t, 4)
        shutil.rmtree(run_dir)
        with contextlib.suppress(OSError):  # leave no empty folders behind on the node
            run_dir.parent.rmdir()
            root.rmdir()
            root.parent.rmdir()
            root.parent.parent.rmdir()
    return answer


# ---- the driver --------------------------------------------------------------------------------------

class _Try:
    def __init__(self, cell: Cell, attempt: int, first: int, pin: str | None = None,
                 partial: bytes | None = None, started: bool = False) -> None:
        self.cell, self.attempt, self.first, self.pin, self.partial = cell, attempt, first, pin, partial
        self.started = started

    @property
    def key(self) -> str:
        return f"{self.cell.cell_id}#{self.attempt}"


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    """Set environment variables the user has not set, for the duration of the block."""
    saved = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        os.environ.setdefault(k, v)
    try:
        yield
    finally:
        for k, old in saved.items():
            if old is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = old


OUTCOMES = {"NodeDiedError": "node died", "LocalRayletDiedError": "node died", "WorkerCrashedError": "worker died",
            "OutOfMemoryError": "worker killed (memory)", "TaskUnschedulableError": "node unavailable",
            "RunLost": "lost"}


def _outcome(err: BaseException) -> str:
    """Ray's error classes in words for the attempts log (by name: ray is not imported at module level)."""
    for cls in type(err).__mro__:
        if cls.__name__ in OUTCOMES:
            return OUTCOMES[cls.__name__]
    return type(err).__name__


def _probe(address: str) -> None:
    """Fail in seconds on a GCS address nothing listens at (Ray itself retries for minutes)."""
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return  # ray://, auto, or a form Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as err:
        raise SweepError(f"no Ray cluster answers at {address}: {err.strerror or err}") from err


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[-1][:300] if text else type(err).__name__


class RaySweep:
    """The Ray engine. Same grid, same directory layout, same resume rules as `Sweep`; see the module doc."""

    def __init__(self, spec: SweepSpec, out: Path, *, address: str | None = None, shared_out: bool = False,
                 retries: int = 2) -> None:
        if retries < 0:
            raise SweepError("retries must be 0 or more")
        self.base = Sweep(spec, out)  # validates the grid before anything starts; its rules decide what is pending
        self.spec, self.out, self.runs = spec, out, out / "runs"
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.shared_out = shared_out
        self.retries = retries
        self.key = sweep_key(spec, out)
        self._ray: Any = None
        self._snapshot: dict[str, dict[str, Any]] = {}
        self._asked: Any = None
        self._board: Any = None
        self._task: Any = None
        self._hosts: dict[str, Any] = {}
        self._inflight: dict[Any, _Try] = {}
        self._dead: set[str] = set()
        self._seen: dict[str, dict[str, Any]] = {}
        self._counts: dict[str, NodeCounts] = {}
        self._results: list[RayCellResult] = []
        self._stopping = False

    # -- setup --------------------------------------------------------------------------------------
    def prepare(self) -> None:
        self.base.prepare()

    def pending(self) -> list[Cell]:
        return self.base.pending()

    def connect(self) -> None:
        """Join the cluster at `address` (or RAY_ADDRESS), or start a local Ray instance that `close` stops;
        then start this sweep's actors."""
        if self._ray is not None:
            return
        local = self.address is None
        if self.address is not None:
            _probe(self.address)
        # A local instance listens on loopback only (Ray's own switch, read when ray is imported: so only
        # where this process has not imported ray before, as in the CLI), reports no usage statistics, and
        # checks a token made by this process (Ray's default would write one to ~/.ray for good; Ray caches
        # the first token a process uses, so every instance this process starts gets the same one).
        extra = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
                 "RAY_AUTH_TOKEN": _LOCAL_TOKEN} if local else {}
        with _env(**extra):
            try:
                import ray
            except ImportError as err:
                raise SweepError(RAY_MISSING) from err
            options: dict[str, Any] = {"namespace": NAMESPACE, "logging_level": logging.ERROR,
                                       "log_to_driver": False}
            try:
                if local:
                    # Ray runs its workers at nice 15 to keep its own processes responsive; here the workers'
                    # runs are the work, and on a shared machine nice 15 made each run about 2x slower
                    # (bench/sweep_engines.py). They run at the command's own priority, as the local engine's do.
                    ray.init(address="local", num_cpus=self.spec.workers, include_dashboard=False,
                             _system_config={"worker_niceness": 0}, **options)
                else:
                    ray.init(address=self.address, **options)
            except (ConnectionError, RuntimeError, ValueError) as err:
                where = self.address or "a local instance"
                raise SweepError(f"cannot start or reach Ray ({where}): {_one_line(err)}") from err
        self._ray = ray
        self._task = ray.remote(run_attempt)
        # This sweep's actors start now, while the driver still reads the grid: the board on the driver's
        # node (it must outlive any other node), and a model host per node if the grid has a local model.
        driver_node = ray.get_runtime_context().get_node_id()
        self._board = ray.remote(Board).options(num_cpus=0, scheduling_strategy=self._strategy(driver_node)).remote()
        self._ensure_hosts()

    def _strategy(self, node_id: str) -> Any:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)

    def _alive_nodes(self) -> list[dict[str, Any]]:
        return [n for n in self._ray.nodes() if n.get("Alive") and n["NodeID"] not in self._dead]

    def _ensure_hosts(self) -> None:
        """One ModelHost per live node when the grid has a local model (new nodes get theirs on the next poll)."""
        if not any(needs_host(m) for m in self.spec.models):
            return
        host = self._ray.remote(ModelHost)
        for node in self._alive_nodes():
            node_id = node["NodeID"]
            if node_id in self._hosts:
                continue
            self._hosts[node_id] = host.options(
                name=host_name(self.key, node_id), num_cpus=0, memory=HOST_MEMORY, max_concurrency=HOST_THREADS,
                max_restarts=3, max_task_retries=2, scheduling_strategy=self._strategy(node_id)).remote(self.spec)

    # -- the attempts log ---------------------------------------------------------------------------
    def _log(self, record: AttemptRecord) -> None:
        with open(self.out / ATTEMPTS_FILE, "a", encoding="utf-8") as fh:
            fh.write(record.model_dump_json(exclude_none=True) + "\n")

    def _history(self) -> dict[str, list[AttemptRecord]]:
        path = self.out / ATTEMPTS_FILE
        found: dict[str, list[AttemptRecord]] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    rec = AttemptRecord.model_validate_json(line)
                    found.setdefault(rec.cell_id, []).append(rec)
        return found

    # -- running -------------------------------------------------------------------------------------
    def run(self, on_cell: Callable[[CellResult], None] | None = None,
            on_progress: Callable[[Progress], None] | None = None) -> list[RayCellResult]:
        self.prepare()
        self.connect()
        ray = self._ray
        history = self._history()
        self._results = []
        grid = cells(self.spec)
        for cell in grid:
            run_dir = self.runs / cell.cell_id
            if _cell_state(run_dir) in TERMINAL:
                m = RunManifest.load(RunPaths(run_dir))
                self._finish(RayCellResult(cell_id=cell.cell_id, status=m.status.value, ticks=m.ticks,
                                           cause_of_death=m.cause_of_death, action="kept"), on_cell)
                continue
            self._submit(self._first_try(cell, history.get(cell.cell_id, [])))
        last_poll = 0.0
        try:
            while self._inflight:
                ready, _ = ray.wait(list(self._inflight), num_returns=1, timeout=POLL_S)
                for ref in ready:
                    self._collect(ref, on_cell)
                if time.monotonic() - last_poll >= POLL_S or not self._inflight:
                    last_poll = time.monotonic()
                    self._poll(len(grid), on_progress)
        except KeyboardInterrupt:
            self._drain(on_cell)
            raise
        return self._results

    def _first_try(self, cell: Cell, past: list[AttemptRecord]) -> _Try:
        """Resume what is reachable: a copy under OUT/runs, or the scratch of a live node an earlier attempt used."""
        attempt = max((r.attempt for r in past), default=0) + 1
        partial = None
        pin = None
        if not self.shared_out:
            run_dir = self.runs / cell.cell_id
            if _cell_state(run_dir) is not None:
                partial = pack(run_dir)  # an interrupted copy Ctrl-C brought back
            ended = {r.attempt for r in past if r.event == "end"}
            open_starts = [r for r in past if r.event == "start" and r.attempt not in ended and r.node_id]
            alive = {n["NodeID"] for n in self._alive_nodes()}
            if open_starts and open_starts[-1].node_id in alive:
                pin = open_starts[-1].node_id  # a driver that died left this run in that node's scratch
        return _Try(cell, attempt, attempt, pin=pin, partial=partial)

    def _submit(self, t: _Try) -> None:
        job = Job(spec=self.spec, cell=t.cell, attempt=t.attempt, out=str(self.out.resolve()),
                  command_line=self.base.command_line, key=self.key, shared_out=self.shared_out, partial=t.partial)
        options: dict[str, Any] = {"num_cpus": RUN_CPUS, "memory": RUN_MEMORY, "max_retries": 0}
        if t.pin:
            options["scheduling_strategy"] = self._strategy(t.pin)
        self._inflight[self._task.options(**options).remote(job, self._board)] = t

    def _node_label(self, node_id: str | None, node_ip: str | None) -> str:
        return f"{node_ip or '?'} {node_id[:8]}" if node_id else "unknown node"

    def _count(self, node_id: str | None, node_ip: str | None, field: str) -> None:
        label = self._node_label(node_id, node_ip)
        counts = self._counts.setdefault(label, NodeCounts(label=label))
        setattr(counts, field, getattr(counts, field) + 1)

    def _poll(self, total: int, on_progress: Callable[[Progress], None] | None) -> None:
        """Read the board without waiting for it (it may still be starting): the last answer serves meanwhile."""
        if self._asked is None:
            self._asked = self._board.snapshot.remote()
        if self._ray.wait([self._asked], timeout=0)[0]:
            self._snapshot = self._ray.get(self._asked)
            self._asked = self._board.snapshot.remote()
        snapshot = self._snapshot
        for t in self._inflight.values():
            info = snapshot.get(t.key)
            if info:
                self._started(t, info)
        self._ensure_hosts()
        if on_progress is None:
            return
        running: list[RunningRun] = []
        live: dict[str, int] = {}
        for t in self._inflight.values():
            info = snapshot.get(t.key)
            if info:
                label = self._node_label(info["node_id"], info["node_ip"])
                live[label] = live.get(label, 0) + 1
                running.append(RunningRun(cell_id=t.cell.cell_id, attempt=t.attempt, node=label,
                                          node_id=info["node_id"], pid=info["pid"], tick=info["tick"]))
        nodes = {k: v.model_copy() for k, v in self._counts.items()}
        for label, n in live.items():
            nodes.setdefault(label, NodeCounts(label=label)).running = n
        on_progress(Progress(total=total, finished=len(self._results), nodes=nodes, running=running))

    def _started(self, t: _Try, info: dict[str, Any]) -> None:
        """Log where an attempt runs, once: from the board while it runs or, when it ended before a poll saw it
        running (short runs on a busy driver), from its answer or its mirror when it ends."""
        if t.started or not info.get("node_id"):
            return
        t.started = True
        keys = ("node_id", "node_ip", "pid", "resumed_from", "run_dir", "began")
        where: dict[str, Any] = {k: info.get(k) for k in keys}
        self._seen[t.key] = where
        self._log(AttemptRecord(cell_id=t.cell.cell_id, attempt=t.attempt, event="start", **where))

    def _finish(self, result: RayCellResult, on_cell: Callable[[CellResult], None] | None) -> None:
        self._results.append(result)
        if on_cell:
            on_cell(result)

    def _collect(self, ref: Any, on_cell: Callable[[CellResult], None] | None) -> None:
        ray = self._ray
        t = self._inflight.pop(ref)
        fetch = time.perf_counter()
        try:
            answer = ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            self._board.take.remote(t.key)
            self._log(AttemptRecord(cell_id=t.cell.cell_id, attempt=t.attempt, event="end", outcome="cancelled"))
            self._finish(RayCellResult(cell_id=t.cell.cell_id, status="not started", ticks=0, action="skipped",
                                       attempts=t.attempt - t.first + 1), on_cell)
            return
        except (RunLost, ray.exceptions.RayError) as err:
            if isinstance(err, ray.exceptions.RayTaskError) and not isinstance(err, RunLost):
                self._failed(t, err, on_cell, retry=False)
            else:
                self._failed(t, err, on_cell, retry=True)
            return
        fetch_s = time.perf_counter() - fetch
        self._board.take.remote(t.key)  # the run came back whole: the mirrored prefix is not needed
        self._started(t, answer)
        result = CellResult.model_validate(answer["result"])
        place = time.perf_counter()
        try:
            self._place(t, answer)
        except SweepError as err:
            self._failed(t, err, on_cell, retry=True, node=(answer["node_id"], answer["node_ip"]))
            return
        place_s = time.perf_counter() - place
        self._count(answer["node_id"], answer["node_ip"], "done")
        self._log(AttemptRecord(
            cell_id=t.cell.cell_id, attempt=t.attempt, event="end", node_id=answer["node_id"],
            node_ip=answer["node_ip"], pid=answer["pid"], resumed_from=answer["resumed_from"], outcome="ok",
            status=result.status, ticks=result.ticks, error=result.error,
            ship_bytes=len(answer["tar"]) if answer["tar"] is not None else None, pack_s=answer["pack_s"],
            fetch_s=round(fetch_s, 4), place_s=round(place_s, 4), run_s=answer["run_s"]))
        self._finish(RayCellResult(**result.model_dump(), attempts=t.attempt - t.first + 1,
                                   node=self._node_label(answer["node_id"], answer["node_ip"]),
                                   resumed_from=answer["resumed_from"]), on_cell)

    def _place(self, t: _Try, answer: dict[str, Any]) -> None:
        """Verify a finished run and put it at OUT/runs/<cell_id> (a shipped run replaces any earlier copy).

        A shipped run whose journal does not verify is kept under OUT/interrupted/ and the attempt fails."""
        target = self.runs / t.cell.cell_id
        if answer["tar"] is None:  # shared output: it is there already
            self._check(target)
            return
        incoming = self.out / ".incoming" / f"{t.cell.cell_id}.a{t.attempt}"
        if incoming.exists():
            shutil.rmtree(incoming)
        try:
            run_dir = unpack(answer["tar"], incoming, t.cell.cell_id)
        except (OSError, tarfile.TarError, SweepError) as err:
            shutil.rmtree(incoming, ignore_errors=True)
            raise SweepError(f"the run shipped back is unreadable: {_one_line(err)}") from err
        try:
            self._check(run_dir)
            if target.exists():
                shutil.rmtree(target)
            os.replace(run_dir, target)
        except SweepError:
            kept = self.out / INTERRUPTED_DIR / incoming.name
            shutil.rmtree(kept, ignore_errors=True)
            kept.parent.mkdir(exist_ok=True)
            os.replace(run_dir, kept)
            raise
        finally:
            shutil.rmtree(incoming, ignore_errors=True)
            with contextlib.suppress(OSError):
                incoming.parent.rmdir()

    def _check(self, run_dir: Path) -> None:
        paths = RunPaths(run_dir)
        if not paths.journal.is_file() or not paths.manifest.is_file():
            raise SweepError(f"{run_dir.name}: no journal or manifest came back")
        report = verify(paths.journal)
        if not report.ok or report.torn_tail:
            raise SweepError(f"{run_dir.name}: the journal does not verify ({report.reason or 'torn last line'})")

    def _failed(self, t: _Try, err: BaseException, on_cell: Callable[[CellResult], None] | None, *, retry: bool,
                node: tuple[str, str] | None = None) -> None:
        """An attempt ended without a usable run: log it, keep what can be kept, retry while retries last."""
        ray = self._ray
        mirror = ray.get(self._board.take.remote(t.key), timeout=60) or self._seen.get(t.key) or {}
        self._started(t, mirror)
        node_id, node_ip = node or (mirror.get("node_id"), mirror.get("node_ip"))
        outcome = _outcome(err) if not isinstance(err, SweepError) else "not verified"
        if outcome in ("node died", "node unavailable") and node_id:
            self._dead.add(node_id)
        alive = {n["NodeID"] for n in self._alive_nodes()}
        pin = None
        kept = None
        partial = None
        copy = self.runs / t.cell.cell_id
        if not self.shared_out and _cell_state(copy) is not None:
            partial = pack(copy)  # the interrupted copy this attempt had been given
        if self.shared_out:
            pass  # the directory is under OUT/runs for every node: the retry resumes it
        elif outcome == "not verified":
            kept = f"{INTERRUPTED_DIR}/{t.cell.cell_id}.a{t.attempt}"
        elif node_id and node_id in alive:
            pin = node_id  # its scratch is still there: resume on that node (from the copy if further on)
        else:
            kept = self._keep_mirror(t, mirror, outcome)
        self._count(node_id, node_ip, "failed")
        self._log(AttemptRecord(cell_id=t.cell.cell_id, attempt=t.attempt, event="end", node_id=node_id,
                                node_ip=node_ip, pid=mirror.get("pid"), outcome=outcome, error=_one_line(err),
                                kept=kept))
        if retry and not self._stopping and t.attempt - t.first < self.retries:
            self._submit(_Try(t.cell, t.attempt + 1, t.first, pin=pin, partial=partial))
            return
        why = "gave up after" if retry else "failed on"
        self._finish(RayCellResult(cell_id=t.cell.cell_id, status="failed", ticks=0, action="failed",
                                   error=f"{why} attempt {t.attempt - t.first + 1}: {outcome}: {_one_line(err)}",
                                   attempts=t.attempt - t.first + 1, node=self._node_label(node_id, node_ip)),
                     on_cell)

    def _keep_mirror(self, t: _Try, mirror: dict[str, Any], outcome: str) -> str | None:
        """The journal prefix and manifest the driver received from a run it cannot reach, as `interrupted`."""
        journal = mirror.get("journal") or b""
        if not journal or not mirror.get("manifest"):
            return None
        folder = self.out / INTERRUPTED_DIR / f"{t.cell.cell_id}.a{t.attempt}"
        folder.mkdir(parents=True, exist_ok=True)
        paths = RunPaths(folder)
        atomic_write(paths.journal, journal)
        manifest = RunManifest.model_validate_json(mirror["manifest"])
        ticks = sum(1 for line in journal.splitlines() if json.loads(line)["kind"] == "tick")
        manifest = manifest.model_copy(update={"status": RunStatus.INTERRUPTED, "ticks": ticks,
                                               "cause_of_death": None})
        manifest.save(paths)
        atomic_write(folder / "interrupted.json", json.dumps(
            {"reason": outcome, "attempt": t.attempt, "node_id": mirror.get("node_id"),
             "node_ip": mirror.get("node_ip"), "left_on_node": mirror.get("run_dir"),
             "mirrored_journal_bytes": len(journal)}, indent=2))
        return str(folder.relative_to(self.out))

    def held_models(self) -> dict[str, list[str]]:
        """Per node id, the oracles its model host has built so far (empty when the grid has no local model)."""
        return {node: self._ray.get(host.held.remote(), timeout=60) for node, host in self._hosts.items()}

    def stop(self) -> None:
        """Ask every running attempt to stop after its current tick; they come back `interrupted`."""
        self._stopping = True
        for ref in list(self._inflight):
            with contextlib.suppress(Exception):
                self._ray.cancel(ref)

    def _drain(self, on_cell: Callable[[CellResult], None] | None) -> None:
        """After Ctrl-C: cancel, then collect what comes back (interrupted runs are placed for a later resume)."""
        self.stop()
        deadline = time.monotonic() + STOP_WAIT_S
        with contextlib.suppress(KeyboardInterrupt):
            while self._inflight and time.monotonic() < deadline:
                ready, _ = self._ray.wait(list(self._inflight), num_returns=1, timeout=POLL_S)
                for ref in ready:
                    self._collect(ref, on_cell)

    def close(self) -> None:
        """Stop the actors this sweep started; stop the local instance if this sweep started it."""
        if self._ray is None:
            return
        for handle in [*self._hosts.values(), self._board]:
            if handle is not None:
                with contextlib.suppress(Exception):
                    self._ray.kill(handle)
        self._hosts.clear()
        self._board = None
        self._ray.shutdown()
        self._ray = None

