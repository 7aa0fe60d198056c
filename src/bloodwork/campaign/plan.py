"""A campaign plan: YAML, validated before anything runs.

```yaml
name: smoke
description: what the plan is for
time_budget_min: 3            # no remedy attempt starts once the campaign has used this much time
vars: {seeds: "0", ticks: 40} # substituted as {seeds} into commands, checks and evidence
phases:
  - id: 1
    name: chaos sweep and raw death traces
    steps:                    # Implement: product commands, in order
      - {name: sweep, bloodwork: [sweep, --tasks, long-haul/ledger, --seeds, "{seeds}", --out, "{phase_dir}/sweep"]}
      - {name: extract, bloodwork: [extract, "{phase_dir}/sweep", --out, "{phase_dir}/evidence"]}
    evidence:                 # Evidence: what the report quotes, and how the audit recomputes it
      - {name: sweep, kind: extract, inputs: ["{phase_dir}/sweep"], out: "{phase_dir}/evidence"}
    checks:                   # acceptance: deterministic predicates over the raw files
      - {check: deaths, runs: "{phase_dir}/sweep", min: 1}
    max_attempts: 3           # Fix: on NO-GO, apply the next remedy and run the phase again
    remedies:
      - {why: more seeds, set: {seeds: "0-3"}}
```

Besides the plan's own vars, every string may use `{out}` (the campaign directory), `{phase_dir}` (this
attempt's directory), `{phase_root}` (the phase's directory, shared by its attempts), `{phase<N>}` (the
directory of phase N's last attempt), `{plan_dir}` (where the plan file lives, for the scripted policies
shipped with it), `{package}` (the bloodwork package, for its tasks' scripted experts), `{source}` (the
source checkout, for `bench/` scripts), `{python}` and `{attempt}`.
"""

from __future__ import annotations

import hashlib
import re
import string
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bloodwork.campaign.checks import CHECKS, CheckError
from bloodwork.errors import BloodworkError, describe, read_yaml

PLANS_PACKAGE = "bloodwork.campaign"
PLANS_DIR = "plans"
BUILTIN_VARS = ("out", "phase_dir", "phase_root", "plan_dir", "package", "source", "python", "attempt")
_PHASE_VAR = re.compile(r"phase(\d+)$")


class PlanError(BloodworkError, ValueError):
    """A plan that cannot run: unreadable, invalid, or naming something unknown."""


class Step(BaseModel):
    """One command of a phase. Exactly one of `bloodwork`, `python`, `builtin`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    bloodwork: list[str] | None = Field(default=None, description="a bloodwork subcommand and its arguments")
    python: list[str] | None = Field(default=None, description="a Python script, then its arguments")
    builtin: Literal["baseline"] | None = Field(default=None, description="a step the campaign itself performs")
    allow_exit: list[int] = Field(default_factory=lambda: [0], description="exit statuses that are not a failure")
    timeout_min: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        kinds = [k for k in ("bloodwork", "python", "builtin") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"step {self.name!r} needs exactly one of bloodwork, python, builtin "
                             f"(has {kinds or 'none'})")
        if self.bloodwork is not None and not self.bloodwork:
            raise ValueError(f"step {self.name!r}: bloodwork needs a subcommand")
        if self.python is not None and not self.python:
            raise ValueError(f"step {self.name!r}: python needs a script path")
        return self


EvidenceKind = Literal["extract", "profile", "matrix", "dataset", "json", "path"]


class EvidenceSpec(BaseModel):
    """A product's evidence files: the report quotes their figures, the audit recomputes them.

    - extract: `out` holds `bloodwork extract INPUTS`'s files; recomputed by running extract again.
    - profile: `out` holds `bloodwork profile INPUTS`'s; recomputed by running profile again.
    - matrix: `dir` holds a model matrix; recomputed by `bloodwork matrix recount DIR`.
    - dataset: `dir` holds a dataset; its stats are recounted from the row files themselves.
    - json: `file`'s values at the JSON pointers of `figures`; recomputed by reading the file again.
    - path: raw evidence indexed (sha256) but quoted by no figure.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    kind: EvidenceKind
    inputs: list[str] = Field(default_factory=list)
    out: str | None = None
    dir: str | None = None
    file: str | None = None
    path: str | None = None
    figures: dict[str, str] = Field(default_factory=dict, description="json: figure name -> JSON pointer")
    compare: bool = Field(default=False, description="profile: it was made with --compare")
    semantic: bool = Field(default=True, description="profile: it was made with semantic probe scoring")

    @model_validator(mode="after")
    def _fields(self) -> EvidenceSpec:
        need = {"extract": ("inputs", "out"), "profile": ("inputs", "out"), "matrix": ("dir",), "dataset": ("dir",),
                "json": ("file", "figures"), "path": ("path",)}[self.kind]
        missing = [f for f in need if not getattr(self, f)]
        if missing:
            raise ValueError(f"evidence {self.name!r} ({self.kind}) needs {', '.join(missing)}")
        return self


