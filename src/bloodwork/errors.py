"""The one line between a user's mistake and a bug.

Every mistake a user can make (a bad option, a missing or malformed input, an unknown task or model, an
output folder that cannot be written) raises a `BloodworkError`. The CLI renders it once, at its edge, as
one line and exit 2. Anything else that escapes a command is a bug: exit 3, with the traceback in a crash
report. This module sits below every layer, so each one can raise the error its users should see.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError


class BloodworkError(Exception):
    """A mistake the user can fix from the message alone: one line, exit 2 on the command line."""


def read_yaml(path: Path, error: type[BloodworkError]) -> Any:
    """A user's YAML file, or `error` with one line: it cannot be read, or it is not YAML (the parser's
    first line, which names where)."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise error(f"{path}: cannot be read ({err.strerror})") from err
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from err


def describe(err: ValidationError, subject: str = "") -> str:
    """The first problem pydantic found in its own words ("chaos rate for exec_timeout must be within 0..1"),
    not pydantic's headline ("1 validation error for ChaosProfile"), with the field it is about (or
    `subject` when it is about the whole thing)."""
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or subject
    message = first["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


@contextmanager
def user_values() -> Iterator[None]:
    """Models built from what the user typed: a value they refuse is the user's mistake, not a bug."""
    try:
        yield
    except ValidationError as err:
        raise BloodworkError(describe(err)) from err


def check_writable(folder: Path) -> None:
    """An output folder the user named can be made and written: its nearest existing ancestor is a folder this
    process may write. Checked before the work starts, without making anything (some commands want their
    output folder new), so a typo'd `--out` is the user's one-line mistake, not an `OSError` half-way."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise BloodworkError(f"output folder {folder} is not writable ({existing} is not a folder)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BloodworkError(f"output folder {folder} is not writable (no permission to write in {existing})")
