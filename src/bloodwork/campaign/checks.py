"""Acceptance checks: deterministic predicates over raw files, in a registry the plans name.

A check reads run directories (manifests, hash-chained journals, dirty traces), dataset row files, matrix
and profile files, or the baseline; it never reads a report. Its result carries the value it measured,
what was expected, and the paths of the evidence it read, so every claim in a report points at files.
The audit evaluates every check a second time and compares (the same files must give the same value).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from bloodwork.chronos.files import read_jsonl
from bloodwork.chronos.journal import read_events, verify
from bloodwork.chronos.run import RunManifest, RunPaths
from bloodwork.evidence.extract import answered_tick_calls, find_runs, run_events

# Faults the chaos layer injects into one call (their traps are counted as traps); anything else in a
# `chaos` event is a task-level fault that struck the task's world (a killed service, a chmod, ...).
CALL_FAULTS = {"exec_timeout", "exec_fail", "write_deny", "disk_full", "log_flood", "oracle_error", "oracle_slow",
               "oracle_truncate"}
API_SCHEMES = ("openai", "gemini", "kimi")
SECRET_NAME = re.compile(r"(_API_KEY|_TOKEN|_SECRET|SECRET_KEY|_PASSWORD)$")
MIN_SECRET_LEN = 8


class CheckError(ValueError):
    """A check's arguments are not valid."""


class CheckResult(BaseModel):
    name: str
    check: str
    passed: bool
    value: Any = None
    expected: str = ""
    detail: str = ""
    evidence: list[str] = Field(default_factory=list, description="paths relative to the campaign directory")


