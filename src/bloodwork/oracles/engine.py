"""One engine per loaded model: it decodes every concurrent request of the process together.

Callers (a sweep's worker threads, `bloodwork serve`'s request threads, the K samples of a fork) submit
requests and wait; one engine thread owns the model and loops:

1. admit waiting requests, up to `max_batch` sequences in flight, and prefill each (a prompt alone, so
   prefill never depends on other requests). The constant system prompt's keys and values are kept
   (`prefix_len` tokens, a few prompts at a time) and copied instead of recomputed; identical prompts
   admitted together (a fork's K samples) are prefilled once;
2. choose each sequence's next token with its own settings: grammar mask (llguidance, per sequence),
   temperature, top-p, seeded generator, token budget, stop strings;
3. run one decode step for every sequence still going (`decoding.Forward.step`).

New requests join between steps (continuous batching), so a call that arrives while others decode waits
at most one step plus its own prefill, not for the whole batch to end. `join="batch"` admits only when
nothing is in flight (static batches), kept for the benchmark's comparison.

Attribution: each completion's `latency_ms` is what its caller waited; the model's own time for it is the
sum of the work units it was part of (its prefill, the decode steps it rode, its own token choices);
`queue_ms` is the rest (waiting for admission, or for other requests' prefills while it was in flight);
`batch_size` is the mean number of sequences in the decode steps it rode (1 = alone).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from bloodwork.oracles.base import Completion
from bloodwork.oracles.decoding import Forward, Sampling, SeqKV, pick
from bloodwork.oracles.weights import LoadedModel

MAX_BATCH = 8
PREFIXES_KEPT = 4
Join = Literal["step", "batch"]


@dataclass(frozen=True)
class Request:
    """One generation. `constrained` masks every step to `schema` (the ISA frame when None); the first
    `prefix_len` prompt tokens are a prefix shared across calls (the system prompt) whose keys and values
    the engine may reuse; `stop` strings end the answer before them, as OpenAI's `stop` does."""

    prompt_ids: Sequence[int]
    sampling: Sampling = Sampling()
    constrained: bool = False
    schema: dict[str, Any] | None = None
    prefix_len: int = 0
    stop: tuple[str, ...] = ()


class Ticket:
    """A submitted request as its caller sees it: streamed text pieces, then the completion."""

    def __init__(self, request: Request, stream: bool) -> None:
        self.request = request
        self.stream = stream
        self.submitted = time.perf_counter()
        self.cancelled = False
        self._events: queue.SimpleQueue[str | Completion | BaseException] = queue.SimpleQueue()

    def put(self, event: str | Completion | BaseException) -> None:
        self._events.put(event)

    def wait(self, on_text: Callable[[str], None] | None = None) -> Completion:
        """Block until the answer; text pieces go to `on_text` in the caller's thread, so a slow or gone
        client never stalls the engine. If `on_text` raises, the request is dropped at the next step."""
        while True:
            event = self._events.get()
            if isinstance(event, Completion):
                return event
            if isinstance(event, BaseException):
                raise event
            if on_text is not None:
                try:
                    on_text(event)
                except BaseException:
                    self.cancelled = True
                    raise


@dataclass(eq=False)
class _Seq:
    """A request in flight, owned by the engine thread."""

    ticket: Ticket
    budget: int
    guide: Any  # FrameGuide | None
    generator: torch.Generator | None
    kv: SeqKV = field(init=False)  # allocated at admission: a long queue holds no cache memory
    logits: torch.Tensor | None = None
    new: list[int] = field(default_factory=list)
    emitted: str = ""
    ttft_ms: float | None = None
    model_s: float = 0.0
    steps: int = 0
    rows: int = 0

    @property
    def request(self) -> Request:
        return self.ticket.request


