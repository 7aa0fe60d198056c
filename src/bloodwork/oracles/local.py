"""`local:smollm2[+constrained][+float32][+lora=PATH]`: SmolLM2-135M-Instruct in-process with transformers on CPU.

Three modules make the embedded model: `weights` (find the GGUF, keep its dequantized cache, load once per
process), `decoding` (the forward pass over per-sequence caches), `engine` (one per loaded model: batches
concurrent requests). This one is the oracle: spec, options, chat template, per-call seeds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bloodwork.chronos.run import Provenance
from bloodwork.oracles.base import CallInfo, Completion, Message, OracleConfigError
from bloodwork.oracles.decoding import Sampling
from bloodwork.oracles.engine import Request, engine_for
from bloodwork.oracles.weights import (
    CACHE_MARKER,
    GGUF_NAME,
    Dtype,
    cache_dir_for,
    cache_is_valid,
    cache_root,
    forget_loaded,
    gguf_path,
    gguf_sha256,
    load_model,
    write_cache_atomically,
)

__all__ = ["CACHE_MARKER", "DTYPES", "GGUF_NAME", "MODELS", "HFTokenCounter", "LocalOptions", "LocalOracle",
           "LocalSpec", "Sampling", "cache_dir_for", "cache_is_valid", "cache_root", "forget_loaded", "gguf_path",
           "gguf_sha256", "load_model", "make_local_oracle", "parse_spec", "write_cache_atomically"]

MODELS = ("smollm2",)


class LocalOptions(BaseModel):
    """Options of `make_oracle("local:...", **options)`; greedy unless temperature > 0."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(default=192, gt=0)
    temperature: float = Field(default=0.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int = 0
    threads: int | None = Field(default=None, gt=0)


# Inference precision: bfloat16 unless the spec says `+float32` (README, "Design choices, measured").
DTYPES: tuple[Dtype, ...] = ("bfloat16", "float32")


@dataclass(frozen=True)
class LocalSpec:
    model: str
    constrained: bool
    adapter: Path | None
    dtype: Dtype = "bfloat16"


def parse_spec(spec: str, rest: str) -> LocalSpec:
    """`smollm2`, then `+constrained`, `+float32` (or `+bfloat16`, the default) and/or `+lora=PATH` in any
    order; a PATH may itself contain `+` (any part after `lora=` that is not another modifier belongs to it)."""
    model, *mods = rest.split("+")
    if model not in MODELS:
        raise OracleConfigError(f"unknown local model {model!r} in {spec!r} (known: {', '.join(MODELS)})")
    constrained = False
    dtype: Dtype = DTYPES[0]
    lora: str | None = None
    for mod in mods:
        if mod == "constrained":
            constrained = True
        elif mod in DTYPES:
            dtype = mod  # narrowed to a Dtype by the membership test
        elif mod.startswith("lora=") and lora is None:
            lora = mod.removeprefix("lora=")
        elif lora is not None:
            lora += "+" + mod
        else:
            raise OracleConfigError(f"unknown modifier {mod!r} in {spec!r} "
                                    "(known: +constrained, +float32, +bfloat16, +lora=PATH)")
    adapter = None
    if lora is not None:
        adapter = Path(lora).expanduser().resolve()
        if not (adapter / "adapter_config.json").is_file():
            raise OracleConfigError(f"{lora} is not a PEFT LoRA adapter (no adapter_config.json)")
    return LocalSpec(model=model, constrained=constrained, adapter=adapter, dtype=dtype)


class HFTokenCounter:
    """Exact token counts with the model's own tokenizer (the context budget is spent in these)."""

    exact: bool = True

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    def count(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False))


