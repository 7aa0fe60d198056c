"""Acceptance checks: deterministic predicates over raw files, in a registry the plans name.

A check reads run directories (manifests, hash-chained journals, dirty traces), dataset row files, matrix
and profile files, or the baseline; it never reads a report. Its result carries the value it measured,
what was expected, and the paths of the evidence it read, so every claim in a report points at files.
The audit evaluates every check a second time and compares (the same files must give the same value).
"""

from __future__ import annotations

# Importing the modules of checks registers them in CHECKS.
from bloodwork.campaign.checks import outputs, runs
from bloodwork.campaign.checks.base import CHECKS, Check, CheckContext, CheckError, CheckResult, check
from bloodwork.campaign.checks.outputs import POOLS, SECRET_NAME, find_secrets, json_pointer

__all__ = ["CHECKS", "POOLS", "SECRET_NAME", "Check", "CheckContext", "CheckError", "CheckResult", "check",
           "find_secrets", "json_pointer", "outputs", "runs"]
