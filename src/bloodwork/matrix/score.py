"""One greedy answer per state, scored from the raw text first, timed per call.

Strict and lenient validity and the violation class come from `isa.parse` on the raw text, before any
clean-up. Op agreement compares the answer's op (the strict frame, else the lenient one) with the
reference op where the state has one: by name, and exactly (same fingerprint: every field equal).
A call that failed (connection, timeout) is not an answer: rates are over answered calls, and errors
are reported as their own rate. Every rate carries n and a Wilson 95 % interval.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from pydantic import BaseModel, Field

from bloodwork.evidence.stats import Distribution, Rate, distribution, wilson
from bloodwork.isa import json_schema, parse
from bloodwork.kernel.traps import fingerprint
from bloodwork.matrix.evalset import EvalState
from bloodwork.oracles.base import CallInfo, Completion, Oracle

MATRIX_RUN_ID = "matrix"


class Answer(BaseModel):
    """One raw answer with its verdict: the line of `answers/<model>.jsonl` every number is recomputed from."""

    state_id: str
    call_index: int
    text: str
    error: str | None
    latency_ms: float
    ttft_ms: float | None
    queue_ms: float | None = None
    prompt_tokens: int | None
    completion_tokens: int | None
    strict_ok: bool
    lenient_ok: bool
    violation: str | None
    op: str | None
    reference_op: str | None
    agrees_name: bool | None
    agrees_exact: bool | None


class Scores(BaseModel):
    calls: int
    answered: int
    errors: Rate
    strict_valid: Rate
    lenient_valid: Rate
    violation_classes: dict[str, int]
    op_name_agreement: Rate
    op_exact_agreement: Rate
    latency_ms: Distribution
    ttft_ms: Distribution
    tokens_per_s: Distribution = Field(description="completion tokens over the whole call, prefill included")
    decode_tokens_per_s: Distribution | None = Field(default=None, description="tokens after the first over the "
                                                     "time after the first; absent from matrices made before it")


def judge(state: EvalState, call_index: int, done: Completion) -> Answer:
    """Score one raw answer to `state`: the verdict comes from the text alone, so it can be recounted."""
    verdict = parse(done.text) if done.error is None else None
    frame = verdict.frame if verdict else None
    ref = state.reference
    return Answer(
        state_id=state.state_id, call_index=call_index, text=done.text, error=done.error,
        latency_ms=round(done.latency_ms, 3), ttft_ms=done.ttft_ms, queue_ms=done.queue_ms,
        prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens,
        strict_ok=bool(verdict and verdict.strict_ok), lenient_ok=bool(verdict and verdict.lenient_ok),
        violation=verdict.violation if verdict else None,
        op=frame.op.name if frame else None, reference_op=ref.name if ref else None,
        agrees_name=None if ref is None or done.error else bool(frame and frame.op.name == ref.name),
        agrees_exact=None if ref is None or done.error else bool(
            frame and fingerprint(frame.op.model_dump(mode="json")) == ref.fingerprint))


def rejudge(answer: Answer, state: EvalState) -> Answer:
    """The answer scored again from its stored raw text and timings, ignoring its stored verdict."""
    return judge(state, answer.call_index, Completion(
        text=answer.text, error=answer.error, latency_ms=answer.latency_ms, ttft_ms=answer.ttft_ms,
        queue_ms=answer.queue_ms, prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens))


def ask(oracle: Oracle, states: list[EvalState], on_answer: Callable[[Answer], None] | None = None) -> list[Answer]:
    schema = json_schema()
    answers = []
    for i, state in enumerate(states):
        answer = judge(state, i, oracle.complete(state.messages, schema, call=CallInfo(MATRIX_RUN_ID, state.tick, i)))
        answers.append(answer)
        if on_answer:
            on_answer(answer)
    return answers


def score(answers: list[Answer]) -> Scores:
    ok = [a for a in answers if a.error is None]
    referenced = [a for a in ok if a.agrees_name is not None]
    rates = [a.completion_tokens / (a.latency_ms / 1000) for a in ok if a.completion_tokens and a.latency_ms > 0]
    # After the first token: prefill and queueing sit in the TTFT, so this is the model's decoding speed.
    decode = [(a.completion_tokens - 1) / ((a.latency_ms - a.ttft_ms) / 1000) for a in ok
              if a.completion_tokens and a.completion_tokens > 1 and a.ttft_ms is not None and a.latency_ms > a.ttft_ms]
    return Scores(
        calls=len(answers), answered=len(ok), errors=wilson(len(answers) - len(ok), len(answers)),
        strict_valid=wilson(sum(a.strict_ok for a in ok), len(ok)),
        lenient_valid=wilson(sum(a.lenient_ok for a in ok), len(ok)),
        violation_classes=dict(Counter(a.violation for a in ok if a.violation).most_common()),
        op_name_agreement=wilson(sum(bool(a.agrees_name) for a in referenced), len(referenced)),
        op_exact_agreement=wilson(sum(bool(a.agrees_exact) for a in referenced), len(referenced)),
        latency_ms=distribution([a.latency_ms for a in ok]),
        ttft_ms=distribution([a.ttft_ms for a in ok if a.ttft_ms is not None]),
        tokens_per_s=distribution([round(r, 3) for r in rates]),
        decode_tokens_per_s=distribution([round(r, 3) for r in decode]))
