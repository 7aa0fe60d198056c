"""Every threshold of the kernel in one validated model; the manifest records it whole."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from bloodwork.context.builder import ContextConfig
from bloodwork.manifold.runner import Limits


class TrapConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    watchdog_repeats: int = Field(default=5, ge=2, description="same action fingerprint this many times ...")
    watchdog_window: int = Field(default=20, ge=2, description="... within this many ticks")
    thrash_idle_ticks: int = Field(default=6, ge=2, description="ticks in a row without world progress")
    thrash_oscillation: bool = Field(default=True, description="A-B-A-B action oscillation is thrashing")
    panic_streak: int = Field(default=3, ge=1, description="same trap kind this many times ...")
    panic_window: int = Field(default=10, ge=1, description="... within this many ticks is a panic")
    seen_window: int = Field(default=256, ge=8, description="slices remembered to tell new information")


class KernelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_ticks: int = Field(default=200, ge=1)
    panic_budget: int = Field(default=3, ge=1)
    parse_mode: Literal["strict", "lenient"] = "strict"
    output_cap_chars: int = Field(default=2000, ge=200)
    exec_timeout_s: float = Field(default=30.0, gt=0)
    exec_timeout_max_s: float = Field(default=120.0, gt=0)
    sandbox: Literal["auto", "bwrap", "none"] = "auto"
    limits: Limits = Field(default_factory=Limits)
    traps: TrapConfig = Field(default_factory=TrapConfig)
    context: ContextConfig = Field(default_factory=ContextConfig)
    probe_every: int = Field(default=0, ge=0, description="goal probe every K ticks (0 = off)")
