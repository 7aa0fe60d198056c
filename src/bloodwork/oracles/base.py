"""The oracle protocol: one stateless call from messages to raw text, timed and counted.

Every backend answers `complete(messages, schema, call=...)` with a `Completion`; a failed call is a
Completion with `error` set, never an exception, so the kernel can turn it into a trap. Exceptions are
for configuration mistakes (`OracleConfigError`) found before a run starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field

from bloodwork.chronos.run import Provenance
from bloodwork.errors import BloodworkError

Message = dict[str, str]
ErrorClass = Literal["rate_limit", "server_error", "timeout", "bad_request", "auth", "connection",
                     "context_overflow", "exhausted", "internal"]


class OracleConfigError(BloodworkError, ValueError):
    """A model spec, key, URL or adapter is not usable; raised before any tick runs."""


class Completion(BaseModel):
    """One model call as the kernel saw it. `text` is raw: never cleaned up before scoring.

    `latency_ms` and `ttft_ms` count from the start of the call: they are what the caller waited.
    `queue_ms` is the part of that spent waiting for a model shared with other callers (a sweep's
    workers, `bloodwork serve`'s clients, a fork's samples), so the model's own time for the call is
    `latency_ms - queue_ms` even in a busy run. `batch_size` is how many requests the local engine decoded
    together with this one, on average over its decode steps (1 = alone; None for other backends).
    """

    text: str = ""
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    queue_ms: float | None = None
    batch_size: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    retries: int = 0
    error: str | None = None
    error_class: ErrorClass | None = None
    finish_reason: str | None = None
    injected: list[dict[str, Any]] = Field(default_factory=list)


@dataclass(frozen=True)
class CallInfo:
    """Where a call happens: lets chaos decide reproducibly and scripts answer by tick.

    `workspace` is the run's workspace as it is at this call (the kernel passes it; a fork passes its
    copy's). Models ignore it; a state-aware reference policy (`expert:TASK`) reads files under it, and
    only reads: everything it changes, it changes through the op it answers, like any model.
    """

    run_id: str
    tick: int
    call_index: int
    purpose: Literal["tick", "probe", "fork"] = "tick"
    workspace: Path | None = None


@runtime_checkable
class Tokenizer(Protocol):
    exact: bool

    def count(self, text: str) -> int: ...


@dataclass
class CharEstimate:
    """~4 characters per token: an estimate, labelled as such wherever it is reported."""

    exact: bool = False
    chars_per_token: float = 4.0

    def count(self, text: str) -> int:
        return math.ceil(len(text) / self.chars_per_token)


@runtime_checkable
class Oracle(Protocol):
    spec: str

    # Read-only members: a backend holds a narrower type as a plain attribute (`CharEstimate`, one member of
    # Provenance), and a mutable protocol member would demand exactly the declared type (attributes are
    # invariant); read-only ones accept any subtype.
    @property
    def provenance(self) -> Provenance: ...

    @property
    def tokenizer(self) -> Tokenizer: ...

    def complete(self, messages: list[Message], schema: dict[str, Any] | None = None, *,
                 call: CallInfo | None = None) -> Completion: ...

    def describe(self) -> dict[str, Any]:
        """Settings for the manifest (never a secret)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class BatchingOracle(Oracle, Protocol):
    """An oracle that can answer several calls at one prompt together (the local engine: one prefill, one
    batch), with the same answers as calling `complete` for each."""

    def complete_many(self, messages: list[Message], schema: dict[str, Any] | None,
                      calls: list[CallInfo]) -> list[Completion]: ...


def complete_many(oracle: Oracle, messages: list[Message], schema: dict[str, Any] | None,
                  calls: list[CallInfo]) -> list[Completion]:
    """One completion per call at the same prompt: in one batch where the backend can, else in turn."""
    if isinstance(oracle, BatchingOracle):
        return oracle.complete_many(messages, schema, calls)
    return [oracle.complete(messages, schema, call=call) for call in calls]
