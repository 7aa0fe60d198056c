"""One self-contained HTML page per campaign (and per demo sweep): inline CSS, images as data: URIs, no
script and no network request; links to raw evidence are relative paths on disk.

The page leads with what failed: NO-GO phases and open findings first, then the phase table, deaths,
the model matrix, the heatmaps, the dataset and the evidence. There is no pass-rate headline.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bloodwork.campaign.audit import AuditRecord
from bloodwork.campaign.plan import EvidenceSpec
from bloodwork.campaign.reports import IndexEntry, audit_paths, report_paths
from bloodwork.campaign.state import CampaignState, PhaseState
from bloodwork.chronos.run import now_iso

CAMPAIGN_SECTIONS = ("failures", "phases", "deaths", "matrix", "heatmaps", "dataset", "evidence")
SWEEP_SECTIONS = ("failures", "runs", "traps", "evidence")

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2327;background:#f6f7f7}
header{background:#1d2327;color:#fff;padding:18px 28px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:2px 0;color:#c3c4c7}main{padding:8px 28px 40px;max-width:1400px}
section{background:#fff;border:1px solid #dcdcde;border-radius:6px;margin:18px 0;padding:10px 18px 16px}
h2{font-size:17px;margin:8px 0 10px}table{border-collapse:collapse;width:100%;margin:6px 0 10px;font-size:13px}
th,td{border-bottom:1px solid #e5e5e5;padding:5px 8px;text-align:left;vertical-align:top}th{background:#f0f0f1}
td code,li code{font-size:12px;word-break:break-all}
.nogo{background:#d63638;color:#fff;padding:1px 7px;border-radius:3px}
.go{background:#00a32a;color:#fff;padding:1px 7px;border-radius:3px}.none{color:#787c82}
.blocker{color:#b32d2e;font-weight:600}.major{color:#996800;font-weight:600}
figure{margin:10px 0 18px}figure img{max-width:100%;border:1px solid #dcdcde}figcaption{color:#50575e;font-size:12px}
"""


def esc(value: Any) -> str:
    return html.escape("—" if value is None else str(value))


def gate_badge(gate: str | None) -> str:
    if gate is None:
        return '<span class="none">not judged</span>'
    return f'<span class="{"go" if gate == "GO" else "nogo"}">{esc(gate)}</span>'


def link(path: str, prefix: str, text: str | None = None) -> str:
    return f'<a href="{html.escape(prefix + path, quote=True)}"><code>{esc(text or path)}</code></a>'


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], empty: str) -> str:
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="none">{esc(empty)}</p>'
    return "<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + f"</tr></thead><tbody>{body}" \
        "</tbody></table>"


def image(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img alt="{html.escape(caption, quote=True)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{esc(title)}</h2>{body}</section>'


def page(title: str, subtitle: list[str], sections: list[str]) -> str:
    sub = "".join(f"<p>{s}</p>" for s in subtitle)
    return ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body><header><h1>{esc(title)}</h1>{sub}"
            f"</header><main>{''.join(sections)}</main></body></html>\n")


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def deaths_rows(report_file: Path, root: Path, prefix: str) -> list[list[str]]:
    data = json.loads(report_file.read_text())
    bundles = report_file.parent / "deaths"
    return [[link(_rel(bundles / d["run_id"], root), prefix, d["run_id"]), esc(d["cause"]), esc(d["tick"]),
             esc(d.get("chaos")), esc(d.get("provenance")), esc(d.get("model"))] for d in data["deaths"]]


DEATH_HEADERS = ("run (death bundle)", "cause", "tick", "chaos", "provenance", "model")


def _rate(r: dict[str, Any] | None) -> str:
    if not r or r.get("rate") is None:
        return "—"
    return f"{r['rate']:.0%} [{r['ci95'][0]:.0%}, {r['ci95'][1]:.0%}] ({r['k']}/{r['n']})"


# -- the campaign page --------------------------------------------------------------------------------

