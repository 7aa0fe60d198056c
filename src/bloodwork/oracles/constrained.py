"""Decoding constrained to a JSON Schema (the ISA frame by default) with llguidance.

Why llguidance: it installs as one small wheel next to torch (xgrammar pulls in triton, ~1 GB; outlines
can itself use llguidance as its backend), builds the matcher for the ISA schema in milliseconds, and
computes a token mask in ~2 ms on this CPU (a decode step takes ~70 ms). It ships no transformers logits
processor, so `FrameGuide` wraps its bitmask API for our own decode loop in `local.py`.

The schema bounds characters, not tokens, and a small model can loop inside a string one character per
token. So when the token budget runs low the guide enters a *finishing* mode: among the tokens the
grammar allows it keeps a bare closing quote (alone or with braces) when one is allowed, else tokens
starting with `"` (a key), else, outside strings, tokens starting with `}`. That ends the open string
and walks the required keys to the final brace in a few dozen tokens. The model still chooses among
what is left, op names included.

An ISA frame's op comes last, after two free-text fields. A budget spent on a rambling thought used to
leave the op entirely in finishing mode, where every string value gets one token: the 135M model then
wrote the key's own name (`"path": "path"` on 14 of 26 frames of a live sweep). So for ISA frames each
text field has a share of the budget by which it is closed (`FIELD_SHARES`), and the op's own finishing
reserve is only the walk that closes the op.
A frame that still fails to parse is returned raw, and the kernel scores it as a violation.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import llguidance
import llguidance.hf
import torch

from bloodwork.isa import json_schema

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions  # declared in llguidance's stub only, not at runtime

# Separators as `json.dumps` writes them and as ISA_PROMPT shows them, with no other whitespace: a model
# fine-tuned on json.dumps output stays on its own distribution, and whitespace cannot be a loop.
JSON_FORMAT: JsonCompileOptions = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
# Tokens kept back for closing the frame: enough for the longest walk from inside `thought` to the final
# brace (close it, an empty q_next, then SYS_EDIT's three fields, two of them non-empty). That walk is 38
# tokens as the tokenizer splits it; a constrained model may take a few more (35 for SYS_EXEC's 30).
FINISH_RESERVE = 48
# The same walk from inside q_next (30 tokens for SYS_EDIT) and from inside the op (12 from its path on).
Q_NEXT_RESERVE = 40
OP_RESERVE = 16
# By these shares of the budget thought and q_next are closed (ISA frames only): with 96 tokens the thought
# has up to 29, q_next ends by token 48 and the op keeps at least 48, its last 16 in finishing mode.
FIELD_SHARES = {"thought": 0.3, "q_next": 0.5}
_Q_NEXT_KEY = b'", "q_next": "'
_OP_KEY = b'", "op": {'
# Inside a string nearly every token is allowed; outside one only a handful are (separators, braces,
# digits). A `}` token is only a closer when the allowed set is that small.
STRUCTURAL_SET = 1024


@dataclass
class GuideTokenizer:
    """What llguidance needs from a tokenizer, built once per loaded model (~0.5 s)."""

    ll: llguidance.LLTokenizer
    closes: torch.Tensor  # bool per token id: its bytes are `"` then only `}` (`"`, `"}`, `"}}`)
    quotes: torch.Tensor  # ... start with `"`
    braces: torch.Tensor  # ... start with `}`

    @classmethod
    def from_hf(cls, hf_tokenizer: Any) -> GuideTokenizer:
        ll = llguidance.hf.from_tokenizer(hf_tokenizer)
        pieces = [ll.decode_bytes([i]) for i in range(ll.vocab_size)]

        def mask(test: Callable[[bytes], bool]) -> torch.Tensor:
            return torch.tensor([test(p) for p in pieces], dtype=torch.bool)

        return cls(ll=ll, closes=mask(lambda p: p[:1] == b'"' and not p[1:].strip(b"}")),
                   quotes=mask(lambda p: p[:1] == b'"'), braces=mask(lambda p: p[:1] == b"}"))


@lru_cache(maxsize=16)
def _grammar(schema_json: str) -> str:
    return llguidance.LLMatcher.grammar_from_json_schema(schema_json, defaults=JSON_FORMAT)


@lru_cache(maxsize=1)
def _isa_source() -> str:
    return json.dumps(json_schema())


_BIT_SHIFTS = torch.arange(32, dtype=torch.int32)


class FrameGuide:
    """One constrained generation: masks logits step by step and follows the tokens actually chosen."""

    def __init__(self, tokenizer: GuideTokenizer, schema: dict[str, Any] | None = None,
                 budget: int | None = None) -> None:
        self._tok = tokenizer
        self._budget = budget
        # Key order is kept (no sort_keys): llguidance emits properties in schema order.
        source = json.dumps(schema if schema is not None else json_schema())
        # Field shares apply to the ISA frame only (the kernel passes it explicitly): a caller's own schema
        # has fields we know nothing of.
        self._isa = budget is not None and source == _isa_source()
        self._text = bytearray()
        grammar = _grammar(source)
        self._matcher = llguidance.LLMatcher(tokenizer.ll, grammar, log_level=0)
        if self._matcher.is_error():
            raise ValueError(f"schema cannot be compiled for constrained decoding: {self._matcher.get_error()}")
        self._words = torch.full(((tokenizer.ll.vocab_size + 31) // 32,), -1, dtype=torch.int32)

    def allowed(self) -> torch.Tensor:
        """Bool mask over the vocabulary of the tokens the grammar allows next."""
        self._matcher.unsafe_compute_mask_ptr(self._words.data_ptr(), self._words.numel() * 4)
        bits = (self._words.unsqueeze(1) >> _BIT_SHIFTS) & 1
        return bits.flatten()[: self._tok.ll.vocab_size].bool()

    def constrain(self, logits: torch.Tensor, tokens_left: int) -> None:
        """Set disallowed logits (1-D, one step) to -inf; near the budget's end keep only closers."""
        if self._matcher.is_error():
            return
        allowed = self.allowed()
        if self._must_finish(tokens_left):
            allowed = self._finishing(allowed)
        vocab = allowed.numel()
        logits[vocab:] = float("-inf")
        logits[:vocab].masked_fill_(~allowed, float("-inf"))

    def field(self) -> str:
        """The ISA frame's field being written: thought, q_next or op. With no flexible whitespace the key
        boundaries are exact bytes, and an unescaped quote cannot occur inside a string."""
        if _Q_NEXT_KEY not in self._text:
            return "thought"
        return "q_next" if _OP_KEY not in self._text else "op"

    def _must_finish(self, tokens_left: int) -> bool:
        if not self._isa:
            # A short budget keeps its first half free: a 32-token tool call is not one token per value.
            reserve = FINISH_RESERVE if self._budget is None else min(FINISH_RESERVE, self._budget // 2)
            return tokens_left <= reserve
        assert self._budget is not None
        field = self.field()
        if field == "op":
            return tokens_left <= OP_RESERVE
        reserve = FINISH_RESERVE if field == "thought" else Q_NEXT_RESERVE
        used = self._budget - tokens_left
        return tokens_left <= reserve or used >= FIELD_SHARES[field] * self._budget

    def _finishing(self, allowed: torch.Tensor) -> torch.Tensor:
        """The closers among `allowed`, best first: a bare closing quote (with braces), then any token
        starting with a quote (a key, or a quote plus separator), then braces outside strings."""
        for tier in (self._tok.closes, self._tok.quotes):
            kept = allowed & tier
            if bool(kept.any()):
                return kept
        braces = allowed & self._tok.braces
        if bool(braces.any()) and int(allowed.sum()) <= STRUCTURAL_SET:
            return braces
        return allowed

    def advance(self, token: int) -> None:
        """Feed the chosen token to the matcher (a token it refuses puts it in its error state)."""
        if not self._matcher.is_error():
            self._matcher.consume_token(token)
            if self._isa and _OP_KEY not in self._text:
                self._text += self._tok.ll.decode_bytes([token])
