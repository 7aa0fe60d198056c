"""Train/test split by run, per task, and the check that no test state leaks into training.

A run is the unit: its states are correlated tick to tick, so splitting rows would put the state before
a test row in training. Within each task the runs are ordered by a seeded hash and the first
`test_fraction` of them (at least one, when a task has two or more) go to test; `holdout_tasks` send
whole tasks to test. Identical states still occur across runs (every run of a task starts from the
same tick-0 prompt), so after the split any training row whose exact prompt is also a test prompt is
removed. `check_split_leak` re-reads the written files, recomputes every prompt hash from the rows
themselves (not from their metadata), and reports shared runs and shared prompts.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from pathlib import Path

from bloodwork.data.formats import FILE_KINDS, SPLITS, LeakReport, SplitAssignment, SplitName, prompt_sha256

EXAMPLES_SHOWN = 5


def assign_splits(group_tasks: dict[str, str], *, test_fraction: float, seed: int,
                  holdout_tasks: list[str]) -> SplitAssignment:
    by_task: dict[str, list[str]] = defaultdict(list)
    for group, task in group_tasks.items():
        by_task[task].append(group)
    groups: dict[str, SplitName] = {}
    for task, members in by_task.items():
        ordered = sorted(members, key=lambda g: hashlib.sha256(f"{seed}|{g}".encode()).hexdigest())
        if task in holdout_tasks:
            n_test = len(ordered)
        elif len(ordered) < 2 or test_fraction <= 0:
            n_test = 0
        else:
            n_test = min(len(ordered) - 1, max(1, math.floor(len(ordered) * test_fraction + 0.5)))
        for i, group in enumerate(ordered):
            groups[group] = "test" if i < n_test else "train"
    return SplitAssignment(seed=seed, test_fraction=test_fraction, holdout_tasks=sorted(holdout_tasks),
                           groups=dict(sorted(groups.items())), tasks=dict(sorted(group_tasks.items())))


def _row_prompt(kind: str, row: dict) -> list[dict[str, str]]:
    return row["messages"][:-1] if kind == "sft" else row["prompt"]


def check_split_leak(dataset_dir: Path) -> LeakReport:
    """Do any runs or exact states appear on both sides? Reads `train/` and `test/` files as written."""
    prompts: dict[SplitName, dict[str, str]] = {s: {} for s in SPLITS}
    groups: dict[SplitName, set[str]] = {s: set() for s in SPLITS}
    checked: dict[str, int] = {}
    for split in SPLITS:
        for kind in FILE_KINDS:
            path = dataset_dir / split / f"{kind}.jsonl"
            if not path.is_file():
                continue
            lines = path.read_text(encoding="utf-8").splitlines()
            checked[f"{split}/{kind}.jsonl"] = len(lines)
            for lineno, line in enumerate(lines, start=1):
                row = json.loads(line)
                sha = prompt_sha256(_row_prompt(kind, row))
                prompts[split].setdefault(sha, f"{split}/{kind}.jsonl:{lineno}")
                meta = row.get("meta", {})
                groups[split].update(g for g in (meta.get("group"), meta.get("run_id")) if g)
    shared_prompts = sorted(set(prompts["train"]) & set(prompts["test"]))
    shared_groups = sorted(groups["train"] & groups["test"])
    examples = [f"{prompts['train'][s]} = {prompts['test'][s]}" for s in shared_prompts[:EXAMPLES_SHOWN]]
    return LeakReport(ok=not shared_prompts and not shared_groups, checked_rows=checked,
                      shared_groups=shared_groups, shared_prompts=len(shared_prompts), examples=examples)
