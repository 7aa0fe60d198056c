"""The check framework: arguments, context, results, the registry, and the run selection checks share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from bloodwork.chronos.run import RunManifest, RunPaths, find_runs
from bloodwork.errors import BloodworkError


class CheckError(BloodworkError, ValueError):
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


class CheckArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class Check:
    name: str
    doc: str
    args: type[CheckArgs]
    fn: Callable[[Any, CheckContext], tuple[bool, Any, str, str, list[str]]]

    def validate_args(self, args: dict[str, Any], *, partial: bool = False) -> CheckArgs | None:
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


def check(name: str, args: type[CheckArgs]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        CHECKS[name] = Check(name=name, doc=(fn.__doc__ or "").strip(), args=args, fn=fn)
        return fn
    return register


def select_runs(path: str, provenance: str = "any", task: str | None = None) -> list[Path]:
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
