"""`openai:MODEL`, `gemini:MODEL`, `kimi:MODEL`: OpenAI-compatible chat endpoints through the `openai` SDK.

The SDK's own retries are off (`max_retries=0`) so that every retry happens in one loop here, bounded,
counted in `Completion.retries`, and only for transient failures (rate_limit, server_error, timeout,
connection). Every call streams, so the time to the first content token is measured, not guessed.

Keys come from the environment only. The key is handed to the SDK and nowhere else: `describe()` names
the variable it came from, and every error message is scrubbed of it, whole or in part (providers echo
parts of a bad key back in 401 messages: any run of MIN_KEY_QUOTE of its characters goes) before it
reaches a Completion.
"""

from __future__ import annotations

import ipaddress
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bloodwork.chronos.run import Provenance
from bloodwork.isa import json_schema
from bloodwork.oracles.base import CallInfo, CharEstimate, Completion, ErrorClass, Message, OracleConfigError

ResponseFormat = Literal["auto", "json_schema", "json_object", "none"]
RETRYABLE: frozenset[str] = frozenset({"rate_limit", "server_error", "timeout", "connection"})
# `bloodwork serve` says on every answer what its decoding was constrained to (none, json_schema, ...);
# other servers say nothing, and then only what was sent is known.
CONSTRAINT_HEADER = "x-bloodwork-constraint"
# Local OpenAI-compatible servers (llama.cpp, vLLM, Ollama, `bloodwork serve`) ignore the key, but the SDK
# refuses to start without one: on a loopback OPENAI_BASE_URL a missing key is replaced by this dummy.
LOOPBACK_DUMMY_KEY = "sk-no-key"


@dataclass(frozen=True)
class Provider:
    key_vars: tuple[str, ...]
    base_var: str
    default_base: str | None
    auto_format: ResponseFormat  # what `response_format: auto` tries first
    stream_usage: bool  # whether to ask for usage in the stream (`stream_options.include_usage`)


PROVIDERS: dict[str, Provider] = {
    "openai": Provider(("OPENAI_API_KEY",), "OPENAI_BASE_URL", "https://api.openai.com/v1", "json_schema", True),
    "gemini": Provider(("GEMINI_API_KEY",), "GEMINI_BASE_URL",
                       "https://generativelanguage.googleapis.com/v1beta/openai/", "json_schema", True),
    # Moonshot documents JSON mode, and reports usage inside the last choice rather than via stream_options.
    "kimi": Provider(("MOONSHOT_API_KEY", "KIMI_API_KEY"), "KIMI_BASE_URL", "https://api.moonshot.ai/v1",
                     "json_object", False),
}


class ApiOptions(BaseModel):
    """Options of `make_oracle("openai:...", **options)` (and gemini/kimi)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(default=0.0, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int = Field(default=1024, gt=0)
    seed: int | None = None
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=3, ge=0, le=10)
    backoff_s: float = Field(default=0.5, ge=0)  # first delay, doubled after each retry ...
    backoff_max_s: float = Field(default=8.0, ge=0)  # ... up to this cap (also caps a server's Retry-After)
    response_format: ResponseFormat = "auto"
    base_url: str | None = Field(default=None, description="a loopback server to talk to instead of the provider's "
                                 "(e.g. a `bloodwork serve` the caller started); never sent a key")


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _public_url(url: str) -> str:
    """The URL without user:password@ or a query string, where a key could hide."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1], query="", fragment=""))


_KEYLIKE = re.compile(r"\b(?:sk-|AIza)[\w\-*.]*|[\w\-]*\*{3,}[\w\-]*")
# A run of this many characters of the key, anywhere in a message, is taken as a quotation of it
# (providers quote a bad key's last few characters in 401 bodies, without any prefix to spot).
MIN_KEY_QUOTE = 6


def scrub_key(message: str, key: str, min_quote: int = MIN_KEY_QUOTE) -> str:
    """`message` with every run of `min_quote` or more characters of `key` (a part of it, anywhere) as [key]."""
    k = min(min_quote, len(key))
    if k == 0:
        return message
    grams = {key[i:i + k] for i in range(len(key) - k + 1)}
    covered = [False] * len(message)
    for i in range(len(message) - k + 1):
        if message[i:i + k] in grams:
            covered[i:i + k] = [True] * k
    out: list[str] = []
    for i, ch in enumerate(message):
        if not covered[i]:
            out.append(ch)
        elif i == 0 or not covered[i - 1]:
            out.append("[key]")
    return "".join(out)


class _Attempt(Exception):
    """One failed attempt, already classified (internal to the retry loop)."""

    def __init__(self, error_class: ErrorClass, message: str, retry_after: float | None = None,
                 text: str = "") -> None:
        super().__init__(message)
        self.error_class = error_class
        self.retry_after = retry_after
        self.text = text