class LocalOracle:
    """An Oracle over the shared engine of its model; `constrained` masks every step to the frame schema."""

    provenance = Provenance.REAL

    def __init__(self, spec: str, parsed: LocalSpec, options: LocalOptions) -> None:
        self.spec = spec
        self.parsed = parsed
        self.sampling = Sampling(max_new_tokens=options.max_new_tokens, temperature=options.temperature,
                                 top_p=options.top_p, seed=options.seed)
        self.loaded = load_model(parsed.adapter, options.threads, parsed.dtype)
        self.engine = engine_for(self.loaded)
        self.tokenizer = HFTokenCounter(self.loaded.tokenizer)
        self._system: dict[str, tuple[int, ...]] = {}  # system prompt -> its tokens (one or two per run)

    def prompt_ids(self, messages: list[Message]) -> list[int]:
        """The model's own chat template, ending with the assistant header."""
        return self._encode(messages, generation_prompt=True)

    def _encode(self, messages: list[Message], generation_prompt: bool) -> list[int]:
        tok = self.loaded.tokenizer
        text = tok.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)
        return tok.encode(text, add_special_tokens=False)

    def _system_ids(self, content: str) -> tuple[int, ...]:
        if content not in self._system:
            self._system[content] = tuple(self._encode([{"role": "system", "content": content}], False))
        return self._system[content]

    def request(self, messages: list[Message], sampling: Sampling, *, schema: dict[str, Any] | None = None,
                constrained: bool | None = None, stop: tuple[str, ...] = ()) -> Request:
        """The engine request for these messages. The system message's tokens are marked as a reusable
        prefix when the template renders it first and alone (every tick of a run starts with the same one)."""
        ids = self.prompt_ids(messages)
        prefix_len = 0
        if len(messages) > 1 and messages[0].get("role") == "system":
            prefix = self._system_ids(messages[0].get("content", ""))
            if tuple(ids[:len(prefix)]) == prefix:
                prefix_len = len(prefix)
        return Request(prompt_ids=ids, sampling=sampling, schema=schema, prefix_len=prefix_len, stop=stop,
                       constrained=self.parsed.constrained if constrained is None else constrained)

    def generate(self, messages: list[Message], sampling: Sampling, *, schema: dict[str, Any] | None = None,
                 constrained: bool | None = None, stop: tuple[str, ...] = (),
                 on_text: Callable[[str], None] | None = None) -> Completion:
        """`complete` with per-request sampling, constraint and stop strings, and streamed text (what the
        HTTP server needs). `constrained=None` follows the spec."""
        request = self.request(messages, sampling, schema=schema, constrained=constrained, stop=stop)
        return self.engine.generate(request, on_text=on_text)

    def _sampling_for(self, call: CallInfo | None) -> Sampling:
        sampling = self.sampling
        if call is not None and sampling.temperature > 0:
            # A per-call seed keeps sampled runs reproducible call by call, whatever ran before.
            seed = int.from_bytes(hashlib.sha256(f"{sampling.seed}|{call.tick}|{call.call_index}".encode())
                                  .digest()[:4], "big")
            sampling = Sampling(sampling.max_new_tokens, sampling.temperature, sampling.top_p, seed)
        return sampling

    def complete(self, messages: list[Message], schema: dict[str, Any] | None = None, *,
                 call: CallInfo | None = None) -> Completion:
        return self.generate(messages, self._sampling_for(call), schema=schema)

    def complete_many(self, messages: list[Message], schema: dict[str, Any] | None,
                      calls: list[CallInfo]) -> list[Completion]:
        """One call per `calls` entry at the same prompt, decoded as one batch: the same answers as calling
        `complete` for each in turn (the engine's answers do not depend on their batch), for one prefill."""
        requests = [self.request(messages, self._sampling_for(call), schema=schema) for call in calls]
        return self.engine.generate_many(requests)

    def describe(self) -> dict[str, Any]:
        import torch

        loaded, engine = self.loaded, self.engine
        return {
            "backend": "local", "model": "SmolLM2-135M-Instruct", "weights": GGUF_NAME,
            "gguf_sha256": loaded.gguf_sha256, "adapter": str(loaded.adapter) if loaded.adapter else None,
            "constrained": self.parsed.constrained, "max_new_tokens": self.sampling.max_new_tokens,
            "temperature": self.sampling.temperature, "top_p": self.sampling.top_p, "seed": self.sampling.seed,
            "dtype": loaded.dtype, "threads": torch.get_num_threads(), "context_length": loaded.context_length,
            "engine": {"max_batch": engine.max_batch, "rows": engine.forward.rows, "join": engine.join},
            "tokens": "exact (model tokenizer)",
        }

    def close(self) -> None:
        return None  # the model stays loaded for the process's other oracles


def make_local_oracle(spec: str, rest: str, **options: object) -> LocalOracle:
    parsed = parse_spec(spec, rest)
    try:
        opts = LocalOptions.model_validate(options)
    except ValidationError as err:
        first = err.errors()[0]
        raise OracleConfigError(f"option {'.'.join(map(str, first['loc']))} for {spec}: {first['msg']}") from err
    return LocalOracle(spec, parsed, opts)
