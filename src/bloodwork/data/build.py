"""`bloodwork dataset build`: pools from verified journals, deduplicated, split by run, mixed, written
in TRL's formats with stats, a split-leak check and a manifest of sha256s.

Order matters and is fixed: mine (runs' ticks, and the candidates of `bloodwork fork` directories:
student samples and kept teacher relabels) -> provenance filter -> split by run -> deduplicate within
each split -> drop train rows whose state is (exactly or nearly) a test row's -> mix per split -> write.
SFT gets the selected golden and recovery rows, KTO all selected rows (rejected ones labelled false), DPO
the same-prompt pairs: pairs from forks, and pairs the pools contain naturally (one state answered well in
one run and badly in another).

The stats split every pool by provenance (`real`, `teacher:<spec>`, ...), count the distinct states each
source gave before and after deduplication, and measure the rows' token lengths; `train_length.json`
holds the measurement and the `train --max-length` chosen from it (see `choose_train_length`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from bloodwork.chronos.files import atomic_write, sha256_file
from bloodwork.chronos.run import NOT_MODEL_BEHAVIOUR, find_runs, now_iso
from bloodwork.data.dedup import deduplicate, drop_test_matches
from bloodwork.data.fork import ForkRecord, find_forks, is_fork_artifact
from bloodwork.data.fork_rows import fork_examples
from bloodwork.data.formats import (
    FILE_KINDS,
    MANIFEST_FILE,
    POOLS,
    SPLITS,
    SPLITS_FILE,
    STATS_FILE,
    TRAIN_LENGTH_FILE,
    DatasetManifest,
    DatasetStats,
    DedupCounts,
    DistinctStates,
    DpoMeta,
    DpoRow,
    DpoStats,
    FileEntry,
    KtoRow,
    MixReport,
    Pool,
    RowMeta,
    SftRow,
    SplitAssignment,
    SplitName,
    TrainLength,
    assistant,
    write_jsonl,
)
from bloodwork.data.lengths import counters, measure_lengths
from bloodwork.data.mine import Example, RunView
from bloodwork.data.mix import apply_mix
from bloodwork.data.split import assign_splits, check_split_leak
from bloodwork.errors import BloodworkError
from bloodwork.evidence.stats import distribution

SAME_PROMPT_PAIRS_PER_STATE = 4
# The longest default training length: SmolLM2-135M's context is 8192, but a CPU step over 4 rows of 4096
# tokens already takes minutes; rows longer than this are reported as what training would drop.
TRAIN_LENGTH_CAP = 4096
TRAIN_LENGTH_STEP = 128


class BuildError(BloodworkError, ValueError):
    """Nothing usable under the inputs, or an output directory that holds something else."""


class BuildOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mix: dict[str, float]
    test_fraction: float = Field(default=0.25, ge=0, lt=1)
    holdout_tasks: list[str] = Field(default_factory=list)
    seed: int = 0
    include_scripted: bool = False
    near_threshold: float = Field(default=0.9, gt=0, le=1)
    size: int | None = Field(default=None, ge=1, description="cap on rows per split after the mix")
    exact_lengths: bool = Field(default=True, description="count tokens with the SmolLM2 tokenizer when it is there")
    provenance: list[str] = Field(default_factory=list, description="keep only rows (and pairs whose both sides) "
                                  "match one of these fnmatch patterns, e.g. real, teacher:*")


def _meta(e: Example, split: SplitName) -> RowMeta:
    return RowMeta(row_id=e.row_id, pool=e.pool, run_id=e.run_id, group=e.group, task=e.task, tick=e.tick,
                   provenance=e.provenance, model=e.model, source=e.source, split=split, prompt_sha256=e.prompt_sha,
                   op=e.op or "", traps=",".join(e.traps), detail=e.detail, temperature=e.temperature, kind=e.kind)


def provenance_ok(provenance: str, patterns: list[str]) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(provenance, p) for p in patterns)


def _pair_id(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]


def _same_prompt_pairs(examples: list[Example], split: SplitName) -> list[DpoRow]:
    """States answered well in one run and badly in another (e.g. tick 0 of two models on one task)."""
    by_prompt: dict[str, list[Example]] = defaultdict(list)
    for e in examples:
        by_prompt[e.prompt_sha].append(e)
    rows: list[DpoRow] = []
    for sha, same in sorted(by_prompt.items()):
        good = [e for e in same if e.positive]
        bad = [e for e in same if not e.positive]
        pairs = [(g, b) for g in good for b in bad if g.completion != b.completion][:SAME_PROMPT_PAIRS_PER_STATE]
        for g, b in pairs:
            rows.append(DpoRow(prompt=g.prompt, chosen=assistant(g.completion), rejected=assistant(b.completion),
                               meta=DpoMeta(pair_id=_pair_id(g.row_id, b.row_id), source="same-prompt", fork_id="",
                                            run_id=g.run_id, group=g.group, task=g.task, tick=g.tick,
                                            provenance=g.provenance if g.provenance == b.provenance else "mixed",
                                            model=f"{g.model} | {b.model}", split=split,
                                            prompt_sha256=sha, chosen_label=g.pool, rejected_label=b.pool,
                                            chosen_op=g.op or "", rejected_op=b.op or "",
                                            chosen_provenance=g.provenance, rejected_provenance=b.provenance)))
    return rows


def _fork_pairs(fork: ForkRecord, split: SplitName, patterns: list[str]) -> list[DpoRow]:
    """The fork's pairs whose both sides pass the provenance filter; a teacher's kept answer against a
    student's trapped one is a pair too, and says so in its provenance."""
    rows = []
    by_index = {c.index: c for c in fork.candidates}
    for pair in fork.pairs:
        c, r = by_index[pair.chosen], by_index[pair.rejected]
        chosen_prov, rejected_prov = c.provenance or fork.provenance, r.provenance or fork.provenance
        if not (provenance_ok(chosen_prov, patterns) and provenance_ok(rejected_prov, patterns)):
            continue
        provenance = chosen_prov if chosen_prov == rejected_prov else f"{chosen_prov} > {rejected_prov}"
        rows.append(DpoRow(prompt=fork.prompt, chosen=assistant(c.text), rejected=assistant(r.text),
                           meta=DpoMeta(pair_id=_pair_id(fork.fork_id, c.index, r.index), source="fork",
                                        fork_id=fork.fork_id, run_id=fork.run_id, group=fork.group, task=fork.task,
                                        tick=fork.tick, provenance=provenance, model=fork.model, split=split,
                                        prompt_sha256=fork.prompt_sha256, chosen_label=c.label,
                                        rejected_label=r.label, chosen_op=c.op or "", rejected_op=r.op or "",
                                        chosen_provenance=chosen_prov, rejected_provenance=rejected_prov)))
    return rows