class CheckSpec(BaseModel):
    """`{check: NAME, name: LABEL, ...args}`: the args are validated by the check's own model."""

    model_config = ConfigDict(extra="forbid")

    check: str
    name: str
    args: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _collect_args(cls, data: Any) -> Any:
        if isinstance(data, dict) and "args" not in data:
            data = dict(data)
            head = {k: data.pop(k) for k in ("check", "name") if k in data}
            head.setdefault("name", head.get("check"))
            return {**head, "args": data}
        return data


class Remedy(BaseModel):
    """What to change before the next attempt: new values for vars. `when` limits it to some failed checks."""

    model_config = ConfigDict(extra="forbid")

    why: str = Field(min_length=1)
    set: dict[str, str | int | float] = Field(min_length=1)
    when: list[str] = Field(default_factory=list, description="check names; empty = after any NO-GO")


class Phase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: int = Field(ge=0)
    name: str = Field(min_length=1)
    goal: str = ""
    vars: dict[str, str | int | float] = Field(default_factory=dict)
    steps: list[Step] = Field(min_length=1)
    evidence: list[EvidenceSpec] = Field(default_factory=list)
    checks: list[CheckSpec] = Field(default_factory=list)
    max_attempts: int = Field(default=1, ge=1)
    remedies: list[Remedy] = Field(default_factory=list)
    llm_audit: bool = Field(default=True, description="ask the --auditor about this phase")
    on_nogo: Literal["continue", "stop"] = Field(default="continue", description="after the last attempt")

    @model_validator(mode="after")
    def _consistent(self) -> Phase:
        if self.max_attempts > len(self.remedies) + 1:
            raise ValueError(f"phase {self.id}: max_attempts {self.max_attempts} needs {self.max_attempts - 1} "
                             f"remedies, has {len(self.remedies)}")
        for kind, names in (("step", [s.name for s in self.steps]), ("evidence", [e.name for e in self.evidence]),
                            ("check", [c.name for c in self.checks])):
            dup = {n for n in names if names.count(n) > 1}
            if dup:
                raise ValueError(f"phase {self.id}: {kind} names repeat: {', '.join(sorted(dup))}")
        unknown = {w for r in self.remedies for w in r.when} - {c.name for c in self.checks}
        if unknown:
            raise ValueError(f"phase {self.id}: remedies name unknown checks: {', '.join(sorted(unknown))}")
        return self


class Plan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    time_budget_min: float | None = Field(default=None, gt=0)
    vars: dict[str, str | int | float] = Field(default_factory=dict)
    phases: list[Phase] = Field(min_length=1)

    @model_validator(mode="after")
    def _phases(self) -> Plan:
        ids = [p.id for p in self.phases]
        if ids != sorted(set(ids)):
            raise ValueError(f"phase ids must be unique and ascending, got {ids}")
        return self

    def phase(self, phase_id: int) -> Phase:
        for p in self.phases:
            if p.id == phase_id:
                return p
        raise PlanError(f"plan {self.name} has no phase {phase_id}")


def builtin_plans() -> dict[str, Path]:
    folder = resources.files(PLANS_PACKAGE) / PLANS_DIR
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