@dataclass
class CheckContext:
    """What a check may use besides its arguments: the campaign directory (paths in results are relative
    to it), a scratch folder of its own, and a way to run a product command (recorded like a step)."""

    root: Path
    scratch: Path
    run_command: Callable[[list[str], str], int]

    def rel(self, path: Path | str) -> str:
        p = Path(path)
        try:
            return str(p.resolve().relative_to(self.root.resolve()))
        except ValueError:
            return str(p)


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class Check:
    name: str
    doc: str
    args: type[_Args]
    fn: Callable[[Any, CheckContext], tuple[bool, Any, str, str, list[str]]]

    def validate_args(self, args: dict[str, Any], *, partial: bool = False) -> _Args | None:
        fields = self.args.model_fields
        unknown = sorted(set(args) - set(fields))
        if unknown:
            raise CheckError(f"unknown argument {unknown[0]!r} (arguments: {', '.join(fields)})")
        if partial:
            for key, value in args.items():
                annotation = fields[key].annotation
                assert annotation is not None  # every argument model's field is annotated
                try:
                    TypeAdapter(annotation).validate_python(value)
                except ValidationError as err:
                    raise CheckError(f"{key}: {err.errors()[0]['msg']}") from err
            return None
        try:
            return self.args.model_validate(args)
        except ValidationError as err:
            first = err.errors()[0]
            raise CheckError(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from err

    def evaluate(self, name: str, args: dict[str, Any], ctx: CheckContext) -> CheckResult:
        """Never raises: a check that cannot be evaluated has failed, and says why."""
        try:
            parsed = self.validate_args(args)
            passed, value, expected, detail, evidence = self.fn(parsed, ctx)
        except (CheckError, OSError, ValueError, KeyError, IndexError, TypeError) as err:
            return CheckResult(name=name, check=self.name, passed=False, detail=f"could not be evaluated: {err}")
        return CheckResult(name=name, check=self.name, passed=passed, value=value, expected=expected, detail=detail,
                           evidence=sorted(dict.fromkeys(evidence)))


CHECKS: dict[str, Check] = {}


def check(name: str, args: type[_Args]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        CHECKS[name] = Check(name=name, doc=(fn.__doc__ or "").strip(), args=args, fn=fn)
        return fn
    return register


def _runs(path: str, provenance: str = "any", task: str | None = None) -> list[Path]:
    if not Path(path).exists():
        raise CheckError(f"{path} does not exist")
    runs = find_runs([Path(path)])
    keep = []
    for run in runs:
        m = RunManifest.load(RunPaths(run))
        if provenance != "any" and m.provenance.value != provenance:
            continue
        if task is not None and not m.task.startswith(task):
            continue
        keep.append(run)
    return keep


# -- runs and journals ---------------------------------------------------------------------------------

class RunsArgs(_Args):
    runs: str
    provenance: str = "any"


@check("journals_verify", RunsArgs)
def journals_verify(a: RunsArgs, ctx: CheckContext) -> tuple[bool, Any, str, str, list[str]]:
    """Every run's hash-chained journal verifies (a torn last line is allowed, as `bloodwork verify` does)."""
    runs = _runs(a.runs, a.provenance)
    bad = [ctx.rel(r) for r in runs if not verify(RunPaths(r).journal).ok]
    return (bool(runs) and not bad, {"runs": len(runs), "failing": bad}, "every journal verifies (and >= 1 run)",
            f"{len(runs) - len(bad)}/{len(runs)} journals verify", [ctx.rel(r / ".journal.log") for r in runs])


class EventsArgs(_Args):
    runs: str
    min: int = Field(ge=0)
    provenance: str = "real"
    events: list[str] = Field(default_factory=lambda: ["trap", "panic", "recovery", "death"])


@check("natural_events", EventsArgs)
def natural_events(a: EventsArgs, ctx: CheckContext) -> tuple[bool, Any, str, str, list[str]]:
    """Thrashing events (traps, panics, recoveries, deaths) whose streak holds no injected fault, counted from
    the journals with the same origin rule as `bloodwork extract`."""
    runs = _runs(a.runs, a.provenance)
    by_kind: Counter[str] = Counter()
    for run in runs:
        _, thrash, _ = run_events(run)
        by_kind.update(f"{e.event}:{e.kind}" for e in thrash if e.origin == "natural" and e.event in a.events)
    total = sum(by_kind.values())
    return (total >= a.min, {"natural": total, "runs": len(runs), "by_kind": dict(by_kind.most_common())},
            f">= {a.min} natural events in {a.provenance} runs", f"{total} natural events in {len(runs)} runs",
            [ctx.rel(r / ".journal.log") for r in runs])


class DeathsArgs(_Args):
    runs: str
    min: int = Field(default=1, ge=0)
    provenance: str = "any"


def _deaths(runs: list[Path]) -> list[tuple[Path, RunManifest, int, int, int]]:
    """(run, manifest, death tick, first trap tick, traps) of every run that died by spending its panic budget."""
    out = []
    for run in runs:
        m = RunManifest.load(RunPaths(run))
        if m.status.value != "died":
            continue
        events = read_events(RunPaths(run).journal)
        death = next((e for e in events if e.kind == "death"), None)
        if death is None or int(death.data.get("panics", 0)) < int(m.config.get("panic_budget", 0)):
            continue
        traps = [e.tick for e in events if e.kind == "trap"]
        out.append((run, m, death.tick, min(traps, default=death.tick), len(traps)))
    return out


@check("deaths", DeathsArgs)
def deaths(a: DeathsArgs, ctx: CheckContext) -> tuple[bool, Any, str, str, list[str]]:
    """Runs that died because their panic budget was spent (the death event's panics reach the budget)."""
    runs = _runs(a.runs, a.provenance)
    found = _deaths(runs)
    causes = Counter(m.cause_of_death for _, m, *_ in found)
    return (len(found) >= a.min, {"deaths": len(found), "runs": len(runs), "causes": dict(causes.most_common())},
            f">= {a.min} deaths by an exhausted panic budget", ", ".join(f"{k} {v}" for k, v in causes.items()) or
            "no deaths", [ctx.rel(r / ".journal.log") for r, *_ in found] or [ctx.rel(a.runs)])


class ChainArgs(_Args):
    runs: str
    min_ticks: int = Field(ge=1)
    bundles: str | None = Field(default=None, description="death bundles of `extract` (replayed instead of runs)")
    replay: bool = True
    provenance: str = "any"


@check("struggle_chain", ChainArgs)
def struggle_chain(a: ChainArgs, ctx: CheckContext) -> tuple[bool, Any, str, str, list[str]]:
    """A death after a long struggle: from the run's first trap to its death >= min_ticks ticks, and
    `bloodwork replay` of its bundle reproduces the same ticks, traps and death (exit 0)."""
    found = sorted(_deaths(_runs(a.runs, a.provenance)), key=lambda d: d[3] - d[2])
    chains = [d for d in found if d[2] - d[3] >= a.min_ticks]
    longest = {"run": found[0][1].run_id, "chain_ticks": found[0][2] - found[0][3]} if found else None
    if not chains:
        return (False, {"longest": longest, "deaths": len(found)}, f"a death >= {a.min_ticks} ticks after its first "
                "trap that replays identically", "no death after a long enough struggle",
                [ctx.rel(r / ".journal.log") for r, *_ in found] or [ctx.rel(a.runs)])
    tried = []
    for run, m, died, first, traps in chains[:3]:
        value = {"run": m.run_id, "chain_ticks": died - first, "first_trap_tick": first, "death_tick": died,
                 "traps": traps, "cause": m.cause_of_death, "replay": "not asked"}
        source = Path(a.bundles) / m.run_id if a.bundles else run
        evidence = [ctx.rel(run / ".journal.log"), ctx.rel(source)]
        if not a.replay:
            return True, value, f">= {a.min_ticks} ticks of struggle before a death", "replay not asked", evidence
        if not (source / "run.json").is_file():
            tried.append(f"{m.run_id}: no bundle at {ctx.rel(source)}")
            continue
        log = f"replay-{m.run_id}"
        code = ctx.run_command(["replay", str(source), "--out", str(ctx.scratch / "replays")], log)
        value["replay"] = "identical" if code == 0 else f"diverged (exit {code})"
        evidence.append(ctx.rel(ctx.scratch / f"{log}.log"))
        if code == 0:
            return True, value, f">= {a.min_ticks} ticks of struggle, replayed identically", \
                f"{m.run_id}: {died - first} ticks from first trap to death, replay identical", evidence
        tried.append(f"{m.run_id}: replay exit {code}")
    return (False, {"tried": tried, "longest": longest}, f"a death >= {a.min_ticks} ticks after its first trap that "
            "replays identically", "; ".join(tried), [ctx.rel(r / ".journal.log") for r, *_ in chains[:3]])


class TaskArgs(_Args):
    runs: str
    task: str = Field(description="task id or prefix, e.g. repo-fix/ or ops-blindbox/kill9")
    min_failures: int = Field(default=1, ge=0)
    min_recoveries: int = Field(default=1, ge=0)


@check("task_failure_recovery", TaskArgs)
def task_failure_recovery(a: TaskArgs, ctx: CheckContext) -> tuple[bool, Any, str, str, list[str]]:
    """A task's runs hold failures (traps, and task-level faults that struck) and recoveries (`recovery`
    events, and verifier verdicts of a world recovered after a fault), counted from journals and manifests."""
    runs = _runs(a.runs, task=a.task)
    traps = faults = events = verified = 0
    stages: Counter[str] = Counter()
    for run in runs:
        paths = RunPaths(run)
        m = RunManifest.load(paths)
        for e in read_events(paths.journal):
            traps += e.kind == "trap"
            faults += e.kind == "chaos" and e.data.get("kind") not in CALL_FAULTS
            events += e.kind == "recovery"
        verdict = m.verifier or {}
        stages[str(verdict.get("stage") or m.status.value)] += 1
        verified += verdict.get("stage") == "recovered"
    failures, recoveries = traps + faults, events + verified
    value = {"runs": len(runs), "failures": {"traps": traps, "task_faults": faults},
             "recoveries": {"recovery_events": events, "verified_recovered": verified}, "stages": dict(stages)}
    ok = bool(runs) and failures >= a.min_failures and recoveries >= a.min_recoveries
    return (ok, value, f">= {a.min_failures} failure and >= {a.min_recoveries} recovery in {a.task} runs",
            f"{len(runs)} runs: {failures} failures, {recoveries} recoveries; stages {dict(stages)}",
            [ctx.rel(r / f) for r in runs for f in (".journal.log", "run.json")] or [ctx.rel(a.runs)])


class ValidArgs(_Args):
    runs: str
    policies: int = Field(default=4, ge=1)
    seeds: int = Field(default=2, ge=1)
    min_ticks: int = Field(default=128, ge=1)
    min_valid: float = Field(default=0.8, ge=0, le=1)


@check("profile_informative", ValidArgs)
def profile_informative(a: ValidArgs, ctx: CheckContext) -> tuple[bool, Any, str, str, list[str]]:
    """Enough profiling runs for the context policies to differ: per policy, runs of distinct seeds that
    lasted >= min_ticks and whose model answered a strictly valid frame on >= min_valid of its tick calls."""
    qualified: dict[str, set[int]] = defaultdict(set)
    per_run = {}
    runs = _runs(a.runs)
    for run in runs:
        paths = RunPaths(run)
        m = RunManifest.load(paths)
        calls = answered_tick_calls(read_jsonl(paths.dirty))
        valid = sum(1 for c in calls if c.get("strict_ok")) / len(calls) if calls else 0.0
        policy = str(m.config.get("context", {}).get("policy"))
        ok = m.ticks >= a.min_ticks and valid >= a.min_valid
        per_run[m.run_id] = {"policy": policy, "seed": m.seed, "ticks": m.ticks, "valid": round(valid, 4), "ok": ok}
        if ok:
            qualified[policy].add(m.seed)
    good = {p: len(s) for p, s in qualified.items() if len(s) >= a.seeds}
    return (len(good) >= a.policies, {"policies_ok": dict(sorted(good.items())), "runs": per_run},
            f">= {a.policies} policies x >= {a.seeds} seeds x >= {a.min_ticks} ticks, valid frames >= "
            f"{a.min_valid:.0%}", f"{len(good)} policies qualify of {len({r['policy'] for r in per_run.values()})}",
            [ctx.rel(r / f) for r in runs for f in ("run.json", "dirty_trace.jsonl")] or [ctx.rel(a.runs)])


class VerdictArgs(_Args):
    profile: str = Field(description="a folder holding context_decay_profile.json")
    min_ticks: int = Field(default=120, ge=1)


@check("profile_verdicts", VerdictArgs)
def profile_verdicts(a: VerdictArgs, ctx: CheckContext) -> tuple[bool, Any, str, str, list[str]]:
    """The profile states, for every run of >= min_ticks ticks, whether late forgetting occurred (a verdict,
    not 'no verdict') and whether eviction held the budget."""
    file = Path(a.profile) / "context_decay_profile.json"
    data = json.loads(file.read_text())
    long_runs = [r for r in data["runs"] if r["ticks"] >= a.min_ticks]
    verdicts = {r["run_id"]: {"ticks": r["ticks"], "policy": r["eviction"]["policy"],
                              "late_forgetting": r["forgetting"]["flagged"],
                              "within_budget": r["eviction"]["within_budget"]} for r in long_runs}
    stated = [v for v in verdicts.values() if v["late_forgetting"] is not None]
    ok = bool(long_runs) and len(stated) == len(long_runs)
    return (ok, {"runs": verdicts, "forgetting": sum(bool(v["late_forgetting"]) for v in stated),
                 "over_budget": sum(not v["within_budget"] for v in verdicts.values())},
            f"every run of >= {a.min_ticks} ticks has a forgetting verdict and an eviction verdict (>= 1 such run)",
            f"{len(stated)}/{len(long_runs)} long runs with a verdict", [ctx.rel(file)])


# -- dataset and matrix --------------------------------------------------------------------------------

class MixArgs(_Args):
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


class MatrixArgs(_Args):
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

class JsonArgs(_Args):
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


class BaselineArgs(_Args):
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


class SecretArgs(_Args):
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


class RunsExistArgs(_Args):
    runs: str
    min: int = Field(default=1, ge=1)
    task: str | None = None


@check("runs_finished", RunsExistArgs)
def runs_finished(a: RunsExistArgs, ctx: CheckContext) -> tuple[bool, Any, str, str, list[str]]:
    """At least `min` runs (of the task, when given) reached an end: completed, died or max_ticks."""
    runs = _runs(a.runs, task=a.task)
    statuses = Counter(RunManifest.load(RunPaths(r)).status.value for r in runs)
    done = sum(statuses[s] for s in ("completed", "died", "max_ticks"))
    return (done >= a.min, {"finished": done, "statuses": dict(statuses)}, f">= {a.min} finished runs",
            f"{done} finished of {len(runs)}", [ctx.rel(r / "run.json") for r in runs] or [ctx.rel(a.runs)])