@dataclass
class _Collected:
    """What the inputs hold, before deduplication."""

    examples: list[Example] = field(default_factory=list)
    forks: list[ForkRecord] = field(default_factory=list)
    runs_used: int = 0
    excluded: Counter[str] = field(default_factory=Counter)
    failing: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    group_tasks: dict[str, str] = field(default_factory=dict)
    filtered_out: dict[str, int] = field(default_factory=dict)


def _collect(inputs: list[Path], options: BuildOptions, on_run: Callable[[int, int], None] | None) -> _Collected:
    found: list[tuple[Path, str]] = []
    missing = [str(p) for p in inputs if not p.exists()]
    if missing:
        raise BuildError(f"{', '.join(missing)} does not exist")
    for path in inputs:
        try:
            found += [(run, str(path)) for run in find_runs([path])]
        except ValueError:
            if not find_forks([path]):
                raise BuildError(f"no run or fork directories under {path}") from None
    got = _Collected()
    seen: set[str] = set()
    allowed = {"real"} | (NOT_MODEL_BEHAVIOUR if options.include_scripted else set())
    for i, (run, source) in enumerate(found):
        if on_run:
            on_run(i, len(found))
        if is_fork_artifact(run):
            got.excluded["fork artifacts (rebuilt or branched runs)"] += 1
            continue
        view = RunView(run, source)
        if view.run_id in seen:
            got.excluded["the same run reached twice"] += 1
            continue
        seen.add(view.run_id)
        if view.provenance not in allowed:
            got.excluded[f"provenance {view.provenance} (use --include-scripted)"] += 1
            continue
        if not view.journal_ok:
            got.failing.append(view.run_id)
        got.runs_used += 1
        got.group_tasks[view.group] = view.manifest.task
        got.examples += view.examples(got.skipped)
    forks_seen: set[str] = set()
    for path in inputs:
        for fork in find_forks([path]):
            if fork.fork_id in forks_seen:
                continue
            forks_seen.add(fork.fork_id)
            if fork.provenance not in allowed:
                got.excluded[f"fork of provenance {fork.provenance} (use --include-scripted)"] += 1
                continue
            got.forks.append(fork)
            got.group_tasks.setdefault(fork.group, fork.task)
            got.examples += fork_examples(fork, got.skipped, source=str(path))
    if options.provenance:
        kept = [e for e in got.examples if provenance_ok(e.provenance, options.provenance)]
        got.filtered_out = dict(Counter(e.provenance for e in got.examples
                                        if not provenance_ok(e.provenance, options.provenance)))
        got.examples = kept
    if not got.examples and not got.forks:
        raise BuildError(f"no usable rows under {', '.join(map(str, inputs))} "
                         f"(excluded: {dict(got.excluded) or 'none'})")
    return got


