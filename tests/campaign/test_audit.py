"""The audit's rules on small inputs: what counts as a verdict, who may change a gate, how quotes are read back."""

from __future__ import annotations

import json

import pytest

from bloodwork.campaign.audit import AuditorCall, Finding, compare_figures, judge, parse_verdict
from bloodwork.campaign.evidence import Recounted, fmt

VALID = {"gate": "NO-GO", "findings": [{"severity": "blocker", "claim": "c", "evidence": "p", "fix": "f"}]}


@pytest.mark.parametrize(("text", "how"), [
    (json.dumps(VALID), "strict"),
    ("Here is my verdict:\n```json\n" + json.dumps(VALID) + "\n```\n", "fenced"),
])
def test_a_verdict_is_one_json_object_strictly_or_in_one_fence(text: str, how: str) -> None:
    verdict, read, why = parse_verdict(text)
    assert verdict is not None and verdict.gate == "NO-GO" and read == how and why == ""


@pytest.mark.parametrize(("text", "why"), [
    ("", "empty answer"),
    ("GO", "answer"),
    ('{"gate": "MAYBE", "findings": []}', "gate"),
    ('{"gate": "GO"}', "findings"),
    ('{"gate": "GO", "findings": [], "confidence": 0.9}', "confidence"),
    ('{"gate": "GO", "findings": [{"severity": "huge", "claim": "c", "evidence": "p", "fix": "f"}]}', "severity"),
])
def test_anything_else_is_invalid_and_says_why(text: str, why: str) -> None:
    verdict, read, reason = parse_verdict(text)
    assert verdict is None and read == "invalid" and why in reason


def _finding(severity: str, source: str = "check") -> Finding:
    return Finding(severity=severity, claim="x", source=source)  # type: ignore[arg-type]


def test_the_auditor_can_add_a_nogo_but_never_lift_one() -> None:
    det, final, _ = judge([], AuditorCall(spec="s", status="valid", gate="NO-GO"))
    assert (det, final) == ("GO", "NO-GO")
    det, final, findings = judge([_finding("blocker")], AuditorCall(spec="s", status="valid", gate="GO"))
    assert (det, final) == ("NO-GO", "NO-GO") and any("never lifts" in f.claim for f in findings)
    det, final, _ = judge([_finding("blocker", "auditor")], AuditorCall(spec="s", status="valid", gate="GO"))
    assert (det, final) == ("GO", "NO-GO")  # a blocking finding of the auditor blocks, whatever its gate says
    det, final, _ = judge([_finding("major", "auditor")], AuditorCall(spec="s", status="invalid"))
    assert (det, final) == ("GO", "GO")  # an invalid answer is a finding, the deterministic gate stands


def test_a_figure_planted_in_the_json_alone_is_caught_and_named() -> None:
    md = "## Figures\n\n| figure | value | read from | recomputed by |\n|---|---|---|---|\n" \
         "| `sweep.deaths` | 2 | `f` | extract |\n| `sweep.note` | a\\|b | `f` | extract |\n"
    js = {"figures": [{"id": "sweep.deaths", "value": 3}, {"id": "sweep.note", "value": "a|b"}]}
    recount = [Recounted(evidence="sweep", command="bloodwork extract", values={"deaths": 2, "note": "a|b"},
                         problems=[])]
    checks, findings = compare_figures(md, js, recount, "r.md", "r.json")
    assert [(c.figure, c.where, c.ok) for c in checks] == [
        ("sweep.deaths", "r.md", True), ("sweep.note", "r.md", True), ("sweep.deaths", "r.json", False),
        ("sweep.note", "r.json", True)]
    assert len(findings) == 1 and "`sweep.deaths` is quoted as 3 in r.json but recomputed as 2" in findings[0].claim
    assert fmt("a|b") == "a\\|b"


def test_a_failed_recount_blocks_once_and_an_unknown_figure_blocks() -> None:
    md = "## Figures\n\n| `m.rows` | 4 | `f` | recount |\n| `other.x` | 1 | `f` | - |\n"
    recount = [Recounted(evidence="m", command="bloodwork matrix recount d", values={}, problems=["exited 1"])]
    checks, findings = compare_figures(md, {}, recount, "r.md", "r.json")
    assert not any(c.ok for c in checks)
    claims = [f.claim for f in findings]
    assert sum("recount of evidence `m` failed" in c for c in claims) == 1
    assert any("`other.x` quoted in r.md cannot be recomputed" in c for c in claims)


def test_evidence_that_cannot_be_read_is_a_recount_problem_not_a_crash(tmp_path) -> None:
    from bloodwork.campaign.evidence import recount
    from bloodwork.campaign.plan import EvidenceSpec

    file = tmp_path / "baseline.json"
    file.write_text(json.dumps({"git": {"available": False}}))
    never = [EvidenceSpec(name="b", kind="json", file=str(file), figures={"sha": "/git/sha"}),
             EvidenceSpec(name="d", kind="dataset", dir=str(tmp_path / "missing")),
             EvidenceSpec(name="e", kind="extract", inputs=[str(tmp_path)], out=str(tmp_path / "none"))]
    results = [recount(spec, tmp_path, lambda argv, name: 1) for spec in never]
    assert [r.values for r in results] == [{}, {}, {}]
    assert "/git/sha (no 'sha')" in results[0].problems[0] and "cannot be read" in results[1].problems[0]
    assert "exited 1" in results[2].problems[0]
