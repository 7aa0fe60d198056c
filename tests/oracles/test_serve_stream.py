"""How `bloodwork serve` streams an answer that holds tool calls: the SSE chunks add up to the plain answer.

A free model only rarely writes a call on demand, so the decoded text is given here piece by piece, as the
engine hands it over, and the bytes the reply writes are read back as an OpenAI client reads them.
"""

from __future__ import annotations

import io
import json
from types import SimpleNamespace
from typing import Any

from bloodwork.oracles.base import Completion
from bloodwork.oracles.chatapi import parse_request
from bloodwork.oracles.serve import CONSTRAINT_HEADER, _Reply

BASH = {"type": "function", "function": {"name": "bash", "parameters": {
    "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}}


class _Socket:
    """What `_Reply` writes through: the status line and headers as a dict, the body as bytes."""

    def __init__(self) -> None:
        self.server = SimpleNamespace(model_id="local:smollm2")
        self.wfile = io.BytesIO()
        self.headers: dict[str, str] = {}

    def send_response(self, status: int) -> None:
        self.status = status

    def send_header(self, name: str, value: str) -> None:
        self.headers[name] = value

    def end_headers(self) -> None:
        return None

    def events(self) -> list[Any]:
        lines = self.wfile.getvalue().decode().split("\n\n")
        return [json.loads(x[6:]) if x[6:] != "[DONE]" else "[DONE]" for x in lines if x.startswith("data: ")]


def stream(text: str, pieces: int = 3, **body: Any) -> tuple[_Socket, dict[str, Any]]:
    req = parse_request({"messages": [{"role": "user", "content": "hi"}], "tools": [BASH], "stream": True, **body},
                        spec_constrained=False)
    sock = _Socket()
    reply = _Reply(sock, req)  # type: ignore[arg-type]
    done = Completion(text=text, prompt_tokens=3, completion_tokens=7, finish_reason="stop", batch_size=1.5)
    for i in range(0, len(text), pieces):
        reply.text(text[i:i + pieces])
    reply.finish(done)
    return sock, _Reply(sock, req).whole(done)  # type: ignore[arg-type]


def assemble(events: list[Any]) -> tuple[str | None, list[dict[str, Any]], list[str]]:
    """Content, calls and finish reasons, accumulated as the openai SDK and litellm do."""
    content: str | None = None
    calls: dict[int, dict[str, Any]] = {}
    finishes = []
    for event in events[:-1]:
        for choice in event["choices"]:
            delta = choice["delta"]
            if delta.get("content"):
                content = (content or "") + delta["content"]
            for part in delta.get("tool_calls") or []:
                call = calls.setdefault(part["index"], {"id": None, "name": "", "arguments": ""})
                call["id"] = part.get("id") or call["id"]
                call["name"] += part.get("function", {}).get("name") or ""
                call["arguments"] += part.get("function", {}).get("arguments") or ""
            if choice.get("finish_reason"):
                finishes.append(choice["finish_reason"])
    return content, [calls[i] for i in sorted(calls)], finishes


def test_streamed_call_adds_up_to_the_plain_answer() -> None:
    text = 'I will list them.\n<tool_call>\n{"name": "bash", "arguments": {"command": "ls"}}\n</tool_call>'
    sock, whole = stream(text)
    events = sock.events()
    content, calls, finishes = assemble(events)
    message = whole["choices"][0]["message"]
    assert content == message["content"] == "I will list them."
    assert [(c["name"], c["arguments"]) for c in calls] == [("bash", '{"command": "ls"}')]
    assert calls[0]["id"].startswith("call_")
    assert finishes == ["tool_calls"] == [whole["choices"][0]["finish_reason"]]
    # no piece of the call's text ever went out as content
    assert all("<tool" not in (c["delta"].get("content") or "") for e in events[:-1] for c in e["choices"])
    assert sock.headers[CONSTRAINT_HEADER] == "none"
    assert events[-2]["bloodwork"] == {"constrained": False, "constraint": "none", "batch_size": 1.5}
    assert events[-1] == "[DONE]"


def test_streamed_text_that_only_looks_like_a_call_is_sent_whole() -> None:
    for text in ("Use <b>bold</b> here.", 'Try <tool_call>{"name": "nope"}</tool_call> later'):
        sock, whole = stream(text, pieces=2)
        content, calls, finishes = assemble(sock.events())
        assert content == whole["choices"][0]["message"]["content"] == text
        assert calls == [] and finishes == ["stop"]


def test_tool_choice_none_streams_everything_as_text() -> None:
    text = '<tool_call>\n{"name": "bash", "arguments": {"command": "ls"}}\n</tool_call>'
    sock, whole = stream(text, tool_choice="none")
    content, calls, _ = assemble(sock.events())
    assert content == text == whole["choices"][0]["message"]["content"] and calls == []