class Engine:
    """Batched decoding for one `LoadedModel`; thread-safe `generate` / `generate_many`."""

    def __init__(self, loaded: LoadedModel, max_batch: int = MAX_BATCH, rows: int | None = None,
                 join: Join = "step") -> None:
        self.loaded = loaded
        self.max_batch = max_batch
        self.join = join
        self.forward = Forward(loaded, rows or max_batch)
        self.stats = {"prefix_hits": 0, "prefix_misses": 0, "prompts_shared": 0, "steps": 0}
        self._prefixes: OrderedDict[tuple[int, ...], SeqKV] = OrderedDict()
        self._pending: list[_Seq] = []
        self._active: list[_Seq] = []
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None

    # ---- callers' side ------------------------------------------------------------------------------

    def generate(self, request: Request, on_text: Callable[[str], None] | None = None) -> Completion:
        return self.submit([request], stream=on_text is not None)[0].wait(on_text)

    def generate_many(self, requests: Sequence[Request]) -> list[Completion]:
        """Several requests admitted together (a fork's samples: one prefill, one batch)."""
        return [ticket.wait() for ticket in self.submit(requests)]

    def submit(self, requests: Sequence[Request], stream: bool = False) -> list[Ticket]:
        """Queue requests atomically. A prompt too long for the context is answered at once; a schema the
        grammar compiler refuses raises ValueError here, in the caller's thread."""
        tickets, seqs = [], []
        for request in requests:
            ticket = Ticket(request, stream)
            tickets.append(ticket)
            n = len(request.prompt_ids)
            room = self.loaded.context_length - n
            if room <= 0:
                ticket.put(Completion(error=f"prompt of {n} tokens exceeds the context of "
                                            f"{self.loaded.context_length}", error_class="context_overflow",
                                      prompt_tokens=n, latency_ms=0.0))
                continue
            budget = min(request.sampling.max_new_tokens, room)
            guide = None
            if request.constrained:
                from bloodwork.oracles.constrained import FrameGuide

                guide = FrameGuide(self.loaded.guide_tokenizer(), request.schema, budget)
            sampling = request.sampling
            generator = torch.Generator().manual_seed(sampling.seed) if sampling.temperature > 0 else None
            seqs.append(_Seq(ticket=ticket, budget=budget, guide=guide, generator=generator))
        with self._lock:
            self._pending += seqs
            if seqs and self._worker is None:
                self._worker = threading.Thread(target=self._run, name="bloodwork-engine", daemon=True)
                self._worker.start()
        return tickets

    # ---- the engine thread --------------------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._lock:
                    if not self._pending and not self._active:
                        self._worker = None  # the next submit starts a new thread: none lingers idle
                        return
                    room = self.max_batch - len(self._active)
                    if self.join == "batch" and self._active:
                        room = 0
                    admitted, self._pending = self._pending[:room], self._pending[room:]
                try:
                    self._prefill(admitted)
                    self._active += admitted
                    self._choose()
                    if self._active:
                        self._step()
                except BaseException as err:  # a bug: every caller in flight gets it rather than a hang
                    for seq in self._active + [s for s in admitted if s not in self._active]:
                        seq.ticket.put(err)
                    self._active = []

    def _prefill(self, admitted: list[_Seq]) -> None:
        """Each distinct prompt once (samples of one prompt share it), after its cached prefix if any."""
        done: dict[tuple[tuple[int, ...], int], _Seq] = {}
        for seq in admitted:
            start = time.perf_counter()
            request = seq.request
            seq.kv = self.forward.new_seq(len(request.prompt_ids) + seq.budget)
            key = (tuple(request.prompt_ids), request.prefix_len)
            twin = done.get(key)
            if twin is not None:  # the prefill it shares counts as its own model time too
                seq.kv.copy_from(twin.kv, twin.kv.length)
                seq.logits = twin.logits
                seq.model_s += twin.model_s
                self.stats["prompts_shared"] += 1
            else:
                seq.logits = self._prefill_one(seq.kv, list(request.prompt_ids), request.prefix_len)
                done[key] = seq
            seq.model_s += time.perf_counter() - start

    def _prefill_one(self, kv: SeqKV, ids: list[int], prefix_len: int) -> torch.Tensor:
        if 0 < prefix_len < len(ids):
            prefix = tuple(ids[:prefix_len])
            cached = self._prefixes.get(prefix)
            if cached is None:
                self.stats["prefix_misses"] += 1
                cached = self.forward.new_seq(prefix_len)
                self.forward.prefill(cached, list(prefix))
                self._prefixes[prefix] = cached
                while len(self._prefixes) > PREFIXES_KEPT:
                    self._prefixes.popitem(last=False)
            else:
                self.stats["prefix_hits"] += 1
                self._prefixes.move_to_end(prefix)
            kv.copy_from(cached, prefix_len)
            ids = ids[prefix_len:]
        return self.forward.prefill(kv, ids)

    def _choose(self) -> None:
        """Pick every sequence's next token from its logits; retire the ones that are done."""
        going = []
        for seq in self._active:
            start = time.perf_counter()
            finish = self._choose_one(seq)
            seq.model_s += time.perf_counter() - start
            if finish is None:
                going.append(seq)
            else:
                self._finish(seq, finish)
        self._active = going

    def _choose_one(self, seq: _Seq) -> str | None:
        """The finish reason once the sequence is done, else None."""
        if seq.ticket.cancelled:
            return "cancelled"
        logits, sampling = seq.logits, seq.request.sampling
        assert logits is not None
        if seq.guide is not None:
            logits = logits.clone()  # shared by the samples of one prompt at their first token
            seq.guide.constrain(logits, tokens_left=seq.budget - len(seq.new))
        token = pick(logits, sampling, seq.generator)
        seq.logits = None
        if seq.ttft_ms is None:
            seq.ttft_ms = (time.perf_counter() - seq.ticket.submitted) * 1000
        if token in self.loaded.eos_ids:
            return "stop"
        seq.new.append(token)
        if seq.guide is not None:
            seq.guide.advance(token)
        stop = seq.request.stop
        if stop or seq.ticket.stream:
            text = self._text(seq)
            if any(s in text for s in stop):
                return "stop"
            if seq.ticket.stream and not text.endswith("\ufffd"):  # wait for the rest of a split character
                upto = _streamable(text, stop)
                if upto > len(seq.emitted):
                    seq.ticket.put(text[len(seq.emitted):upto])
                    seq.emitted = text[:upto]
        return "length" if len(seq.new) >= seq.budget else None

    def _text(self, seq: _Seq) -> str:
        return self.loaded.tokenizer.decode(seq.new, skip_special_tokens=False)

    def _step(self) -> None:
        start = time.perf_counter()
        logits = self.forward.step([s.kv for s in self._active], [s.new[-1] for s in self._active])
        took = time.perf_counter() - start
        self.stats["steps"] += 1
        for seq, row in zip(self._active, logits, strict=True):
            seq.logits = row
            seq.model_s += took
            seq.steps += 1
            seq.rows += len(self._active)

    def _finish(self, seq: _Seq, finish: str) -> None:
        if finish == "cancelled":
            return  # its caller has gone
        text = self._text(seq)
        cut = [text.index(s) for s in seq.request.stop if s in text]
        if cut:
            text = text[:min(cut)]
        if seq.ticket.stream and len(text) > len(seq.emitted):
            seq.ticket.put(text[len(seq.emitted):])
        latency_ms = (time.perf_counter() - seq.ticket.submitted) * 1000
        seq.ticket.put(Completion(
            text=text, latency_ms=latency_ms, ttft_ms=seq.ttft_ms,
            queue_ms=round(max(0.0, latency_ms - seq.model_s * 1000), 3),
            batch_size=round(seq.rows / seq.steps, 2) if seq.steps else 1.0,
            prompt_tokens=len(seq.request.prompt_ids),
            completion_tokens=len(seq.new) + int(finish == "stop" and not cut), finish_reason=finish))


def _streamable(text: str, stop: tuple[str, ...]) -> int:
    """How much of `text` may be streamed: a tail that could be the start of a stop string is held back."""
    held = 0
    for s in stop:
        held = max(held, next((k for k in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:k])), 0))
    return len(text) - held


_ENGINES = threading.Lock()


def engine_for(loaded: LoadedModel) -> Engine:
    """The engine of this loaded model, made on first use: every oracle on these weights shares it."""
    with _ENGINES:
        if loaded.engine is None:
            loaded.engine = Engine(loaded)
        return loaded.engine
