"""Heatmaps of a profile: what each tick's context was made of, and how well the model still stated its goal.

`context_degradation_heatmap.json` holds every matrix the PNGs draw, so a picture can be checked against
numbers. Ticks are binned (`bin_ticks`, chosen so a run fits in at most `MAX_BINS` columns and, when probes
exist, each bin holds at least one probe). A section's share in a bin is token-weighted: the sum of the
section's tokens over the bin's ticks divided by the sum of those ticks' context totals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from bloodwork.evidence.signals import SECTIONS, RunSignals

if TYPE_CHECKING:
    from matplotlib.axes import Axes

MAX_BINS = 60
SHARE_DEFINITION = ("sum over the bin's ticks of the section's tokens / sum over the same ticks of the "
                    "context's total tokens")
ProbeMetric = Literal["semantic", "lexical"]


class RunHeatmap(BaseModel):
    run_id: str
    policy: str
    budget: int
    bins: list[tuple[int, int]]
    ticks: list[int]
    section_share: dict[str, list[float | None]]
    probe_score: list[float | None]
    probe_n: list[int]


class HeatmapFile(BaseModel):
    generator: str
    bin_ticks: int
    bins_are: str = "[start, end) tick ranges"
    sections: list[str]
    share_definition: str = SHARE_DEFINITION
    probe_metric: ProbeMetric
    probe_score_definition: str
    runs: list[RunHeatmap]
    pngs: list[str]
    pngs_not_drawn: dict[str, str] = Field(default_factory=dict)


def choose_bin(max_ticks: int, probe_every: int) -> int:
    size = max(1, math.ceil(max_ticks / MAX_BINS))
    return math.ceil(size / probe_every) * probe_every if probe_every > 0 else size


def run_heatmap(run: RunSignals, bin_ticks: int, metric: ProbeMetric) -> RunHeatmap:
    last = max((t.tick for t in run.ticks), default=-1)
    bins = [(s, min(s + bin_ticks, last + 1)) for s in range(0, last + 1, bin_ticks)]
    share: dict[str, list[float | None]] = {s: [] for s in SECTIONS}
    counts, probe_score, probe_n = [], [], []
    for start, end in bins:
        inside = [t for t in run.ticks if start <= t.tick < end]
        total = sum(t.total for t in inside)
        for s in SECTIONS:
            share[s].append(round(sum(t.tokens[s] for t in inside) / total, 6) if total else None)
        scores = [getattr(t.probe, metric) for t in inside if t.probe is not None]
        scores = [v for v in scores if v is not None]
        counts.append(len(inside))
        probe_n.append(len(scores))
        probe_score.append(round(sum(scores) / len(scores), 6) if scores else None)
    return RunHeatmap(run_id=run.manifest.run_id, policy=str(run.manifest.config.get("context", {}).get("policy")),
                      budget=run.ticks[0].budget if run.ticks else 0, bins=bins, ticks=counts, section_share=share,
                      probe_score=probe_score, probe_n=probe_n)


def _pyplot() -> ModuleType:
    """matplotlib is imported only to draw (Agg: no display), so reading a profile never needs it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(rows: Sequence[Sequence[float | None]]) -> list[list[float]]:
    return [[math.nan if v is None else v for v in row] for row in rows]


def _bin_axis(ax: Axes, bins: list[tuple[int, int]], bin_ticks: int) -> None:
    step = max(1, len(bins) // 12)
    ax.set_xticks(range(0, len(bins), step))
    ax.set_xticklabels([str(bins[i][0]) for i in range(0, len(bins), step)])
    ax.set_xlabel(f"tick (start of each bin of {bin_ticks} ticks)")


def plot_sections(maps: list[RunHeatmap], bin_ticks: int, path: Path) -> None:
    plt = _pyplot()
    cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
    fig, axes = plt.subplots(len(maps), 1, figsize=(11, 1.9 * len(maps) + 1.2), squeeze=False, layout="constrained")
    image = None
    for ax, m in zip(axes[:, 0], maps, strict=True):
        image = ax.imshow(_grid([m.section_share[s] for s in SECTIONS]), aspect="auto", cmap=cmap, vmin=0, vmax=1,
                          interpolation="nearest")
        ax.set_yticks(range(len(SECTIONS)))
        ax.set_yticklabels(SECTIONS)
        ax.set_title(f"{m.run_id}  (policy {m.policy}, budget {m.budget} tokens)", fontsize=9)
        _bin_axis(ax, m.bins, bin_ticks)
    fig.suptitle("Context composition over the run: share of each tick's context tokens by section")
    fig.colorbar(image, ax=axes[:, 0].tolist(), label="token share of the context (grey: no ticks)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_probes(maps: list[RunHeatmap], bin_ticks: int, metric: ProbeMetric, path: Path) -> None:
    plt = _pyplot()
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="#dddddd")
    width = max(len(m.bins) for m in maps)
    rows = [m.probe_score + [None] * (width - len(m.bins)) for m in maps]
    low = min([0.0, *(v for row in rows for v in row if v is not None)])
    fig, ax = plt.subplots(figsize=(11, 0.5 * len(maps) + 2.2), layout="constrained")
    image = ax.imshow(_grid(rows), aspect="auto", cmap=cmap, vmin=low, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(maps)))
    ax.set_yticklabels([f"{m.policy} · {m.run_id}"[:60] for m in maps], fontsize=8)
    _bin_axis(ax, max(maps, key=lambda m: len(m.bins)).bins, bin_ticks)
    ax.set_title(f"Goal probe score per tick bin ({metric}; mean of the bin's probes; grey: no probe)")
    fig.colorbar(image, ax=ax, label=f"{metric} score vs the goal")
    fig.savefig(path, dpi=110)
    plt.close(fig)


class ComparisonSeries(BaseModel):
    """What the comparison figure draws for one run."""

    label: str
    budget: int
    ticks: list[int]
    tokens: list[int]
    probe_ticks: list[int]
    probe: list[float]
    relevant_ticks: list[int]
    relevant_share: list[float]


def plot_comparison(series: list[ComparisonSeries], title: str, metric: ProbeMetric, window: int, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(11, 9), sharex=True, layout="constrained")
    for i, s in enumerate(series):
        colour = f"C{i % 10}"
        axes[0].plot(s.ticks, s.tokens, color=colour, label=s.label, linewidth=1.2)
        axes[0].axhline(s.budget, color=colour, linestyle=":", linewidth=0.8)
        axes[1].plot(s.probe_ticks, s.probe, color=colour, marker=".", linewidth=1, label=s.label)
        axes[2].plot(s.relevant_ticks, s.relevant_share, color=colour, linewidth=1.2, label=s.label)
    axes[0].set_ylabel("context tokens")
    axes[0].set_title("Context size per tick (dotted: each run's budget)")
    lowest = min((v for s in series for v in s.probe), default=0.0)
    axes[1].set_ylim(min(0.0, lowest) - 0.05, 1.05)
    axes[1].set_ylabel(f"{metric} probe score")
    axes[1].set_title("Goal probe score")
    axes[2].set_ylabel("goal-relevant share")
    axes[2].set_ylim(-0.05, 1.05)
    axes[2].set_title(f"Share of goal-relevant ops, trailing {window} ticks")
    axes[2].set_xlabel("tick")
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
