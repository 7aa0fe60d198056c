"""Tests for a drop and a trend in a per-tick series: Mann-Whitney U, a step-down changepoint, an OLS slope.

Pure Python and closed-form, so every p-value and slope in a profile can be recomputed from the numbers
it lists, with no seed and no sampling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel

Z95 = 1.959964


class DropTest(BaseModel):
    """One-sided Mann-Whitney U test that `early` values exceed `late` ones.

    `u` counts pairs (early > late) plus half the ties; `p_value` is the normal approximation with the tie
    correction and a continuity correction (scipy's `mannwhitneyu(..., alternative="greater",
    method="asymptotic")`); 1.0 when every value is tied. `cliffs_delta` = 2U/(n1·n2) − 1, the effect size
    in −1..1 (1: every early value is above every late one).
    """

    n_early: int
    n_late: int
    mean_early: float | None
    mean_late: float | None
    u: float | None
    p_value: float | None
    cliffs_delta: float | None


def _midranks(values: Sequence[float]) -> tuple[list[float], float]:
    """Ranks (1-based, ties share their mean rank) and the tie term sum(t³ − t)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    ties = 0.0
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        rank = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[order[k]] = rank
        t = j - i + 1
        ties += t ** 3 - t
        i = j + 1
    return ranks, ties


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 6) if values else None


def drop_test(early: Sequence[float], late: Sequence[float]) -> DropTest:
    n1, n2 = len(early), len(late)
    if not n1 or not n2:
        return DropTest(n_early=n1, n_late=n2, mean_early=_mean(early), mean_late=_mean(late), u=None,
                        p_value=None, cliffs_delta=None)
    ranks, ties = _midranks([*early, *late])
    u = sum(ranks[:n1]) - n1 * (n1 + 1) / 2
    n = n1 + n2
    var = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))
    if var <= 0:
        p = 1.0
    else:
        z = (u - n1 * n2 / 2 - 0.5) / math.sqrt(var)
        p = 0.5 * math.erfc(z / math.sqrt(2))
    return DropTest(n_early=n1, n_late=n2, mean_early=_mean(early), mean_late=_mean(late), u=u,
                    p_value=min(1.0, max(0.0, p)), cliffs_delta=round(2 * u / (n1 * n2) - 1, 6))


class StepDown(BaseModel):
    """The single step that best fits the series (least squares): before `tick` one mean, from it another.

    `sse_reduction` is the share of the series' variance the step explains (0..1). Only steps down are
    searched: forgetting lowers a score.
    """

    tick: int
    mean_before: float
    mean_after: float
    sse_reduction: float
    n: int


def step_down(ticks: Sequence[int], values: Sequence[float], min_segment: int = 3) -> StepDown | None:
    """None when the series is too short for two segments of `min_segment` points or never steps down."""
    n = len(values)
    if n < 2 * min_segment:
        return None
    prefix, prefix_sq = [0.0], [0.0]
    for v in values:
        prefix.append(prefix[-1] + v)
        prefix_sq.append(prefix_sq[-1] + v * v)

    def sse(a: int, b: int) -> float:
        s = prefix[b] - prefix[a]
        return prefix_sq[b] - prefix_sq[a] - s * s / (b - a)

    total = sse(0, n)
    if total <= 1e-12:
        return None
    best: tuple[float, int] | None = None
    for k in range(min_segment, n - min_segment + 1):
        before, after = prefix[k] / k, (prefix[n] - prefix[k]) / (n - k)
        if before - after <= 1e-9:
            continue
        cost = sse(0, k) + sse(k, n)
        if best is None or cost < best[0] - 1e-12:
            best = (cost, k)
    if best is None:
        return None
    cost, k = best
    return StepDown(tick=ticks[k], mean_before=round(prefix[k] / k, 6),
                    mean_after=round((prefix[n] - prefix[k]) / (n - k), 6),
                    sse_reduction=round(1 - cost / total, 6), n=n)


class Slope(BaseModel):
    """Least-squares slope of y on x, its standard error and a 95 % interval (normal approximation)."""

    n: int
    slope: float | None
    se: float | None
    ci95: tuple[float, float] | None


def ols_slope(x: Sequence[float], y: Sequence[float]) -> Slope:
    n = len(x)
    if n < 3:
        return Slope(n=n, slope=None, se=None, ci95=None)
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((a - mx) ** 2 for a in x)
    if sxx == 0:
        return Slope(n=n, slope=None, se=None, ci95=None)
    b = sum((a - mx) * (c - my) for a, c in zip(x, y, strict=True)) / sxx
    resid = sum((c - my - b * (a - mx)) ** 2 for a, c in zip(x, y, strict=True))
    se = math.sqrt(resid / (n - 2) / sxx)
    return Slope(n=n, slope=round(b, 6), se=round(se, 6), ci95=(round(b - Z95 * se, 6), round(b + Z95 * se, 6)))
