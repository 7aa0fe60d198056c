"""`bloodwork campaign run|resume|audit|report|plans`: `register(app)` adds them to the bloodwork CLI.

The campaign's modules are imported inside the commands: every `bloodwork` command line (a campaign's own
steps among them) pays for what it imports at start.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from bloodwork.console import console, err_console

if TYPE_CHECKING:
    from bloodwork.campaign.state import CampaignState


def _say(message: str) -> None:
    console.print(message, highlight=False, soft_wrap=True)


def _outcome(state: CampaignState, root: Path) -> None:
    """The gates, NO-GO first; exit 1 when any phase is NO-GO or did not run."""
    table = Table("phase", "name", "gate", "attempts", "wall min")
    for p in sorted(state.phases, key=lambda p: (p.gate != "NO-GO", p.id)):
        gate = {"GO": "[green]GO[/green]", "NO-GO": "[bold red]NO-GO[/bold red]"}.get(p.gate or "", p.status)
        table.add_row(str(p.id), p.name, gate, str(len(p.attempts)), f"{p.wall_s / 60:.1f}")
    console.print(table)
    console.print(f"reports: {root / 'reports'}  audits: {root / 'audits'}  page: {root / 'campaign.html'}\n"
                  f"handover bundle: {root / 'handover'}", highlight=False, soft_wrap=True)
    if any(p.gate != "GO" for p in state.phases):
        raise typer.Exit(1)


def _interrupted(root: Path) -> None:
    err_console.print(f"interrupted: continue with bloodwork campaign resume {root}")
    raise typer.Exit(130)


def _unknown_options(args: list[str]) -> str | None:
    """Whether a bloodwork command line names a command and options the CLI has (None = it does)."""
    from bloodwork.cli import app

    command: Any = typer.main.get_command(app)  # typer's own click: a group is what has `commands`
    rest = list(args)
    top = command
    while hasattr(command, "commands") and rest and not rest[0].startswith("-"):
        sub = command.commands.get(rest[0])
        if sub is None:
            break
        command, rest = sub, rest[1:]
    if command is top:
        return f"no command {rest[0]!r}" if rest else "no command"
    known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    unknown = [a.split("=")[0] for a in rest if a.startswith("--") and a.split("=")[0] not in known]
    return f"unknown option(s) {', '.join(unknown)} of `{command.name}`" if unknown else None


def run(
    plan: Annotated[str, typer.Argument(help="A plan YAML file, or a shipped plan: smoke, bloody-data.")],
    out: Annotated[Path, typer.Option(help="The campaign directory (new or empty).")] = Path("runs/campaign"),
    auditor: Annotated[str | None, typer.Option(help="A model spec that audits each phase after the recount "
                                                     "(gemini:..., openai:..., kimi:..., local:...).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a plan var, NAME=VALUE (repeatable).")]
    = None,
    dry_run: Annotated[bool, typer.Option(help="Print the commands the plan would run first, flag those the CLI "
                                               "does not have, and run nothing.")] = False,
) -> None:
    """Run a campaign: every phase as Implement -> Evidence -> Audit -> Fix, gates recomputed before they judge.

    Example: bloodwork campaign run smoke --out runs/campaign-smoke --auditor gemini:gemini-2.5-flash
    """
    from bloodwork.campaign.runner import Runner, explain_plan

    if dry_run:
        the_plan, rows = explain_plan(plan, set_)
        console.print(f"plan {the_plan.name}: {len(the_plan.phases)} phases", highlight=False)
        problems = 0
        for phase_id, step, args in rows:
            issue = _unknown_options(args) if "(bloodwork)" in step else None
            problems += issue is not None
            console.print(f"phase {phase_id} {step}: {' '.join(args)}"
                          + (f"  [red]<- {issue}[/red]" if issue else ""), highlight=False, soft_wrap=True)
        console.print(f"{problems} step(s) use commands or options this CLI lacks", highlight=False)
        return
    runner = Runner.create(plan, out, auditor=auditor, sets=set_, say=_say)
    try:
        state = runner.run("bloodwork campaign " + " ".join(sys.argv[2:]))
    except KeyboardInterrupt:
        _interrupted(out)
    _outcome(state, out)


def resume(
    out: Annotated[Path, typer.Argument(help="The campaign directory.")],
    auditor: Annotated[str | None, typer.Option(help="Another auditor spec from now on (default: the one it "
                                                     "started with).")] = None,
) -> None:
    """Continue a stopped or killed campaign at its interrupted phase and step.

    Example: bloodwork campaign resume runs/campaign-smoke
    """
    from bloodwork.campaign.runner import Runner

    runner = Runner.open(out, auditor=auditor, say=_say)
    if runner.state.status == "done":
        console.print("the campaign is finished; nothing to resume")
        _outcome(runner.state, out)
        return
    try:
        state = runner.run("bloodwork campaign " + " ".join(sys.argv[2:]))
    except KeyboardInterrupt:
        _interrupted(out)
    _outcome(state, out)


def audit(
    out: Annotated[Path, typer.Argument(help="The campaign directory.")],
    phase: Annotated[list[int] | None, typer.Option(help="Audit only this phase (repeatable).")] = None,
    auditor: Annotated[str | None, typer.Option(help="Auditor spec (default: the campaign's).")] = None,
) -> None:
    """Audit the phase reports again as they stand now (e.g. after editing one): recount, checks, verdict.

    Example: bloodwork campaign audit runs/campaign-smoke --phase 1
    """
    from bloodwork.campaign.runner import Runner

    runner = Runner.open(out, auditor=auditor, say=_say)
    records = runner.reaudit(phase, "bloodwork campaign " + " ".join(sys.argv[2:]))
    for r in records:
        console.print(f"phase {r.phase} attempt {r.attempt}: {r.gate} ({len(r.blockers())} blocking findings)",
                      highlight=False)
        for f in r.blockers()[:10]:
            console.print(f"  [red]{f.claim}[/red]", highlight=False, soft_wrap=True)
    if any(r.gate != "GO" for r in records):
        raise typer.Exit(1)


def report(out: Annotated[Path, typer.Argument(help="The campaign directory.")]) -> None:
    """Write campaign.html, the evidence index and the handover bundle again from the campaign's files.

    Example: bloodwork campaign report runs/campaign-smoke
    """
    from bloodwork.campaign.runner import Runner
    from bloodwork.campaign.state import Lock

    runner = Runner.open(out)
    with Lock(out):
        bundle = runner.finish()
    console.print(f"page: {out / 'campaign.html'}\nhandover bundle: {bundle} (manifest.json holds the sha256 of "
                  "every file)", highlight=False)


def plans() -> None:
    """List the shipped plans.

    Example: bloodwork campaign plans
    """
    from bloodwork.campaign.plan import PlanError, builtin_plans, load_plan

    for name, path in sorted(builtin_plans().items()):
        try:
            p = load_plan(path)
        except PlanError as err:
            console.print(f"{name}: [red]invalid[/red]: {err}")
            continue
        console.print(f"[bold]{name}[/bold] ({len(p.phases)} phases): {p.description.strip().splitlines()[0]}",
                      highlight=False)


def register(app: typer.Typer) -> None:
    """Add `campaign run|resume|audit|report|plans` to the bloodwork CLI."""
    campaign_app = typer.Typer(help="The executor/auditor campaign: a plan of phases, gates that recompute.",
                               no_args_is_help=True)
    for fn in (run, resume, audit, report, plans):
        campaign_app.command(fn.__name__)(fn)
    app.add_typer(campaign_app, name="campaign")
