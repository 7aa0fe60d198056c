"""`replay:RUN_DIR`: answers with a recorded run's raw outputs, call by call, tagged `provenance: replay`.

Errors and injected faults of the original calls are replayed too, so the kernel meets the same traps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bloodwork.chronos.records import DirtyRecord, iter_records
from bloodwork.chronos.run import Provenance, RunPaths
from bloodwork.oracles.base import CallInfo, CharEstimate, Completion, Message, OracleConfigError


class ReplayOracle:
    provenance = Provenance.REPLAY

    def __init__(self, spec: str, run_dir: str) -> None:
        self.spec = spec
        self.tokenizer = CharEstimate()
        paths = RunPaths(Path(run_dir))
        if not paths.dirty.is_file():
            raise OracleConfigError(f"{run_dir} is not a run directory (no dirty_trace.jsonl)")
        self.source = str(paths.root.resolve())
        self.spec = f"replay:{self.source}"
        records = list(iter_records(paths.dirty, DirtyRecord))
        self._by_call = {r.call_index: r for r in records if r.purpose == "tick"}
        self._probes = {r.tick: r for r in records if r.purpose == "probe"}

    def complete(self, messages: list[Message], schema: dict[str, Any] | None = None, *,
                 call: CallInfo | None = None) -> Completion:
        index = call.call_index if call else 0
        rec = self._probes.get(call.tick) if call and call.purpose == "probe" else self._by_call.get(index)
        if rec is None:
            return Completion(error=f"recorded run has no call {index}", error_class="exhausted")
        return Completion(text=rec.text, latency_ms=0.0, error=rec.error, error_class=rec.error_class,  # type: ignore[arg-type]
                          prompt_tokens=rec.prompt_tokens, completion_tokens=rec.completion_tokens,
                          injected=[{**i, "replayed": True} for i in rec.injected])

    def describe(self) -> dict[str, Any]:
        return {"backend": "replay", "source_run": self.source, "calls": len(self._by_call)}

    def close(self) -> None:
        return None
