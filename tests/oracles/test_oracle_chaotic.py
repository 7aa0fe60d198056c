"""`ChaoticOracle`: seeded oracle faults that really happen and are always recorded as injected."""

from __future__ import annotations

import time
from typing import Any, Literal

from bloodwork.chaos.plan import ChaosProfile, FaultPlan
from bloodwork.oracles.base import CallInfo, CharEstimate, Completion, Message, Oracle
from bloodwork.oracles.chaotic import ChaoticOracle

TEXT = '{"thought": "t", "q_next": "q", "op": {"name": "SYS_HALT", "reason": "done"}}'


class Counting:
    """A stand-in model that counts its calls."""

    spec = "stub:counting"
    provenance: Literal["real"] = "real"

    def __init__(self) -> None:
        self.tokenizer = CharEstimate()
        self.calls = 0

    def complete(self, messages: list[Message], schema: dict[str, Any] | None = None, *,
                 call: CallInfo | None = None) -> Completion:
        self.calls += 1
        return Completion(text=TEXT, latency_ms=1.0, ttft_ms=0.5, finish_reason="stop")

    def describe(self) -> dict[str, Any]:
        return {"backend": "stub"}

    def close(self) -> None:
        return None


def chaotic(rates: dict[str, float], slow_s: float = 0.0) -> tuple[ChaoticOracle, Counting]:
    inner = Counting()
    plan = FaultPlan(ChaosProfile(name="t", rates=rates, oracle_slow_s=slow_s), seed=7, run_id="r1")
    return ChaoticOracle(inner, plan), inner


def call(tick: int) -> CallInfo:
    return CallInfo(run_id="r1", tick=tick, call_index=tick)


def test_passes_through_when_no_fault_is_drawn() -> None:
    oracle, inner = chaotic({})
    assert isinstance(oracle, Oracle)
    done = oracle.complete([], call=call(1))
    assert (done.text, done.injected, inner.calls) == (TEXT, [], 1)
    assert (oracle.spec, oracle.provenance, oracle.tokenizer, oracle.describe()) == (
        inner.spec, inner.provenance, inner.tokenizer, inner.describe())


def test_error_never_calls_the_model_and_is_reproducible() -> None:
    oracle, inner = chaotic({"oracle_error": 1.0})
    classes = []
    for tick in range(40):
        done = oracle.complete([], call=call(tick))
        assert done.error and done.text == ""
        assert done.injected == [{"kind": "oracle_error", "params": {
            "error_class": done.error_class, "status": 429 if done.error_class == "rate_limit" else 503}}]
        classes.append(done.error_class)
    assert inner.calls == 0
    assert set(classes) == {"rate_limit", "server_error"}
    again, _ = chaotic({"oracle_error": 1.0})
    assert [again.complete([], call=call(t)).error_class for t in range(40)] == classes


def test_slow_really_waits_and_counts_in_latency() -> None:
    oracle, inner = chaotic({"oracle_slow": 1.0}, slow_s=0.2)
    start = time.perf_counter()
    done = oracle.complete([], call=call(3))
    assert time.perf_counter() - start >= 0.2
    assert done.latency_ms >= 200 and done.ttft_ms is not None and done.ttft_ms >= 200
    assert done.injected == [{"kind": "oracle_slow", "params": {"delay_s": 0.2}}]
    assert (done.text, inner.calls) == (TEXT, 1)


def test_truncate_cuts_the_raw_text_in_half() -> None:
    oracle, _ = chaotic({"oracle_truncate": 1.0})
    done = oracle.complete([], call=call(5))
    assert done.text == TEXT[: len(TEXT) // 2]
    assert done.injected == [{"kind": "oracle_truncate", "params": {"chars_before": len(TEXT),
                                                                   "chars_after": len(TEXT) // 2}}]


def test_decisions_follow_the_plan_per_call() -> None:
    oracle, _ = chaotic({"oracle_truncate": 0.5})
    plan = oracle.plan
    for tick in range(30):
        done = oracle.complete([], call=call(tick))
        assert bool(done.injected) == plan.decide(tick, tick, "oracle_truncate")
