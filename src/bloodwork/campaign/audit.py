"""The audit of one phase attempt: recompute, then judge.

1. Every figure the phase report quotes (its Markdown table and its JSON) is recomputed through the
   product's own recount path (`evidence.recount`); a figure quoted otherwise than recomputed, or one
   that cannot be recomputed, is a blocking finding that names it.
2. Every check is evaluated again over the raw files and compared with what the report quotes.
3. A failed check or step is a blocking finding. No blocking finding: the deterministic gate is GO.
4. With an auditor (any oracle spec), the model reads the report, the check results and the evidence
   index and answers a JSON verdict (`AuditVerdict`). It may add findings and turn GO into NO-GO, never
   the reverse. Its raw answer is kept; an answer that is not a valid verdict is a finding, not a crash.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bloodwork.campaign.checks import CHECKS, CheckContext, CheckResult
from bloodwork.campaign.evidence import Recounted, fmt, recount
from bloodwork.campaign.plan import EvidenceSpec
from bloodwork.campaign.state import Gate, StepRecord
from bloodwork.chronos.run import now_iso

Severity = Literal["blocker", "major", "minor", "info"]
SEVERITY_ORDER = {"blocker": 0, "major": 1, "minor": 2, "info": 3}
MAX_PROMPT_CHARS = 24_000
AUDITOR_TOKENS = 1024


class Finding(BaseModel):
    severity: Severity
    claim: str
    evidence: str = ""
    fix: str = ""
    source: Literal["recount", "check", "step", "auditor", "campaign"]
    evidence_found: bool | None = Field(default=None, description="auditor findings: does the path exist")


class VerdictFinding(BaseModel):
    model_config = ConfigDict(extra="forbid")

    severity: Severity
    claim: str = Field(min_length=1)
    evidence: str = Field(description="path of the raw evidence, relative to the campaign directory")
    fix: str


class AuditVerdict(BaseModel):
    """What an LLM auditor must answer: one JSON object, nothing else."""

    model_config = ConfigDict(extra="forbid")

    gate: Literal["GO", "NO-GO"]
    findings: list[VerdictFinding]


class FigureCheck(BaseModel):
    figure: str
    where: str
    quoted: str
    recomputed: str | None
    ok: bool
    recount: str


class AuditorCall(BaseModel):
    spec: str | None = None
    status: Literal["not asked", "valid", "invalid", "failed"] = "not asked"
    gate: Gate | None = None
    parse: str | None = None
    raw_file: str | None = None
    note: str = ""


class AuditRecord(BaseModel):
    phase: int
    attempt: int
    created_at: str = Field(default_factory=now_iso)
    deterministic_gate: Gate
    gate: Gate
    findings: list[Finding]
    figures: list[FigureCheck]
    checks: list[CheckResult]
    recounts: list[Recounted]
    auditor: AuditorCall

    def blockers(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "blocker"]


# -- reading what the report quotes -------------------------------------------------------------------

_CELL = re.compile(r"(?<!\\)\|")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in _CELL.split(line.strip())[1:-1]]


def quoted_tables(markdown: str) -> dict[str, dict[str, list[str]]]:
    """Rows of the report's tables by section heading, keyed by their first cell (a `code` name)."""
    tables: dict[str, dict[str, list[str]]] = {}
    section = ""
    for line in markdown.splitlines():
        if line.startswith("## "):
            section = line[3:].strip().lower()
        elif line.startswith("| `") and section:
            cells = _cells(line)
            if cells:
                tables.setdefault(section, {})[cells[0].strip("`")] = cells[1:]
    return tables


def compare_figures(report_md: str, report_json: dict[str, Any], recounts: list[Recounted],
                    md_name: str, json_name: str) -> tuple[list[FigureCheck], list[Finding]]:
    recomputed: dict[str, tuple[Any, str]] = {}
    failed: dict[str, Recounted] = {}
    for r in recounts:
        if r.problems:
            failed[r.evidence] = r
        for key, value in r.values.items():
            recomputed[f"{r.evidence}.{key}"] = (value, r.command)
    quotes: list[tuple[str, str, str]] = [(fid, md_name, cells[0]) for fid, cells in
                                          quoted_tables(report_md).get("figures", {}).items() if cells]
    quotes += [(f["id"], json_name, fmt(f["value"])) for f in report_json.get("figures", [])]
    checks: list[FigureCheck] = []
    findings: list[Finding] = []
    for fid, where, quoted in quotes:
        evidence = fid.split(".", 1)[0]
        if fid in recomputed:
            value, how = recomputed[fid]
            ok = fmt(value) == quoted
            checks.append(FigureCheck(figure=fid, where=where, quoted=quoted, recomputed=fmt(value), ok=ok,
                                      recount=how))
            if not ok:
                findings.append(Finding(
                    severity="blocker", source="recount", evidence=where,
                    claim=f"figure `{fid}` is quoted as {quoted} in {where} but recomputed as {fmt(value)} by {how}",
                    fix="quote the recomputed value, or find why the evidence file differs from its raw files"))
            continue
        how = failed[evidence].command if evidence in failed else "no recount gives this figure"
        checks.append(FigureCheck(figure=fid, where=where, quoted=quoted, recomputed=None, ok=False, recount=how))
        if evidence not in failed:
            findings.append(Finding(severity="blocker", source="recount", evidence=where,
                                    claim=f"figure `{fid}` quoted in {where} cannot be recomputed ({how})",
                                    fix="quote only figures of the phase's declared evidence"))
    for name, r in failed.items():
        findings.append(Finding(severity="blocker", source="recount", evidence=r.log or "",
                                claim=f"the recount of evidence `{name}` failed: {'; '.join(r.problems)}",
                                fix="repair or regenerate the evidence from its raw files, then audit again"))
    return checks, findings


