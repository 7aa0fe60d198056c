"""The CLI's edge: the one place a command's failure becomes what the user reads, and the checks of what
the user named (an output folder, a run directory) that turn an `OSError` into their mistake where it is one."""

from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
import time
import traceback
from contextlib import suppress
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from typer.core import TyperGroup

from bloodwork.chronos.run import RunManifest, RunPaths, versions
from bloodwork.console import fail, one_line
from bloodwork.errors import BloodworkError
from bloodwork.kernel import KernelCrash


class Boundary(TyperGroup):
    """The one place a command's failure becomes what the user reads: their mistake (a `BloodworkError`) is one
    line and exit 2; a kernel crash is its one line (which names its crash.txt) and exit 3; anything else is
    a bug, exit 3, its traceback in a crash report and a pointer to it, no traceback on the console. Here and
    not in `main`, so `CliRunner` and in-process callers (the demo) get the same answer."""

    def invoke(self, ctx: Any) -> Any:  # typer's vendored click Context, whose module is private
        try:
            return super().invoke(ctx)
        except (typer.TyperException, typer.Exit, typer.Abort):
            raise  # usage errors, deliberate exit codes, ^C: click and typer answer these themselves
        except BloodworkError as err:
            fail(one_line(err))
        except KernelCrash as err:
            fail(str(err), code=3)
        except BrokenPipeError:
            # The reader left (`bloodwork isa schema | head`): nothing is wrong, nobody is listening. Python's own
            # flush at exit would fail on the same pipe, so stdout goes nowhere from here on.
            with suppress(OSError, ValueError):  # under CliRunner, stdout has no file descriptor
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(141) from None
        except Exception as err:
            try:
                report: object = write_crash_report(err)
            except OSError as why:
                report = f"nowhere (the crash report could not be written: {one_line(why)})"
            fail(f"internal error, a bug in bloodwork ({type(err).__name__}: {one_line(err)}); traceback in {report}",
                 code=3)


def write_crash_report(err: BaseException) -> Path:
    """The traceback, the command line and the versions, in $BLOODWORK_CRASH_DIR (default: the temp folder)."""
    folder = Path(os.environ.get("BLOODWORK_CRASH_DIR") or Path(tempfile.gettempdir()) / "bloodwork-crashes")
    folder.mkdir(parents=True, exist_ok=True)
    report = folder / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    report.write_text(f"command: {shlex.join(['bloodwork', *sys.argv[1:]])}\nversions: {json.dumps(versions())}\n\n"
                      + "".join(traceback.format_exception(err)), errors="backslashreplace")
    return report


def load_run(run_dir: Path) -> tuple[RunPaths, RunManifest]:
    """The run directory the user named, with its manifest."""
    paths = RunPaths(run_dir)
    if not paths.manifest.is_file():
        raise BloodworkError(f"{run_dir} is not a run directory (no run.json)")
    try:
        return paths, RunManifest.load(paths)
    except (OSError, ValidationError) as err:
        raise BloodworkError(f"{paths.manifest} is not readable: {one_line(err)}") from err