def _split_and_deduplicate(examples: list[Example], splits: SplitAssignment, near_threshold: float,
                           dedup: DedupCounts) -> dict[SplitName, list[Example]]:
    # Split first, then deduplicate within each split: deduplicating first would keep a state's earliest
    # copy wherever it happens to be and could empty the test split. The test split wins every collision.
    by_split: dict[SplitName, list[Example]] = {
        s: deduplicate([e for e in examples if splits.groups[e.group] == s], near_threshold, dedup)
        for s in SPLITS}
    train = drop_test_matches(by_split["train"], by_split["test"], near_threshold)
    dedup.cross_split = len(by_split["train"]) - len(train)
    by_split["train"] = train
    return by_split


def _dpo_rows(split: SplitName, examples: list[Example], forks: list[ForkRecord], splits: SplitAssignment,
              provenance: list[str], test_prompts: set[str], dpo: DpoStats) -> list[BaseModel]:
    """A split's preference pairs: same-prompt pairs of its examples, and the pairs of the forks of its groups
    (in train, none whose prompt is a test prompt)."""
    natural = _same_prompt_pairs(examples, split)
    forked = [row for f in forks if splits.groups.get(f.group) == split for row in _fork_pairs(f, split, provenance)]
    if split == "train":
        kept = [r for r in forked if r.meta.prompt_sha256 not in test_prompts]
        dpo.fork_pairs_withheld += len(forked) - len(kept)
        forked = kept
    dpo.same_prompt_pairs += len(natural)
    dpo.fork_pairs += len(forked)
    return [*forked, *natural]


def _write_files(out: Path, files: dict[str, list[BaseModel]]) -> None:
    """The row files, each written whole; a file of an earlier build that this one leaves empty is removed."""
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        for kind in FILE_KINDS:
            (out / split / f"{kind}.jsonl").unlink(missing_ok=True)
    for name, file_rows in files.items():
        if file_rows:
            write_jsonl(out / name, file_rows)


