"""What a matrix row must share with its neighbours to stand beside them, and what it records about itself.

- `prompt_template_sha256`: the ISA prompt and the frame's JSON Schema, i.e. what every model is asked
  to produce and what its raw text is scored against. Rows scored under another ISA are not comparable.
- `chat_template_sha256`: how a local model turns messages into tokens (informational: it differs
  between model families by nature; an API model's template is applied by the server, unknown here).
- hardware and decoding settings: where and how the answers were produced.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import platform
from typing import Any
from urllib.parse import urlsplit

from bloodwork.chronos.journal import canonical_json
from bloodwork.isa import json_schema
from bloodwork.oracles.base import Oracle
from bloodwork.prompts import ISA_PROMPT

# `response_format_in_use` is what an API row sent; `response_format_honoured` what the server says it did
# (`bloodwork serve` reports it on every answer; other servers do not: "unreported").
DECODING_KEYS = ("temperature", "top_p", "max_new_tokens", "max_tokens", "seed", "constrained",
                 "response_format_in_use", "response_format_honoured", "dtype", "threads")


def prompt_template_sha256() -> str:
    return hashlib.sha256((ISA_PROMPT + "\n" + canonical_json(json_schema())).encode("utf-8")).hexdigest()


def chat_template_sha256(oracle: Oracle) -> str | None:
    template = getattr(getattr(getattr(oracle, "loaded", None), "tokenizer", None), "chat_template", None)
    return hashlib.sha256(template.encode("utf-8")).hexdigest() if isinstance(template, str) else None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def host() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "cpu": _cpu_model(), "logical_cpus": os.cpu_count()}
    try:
        import torch
    except ImportError:
        return info
    info["torch_threads"] = torch.get_num_threads()
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info


def _loopback(url: str) -> bool:
    name = urlsplit(url).hostname or ""
    try:
        return name == "localhost" or ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def hardware(described: dict[str, Any]) -> dict[str, Any]:
    """Local models ran here; an API model ran wherever its endpoint is (this host only sent requests),
    which is this host too when the endpoint is on loopback (e.g. `bloodwork serve`)."""
    url = described.get("base_url")
    if url and _loopback(url):
        return {"where": "this host, behind a loopback HTTP endpoint", "endpoint": url, **host()}
    if url:
        return {"where": "remote endpoint", "endpoint": url, "client": host()}
    return {"where": "this host", **host()}


def decoding(described: dict[str, Any]) -> dict[str, Any]:
    return {k: described[k] for k in DECODING_KEYS if k in described}
