"""Every file a dataset directory holds, as pydantic models: rows in TRL's conversational formats, the
split assignment, the stats and the manifest.

Row metadata never holds a null or an empty list: `datasets` infers Arrow types block by block, and a
block of nulls next to a block of strings fails to load. Absent values are "" and lists are comma-joined.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from bloodwork.chronos.journal import canonical_json
from bloodwork.evidence.stats import Distribution

Messages = list[dict[str, str]]
Pool = Literal["golden", "recovery", "rejected"]
POOLS: tuple[Pool, ...] = ("golden", "recovery", "rejected")
SplitName = Literal["train", "test"]
SPLITS: tuple[SplitName, ...] = ("train", "test")
FILE_KINDS = ("sft", "dpo", "kto")
STATS_FILE = "failure_recovery_dataset_stats.json"
TRAIN_LENGTH_FILE = "train_length.json"
SPLITS_FILE = "splits.json"
MANIFEST_FILE = "manifest.json"


def prompt_sha256(messages: Messages) -> str:
    """Identity of a state: the exact messages, canonical JSON (the prompt of every row is hashed this way)."""
    return hashlib.sha256(canonical_json(messages).encode("utf-8")).hexdigest()


def assistant(text: str) -> Messages:
    return [{"role": "assistant", "content": text}]


class RowMeta(BaseModel):
    """Where a row comes from: enough to find the tick in its run and to audit the split."""

    model_config = ConfigDict(extra="forbid")

    row_id: str
    pool: str
    run_id: str
    group: str = Field(description="the split unit: the original run (a replay's original)")
    task: str
    tick: int
    provenance: str
    model: str
    source: str = Field(description="the input path the run was found under")
    split: str
    prompt_sha256: str
    op: str = Field(description="op name of the completion, '' if it has none")
    traps: str = Field(description="comma-joined trap kinds ('' if none)")
    detail: str = ""
    temperature: float = Field(default=0.0, description="sampling temperature of the answer (0 = greedy)")
    kind: str = Field(default="run", description="run (a run's tick), fork (a student sample at a forked "
                                                  "state) or teacher (a kept teacher relabel)")


class SftRow(BaseModel):
    """`messages`: the exact prompt of the tick, then the target as the one final assistant turn."""

    messages: Messages
    meta: RowMeta


class KtoRow(BaseModel):
    prompt: Messages
    completion: Messages
    label: bool
    meta: RowMeta


class DpoMeta(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pair_id: str
    source: Literal["fork", "same-prompt"]
    fork_id: str = Field(description="'' for same-prompt pairs found in the pools")
    run_id: str
    group: str
    task: str
    tick: int
    provenance: str
    model: str
    split: str
    prompt_sha256: str
    chosen_label: str
    rejected_label: str
    chosen_op: str
    rejected_op: str
    chosen_provenance: str = ""
    rejected_provenance: str = ""


class DpoRow(BaseModel):
    prompt: Messages
    chosen: Messages
    rejected: Messages
    meta: DpoMeta


class SplitAssignment(BaseModel):
    """Which runs (groups) went where, per task; a whole run is always on one side."""

    seed: int
    test_fraction: float
    holdout_tasks: list[str]
    groups: dict[str, SplitName]
    tasks: dict[str, str] = Field(description="group -> task")


class MixReport(BaseModel):
    target: dict[str, float]
    available: dict[str, int]
    selected: dict[str, int]
    achieved: dict[str, float | None]
    limiting: str | None = Field(description="the pool (or 'size cap') that bounded the total")
    total: int
    available_by_provenance: dict[str, dict[str, int]] = Field(default_factory=dict,
                                                               description="pool -> provenance -> rows before the mix")
    selected_by_provenance: dict[str, dict[str, int]] = Field(default_factory=dict,
                                                              description="pool -> provenance -> rows the mix kept")
    achieved_by_provenance: dict[str, float] = Field(default_factory=dict,
                                                     description="provenance -> share of the selected rows")


class DedupCounts(BaseModel):
    exact: int = 0
    near: int = 0
    contradictory: int = Field(default=0, description="same prompt and text in a positive and the rejected pool")
    cross_pool: int = Field(default=0, description="same prompt and text in golden and recovery (kept as recovery)")
    cross_split: int = Field(default=0, description="train rows whose state is exactly or nearly a test row's")


class LeakReport(BaseModel):
    ok: bool
    checked_rows: dict[str, int]
    shared_groups: list[str]
    shared_prompts: int
    examples: list[str] = Field(default_factory=list)


class TokenLengths(BaseModel):
    counter: str = Field(description="'exact (SmolLM2 tokenizer, chat template)' or 'estimate (4 chars/token)'")
    files: dict[str, dict[str, Distribution]]


class DpoStats(BaseModel):
    forks: int = 0
    fork_pairs: int = 0
    fork_pairs_withheld: int = Field(default=0, description="pairs of train runs whose state is also a test state")
    same_prompt_pairs: int = 0
    refused: dict[str, int] = Field(default_factory=dict, description="fork refusals by reason")


class DistinctStates(BaseModel):
    """Distinct states (exact prompts) a source gave: as mined, and in the pools after dedup and the split."""

    before: int
    after: int
    rows_before: int
    rows_after: int


class TrainLength(BaseModel):
    """The default `train --max-length`, chosen from the measured lengths of the train split's rows."""

    counter: str
    rows: int
    total_tokens: Distribution
    prompt_tokens: Distribution
    chosen: int
    rule: str
    over: dict[str, int] = Field(description="file -> rows longer than `chosen` (what training would drop)")


