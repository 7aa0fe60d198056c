"""`model_matrix.json`, its Markdown table and its chart; and the rule for putting rows side by side.

Rows are comparable only when they were scored on the same eval set (sha256) under the same ISA
(prompt-template sha256). Adding rows to an existing matrix with other hashes is refused, unless asked
for, and then each such row is marked (`comparable: false`, a dagger in the table, hatched in the chart).
A model that could not run (no key, no server) keeps its row, with the reason and no numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from bloodwork.errors import BloodworkError
from bloodwork.evidence.stats import MeanCI, Rate, RateCI
from bloodwork.matrix.evalset import EvalSetMeta
from bloodwork.matrix.loop import LoopResult
from bloodwork.matrix.score import Scores

MATRIX_FILE = "model_matrix.json"
MARKDOWN_FILE = "model_matrix.md"
CHART_FILE = "model_matrix.png"


class MatrixError(BloodworkError, ValueError):
    """Rows that may not stand side by side, or a matrix file that cannot be read."""


class ModelRow(BaseModel):
    spec: str
    label: str
    provenance: str | None
    status: Literal["ok", "unavailable", "failed"]
    reason: str | None = None
    eval_set_sha256: str
    prompt_template_sha256: str
    chat_template_sha256: str | None = None
    hardware: dict[str, Any] = Field(default_factory=dict)
    decoding: dict[str, Any] = Field(default_factory=dict)
    states_scored: int = 0
    states_excluded: int = 0
    exclusion_note: str = ""
    scores: Scores | None = None
    loop: LoopResult | None = None
    answers_file: str | None = None
    comparable: bool = True
    mismatch: list[str] = Field(default_factory=list)
    created_at: str
    generator: str | None = Field(default=None, description="the command that made this row (rows of one matrix "
                                  "may come from several commands); absent from older matrices")


class MatrixReport(BaseModel):
    schema_version: int = 1
    generator: str
    eval_set_file: str
    eval_set: EvalSetMeta
    prompt_template_sha256: str
    rows: list[ModelRow]


def merge(existing: MatrixReport | None, fresh: MatrixReport, *, allow_mixed: bool) -> MatrixReport:
    """Fresh rows replace rows of the same spec; older rows must match the fresh hashes (or be marked)."""
    if existing is None:
        return fresh
    keep: list[ModelRow] = []
    refused: list[str] = []
    for row in existing.rows:
        if row.spec in {r.spec for r in fresh.rows}:
            continue
        mismatch = [name for name, mine, theirs in (
            ("eval set", row.eval_set_sha256, fresh.eval_set.sha256),
            ("prompt template", row.prompt_template_sha256, fresh.prompt_template_sha256)) if mine != theirs]
        if mismatch and not allow_mixed:
            refused.append(f"{row.spec} ({', '.join(mismatch)})")
            continue
        keep.append(row.model_copy(update={"comparable": not mismatch, "mismatch": mismatch}) if mismatch else row)
    if refused:
        raise MatrixError("the matrix already holds rows scored on a different eval set or ISA: "
                          f"{'; '.join(refused)} (use --allow-mixed to keep them marked, or --fresh)")
    return fresh.model_copy(update={"rows": keep + fresh.rows})


def load_matrix(path: Path) -> MatrixReport | None:
    if not path.is_file():
        return None
    try:
        return MatrixReport.model_validate_json(path.read_text())
    except ValueError as err:
        raise MatrixError(f"{path} is not a model matrix: {str(err).splitlines()[0]}") from err


def _rate(r: Rate | None) -> str:
    return "—" if r is None or r.rate is None or r.ci95 is None else (
        f"{r.rate:.0%} [{r.ci95[0]:.0%}, {r.ci95[1]:.0%}] ({r.k}/{r.n})")


def _num(v: float | None, fmt: str = "{:.0f}") -> str:
    return "—" if v is None else fmt.format(v)


def _ci(m: MeanCI | RateCI | None, fmt: str = "{:.1f}") -> str:
    """A mean or a rate with its 95 % interval and n: `4.2 [1.0, 7.4] (n=8)`."""
    if m is None:
        return "—"
    value = m.mean if isinstance(m, MeanCI) else m.rate
    n = m.n if isinstance(m, MeanCI) else f"{m.events} in {m.exposure} ticks"
    if value is None:
        return f"— (n={n})"
    ci = f" [{fmt.format(m.ci95[0])}, {fmt.format(m.ci95[1])}]" if m.ci95 else ""
    return f"{fmt.format(value)}{ci} (n={n})"


def loop_cells(loop: LoopResult | None) -> str:
    """The closed-loop columns: completed | died | panics/100 ticks | ticks before death | verified progress |
    MTTR p50 ticks."""
    if loop is None:
        return "— | — | — | — | — | — |"
    return (f"{_rate(loop.completed)} | {_rate(loop.died)} | {_ci(loop.panics_per_100_ticks)} | "
            f"{_ci(loop.ticks_before_death)} | {_ci(loop.progress, '{:.2f}')} | {_num(loop.mttr_ticks.p50)} |")


def render_markdown(m: MatrixReport) -> str:
    e = m.eval_set
    lines = [f"# Model matrix ({e.rows} frozen states)", "",
             f"Eval set `{m.eval_set_file}` sha256 `{e.sha256[:16]}`; prompt template (ISA + schema) sha256 "
             f"`{m.prompt_template_sha256[:16]}`. States by category: "
             + ", ".join(f"{k} {v}" for k, v in sorted(e.categories.items())) + ".",
             "Each model answers each state once, greedy; the raw text is scored before any clean-up. Rates are over "
             "answered calls with Wilson 95 % intervals; latency is per call, from the call's start (queueing and "
             "prefill are in the TTFT); decode tok/s counts the tokens after the first over the time after the first. "
             "Every figure can be recounted from the raw files: `bloodwork matrix recount DIR`.", "",
             "Closed loop: K runs per task under chaos (spec in the row notes); panics per 100 ticks with an exact "
             "Poisson interval, ticks before death over the runs that died and verified progress (the final "
             "verifier's partial score, 0..1: share of hidden tests passing, repo-fix stage, ops verdict) with "
             "Student-t intervals, completed and died with Wilson intervals.", "",
             "| model | provenance | strict valid | lenient valid | op agrees (name) | op agrees (exact) | "
             "latency p50 / p95 / mean ms | TTFT p50 ms | decode tok/s p50 | errors | loop: completed | died | "
             "panics / 100 ticks | ticks before death | verified progress | MTTR p50 ticks |", "|" + "---|" * 16]
    for r in m.rows:
        mark = "" if r.comparable else " †"
        loop = r.loop
        cells = loop_cells(loop)
        if r.status != "ok" or (r.scores is None and loop is None):
            lines.append(f"| {r.label}{mark} | {r.provenance or '—'} | {r.status}: {r.reason} |" + " |" * 13)
            continue
        if r.scores is None:  # a reference policy: closed-loop runs only
            lines.append(f"| {r.label}{mark} | {r.provenance} | {r.reason} |" + " |" * 7 + f" {cells}")
            continue
        s = r.scores
        lat = s.latency_ms
        lines.append(
            f"| {r.label}{mark} | {r.provenance} | {_rate(s.strict_valid)} | {_rate(s.lenient_valid)} | "
            f"{_rate(s.op_name_agreement)} | {_rate(s.op_exact_agreement)} | {_num(lat.p50)} / {_num(lat.p95)} / "
            f"{_num(lat.mean)} (n={lat.n}) | {_num(s.ttft_ms.p50)} | "
            f"{_num(s.decode_tokens_per_s.p50 if s.decode_tokens_per_s else None, '{:.1f}')} | "
            f"{_rate(s.errors)} | {cells}")
    lines += ["", "## Rows", ""]
    for r in m.rows:
        if r.status == "unavailable":
            lines.append(f"- **{r.label}** (`{r.spec}`): could not run: {r.reason}")
            continue
        note = f" ({r.exclusion_note})" if r.exclusion_note else ""
        load = r.hardware.get("load_avg_1m")
        lines.append(f"- **{r.label}** (`{r.spec}`): hardware {r.hardware.get('where', '?')} "
                     f"({r.hardware.get('cpu') or r.hardware.get('endpoint', '')}"
                     f"{f', load average {load}' if load else ''}); decoding {r.decoding}; "
                     f"{r.states_scored} states scored, {r.states_excluded} excluded{note}"
                     + (f"; violations {r.scores.violation_classes}" if r.scores else "")
                     + (f"; loop {r.loop.spec.runs} runs of each of {', '.join(r.loop.spec.all_tasks())} under "
                        f"chaos {r.loop.spec.chaos}, {r.loop.spec.ticks} ticks: {r.loop.statuses}; final stages "
                        f"{r.loop.stages}" if r.loop else "")
                     + ("" if r.comparable else f"; **not comparable**: different {', '.join(r.mismatch)}")
                     + (f"; made by `{r.generator}`" if r.generator else ""))
    if any(not r.comparable for r in m.rows):
        lines += ["", "† scored on a different eval set or ISA than the rest: not comparable."]
    return "\n".join(lines) + "\n"


def render_chart(m: MatrixReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [("† " if not r.comparable else "") + r.label[:38] for r in m.rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 1.2 + 0.7 * max(2, len(m.rows))))
    ys = range(len(m.rows))
    for offset, key, colour in ((-0.18, "strict_valid", "#c0392b"), (0.18, "lenient_valid", "#2980b9")):
        for y, r in zip(ys, m.rows, strict=True):
            rate: Rate | None = getattr(r.scores, key) if r.scores else None
            if rate is None or rate.rate is None or rate.ci95 is None:
                why = "loop only" if r.status == "ok" and r.loop is not None else r.status
                ax1.text(0.01, y, f"n/a: {why}", va="center", fontsize=8)
                continue
            err = [[rate.rate - rate.ci95[0]], [rate.ci95[1] - rate.rate]]
            ax1.barh(y + offset, rate.rate, height=0.34, color=colour, xerr=err, capsize=3,
                     hatch="//" if not r.comparable else None, label=key.replace("_", " ") if y == 0 else None)
    ax1.set_xlim(0, 1)
    ax1.set_yticks(list(ys), labels, fontsize=8)
    ax1.set_xlabel("share of answers (95 % CI)")
    if ax1.get_legend_handles_labels()[0]:  # rows with no frozen-state scores draw no bars
        ax1.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2, frameon=False)
    ax1.invert_yaxis()
    for y, r in zip(ys, m.rows, strict=True):
        lat = r.scores.latency_ms if r.scores else None
        if lat is None or lat.p50 is None:
            ax2.text(0.01, y, "n/a", va="center", fontsize=8)
            continue
        ax2.barh(y, lat.p95 or 0, height=0.5, color="#bdc3c7", label="p95" if y == 0 else None)
        ax2.barh(y, lat.p50, height=0.5, color="#34495e", label="p50" if y == 0 else None)
    ax2.set_yticks(list(ys), [""] * len(m.rows))
    ax2.set_xlabel("latency per call, ms")
    if ax2.get_legend_handles_labels()[0]:  # rows with no frozen-state scores draw no bars
        ax2.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2, frameon=False)
    ax2.invert_yaxis()
    fig.suptitle(f"model matrix: {m.eval_set.rows} frozen states (eval set {m.eval_set.sha256[:12]})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