class OpenAICompatOracle:
    provenance = Provenance.REAL

    def __init__(self, spec: str, provider: str, model: str, **options: object) -> None:
        self.spec = spec
        self.model = model
        self.provider_name = provider
        self.tokenizer = CharEstimate()
        try:
            self.options = ApiOptions.model_validate(options)
        except ValidationError as err:
            first = err.errors()[0]
            raise OracleConfigError(f"option {'.'.join(map(str, first['loc']))} for {spec}: {first['msg']}") from err
        prov = PROVIDERS[provider]
        if self.options.base_url is not None and not _is_loopback(self.options.base_url):
            raise OracleConfigError(f"{spec}: the base_url option takes a loopback server only "
                                    f"(use {prov.base_var} for others)")
        base = self.options.base_url or os.environ.get(prov.base_var) or prov.default_base
        self.base_url = base
        key_var = next((v for v in prov.key_vars if os.environ.get(v)), None)
        if self.options.base_url is not None:
            key_var, key = "(none: loopback server)", LOOPBACK_DUMMY_KEY  # a real key never goes to it
        elif key_var is not None:
            key = os.environ[key_var]
        elif provider == "openai" and os.environ.get(prov.base_var) and _is_loopback(base or ""):
            key_var, key = "(none: loopback server)", LOOPBACK_DUMMY_KEY
        else:
            raise OracleConfigError(f"{spec} needs an API key: set {' or '.join(prov.key_vars)}")
        self.key_source = key_var
        self._key = key
        fmt = self.options.response_format
        self.format_in_use: ResponseFormat = prov.auto_format if fmt == "auto" else fmt
        self.stream_usage = prov.stream_usage
        self._format_confirmed = False  # set once a request in the current format has succeeded
        self._honoured: Counter[str] = Counter()  # answers by the constraint the server reported
        try:
            from openai import OpenAI
        except ImportError as err:
            raise OracleConfigError(f"{spec} needs the openai package (pip install 'bloodwork[model]')") from err
        # No probe here: an unreachable server shows up as a failed call, journaled like any other.
        self._client = OpenAI(api_key=key, base_url=base, max_retries=0, timeout=self.options.timeout_s)

    # ---- one request ----------------------------------------------------------------------------------

    def _request(self, messages: list[Message], schema: dict[str, Any] | None) -> dict[str, Any]:
        opts = self.options
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": True,
                                "temperature": opts.temperature, "max_tokens": opts.max_tokens}
        if opts.top_p is not None:
            body["top_p"] = opts.top_p
        if opts.seed is not None:
            body["seed"] = opts.seed
        if self.stream_usage:
            body["stream_options"] = {"include_usage": True}
        if self.format_in_use == "json_schema":
            # strict=False: OpenAI's strict mode requires every property to be required, and the ISA has
            # optional fields; the frame is validated by our parser anyway.
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "syscall_frame", "schema": schema or json_schema(), "strict": False}}
        elif self.format_in_use == "json_object":
            body["response_format"] = {"type": "json_object"}
        return body

    def _attempt(self, messages: list[Message], schema: dict[str, Any] | None, start: float) -> Completion:
        import openai

        text: list[str] = []
        ttft_ms = None
        finish = None
        usage: Any = None
        try:
            with self._client.chat.completions.create(**self._request(messages, schema)) as stream:
                reported = stream.response.headers.get(CONSTRAINT_HEADER)
                for chunk in stream:
                    if chunk.usage is not None:
                        usage = chunk.usage
                    for choice in chunk.choices:
                        piece = choice.delta.content if choice.delta else None
                        if piece:
                            if ttft_ms is None:
                                ttft_ms = (time.perf_counter() - start) * 1000
                            text.append(piece)
                        if choice.finish_reason:
                            finish = choice.finish_reason
                        # Moonshot reports usage inside the final choice.
                        usage = (choice.model_extra or {}).get("usage") or usage
        except openai.APIStatusError as err:
            raise _Attempt(_status_class(err.status_code), self._scrub(f"HTTP {err.status_code}: {err.message}"),
                           _retry_after(err), "".join(text)) from err
        except openai.APITimeoutError as err:
            raise _Attempt("timeout", f"no answer within {self.options.timeout_s:g} s", text="".join(text)) from err
        except openai.APIConnectionError as err:
            cause = err.__cause__ or err
            raise _Attempt("connection", self._scrub(f"{type(cause).__name__}: {cause}"),
                           text="".join(text)) from err
        except (openai.APIError, ValueError) as err:  # an error event or a malformed chunk mid-stream
            raise _Attempt("server_error", self._scrub(f"bad stream: {err}"), text="".join(text)) from err
        raw = "".join(text)
        if finish is None:
            raise _Attempt("connection", "stream ended before a finish_reason (cut off)", text=raw)
        prompt_tokens = _usage_field(usage, "prompt_tokens")
        completion_tokens = _usage_field(usage, "completion_tokens")
        if prompt_tokens is None:
            prompt_tokens = sum(self.tokenizer.count(m.get("content", "")) for m in messages)
        if completion_tokens is None:
            completion_tokens = self.tokenizer.count(raw)
        self._honoured[reported or "unreported"] += 1
        return Completion(text=raw, ttft_ms=ttft_ms, prompt_tokens=prompt_tokens,
                          completion_tokens=completion_tokens, finish_reason=finish)

    def _scrub(self, message: str) -> str:
        # Cut first (scrubbing is linear but in Python): a key cut in half at 2,000 is still a quotation.
        return _KEYLIKE.sub("[redacted]", scrub_key(message[:2000], self._key))[:500]

    # ---- the bounded retry loop -----------------------------------------------------------------------

    def complete(self, messages: list[Message], schema: dict[str, Any] | None = None, *,
                 call: CallInfo | None = None) -> Completion:
        """One call, retried on transient errors with exponential backoff; never raises for API errors.

        With `response_format: auto`, a 400 before any structured request has succeeded is retried once
        without `response_format` and `stream_options`: if that succeeds the provider does not support
        them, and this oracle stops sending them (`describe()` shows what is in use).
        `latency_ms` and `ttft_ms` count from the start of the call, retries and backoff included: they
        are what the kernel waited.
        """
        opts = self.options
        start = time.perf_counter()
        retries = 0
        downgraded_from: tuple[ResponseFormat, bool] | None = None
        tried_plain = False
        while True:
            try:
                done = self._attempt(messages, schema, start)
            except _Attempt as failed:
                last = failed
            else:
                self._format_confirmed = True
                done.retries = retries
                done.latency_ms = (time.perf_counter() - start) * 1000
                return done
            if downgraded_from is not None:  # the plain request failed too: the format was not the cause
                self.format_in_use, self.stream_usage = downgraded_from
                downgraded_from = None
            elif (last.error_class == "bad_request" and opts.response_format == "auto" and not tried_plain
                  and not self._format_confirmed and (self.format_in_use != "none" or self.stream_usage)):
                tried_plain = True
                downgraded_from = (self.format_in_use, self.stream_usage)
                self.format_in_use, self.stream_usage = "none", False
                retries += 1
                continue
            if last.error_class not in RETRYABLE or retries >= opts.max_retries:
                return Completion(text=last.text, error=str(last), error_class=last.error_class,
                                  retries=retries, latency_ms=(time.perf_counter() - start) * 1000)
            delay = min(opts.backoff_max_s, opts.backoff_s * 2**retries)
            if last.retry_after is not None:
                delay = min(opts.backoff_max_s, max(delay, last.retry_after))
            time.sleep(delay)
            retries += 1

    def describe(self) -> dict[str, Any]:
        opts = self.options
        return {
            "backend": self.provider_name, "model": self.model, "base_url": _public_url(self.base_url or ""),
            "key_from": self.key_source, "response_format": opts.response_format,
            "response_format_in_use": self.format_in_use, "response_format_honoured": self.honoured(),
            "temperature": opts.temperature, "top_p": opts.top_p,
            "max_tokens": opts.max_tokens, "seed": opts.seed, "timeout_s": opts.timeout_s,
            "max_retries": opts.max_retries, "backoff_s": opts.backoff_s, "backoff_max_s": opts.backoff_max_s,
            "tokens": "provider usage when reported, else estimate (4 chars/token)",
        }

    def honoured(self) -> str | None:
        """What the server says it constrained the answers to: one kind (`json_schema`, `none`, ...) when all
        agree, `unreported` from a server that does not say, the counts when they differ; None before any."""
        if not self._honoured:
            return None
        if len(self._honoured) == 1:
            return next(iter(self._honoured))
        return "mixed: " + ", ".join(f"{k}={n}" for k, n in sorted(self._honoured.items()))

    def close(self) -> None:
        self._client.close()


def _status_class(status: int) -> ErrorClass:
    if status == 429:
        return "rate_limit"
    if status in (401, 403):
        return "auth"
    if status == 408:
        return "timeout"
    if status >= 500:
        return "server_error"
    return "bad_request"


def _retry_after(err: Any) -> float | None:
    """Seconds from a `Retry-After` header, if the server sent a number."""
    value = err.response.headers.get("retry-after") if getattr(err, "response", None) is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _usage_field(usage: Any, name: str) -> int | None:
    """A count from a usage object or a plain dict (providers' extra fields arrive as dicts)."""
    value = usage.get(name) if isinstance(usage, dict) else getattr(usage, name, None)
    return value if isinstance(value, int) else None
