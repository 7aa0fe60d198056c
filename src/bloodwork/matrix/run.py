"""`bloodwork matrix`: every model on the same frozen states, then its closed-loop runs; one row each.

A fine-tuned row may only be scored on states from runs it never trained on. Each `+lora=PATH` adapter
lists the runs and exact states it was trained on (`bloodwork_train.json`); those states are removed for
every row (not only the adapter's), so all rows are scored on the same states and stay comparable. An
adapter without that record cannot be checked: its row says so.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bloodwork.chronos.files import atomic_write
from bloodwork.chronos.run import now_iso
from bloodwork.data.train import TRAIN_FILE, TrainRecord
from bloodwork.experts import ExpertOracle
from bloodwork.matrix.evalset import EvalState, load_evalset
from bloodwork.matrix.hashes import chat_template_sha256, decoding, hardware, prompt_template_sha256
from bloodwork.matrix.loop import LoopSpec, closed_loop
from bloodwork.matrix.report import (
    CHART_FILE,
    MARKDOWN_FILE,
    MATRIX_FILE,
    MatrixReport,
    ModelRow,
    load_matrix,
    merge,
    render_chart,
    render_markdown,
)
from bloodwork.matrix.score import Answer, ask, score
from bloodwork.oracles.base import OracleConfigError
from bloodwork.oracles.registry import make_oracle
from bloodwork.slug import slug
from bloodwork.tasks.registry import load_task

API_SCHEMES = ("openai", "gemini", "kimi")
# `served:local:...`: the local model behind `bloodwork serve` (started by the matrix on loopback for the row),
# asked through the OpenAI client: the API path end to end, with no key.
SERVED = "served:"


class MatrixOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(default=96, ge=1)
    loop: LoopSpec | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    allow_mixed: bool = False
    fresh: bool = False


def oracle_options(spec: str, max_new_tokens: int) -> dict[str, Any]:
    """Greedy decoding with the same token cap, in each backend's own option names."""
    scheme = spec.partition(":")[0]
    if scheme == "local":
        return {"max_new_tokens": max_new_tokens, "temperature": 0.0}
    if scheme in API_SCHEMES:
        return {"max_tokens": max_new_tokens, "temperature": 0.0}
    return {}


def adapter_of(spec: str) -> Path | None:
    spec = spec.removeprefix(SERVED)
    _, sep, path = spec.partition("+lora=")
    return Path(path).expanduser() if sep and spec.startswith("local:") else None


def default_label(spec: str, described: dict[str, Any] | None, provenance: str | None) -> str:
    if spec.startswith(SERVED):
        inner = default_label(spec.removeprefix(SERVED), None, provenance)
        return f"{inner}, served by bloodwork serve via the OpenAI client at {(described or {}).get('base_url')}"
    if provenance == "scripted":
        return f"{spec} (scripted fake, not a model)"
    if provenance == "expert":
        return f"{spec} (reference policy, not a model)"
    adapter = adapter_of(spec)
    if adapter is not None:
        record = adapter / TRAIN_FILE
        kind = TrainRecord.model_validate_json(record.read_text()).config.kind.upper() if record.is_file() else ""
        return f"{spec.split('+lora=')[0]} + fine-tuned LoRA {kind + ' ' if kind else ''}{adapter.name}"
    if spec.partition(":")[0] in API_SCHEMES:
        where = (described or {}).get("base_url") or "its endpoint"
        return f"{spec} via OpenAI-compatible API at {where}"
    return spec


def exclusions(specs: list[str], states: list[EvalState]) -> tuple[set[str], dict[str, str]]:
    """State ids any adapter trained on (by run or exact prompt), and a note per spec."""
    excluded: set[str] = set()
    notes: dict[str, str] = {}
    for spec in specs:
        adapter = adapter_of(spec)
        if adapter is None:
            continue
        record_file = adapter / TRAIN_FILE
        if not record_file.is_file():
            notes[spec] = f"no {TRAIN_FILE}: its training states are unknown, overlap with the eval set unchecked"
            continue
        record = TrainRecord.model_validate_json(record_file.read_text())
        groups, prompts = set(record.train_groups), set(record.train_prompt_sha256)
        hit = {s.state_id for s in states if s.group in groups or s.run_id in groups or s.prompt_sha256 in prompts}
        excluded |= hit
        notes[spec] = f"{len(hit)} eval states came from its training runs or states"
    return excluded, notes


def _make(spec: str, max_new_tokens: int, stack: ExitStack) -> Any:
    """The row's oracle; for `served:SPEC`, first a `bloodwork serve` of SPEC on loopback (closed by `stack`)."""
    if not spec.startswith(SERVED):
        return make_oracle(spec, **oracle_options(spec, max_new_tokens))
    from bloodwork.oracles.serve import ModelServer, ServeError

    inner = spec.removeprefix(SERVED)
    try:
        server = stack.enter_context(ModelServer(inner, max_new_tokens=max_new_tokens))  # serves from a thread
    except ServeError as err:
        raise OracleConfigError(f"{spec}: {err}") from err
    oracle = make_oracle(f"openai:{inner}", base_url=server.url, **oracle_options("openai:", max_new_tokens))
    oracle.spec = spec
    return oracle


