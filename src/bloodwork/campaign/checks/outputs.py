"""Checks over what commands wrote: profiles, dataset mixes, the model matrix, JSON values, the baseline,
secrets, finished runs."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import Field

from bloodwork.campaign.checks.base import CheckArgs, CheckContext, check, select_runs
from bloodwork.chronos.files import read_jsonl
from bloodwork.chronos.run import RunManifest, RunPaths

API_SCHEMES = ("openai", "gemini", "kimi")
SECRET_NAME = re.compile(r"(_API_KEY|_TOKEN|_SECRET|SECRET_KEY|_PASSWORD)$")
MIN_SECRET_LEN = 8


# -- dataset and matrix --------------------------------------------------------------------------------

class MixArgs(CheckArgs):
    dir: str
    split: str = "train"
    min_rows: int = Field(default=1, ge=0)
    mix: str = "40/40/20"
    tolerance: float = Field(default=0.05, ge=0, le=1)


POOLS = ("golden", "recovery", "rejected")


@check("dataset_mix", MixArgs)
def dataset_mix(a: MixArgs, ctx: CheckContext) -> tuple[bool, Any, str, str, list[str]]:
    """Rows of a dataset split counted from its row file (`kto.jsonl` holds every selected row with its pool
    and provenance), against a minimum and the target mix within a tolerance."""
    file = Path(a.dir) / a.split / "kto.jsonl"
    rows = read_jsonl(file) if file.is_file() else []
    pools = Counter(r["meta"]["pool"] for r in rows)
    target = dict(zip(POOLS, (float(x) / 100 for x in a.mix.split("/")), strict=True))
    achieved = {p: round(pools[p] / len(rows), 4) if rows else None for p in POOLS}
    off = {p: v for p, v in achieved.items() if v is None or abs(v - target[p]) > a.tolerance}
    ok = len(rows) >= a.min_rows and not off
    value = {"rows": len(rows), "by_pool": {p: pools[p] for p in POOLS}, "achieved": achieved,
             "by_provenance": dict(Counter(r["meta"]["provenance"] for r in rows))}
    return (ok, value, f">= {a.min_rows} rows, mix {a.mix} within {a.tolerance:.0%}",
            f"{len(rows)} rows; off target: {off or 'none'}", [ctx.rel(file)])


class MatrixArgs(CheckArgs):
    dir: str
    base: str = "local:smollm2"
    finetuned: bool = True
    api: bool = True


def _row_figures(row: dict[str, Any]) -> dict[str, Any]:
    scores = row.get("scores") or {}
    strict = scores.get("strict_valid") or {}
    latency = scores.get("latency_ms") or {}
    violation = None if strict.get("rate") is None else round(1 - strict["rate"], 6)
    return {"spec": row["spec"], "status": row["status"], "reason": row.get("reason"),
            "strict_violation": violation, "n": strict.get("n"), "latency_p50_ms": latency.get("p50")}


@check("matrix_rows", MatrixArgs)
def matrix_rows(a: MatrixArgs, ctx: CheckContext) -> tuple[bool, Any, str, str, list[str]]:
    """The matrix holds a base row, a fine-tuned row (+lora=) and an API row, each with latency and
    schema-violation figures from answered calls; an API row that could not run is present with its reason."""
    file = Path(a.dir) / "model_matrix.json"
    rows = json.loads(file.read_text())["rows"]
    roles: dict[str, list[dict[str, Any]]] = {"base": [r for r in rows if r["spec"] == a.base]}
    if a.finetuned:
        roles["finetuned"] = [r for r in rows if "+lora=" in r["spec"]]
    if a.api:
        roles["api"] = [r for r in rows if r["spec"].partition(":")[0] in API_SCHEMES]
    found: dict[str, Any] = {}
    missing: list[str] = []
    for role, candidates in roles.items():
        scored = [r for r in candidates if r["status"] == "ok" and _row_figures(r)["latency_p50_ms"] is not None
                  and _row_figures(r)["strict_violation"] is not None]
        explained = [r for r in candidates if role == "api" and r["status"] == "unavailable" and r.get("reason")]
        pick = next(iter(scored or explained), None)
        if pick is None:
            missing.append(role)
        else:
            found[role] = _row_figures(pick)
    return (not missing, {"rows": found, "missing": missing},
            f"rows with figures: {', '.join(roles)} (API: or unavailable with its reason)",
            f"missing: {', '.join(missing)}" if missing else "every role present", [ctx.rel(file)])


# -- files ---------------------------------------------------------------------------------------------

class JsonArgs(CheckArgs):
    file: str
    pointer: str
    min: float | None = None
    max: float | None = None


def json_pointer(data: Any, pointer: str) -> Any:
    """RFC 6901, enough of it: `/rows/0/median_ms`. A missing key is a KeyError naming the pointer."""
    node = data
    for part in [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]:
        if isinstance(node, list):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise KeyError(f"{pointer} (no {part!r})")
    return node


@check("json_value", JsonArgs)
def json_value(a: JsonArgs, ctx: CheckContext) -> tuple[bool, Any, str, str, list[str]]:
    """A value in a JSON file exists (and lies within min..max when given)."""
    value = json_pointer(json.loads(Path(a.file).read_text()), a.pointer)
    ok = value is not None and (a.min is None or value >= a.min) and (a.max is None or value <= a.max)
    bounds = " ".join(x for x in (f">= {a.min}" if a.min is not None else "",
                                  f"<= {a.max}" if a.max is not None else "") if x)
    return ok, value, f"{a.pointer} present {bounds}".strip(), f"{a.pointer} = {value}", [ctx.rel(a.file)]


class BaselineArgs(CheckArgs):
    file: str


@check("baseline_complete", BaselineArgs)
def baseline_complete(a: BaselineArgs, ctx: CheckContext) -> tuple[bool, Any, str, str, list[str]]:
    """The baseline freeze names the code (git sha and dirty state), the packages, the machine (cores,
    memory), the sandbox and the API keys present (names only)."""
    data = json.loads(Path(a.file).read_text())
    git = data.get("git", {})
    missing = [name for name, ok in (
        ("git sha", bool(re.fullmatch(r"[0-9a-f]{40}", str(git.get("sha", ""))))),
        ("git dirty state", isinstance(git.get("dirty"), bool)),
        ("bloodwork version", bool(data.get("packages", {}).get("bloodwork"))),
        ("cores", bool(data.get("machine", {}).get("cores"))),
        ("memory", bool(data.get("machine", {}).get("memory_total_gb"))),
        ("sandbox", "kind" in data.get("sandbox", {})),
        ("api key names", isinstance(data.get("api_keys", {}).get("present"), list))) if not ok]
    return (not missing, {"missing": missing, "git_sha": git.get("sha"), "dirty": git.get("dirty")},
            "git sha + dirty state, packages, cores, memory, sandbox, API key names",
            f"missing: {', '.join(missing)}" if missing else "complete", [ctx.rel(a.file)])


class SecretArgs(CheckArgs):
    paths: list[str] = Field(min_length=1)


def secret_values() -> dict[str, str]:
    """Environment variables that hold secrets by their name's convention, long enough to search for."""
    return {k: v for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= MIN_SECRET_LEN}


