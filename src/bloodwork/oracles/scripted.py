"""`scripted:FILE`: deterministic replies for tests and demos, tagged `provenance: scripted`.

FILE is either a YAML list (each item a raw reply string, or a mapping that is sent as its JSON
text), answered in call order, or a Python file defining `policy(call, messages) -> str`, optionally
named as `scripted:FILE.py:function`.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bloodwork.chronos.run import Provenance
from bloodwork.errors import read_yaml
from bloodwork.oracles.base import CallInfo, CharEstimate, Completion, Message, OracleConfigError

Policy = Callable[[CallInfo, list[Message]], str]


def load_policy(path: Path, name: str = "policy") -> Policy:
    spec = importlib.util.spec_from_file_location(f"bloodwork_script_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise OracleConfigError(f"cannot load scripted policy {path}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # a user's script may fail in any way: report it in one line
        raise OracleConfigError(f"scripted policy {path} failed to load: {err}") from err
    fn = getattr(module, name, None)
    if not callable(fn):
        raise OracleConfigError(f"{path} defines no function {name}(call, messages)")
    return fn


class ScriptedOracle:
    provenance = Provenance.SCRIPTED

    def __init__(self, spec: str, target: str) -> None:
        self.spec = spec
        self.tokenizer = CharEstimate()
        self._replies: list[str] | None = None
        self._policy: Policy | None = None
        path_text, _, fn = target.partition(".py:")
        if fn:
            path_text += ".py"
        path = Path(path_text)
        if not path.is_file():
            raise OracleConfigError(f"scripted file not found: {path}")
        self.path = path.resolve()
        self.spec = f"scripted:{self.path}" + (f":{fn}" if fn else "")
        if path.suffix == ".py":
            self._policy = load_policy(path, fn or "policy")
        else:
            data = read_yaml(path, OracleConfigError)
            if not isinstance(data, list):
                raise OracleConfigError(f"{path} must be a YAML list of replies")
            self._replies = [item if isinstance(item, str) else json.dumps(item) for item in data]

    def complete(self, messages: list[Message], schema: dict[str, Any] | None = None, *,
                 call: CallInfo | None = None) -> Completion:
        call = call or CallInfo(run_id="", tick=0, call_index=0)
        start = time.perf_counter()
        if self._policy is not None:
            text = self._policy(call, messages)
        else:
            assert self._replies is not None
            if call.call_index >= len(self._replies):
                return Completion(error=f"scripted replies exhausted after {len(self._replies)}",
                                  error_class="exhausted")
            text = self._replies[call.call_index]
        return Completion(text=text, latency_ms=(time.perf_counter() - start) * 1000,
                          completion_tokens=self.tokenizer.count(text), finish_reason="stop")

    def describe(self) -> dict[str, Any]:
        return {"backend": "scripted", "file": str(self.path), "tokens": "estimate (4 chars/token)"}

    def close(self) -> None:
        return None
