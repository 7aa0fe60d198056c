"""The pool mix: target fractions in, selected rows and an honest account of what was achieved out.

The largest total that meets the target is bounded by the scarcest pool relative to its share; that
pool is named as the limit. Rows within a pool are chosen by a seeded hash, so a rebuild with the same
inputs and seed selects the same rows.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping

from bloodwork.data.formats import POOLS, MixReport, Pool
from bloodwork.data.mine import Example
from bloodwork.errors import BloodworkError

DEFAULT_MIX = "golden=0.4,recovery=0.4,rejected=0.2"


class MixError(BloodworkError, ValueError):
    """A mix string that cannot be read."""


def parse_mix(text: str) -> dict[str, float]:
    """`golden=0.4,recovery=0.4,rejected=0.2`, or shares in pool order `15/65/20`; normalized to sum 1."""
    raw: dict[str, float] = {}
    try:
        if "=" in text:
            for part in text.split(","):
                name, _, value = part.partition("=")
                name = name.strip()
                if name not in POOLS:
                    raise MixError(f"unknown pool {name!r} in mix {text!r} (pools: {', '.join(POOLS)})")
                raw[name] = float(value)
        else:
            parts = [float(p) for p in text.split("/")]
            if len(parts) != len(POOLS):
                raise MixError(f"mix {text!r}: give {len(POOLS)} shares G/R/X for {'/'.join(POOLS)}")
            raw = dict(zip(POOLS, parts, strict=True))
    except ValueError as err:
        if isinstance(err, MixError):
            raise
        raise MixError(f"mix {text!r}: shares must be numbers") from err
    if any(v < 0 or math.isnan(v) for v in raw.values()) or sum(raw.values()) <= 0:
        raise MixError(f"mix {text!r}: shares must be >= 0 and not all 0")
    total = sum(raw.values())
    return {p: round(raw.get(p, 0.0) / total, 6) for p in POOLS}


def _rank(seed: int, e: Example) -> str:
    return hashlib.sha256(f"{seed}|{e.row_id}".encode()).hexdigest()


def apply_mix(pools: dict[Pool, list[Example]], target: Mapping[str, float], *, seed: int,
              size: int | None = None) -> tuple[dict[Pool, list[Example]], MixReport]:
    # Keyed by pool name as str: the report's fields (and a mix's keys) are plain strings.
    available: dict[str, int] = {p: len(pools.get(p, [])) for p in POOLS}
    active = {p: target.get(p, 0.0) for p in POOLS if target.get(p, 0.0) > 0}
    limits = {p: available[p] / f for p, f in active.items()}
    limiting: str | None = None
    total = 0.0
    if limits:
        scarcest = min(limits, key=lambda p: (limits[p], p))
        limiting, total = scarcest, limits[scarcest]
    if size is not None and size < total:
        total, limiting = float(size), "size cap"
    counts: dict[str, int] = {p: math.floor(total * active.get(p, 0.0) + 1e-9) for p in POOLS}
    selected = {p: sorted(pools.get(p, []), key=lambda e: _rank(seed, e))[: counts[p]] for p in POOLS}
    n = sum(counts.values())
    report = MixReport(target=dict(target), available=available, selected=counts,
                       achieved={p: round(counts[p] / n, 6) if n else None for p in POOLS},
                       limiting=limiting, total=n)
    return selected, report
