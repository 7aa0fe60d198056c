"""`ChaoticOracle`: seeded model-call faults around any oracle, each one recorded as injected.

The faults really happen: an `oracle_error` call never reaches the model, an `oracle_slow` call really
waits, an `oracle_truncate` answer really loses its second half. Each is listed in `Completion.injected`
so the kernel journals it as a `chaos` event and no analysis mistakes it for the model's own failure.
"""

from __future__ import annotations

import time
from typing import Any

from bloodwork.chaos.plan import FaultPlan
from bloodwork.oracles.base import CallInfo, Completion, ErrorClass, Message, Oracle


class ChaoticOracle:
    """Wraps `inner`; decisions come from `plan.decide(call.tick, call.call_index, kind)` only."""

    def __init__(self, inner: Oracle, plan: FaultPlan) -> None:
        self.inner = inner
        self.plan = plan
        self.spec = inner.spec
        self.provenance = inner.provenance
        self.tokenizer = inner.tokenizer

    def complete(self, messages: list[Message], schema: dict[str, Any] | None = None, *,
                 call: CallInfo | None = None) -> Completion:
        where = call or CallInfo(run_id=self.plan.run_id, tick=0, call_index=0)
        tick, index = where.tick, where.call_index
        if self.plan.decide(tick, index, "oracle_error"):
            # Which failure is itself drawn from the plan, so a replayed run meets the same one.
            error_class: ErrorClass = ("rate_limit" if self.plan.draw(tick, index, "oracle_error_class") < 0.5
                                       else "server_error")
            status = 429 if error_class == "rate_limit" else 503
            return Completion(error=f"injected {error_class} (HTTP {status}-like)", error_class=error_class,
                              injected=[{"kind": "oracle_error",
                                         "params": {"error_class": error_class, "status": status}}])
        injected: list[dict[str, Any]] = []
        slept_ms = 0.0
        if self.plan.decide(tick, index, "oracle_slow"):
            delay = self.plan.profile.oracle_slow_s
            time.sleep(delay)
            slept_ms = delay * 1000
            injected.append({"kind": "oracle_slow", "params": {"delay_s": delay}})
        done = self.inner.complete(messages, schema, call=call)
        if slept_ms:
            # Latency is what the kernel waited; the injection record says how much of it was ours.
            done.latency_ms += slept_ms
            if done.ttft_ms is not None:
                done.ttft_ms += slept_ms
        if done.error is None and self.plan.decide(tick, index, "oracle_truncate"):
            kept = len(done.text) // 2
            injected.append({"kind": "oracle_truncate", "params": {"chars_before": len(done.text),
                                                                   "chars_after": kept}})
            done.text = done.text[:kept]
        done.injected = [*done.injected, *injected]
        return done

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def close(self) -> None:
        self.inner.close()