class DatasetStats(BaseModel):
    generator: str
    inputs: list[str]
    runs_used: int
    runs_excluded: dict[str, int] = Field(description="reason -> runs (provenance, duplicates, fork artifacts)")
    journals_failing_verify: list[str]
    candidates: dict[str, int] = Field(description="mined per pool, before deduplication")
    skipped: dict[str, int] = Field(description="ticks that matched a pool but cannot be a row, by reason")
    dedup: DedupCounts
    after_dedup: dict[str, dict[str, int]] = Field(description="split -> pool -> rows before the mix")
    mix: dict[str, MixReport] = Field(description="per split")
    recovery_windows: dict[str, int] = Field(description="complete: the trap tick is still in the prompt")
    by_source: dict[str, int]
    by_provenance: dict[str, int]
    by_model: dict[str, int]
    by_task: dict[str, int]
    by_split: dict[str, int]
    dpo: DpoStats
    files: dict[str, int] = Field(description="file -> rows (a file with no rows is not written)")
    token_lengths: TokenLengths
    leak_check: LeakReport
    provenance_filter: list[str] = Field(default_factory=list, description="fnmatch patterns rows had to match")
    filtered_out: dict[str, int] = Field(default_factory=dict, description="provenance -> rows the filter removed")
    distinct_states: dict[str, DistinctStates] = Field(default_factory=dict,
                                                       description="source kind (run, fork, teacher) and input "
                                                                   "path -> distinct states before/after dedup")
    by_pool_provenance: dict[str, dict[str, dict[str, int]]] = Field(
        default_factory=dict, description="split -> pool -> provenance -> rows selected by the mix")
    by_temperature: dict[str, int] = Field(default_factory=dict, description="sampling temperature -> rows selected")
    holdout: dict[str, list[str]] = Field(default_factory=dict, description="held-out tasks by family (their runs "
                                                                            "are test only)")
    train_length: TrainLength | None = None


class FileEntry(BaseModel):
    sha256: str
    bytes: int


class DatasetManifest(BaseModel):
    schema_version: int = 1
    created_at: str
    generator: str
    options: dict[str, object]
    inputs: list[str]
    files: dict[str, FileEntry]


def write_jsonl(path: Path, rows: list[BaseModel]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(row.model_dump_json() + "\n")