def find_secrets(paths: list[Path]) -> tuple[int, list[str]]:
    """(files scanned, 'file: NAME' for each secret value found); values themselves are never returned."""
    secrets = {name: value.encode() for name, value in secret_values().items()}
    files = [p for path in paths for p in ([path] if path.is_file() else sorted(path.rglob("*"))) if p.is_file()]
    leaks = []
    for f in files:
        data = f.read_bytes()
        leaks += [f"{f}: {name}" for name, value in secrets.items() if value in data]
    return len(files), leaks


@check("no_secret_values", SecretArgs)
def no_secret_values(a: SecretArgs, ctx: CheckContext) -> tuple[bool, Any, str, str, list[str]]:
    """No file under the paths holds the value of a secret environment variable (*_API_KEY, *_TOKEN, ...)."""
    scanned, leaks = find_secrets([Path(p) for p in a.paths])
    return (not leaks, {"files": scanned, "secrets_checked": len(secret_values()), "leaks": leaks},
            "no secret value in any file", f"{scanned} files scanned, {len(leaks)} leaks",
            [ctx.rel(p) for p in a.paths])


class RunsExistArgs(CheckArgs):
    runs: str
    min: int = Field(default=1, ge=1)
    task: str | None = None


@check("runs_finished", RunsExistArgs)
def runs_finished(a: RunsExistArgs, ctx: CheckContext) -> tuple[bool, Any, str, str, list[str]]:
    """At least `min` runs (of the task, when given) reached an end: completed, died or max_ticks."""
    runs = select_runs(a.runs, task=a.task)
    statuses = Counter(RunManifest.load(RunPaths(r)).status.value for r in runs)
    done = sum(statuses[s] for s in ("completed", "died", "max_ticks"))
    return (done >= a.min, {"finished": done, "statuses": dict(statuses)}, f">= {a.min} finished runs",
            f"{done} finished of {len(runs)}", [ctx.rel(r / "run.json") for r in runs] or [ctx.rel(a.runs)])
