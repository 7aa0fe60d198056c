"""Exact and near-duplicate removal, and the rule that one (prompt, answer) cannot be good and bad at once.

Why near duplicates matter here: a model stuck in a loop answers the same op at almost the same state
tick after tick (only a counter or a digest in the slice changes). Left in, one stuck run would outweigh
every other run in the pool. Two rows are near duplicates when they are in the same pool and task,
their answers carry the same op (or the same normalized text when they have no frame), and the states
they answer (the last user message: register and slice) share at least `threshold` of their word
5-gram shingles after numbers and hex digests are normalized away. The earliest row is kept.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict

from bloodwork.data.formats import DedupCounts
from bloodwork.data.mine import Example
from bloodwork.isa import parse

_HEX = re.compile(r"\b[0-9a-f]{12,64}\b")
_NUM = re.compile(r"\d+")
_WS = re.compile(r"\s+")
SHINGLE = 5


def normalize(text: str) -> str:
    return _WS.sub(" ", _NUM.sub("0", _HEX.sub("#", text.lower()))).strip()


def shingles(text: str, k: int = SHINGLE) -> frozenset[tuple[str, ...]]:
    words = normalize(text).split(" ")
    if len(words) <= k:
        return frozenset({tuple(words)})
    return frozenset(tuple(words[i:i + k]) for i in range(len(words) - k + 1))


def jaccard(a: frozenset[tuple[str, ...]], b: frozenset[tuple[str, ...]]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def answer_key(text: str) -> str:
    """The op of the answer (thought and register ignored), else its normalized text."""
    verdict = parse(text)
    if verdict.frame is not None:
        return json.dumps(verdict.frame.op.model_dump(mode="json"), sort_keys=True)
    return normalize(text)


def order_key(e: Example) -> tuple[str, int, str]:
    return (e.run_id, e.tick, e.pool)


def deduplicate(examples: list[Example], threshold: float, counts: DedupCounts) -> list[Example]:
    """Exact duplicates, cross-pool collisions, contradictions, then near duplicates; deterministic order."""
    examples = sorted(examples, key=order_key)
    by_key: dict[tuple[str, str], list[Example]] = defaultdict(list)
    for e in examples:
        by_key[(e.prompt_sha, e.completion_sha)].append(e)
    kept: list[Example] = []
    for same in by_key.values():
        pools = {e.pool for e in same}
        if "rejected" in pools and pools - {"rejected"}:
            counts.contradictory += len(same)  # one answer to one state, both good and bad: keep neither
            continue
        if {"golden", "recovery"} <= pools:
            counts.cross_pool += sum(1 for e in same if e.pool == "golden")
            same = [e for e in same if e.pool == "recovery"]
        counts.exact += len(same) - 1
        kept.append(same[0])
    return _near(sorted(kept, key=order_key), threshold, counts)


Bucket = dict[tuple[str, str, str], list[frozenset[tuple[str, ...]]]]


def _bucket_key(e: Example) -> tuple[str, str, str]:
    return (e.pool, e.task, answer_key(e.completion))


def _near_in(buckets: Bucket, e: Example, threshold: float) -> bool:
    state = shingles(e.prompt[-1]["content"])
    return any(jaccard(state, other) >= threshold for other in buckets[_bucket_key(e)])


def _near(examples: list[Example], threshold: float, counts: DedupCounts) -> list[Example]:
    buckets: Bucket = defaultdict(list)
    kept: list[Example] = []
    for e in examples:
        if _near_in(buckets, e, threshold):
            counts.near += 1
            continue
        buckets[_bucket_key(e)].append(shingles(e.prompt[-1]["content"]))
        kept.append(e)
    return kept


def drop_test_matches(train: list[Example], test: list[Example], threshold: float) -> list[Example]:
    """Train rows minus any whose exact state is a test state, or that nearly duplicate a test row."""
    prompts = {e.prompt_sha for e in test}
    buckets: Bucket = defaultdict(list)
    for e in test:
        buckets[_bucket_key(e)].append(shingles(e.prompt[-1]["content"]))
    return [e for e in train if e.prompt_sha not in prompts and not _near_in(buckets, e, threshold)]
