"""The smoke campaign end to end, as a user runs it: real subprocesses, a real SIGKILL, a real resume.

One campaign serves the module: `bloodwork campaign run smoke` with an auditor that answers garbage and a
fake API key in its environment is killed with SIGKILL while phase 2 runs a command, then resumed. The
tests read what it left, audit copies of it with planted figures and scripted auditors, and load its page
in Chromium over the DevTools protocol.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from bloodwork.campaign.plan import builtin_plans
from bloodwork.cli import app
from tests.campaign.cdp import Page, chromium

CLI = [sys.executable, "-m", "bloodwork.cli"]
SECRET_NAME, SECRET = "BLOODWORK_TEST_API_KEY", "sk-test-0123456789abcdef"
GARBAGE = ["I think the phase looks fine overall.", '{"gate": "MAYBE", "findings": []}', '{"gate": "GO", "findings"',
           "```json\n{\"verdict\": \"GO\"}\n```", "", "GO"]
PLANS = builtin_plans()["smoke"].parent
AUDITED = (1, 2, 3, 4, 5)  # the smoke plan asks the auditor about every phase but the baseline


@dataclass
class Campaign:
    out: Path
    killed_state: dict[str, Any]
    leftovers: list[str]
    resume: subprocess.CompletedProcess[str]
    phase1_before: dict[str, str]


def _state(out: Path) -> dict[str, Any]:
    return json.loads((out / "campaign.json").read_text())


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob(".journal.log"))}


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{proc.name}: {cmdline[:160]}")
    return found


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> Campaign:
    root = tmp_path_factory.mktemp("campaign")
    out = root / "smoke"
    auditor = root / "garbage.yaml"
    auditor.write_text(yaml.safe_dump(GARBAGE * 4))
    env = {**os.environ, SECRET_NAME: SECRET}
    with open(root / "run.log", "w") as log:
        proc = subprocess.Popen([*CLI, "campaign", "run", "smoke", "--out", str(out), "--auditor",
                                 f"scripted:{auditor}"], stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        deadline = time.monotonic() + 600
        while True:
            assert proc.poll() is None, (root / "run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "phase 2 never started"
            state = _state(out) if (out / "campaign.json").is_file() else {"phases": []}
            phase2 = next((p for p in state["phases"] if p["id"] == 2), {"attempts": []})
            if phase2["attempts"] and any(s["status"] == "running" for s in phase2["attempts"][0]["steps"]):
                break
            time.sleep(0.2)
        time.sleep(1.5)  # the step's command is up and working
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed = _state(out)
    leftovers = _processes_mentioning(str(out))
    for _ in range(50):  # a child dies of its parent-death signal a moment after the parent
        if not leftovers:
            break
        time.sleep(0.2)
        leftovers = _processes_mentioning(str(out))
    before = _digests(out / "phases" / "phase1")
    resume = subprocess.run([*CLI, "campaign", "resume", str(out)], capture_output=True, text=True, env=env,
                            timeout=900, check=False)
    return Campaign(out=out, killed_state=killed, leftovers=leftovers, resume=resume, phase1_before=before)


def test_kill9_mid_campaign_then_resume_continues_at_the_interrupted_phase(campaign: Campaign) -> None:
    killed = {p["id"]: p for p in campaign.killed_state["phases"]}
    assert killed[0]["status"] == killed[1]["status"] == "done"
    assert killed[2]["status"] == "running" and killed[3]["status"] == "pending"
    running = [s["name"] for s in killed[2]["attempts"][0]["steps"] if s["status"] == "running"]
    assert len(running) == 1
    assert campaign.leftovers == [], "the killed campaign's command outlived it"

    assert campaign.resume.returncode == 0, campaign.resume.stdout[-3000:] + campaign.resume.stderr[-2000:]
    state = _state(campaign.out)
    assert state["status"] == "done" and all(p["status"] == "done" for p in state["phases"])
    phases = {p["id"]: p for p in state["phases"]}
    assert len(phases[1]["attempts"]) == 1 and _digests(campaign.out / "phases" / "phase1") == campaign.phase1_before
    attempt = phases[2]["attempts"][0]
    assert len(phases[2]["attempts"]) == 1
    note = next(n for n in attempt["interruptions"] if running[0] in n)
    kept = campaign.out / note.split("its log kept as ")[1].split(")")[0]
    assert kept.is_file() and kept.read_text().startswith("$ ")  # the killed command's output is kept
    assert [s["status"] for s in attempt["steps"]] == ["ok"] * len(attempt["steps"])
    sessions = state["sessions"]
    assert len(sessions) == 2 and sessions[0]["ended"] is None and sessions[1]["ended"] == "finished"


def test_smoke_plan_end_to_end(campaign: Campaign) -> None:
    out = campaign.out
    state = _state(out)
    assert {p["id"]: p["gate"] for p in state["phases"]} == {i: "GO" for i in range(6)}, \
        (out / "audits").glob("*.md")
    for phase in range(6):
        report = (out / "reports" / f"phase{phase}.md").read_text()
        order = [report.index(h) for h in ("**Gate: GO**", "## Failures", "## Checks", "## Figures", "## Evidence")]
        assert order == sorted(order), phase
        data = json.loads((out / "reports" / f"phase{phase}.json").read_text())
        for entry in data["evidence"]:
            assert (out / entry["path"]).exists(), entry
        for check in data["checks"]:
            assert check["evidence"] and all((out / p).exists() for p in check["evidence"]), check
        audit = json.loads((out / "audits" / f"phase{phase}.json").read_text())
        assert audit["figures"] and all(f["ok"] for f in audit["figures"]), phase
        assert (out / "audits" / f"phase{phase}.md").is_file()
    checks = {c["name"]: c for p in range(6)
              for c in json.loads((out / "reports" / f"phase{p}.json").read_text())["checks"]}
    assert checks["deaths"]["value"]["deaths"] >= 1
    assert checks["struggle_chain"]["value"]["replay"] == "identical"
    assert checks["struggle_chain"]["value"]["chain_ticks"] >= 20
    assert checks["task_b"]["value"]["recoveries"]["verified_recovered"] >= 1
    assert checks["matrix_rows"]["value"]["rows"]["api"]["status"] == "unavailable"
    # four policies x two seeds: eight runs, none of them merged with another of the same id
    profile = json.loads(next((out / "phases" / "phase5").glob("attempt*/profile/context_decay_profile.json"))
                         .read_text())
    assert len(profile["runs"]) == 8 and len({r["eviction"]["policy"] for r in profile["runs"]}) == 4

    manifest = json.loads((out / "handover" / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        assert hashlib.sha256((out / "handover" / name).read_bytes()).hexdigest() == entry["sha256"], name
    names = set(manifest["files"])
    assert {"campaign.html", "evidence_index.json", "README.md", "reports/phase1.md", "audits/phase5.json"} <= names
    assert manifest["secrets_scan"]["leaks"] == []


def test_api_key_names_are_recorded_and_their_values_written_nowhere(campaign: Campaign) -> None:
    baseline = json.loads(next(campaign.out.glob("phases/phase0/attempt*/baseline.json")).read_text())
    assert SECRET_NAME in baseline["api_keys"]["present"]
    leaks = [str(p) for p in campaign.out.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaks == []


def test_an_auditor_that_answers_garbage_is_a_finding_and_the_campaign_goes_on(campaign: Campaign) -> None:
    for phase in range(6):
        audit = json.loads((campaign.out / "audits" / f"phase{phase}.json").read_text())
        if phase not in AUDITED:
            assert audit["auditor"]["status"] == "not asked"
            continue
        assert audit["auditor"]["status"] == "invalid", audit["auditor"]
        assert audit["gate"] == audit["deterministic_gate"] == "GO"
        finding = next(f for f in audit["findings"] if f["source"] == "auditor")
        assert finding["severity"] == "major" and "not a valid verdict" in finding["claim"]
        raw = json.loads((campaign.out / audit["auditor"]["raw_file"]).read_text())
        assert raw["completion"]["text"] in GARBAGE and raw["provenance"] == "scripted"
        assert "# Phase report" in raw["messages"][1]["content"]


def _copy(campaign: Campaign, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(campaign.out, copy, symlinks=True)
    return copy


def _auditor(tmp_path: Path, copy: Path, verdicts: list[dict[str, Any]]) -> str:
    """A scripted auditor whose next answers (by the campaign's call count) are these verdicts."""
    calls = _state(copy)["auditor_calls"]
    file = tmp_path / "auditor.yaml"
    file.write_text(yaml.safe_dump(["unused"] * calls + [json.dumps(v) for v in verdicts]))
    return f"scripted:{file}"


def test_a_planted_wrong_figure_gives_nogo_naming_it(campaign: Campaign, tmp_path: Path) -> None:
    copy = _copy(campaign, tmp_path)
    report = copy / "reports" / "phase1.md"
    text = report.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `sweep.deaths` |"))
    true_value = row.split("|")[2].strip()
    planted = row.replace(f"| {true_value} |", f"| {int(true_value) + 1} |", 1)
    report.write_text(text.replace(row, planted))
    go = {"gate": "GO", "findings": []}
    proc = subprocess.run([*CLI, "campaign", "audit", str(copy), "--phase", "1", "--auditor",
                           _auditor(tmp_path, copy, [go])], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "sweep.deaths" in proc.stdout
    audit = json.loads((copy / "audits" / "phase1.json").read_text())
    assert audit["deterministic_gate"] == audit["gate"] == "NO-GO"
    blocker = next(f for f in audit["findings"] if f["severity"] == "blocker")
    assert f"quoted as {int(true_value) + 1}" in blocker["claim"] and f"recomputed as {true_value}" in blocker["claim"]
    # the auditor said GO: it is kept as a note, it lifts nothing
    assert audit["auditor"]["gate"] == "GO"
    assert any("never lifts" in f["claim"] for f in audit["findings"])
    after = report.read_text()
    assert planted in after and "**Gate: NO-GO**" in after  # the report is audited as it stands, not rewritten
    assert _state(copy)["phases"][1]["gate"] == "NO-GO"
    (copy / "handover").rename(tmp_path / "old-handover")
    result = CliRunner().invoke(app, ["campaign", "report", str(copy)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((copy / "handover" / "manifest.json").read_text())
    assert manifest["gates"]["1"] == "NO-GO" and "reports/phase1.md" in manifest["files"]
    assert planted in (copy / "handover" / "reports" / "phase1.md").read_text()


def test_the_auditor_can_turn_go_into_nogo(campaign: Campaign, tmp_path: Path) -> None:
    copy = _copy(campaign, tmp_path)
    evidence = "phases/phase2/attempt1/task-a"
    verdict = {"gate": "NO-GO", "findings": [
        {"severity": "major", "claim": "Task A's only recovery follows an injected fault", "evidence": evidence,
         "fix": "run Task A under chaos off as well"},
        {"severity": "minor", "claim": "cites a file that does not exist", "evidence": "no/such/file", "fix": "-"}]}
    proc = subprocess.run([*CLI, "campaign", "audit", str(copy), "--phase", "2", "--auditor",
                           _auditor(tmp_path, copy, [verdict])], capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    audit = json.loads((copy / "audits" / "phase2.json").read_text())
    assert audit["deterministic_gate"] == "GO" and audit["gate"] == "NO-GO"
    claims = {f["claim"]: f for f in audit["findings"] if f["source"] == "auditor"}
    assert claims["Task A's only recovery follows an injected fault"]["evidence_found"] is True
    assert claims["cites a file that does not exist"]["evidence_found"] is False


@pytest.mark.skipif(chromium() is None, reason="chromium is not installed (make setup installs it when root)")
def test_campaign_page_in_chromium(campaign: Campaign, tmp_path: Path) -> None:
    page_file = campaign.out / "campaign.html"
    html = page_file.read_text()
    assert "http://" not in html and "https://" not in html
    pngs = 1 + len([f for f in json.loads(next(campaign.out.glob("phases/phase5/attempt*/profile/"
                                                                  "context_decay_profile.json")).read_text())["files"]
                    if f.endswith(".png")])
    page = Page()
    try:
        page.load(page_file)
        sections = page.evaluate("Array.from(document.querySelectorAll('section')).map(s => [s.id, "
                                 "s.querySelectorAll('table, img, ul, p').length])")
        images = page.evaluate("Array.from(document.images).map(i => [i.src.slice(0, 22), i.complete, "
                               "i.naturalWidth])")
        deaths = page.evaluate("document.querySelectorAll('#deaths tbody tr').length")
        gates = page.evaluate("Array.from(document.querySelectorAll('#phases .go, #phases .nogo'))"
                              ".map(e => e.textContent)")
        page.screenshot(tmp_path / "campaign.png")
        errors, requests = page.errors(), page.requests()
    finally:
        page.close()
    assert errors == []
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    assert [s[0] for s in sections] == ["failures", "phases", "deaths", "matrix", "heatmaps", "dataset", "evidence"]
    assert all(n > 0 for _, n in sections), sections
    assert len(images) == pngs and all(src == "data:image/png;base64," and ok and w > 100 for src, ok, w in images)
    assert deaths >= 1 and gates == ["GO"] * 6
    shot = tmp_path / "campaign.png"
    assert shot.stat().st_size > 50_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fix_loop_applies_remedies_and_keeps_every_attempt(tmp_path: Path) -> None:
    plan = {"name": "fix-loop", "vars": {"ticks": 12},
            "phases": [
                {"id": 1, "name": "dies only with enough ticks", "max_attempts": 2,
                 "steps": [{"name": "sweep", "bloodwork": [
                     "sweep", "--tasks", "long-haul/ledger", "--models", f"scripted:{PLANS}/smoke/struggler.py",
                     "--chaos", "off", "--seeds", "0", "--ticks", "{ticks}", "--out", "{phase_dir}/sweep"]}],
                 "checks": [{"check": "deaths", "runs": "{phase_dir}/sweep", "min": 1}],
                 "remedies": [{"why": "more ticks", "set": {"ticks": 60}, "when": ["deaths"]}]},
                {"id": 2, "name": "asks for a command the product lacks", "on_nogo": "stop",
                 "steps": [{"name": "future", "bloodwork": ["no-such-command", "--flag"]}]},
                {"id": 3, "name": "never reached", "steps": [{"name": "list", "bloodwork": ["tasks", "list"]}]}]}
    file = tmp_path / "plan.yaml"
    file.write_text(yaml.safe_dump(plan))
    out = tmp_path / "c"
    proc = subprocess.run([*CLI, "campaign", "run", str(file), "--out", str(out)], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    state = _state(out)
    first, second = state["phases"][0]["attempts"]
    assert first["gate"] == "NO-GO" and first["vars"]["ticks"] == 12 and first["remedy"] is None
    assert [c["passed"] for c in first["checks"]] == [False]
    assert second["gate"] == "GO" and second["vars"]["ticks"] == 60 and second["remedy"]["why"] == "more ticks"
    assert state["phases"][0]["gate"] == "GO"
    for kept in ("report.md", "report.json", "audit.md", "audit.json", "sweep"):
        assert (out / first["dir"] / kept).exists(), kept
    assert "attempt 2 of at most 2" in (out / "reports" / "phase1.md").read_text()
    assert "attempt 1: NO-GO" in (out / "reports" / "phase1.md").read_text()
    phase2 = state["phases"][1]
    assert phase2["gate"] == "NO-GO" and phase2["attempts"][0]["steps"][0]["exit"] == 2
    audit = json.loads((out / "audits" / "phase2.json").read_text())
    assert any("step `future` failed" in f["claim"] for f in audit["findings"] if f["severity"] == "blocker")
    assert state["phases"][2]["status"] == "skipped" and state["status"] == "done"
