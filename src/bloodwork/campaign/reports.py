"""Phase reports, audit files and the handover bundle.

A phase report leads with its failures (failed checks and steps, then, once audited, every open finding)
and names every evidence path. Its figures are quoted in one table (`## Figures`) that the audit reads
back and recomputes; the gate block at its top is the only part rewritten after the audit, so a report
edited by hand is audited as it stands. Paths are relative to the campaign directory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from bloodwork.campaign.audit import AuditRecord, Finding
from bloodwork.campaign.checks import CheckContext, CheckResult, find_secrets
from bloodwork.campaign.evidence import (
    Figure,
    evidence_paths,
    fmt,
    read_figures,
    recount_description,
    source_file,
    tree_digest,
)
from bloodwork.campaign.plan import EvidenceSpec
from bloodwork.campaign.state import Attempt, CampaignState, StepRecord
from bloodwork.chronos.files import atomic_write, sha256_file
from bloodwork.chronos.run import now_iso

GATE_BEGIN, GATE_END = "<!-- gate:begin -->", "<!-- gate:end -->"
REPORTS, AUDITS, HANDOVER = "reports", "audits", "handover"
INDEX_FILE = "evidence_index.json"  # the campaign's (in its root) and each attempt's (in its folder)
HTML_FILE = "campaign.html"


class IndexEntry(BaseModel):
    phase: int
    attempt: int
    evidence: str
    kind: str
    path: str
    exists: bool
    files: int = 0
    bytes: int = 0
    sha256: str | None = Field(default=None, description="a file's sha256, or a folder's (sorted path+sha256 lines)")


class PhaseReport(BaseModel):
    plan: str
    phase: int
    name: str
    goal: str
    attempt: int
    max_attempts: int
    vars: dict[str, Any]
    remedy: dict[str, Any] | None
    steps: list[StepRecord]
    checks: list[CheckResult]
    figures: list[Figure]
    evidence: list[IndexEntry]
    earlier: list[dict[str, Any]]
    created_at: str = Field(default_factory=now_iso)


def report_paths(root: Path, phase: int) -> tuple[Path, Path]:
    return root / REPORTS / f"phase{phase}.md", root / REPORTS / f"phase{phase}.json"


def audit_paths(root: Path, phase: int) -> tuple[Path, Path]:
    return root / AUDITS / f"phase{phase}.json", root / AUDITS / f"phase{phase}.md"


def _code(items: list[str]) -> str:
    return ", ".join(f"`{i}`" for i in items) or "—"


def render_report(r: PhaseReport) -> str:
    failed_checks = [c for c in r.checks if not c.passed]
    failed_steps = [s for s in r.steps if s.status != "ok"]
    lines = [f"# Phase {r.phase}: {r.name} (attempt {r.attempt} of at most {r.max_attempts})", "",
             GATE_BEGIN, "**Gate: not audited yet.**", GATE_END, ""]
    if r.goal:
        lines += [f"Goal: {r.goal.strip()}", ""]
    lines += ["## Failures", ""]
    lines += [f"- check `{c.name}` FAILED: {c.detail} (expected {c.expected}); evidence: {_code(c.evidence)}"
              for c in failed_checks]
    lines += [f"- step `{s.name}` {s.status.upper()}: {s.note}; log: {_code([s.log] if s.log else [])}"
              for s in failed_steps]
    if not failed_checks and not failed_steps:
        lines.append("No check and no step failed in this attempt. That is not a verdict: the audit recomputes "
                     "every figure below from the raw files before it judges.")
    lines += ["", "## Checks", "", "Deterministic predicates over the raw files.", "",
              "| check | result | value | expected | evidence |", "|---|---|---|---|---|"]
    lines += [f"| `{c.name}` | {'PASS' if c.passed else 'FAIL'} | {fmt(c.value)} | {fmt(c.expected)} | "
              f"{_code(c.evidence[:6])}{' …' if len(c.evidence) > 6 else ''} |" for c in r.checks]
    if not r.checks:
        lines.append("| (none) | | | | |")
    lines += ["", "## Figures", "", "Each figure is read from the evidence file beside it; the audit recomputes it "
              "from the raw files by the command named.", "",
              "| figure | value | read from | recomputed by |", "|---|---|---|---|"]
    lines += [f"| `{f.id}` | {fmt(f.value)} | `{f.source}` | {f.recount} |" for f in r.figures]
    lines += ["", "## Steps", "", "| step | command | status | exit | wall s | log |", "|---|---|---|---|---|---|"]
    lines += [f"| {s.name} | `{fmt(' '.join(s.argv))}` | {s.status} | {s.exit} | {s.wall_s} | "
              f"{_code([s.log] if s.log else [])} |" for s in r.steps]
    lines += ["", "## Evidence", "", "| evidence | kind | path | exists | files | bytes | sha256 |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {e.evidence} | {e.kind} | `{e.path}` | {'yes' if e.exists else 'MISSING'} | {e.files} | {e.bytes} | "
              f"{(e.sha256 or '')[:16]} |" for e in r.evidence]
    lines += ["", "## Vars and remedy", "", f"- vars: {fmt(r.vars)}",
              f"- remedy applied: {r.remedy['why']} ({fmt(r.remedy['set'])})" if r.remedy else "- remedy: none"]
    if r.earlier:
        lines += ["", "## Earlier attempts", ""]
        lines += [f"- attempt {e['n']}: {e['gate']}, report `{e['report']}`, audit `{e['audit']}`" for e in r.earlier]
    return "\n".join(lines) + "\n"


def _write_pair(js: Path, md: Path, record: BaseModel, text: str) -> None:
    """A record as JSON and as Markdown, side by side."""
    js.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(js, record.model_dump_json(indent=1))
    atomic_write(md, text)


def write_report(root: Path, r: PhaseReport) -> None:
    md, js = report_paths(root, r.phase)
    _write_pair(js, md, r, render_report(r))


def _finding_line(f: Finding) -> str:
    found = "" if f.evidence_found is None else ("" if f.evidence_found else " (path not found)")
    fix = f"; fix: {f.fix}" if f.fix else ""
    return f"- [{f.severity}] ({f.source}) {f.claim}; evidence: {_code([f.evidence] if f.evidence else [])}{found}{fix}"


def gate_block(a: AuditRecord, root: Path) -> str:
    audit_md = audit_paths(root, a.phase)[1].relative_to(root)
    who = (f"LLM auditor `{a.auditor.spec}`: {a.auditor.status}" + (f", answered {a.auditor.gate}"
                                                                   if a.auditor.gate else "")
           if a.auditor.spec else "no LLM auditor was asked: this is the deterministic gate")
    open_ = [f for f in a.findings if f.severity in ("blocker", "major")]
    lines = [GATE_BEGIN, f"**Gate: {a.gate}** (recount and checks: {a.deterministic_gate}; {who}). "
             f"Audit: `{audit_md}`.", ""]
    if open_:
        lines += ["Open findings:", "", *[_finding_line(f) for f in open_]]
    else:
        lines.append("No blocking or major finding.")
    return "\n".join(lines + [GATE_END])


def set_gate_block(md_path: Path, block: str) -> None:
    """Replace only the gate block of a report (the rest is audited as it stands and left alone)."""
    text = md_path.read_text()
    start, end = text.find(GATE_BEGIN), text.find(GATE_END)
    text = block + "\n\n" + text if start < 0 or end < start else text[:start] + block + text[end + len(GATE_END):]
    atomic_write(md_path, text)


def render_audit(a: AuditRecord) -> str:
    lines = [f"# Audit of phase {a.phase}, attempt {a.attempt}: {a.gate}", "",
             f"Deterministic gate (recount + checks + steps): **{a.deterministic_gate}**. "
             + (f"LLM auditor `{a.auditor.spec}`: {a.auditor.status}"
                + (f" ({a.auditor.note})" if a.auditor.note else "")
                + (f", answered {a.auditor.gate}" if a.auditor.gate else "")
                + (f"; raw answer `{a.auditor.raw_file}`" if a.auditor.raw_file else "") + "."
                if a.auditor.spec else "No LLM auditor was asked: the gate is the deterministic one."), "",
             "## Findings", ""]
    lines += [_finding_line(f) for f in a.findings] or ["None."]
    bad = [f for f in a.figures if not f.ok]
    lines += ["", f"## Figures recomputed ({len(a.figures) - len(bad)} of {len(a.figures)} agree)", "",
              "| figure | quoted in | quoted | recomputed | by |", "|---|---|---|---|---|"]
    lines += [f"| `{f.figure}` | {f.where} | {f.quoted} | {f.recomputed if f.recomputed is not None else '—'} | "
              f"{f.recount} |" for f in bad + [f for f in a.figures if f.ok]]
    lines += ["", "## Recount commands", ""]
    lines += [f"- {r.evidence}: {r.command}" + (f" (log `{r.log}`)" if r.log else "")
              + (f"; problems: {'; '.join(r.problems)}" if r.problems else "") for r in a.recounts] or ["- none"]
    lines += ["", "## Checks evaluated again", "", "| check | result | value |", "|---|---|---|"]
    lines += [f"| `{c.name}` | {'PASS' if c.passed else 'FAIL'} | {fmt(c.value)} |" for c in a.checks]
    return "\n".join(lines) + "\n"


def write_audit(root: Path, a: AuditRecord) -> None:
    js, md = audit_paths(root, a.phase)
    _write_pair(js, md, a, render_audit(a))
    report_md = report_paths(root, a.phase)[0]
    if report_md.is_file():
        set_gate_block(report_md, gate_block(a, root))


def archive(root: Path, phase: int, attempt: Attempt) -> dict[str, Any]:
    """Move the phase's current report and audit into the attempt's folder before the next attempt."""
    folder = root / attempt.dir
    moved: dict[str, Any] = {"n": attempt.n, "gate": attempt.gate}
    for key, (src_md, src_js) in (("report", report_paths(root, phase)), ("audit", audit_paths(root, phase)[::-1])):
        for src in (src_md, src_js):
            if src.is_file():
                shutil.move(str(src), folder / f"{key}{src.suffix}")
        moved[key] = str((folder / f"{key}.md").relative_to(root))
    return moved


# -- the handover bundle ------------------------------------------------------------------------------

def write_index(root: Path, entries: list[IndexEntry]) -> Path:
    path = root / INDEX_FILE
    atomic_write(path, json.dumps([e.model_dump() for e in entries], indent=1))
    return path


def _summary(state: CampaignState) -> str:
    lines = [f"# Handover: campaign `{state.plan}`", "",
             f"Created {state.created_at}, status {state.status}, {state.wall_s / 60:.1f} min of wall time over "
             f"{len(state.sessions)} session(s). Auditor: {state.auditor or 'none (deterministic gates only)'}.", "",
             "| phase | name | gate | attempts | wall min |", "|---|---|---|---|---|"]
    order = sorted(state.phases, key=lambda p: (p.gate != "NO-GO", p.id))
    lines += [f"| {p.id} | {p.name} | {p.gate or p.status} | {len(p.attempts)} | {p.wall_s / 60:.1f} |" for p in order]
    lines += ["", "Files: `reports/` (one per phase, failures first), `audits/` (recount and verdict per phase), "
              f"`{INDEX_FILE}` (every evidence path with its sha256), `{HTML_FILE}` (everything on one page), "
              "`manifest.json` (sha256 of every file here). Raw evidence stays in the campaign directory "
              "(`phases/`), addressed by the index."]
    return "\n".join(lines) + "\n"


def write_handover(root: Path, state: CampaignState, html_text: str) -> Path:
    """Copy reports, audits, the index, plan, state and HTML into handover/ and write its manifest."""
    out = root / HANDOVER
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for folder in (REPORTS, AUDITS):
        if (root / folder).is_dir():
            shutil.copytree(root / folder, out / folder)
    for name in (INDEX_FILE, "plan.yaml", "campaign.json"):
        if (root / name).is_file():
            shutil.copy2(root / name, out / name)
    (out / HTML_FILE).write_text(html_text)
    (out / "README.md").write_text(_summary(state))
    scanned, leaks = find_secrets([out])
    files = {str(p.relative_to(out)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
             for p in sorted(out.rglob("*")) if p.is_file()}
    manifest = {"created_at": now_iso(), "campaign": str(root), "plan": state.plan, "gates": state.gates(),
                "secrets_scan": {"files": scanned, "leaks": leaks}, "files": files}
    atomic_write(out / "manifest.json", json.dumps(manifest, indent=1))
    return out


def gather_evidence(specs: list[EvidenceSpec], phase: int, attempt: int, ctx: CheckContext
                    ) -> tuple[list[Figure], list[IndexEntry], list[CheckResult]]:
    """Each evidence spec's figures, and an index of its files (each path once); a spec whose files cannot be
    read gives a failed `evidence_readable` check instead of figures."""
    figures: list[Figure] = []
    index: list[IndexEntry] = []
    unreadable: list[CheckResult] = []
    seen: set[str] = set()
    for spec in specs:
        try:
            values = read_figures(spec)
        except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
            values = {}
            unreadable.append(CheckResult(name=f"evidence:{spec.name}", check="evidence_readable", passed=False,
                                          detail=f"its files cannot be read: {err}",
                                          expected="the evidence files exist and parse",
                                          evidence=[ctx.rel(source_file(spec))]))
        figures += [Figure(id=f"{spec.name}.{k}", value=v, source=ctx.rel(source_file(spec)),
                           recount=recount_description(spec)) for k, v in values.items()]
        for path in evidence_paths(spec):
            rel = ctx.rel(path)
            if rel in seen:
                continue
            seen.add(rel)
            exists = path.exists()
            digest, files, size = tree_digest(path) if exists else (None, 0, 0)
            index.append(IndexEntry(phase=phase, attempt=attempt, evidence=spec.name, kind=spec.kind,
                                    path=rel, exists=exists, files=files, bytes=size, sha256=digest))
    return figures, index, unreadable


def read_index(root: Path, state: CampaignState) -> list[IndexEntry]:
    """The evidence index of every attempt so far."""
    entries = []
    for p in state.phases:
        for a in p.attempts:
            file = root / a.dir / INDEX_FILE
            if file.is_file():
                entries += [IndexEntry.model_validate(e) for e in json.loads(file.read_text())]
    return entries


def read_audits(root: Path, state: CampaignState) -> dict[int, AuditRecord]:
    """The current audit of each phase that has one."""
    out = {}
    for p in state.phases:
        path = audit_paths(root, p.id)[0]
        if path.is_file():
            out[p.id] = AuditRecord.model_validate_json(path.read_text())
    return out
