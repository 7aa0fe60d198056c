"""Every threshold of the kernel in one validated model; the manifest records it whole."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bloodwork.context.builder import ContextConfig
from bloodwork.errors import BloodworkError, read_yaml
from bloodwork.manifold.runner import Limits


class TrapConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    watchdog_repeats: int = Field(default=5, ge=2, description="the same op on the same world state with the same "
                                  "observation this many times ...")
    watchdog_window: int = Field(default=20, ge=2, description="... within this many ticks")
    thrash_idle_ticks: int = Field(default=6, ge=2, description="ticks in a row without a workspace change or a new "
                                   "observation")
    thrash_oscillation: bool = Field(default=True, description="A-B-A-B between two unchanged world states is "
                                     "thrashing")
    panic_streak: int = Field(default=3, ge=1, description="same trap kind this many times ...")
    panic_window: int = Field(default=10, ge=1, description="... within this many ticks is a panic")
    seen_window: int = Field(default=256, ge=8, description="slices remembered to tell new information")


class KernelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_ticks: int = Field(default=200, ge=1)
    panic_budget: int = Field(default=3, ge=1)
    parse_mode: Literal["strict", "lenient"] = "strict"
    output_cap_chars: int = Field(default=2000, ge=200, description="the page cap: longer command output is "
                                  "spilled and shown as head + tail + size + sha256 + the op that reads the rest")
    # Why 1 MiB: ordinary output measured here (bench/output_sizes.py) tops out far below it: inflection's
    # 455-test suite with a core function broken (188 failures) printed 160 KB with `pytest -vv -l --tb=long`,
    # the ledger task's failing hidden tests 35-48 KB, sqlparse's and inflection's passing suites 38-39 KB
    # with `-vv`, `pip install` 3.9-10 KB, a verbose C-extension build 14 KB. 6.6 times the largest is still
    # ordinary work; a runaway loop (`yes`, a print in `while True`) passes 1 MiB within a second. The
    # more-itertools expert's own test run prints 153 KB: bench/detectors.py shows a 64 KiB ceiling trapping it.
    output_ceiling_bytes: int = Field(default=1_048_576, ge=1000, description="output over this many bytes is a "
                                      "LOG_FLOOD trap (runaway output), not a page")
    exec_timeout_s: float = Field(default=30.0, gt=0)
    exec_timeout_max_s: float = Field(default=120.0, gt=0)
    sandbox: Literal["auto", "bwrap", "none"] = "auto"
    limits: Limits = Field(default_factory=Limits)
    traps: TrapConfig = Field(default_factory=TrapConfig)
    context: ContextConfig = Field(default_factory=ContextConfig)
    probe_every: int = Field(default=0, ge=0, description="goal probe every K ticks (0 = off)")


# Settings a variable can give: file < environment < explicit flag.
ENV_SETTINGS = {"max_ticks": "BLOODWORK_TICKS", "panic_budget": "BLOODWORK_PANIC_BUDGET"}


class ConfigError(BloodworkError, ValueError):
    """A kernel config file, variable or flag is not valid (the message names which one set what)."""


def load_config(file: Path | None = None, *, flags: Mapping[str, Any] | None = None,
                defaults: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> KernelConfig:
    """One kernel config from its layers, each overriding the one before: `defaults` (a command's own, e.g.
    a sweep's 60 ticks) < the YAML `file` < environment variables (`ENV_SETTINGS`) < explicit `flags`.

    `flags` and `defaults` are keyed by dotted paths (`context.policy`); a flag whose value is None was not
    given and changes nothing. Nothing is checked before the layers are merged; then everything is checked
    once, so a constraint holds whichever layer set the value.
    """
    env = os.environ if env is None else env
    merged: dict[str, Any] = {}
    source: dict[str, str] = {}

    def put(dotted: str, value: Any, origin: str) -> None:
        *parents, leaf = dotted.split(".")
        node = merged
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"kernel config: {key} must be a mapping ({source.get(key, origin)})")
        node[leaf] = value
        source[dotted] = origin

    for dotted, value in (defaults or {}).items():
        put(dotted, value, "the command's default")
    if file is not None:
        for dotted, value in _flatten(_read_yaml(file)):
            put(dotted, value, f"--config {file}")
    for key, var in ENV_SETTINGS.items():
        if env.get(var):
            put(key, env[var], f"${var}")
    for dotted, value in (flags or {}).items():
        if value is not None:
            put(dotted, value, "the command line")
    try:
        return KernelConfig.model_validate(merged)
    except ValidationError as err:
        first = err.errors()[0]
        dotted = ".".join(str(p) for p in first["loc"])
        origin = next((source[k] for k in (dotted, *_prefixes(dotted)) if k in source), "the defaults")
        raise ConfigError(f"kernel config {dotted}: {first['msg']} (set by {origin})") from err


def _read_yaml(file: Path) -> dict[str, Any]:
    data = read_yaml(file, ConfigError)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: a kernel config must be a mapping")
    return data


def _flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested mappings as dotted keys, so a file's `context: {policy: x}` keeps the rest of `context`."""
    out: list[tuple[str, Any]] = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        out += _flatten(value, dotted + ".") if isinstance(value, dict) and value else [(dotted, value)]
    return out


def _prefixes(dotted: str) -> list[str]:
    parts = dotted.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]