def build_dataset(inputs: list[Path], out: Path, options: BuildOptions, *, generator: str,
                  on_run: Callable[[int, int], None] | None = None) -> DatasetStats:
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST_FILE).is_file():
        raise BuildError(f"{out} is not empty and holds no dataset; choose another --out")
    got = _collect(inputs, options, on_run)
    mined = Counter(e.pool for e in got.examples)
    dedup = DedupCounts()
    splits = assign_splits(got.group_tasks, test_fraction=options.test_fraction, seed=options.seed,
                           holdout_tasks=options.holdout_tasks)
    by_split = _split_and_deduplicate(got.examples, splits, options.near_threshold, dedup)
    test_prompts = {e.prompt_sha for e in by_split["test"]}

    distinct = _distinct_states(got.examples, [e for split in SPLITS for e in by_split[split]])
    mix_reports: dict[str, MixReport] = {}
    files: dict[str, list[BaseModel]] = {}
    chosen: list[Example] = []
    dpo = DpoStats(forks=len(got.forks))
    for split in SPLITS:
        pools: dict[Pool, list[Example]] = {p: [e for e in by_split[split] if e.pool == p] for p in POOLS}
        selected, report = apply_mix(pools, options.mix, seed=options.seed, size=options.size)
        mix_reports[split] = _with_provenance(report, pools, selected)
        rows = sorted((e for p in POOLS for e in selected[p]), key=lambda e: (e.run_id, e.tick))
        chosen += rows
        files[f"{split}/sft.jsonl"] = [SftRow(messages=[*e.prompt, *assistant(e.completion)], meta=_meta(e, split))
                                       for e in rows if e.positive]
        files[f"{split}/kto.jsonl"] = [KtoRow(prompt=e.prompt, completion=assistant(e.completion), label=e.positive,
                                              meta=_meta(e, split)) for e in rows]
        files[f"{split}/dpo.jsonl"] = _dpo_rows(split, by_split[split], got.forks, splits, options.provenance,
                                                test_prompts, dpo)
    for f in got.forks:
        for refusal in f.refused:
            dpo.refused[refusal.reason_class] = dpo.refused.get(refusal.reason_class, 0) + 1

    _write_files(out, files)
    atomic_write(out / SPLITS_FILE, splits.model_dump_json(indent=2))
    leak = check_split_leak(out)
    recovery_rows = [e for e in chosen if e.pool == "recovery"]
    stats = DatasetStats(
        generator=generator, inputs=[str(p) for p in inputs], runs_used=got.runs_used, runs_excluded=dict(got.excluded),
        journals_failing_verify=got.failing, candidates={p: mined.get(p, 0) for p in POOLS}, skipped=got.skipped,
        dedup=dedup, after_dedup={s: dict(Counter(e.pool for e in by_split[s])) for s in SPLITS}, mix=mix_reports,
        recovery_windows={"complete": sum(e.window_complete for e in recovery_rows),
                          "partial": sum(not e.window_complete for e in recovery_rows)},
        by_source=dict(Counter(e.source for e in chosen)), by_provenance=dict(Counter(e.provenance for e in chosen)),
        by_model=dict(Counter(e.model for e in chosen)), by_task=dict(Counter(e.task for e in chosen)),
        by_split=dict(Counter(splits.groups[e.group] for e in chosen)), dpo=dpo,
        files={name: len(rows) for name, rows in files.items()},
        token_lengths=measure_lengths(out, exact=options.exact_lengths), leak_check=leak,
        provenance_filter=options.provenance, filtered_out=got.filtered_out, distinct_states=distinct,
        by_pool_provenance={split: rep.selected_by_provenance for split, rep in mix_reports.items()},
        by_temperature=dict(Counter(f"{e.temperature:g}" for e in chosen)),
        holdout=_families(options.holdout_tasks))
    stats.train_length = choose_train_length(out, exact=options.exact_lengths)
    atomic_write(out / TRAIN_LENGTH_FILE, stats.train_length.model_dump_json(indent=2))
    atomic_write(out / STATS_FILE, stats.model_dump_json(indent=2))
    write_manifest(out, generator=generator, options=options.model_dump(), inputs=[str(p) for p in inputs])
    return stats


def _families(tasks: list[str]) -> dict[str, list[str]]:
    by: dict[str, list[str]] = defaultdict(list)
    for t in sorted(tasks):
        by[t.partition("/")[0]].append(t)
    return dict(by)


