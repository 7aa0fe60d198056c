"""Repo-fix instances: the SWE-bench fields, plus where the code comes from.

An instance names its base code either by a git commit in a local checkout (`base_commit` +
`repo_dir`, what SWE-bench JSONL imports give) or by a PyPI source archive pinned by version and
sha256 (`source_archive`, what the built-ins use: nothing of those projects is committed here).

Three ways to state the fix and its hidden tests:

- `patch` / `test_patch` as unified diffs (SWE-bench);
- `bug: injected`: the base is the released code with `patch` reversed (we injected the bug, the
  gold patch takes it out again) and `test_patch` adds our hidden tests;
- `fix_release`: a real bug fixed upstream in a later release; the gold patch and the upstream
  regression tests are the named files of that release's source archive, read at preparation time.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bloodwork.tasks.base import TaskError

BUILTIN_DIR = Path(__file__).resolve().parents[1] / "builtin" / "repo-fix"
DEFAULT_TEST_CMD = "python3 -m pytest -p no:cacheprovider"
# The sandbox's pytest is bloodwork's, with bloodwork's plugins (hypothesis, anyio, ...); a project's
# tests need none of them and loading them costs ~2 s per run. An instance's `env` can override this.
BASE_ENV = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}


class InstanceError(TaskError):
    """An instance file or an instance is unusable; the message is one line naming file and field."""


class SdistRef(BaseModel):
    """A PyPI source archive, pinned: the download is refused unless its sha256 matches."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}"


class FixRelease(BaseModel):
    """The release that shipped an upstream fix: its files are the gold patch and the hidden tests."""

    model_config = ConfigDict(extra="forbid")

    sdist: SdistRef
    patch_files: list[str] = Field(min_length=1)
    test_files: list[str] = Field(min_length=1)


class RepoFixInstance(BaseModel):
    """One bug to reproduce, fix, test and describe in a PR draft."""

    model_config = ConfigDict(extra="forbid")

    instance_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    repo: str = Field(min_length=1)
    version: str = Field(min_length=1)
    bug: Literal["real", "injected"] = "real"
    upstream: str = ""
    base_commit: str | None = None
    repo_dir: str | None = None
    source_archive: SdistRef | None = None
    fix_release: FixRelease | None = None
    problem_statement: str = Field(min_length=1)
    FAIL_TO_PASS: list[str] = Field(min_length=1)
    PASS_TO_PASS: list[str] = Field(default_factory=list)
    test_patch: str = ""
    patch: str = ""
    test_cmd: str = DEFAULT_TEST_CMD
    test_dir: str = "tests"
    env: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(default=300, gt=0)

    @field_validator("FAIL_TO_PASS", "PASS_TO_PASS", mode="before")
    @classmethod
    def _json_list(cls, value: Any) -> Any:
        """SWE-bench stores the test lists as JSON text inside the JSON line."""
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError as err:
                raise ValueError(f"not a JSON list of test ids ({err})") from err
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not name.isidentifier():
                raise ValueError(f"{name!r} is not an environment variable name")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> RepoFixInstance:
        by_git = self.base_commit is not None or self.repo_dir is not None
        if by_git == (self.source_archive is not None):
            raise ValueError("give either base_commit with repo_dir, or source_archive")
        if by_git and (self.base_commit is None or self.repo_dir is None):
            raise ValueError("base_commit and repo_dir go together")
        if self.fix_release is not None:
            if self.source_archive is None or self.bug != "real":
                raise ValueError("fix_release needs source_archive and bug: real")
            if self.patch or self.test_patch:
                raise ValueError("with fix_release, patch and test_patch come from that release; leave them out")
        elif not self.patch.strip() or not self.test_patch.strip():
            raise ValueError("patch and test_patch are required (or fix_release)")
        if self.bug == "injected" and self.source_archive is None:
            raise ValueError("an injected bug is injected into a source_archive")
        return self

    @property
    def hidden_tests(self) -> list[str]:
        return self.FAIL_TO_PASS + self.PASS_TO_PASS

    def env_prefix(self) -> str:
        """`NAME=value ...` before a command (BASE_ENV, then `env`), quoted for /bin/sh."""
        return "".join(f"{k}={shlex.quote(v)} " for k, v in sorted({**BASE_ENV, **self.env}.items()))


