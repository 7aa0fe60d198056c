"""What the Ray engine's driver and nodes share: settings, names, the records that cross the wire, packed runs,
the attempts log."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel, Field

from bloodwork.chronos.journal import canonical_json
from bloodwork.sweep import Cell, CellResult, SweepError, SweepSpec

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
INTERRUPTED_DIR = "interrupted"


class RunLost(Exception):
    """The run could not go on for a reason outside it (its model host died): retry it."""


class HostLost(BaseException):
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


def append_attempt(out: Path, record: AttemptRecord) -> None:
    """One line of `OUT/ray_attempts.jsonl`."""
    with open(out / ATTEMPTS_FILE, "a", encoding="utf-8") as fh:
        fh.write(record.model_dump_json(exclude_none=True) + "\n")


def attempt_history(out: Path) -> dict[str, list[AttemptRecord]]:
    """The attempts log so far, by cell (a rerun of the sweep numbers its attempts on from there)."""
    path = out / ATTEMPTS_FILE
    found: dict[str, list[AttemptRecord]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = AttemptRecord.model_validate_json(line)
                found.setdefault(rec.cell_id, []).append(rec)
    return found


OUTCOMES = {"NodeDiedError": "node died", "LocalRayletDiedError": "node died", "WorkerCrashedError": "worker died",
            "OutOfMemoryError": "worker killed (memory)", "TaskUnschedulableError": "node unavailable",
            "RunLost": "lost"}


def outcome_of(err: BaseException) -> str:
    """Ray's error classes in words for the attempts log (by name: ray is not imported at module level)."""
    for cls in type(err).__mro__:
        if cls.__name__ in OUTCOMES:
            return OUTCOMES[cls.__name__]
    return type(err).__name__


def one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[-1][:300] if text else type(err).__name__
