"""`bloodwork train sft|dpo`: a LoRA adapter on SmolLM2-135M-Instruct from a dataset directory.

The base model comes from `bloodwork.oracles.local.load_model` (the GGUF, its dequantized cache and its
stale quantization flags are handled there) and is deep-copied, so training never touches the model
that in-process oracles share. The adapter folder holds what PEFT saves plus:

- `bloodwork_train.json`: the whole config (rank, alpha, lr, steps, batch, seed, ...), the sha256 of the
  data file and of the dataset manifest, the base weights' sha256, device, versions, time per step,
  the loss of every step, the rows used and dropped, and the runs and exact states trained on (the
  model matrix reads these to score the adapter only on states it never saw);
- `loss.json` and `loss.png`; `README.md`, the model card.

SFT trains on the final assistant turn only. SmolLM2's template has no `{% generation %}` markers, and
every earlier assistant turn in a prompt is the model's own past raw output, often a bad one: the
template below renders byte-identically to SmolLM2's and marks the last assistant turn alone (in a row,
the target), end-of-turn token included so the model learns to stop. Rows longer than `max_length` are
dropped and counted, not cut: TRL keeps the start of a sequence, which would cut away exactly the target.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bloodwork.chronos.files import atomic_write, sha256_file
from bloodwork.chronos.run import now_iso, versions
from bloodwork.data.formats import MANIFEST_FILE, TRAIN_LENGTH_FILE, DatasetManifest, TrainLength, prompt_sha256
from bloodwork.errors import BloodworkError
from bloodwork.evidence.stats import Distribution, distribution
from bloodwork.oracles.base import OracleConfigError

Kind = Literal["sft", "dpo"]
TRAIN_FILE = "bloodwork_train.json"
LOSS_JSON = "loss.json"
LOSS_PNG = "loss.png"
CHAT_TEMPLATE = (
    "{% set ns = namespace(target=-1) %}"
    "{% for message in messages %}{% if message['role'] == 'assistant' %}{% set ns.target = loop.index0 %}{% endif %}"
    "{% endfor %}"
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant "
    "named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{% if loop.index0 == ns.target %}{{ '<|im_start|>assistant\n' }}{% generation %}"
    "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class TrainError(BloodworkError, ValueError):
    """Bad base spec, missing or changed data, nothing left to train on."""


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Kind
    base: str = "local:smollm2"
    rank: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: str = "all-linear"
    lr: float | None = Field(default=None, gt=0, description="default: 2e-4 for SFT, 5e-5 for DPO")
    steps: int = Field(default=30, ge=1)
    # One row per forward pass, four per optimizer step. Four rows of 2,304 tokens in one pass (SFT, fp32 logits
    # over a 49k vocabulary, eager attention) took 24 GB and the kernel's OOM killer ended the campaign's
    # `train sft` on this 23 GB machine; one row at a time is the same step in a quarter of the memory.
    batch: int = Field(default=1, ge=1)
    grad_accum: int = Field(default=4, ge=1)
    max_length: int | None = Field(default=None, ge=64, description="default: the dataset's measured "
                                   "train_length.json (else 2048); rows longer are dropped, never cut")
    beta: float = Field(default=0.1, gt=0, description="DPO only")
    seed: int = 0
    threads: int = Field(default=2, ge=1)
    bf16: bool | None = Field(default=None, description="bf16 autocast; default: on a GPU, or a CPU with bf16 "
                                                        "instructions (AMX / AVX512-BF16), where it is ~1.7x faster")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (2e-4 if self.kind == "sft" else 5e-5)


class StepLog(BaseModel):
    step: int
    loss: float
    learning_rate: float | None = None
    grad_norm: float | None = None
    elapsed_s: float
    extra: dict[str, float] = Field(default_factory=dict, description="DPO rewards and accuracies")


class TrainRecord(BaseModel):
    config: TrainConfig
    learning_rate: float
    base: dict[str, Any]
    data: dict[str, Any]
    device: str
    versions: dict[str, str]
    started_at: str
    duration_s: float
    seconds_per_step: dict[str, float | None]
    steps: list[StepLog]
    train_groups: list[str]
    train_prompt_sha256: list[str]
    adapter_files: dict[str, str]


def check_base(spec: str, kind: Kind = "sft") -> Path | None:
    """The adapter a DPO run continues from (`local:smollm2+lora=SFT`), None for the plain base model."""
    from bloodwork.oracles.local import parse_spec

    scheme, _, rest = spec.partition(":")
    try:
        parsed = parse_spec(spec, rest) if scheme == "local" else None
    except OracleConfigError as err:
        raise TrainError(str(err)) from err
    if parsed is None or parsed.constrained or (parsed.adapter is not None and kind != "dpo"):
        raise TrainError(f"--base must be a plain local model (local:smollm2), or for dpo local:smollm2+lora=SFT, "
                         f"not {spec!r}")
    return parsed.adapter


def _data_file(data_dir: Path, kind: Kind) -> tuple[Path, DatasetManifest]:
    manifest_path = data_dir / MANIFEST_FILE
    if not manifest_path.is_file():
        raise TrainError(f"{data_dir} is not a dataset directory (no {MANIFEST_FILE}; run bloodwork dataset build)")
    manifest = DatasetManifest.model_validate_json(manifest_path.read_text())
    name = f"train/{kind}.jsonl"
    path = data_dir / name
    if name not in manifest.files or not path.is_file():
        raise TrainError(f"{data_dir} has no {name} rows to train {kind} on")
    if sha256_file(path) != manifest.files[name].sha256:
        raise TrainError(f"{path} changed since the dataset was built (sha256 differs from {MANIFEST_FILE})")
    return path, manifest


def _rows(path: Path, kind: Kind, tokenizer: Any, max_length: int) -> tuple[list[dict[str, Any]], list[dict], int]:
    """(rows for TRL, their metadata, how many were dropped as too long)."""
    def length(messages: list[dict[str, str]]) -> int:
        text = tokenizer.apply_chat_template(messages, tokenize=False, chat_template=CHAT_TEMPLATE)
        return len(tokenizer.encode(text, add_special_tokens=False))

    kept, metas, dropped = [], [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if kind == "sft":
            item = {"messages": row["messages"]}
            longest = length(row["messages"])
        else:
            item = {k: row[k] for k in ("prompt", "chosen", "rejected")}
            longest = max(length(row["prompt"] + row["chosen"]), length(row["prompt"] + row["rejected"]))
        if longest > max_length:
            dropped += 1
            continue
        kept.append(item)
        metas.append({**row.get("meta", {}), "prompt": row["messages"][:-1] if kind == "sft" else row["prompt"]})
    return kept, metas, dropped


def _callback(steps: list[StepLog], on_step: Callable[[int, float | None], None] | None) -> Any:
    from transformers import TrainerCallback

    class LossLog(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = time.perf_counter()

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
                   **kwargs: Any) -> None:
            if not logs or "loss" not in logs:
                return
            extra = {k: float(v) for k, v in logs.items() if k.startswith(("rewards/", "logps/"))}
            steps.append(StepLog(step=state.global_step, loss=float(logs["loss"]), extra=extra,
                                 learning_rate=logs.get("learning_rate"), grad_norm=logs.get("grad_norm"),
                                 elapsed_s=round(time.perf_counter() - self.start, 3)))
            if on_step:
                on_step(state.global_step, float(logs["loss"]))

    return LossLog()


def cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def _start_model(base: Any, adapter: Path | None, threads: int) -> tuple[Any, Any]:
    """(model to train, DPO reference). From the plain base: a copy, reference None (TRL then uses the model with
    its new adapter disabled, i.e. the base). From an SFT adapter: that very adapter, trainable, on a copy of the
    base, so the result is one adapter over the plain base (SFT then DPO) that loads as local:smollm2+lora=OUT;
    the reference is the SFT model itself (merged), as DPO expects."""
    if adapter is None:
        return copy.deepcopy(base), None
    from peft import PeftModel

    from bloodwork.oracles.local import load_model

    try:
        model = PeftModel.from_pretrained(copy.deepcopy(base), str(adapter), is_trainable=True)
        reference = copy.deepcopy(load_model(adapter, threads).model)
    except (OSError, ValueError, RuntimeError, KeyError, OracleConfigError) as err:
        raise TrainError(f"cannot start from the adapter {adapter}: {str(err).splitlines()[0]}") from err
    reference.eval()
    return model, reference


def _trainer(kind: Kind, cfg: TrainConfig, model: Any, tokenizer: Any, rows: list[dict[str, Any]], workdir: Path,
             callback: Any, cuda: bool, ref_model: Any = None) -> Any:
    import datasets
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import PrinterCallback
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    datasets.disable_progress_bars()  # our own bar (and the loss log) say how far it is

    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=cfg.target_modules,
                      task_type="CAUSAL_LM")
    common: dict[str, Any] = {
        "output_dir": str(workdir), "max_steps": cfg.steps, "per_device_train_batch_size": cfg.batch,
        "gradient_accumulation_steps": cfg.grad_accum, "learning_rate": cfg.learning_rate, "seed": cfg.seed,
        "logging_steps": 1, "save_strategy": "no", "report_to": [], "activation_checkpointing": False,
        "max_length": cfg.max_length, "use_cpu": not cuda, "bf16": cfg.bf16, "disable_tqdm": True,
        "dataloader_num_workers": 0}
    data = Dataset.from_list(rows)
    trainer: SFTTrainer | DPOTrainer
    if kind == "sft":
        trainer = SFTTrainer(model=model, args=SFTConfig(**common, assistant_only_loss=True), train_dataset=data,
                             processing_class=tokenizer, peft_config=lora, callbacks=[callback])
    else:
        # Continuing an SFT adapter: the model is a PeftModel already, and gets no second LoRA.
        trainer = DPOTrainer(model=model, ref_model=ref_model, args=DPOConfig(**common, beta=cfg.beta),
                             train_dataset=data, processing_class=tokenizer,
                             peft_config=lora if ref_model is None else None, callbacks=[callback])
    trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout
    return trainer


def _with_max_length(cfg: TrainConfig, data_dir: Path) -> tuple[TrainConfig, str]:
    """`cfg` with a max length (the flag's, else the one dataset build measured, else 2048), and where it came from."""
    if cfg.max_length is not None:
        return cfg, "--max-length"
    measured = data_dir / TRAIN_LENGTH_FILE
    chosen = TrainLength.model_validate_json(measured.read_text()).chosen if measured.is_file() else None
    length_from = f"{TRAIN_LENGTH_FILE} (measured by dataset build)" if chosen else "default 2048 (no measurement)"
    return cfg.model_copy(update={"max_length": chosen or 2048}), length_from


def _step_times(steps: list[StepLog]) -> Distribution:
    per_step = [b.elapsed_s - a.elapsed_s for a, b in zip(steps, steps[1:], strict=False)]
    if steps:
        per_step.insert(0, steps[0].elapsed_s)
    return distribution(per_step)


def _trained_on(metas: list[dict[str, Any]], start_adapter: Path | None) -> tuple[set[str], set[str]]:
    """The groups and prompt hashes the adapter has seen, this training's and those of the adapter it continues."""
    groups = {g for m in metas for g in (m.get("group"), m.get("run_id")) if g}
    prompts = {prompt_sha256(m["prompt"]) for m in metas}
    if start_adapter is not None and (start_adapter / TRAIN_FILE).is_file():
        # The adapter carries what it was trained on before: a matrix must keep those states out too.
        earlier = TrainRecord.model_validate_json((start_adapter / TRAIN_FILE).read_text())
        groups |= set(earlier.train_groups)
        prompts |= set(earlier.train_prompt_sha256)
    return groups, prompts


def train(data_dir: Path, out: Path, cfg: TrainConfig, *,
          on_step: Callable[[int, float | None], None] | None = None) -> TrainRecord:
    start_adapter = check_base(cfg.base, cfg.kind)
    if out.exists() and any(out.iterdir()):
        raise TrainError(f"{out} exists already; choose another --out")
    path, manifest = _data_file(data_dir, cfg.kind)
    cfg, length_from = _with_max_length(cfg, data_dir)
    assert cfg.max_length is not None
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from bloodwork.oracles.local import GGUF_NAME, load_model

    torch.set_num_threads(cfg.threads)
    try:
        loaded = load_model(threads=cfg.threads)
    except OracleConfigError as err:
        raise TrainError(str(err)) from err
    tokenizer = copy.deepcopy(loaded.tokenizer)
    tokenizer.chat_template = CHAT_TEMPLATE
    rows, metas, dropped = _rows(path, cfg.kind, tokenizer, cfg.max_length)
    if not rows:
        raise TrainError(f"every row of {path} is longer than --max-length {cfg.max_length} tokens")
    model, ref_model = _start_model(loaded.model, start_adapter, cfg.threads)
    model.train()
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else f"cpu ({torch.get_num_threads()} threads)"
    if cfg.bf16 is None:
        cfg = cfg.model_copy(update={"bf16": cuda or cpu_has_bf16()})
    steps: list[StepLog] = []
    started, t0 = now_iso(), time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".trainer-", dir=out) as workdir:
        trainer = _trainer(cfg.kind, cfg, model, tokenizer, rows, Path(workdir), _callback(steps, on_step), cuda,
                           ref_model=ref_model)
        torch.manual_seed(cfg.seed)
        trainer.train()
        trainer.model.save_pretrained(str(out))
    duration = time.perf_counter() - t0
    spread = _step_times(steps)
    (out / LOSS_JSON).write_text(json.dumps([s.model_dump() for s in steps], indent=1))
    plot_loss(steps, out / LOSS_PNG, title=f"{cfg.kind.upper()} LoRA r={cfg.rank} on {path.parent.parent.name}")
    groups, prompts = _trained_on(metas, start_adapter)
    record = TrainRecord(
        config=cfg, learning_rate=cfg.learning_rate,
        base={"spec": cfg.base, "weights": GGUF_NAME, "gguf_sha256": loaded.gguf_sha256,
              "model": "SmolLM2-135M-Instruct",
              **({"continued_adapter": str(start_adapter), "continued_adapter_sha256": {
                  p.name: sha256_file(p) for p in sorted(start_adapter.iterdir()) if p.is_file()}}
                 if start_adapter else {})},
        data={"dir": str(data_dir.resolve()), "file": str(path.resolve()), "file_sha256": sha256_file(path),
              "manifest_sha256": sha256_file(data_dir / MANIFEST_FILE), "dataset_created_at": manifest.created_at,
              "rows": len(rows) + dropped, "rows_used": len(rows), "dropped_too_long": dropped,
              "max_length": cfg.max_length, "max_length_from": length_from},
        device=device, versions=versions(), started_at=started, duration_s=round(duration, 3),
        seconds_per_step={"mean": spread.mean, "p50": spread.p50, "p95": spread.p95, "max": spread.max},
        steps=steps, train_groups=sorted(groups), train_prompt_sha256=sorted(prompts),
        adapter_files={})
    write_card(out, record)
    record.adapter_files = {p.name: sha256_file(p) for p in sorted(out.iterdir()) if p.is_file()}
    atomic_write(out / TRAIN_FILE, record.model_dump_json(indent=2))
    return record


