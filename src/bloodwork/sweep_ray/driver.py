"""The driver side of the Ray engine: submits attempts, follows them, places what comes back."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bloodwork.chronos.files import atomic_write
from bloodwork.chronos.journal import verify
from bloodwork.chronos.run import RunManifest, RunPaths, RunStatus
from bloodwork.sweep import TERMINAL, Cell, CellResult, Sweep, SweepError, SweepSpec, _cell_state, cells
from bloodwork.sweep_ray.cluster import start_ray
from bloodwork.sweep_ray.node import Board, ModelHost, run_attempt
from bloodwork.sweep_ray.records import (
    HOST_MEMORY,
    HOST_THREADS,
    INTERRUPTED_DIR,
    POLL_S,
    RUN_CPUS,
    RUN_MEMORY,
    STOP_WAIT_S,
    AttemptRecord,
    Job,
    NodeCounts,
    Progress,
    RayCellResult,
    RunLost,
    RunningRun,
    append_attempt,
    attempt_history,
    host_name,
    needs_host,
    one_line,
    outcome_of,
    pack,
    sweep_key,
    unpack,
)


class _Try:
    def __init__(self, cell: Cell, attempt: int, first: int, pin: str | None = None,
                 partial: bytes | None = None, started: bool = False) -> None:
        self.cell, self.attempt, self.first, self.pin, self.partial = cell, attempt, first, pin, partial
        self.started = started

    @property
    def key(self) -> str:
        return f"{self.cell.cell_id}#{self.attempt}"


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
        ray = self._ray = start_ray(self.address, self.spec.workers)
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

    def _log(self, record: AttemptRecord) -> None:
        append_attempt(self.out, record)

    # -- running -------------------------------------------------------------------------------------
    def run(self, on_cell: Callable[[CellResult], None] | None = None,
            on_progress: Callable[[Progress], None] | None = None) -> list[RayCellResult]:
        self.prepare()
        self.connect()
        ray = self._ray
        history = attempt_history(self.out)
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
            raise SweepError(f"the run shipped back is unreadable: {one_line(err)}") from err
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
        outcome = outcome_of(err) if not isinstance(err, SweepError) else "not verified"
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
                                node_ip=node_ip, pid=mirror.get("pid"), outcome=outcome, error=one_line(err),
                                kept=kept))
        if retry and not self._stopping and t.attempt - t.first < self.retries:
            self._submit(_Try(t.cell, t.attempt + 1, t.first, pin=pin, partial=partial))
            return
        why = "gave up after" if retry else "failed on"
        self._finish(RayCellResult(cell_id=t.cell.cell_id, status="failed", ticks=0, action="failed",
                                   error=f"{why} attempt {t.attempt - t.first + 1}: {outcome}: {one_line(err)}",
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


