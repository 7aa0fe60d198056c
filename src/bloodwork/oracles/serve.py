"""`bloodwork serve`: one local model behind an OpenAI-compatible HTTP API (`/v1/models`,
`/v1/chat/completions`, plain JSON or SSE streaming).

It lets any OpenAI-compatible tool (and our own `openai:` backend) talk to the embedded model, so the API
path of the model matrix can be exercised end to end without a key. Requests are served by threads, and
their generations go to the model's engine (`engine.py`), which decodes concurrent requests as one batch,
each with its own sampling settings, `max_tokens`, `stop` strings and constraint; an answer is the same
whatever it was batched with. It listens on loopback unless told otherwise, and has no authentication: put
nothing but 127.0.0.1 in `host` unless the network around it is trusted.

The server's `max_new_tokens` (option, default 192) caps every request's `max_tokens`: on a CPU one
client asking for 8000 tokens would otherwise hold the model for minutes.

A `+constrained` spec constrains every answer: to the request's `response_format` JSON Schema when it
sends one, else to the ISA frame. Without `+constrained`, `response_format` is ignored (the model would
otherwise silently differ from `local:smollm2` used in-process).
"""

from __future__ import annotations

import errno
import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bloodwork.oracles.base import Completion
from bloodwork.oracles.local import LocalOracle, Sampling, make_local_oracle


class ServeError(RuntimeError):
    """The server cannot start (port in use, not a local spec); the message is one line for the user."""


class _RequestError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _content(value: Any) -> str:
    """OpenAI message content: a string, or a list of parts of which the text parts are kept."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(p.get("text", "") for p in value if isinstance(p, dict) and p.get("type") == "text")
    raise _RequestError(400, "message content must be a string or a list of text parts")


def _number(value: Any, name: str, kind: type, default: Any) -> Any:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and not isinstance(value, int)):
        raise _RequestError(400, f"{name} must be a{'n integer' if kind is int else ' number'}")
    return kind(value)


def _stop(value: Any) -> tuple[str, ...]:
    """OpenAI's `stop`: null, a string, or up to 4 strings."""
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise _RequestError(400, "stop must be a non-empty string or a list of up to 4 of them")
    return tuple(stops)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "bloodwork"

    def log_message(self, format: str, *args: Any) -> None:
        return None  # one line per request on stderr is noise next to a run's own output

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        kind = "invalid_request_error" if status < 500 else "server_error"
        self._json(status, {"error": {"message": message, "type": kind, "code": code}})

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
        try:
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError as err:
                raise _RequestError(400, f"request body is not JSON: {err}") from err
            if not isinstance(body, dict):
                raise _RequestError(400, "request body must be a JSON object")
            self._chat(body)
        except _RequestError as err:
            self._error(err.status, str(err), err.code)
        except (BrokenPipeError, ConnectionResetError):
            return  # the client left mid-answer; generation stopped with the failed write

    def _chat(self, body: dict[str, Any]) -> None:
        oracle = self.server.oracle
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise _RequestError(400, "messages must be a non-empty list of objects")
        msgs = [{"role": str(m.get("role", "user")), "content": _content(m.get("content", ""))} for m in messages]
        base = oracle.sampling
        max_tokens = _number(body.get("max_completion_tokens", body.get("max_tokens")), "max_tokens", int,
                             base.max_new_tokens)
        sampling = Sampling(
            max_new_tokens=min(max_tokens, base.max_new_tokens),
            temperature=_number(body.get("temperature"), "temperature", float, base.temperature),
            top_p=_number(body.get("top_p"), "top_p", float, base.top_p),
            seed=_number(body.get("seed"), "seed", int, base.seed),
        )
        if sampling.max_new_tokens <= 0 or sampling.temperature < 0 or not 0 < sampling.top_p <= 1:
            raise _RequestError(400, "need max_tokens > 0, temperature >= 0, 0 < top_p <= 1")
        stop = _stop(body.get("stop"))
        schema = None
        fmt = body.get("response_format")
        if oracle.parsed.constrained and isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema")
        stream = bool(body.get("stream"))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        reply = _Reply(self)
        try:
            done = oracle.generate(msgs, sampling, schema=schema, stop=stop, on_text=reply.text if stream else None)
        except ValueError as err:  # a response_format schema the grammar compiler refuses
            raise _RequestError(400, str(err)) from err
        if done.error is not None:  # only a context overflow, found before the first token is sent
            overflow = done.error_class == "context_overflow"
            raise _RequestError(400 if overflow else 500, done.error, "context_length_exceeded" if overflow else None)
        if stream:
            reply.finish(done, include_usage)
        else:
            self._json(200, reply.whole(done))


class _Reply:
    """One answer: either a JSON object at the end, or SSE chunks whose headers go out with the first."""

    def __init__(self, handler: _Handler) -> None:
        self.handler = handler
        self.started = False
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model = handler.server.model_id

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
            h.end_headers()
            self._send(self._frame([{"index": 0, "delta": {"role": "assistant", "content": ""},
                                     "finish_reason": None}]))
        data = payload if isinstance(payload, str) else json.dumps(payload)
        h.wfile.write(f"data: {data}\n\n".encode())
        h.wfile.flush()

    def text(self, piece: str) -> None:
        self._send(self._frame([{"index": 0, "delta": {"content": piece}, "finish_reason": None}]))

    @staticmethod
    def _usage(done: Completion) -> dict[str, int]:
        prompt, completion = done.prompt_tokens or 0, done.completion_tokens or 0
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def finish(self, done: Completion, include_usage: bool) -> None:
        self._send(self._frame([{"index": 0, "delta": {}, "finish_reason": done.finish_reason}]))
        if include_usage:
            self._send(self._frame([], usage=self._usage(done)))
        self._send("[DONE]")

    def whole(self, done: Completion) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text},
                             "finish_reason": done.finish_reason}],
                "usage": self._usage(done)}


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
