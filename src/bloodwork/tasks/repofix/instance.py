"""Repo-fix instances: the SWE-bench fields, plus where the code comes from and what it runs with.

An instance names its base code in one of three ways: a PyPI source archive pinned by version and
sha256 (`source_archive`, what the built-ins use: nothing of those projects is committed here); an
archive of the base tree stored next to the instance file (`base_archive`, what `tasks import` writes,
so a task folder can be moved, shared or committed); or a commit in a local checkout (`base_commit` +
`repo_dir`, for a hand-written file).

Three ways to state the fix and its hidden tests:

- `patch` / `test_patch` as unified diffs (SWE-bench);
- `bug: injected`: the base is the released code with `patch` reversed (we injected the bug, the
  gold patch takes it out again) and `test_patch` adds our hidden tests;
- `fix_release`: a real bug fixed upstream in a later release; the gold patch and the upstream
  regression tests are the named files of that release's source archive, read at preparation time.

The environment the tests run in (`python`, `install`, `packages`, `pip_packages`, `pythonpath`) is
described in `env.py`; the field table is in the README ("Bring your own repo-fix instance").
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from bloodwork.errors import describe, read_yaml
from bloodwork.tasks.base import TaskError

BUILTIN_DIR = Path(__file__).resolve().parents[1] / "builtin" / "repo-fix"
DEFAULT_TEST_CMD = "python3 -m pytest -p no:cacheprovider"
INSTANCE_FILE = "instance.yaml"
# A pytest node id: a test file, optionally `::` and the names inside it (SWE-bench's pytest repos).
_NODE_ID = re.compile(r"^[^\s:]+\.py(::.+)?$")


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


def _relative(path: str) -> str:
    """A path inside the base tree: relative, no `..`."""
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or ".." in pure.parts:
        raise ValueError(f"{path!r} must be a relative path inside the base tree")
    return path


class BaseArchive(BaseModel):
    """The base tree as a tar archive next to the instance file, pinned by sha256."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, description="relative to the instance file's folder")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("path")
    @classmethod
    def _inside(cls, value: str) -> str:
        return _relative(value)


class RepoFixInstance(BaseModel):
    """One bug to reproduce, fix, test and describe in a PR draft."""

    model_config = ConfigDict(extra="forbid")

    instance_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    repo: str = Field(min_length=1)
    version: str = Field(default="unversioned", min_length=1)
    bug: Literal["real", "injected"] = "real"
    upstream: str = ""
    base_commit: str | None = None
    repo_dir: str | None = None
    source_archive: SdistRef | None = None
    base_archive: BaseArchive | None = None
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
    python: str | None = Field(default=None, pattern=r"^3\.\d+$")
    install: str | None = Field(default=None, min_length=1)
    packages: str | None = None
    pip_packages: list[str] = Field(default_factory=list)
    pythonpath: list[str] | None = None
    # Where the instance file lives: `base_archive` is found relative to it.
    _folder: Path | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _pythonpath_from_env(cls, data: Any) -> Any:
        """`env: {PYTHONPATH: src}` (what users wrote by hand before `pythonpath` existed) means `pythonpath`."""
        if isinstance(data, dict) and isinstance(data.get("env"), dict) and "PYTHONPATH" in data["env"]:
            env = dict(data["env"])
            entries = str(env.pop("PYTHONPATH")).split(":")
            if data.get("pythonpath") is None:
                data = {**data, "pythonpath": [e for e in entries if e]}
            data = {**data, "env": env}
        return data

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

    @field_validator("FAIL_TO_PASS", "PASS_TO_PASS")
    @classmethod
    def _pytest_ids(cls, value: list[str]) -> list[str]:
        """Only pytest node ids can be selected and read back; Django/SymPy-style ids would all read `missing`."""
        bad = [t for t in value if not _NODE_ID.match(t)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a pytest node id (FILE.py or FILE.py::NAME); Django- or "
                             "SymPy-style test ids cannot be selected with pytest"
                             + (f" ({len(bad)} such ids)" if len(bad) > 1 else ""))
        return value

    @field_validator("packages")
    @classmethod
    def _packages_inside(cls, value: str | None) -> str | None:
        return None if value is None else _relative(value)

    @field_validator("pythonpath")
    @classmethod
    def _pythonpath_inside(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [p if p == "." else _relative(p.rstrip("/")) for p in value]

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not name.isidentifier():
                raise ValueError(f"{name!r} is not an environment variable name")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> RepoFixInstance:
        sources = [self.source_archive is not None, self.base_archive is not None, self.repo_dir is not None]
        if sum(sources) != 1:
            raise ValueError("give exactly one of source_archive, base_archive, or base_commit with repo_dir")
        if self.repo_dir is not None and self.base_commit is None:
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

    @property
    def folder(self) -> Path | None:
        """The folder of the file this instance was loaded from (None for one built in memory)."""
        return self._folder

    def env_prefix(self) -> str:
        """`NAME=value ...` of `env` before a command, quoted for /bin/sh."""
        return "".join(f"{k}={shlex.quote(v)} " for k, v in sorted(self.env.items()))


def parse_instance(data: Any, where: str) -> RepoFixInstance:
    """Validate one instance mapping; `where` (file, line) prefixes the one-line error."""
    if not isinstance(data, dict):
        raise InstanceError(f"{where}: an instance must be a mapping, not {type(data).__name__}")
    try:
        return RepoFixInstance.model_validate(data)
    except ValidationError as err:
        raise InstanceError(f"{where}: {describe(err, 'instance')}") from err


def load_instance_file(path: Path) -> RepoFixInstance:
    """One instance from a YAML or JSON file, or from a task folder holding `instance.yaml`."""
    if path.is_dir():
        path = path / INSTANCE_FILE
    data = read_yaml(path, InstanceError)
    inst = parse_instance(data, str(path))
    inst._folder = path.resolve().parent
    return inst


def builtin_instances() -> list[RepoFixInstance]:
    return [load_instance_file(p) for p in sorted(BUILTIN_DIR.glob("*.yaml"))]


def builtin_instance(instance_id: str) -> RepoFixInstance:
    path = BUILTIN_DIR / f"{instance_id}.yaml"
    if not path.is_file():
        known = ", ".join(p.stem for p in sorted(BUILTIN_DIR.glob("*.yaml")))
        raise InstanceError(f"unknown repo-fix instance {instance_id!r} (built-in: {known})")
    return load_instance_file(path)


class _BlockDumper(yaml.SafeDumper):
    """Multi-line text (bug reports, diffs) as `|` blocks, so an instance file reads like the text it holds."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_BlockDumper.add_representer(str, _str)


def write_instance(inst: RepoFixInstance, path: Path) -> None:
    """Save an instance as YAML; `load_task(path)` runs it (a `base_archive` must sit next to it)."""
    path.write_text(yaml.dump(inst.model_dump(mode="json", exclude_defaults=True), Dumper=_BlockDumper,
                              sort_keys=False, allow_unicode=True))