def plot_loss(steps: list[StepLog], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([s.step for s in steps], [s.loss for s in steps], marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_card(out: Path, r: TrainRecord) -> None:
    """The model card: what this adapter is, what it was trained on, and what it is not."""
    c = r.config
    first, last = (r.steps[0].loss, r.steps[-1].loss) if r.steps else (math.nan, math.nan)
    per_step = r.seconds_per_step.get("mean")
    text = f"""# bloodwork {c.kind.upper()} LoRA adapter for SmolLM2-135M-Instruct

Load it with the model spec `local:smollm2+lora={out.resolve()}` (add `+constrained` for grammar-constrained
decoding).

- base: {r.base['model']} ({r.base['weights']}, sha256 {r.base['gguf_sha256']})
- data: `{r.data['file']}` (sha256 {r.data['file_sha256']}), {r.data['rows_used']} rows used,
  {r.data['dropped_too_long']} dropped as longer than {c.max_length} tokens; dataset manifest sha256
  {r.data['manifest_sha256']}
- LoRA: r={c.rank}, alpha={c.alpha}, dropout={c.dropout}, target modules {c.target_modules}
- optimisation: {c.steps} steps, batch {c.batch} x {c.grad_accum} accumulation, learning rate {r.learning_rate},
  seed {c.seed}{f', beta {c.beta}' if c.kind == 'dpo' else ''}, bf16 autocast {c.bf16}
- device: {r.device}; {r.duration_s:.1f} s in all, {f"{per_step:.1f}" if per_step else "-"} s per step (mean)
- loss: {first:.4f} at the first logged step, {last:.4f} at the last (`loss.json`, `loss.png`)
- trained on {len(r.train_groups)} runs and {len(r.train_prompt_sha256)} distinct states, listed in
  `{TRAIN_FILE}`: score it only on states from other runs (`bloodwork matrix` does).

Intended use: research on recovery behaviour of small agent models inside bloodwork's kernel. It is trained
on the journaled behaviour of a 135M model on bloodwork's own tasks; it is not a general assistant, and a
few dozen CPU steps teach format more than competence.
"""
    (out / "README.md").write_text(text)
