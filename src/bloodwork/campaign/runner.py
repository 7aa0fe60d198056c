"""The campaign loop: phases in order, each as attempts of Implement -> Evidence -> Audit -> Fix.

Implement runs the phase's steps; Evidence evaluates its checks, reads its figures, indexes its evidence
and writes the phase report; Audit recomputes and judges (`bloodwork.campaign.audit`); on NO-GO, Fix
applies the next remedy and starts a new attempt in a new folder, up to the phase's bound and the plan's
time budget. Every attempt keeps its evidence, report and audit. The state is saved after every step and
stage, so a campaign killed anywhere resumes at the interrupted step of the interrupted phase.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bloodwork.campaign import reports
from bloodwork.campaign.audit import (
    AuditorCall,
    AuditRecord,
    Finding,
    ask_auditor,
    auditor_messages,
    compare_checks,
    compare_figures,
    judge,
    recompute,
    step_findings,
)
from bloodwork.campaign.baseline import PACKAGE_DIR, source_root
from bloodwork.campaign.checks import CHECKS, CheckContext
from bloodwork.campaign.html import render_campaign
from bloodwork.campaign.plan import (
    EvidenceSpec,
    Phase,
    Plan,
    PlanError,
    Remedy,
    load_plan,
    parse_sets,
    plan_sha256,
    resolve_plan,
    substitute,
)
from bloodwork.campaign.state import (
    PLAN_COPY,
    Attempt,
    CampaignError,
    CampaignState,
    Lock,
    PhaseState,
    Session,
    StepRecord,
    load,
    save,
    state_path,
)
from bloodwork.campaign.steps import bloodwork_argv, execute, run_step
from bloodwork.chronos.files import atomic_write
from bloodwork.chronos.run import now_iso

Say = Callable[[str], None]


class Runner:
    def __init__(self, root: Path, plan: Plan, state: CampaignState, say: Say | None = None) -> None:
        self.root = root.resolve()
        self.plan = plan
        self.state = state
        self.say = say or (lambda _msg: None)
        self._t0 = time.monotonic()
        self._base_wall = state.wall_s

    # -- creation ------------------------------------------------------------------------------------

    @classmethod
    def create(cls, plan_ref: str, out: Path, *, auditor: str | None = None, sets: list[str] | None = None,
               say: Say | None = None) -> Runner:
        source = resolve_plan(plan_ref).resolve()
        plan = load_plan(source)
        overrides = parse_sets(sets or [], plan)
        if state_path(out).is_file():
            raise CampaignError(f"{out} already holds a campaign: continue it with `bloodwork campaign resume {out}`")
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise CampaignError(f"{out} exists and is not empty; choose another --out")
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, out / PLAN_COPY)
        state = CampaignState(plan=plan.name, plan_source=str(source), plan_sha256=plan_sha256(source), sets=overrides,
                              auditor=auditor, phases=[PhaseState(id=p.id, name=p.name) for p in plan.phases])
        save(out, state)
        return cls(out, plan, state, say)

    @classmethod
    def open(cls, root: Path, *, auditor: str | None = None, say: Say | None = None) -> Runner:
        state = load(root)
        copy = root / PLAN_COPY
        if not copy.is_file() or plan_sha256(copy) != state.plan_sha256:
            raise CampaignError(f"{copy} is missing or changed since the campaign started")
        plan = load_plan(copy)
        if auditor is not None:
            state.auditor = auditor
        return cls(root, plan, state, say)

    # -- variables -----------------------------------------------------------------------------------

    def user_vars(self, phase: Phase, remedies: list[Remedy]) -> dict[str, Any]:
        values: dict[str, Any] = {**self.plan.vars, **phase.vars}
        values |= {k: v for k, v in self.state.sets.items() if k in values}
        for remedy in remedies:
            values |= remedy.set
        return values

    def context(self, phase: Phase, attempt: Attempt) -> dict[str, Any]:
        phase_root = self.root / "phases" / f"phase{phase.id}"
        source = source_root()
        values = {**attempt.vars, "out": str(self.root), "phase_root": str(phase_root),
                  "phase_dir": str(self.root / attempt.dir), "plan_dir": str(Path(self.state.plan_source).parent),
                  "package": str(PACKAGE_DIR),
                  "source": str(source) if source else "", "python": sys.executable, "attempt": attempt.n}
        for p in self.state.phases:
            if p.id < phase.id and p.attempts:
                values[f"phase{p.id}"] = str(self.root / p.attempts[-1].dir)
        return values

    def resolved_evidence(self, phase: Phase, attempt: Attempt) -> list[EvidenceSpec]:
        values = self.context(phase, attempt)
        return [EvidenceSpec.model_validate(substitute(e.model_dump(), values)) for e in phase.evidence]

    def resolved_checks(self, phase: Phase, attempt: Attempt) -> list[tuple[str, str, dict[str, Any]]]:
        values = self.context(phase, attempt)
        return [(c.name, c.check, substitute(c.args, values)) for c in phase.checks]

    # -- the loop ------------------------------------------------------------------------------------

    def _tick_wall(self, attempt: Attempt | None = None, since: float | None = None) -> None:
        now = time.monotonic()
        self.state.wall_s = round(self._base_wall + now - self._t0, 3)
        if attempt is not None and since is not None:
            attempt.wall_s = round(attempt.wall_s + now - since, 3)

    def save(self) -> None:
        self._tick_wall()
        save(self.root, self.state)

    def run(self, command: str) -> CampaignState:
        with Lock(self.root):
            self.state.sessions.append(Session(command=command, pid=os.getpid()))
            self.state.status = "running"
            self.save()
            try:
                stop = False
                for phase in self.plan.phases:
                    ps = self.state.phase(phase.id)
                    if ps.status in ("done", "skipped"):
                        stop = stop or (ps.gate == "NO-GO" and phase.on_nogo == "stop")
                        continue
                    if stop:
                        ps.status, ps.note = "skipped", "an earlier phase ended NO-GO and its plan says stop"
                        self.save()
                        continue
                    self.run_phase(phase, ps)
                    stop = ps.gate == "NO-GO" and phase.on_nogo == "stop"
                    self.write_html()
                self.state.status = "done"
            except BaseException:
                self.state.status = "stopped"
                self.state.sessions[-1].ended, self.state.sessions[-1].ended_at = "stopped", now_iso()
                self.save()
                raise
            self.state.sessions[-1].ended, self.state.sessions[-1].ended_at = "finished", now_iso()
            self.save()
            self.finish()
        return self.state

    def run_phase(self, phase: Phase, ps: PhaseState) -> None:
        ps.status = "running"
        while True:
            if not ps.attempts:
                self.new_attempt(phase, ps, [])
            attempt = ps.attempts[-1]
            if attempt.status == "running":
                self.run_attempt(phase, ps, attempt)
            if attempt.gate == "GO" or len(ps.attempts) >= phase.max_attempts:
                break
            index, why_not = self.next_remedy(phase, ps)
            if index is None:
                ps.note = why_not
                break
            reports.archive(self.root, phase.id, attempt)
            applied = [phase.remedies[int(a.remedy["index"])] for a in ps.attempts if a.remedy]
            self.new_attempt(phase, ps, [*applied, phase.remedies[index]], remedy_index=index)
        ps.gate = ps.attempts[-1].gate
        ps.status = "done"
        ps.wall_s = round(sum(a.wall_s for a in ps.attempts), 3)
        self.save()
        self.say(f"phase {phase.id} ({phase.name}): {ps.gate} after {len(ps.attempts)} attempt(s)"
                 + (f"; {ps.note}" if ps.note else ""))

    def next_remedy(self, phase: Phase, ps: PhaseState) -> tuple[int | None, str]:
        """The index of the next remedy that addresses a failed check (remedies apply in order, each once)."""
        last = ps.attempts[-1]
        used = max((int(a.remedy["index"]) for a in ps.attempts if a.remedy), default=-1)
        failed = {c.name for c in last.checks if not c.passed}
        for index in range(used + 1, len(phase.remedies)):
            remedy = phase.remedies[index]
            if remedy.when and not failed & set(remedy.when):
                continue
            budget = self.plan.time_budget_min
            if budget is not None and self.state.wall_s + last.wall_s > budget * 60:
                return None, (f"remedy '{remedy.why}' not applied: another attempt (~{last.wall_s / 60:.1f} min) "
                              f"would pass the plan's time budget of {budget} min")
            return index, ""
        return None, "no remedy left that addresses the failed checks"

    def new_attempt(self, phase: Phase, ps: PhaseState, applied: list[Remedy], remedy_index: int | None = None
                    ) -> Attempt:
        n = len(ps.attempts) + 1
        folder = Path("phases") / f"phase{phase.id}" / f"attempt{n}"
        (self.root / folder).mkdir(parents=True, exist_ok=True)
        remedy = None if remedy_index is None else {"index": remedy_index, **applied[-1].model_dump()}
        attempt = Attempt(n=n, dir=str(folder), vars=self.user_vars(phase, applied), remedy=remedy)
        ps.attempts.append(attempt)
        self.save()
        self.say(f"phase {phase.id} ({phase.name}): attempt {n}" + (f", remedy: {remedy['why']}" if remedy else ""))
        return attempt

    def run_attempt(self, phase: Phase, ps: PhaseState, attempt: Attempt) -> None:
        since = time.monotonic()
        values = self.context(phase, attempt)
        phase_dir = self.root / attempt.dir
        if attempt.stage == "implement":
            for i, step in enumerate(phase.steps):
                if i < len(attempt.steps) and attempt.steps[i].status != "running":
                    continue
                log = phase_dir / "steps" / f"{i:02d}-{_slug(step.name)}.log"
                if i < len(attempt.steps):
                    kept = log.with_suffix(f".interrupted-{len(attempt.interruptions) + 1}.log")
                    if log.is_file():
                        log.rename(kept)
                    attempt.interruptions.append(f"step {step.name!r} was interrupted (started "
                                                 f"{attempt.steps[i].started_at}, its log kept as "
                                                 f"{kept.relative_to(self.root)}); run again {now_iso()}")
                args = substitute(step.bloodwork or step.python or [], values)
                record = StepRecord(name=step.name, argv=bloodwork_argv(args) if step.bloodwork else args)
                attempt.steps[i:i + 1] = [record]
                self._tick_wall(attempt, since)
                since = time.monotonic()
                self.save()
                self.say(f"  step {step.name}: {' '.join(args) if step.bloodwork or step.python else step.builtin}")
                attempt.steps[i] = run_step(step, args, phase_dir, self.root, log)
                self.say(f"    {attempt.steps[i].status} (exit {attempt.steps[i].exit}, {attempt.steps[i].wall_s} s)")
                self._tick_wall(attempt, since)
                since = time.monotonic()
                self.save()
            attempt.stage = "evidence"
        if attempt.stage == "evidence":
            self.evidence_stage(phase, ps, attempt)
            attempt.stage = "audit"
            self._tick_wall(attempt, since)
            since = time.monotonic()
            self.save()
        if attempt.stage == "audit":
            audited = self.audit(phase, attempt)
            blockers = len(audited.blockers())
            attempt.gate, attempt.blockers, attempt.findings = audited.gate, blockers, len(audited.findings)
            attempt.stage, attempt.status, attempt.ended_at = "done", "done", now_iso()
            self._tick_wall(attempt, since)
            self.save()
            self.say(f"  audit: {audited.gate} ({blockers} blocking of {len(audited.findings)} findings)")

    def _command(self, scratch: Path) -> Callable[[list[str], str], int]:
        def run(args: list[str], name: str) -> int:
            code, timed_out, _ = execute(bloodwork_argv(args), scratch / f"{_slug(name, limit=200)}.log", self.root)
            return -1 if code is None or timed_out else code
        return run

    def _check_context(self, scratch: Path) -> CheckContext:
        if scratch.exists():
            shutil.rmtree(scratch)
        scratch.mkdir(parents=True)
        return CheckContext(root=self.root, scratch=scratch, run_command=self._command(scratch))

    def evidence_stage(self, phase: Phase, ps: PhaseState, attempt: Attempt) -> None:
        phase_dir = self.root / attempt.dir
        ctx = self._check_context(phase_dir / "checks")
        attempt.checks = [CHECKS[check].evaluate(name, args, ctx)
                          for name, check, args in self.resolved_checks(phase, attempt)]
        figures, index, unreadable = reports.gather_evidence(self.resolved_evidence(phase, attempt), phase.id,
                                                             attempt.n, ctx)
        attempt.checks += unreadable
        atomic_write(phase_dir / reports.INDEX_FILE, json.dumps([e.model_dump() for e in index], indent=1))
        earlier = [{"n": a.n, "gate": a.gate, "report": f"{a.dir}/report.md", "audit": f"{a.dir}/audit.md"}
                   for a in ps.attempts if a is not attempt]
        reports.write_report(self.root, reports.PhaseReport(
            plan=self.plan.name, phase=phase.id, name=phase.name, goal=phase.goal, attempt=attempt.n,
            max_attempts=phase.max_attempts, vars=attempt.vars, remedy=attempt.remedy, steps=attempt.steps,
            checks=attempt.checks, figures=figures, evidence=index, earlier=earlier))

    def audit(self, phase: Phase, attempt: Attempt) -> AuditRecord:
        """Recompute and judge the phase's current report as it stands on disk."""
        md_path, js_path = reports.report_paths(self.root, phase.id)
        if not md_path.is_file() or not js_path.is_file():
            raise CampaignError(f"phase {phase.id} has no report to audit ({md_path.relative_to(self.root)})")
        md_text, js = md_path.read_text(), json.loads(js_path.read_text())
        ctx = self._check_context(self.root / attempt.dir / "audit")
        recounts, results = recompute(self.resolved_evidence(phase, attempt), self.resolved_checks(phase, attempt), ctx)
        md_rel, js_rel = str(md_path.relative_to(self.root)), str(js_path.relative_to(self.root))
        figure_checks, findings = compare_figures(md_text, js, recounts, md_rel, js_rel)
        # Failures of the evidence stage itself (unreadable evidence) are checks too: they stay blocking.
        results += [c for c in attempt.checks if c.check == "evidence_readable"]
        findings += compare_checks(md_text, js, results, md_rel, js_rel)
        findings += step_findings(attempt.steps)
        call = AuditorCall()
        extra: list[Finding] = []
        if self.state.auditor and phase.llm_audit:
            index = json.loads((self.root / attempt.dir / reports.INDEX_FILE).read_text()) \
                if (self.root / attempt.dir / reports.INDEX_FILE).is_file() else []
            name = f"phase{phase.id}.attempt{attempt.n}.call{self.state.auditor_calls}.json"
            raw = self.root / reports.AUDITS / "raw" / name
            call, extra = ask_auditor(self.state.auditor, auditor_messages(md_text, results, findings, index),
                                      self.state.auditor_calls, phase.id, raw, self.root)
            self.state.auditor_calls += 1
        deterministic, gate, ordered = judge(findings + extra, call)
        record = AuditRecord(phase=phase.id, attempt=attempt.n, deterministic_gate=deterministic, gate=gate,
                             findings=ordered, figures=figure_checks, checks=results, recounts=recounts, auditor=call)
        reports.write_audit(self.root, record)
        return record

    def reaudit(self, phase_ids: list[int] | None, command: str) -> list[AuditRecord]:
        """`campaign audit`: audit the current report of phases that ran, as the files stand now."""
        records = []
        with Lock(self.root):
            for phase in self.plan.phases:
                ps = self.state.phase(phase.id)
                if (phase_ids and phase.id not in phase_ids) or not ps.attempts:
                    continue
                attempt = ps.attempts[-1]
                if attempt.stage not in ("audit", "done"):
                    raise CampaignError(f"phase {phase.id} has not reached its audit; resume the campaign first")
                record = self.audit(phase, attempt)
                attempt.gate, attempt.blockers, attempt.findings = (record.gate, len(record.blockers()),
                                                                    len(record.findings))
                if ps.status == "done":
                    ps.gate = record.gate
                records.append(record)
                self.save()
            if self.state.status == "done":
                self.finish()  # the handover bundle shows the gates as they are now
            else:
                self.write_html()
        return records

    # -- outputs -------------------------------------------------------------------------------------

    def audits(self) -> dict[int, AuditRecord]:
        return reports.read_audits(self.root, self.state)

    def index(self) -> list[reports.IndexEntry]:
        return reports.read_index(self.root, self.state)

    def final_evidence(self) -> list[tuple[int, EvidenceSpec]]:
        out = []
        for phase in self.plan.phases:
            ps = self.state.phase(phase.id)
            if ps.attempts:
                out += [(phase.id, spec) for spec in self.resolved_evidence(phase, ps.attempts[-1])]
        return out

    def write_html(self, prefix: str = "") -> str:
        text = render_campaign(self.root, self.state, self.final_evidence(), self.audits(), self.index(), prefix)
        if not prefix:
            atomic_write(self.root / reports.HTML_FILE, text)
        return text

    def finish(self) -> Path:
        reports.write_index(self.root, self.index())
        self.write_html()
        return reports.write_handover(self.root, self.state, self.write_html(prefix="../"))


