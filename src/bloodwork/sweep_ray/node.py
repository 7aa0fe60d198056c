"""The node side of the Ray engine: the board and model-host actors, and the task that runs one attempt."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from bloodwork.chronos.run import RunPaths
from bloodwork.oracles.base import CallInfo, Completion, Message, Oracle
from bloodwork.sweep import Sweep, SweepSpec, _cell_state
from bloodwork.sweep_ray.records import (
    HOST_WAIT_S,
    REPORT_EVERY_S,
    HostLost,
    Job,
    RunLost,
    host_name,
    needs_host,
    one_line,
    pack,
    scratch_dir,
    unpack,
)

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
            raise RunLost(f"the model host of this node died: {one_line(err)}") from err

    def complete(self, messages: list[Message], schema: dict[str, Any] | None = None, *,
                 call: CallInfo | None = None) -> Completion:
        try:
            return self._ray.get(self._host.complete.remote(self._model, self._seed, messages, schema, call))
        except self._ray.exceptions.RayActorError as err:
            raise HostLost(f"the model host of this node died: {err}") from err

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
    except HostLost as err:
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


