"""`bloodwork serve`: one local model behind an OpenAI-compatible HTTP API (`/v1/models`,
`/v1/chat/completions`, plain JSON or SSE streaming), as agent harnesses use it: tool calls, JSON answers.

It lets any OpenAI-compatible tool (the `openai` SDK, litellm, mini-swe-agent, our own `openai:` backend)
talk to the embedded model, so the API path of the model matrix can be exercised end to end without a key.
Requests are served by threads, and their generations go to the model's engine (`engine.py`), which decodes
concurrent requests as one batch, each with its own sampling settings, `max_tokens`, `stop` strings and
constraint; an answer is the same whatever it was batched with. It listens on loopback unless told
otherwise, and has no authentication: put nothing but 127.0.0.1 in `host` unless the network around it is
trusted.

What a request may carry, and how tool calls and constraints work, is `chatapi.py`; what cannot be
honoured is a 400 in OpenAI's error shape. Every answer says whether its decoding was constrained: headers
`X-Bloodwork-Constrained: true|false` and `X-Bloodwork-Constraint: none|tool_call|json_object|json_schema|
isa_frame`, and the same in an extra `bloodwork` field of the answer (of the last chunk when streaming).

The server's `max_new_tokens` (option, default 192) caps every request's `max_tokens`: on a CPU one
client asking for 8000 tokens would otherwise hold the model for minutes (`finish_reason: length` says so).
"""

from __future__ import annotations

import errno
import json
import sys
import threading
import time
import uuid
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bloodwork.errors import BloodworkError
from bloodwork.oracles.base import Completion
from bloodwork.oracles.chatapi import (
    CALL_CLOSE,
    ChatRequest,
    RequestError,
    ToolCall,
    forced_call,
    held_back,
    parse_calls,
    parse_request,
)
from bloodwork.oracles.local import LocalOracle, Sampling, make_local_oracle

CONSTRAINED_HEADER = "X-Bloodwork-Constrained"
CONSTRAINT_HEADER = "X-Bloodwork-Constraint"


class ServeError(BloodworkError, RuntimeError):
    """The server cannot start (port in use, not a local spec); the message is one line for the user."""


def _sampling(req: ChatRequest, base: Sampling) -> Sampling:
    """The request's settings over the server's; `max_tokens` is capped by the server's `max_new_tokens`."""
    sampling = Sampling(
        max_new_tokens=min(req.max_tokens if req.max_tokens is not None else base.max_new_tokens,
                           base.max_new_tokens),
        temperature=base.temperature if req.temperature is None else req.temperature,
        top_p=base.top_p if req.top_p is None else req.top_p,
        seed=base.seed if req.seed is None else req.seed,
    )
    if sampling.max_new_tokens <= 0 or sampling.temperature < 0 or not 0 < sampling.top_p <= 1:
        raise RequestError("need max_tokens > 0, temperature >= 0, 0 < top_p <= 1")
    return sampling