def compare_checks(report_md: str, report_json: dict[str, Any], results: list[CheckResult],
                   md_name: str, json_name: str) -> list[Finding]:
    findings = []
    quoted_md = quoted_tables(report_md).get("checks", {})
    quoted_json = {c["name"]: c for c in report_json.get("checks", [])}
    for r in results:
        verdict = "PASS" if r.passed else "FAIL"
        for where, quote in ((md_name, quoted_md.get(r.name)), (json_name, quoted_json.get(r.name))):
            if quote is None:
                findings.append(Finding(severity="blocker", source="recount", evidence=where,
                                        claim=f"check `{r.name}` is missing from {where}",
                                        fix="the report must quote every check of the phase"))
                continue
            said = (quote[0], quote[1]) if isinstance(quote, list) and len(quote) > 1 else (
                ("PASS" if quote.get("passed") else "FAIL", fmt(quote.get("value"))) if isinstance(quote, dict)
                else ("", ""))
            if said != (verdict, fmt(r.value)):
                findings.append(Finding(
                    severity="blocker", source="recount", evidence=where,
                    claim=f"check `{r.name}` is quoted as {said[0]} {said[1]} in {where} but evaluates to "
                          f"{verdict} {fmt(r.value)} on the raw files now",
                    fix="quote the check as the raw files give it"))
        if not r.passed:
            findings.append(Finding(severity="blocker", source="check", evidence=", ".join(r.evidence[:5]),
                                    claim=f"check `{r.name}` failed: {r.detail} (expected {r.expected})",
                                    fix="see the phase's remedies"))
    return findings


def step_findings(steps: list[StepRecord]) -> list[Finding]:
    return [Finding(severity="blocker", source="step", evidence=s.log or "",
                    claim=f"step `{s.name}` {s.status}: {s.note or s.status}",
                    fix="make the command succeed (an unknown command means the plan asks for a feature the "
                        "product lacks)")
            for s in steps if s.status != "ok"]


def recompute(evidence: list[EvidenceSpec], checks: list[tuple[str, str, dict[str, Any]]], ctx: CheckContext
              ) -> tuple[list[Recounted], list[CheckResult]]:
    recounts = [recount(spec, ctx.scratch, ctx.run_command) for spec in evidence]
    results = [CHECKS[check].evaluate(name, args, ctx) for name, check, args in checks]
    return recounts, results


# -- the LLM auditor --------------------------------------------------------------------------------

AUDITOR_SYSTEM = """You audit one phase of a bloodwork campaign. bloodwork runs LLM agents under seeded chaos and \
harvests failures as evidence. You receive the phase report, the results of its acceptance checks (each computed \
from raw files), the findings of the deterministic recount, and the index of its evidence files.

Answer with ONE JSON object and nothing else: "gate" is GO or NO-GO; "findings" is a list, each with "severity" \
(blocker, major, minor or info), "claim", "evidence" (a path from the evidence index below) and "fix". An example \
from another campaign, to show the form only:
{"gate": "NO-GO", "findings": [{"severity": "blocker", "claim": "the report counts 12 deaths, the deaths folder \
holds 9 bundles", "evidence": "phases/phase1/attempt2/evidence/deaths", "fix": "quote the number of bundles"}]}

Rules: every claim names the path of its raw evidence. Say NO-GO when a claim of the report is not supported by \
its evidence, when results contradict the phase's goal, or when a failure was prettified; a blocker finding means \
NO-GO. A headline such as "100 % green" is itself a finding. Do not repeat the deterministic findings."""