def _distinct_states(mined: list[Example], kept: list[Example]) -> dict[str, DistinctStates]:
    """Per source kind (run, fork, teacher) and per input path: distinct exact prompts and rows, as mined and
    as left in the pools after deduplication and the split (before the mix)."""
    def keys(e: Example) -> list[str]:
        return [e.kind, f"input {e.source}" if e.kind == "run" else f"input {e.source} ({e.kind})"]

    states: dict[str, tuple[set[str], set[str]]] = defaultdict(lambda: (set(), set()))
    rows: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for i, group in enumerate((mined, kept)):
        for e in group:
            for key in keys(e):
                states[key][i].add(e.prompt_sha)
                rows[key][i] += 1
    return {k: DistinctStates(before=len(b), after=len(a), rows_before=rows[k][0], rows_after=rows[k][1])
            for k, (b, a) in sorted(states.items())}


def _with_provenance(report: MixReport, pools: dict[Pool, list[Example]],
                     selected: dict[Pool, list[Example]]) -> MixReport:
    total = sum(len(v) for v in selected.values())
    by_prov = Counter(e.provenance for rows in selected.values() for e in rows)
    return report.model_copy(update={
        "available_by_provenance": {p: dict(Counter(e.provenance for e in pools.get(p, []))) for p in POOLS},
        "selected_by_provenance": {p: dict(Counter(e.provenance for e in selected.get(p, []))) for p in POOLS},
        "achieved_by_provenance": {k: round(v / total, 6) for k, v in sorted(by_prov.items())} if total else {}})


def choose_train_length(out: Path, *, exact: bool) -> TrainLength:
    """The default `train --max-length`: the smallest multiple of 128 tokens that holds every row of the train
    split's SFT file (prompt + answer, counted as training counts them), capped at TRAIN_LENGTH_CAP. Rows over
    the chosen length, in every file, are counted: they are what training would drop (it never cuts a row)."""
    label, count_prompt, count_text = counters(exact)
    measured: dict[str, list[int]] = {}
    prompts: list[int] = []
    for split in SPLITS:
        for kind in FILE_KINDS:
            path = out / split / f"{kind}.jsonl"
            if not path.is_file():
                continue
            lengths = []
            for line in path.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                prompt = row["messages"][:-1] if kind == "sft" else row["prompt"]
                answers = ([row["messages"][-1]["content"]] if kind == "sft" else [row["completion"][0]["content"]]
                           if kind == "kto" else [row["chosen"][0]["content"], row["rejected"][0]["content"]])
                p = count_prompt(prompt)
                if split == "train" and kind == "sft":
                    prompts.append(p)
                lengths.append(max(p + count_text(a) for a in answers))
            measured[f"{split}/{kind}.jsonl"] = lengths
    totals = measured.get("train/sft.jsonl", [])
    longest = max(totals, default=0)
    chosen = min(TRAIN_LENGTH_CAP, max(TRAIN_LENGTH_STEP, math.ceil(longest / TRAIN_LENGTH_STEP) * TRAIN_LENGTH_STEP))
    return TrainLength(counter=label, rows=len(totals), total_tokens=distribution(totals),
                       prompt_tokens=distribution(prompts), chosen=chosen,
                       rule=f"smallest multiple of {TRAIN_LENGTH_STEP} >= the longest train/sft.jsonl row "
                            f"({longest} tokens), at most {TRAIN_LENGTH_CAP}",
                       over={name: sum(n > chosen for n in lengths) for name, lengths in measured.items()})


def write_manifest(out: Path, *, generator: str, options: dict[str, object], inputs: list[str]) -> DatasetManifest:
    """The sha256 and size of every file in the dataset directory (the manifest itself aside)."""
    entries = {str(p.relative_to(out)): FileEntry(sha256=sha256_file(p), bytes=p.stat().st_size)
               for p in sorted(out.rglob("*")) if p.is_file() and p.name != MANIFEST_FILE}
    manifest = DatasetManifest(created_at=now_iso(), generator=generator, options=options, inputs=inputs,
                               files=entries)
    atomic_write(out / MANIFEST_FILE, manifest.model_dump_json(indent=2))
    return manifest