def _generate(oracle: LocalOracle, req: ChatRequest, sampling: Sampling, on_text: Any) -> Completion:
    """Decode the request on the model's engine: the chat template, then the prefill (a forced call's
    opening tag), under the request's constraint (`schema` None with `isa_frame`: the ISA frame). Without
    parallel calls, an `auto` answer stops at the end of its first call."""
    stop = req.stop
    if req.tool_mode == "auto" and not req.parallel_calls:
        stop = (*stop, CALL_CLOSE)
    try:
        request = oracle.request(req.messages, sampling, schema=req.schema, constrained=req.constrained, stop=stop)
        if req.prefill:
            tok = oracle.loaded.tokenizer
            text = tok.apply_chat_template(req.messages, add_generation_prompt=True, tokenize=False) + req.prefill
            request = replace(request, prompt_ids=tok.encode(text, add_special_tokens=False))
        return oracle.engine.generate(request, on_text=on_text)
    except ValueError as err:  # a schema the grammar compiler refuses
        raise RequestError(str(err), param="tools" if req.constraint == "tool_call" else "response_format") from err


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "bloodwork"

    def log_message(self, format: str, *args: Any) -> None:
        return None  # one line per request on stderr is noise next to a run's own output

    def _json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        kind = "invalid_request_error" if status < 500 else "server_error"
        self._json(status, {"error": {"message": message, "type": kind, "param": param, "code": code}})

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self._json(200, {"object": "list", "data": [{"id": self.server.model_id, "object": "model",
                                                         "created": self.server.created, "owned_by": "bloodwork"}]})
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self) -> None:
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._error(404, f"no route {self.path}")
            return
        reply: _Reply | None = None
        try:
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError as err:
                raise RequestError(f"request body is not JSON: {err}") from err
            if not isinstance(body, dict):
                raise RequestError("request body must be a JSON object")
            oracle = self.server.oracle
            req = parse_request(body, spec_constrained=oracle.parsed.constrained)
            sampling = _sampling(req, oracle.sampling)
            reply = _Reply(self, req)
            done = _generate(oracle, req, sampling, reply.text if req.stream else None)
            if done.error is not None:  # only a context overflow, found before the first token is sent
                overflow = done.error_class == "context_overflow"
                raise RequestError(done.error, status=400 if overflow else 500, param="messages" if overflow else None,
                                   code="context_length_exceeded" if overflow else None)
            if req.stream:
                reply.finish(done)
            else:
                self._json(200, reply.whole(done), reply.headers)
        except RequestError as err:
            if reply is not None and reply.started:
                return  # cannot happen before a stream starts; kept so a 400 never lands mid-stream
            self._error(err.status, str(err), err.param, err.code)
        except (BrokenPipeError, ConnectionResetError):
            return  # the client left mid-answer; generation stopped with the failed write


