"""The `bloodwork` command: every command group put together behind one edge (`edge.Boundary`)."""

from __future__ import annotations

import typer

from bloodwork.cli import evidence, run, serve, sweep, tasks
from bloodwork.cli.edge import Boundary

app = typer.Typer(cls=Boundary, help="Run long-horizon LLM agents under seeded chaos and harvest what went wrong.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
for command in (run.run, run.resume, run.verify, run.show, sweep.sweep, evidence.extract, evidence.replay,
                evidence.profile, serve.serve):
    app.command()(command)

tasks_app = typer.Typer(help="Built-in and user tasks.", no_args_is_help=True)
tasks_app.command("list")(tasks.tasks_list)
tasks_app.command("import")(tasks.tasks_import)
tasks_app.command("validate")(tasks.tasks_validate)
app.add_typer(tasks_app, name="tasks")

isa_app = typer.Typer(help="The syscall frame the model must emit.", no_args_is_help=True)
isa_app.command("schema")(tasks.isa_schema)
app.add_typer(isa_app, name="isa")


def _register_upper_layers() -> None:
    """Dataset, training, matrix and campaign commands live with their packages; they add themselves here."""
    from bloodwork.campaign.cli import register as register_campaign
    from bloodwork.data.cli import register as register_data
    from bloodwork.matrix.cli import register as register_matrix

    register_data(app)
    register_matrix(app)
    register_campaign(app)


_register_upper_layers()


def main() -> None:
    """The console script `bloodwork` (and `python -m bloodwork.cli`)."""
    app()