def resolve_plan(name_or_path: str) -> Path:
    """A shipped plan by name (`smoke`, `bloody-data`) or a YAML file."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    plans = builtin_plans()
    if name_or_path in plans:
        return plans[name_or_path]
    raise PlanError(f"no plan file or shipped plan {name_or_path!r} (shipped: {', '.join(sorted(plans))})")


def load_plan(path: Path) -> Plan:
    data = read_yaml(path, PlanError)
    if not isinstance(data, dict):
        raise PlanError(f"{path}: a plan must be a mapping")
    try:
        plan = Plan.model_validate(data)
    except ValidationError as err:
        raise PlanError(f"{path}: {describe(err)}") from err
    validate_references(plan)
    return plan


def plan_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fields(value: Any) -> set[str]:
    """The {names} a string (or the strings inside a list or mapping) refers to."""
    if isinstance(value, str):
        try:
            return {name for _, name, _, _ in string.Formatter().parse(value) if name}
        except ValueError as err:
            raise PlanError(f"{value!r}: {err}") from err
    if isinstance(value, dict):
        return set().union(*(fields(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(fields(v) for v in value)) if value else set()
    return set()


def substitute(value: Any, variables: dict[str, Any]) -> Any:
    """Every string with its {names} replaced; a name that is not defined is a PlanError."""
    if isinstance(value, str):
        try:
            return value.format_map(variables)
        except KeyError as err:
            raise PlanError(f"{value!r} uses {{{err.args[0]}}}, which is not defined") from err
        except (ValueError, IndexError) as err:
            raise PlanError(f"{value!r}: {err}") from err
    if isinstance(value, dict):
        return {k: substitute(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, variables) for v in value]
    return value


def known_vars(plan: Plan, phase: Phase) -> set[str]:
    earlier = {f"phase{p.id}" for p in plan.phases if p.id < phase.id}
    return set(plan.vars) | set(phase.vars) | set(BUILTIN_VARS) | earlier


def validate_references(plan: Plan) -> None:
    """Every {name} is defined where it is used, remedies set known vars, and every check exists with valid
    arguments (checked on the args as written: values that hold {names} are checked at run time)."""
    for phase in plan.phases:
        known = known_vars(plan, phase)
        used = fields([s.model_dump() for s in phase.steps]) | fields([e.model_dump() for e in phase.evidence]) \
            | fields([c.args for c in phase.checks])
        unknown = sorted(used - known)
        later = [u for u in unknown if _PHASE_VAR.match(u)]
        if later:
            raise PlanError(f"phase {phase.id} refers to {{{later[0]}}}: only earlier phases can be referred to")
        if unknown:
            raise PlanError(f"phase {phase.id} uses {{{unknown[0]}}}, which is not defined (plan vars: "
                            f"{', '.join(sorted(plan.vars)) or 'none'})")
        for remedy in phase.remedies:
            bad = sorted(set(remedy.set) - set(plan.vars) - set(phase.vars))
            if bad:
                raise PlanError(f"phase {phase.id}: remedy {remedy.why!r} sets {bad[0]}, which is not a var of "
                                "the plan or the phase")
        for check in phase.checks:
            if check.check not in CHECKS:
                raise PlanError(f"phase {phase.id}: unknown check {check.check!r} (known: {', '.join(sorted(CHECKS))})")
            literal = {k: v for k, v in check.args.items() if not fields(v)}
            try:
                CHECKS[check.check].validate_args(literal, partial=True)
            except CheckError as err:
                raise PlanError(f"phase {phase.id}: check {check.name}: {err}") from err


def parse_sets(items: list[str], plan: Plan) -> dict[str, str]:
    """`--set NAME=VALUE` overrides of the plan's vars (phase vars included)."""
    names = set(plan.vars) | {k for p in plan.phases for k in p.vars}
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise PlanError(f"--set expects NAME=VALUE, got {item!r}")
        if name not in names:
            raise PlanError(f"--set {name}: the plan has no var {name!r} (vars: {', '.join(sorted(names))})")
        out[name] = value
    return out