def _slug(text: str, limit: int = 60) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)[:limit]


def explain_plan(plan_ref: str, sets: list[str] | None = None) -> tuple[Plan, list[tuple[int, str, list[str]]]]:
    """The plan's steps as they would run first (vars substituted, directories shown as placeholders)."""
    plan = load_plan(resolve_plan(plan_ref))
    overrides = parse_sets(sets or [], plan)
    rows = []
    for phase in plan.phases:
        values: dict[str, Any] = {**plan.vars, **phase.vars}
        values |= {k: v for k, v in overrides.items() if k in values}
        values |= {"out": "DIR", "phase_root": f"DIR/phases/phase{phase.id}",
                   "phase_dir": f"DIR/phases/phase{phase.id}/attempt1", "plan_dir": "PLAN_DIR", "package": "PACKAGE",
                   "source": "SOURCE",
                   "python": sys.executable, "attempt": 1}
        values |= {f"phase{p.id}": f"DIR/phases/phase{p.id}/attemptN" for p in plan.phases if p.id < phase.id}
        for step in phase.steps:
            try:
                args = substitute(step.bloodwork or step.python or [], values)
            except PlanError as err:
                args = [f"<{err}>"]
            kind = "bloodwork" if step.bloodwork else "python" if step.python else f"builtin:{step.builtin}"
            rows.append((phase.id, f"{step.name} ({kind})", args))
    return plan, rows