def _row(spec: str, states: list[EvalState], out: Path, options: MatrixOptions, common: dict[str, Any],
         on_tick: Callable[[], None]) -> ModelRow:
    with ExitStack() as stack:
        try:
            oracle = _make(spec, options.max_new_tokens, stack)
        except OracleConfigError as err:
            return ModelRow(spec=spec, label=options.labels.get(spec) or default_label(spec, None, None),
                            provenance=None, status="unavailable", reason=str(err), **common)
        return _scored_row(oracle, spec, states, out, options, common, on_tick)


def _scored_row(oracle: Any, spec: str, states: list[EvalState], out: Path, options: MatrixOptions,
                common: dict[str, Any], on_tick: Callable[[], None]) -> ModelRow:
    try:
        described = oracle.describe()
        row = ModelRow(spec=spec, label=options.labels.get(spec) or default_label(spec, described, oracle.provenance),
                       provenance=oracle.provenance, status="ok", chat_template_sha256=chat_template_sha256(oracle),
                       hardware=hardware(described), decoding=decoding(described), states_scored=len(states), **common)
        if isinstance(oracle, ExpertOracle):
            return _reference_row(oracle, row, options, out, on_tick)
        # The host is shared: latency means little without the load it was measured under.
        row.hardware["load_avg_1m"] = {"start": round(os.getloadavg()[0], 2)}

        def on_answer(_a: Answer) -> None:
            on_tick()

        answers = ask(oracle, states, on_answer)
        answers_file = out / "answers" / f"{slug(spec)}.jsonl"
        answers_file.parent.mkdir(parents=True, exist_ok=True)
        answers_file.write_text("".join(a.model_dump_json() + "\n" for a in answers))
        row.answers_file = str(answers_file)
        if answers and all(a.error for a in answers):
            row.status, row.reason = "failed", f"every call failed: {answers[0].error}"
            return row
        row.scores = score(answers)
        row.decoding = decoding(oracle.describe())  # again after the answers: what the server honoured
        row.hardware["load_avg_1m"]["end"] = round(os.getloadavg()[0], 2)
        if options.loop is not None and options.loop.runs > 0:
            loop_dir = out / "loop" / f"{slug(spec)}-{time.strftime('%Y%m%d-%H%M%S')}"
            row.loop = closed_loop(oracle, options.loop, loop_dir, on_run=on_tick)
        return row
    finally:
        oracle.close()


def _reference_row(oracle: ExpertOracle, row: ModelRow, options: MatrixOptions, out: Path,
                   on_tick: Callable[[], None]) -> ModelRow:
    """The "perfect" row: a task's reference policy (`expert:TASK`), scored in closed-loop runs only.

    It answers by reading the live workspace, which a frozen state does not carry, so it is asked no
    frozen state; and it knows one task, so its loop must run that task.
    """
    row.states_scored = 0
    loop = options.loop
    if loop is None or loop.runs <= 0:
        return row.model_copy(update={"status": "unavailable", "reason": "a reference policy is scored in "
                                      "closed-loop runs only (it reads the live workspace); give --loop-runs > 0"})
    own = [t for t in loop.all_tasks() if load_task(t).id == oracle.task_id]
    if not own:
        return row.model_copy(update={"status": "unavailable", "reason": f"the reference policy of {oracle.task_id} "
                                      f"cannot run the loop tasks {', '.join(loop.all_tasks())}"})
    row.reason = ("reference policy, not a model: closed-loop runs only (frozen states carry no workspace), "
                  f"on its own task {own[0]}")
    row.loop = closed_loop(oracle, loop.model_copy(update={"task": own[0], "tasks": [own[0]]}),
                           out / "loop" / f"{slug(row.spec)}-{time.strftime('%Y%m%d-%H%M%S')}", on_run=on_tick)
    return row


def run_matrix(specs: list[str], eval_file: Path, out: Path, options: MatrixOptions, *, generator: str,
               on_start: Callable[[int], None] | None = None, on_tick: Callable[[], None] | None = None
               ) -> MatrixReport:
    meta, states = load_evalset(eval_file)
    existing = None if options.fresh else load_matrix(out / MATRIX_FILE)
    excluded, notes = exclusions(specs, states)
    scored = [s for s in states if s.state_id not in excluded]
    loop_runs = options.loop.runs * len(options.loop.all_tasks()) if options.loop else 0
    if on_start:
        on_start(len(specs) * (len(scored) + loop_runs))
    out.mkdir(parents=True, exist_ok=True)
    template = prompt_template_sha256()
    rows = []
    for spec in specs:
        common = {"eval_set_sha256": meta.sha256, "prompt_template_sha256": template,
                  "states_excluded": len(excluded), "created_at": now_iso(), "generator": generator,
                  "exclusion_note": "; ".join(f"{s}: {n}" for s, n in notes.items())}
        rows.append(_row(spec, scored, out, options, common, on_tick or (lambda: None)))
    fresh = MatrixReport(generator=generator, eval_set_file=str(eval_file), eval_set=meta,
                         prompt_template_sha256=template, rows=rows)
    report = merge(existing, fresh, allow_mixed=options.allow_mixed)
    atomic_write(out / MATRIX_FILE, report.model_dump_json(indent=2))
    (out / MARKDOWN_FILE).write_text(render_markdown(report))
    render_chart(report, out / CHART_FILE)
    return report

