"""The seeded fault plan: every injection decided by a hash, so a run is reproducible.

`decide(tick, call_index, kind)` is true when `sha256(seed, run_id, tick, call_index, kind)`, read as a
number in [0, 1), is below the kind's rate. Nothing random is kept in memory, so a resumed or replayed
run makes exactly the same decisions.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bloodwork.errors import BloodworkError, describe

KINDS = ("exec_timeout", "exec_fail", "write_deny", "disk_full", "log_flood", "oracle_error", "oracle_slow",
         "oracle_truncate", "kill9", "chmod", "net_block", "config_corrupt")
PROFILE_DIR = Path(__file__).with_name("profiles")
VOYAGER_ALIASES = {
    "VOYAGER_CHAOS_EXEC_TIMEOUT_RATE": "exec_timeout",
    "VOYAGER_CHAOS_WRITE_DENY_RATE": "write_deny",
    "VOYAGER_CHAOS_LOG_FLOOD_RATE": "log_flood",
}


class ChaosConfigError(BloodworkError, ValueError):
    """A chaos profile, flag or variable is not valid."""


class ChaosProfile(BaseModel):
    """Rates per fault kind, plus the parameters of the faults' real effects."""

    model_config = ConfigDict(extra="forbid")

    name: str = "off"
    rates: dict[str, float] = Field(default_factory=dict)
    log_flood_chars: int = Field(default=50_000, ge=1)
    exec_timeout_s: float = Field(default=2.0, gt=0)
    oracle_slow_s: float = Field(default=2.0, ge=0)

    def model_post_init(self, _context: Any) -> None:
        for kind, rate in self.rates.items():
            if kind not in KINDS:
                raise ChaosConfigError(f"unknown chaos kind {kind!r} (known: {', '.join(KINDS)})")
            if not 0.0 <= rate <= 1.0:
                raise ChaosConfigError(f"chaos rate for {kind} must be within 0..1, got {rate}")

    def rate(self, kind: str) -> float:
        return self.rates.get(kind, 0.0)


def builtin_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def load_profile(name_or_path: str) -> ChaosProfile:
    """A built-in profile by name, or a YAML file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILE_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            known = ", ".join(builtin_profiles())
            raise ChaosConfigError(f"unknown chaos profile {name_or_path!r} (built-in: {known})")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        return ChaosProfile.model_validate({"name": path.stem, **raw})
    except FileNotFoundError as err:
        raise ChaosConfigError(f"chaos profile file not found: {path}") from err
    except yaml.YAMLError as err:
        raise ChaosConfigError(f"invalid chaos profile {path}: {str(err).splitlines()[0]}") from err
    except ValidationError as err:
        raise ChaosConfigError(f"invalid chaos profile {path}: {describe(err)}") from err


def parse_rates(items: Iterable[str], where: str) -> dict[str, float]:
    """`KIND=RATE` items (a `--rate` flag's, a sweep's chaos entry's) as rates; `where` names them in errors.
    The kinds and ranges are checked where the rates are applied."""
    rates: dict[str, float] = {}
    for item in items:
        kind, sep, value = item.partition("=")
        if not sep:
            raise ChaosConfigError(f"{where}: expected KIND=RATE, got {item!r}")
        try:
            rates[kind.strip()] = float(value)
        except ValueError as err:
            raise ChaosConfigError(f"{where}: {item!r}: {value!r} is not a number") from err
    return rates


def apply_overrides(profile: ChaosProfile, rates: dict[str, float], env: dict[str, str] | None = None) -> ChaosProfile:
    """Environment variables first (`BLOODWORK_CHAOS_<KIND>_RATE`, VOYAGER aliases), then explicit flags."""
    env = dict(os.environ) if env is None else env
    merged = dict(profile.rates)
    extra: dict[str, Any] = {}
    for var, kind in VOYAGER_ALIASES.items():
        if var in env:
            merged[kind] = _float(var, env[var])
    for kind in KINDS:
        var = f"BLOODWORK_CHAOS_{kind.upper()}_RATE"
        if var in env:
            merged[kind] = _float(var, env[var])
    for var in ("VOYAGER_CHAOS_LOG_FLOOD_CHARS", "BLOODWORK_CHAOS_LOG_FLOOD_CHARS"):
        if var in env:
            extra["log_flood_chars"] = int(_float(var, env[var]))
    merged.update(rates)
    changed = merged != profile.rates or extra
    data = profile.model_dump() | extra | {"rates": merged}
    if changed and not data["name"].endswith("+overrides"):
        data["name"] += "+overrides"
    try:
        return ChaosProfile.model_validate(data)
    except ValidationError as err:
        raise ChaosConfigError(describe(err)) from err



def _float(name: str, value: str) -> float:
    try:
        return float(value)
    except ValueError as err:
        raise ChaosConfigError(f"{name}={value!r} is not a number") from err


class FaultPlan:
    def __init__(self, profile: ChaosProfile, seed: int, run_id: str) -> None:
        self.profile = profile
        self.seed = seed
        self.run_id = run_id

    def draw(self, tick: int, call_index: int, kind: str) -> float:
        key = f"{self.seed}|{self.run_id}|{tick}|{call_index}|{kind}".encode()
        return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64

    def decide(self, tick: int, call_index: int, kind: str) -> bool:
        rate = self.profile.rate(kind)
        return rate > 0 and self.draw(tick, call_index, kind) < rate
