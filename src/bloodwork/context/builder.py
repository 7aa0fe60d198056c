"""The context builder: sections, a token budget, eviction policies, and a record of every eviction.

Layout sent to the model each tick:

    system     ISA prompt (constant)
    user       GOAL (the pinned goal; under `window` it leaves with the oldest history)
    user       slice shown at tick t-k  \\
    assistant  raw answer at tick t-k    > the history window, oldest first
    ...                                 /
    user       REGISTER q + SLICE s at d (this tick)

History is held incrementally: an entry leaves the window exactly once, and that is when its
`evict` event is produced. Section token counts are cached by content, so the per-tick cost depends
on the window size, not on the run's length.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from bloodwork import prompts
from bloodwork.oracles.base import Message, Tokenizer

Policy = Literal["unbounded", "window", "pinned", "masked"]
GOAL_TICK = -1


class ContextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: Policy = "pinned"
    budget_tokens: int = Field(default=2048, ge=256)
    window: int = Field(default=8, ge=1)
    keep_observations: int = Field(default=2, ge=0, description="masked: newest observations kept whole")
    register_max_chars: int = Field(default=1000, ge=16)


class HistoryEntry(BaseModel):
    """One past tick as the model saw it: the slice it was shown and its raw answer."""

    tick: int
    action: str
    observation: str
    masked: bool = False


class Eviction(BaseModel):
    section: Literal["history", "observation", "goal", "register", "slice"]
    tick: int
    tokens: int
    reason: str


@dataclass
class BuiltContext:
    messages: list[Message]
    tail: str
    section_tokens: dict[str, int]
    total_tokens: int
    evictions: list[Eviction] = field(default_factory=list)
    over_budget: bool = False


class _TokenCache:
    def __init__(self, tokenizer: Tokenizer, size: int = 2048) -> None:
        self.tokenizer = tokenizer
        self._cache: OrderedDict[str, int] = OrderedDict()
        self._size = size

    def __call__(self, text: str) -> int:
        hit = self._cache.get(text)
        if hit is not None:
            self._cache.move_to_end(text)
            return hit
        n = self.tokenizer.count(text)
        self._cache[text] = n
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return n


class ContextBuilder:
    """Builds each tick's messages within the budget; mutates the history it is given (evictions)."""

    def __init__(self, config: ContextConfig, tokenizer: Tokenizer, system: str, goal: str) -> None:
        self.config = config
        self.count = _TokenCache(tokenizer)
        self.system = system
        self.goal_text = prompts.goal_text(goal)
        self.goal_tokens_exact = tokenizer.exact

    def bound_register(self, q: str) -> tuple[str, Eviction | None]:
        """The register's hard bound: the tail beyond it is cut, and the cut is journaled."""
        limit = self.config.register_max_chars
        if len(q) <= limit:
            return q, None
        kept = q[:limit]
        return kept, Eviction(section="register", tick=-1, tokens=self.count(q[limit:]),
                              reason=f"register over {limit} chars")

    def build(self, history: list[HistoryEntry], q: str, d: str, slice_text: str,
              goal_in_history: bool, tick: int, goal_pinned_at: int = 0) -> tuple[BuiltContext, bool]:
        """Returns the context and whether the goal is still in it.

        Under `window` the goal is a message like any other: it leaves once it is `window` ticks older
        than the tick it was (re-)pinned at (the start, or the last panic's recovery).
        """
        cfg = self.config
        evictions: list[Eviction] = []
        goal_present = goal_in_history or cfg.policy != "window"
        if cfg.policy == "window":
            while len(history) > cfg.window:
                old = history.pop(0)
                evictions.append(Eviction(section="history", tick=old.tick, reason=f"outside the last {cfg.window}",
                                          tokens=self.count(old.action) + self.count(old.observation)))
            if goal_present and tick - goal_pinned_at >= cfg.window:
                evictions.append(Eviction(section="goal", tick=GOAL_TICK, tokens=self.count(self.goal_text),
                                          reason=f"the goal is older than the last {cfg.window} ticks"))
                goal_present = False
        if cfg.policy == "masked":
            for entry in history[: max(0, len(history) - cfg.keep_observations)]:
                if not entry.masked:
                    tokens = self.count(entry.observation)
                    entry.observation = prompts.mask_line(entry.tick, tokens)
                    entry.masked = True
                    evictions.append(Eviction(section="observation", tick=entry.tick, tokens=tokens,
                                              reason="masked: older than the newest observations"))
        tail = prompts.tail(q, d, slice_text)
        fixed = self.count(self.system) + self.count(tail) + (self.count(self.goal_text) if goal_present else 0)
        history_tokens = sum(self.count(e.action) + self.count(e.observation) for e in history)
        if cfg.policy != "unbounded":
            while history and fixed + history_tokens > cfg.budget_tokens:
                old = history.pop(0)
                tokens = self.count(old.action) + self.count(old.observation)
                history_tokens -= tokens
                evictions.append(Eviction(section="history", tick=old.tick, tokens=tokens,
                                          reason=f"over the budget of {cfg.budget_tokens} tokens"))
        messages: list[Message] = [{"role": "system", "content": self.system}]
        if goal_present:
            messages.append({"role": "user", "content": self.goal_text})
        for entry in history:
            messages.append({"role": "user", "content": entry.observation})
            messages.append({"role": "assistant", "content": entry.action})
        messages.append({"role": "user", "content": tail})
        sections = {"system": self.count(self.system),
                    "goal": self.count(self.goal_text) if goal_present else 0,
                    "register": self.count(q), "slice": self.count(slice_text), "history": history_tokens}
        total = fixed + history_tokens
        return BuiltContext(messages=messages, tail=tail, section_tokens=sections, total_tokens=total,
                            evictions=evictions, over_budget=total > cfg.budget_tokens), goal_present
