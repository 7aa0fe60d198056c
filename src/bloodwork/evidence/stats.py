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
