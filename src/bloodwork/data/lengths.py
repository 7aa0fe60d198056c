"""Token lengths of a dataset's rows, counted as training will see them when the model is at hand.

Why it matters: TRL truncates from the end (`keep_start`), so a row longer than `max_length` loses its
final assistant turn, the very target. The lengths tell what `--max-length` keeps. The count is exact
(SmolLM2's tokenizer over its chat template) when the model cache exists, else an estimate at 4
characters a token, and the stats say which.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bloodwork.data.formats import FILE_KINDS, SPLITS, Messages, TokenLengths
from bloodwork.evidence.stats import distribution
from bloodwork.oracles.base import CharEstimate, OracleConfigError

EXACT = "exact (SmolLM2 tokenizer, chat template)"
ESTIMATE = "estimate (4 chars/token)"


def base_tokenizer() -> Any | None:
    """SmolLM2's tokenizer from the dequantized model cache that `bloodwork.oracles.local` keeps, if present."""
    try:
        from transformers import AutoTokenizer

        from bloodwork.oracles.local import cache_dir_for, cache_is_valid, cache_root, gguf_path, gguf_sha256

        root = cache_root()
        target = cache_dir_for(gguf_sha256(gguf_path(), root), root)
        return AutoTokenizer.from_pretrained(target) if cache_is_valid(target) else None
    except (ImportError, OracleConfigError, OSError):
        return None


def counters(exact: bool) -> tuple[str, Callable[[Messages], int], Callable[[str], int]]:
    """(label, prompt counter, completion counter)."""
    tok = base_tokenizer() if exact else None
    if tok is None:
        est = CharEstimate()
        return ESTIMATE, lambda msgs: sum(est.count(m["content"]) for m in msgs), est.count

    def prompt(msgs: Messages) -> int:
        text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        return len(tok.encode(text, add_special_tokens=False))

    # +1: the end-of-turn token that closes the answer is a trained token too.
    return EXACT, prompt, lambda text: len(tok.encode(text, add_special_tokens=False)) + 1


def _split_row(kind: str, row: dict[str, Any]) -> tuple[Messages, list[str]]:
    if kind == "sft":
        return row["messages"][:-1], [row["messages"][-1]["content"]]
    if kind == "kto":
        return row["prompt"], [row["completion"][0]["content"]]
    return row["prompt"], [row["chosen"][0]["content"], row["rejected"][0]["content"]]


def measure_lengths(dataset_dir: Path, *, exact: bool) -> TokenLengths:
    label, count_prompt, count_text = counters(exact)
    files = {}
    for split in SPLITS:
        for kind in FILE_KINDS:
            path = dataset_dir / split / f"{kind}.jsonl"
            if not path.is_file():
                continue
            prompts, completions, totals = [], [], []
            for line in path.read_text(encoding="utf-8").splitlines():
                messages, answers = _split_row(kind, json.loads(line))
                p = count_prompt(messages)
                prompts.append(p)
                for answer in answers:
                    c = count_text(answer)
                    completions.append(c)
                    totals.append(p + c)
            files[f"{split}/{kind}.jsonl"] = {"prompt": distribution(prompts), "completion": distribution(completions),
                                              "total": distribution(totals)}
    return TokenLengths(counter=label, files=files)
