"""What `bloodwork serve` honours of an OpenAI request, and how it reads tool calls (no model needed)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bloodwork.oracles.chatapi import (
    CALL_OPEN,
    RequestError,
    call_text,
    forced_call,
    held_back,
    parse_calls,
    parse_request,
)

BASH = {"type": "function", "function": {"name": "bash", "description": "Run a command", "parameters": {
    "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}}
READ = {"type": "function", "function": {"name": "read", "parameters": {
    "type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}}
USER = [{"role": "user", "content": "List the files."}]


def req(spec_constrained: bool = False, **body: Any):
    return parse_request({"model": "m", "messages": USER, **body}, spec_constrained=spec_constrained)


def refused(match: str, spec_constrained: bool = False, **body: Any) -> RequestError:
    with pytest.raises(RequestError, match=match) as err:
        req(spec_constrained, **body)
    assert err.value.status == 400
    return err.value


def test_plain_request_is_unconstrained_and_keeps_the_messages() -> None:
    r = req(max_tokens=5, temperature=0.5, stop="x", stream=True, stream_options={"include_usage": True})
    assert (r.constraint, r.constrained, r.schema, r.prefill) == ("none", False, None, "")
    assert r.messages == USER and (r.max_tokens, r.temperature, r.stop, r.include_usage) == (5, 0.5, ("x",), True)
    assert req(spec_constrained=True).constraint == "isa_frame"  # `+constrained` without a format: the ISA frame


def test_response_formats_constrain_on_every_spec() -> None:
    for constrained in (False, True):
        assert req(constrained, response_format={"type": "json_object"}).schema == {"type": "object"}
        schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
        r = req(constrained, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
        assert (r.constraint, r.schema) == ("json_schema", schema)
    assert req(response_format={"type": "text"}).constraint == "none"
    refused("json_schema.schema", response_format={"type": "json_schema", "json_schema": {"name": "x"}})
    refused("'grammar' cannot be honoured", response_format={"type": "grammar"})


def test_tool_choice_modes() -> None:
    auto = req(tools=[BASH, READ])
    assert (auto.tool_mode, auto.constraint, auto.prefill) == ("auto", "none", "")
    assert "<tools>" in auto.messages[0]["content"] and '"name": "read"' in auto.messages[0]["content"]
    required = req(tools=[BASH, READ], tool_choice="required")
    assert (required.tool_mode, required.constraint, required.prefill) == ("call", "tool_call", CALL_OPEN + "\n")
    assert [s["properties"]["name"]["const"] for s in required.schema["anyOf"]] == ["bash", "read"]
    named = req(tools=[BASH, READ], tool_choice={"type": "function", "function": {"name": "read"}})
    assert named.schema["properties"]["name"] == {"const": "read"}
    assert named.schema["properties"]["arguments"] == READ["function"]["parameters"]
    none = req(tools=[BASH], tool_choice="none")
    assert none.tool_mode == "none" and none.messages == USER  # the model is not told of tools it may not call
    # `+constrained` constrains every answer: `auto` becomes a forced call (tool_choice none gives text)
    assert req(True, tools=[BASH]).constraint == "tool_call"
    assert req(True, tools=[BASH], tool_choice="none").constraint == "isa_frame"


def test_what_cannot_be_honoured_is_a_400_naming_the_parameter() -> None:
    assert refused("Unrecognized request argument supplied: frobnicate", frobnicate=1).param == "frobnicate"
    refused("n=2 cannot be honoured", n=2)
    refused("logprobs=true cannot be honoured", logprobs=True)
    refused("presence_penalty=0.5", presence_penalty=0.5)
    refused("legacy `functions`", functions=[BASH["function"]])
    refused("only tools of type 'function'", tools=[{"type": "web_search"}])
    refused("two tools are named 'bash'", tools=[BASH, BASH])
    refused("not among the tools", tools=[BASH], tool_choice={"type": "function", "function": {"name": "read"}})
    refused("only allowed when tools are given", tool_choice="required")
    refused("cannot be honoured together", tools=[BASH], response_format={"type": "json_object"})
    refused("only text content parts", messages=[{"role": "user", "content": [{"type": "image_url"}]}])
    refused("role 'function' cannot be honoured", messages=[{"role": "function", "content": "x"}])
    refused("stop must be", stop=["a", "b", "c", "d", "e"])
    refused("max_tokens must be an integer", max_tokens="5")
    # the defaults themselves, and nulls, are fine: clients send them
    assert req(n=1, logprobs=False, presence_penalty=0, user="u", metadata=None).constraint == "none"
    assert req(tools=[BASH], response_format={"type": "json_object"}, tool_choice="required").constraint == "tool_call"


def test_tool_history_renders_as_hermes_turns() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "bash", "arguments": '{"command":"ls"}'}}
    messages = [{"role": "system", "content": "Be brief."}, *USER,
                {"role": "assistant", "content": None, "tool_calls": [call], "provider_specific_fields": None},
                {"role": "tool", "tool_call_id": "call_1", "content": "a.txt\n"},
                {"role": "assistant", "content": "Done.", "tool_calls": [call]}]
    r = req(messages=messages, tools=[BASH])
    assert r.messages[0]["role"] == "system" and r.messages[0]["content"].startswith("Be brief.\n\n# Tools")
    assert r.messages[2] == {"role": "assistant", "content": call_text("bash", {"command": "ls"})}
    assert r.messages[2]["content"] == '<tool_call>\n{"name": "bash", "arguments": {"command": "ls"}}\n</tool_call>'
    assert r.messages[3] == {"role": "tool", "content": "<tool_response>\na.txt\n\n</tool_response>"}
    assert r.messages[4]["content"] == "Done.\n" + call_text("bash", {"command": "ls"})
    refused("answers no earlier assistant tool call", messages=[*USER, {"role": "tool", "tool_call_id": "x",
                                                                         "content": "y"}])
    bad = {**call, "function": {"name": "bash", "arguments": "{not json"}}
    refused("arguments is not JSON", messages=[*USER, {"role": "assistant", "content": None, "tool_calls": [bad]}])


def test_parse_calls_reads_calls_and_keeps_unparseable_answers_as_text() -> None:
    tools = req(tools=[BASH, READ]).tools
    text = 'Let me look.\n<tool_call>\n{"name": "bash", "arguments": {"command": "ls"}}\n</tool_call>\n' \
           '<tool_call>\n{"name": "read", "arguments": "{\\"path\\": \\"a\\"}"}\n</tool_call>\n'
    content, calls = parse_calls(text, tools)
    assert content == "Let me look."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("bash", {"command": "ls"}), ("read", {"path": "a"})]
    assert len({c.id for c in calls}) == 2 and all(c.id.startswith("call_") for c in calls)
    assert [c.name for c in parse_calls(text, tools, parallel=False)[1]] == ["bash"]
    # unterminated at the end (EOS or a stop string before the closing tag) still reads
    assert parse_calls('<tool_call>\n{"name": "bash", "arguments": {"command": "ls"}}', tools)[1][0].name == "bash"
    for broken in ('<tool_call>\n{"name": "bash", "arguments": {"command": "l', '<tool_call>{"name": "rm"}</tool_call>',
                   '<tool_call>{"name": "bash", "arguments": [1]}</tool_call>'):
        assert parse_calls(broken, tools) == (broken, [])  # never a guess: the client sees what the model wrote
    assert parse_calls("plain answer", tools) == ("plain answer", [])


def test_forced_call_and_stream_hold_back() -> None:
    tools = req(tools=[BASH]).tools
    call = forced_call('{"name": "bash", "arguments": {"command": "ls -la"}}', tools)
    assert call is not None and (call.name, call.arguments) == ("bash", '{"command": "ls -la"}')
    assert forced_call('{"name": "bash", "arguments": {"comm', tools) is None  # cut short by max_tokens
    assert held_back("Hello <tool") == len("Hello ")
    assert held_back("Hello <tool_call>\n{") == len("Hello ")
    assert held_back("Hello <b>") == len("Hello <b>")
