"""The model's forward pass as the engine drives it: one KV cache per sequence, prefill one prompt at a time,
decode steps over many sequences at once.

We call the model's own layers (embedding, rotary, decoder layers, norm, head) rather than `generate()` or
`model(...)`, and give its attention two things of ours:

- `Rows`, a cache that keeps each sequence's keys and values in its own buffer, allocated once for the
  prompt plus its token budget (no copy per step, no padding between sequences of different lengths);
- an attention function that runs each sequence over its own keys only. A sequence's attention therefore
  does not depend on its batch companions, and there is no padding mask to get wrong.

The linear layers are where sequences share work (decoding is memory-bound: a step over 8 rows costs little
more than one). Their result for a row does not depend on the other rows, but it does depend on how many
rows the matrix has: CPU GEMM kernels pick their blocking by shape (measured: fp32 rows computed in a
1-row, 2-3-row and 4+-row product differ in the last bits). So every decode step runs a fixed number of
rows, `rows`, the unused ones zero: a sequence gets bit-identical logits alone or in any batch.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from bloodwork.oracles.weights import LoadedModel

ATTENTION = "bloodwork-rows"


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 192
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


def pick(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> int:
    """The next token from one row of float32 logits (already masked by a grammar, if any)."""
    if sampling.temperature <= 0 or generator is None:
        return int(logits.argmax())
    probs = torch.softmax(logits / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        drop = sorted_probs.cumsum(0) - sorted_probs > sampling.top_p
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


class SeqKV:
    """One sequence's keys and values for every layer, `[layers, kv_heads, capacity, head_dim]`; positions
    `0 .. length-1` are filled."""

    def __init__(self, shape: tuple[int, int, int, int], dtype: torch.dtype) -> None:
        self.keys = torch.empty(shape, dtype=dtype)
        self.values = torch.empty(shape, dtype=dtype)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def copy_from(self, other: SeqKV, n: int) -> None:
        """Take the first `n` positions of `other` (a cached prefix, or a prompt shared by several samples)."""
        self.keys[:, :, :n] = other.keys[:, :, :n]
        self.values[:, :, :n] = other.values[:, :, :n]
        self.length = n


class _Views(list[tuple[torch.Tensor, torch.Tensor] | None]):
    """Per row of a forward pass: that sequence's keys and values so far, or None for an unused row."""


class Rows:
    """The `cache` the model's attention layers see during one forward pass: row i of the batch writes its
    new keys and values into sequence i's buffer, and attention gets each sequence's own views."""

    def __init__(self, seqs: list[SeqKV | None], new: int) -> None:
        self.seqs = seqs
        self.new = new

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer: int, *args: Any,
               **kwargs: Any) -> tuple[_Views, _Views]:
        views = _Views()
        for row, seq in enumerate(self.seqs):
            if seq is None:
                views.append(None)
                continue
            start, end = seq.length, seq.length + self.new
            seq.keys[layer, :, start:end] = keys[row]
            seq.values[layer, :, start:end] = values[row]
            views.append((seq.keys[layer, :, :end].unsqueeze(0), seq.values[layer, :, :end].unsqueeze(0)))
        return views, views

    def advance(self) -> None:
        for seq in self.seqs:
            if seq is not None:
                seq.length += self.new


def _attention(module: Any, query: torch.Tensor, key: Any, value: Any, attention_mask: torch.Tensor | None,
               dropout: float = 0.0, scaling: float | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Each row attends over its own sequence only; anything else (training, a plain `model(...)` call on the
    same weights) goes to PyTorch's SDPA as before."""
    if not isinstance(key, _Views):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    outs = []
    for row, kv in enumerate(key):
        q = query[row:row + 1]
        if kv is None:
            outs.append(torch.zeros_like(q))
            continue
        k, v = kv
        new, total = q.shape[2], k.shape[2]
        if new == 1:
            # One query token: the query heads sharing a key head become that head's "positions", so the
            # keys are read as they are stored, never repeated per query head.
            heads = q.shape[1]
            packed = q.reshape(1, k.shape[1], heads // k.shape[1], q.shape[3])
            outs.append(F.scaled_dot_product_attention(packed, k, v, scale=scaling).reshape(q.shape))
            continue
        mask = None
        if new < total:  # a prompt's rest after a cached prefix: causal, aligned to the end
            mask = torch.ones(new, total, dtype=torch.bool).tril(diagonal=total - new)
        outs.append(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=scaling,
                                                   enable_gqa=True))
    return torch.cat(outs).transpose(1, 2).contiguous(), None


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, _attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)


class Forward:
    """The model's layers driven row by row. Not thread-safe: one engine thread calls it."""

    def __init__(self, loaded: LoadedModel, rows: int) -> None:
        _register_attention()
        model = loaded.model
        model.set_attn_implementation(ATTENTION)
        self.model = model
        self.rows = rows
        config = model.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self._kv_shape = (config.num_hidden_layers, config.num_key_value_heads, head_dim)
        self.dtype = next(model.parameters()).dtype
        layer = model.model.layers[0]
        # transformers 5 renamed `past_key_value(s)` to `cache`; the layers take whichever this version has.
        params = inspect.signature(layer.forward).parameters
        self._cache_kwarg = next((n for n in ("cache", "past_key_values", "past_key_value") if n in params), "cache")

    def new_seq(self, capacity: int) -> SeqKV:
        layers, heads, head_dim = self._kv_shape
        return SeqKV((layers, heads, capacity, head_dim), self.dtype)

    def _run(self, ids: torch.Tensor, positions: torch.Tensor, cache: Rows) -> torch.Tensor:
        """Logits (float32) of the last position of each row."""
        inner = self.model.model
        hidden = inner.embed_tokens(ids)
        rotary = inner.rotary_emb(hidden, positions)
        for layer in inner.layers:
            hidden = layer(hidden, attention_mask=None, position_ids=positions, position_embeddings=rotary,
                           use_cache=True, **{self._cache_kwarg: cache})
        cache.advance()
        return self.model.lm_head(inner.norm(hidden[:, -1])).float()

    def prefill(self, seq: SeqKV, ids: list[int]) -> torch.Tensor:
        """Feed `ids` after what `seq` holds; the logits after the last one."""
        start = seq.length
        positions = torch.arange(start, start + len(ids)).unsqueeze(0)
        return self._run(torch.tensor([ids]), positions, Rows([seq], len(ids)))[0]

    def step(self, seqs: list[SeqKV], tokens: list[int]) -> torch.Tensor:
        """One token for each sequence, in one pass of `self.rows` rows; logits `[len(seqs), vocab]`."""
        if len(seqs) > self.rows:
            raise ValueError(f"{len(seqs)} sequences in a step of {self.rows} rows")
        pad = self.rows - len(seqs)
        ids = torch.tensor([[t] for t in tokens] + [[0]] * pad)
        positions = torch.tensor([[s.length] for s in seqs] + [[0]] * pad)
        rows: list[SeqKV | None] = [*seqs, *([None] * pad)]
        return self._run(ids, positions, Rows(rows, 1))[: len(seqs)]