def _first_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "instance"
    return f"{where}: {first['msg']}"


def parse_instance(data: Any, where: str) -> RepoFixInstance:
    """Validate one instance mapping; `where` (file, line) prefixes the one-line error."""
    if not isinstance(data, dict):
        raise InstanceError(f"{where}: an instance must be a mapping, not {type(data).__name__}")
    try:
        return RepoFixInstance.model_validate(data)
    except ValidationError as err:
        raise InstanceError(f"{where}: {_first_error(err)}") from err


def load_instance_file(path: Path) -> RepoFixInstance:
    """One instance from a YAML or JSON file."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise InstanceError(f"{path}: cannot read ({err.strerror})") from err
    except yaml.YAMLError as err:
        raise InstanceError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from err
    return parse_instance(data, str(path))


def builtin_instances() -> list[RepoFixInstance]:
    return [load_instance_file(p) for p in sorted(BUILTIN_DIR.glob("*.yaml"))]


def builtin_instance(instance_id: str) -> RepoFixInstance:
    path = BUILTIN_DIR / f"{instance_id}.yaml"
    if not path.is_file():
        known = ", ".join(p.stem for p in sorted(BUILTIN_DIR.glob("*.yaml")))
        raise InstanceError(f"unknown repo-fix instance {instance_id!r} (built-in: {known})")
    return load_instance_file(path)


# SWE-bench rows carry more than a task needs; these are read, anything else is ignored.
_SWE_FIELDS = ("instance_id", "repo", "version", "base_commit", "problem_statement", "FAIL_TO_PASS",
               "PASS_TO_PASS", "test_patch", "patch")


def _has_commit(repo_dir: Path, commit: str) -> bool:
    res = subprocess.run(["git", "-C", str(repo_dir), "cat-file", "-e", f"{commit}^{{commit}}"],
                         capture_output=True, check=False)
    return res.returncode == 0


def import_instances(jsonl_path: Path, repo_dir: Path) -> list[RepoFixInstance]:
    """SWE-bench-style JSONL (one instance a line) whose base commits live in the checkout `repo_dir`.

    Every line is checked, including that its base commit exists in the checkout, so a bad file is
    refused whole with the first problem on one line (`FILE:LINE: field: why`).
    """
    repo_dir = repo_dir.resolve()
    if not (repo_dir / ".git").exists():
        raise InstanceError(f"{repo_dir}: not a git checkout (no .git)")
    try:
        lines = jsonl_path.read_text().splitlines()
    except OSError as err:
        raise InstanceError(f"{jsonl_path}: cannot read ({err.strerror})") from err
    out: list[RepoFixInstance] = []
    seen: set[str] = set()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{jsonl_path}:{lineno}"
        try:
            row = json.loads(line)
        except ValueError as err:
            raise InstanceError(f"{where}: not valid JSON ({err})") from err
        if not isinstance(row, dict):
            raise InstanceError(f"{where}: a line must be a JSON object")
        data = {k: row[k] for k in _SWE_FIELDS if k in row}
        data["repo_dir"] = str(repo_dir)
        inst = parse_instance(data, where)
        if inst.instance_id in seen:
            raise InstanceError(f"{where}: instance_id {inst.instance_id!r} appears twice")
        assert inst.base_commit is not None
        if not _has_commit(repo_dir, inst.base_commit):
            raise InstanceError(f"{where}: base_commit {inst.base_commit} is not in {repo_dir}")
        seen.add(inst.instance_id)
        out.append(inst)
    if not out:
        raise InstanceError(f"{jsonl_path}: no instances")
    return out


def write_instance(inst: RepoFixInstance, path: Path) -> None:
    """Save an (imported) instance as YAML; `load_task(path)` runs it."""
    path.write_text(yaml.safe_dump(inst.model_dump(mode="json", exclude_defaults=True), sort_keys=False,
                                   allow_unicode=True))
