"""Console conventions every `bloodwork` command follows: a user mistake is one red line on stderr and
exit 2; long work shows a rich progress bar on stderr, so stdout keeps only the result.

They live apart from `bloodwork.cli` because the `data` and `matrix` command modules need them too and
`bloodwork.cli` imports those modules to register them.
"""

from __future__ import annotations

from typing import NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bloodwork.errors import describe

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    # Escaped: a message quoting `pip install 'bloodwork[ray]'` or a path with brackets is text, not markup.
    err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def one_line(err: BaseException) -> str:
    if isinstance(err, ValidationError):
        return describe(err)
    if isinstance(err, OSError) and err.filename:
        return f"{err.strerror or err}: {err.filename}"
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def progress(label: str, *, transient: bool = True) -> Progress:
    """Transient by default: once the work ends (or fails) the bar is gone, so an error stays the only line
    on stderr. A run's bar stays, because its last state (panics, traps) is part of what the user reads."""
    return Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                    TimeElapsedColumn(), console=err_console, transient=transient)


def csv(value: str) -> list[str]:
    """Comma-separated items, or ';'-separated when an item itself holds commas."""
    return [v.strip() for v in value.split(";" if ";" in value else ",") if v.strip()]
