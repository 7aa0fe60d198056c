"""Small, dependency-free statistics for reports: every rate comes with its n and a 95 % interval."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel


class Rate(BaseModel):
    """k of n, with the Wilson score interval (sane at 0 and n, unlike the normal approximation)."""

    k: int
    n: int
    rate: float | None
    ci95: tuple[float, float] | None

    def __str__(self) -> str:
        if self.rate is None or self.ci95 is None:
            return f"n/a (n={self.n})"
        return f"{self.rate:.1%} [{self.ci95[0]:.1%}, {self.ci95[1]:.1%}] ({self.k}/{self.n})"


def wilson(k: int, n: int, z: float = 1.959964) -> Rate:
    if n == 0:
        return Rate(k=0, n=0, rate=None, ci95=None)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Rate(k=k, n=n, rate=round(p, 6), ci95=(round(max(0.0, centre - half), 6), round(min(1.0, centre + half), 6)))


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no data."""
    if not values:
        return None
    data = sorted(values)
    pos = (len(data) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return round(data[lo] + (data[hi] - data[lo]) * (pos - lo), 6)


class Distribution(BaseModel):
    n: int
    p50: float | None
    p95: float | None
    mean: float | None
    max: float | None


def distribution(values: Sequence[float]) -> Distribution:
    return Distribution(n=len(values), p50=percentile(values, 50), p95=percentile(values, 95),
                        mean=round(sum(values) / len(values), 6) if values else None,
                        max=max(values) if values else None)


class RateCI(BaseModel):
    """Events per `per` units of exposure (panics per 100 ticks), with the exact (Garwood) Poisson 95 % interval."""

    events: int
    exposure: int
    per: int
    rate: float | None
    ci95: tuple[float, float] | None


def _poisson_cdf(k: int, mu: float) -> float:
    term = total = math.exp(-mu)
    for i in range(1, k + 1):
        term *= mu / i
        total += term
    return total


def _solve(f: object, target: float, hi: float) -> float:
    """Bisection for the mu where the decreasing function f crosses target."""
    lo = 0.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if f(mid) > target:  # type: ignore[operator]
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def poisson_rate(events: int, exposure: int, per: int = 100) -> RateCI:
    if exposure <= 0:
        return RateCI(events=events, exposure=exposure, per=per, rate=None, ci95=None)
    k = events
    hi = 10.0 + 3 * k
    upper = _solve(lambda mu: _poisson_cdf(k, mu), 0.025, hi)  # P(X <= k | mu) = 0.025
    lower = 0.0 if k == 0 else _solve(lambda mu: _poisson_cdf(k - 1, mu), 0.975, hi)  # P(X >= k | mu) = 0.025
    scale = per / exposure
    return RateCI(events=k, exposure=exposure, per=per, rate=round(k * scale, 6),
                  ci95=(round(max(0.0, lower) * scale, 6), round(upper * scale, 6)))


class MeanCI(BaseModel):
    """A mean over n values with its Student-t 95 % interval (None below n = 2)."""

    n: int
    mean: float | None
    ci95: tuple[float, float] | None


def _t975(df: int) -> float:
    """The 97.5 % quantile of Student's t (a table to df 10, then the Cornish-Fisher expansion: within 0.1 %)."""
    table = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 6: 2.4469, 7: 2.3646, 8: 2.3060, 9: 2.2622,
             10: 2.2281}
    if df in table:
        return table[df]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def mean_ci(values: Sequence[float]) -> MeanCI:
    n = len(values)
    if n == 0:
        return MeanCI(n=0, mean=None, ci95=None)
    mean = sum(values) / n
    if n < 2:
        return MeanCI(n=n, mean=round(mean, 6), ci95=None)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = _t975(n - 1) * sd / math.sqrt(n)
    return MeanCI(n=n, mean=round(mean, 6), ci95=(round(mean - half, 6), round(mean + half, 6)))
