"""`openai:` / `gemini:` / `kimi:` against a real loopback HTTP server that misbehaves on purpose.

The model name picks the server's behaviour, so each test drives the real `openai` SDK over real sockets:
429s, 503s, answers slower than the timeout, streams cut mid-body, 401s that echo the key.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from bloodwork.oracles import OracleConfigError, make_oracle
from bloodwork.oracles.openai_compat import scrub_key

SECRET = "sk-test-SECRET-abcdef123456"
MESSAGES = [{"role": "user", "content": "hello there"}]
FRAME = '{"thought": "t", "q_next": "q", "op": {"name": "SYS_HALT", "reason": "done"}}'


class FakeAPI(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint whose behaviour is chosen by the request's `model`."""

    protocol_version = "HTTP/1.1"
    bodies: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True

    def _sse(self, events: list[dict[str, Any] | str], length: int | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        if length is not None:  # a promise the body will not keep: the stream is cut
            self.send_header("Content-Length", str(length))
        self.end_headers()
        for event in events:
            data = event if isinstance(event, str) else json.dumps(event)
            self.wfile.write(f"data: {data}\n\n".encode())
            self.wfile.flush()
        self.close_connection = True

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        model = body["model"]
        seen = self.bodies[model]
        seen.append(body)
        n = len(seen)

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        usage = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [],
                 "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}
        answer = [chunk({"role": "assistant", "content": ""}), chunk({"content": FRAME[:20]}),
                  chunk({"content": FRAME[20:]}), chunk({}, "stop")]
        if model == "ok" or (model == "429x2" and n > 2):
            self._sse([*answer, usage, "[DONE]"])
        elif model == "nousage":
            self._sse([*answer, "[DONE]"])
        elif model.startswith("429"):
            self._send(429, {"error": {"message": "slow down", "type": "rate_limit"}}, {"Retry-After": "0"})
        elif model == "503":
            self._send(503, {"error": {"message": "overloaded"}})
        elif model == "400":
            self._send(400, {"error": {"message": "bad messages"}})
        elif model == "401":
            masked = SECRET[:6] + "*" * 10 + SECRET[-4:]
            self._send(401, {"error": {"message": f"Incorrect API key provided: {SECRET} ({masked})"}})
        elif model == "401tail":  # quotes only parts of the key, with nothing key-like around them
            self._send(401, {"error": {"message": f"Invalid key ending in {SECRET[-10:]}; "
                                                  f"did you mean {SECRET[8:16]}?"}})
        elif model == "slow":
            time.sleep(1.0)
            self._sse([*answer, "[DONE]"])
        elif model == "cut":
            self._sse(answer[:2], length=100_000)
        elif model == "eof":
            self._sse(answer[:2])
        elif model == "noformat":  # a server that rejects response_format and stream_options
            if "response_format" in body or "stream_options" in body:
                self._send(400, {"error": {"message": "unknown field response_format"}})
            else:
                self._sse([*answer, "[DONE]"])
        else:
            self._send(404, {"error": {"message": f"no model {model}"}})


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    FakeAPI.bodies = defaultdict(list)
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeAPI)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "GEMINI_API_KEY", "GEMINI_BASE_URL", "MOONSHOT_API_KEY",
                "KIMI_API_KEY", "KIMI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    yield url
    server.shutdown()
    server.server_close()


FAST = {"backoff_s": 0.01, "backoff_max_s": 0.05}


def test_streamed_answer_with_usage_and_ttft(api: str) -> None:
    oracle = make_oracle("openai:ok", **FAST)
    done = oracle.complete(MESSAGES)
    assert (done.text, done.error, done.retries, done.finish_reason) == (FRAME, None, 0, "stop")
    assert (done.prompt_tokens, done.completion_tokens) == (11, 7)
    assert done.ttft_ms is not None and 0 < done.ttft_ms <= done.latency_ms
    sent = FakeAPI.bodies["ok"][0]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["schema"]["title"] == "bloodwork syscall frame"
    assert oracle.provenance == "real" and oracle.tokenizer.exact is False
    # this server does not say whether it honoured the format (`bloodwork serve` does): the row says so
    assert oracle.describe()["response_format_honoured"] == "unreported"


def test_without_usage_counts_are_estimated(api: str) -> None:
    done = make_oracle("openai:nousage").complete(MESSAGES)
    assert done.error is None
    assert done.completion_tokens == make_oracle("openai:nousage").tokenizer.count(FRAME)


def test_rate_limit_is_retried_then_succeeds(api: str) -> None:
    done = make_oracle("openai:429x2", max_retries=3, **FAST).complete(MESSAGES)
    assert (done.error, done.retries, done.text) == (None, 2, FRAME)
    assert len(FakeAPI.bodies["429x2"]) == 3


@pytest.mark.parametrize(("model", "error_class"), [("429", "rate_limit"), ("503", "server_error")])
def test_transient_errors_exhaust_the_retry_budget(api: str, model: str, error_class: str) -> None:
    done = make_oracle(f"openai:{model}", max_retries=2, **FAST).complete(MESSAGES)
    assert (done.error_class, done.retries) == (error_class, 2)
    assert len(FakeAPI.bodies[model]) == 3


def test_timeout_is_classified_and_retried(api: str) -> None:
    done = make_oracle("openai:slow", timeout_s=0.3, max_retries=1, **FAST).complete(MESSAGES)
    assert (done.error_class, done.retries) == ("timeout", 1)
    assert len(FakeAPI.bodies["slow"]) == 2