def render_campaign(root: Path, state: CampaignState, evidence: list[tuple[int, EvidenceSpec]],
                    audits: dict[int, AuditRecord], index: list[IndexEntry], prefix: str = "") -> str:
    """`evidence`: the evidence items of each phase's last attempt, their paths resolved; `prefix` is put
    before every link (e.g. '../' for the copy in handover/)."""
    phases = sorted(state.phases, key=lambda p: (p.gate != "NO-GO", p.status != "done", p.id))
    nogo = [p for p in state.phases if p.gate == "NO-GO"]
    subtitle = [f"plan {esc(state.plan)} · {esc(state.status)} · {state.wall_s / 60:.1f} min wall time · "
                f"{len(state.sessions)} session(s) · auditor {esc(state.auditor or 'none: deterministic gates')}",
                f"{len(nogo)} of {len(state.phases)} phases NO-GO, "
                f"{sum(p.gate == 'GO' for p in state.phases)} GO, "
                f"{sum(p.gate is None for p in state.phases)} not judged · generated {esc(now_iso())}"]

    failures = _open_findings(phases, audits, prefix)
    phase_rows = _phase_rows(phases, root, prefix)
    death_rows, matrix_parts, heat_parts, data_parts = _evidence_parts(evidence, root, prefix)
    ev_rows = [[esc(e.phase), esc(e.attempt), esc(e.evidence), esc(e.kind),
                link(e.path, prefix) if e.exists else f"<code>{esc(e.path)}</code> MISSING", esc(e.files),
                f"<code>{esc((e.sha256 or '')[:16])}</code>"] for e in sorted(index, key=lambda e: e.phase)]

    sections = [
        section("failures", "Failures and open findings", failures),
        section("phases", "Phases (NO-GO first)", table(
            ("phase", "name", "gate", "attempts", "wall min", "failed checks", "report", "audit"), phase_rows,
            "no phase ran")),
        section("deaths", "Deaths", table(DEATH_HEADERS, death_rows, "no run died in the campaign's sweeps")),
        section("matrix", "Model matrix", "".join(matrix_parts) or '<p class="none">no matrix in this campaign</p>'),
        section("heatmaps", "Context degradation: heatmaps", "".join(heat_parts)
                or '<p class="none">no context profile in this campaign</p>'),
        section("dataset", "Dataset", "".join(data_parts) or '<p class="none">no dataset in this campaign</p>'),
        section("evidence", "Raw evidence", table(("phase", "attempt", "evidence", "kind", "path", "files", "sha256"),
                                                  ev_rows, "no evidence indexed")),
    ]
    return page(f"Campaign {state.plan}", subtitle, sections)


def _open_findings(phases: list[PhaseState], audits: dict[int, AuditRecord], prefix: str) -> str:
    """The blocking and major findings of the phases' current audits, as a list."""
    items = []
    for p in phases:
        audit = audits.get(p.id)
        for f in audit.findings if audit else []:
            if f.severity in ("blocker", "major"):
                ev = link(f.evidence.split(", ")[0], prefix, f.evidence) if f.evidence else ""
                items.append(f'<li><span class="{f.severity}">[{esc(f.severity)}]</span> phase {p.id}: '
                             f"{esc(f.claim)} {ev}{(' — fix: ' + esc(f.fix)) if f.fix else ''}</li>")
    return f"<ul>{''.join(items)}</ul>" if items else '<p class="none">No open blocking or major finding.</p>'


def _phase_rows(phases: list[PhaseState], root: Path, prefix: str) -> list[list[str]]:
    rows = []
    for p in phases:
        last = p.attempts[-1] if p.attempts else None
        failed = [c.name for c in (last.checks if last else []) if not c.passed]
        md, js = report_paths(root, p.id)
        amd = audit_paths(root, p.id)[1]
        rows.append([esc(p.id), esc(p.name), gate_badge(p.gate), esc(len(p.attempts)), f"{p.wall_s / 60:.1f}",
                     f"{len(failed)} of {len(last.checks) if last else 0}"
                     + (f": {esc(', '.join(failed))}" if failed else ""),
                     link(_rel(md, root), prefix, "report") if md.is_file() else "—",
                     link(_rel(amd, root), prefix, "audit") if amd.is_file() else "—"])
    return rows


def _evidence_parts(evidence: list[tuple[int, EvidenceSpec]], root: Path, prefix: str
                    ) -> tuple[list[list[str]], list[str], list[str], list[str]]:
    """Death rows, matrix tables, heatmaps and dataset tables from the evidence folders that hold them."""
    death_rows: list[list[str]] = []
    matrix_parts: list[str] = []
    heat_parts: list[str] = []
    data_parts: list[str] = []
    for phase_id, spec in evidence:
        folder = Path(spec.out or spec.dir or "")
        if spec.kind == "extract" and (folder / "sweep_report.json").is_file():
            death_rows += deaths_rows(folder / "sweep_report.json", root, prefix)
        elif spec.kind == "matrix" and (folder / "model_matrix.json").is_file():
            matrix_parts.append(_matrix(folder, phase_id, spec.name, root, prefix))
        elif spec.kind == "profile" and (folder / "context_decay_profile.json").is_file():
            heat_parts.append(_profile(folder, phase_id, spec.name, root, prefix))
        elif spec.kind == "dataset" and (folder / "failure_recovery_dataset_stats.json").is_file():
            data_parts.append(_dataset(folder, phase_id, spec.name, root, prefix))
    return death_rows, matrix_parts, heat_parts, data_parts


