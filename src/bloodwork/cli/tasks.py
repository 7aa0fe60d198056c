"""`bloodwork tasks list|import|validate` and `bloodwork isa schema`: what a run is given to do, and the
frame it must answer in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Column, Table

from bloodwork import isa
from bloodwork.console import console, err_console
from bloodwork.errors import check_writable
from bloodwork.tasks.registry import list_tasks


def tasks_list() -> None:
    """List the built-in tasks, then those found on BLOODWORK_TASK_PATH.

    Example: BLOODWORK_TASK_PATH=tasks/mine bloodwork tasks list
    """
    table = Table(Column("id", no_wrap=True), "kind", "synthetic", "from", "verifier")
    for task in list_tasks():
        meta = task.metadata
        table.add_row(task.id, str(meta.get("kind")), str(meta.get("synthetic")),
                      str(meta.get("task_folder", "built-in")), str(meta.get("verifier", ""))[:60])
    console.print(table)


def tasks_import(
    file: Annotated[Path, typer.Argument(help="SWE-bench-style JSONL, one instance a line (fields: see README, "
                                              "'Bring your own repo-fix instance').")],
    repo_dir: Annotated[Path, typer.Option(help="A local git checkout holding every row's base_commit.")],
    out: Annotated[Path, typer.Option(help="Folder that receives one task folder per instance.")] =
    Path("tasks/imported"),
) -> None:
    """Import SWE-bench-style instances into self-contained task folders (instance.yaml + base.tar.gz).

    Required per row: instance_id, repo, base_commit, problem_statement, FAIL_TO_PASS, patch, test_patch.
    Every row is checked first (fields, base commit, and that pytest collects every test id in the
    instance's own environment, built and cached on first use); a bad row refuses the whole file.
    Run an imported task by path (`bloodwork run OUT/ID`) or by id with BLOODWORK_TASK_PATH=OUT.

    Example: bloodwork tasks import rows.jsonl --repo-dir ~/src/click --out tasks/click
    """
    from bloodwork.tasks.repofix.importer import import_instances

    check_writable(out)
    with err_console.status("checking the rows (the first import of a repo/version builds its environment)"):
        imported = import_instances(file, repo_dir, out)
    for item in imported:
        for warning in item.warnings:
            err_console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
    table = Table("instance", "folder", "test ids collected", "environment")
    for item in imported:
        table.add_row(item.instance_id, str(item.folder), str(item.collected), str(item.environment.get("key", "")))
    console.print(table)
    console.print(f"imported {len(imported)} instances into {out}; run one with "
                  f"`BLOODWORK_TASK_PATH={out} bloodwork run repo-fix/{imported[0].instance_id}`", highlight=False)


def tasks_validate(
    ids: Annotated[list[str] | None, typer.Argument(
        help="Instance ids (built-in or on BLOODWORK_TASK_PATH), instance files or task folders "
             "(default: every built-in instance).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON (every run's evidence).")]
    = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show each pytest run: command, exit code, "
                                                                  "pytest's own errors, output tail.")] = False,
) -> None:
    """Check each repo-fix instance: every test id collected, the base fails FAIL_TO_PASS, the gold patch passes all.

    Exit 1 if any instance fails its check.

    Example: bloodwork tasks validate sqlparse-784 --verbose
    """
    from bloodwork.tasks.registry import find_instance
    from bloodwork.tasks.repofix.validate import validate_instances

    chosen = [find_instance(i) for i in ids] if ids else None
    with err_console.status("validating (the first run downloads the sdists and builds the environments)"):
        results = validate_instances(chosen)
    if as_json:
        print(json.dumps([r.model_dump(mode="json", exclude=None if verbose else {"runs"}) for r in results],
                         indent=2))
    else:
        table = Table("instance", "ok", "all collected", "base fails F2P", "gold passes all", "problems", "seconds")
        for r in results:
            table.add_row(r.instance_id, "yes" if r.ok else "[red]NO[/red]", str(r.collected_all),
                          str(r.base_fails_f2p), str(r.gold_passes_all), "; ".join(r.problems)[:300],
                          f"{r.duration_s:.1f}")
        console.print(table)
        if verbose:
            for r in results:
                console.rule(f"{r.instance_id}: environment {r.environment.get('key', '(none)')}")
                for run in r.runs:
                    console.print(f"[bold]{run.tree}[/bold] exit {run.exit_code}"
                                  f"{' (timed out)' if run.timed_out else ''}: {run.command}", highlight=False)
                    for line in run.errors:
                        console.print(f"  {line}", highlight=False, markup=False)
                    console.print(run.output_tail[-1500:], highlight=False, markup=False)
    if not all(r.ok for r in results):
        raise typer.Exit(1)


def isa_schema() -> None:
    """Print the frame's JSON Schema (generated from the code).

    Example: bloodwork isa schema > frame.schema.json
    """
    print(json.dumps(isa.json_schema(), indent=2))