class _Reply:
    """One answer: either a JSON object at the end, or SSE chunks whose headers go out with the first.

    Streaming: text goes out as it is decoded, except what could be (or is) a tool call of an `auto`
    answer, and trailing whitespace that a call's content would drop; calls go out whole when the answer
    ends (an `id`/`name` delta, then the arguments), with `finish_reason: tool_calls`. A streamed answer
    therefore adds up to exactly the plain one."""

    def __init__(self, handler: _Handler, req: ChatRequest) -> None:
        self.handler = handler
        self.req = req
        self.started = False
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model = handler.server.model_id
        self.decoded = ""  # the text decoded so far
        self.sent = ""  # the content streamed so far (a prefix of the final content)
        self.headers = {CONSTRAINED_HEADER: str(req.constrained).lower(), CONSTRAINT_HEADER: req.constraint}

    def _frame(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": choices, **extra}

    def _send(self, payload: dict[str, Any] | str) -> None:
        h = self.handler
        if not self.started:
            self.started = True
            h.send_response(200)
            h.send_header("Content-Type", "text/event-stream")
            h.send_header("Cache-Control", "no-cache")
            for name, value in self.headers.items():
                h.send_header(name, value)
            h.end_headers()
            first = "" if self.req.tool_mode != "call" else None
            self._send(self._frame([{"index": 0, "delta": {"role": "assistant", "content": first},
                                     "finish_reason": None}]))
        data = payload if isinstance(payload, str) else json.dumps(payload)
        h.wfile.write(f"data: {data}\n\n".encode())
        h.wfile.flush()

    def _delta(self, delta: dict[str, Any]) -> None:
        self._send(self._frame([{"index": 0, "delta": delta, "finish_reason": None}]))

    def text(self, piece: str) -> None:
        self.decoded += piece
        if self.req.tool_mode == "call":
            return  # a forced call is sent whole at the end
        upto = len(self.decoded)
        if self.req.tool_mode == "auto":
            upto = len(self.decoded[:held_back(self.decoded)].rstrip())
        if upto > len(self.sent):
            self._delta({"content": self.decoded[len(self.sent):upto]})
            self.sent = self.decoded[:upto]

    def _answer(self, done: Completion) -> tuple[str | None, list[ToolCall], str | None]:
        """content, tool calls and finish reason of the finished decode."""
        tools = self.req.tools
        if self.req.tool_mode == "call":
            call = forced_call(done.text, tools)
            if call is None:  # cut short (max_tokens): the raw text, and `length` says why
                return done.text, [], done.finish_reason
            return None, [call], "tool_calls"
        if self.req.tool_mode == "auto":
            content, calls = parse_calls(done.text, tools, self.req.parallel_calls)
            if calls:
                return content, calls, "tool_calls"
        return done.text, [], done.finish_reason

    @staticmethod
    def _usage(done: Completion) -> dict[str, int]:
        prompt, completion = done.prompt_tokens or 0, done.completion_tokens or 0
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def finish(self, done: Completion) -> None:
        content, calls, finish = self._answer(done)
        if content and len(content) > len(self.sent):
            self._delta({"content": content[len(self.sent):]})
        for i, call in enumerate(calls):
            self._delta({"tool_calls": [{"index": i, "id": call.id, "type": "function",
                                         "function": {"name": call.name, "arguments": ""}}]})
            self._delta({"tool_calls": [{"index": i, "function": {"arguments": call.arguments}}]})
        self._send(self._frame([{"index": 0, "delta": {}, "finish_reason": finish}], bloodwork=self._note(done)))
        if self.req.include_usage:
            self._send(self._frame([], usage=self._usage(done)))
        self._send("[DONE]")

    def whole(self, done: Completion) -> dict[str, Any]:
        content, calls, finish = self._answer(done)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = [c.wire() for c in calls]
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": self._usage(done), "bloodwork": self._note(done)}

    def _note(self, done: Completion) -> dict[str, Any]:
        """Ours, next to OpenAI's fields: the constraint, and how many requests the engine decoded this one
        with (mean over its steps; 1 = alone)."""
        return {"constrained": self.req.constrained, "constraint": self.req.constraint,
                "batch_size": done.batch_size}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    oracle: LocalOracle
    model_id: str
    created: int


class ModelServer:
    """The server as an object: binds at construction (so a busy port fails before the model loads),
    then `start()` serves from a thread (tests) or `serve_forever()` blocks (the CLI).

    `with ModelServer("local:smollm2", port=0) as srv: OpenAI(base_url=srv.url, ...)`
    """

    def __init__(self, spec: str, host: str = "127.0.0.1", port: int = 0, **options: object) -> None:
        scheme, _, rest = spec.partition(":")
        if scheme != "local" or not rest:
            raise ServeError("serve takes a local model spec (local:smollm2[+constrained][+float32][+lora=PATH]), "
                             f"not {spec!r}")
        try:
            self._http = _Server((host, port), _Handler, bind_and_activate=True)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise ServeError(f"port {port} on {host} is already in use (pick another with --port)") from err
            raise ServeError(f"cannot listen on {host}:{port}: {err.strerror or err}") from err
        try:
            self._http.oracle = make_local_oracle(spec, rest, **options)
        except BaseException:  # a bad spec, a failed load, Ctrl-C while loading: free the port
            self._http.server_close()
            raise
        self._http.model_id = spec
        self._http.created = int(time.time())
        self.host = host
        self.port = int(self._http.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL for OpenAI clients (ends in /v1)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def start(self) -> ModelServer:
        self._thread = threading.Thread(target=self._http.serve_forever, name="bloodwork-serve", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._http.serve_forever()

    def close(self) -> None:
        if self._thread is not None:
            self._http.shutdown()
            self._thread.join()
            self._thread = None
        self._http.server_close()

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(spec: str, host: str = "127.0.0.1", port: int = 8765, **options: object) -> None:
    """Serve `spec` until interrupted (Ctrl-C). Raises ServeError or OracleConfigError before serving."""
    server = ModelServer(spec, host, port, **options)
    print(f"bloodwork: serving {spec} at {server.url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