def _matrix(folder: Path, phase_id: int, name: str, root: Path, prefix: str) -> str:
    data = json.loads((folder / "model_matrix.json").read_text())
    rows = []
    for r in data["rows"]:
        s, loop = r.get("scores"), r.get("loop")
        if not s:
            rows.append([esc(r["label"]), esc(r.get("provenance")), f"{esc(r['status'])}: {esc(r.get('reason'))}",
                         "—", "—", "—", "—"])
            continue
        lat = s["latency_ms"]
        rows.append([esc(r["label"]), esc(r.get("provenance")), _rate(s["strict_valid"]), _rate(s["lenient_valid"]),
                     f"{esc(lat['p50'])} / {esc(lat['p95'])} (n={esc(lat['n'])})", _rate(s.get("errors")),
                     _rate(loop["died"]) if loop else "—"])
    body = (f"<p>phase {phase_id}, evidence {esc(name)}: {link(_rel(folder / 'model_matrix.json', root), prefix)} · "
            f"eval set sha256 <code>{esc(data['eval_set']['sha256'][:16])}</code>, {esc(data['eval_set']['rows'])} "
            "states</p>" + table(("model", "provenance", "strict valid", "lenient valid", "latency p50 / p95 ms",
                                  "errors", "loop: died"), rows, "no rows"))
    chart = folder / "model_matrix.png"
    return body + (image(chart, f"model matrix ({name})") if chart.is_file() else "")


def _profile(folder: Path, phase_id: int, name: str, root: Path, prefix: str) -> str:
    data = json.loads((folder / "context_decay_profile.json").read_text())
    rows = [[esc(r["run_id"]), esc(r["eviction"]["policy"]), esc(r["ticks"]),
             esc({None: "no verdict", True: "FORGETS", False: "no"}[r["forgetting"]["flagged"]]),
             esc(r["forgetting"]["onset_tick"]), esc("yes" if r["eviction"]["within_budget"] else "NO"),
             esc(r["eviction"]["max_tokens"]), esc(r["eviction"]["budget"])] for r in data["runs"]]
    body = (f"<p>phase {phase_id}, evidence {esc(name)}: "
            f"{link(_rel(folder / 'context_decay_profile.json', root), prefix)}</p>"
            + table(("run", "policy", "ticks", "late forgetting", "onset tick", "within budget", "max tokens",
                     "budget"), rows, "no runs"))
    pngs = [f for f in data.get("files", []) if f.endswith(".png") and (folder / f).is_file()]
    return body + "".join(image(folder / f, f"{f} ({name})") for f in pngs)


def _dataset(folder: Path, phase_id: int, name: str, root: Path, prefix: str) -> str:
    stats = json.loads((folder / "failure_recovery_dataset_stats.json").read_text())
    rows = [[esc(split), esc(m["total"]), *(f"{esc(m['selected'].get(p, 0))} ({esc(m['achieved'].get(p))})"
                                            for p in ("golden", "recovery", "rejected")), esc(m.get("limiting"))]
            for split, m in sorted(stats["mix"].items())]
    return (f"<p>phase {phase_id}, evidence {esc(name)}: "
            f"{link(_rel(folder / 'failure_recovery_dataset_stats.json', root), prefix)} · by provenance "
            f"{esc(stats['by_provenance'])}</p>"
            + table(("split", "rows", "golden (share)", "recovery (share)", "rejected (share)", "limited by"), rows,
                    "no rows"))


# -- the demo's sweep page ------------------------------------------------------------------------------

def render_sweep(root: Path, evidence: Path, runs: list[dict[str, str]], title: str) -> str:
    """The page of one sweep: `runs` are the rows the demo printed (column -> text), `evidence` the folder
    `bloodwork extract` wrote. Links are relative to `root`, where the page is written."""
    report = json.loads((evidence / "sweep_report.json").read_text())
    deaths = deaths_rows(evidence / "sweep_report.json", root, "")
    failures = table(DEATH_HEADERS, deaths, "no run died")
    if report["journals_failing_verify"]:
        failures = (f"<p class='blocker'>journals that fail verification: "
                    f"{esc(', '.join(report['journals_failing_verify']))}</p>") + failures
    headers = list(runs[0]) if runs else []
    run_rows = [[esc(r[h]) for h in headers] for r in runs]
    traps = [[esc(k), esc(v.get("natural", 0)), esc(v.get("injected", 0)), esc(v.get("mixed", 0))]
             for k, v in report["traps_by_kind"].items()]
    files = ["thrashing.journal", "sweep_report.md", "sweep_report.json", "deaths"]
    links = "<ul>" + "".join(f"<li>{link(_rel(evidence / f, root), '')}</li>" for f in files
                             if (evidence / f).exists()) + "</ul>"
    subtitle = [f"{report['runs']} runs · {len(report['deaths'])} deaths · natural events from real-model runs "
                f"{report['natural_events']}, injected {report['injected_events']} · strict violations "
                f"{esc(_rate(report['strict_violation']))} · generated by <code>{esc(report['generator'])}</code>"]
    sections = [section("failures", "Deaths", failures),
                section("runs", "Runs (traps marked * were injected by chaos)", table(headers, run_rows, "no runs")),
                section("traps", "Traps by kind and origin", table(("trap", "natural", "injected", "mixed"), traps,
                                                                    "no traps")),
                section("evidence", "Evidence", links)]
    return page(title, subtitle, sections)