def auditor_messages(report_md: str, checks: list[CheckResult], findings: list[Finding],
                     index: list[dict[str, Any]]) -> list[dict[str, str]]:
    def clip(text: str, limit: int) -> str:
        return text if len(text) <= limit else text[:limit] + f"\n[... {len(text) - limit} more characters]"

    body = ("# Phase report\n\n" + clip(report_md, MAX_PROMPT_CHARS // 2)
            + "\n\n# Check results (JSON)\n\n" + clip(json.dumps([c.model_dump() for c in checks], indent=1),
                                                      MAX_PROMPT_CHARS // 4)
            + "\n\n# Deterministic findings\n\n" + ("\n".join(f"- [{f.severity}] {f.claim}" for f in findings)
                                                    or "none")
            + "\n\n# Evidence index\n\n" + clip("\n".join(f"- {e['path']} ({e['kind']}, {e['files']} files)"
                                                          for e in index), MAX_PROMPT_CHARS // 4))
    return [{"role": "system", "content": AUDITOR_SYSTEM}, {"role": "user", "content": body}]


def parse_verdict(text: str) -> tuple[AuditVerdict | None, str, str]:
    """(verdict, how it was read: strict | fenced | invalid, why not) from the raw text."""
    candidates = [("strict", text.strip())]
    fence = re.search(r"```(?:json)?\s*(\{.*\})\s*```", text, re.S)
    if fence:
        candidates.append(("fenced", fence.group(1)))
    why = "empty answer" if not text.strip() else ""
    for how, candidate in candidates:
        try:
            return AuditVerdict.model_validate_json(candidate), how, ""
        except ValidationError as err:
            first = err.errors()[0]
            why = why or f"{'.'.join(str(p) for p in first['loc']) or 'answer'}: {first['msg']}"
    return None, "invalid", why


def ask_auditor(spec: str, messages: list[dict[str, str]], call_index: int, phase: int, raw_file: Path,
                root: Path) -> tuple[AuditorCall, list[Finding]]:
    """One auditor call; its raw answer is written to `raw_file` whatever happens."""
    from bloodwork.matrix.run import oracle_options
    from bloodwork.oracles.base import CallInfo, OracleConfigError
    from bloodwork.oracles.registry import make_oracle

    raw_file.parent.mkdir(parents=True, exist_ok=True)
    rel = str(raw_file.relative_to(root))
    record: dict[str, Any] = {"spec": spec, "call_index": call_index, "phase": phase, "at": now_iso(),
                              "messages": messages, "schema": AuditVerdict.model_json_schema()}
    try:
        oracle = make_oracle(spec, **oracle_options(spec, AUDITOR_TOKENS))
    except OracleConfigError as err:
        record["error"] = str(err)
        raw_file.write_text(json.dumps(record, indent=1))
        return AuditorCall(spec=spec, status="failed", raw_file=rel, note=str(err)), [Finding(
            severity="major", source="auditor", evidence=rel, claim=f"the auditor {spec} could not be used: {err}",
            fix="give a usable --auditor spec (and its key), or audit without one")]
    try:
        completion = oracle.complete(messages, AuditVerdict.model_json_schema(),
                                     call=CallInfo(run_id="campaign-audit", tick=phase, call_index=call_index))
    finally:
        oracle.close()
    record |= {"provenance": oracle.provenance, "backend": oracle.describe(), "completion": completion.model_dump()}
    raw_file.write_text(json.dumps(record, indent=1))
    if completion.error:
        return AuditorCall(spec=spec, status="failed", raw_file=rel, note=completion.error), [Finding(
            severity="major", source="auditor", evidence=rel, claim=f"the auditor call failed: {completion.error}",
            fix="audit again when the model is reachable; the deterministic gate stands meanwhile")]
    verdict, how, why = parse_verdict(completion.text)
    if verdict is None:
        return AuditorCall(spec=spec, status="invalid", parse=how, raw_file=rel, note=why), [Finding(
            severity="major", source="auditor", evidence=rel,
            claim=f"the auditor's answer is not a valid verdict ({why}); raw answer kept",
            fix="audit again, or with another auditor; the deterministic gate stands")]
    findings = [Finding(severity=f.severity, claim=f.claim, evidence=f.evidence, fix=f.fix, source="auditor",
                        evidence_found=bool(f.evidence) and (root / f.evidence.split(":")[0].strip()).exists())
                for f in verdict.findings]
    return AuditorCall(spec=spec, status="valid", gate=verdict.gate, parse=how, raw_file=rel), findings


def judge(findings: list[Finding], auditor: AuditorCall) -> tuple[Gate, Gate, list[Finding]]:
    """(deterministic gate, final gate, findings sorted blockers first). The auditor only ever adds."""
    own = [f for f in findings if f.source != "auditor"]
    deterministic: Gate = "NO-GO" if any(f.severity == "blocker" for f in own) else "GO"
    final: Gate = "NO-GO" if deterministic == "NO-GO" or auditor.gate == "NO-GO" or any(
        f.severity == "blocker" for f in findings) else "GO"
    extra = []
    if auditor.gate == "GO" and deterministic == "NO-GO":
        extra.append(Finding(severity="info", source="campaign", evidence=auditor.raw_file or "",
                             claim="the auditor answered GO; an auditor never lifts the deterministic NO-GO",
                             fix=""))
    if auditor.gate == "NO-GO" and not any(f.severity == "blocker" for f in findings):
        extra.append(Finding(severity="blocker", source="auditor", evidence=auditor.raw_file or "",
                             claim="the auditor answered NO-GO", fix="see the auditor's findings"))
    ordered = sorted(findings + extra, key=lambda f: (SEVERITY_ORDER[f.severity], f.source))
    return deterministic, final, ordered