@pytest.mark.parametrize("model", ["cut", "eof"])
def test_cut_stream_is_a_connection_error_and_keeps_the_partial_text(api: str, model: str) -> None:
    done = make_oracle(f"openai:{model}", max_retries=1, **FAST).complete(MESSAGES)
    assert (done.error_class, done.retries) == ("connection", 1)
    assert done.text == FRAME[:20]
    assert len(FakeAPI.bodies[model]) == 2


def test_bad_request_is_not_retried(api: str) -> None:
    done = make_oracle("openai:400", response_format="none", **FAST).complete(MESSAGES)
    assert (done.error_class, done.retries) == ("bad_request", 0)
    assert len(FakeAPI.bodies["400"]) == 1
    assert "response_format" not in FakeAPI.bodies["400"][0]


def test_auto_format_falls_back_once_when_the_server_rejects_it(api: str) -> None:
    oracle = make_oracle("openai:noformat", **FAST)
    assert oracle.describe()["response_format_honoured"] is None  # nothing answered yet
    first = oracle.complete(MESSAGES)
    assert (first.error, first.retries, first.text) == (None, 1, FRAME)
    assert oracle.describe()["response_format_in_use"] == "none"
    second = oracle.complete(MESSAGES)
    assert (second.error, second.retries) == (None, 0)
    assert len(FakeAPI.bodies["noformat"]) == 3


def test_auth_error_never_shows_the_key(api: str) -> None:
    oracle = make_oracle("openai:401", **FAST)
    done = oracle.complete(MESSAGES)
    assert (done.error_class, done.retries) == ("auth", 0)
    everything = done.model_dump_json() + json.dumps(oracle.describe())
    assert SECRET not in everything and "abcdef123456" not in everything and "3456" not in everything
    assert "SECRET" not in everything
    assert "401" in (done.error or "")


def test_auth_error_quoting_only_part_of_the_key_is_scrubbed(api: str) -> None:
    done = make_oracle("openai:401tail", **FAST).complete(MESSAGES)
    assert done.error_class == "auth" and "Invalid key ending in [key]" in (done.error or "")
    for part in (SECRET[-10:], SECRET[-6:], SECRET[8:16], SECRET[10:16]):
        assert part not in done.model_dump_json(), part


def test_scrub_key_catches_every_quotation_of_six_characters_or_more() -> None:
    key = "sk-live-0123456789abcdefXYZ"
    assert scrub_key(f"a {key} b", key) == "a [key] b"
    assert scrub_key(f"ends in {key[-10:]}, starts {key[:7]}.", key) == "ends in [key], starts [key]."
    assert scrub_key(f"middle: {key[9:15]}!", key) == "middle: [key]!"
    assert scrub_key(f"short: {key[-5:]} and 'the model' stays", key) == f"short: {key[-5:]} and 'the model' stays"
    assert scrub_key("nothing here", "") == "nothing here"


def test_unreachable_server_is_a_failed_call_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{port}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    oracle = make_oracle("openai:any", max_retries=1, **FAST)
    done = oracle.complete(MESSAGES)
    assert (done.error_class, done.retries) == ("connection", 1)
    assert SECRET not in done.model_dump_json()


def test_missing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("GEMINI_API_KEY", "MOONSHOT_API_KEY", "KIMI_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(OracleConfigError, match="GEMINI_API_KEY"):
        make_oracle("gemini:gemini-2.5-flash")
    with pytest.raises(OracleConfigError, match="MOONSHOT_API_KEY or KIMI_API_KEY"):
        make_oracle("kimi:kimi-k2")
    with pytest.raises(OracleConfigError, match="OPENAI_API_KEY"):
        make_oracle("openai:gpt-4o-mini")
    monkeypatch.setenv("OPENAI_BASE_URL", "https://example.invalid/v1")
    with pytest.raises(OracleConfigError, match="OPENAI_API_KEY"):
        make_oracle("openai:gpt-4o-mini")


def test_provider_bases_keys_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("GEMINI_BASE_URL", "KIMI_BASE_URL", "MOONSHOT_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    monkeypatch.setenv("KIMI_API_KEY", SECRET)
    gemini = make_oracle("gemini:gemini-2.5-flash").describe()
    assert gemini["base_url"] == "https://generativelanguage.googleapis.com/v1beta/openai/"
    assert gemini["key_from"] == "GEMINI_API_KEY" and gemini["response_format_in_use"] == "json_schema"
    kimi = make_oracle("kimi:kimi-k2").describe()
    assert kimi["base_url"] == "https://api.moonshot.ai/v1" and kimi["key_from"] == "KIMI_API_KEY"
    assert kimi["response_format_in_use"] == "json_object"
    monkeypatch.setenv("KIMI_BASE_URL", "https://user:pw@proxy.example/v1?key=abc")
    assert make_oracle("kimi:kimi-k2").describe()["base_url"] == "https://proxy.example/v1"
    assert SECRET not in json.dumps(gemini) + json.dumps(kimi)


def test_loopback_base_without_key_uses_a_dummy(api: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    oracle = make_oracle("openai:ok")
    assert oracle.describe()["key_from"].startswith("(none")
    assert oracle.complete(MESSAGES).error is None


def test_options_are_validated(api: str) -> None:
    with pytest.raises(OracleConfigError, match="max_retrys"):
        make_oracle("openai:ok", max_retrys=2)
    with pytest.raises(OracleConfigError, match="response_format"):
        make_oracle("openai:ok", response_format="xml")
