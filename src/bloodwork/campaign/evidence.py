"""Figures a phase report quotes from the product's evidence files, and how the audit recomputes them.

Each evidence kind has one function from its files to figures. The report quotes that function applied
to the files the phase left; the audit applies the same function to what the product's own recount path
produces from the raw files (`bloodwork extract` and `bloodwork profile` run again into a scratch folder,
`bloodwork matrix recount`, the dataset's row files counted), so the two can only agree when the evidence
files are what their raw files say.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from bloodwork.campaign.checks import POOLS, json_pointer
from bloodwork.campaign.plan import EvidenceSpec
from bloodwork.chronos.files import read_jsonl, sha256_file
from bloodwork.data.formats import FILE_KINDS, SPLITS

RunCommand = Callable[[list[str], str], int]
MAX_CELL = 240


class Figure(BaseModel):
    id: str
    value: Any
    source: str
    recount: str


class Recounted(BaseModel):
    """What the audit got back from one evidence item's recount path."""

    evidence: str
    command: str
    values: dict[str, Any]
    problems: list[str]
    log: str | None = None


def fmt(value: Any) -> str:
    """The one way a value is written into a report cell (and compared when read back)."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))
    text = text.replace("\n", " ").replace("|", "\\|")
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def _rate(r: dict[str, Any] | None) -> str | None:
    return None if not r else f"{r['k']}/{r['n']}"


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.:+/=" else "_" for c in text)[:80]


# -- one function per kind: files -> figures -------------------------------------------------------------

def extract_figures(folder: Path) -> dict[str, Any]:
    r = json.loads((folder / "sweep_report.json").read_text())
    figs: dict[str, Any] = {"runs": r["runs"], "deaths": len(r["deaths"]), "natural_events_real": r["natural_events"],
                            "injected_events": r["injected_events"], "recovered_streaks": _rate(r["recovery"]),
                            "strict_violations": _rate(r["strict_violation"]),
                            "lenient_violations": _rate(r["lenient_violation"]),
                            "mttr_ticks_p50": r["mttr_ticks"]["p50"],
                            "model_ms_p50": r["call_times"]["model_ms"]["p50"],
                            "journals_failing_verify": len(r["journals_failing_verify"])}
    figs |= {f"status.{k}": v for k, v in sorted(r["runs_by_status"].items())}
    figs |= {f"deaths_by_cause.{k}": v for k, v in sorted(Counter(d["cause"] for d in r["deaths"]).items())}
    figs |= {f"traps.{kind}.{origin}": n for kind, by in sorted(r["traps_by_kind"].items())
             for origin, n in sorted(by.items())}
    header = json.loads((folder / "thrashing.journal").read_text().splitlines()[0])
    figs |= {f"thrashing.{k}": v for k, v in sorted(header["counts"].items())}
    return figs


def profile_figures(folder: Path) -> dict[str, Any]:
    data = json.loads((folder / "context_decay_profile.json").read_text())
    figs: dict[str, Any] = {"runs": len(data["runs"])}
    for r in data["runs"]:
        key = _safe(r["run_id"])
        ev = r["eviction"]
        figs |= {f"{key}.ticks": r["ticks"], f"{key}.policy": ev["policy"],
                 f"{key}.late_forgetting": r["forgetting"]["flagged"],
                 f"{key}.onset_tick": r["forgetting"]["onset_tick"],
                 f"{key}.within_budget": ev["within_budget"], f"{key}.max_tokens": ev["max_tokens"],
                 f"{key}.ticks_over_budget": ev["ticks_over_budget"],
                 f"{key}.goal_in_context": _rate(ev["goal_in_context"])}
    return figs


def matrix_figures(folder: Path) -> dict[str, Any]:
    data = json.loads((folder / "model_matrix.json").read_text())
    figs: dict[str, Any] = {"rows": len(data["rows"]), "eval_set_sha256": data["eval_set"]["sha256"][:16]}
    for row in data["rows"]:
        key = _safe(row["label"])
        figs[f"{key}.status"] = row["status"]
        scores, loop = row.get("scores"), row.get("loop")
        if scores:
            figs |= {f"{key}.strict_valid": _rate(scores["strict_valid"]),
                     f"{key}.lenient_valid": _rate(scores["lenient_valid"]),
                     f"{key}.latency_p50_ms": scores["latency_ms"]["p50"],
                     f"{key}.latency_p95_ms": scores["latency_ms"]["p95"]}
        if loop:
            figs |= {f"{key}.loop_completed": _rate(loop["completed"]), f"{key}.loop_died": _rate(loop["died"])}
    return figs


def dataset_figures(folder: Path) -> dict[str, Any]:
    stats = json.loads((folder / "failure_recovery_dataset_stats.json").read_text())
    figs: dict[str, Any] = {}
    for split, mix in sorted(stats["mix"].items()):
        figs[f"{split}.rows"] = mix["total"]
        figs |= {f"{split}.selected.{p}": mix["selected"].get(p, 0) for p in POOLS}
        figs |= {f"{split}.achieved.{p}": mix["achieved"].get(p) for p in POOLS}
    figs |= {f"by_provenance.{k}": v for k, v in sorted(stats["by_provenance"].items())}
    figs |= {f"file.{k}": v for k, v in sorted(stats["files"].items())}
    return figs


def dataset_recount(folder: Path) -> tuple[dict[str, Any], list[str]]:
    """The dataset's figures counted from its row files, and every file checked against its manifest."""
    figs: dict[str, Any] = {}
    provenance: Counter[str] = Counter()
    for split in SPLITS:
        rows = read_jsonl(folder / split / "kto.jsonl") if (folder / split / "kto.jsonl").is_file() else []
        pools = Counter(r["meta"]["pool"] for r in rows)
        provenance.update(r["meta"]["provenance"] for r in rows)
        figs[f"{split}.rows"] = len(rows)
        figs |= {f"{split}.selected.{p}": pools[p] for p in POOLS}
        figs |= {f"{split}.achieved.{p}": round(pools[p] / len(rows), 6) if rows else None for p in POOLS}
    figs |= {f"by_provenance.{k}": v for k, v in sorted(provenance.items())}
    for split in SPLITS:  # `build` writes no file for a kind without rows, and counts it as 0
        for kind in FILE_KINDS:
            file = folder / split / f"{kind}.jsonl"
            figs[f"file.{split}/{kind}.jsonl"] = len(read_jsonl(file)) if file.is_file() else 0
    problems = []
    manifest = json.loads((folder / "manifest.json").read_text())
    for name, entry in sorted(manifest["files"].items()):
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is listed in the dataset manifest but missing")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{name} changed since the dataset was built (sha256 differs from its manifest)")
    return figs, problems


def json_figures(spec: EvidenceSpec) -> dict[str, Any]:
    data = json.loads(Path(spec.file or "").read_text())
    return {name: json_pointer(data, pointer) for name, pointer in spec.figures.items()}


def _folder(spec: EvidenceSpec) -> Path:
    return Path(spec.out or spec.dir or spec.file or spec.path or "")


def read_figures(spec: EvidenceSpec) -> dict[str, Any]:
    """The figures of an evidence item as its files hold them now."""
    folder = _folder(spec)
    reader = {"extract": extract_figures, "profile": profile_figures, "matrix": matrix_figures,
              "dataset": dataset_figures}.get(spec.kind)
    if reader is not None:
        return reader(folder)
    if spec.kind == "json":
        return json_figures(spec)
    return {}


def recount_description(spec: EvidenceSpec) -> str:
    return {"extract": "bloodwork extract (again, into the audit's scratch folder)",
            "profile": "bloodwork profile (again, into the audit's scratch folder)",
            "matrix": "bloodwork matrix recount", "dataset": "rows counted in the dataset's row files",
            "json": "the file read again", "path": "-"}[spec.kind]


def source_file(spec: EvidenceSpec) -> Path:
    """Where an evidence item's figures are read (extract's come from sweep_report.json and thrashing.journal)."""
    folder = _folder(spec)
    return {"extract": folder, "profile": folder / "context_decay_profile.json",
            "matrix": folder / "model_matrix.json", "dataset": folder / "failure_recovery_dataset_stats.json"}.get(
        spec.kind, folder)


def recount(spec: EvidenceSpec, scratch: Path, run: RunCommand) -> Recounted:
    """Recompute an evidence item's figures from the raw files through the product's recount path; files that
    cannot be read (missing, malformed, without a quoted key) are a problem of the recount, not a crash."""
    try:
        return _recount(spec, scratch, run)
    except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
        return Recounted(evidence=spec.name, command=recount_description(spec), values={},
                         problems=[f"its files cannot be read: {type(err).__name__}: {err}"])


def _recount_into(spec: EvidenceSpec, argv: list[str], name: str, run: RunCommand,
                  figures: Callable[[Path], dict[str, Any]], out: Path) -> Recounted:
    """A recount by a product command that writes its output to `out`, where `figures` reads it."""
    code = run(argv, name)
    if code != 0:
        return Recounted(evidence=spec.name, command=" ".join(argv), values={}, log=f"{name}.log",
                         problems=[f"`bloodwork {' '.join(argv)}` exited {code}"])
    return Recounted(evidence=spec.name, command="bloodwork " + " ".join(argv), values=figures(out),
                     problems=[], log=f"{name}.log")


def _recount(spec: EvidenceSpec, scratch: Path, run: RunCommand) -> Recounted:
    name = f"recount-{spec.name}"
    if spec.kind == "extract":
        out = scratch / name
        return _recount_into(spec, ["extract", *spec.inputs, "--out", str(out)], name, run, extract_figures, out)
    if spec.kind == "profile":
        out = scratch / name
        argv = ["profile", *spec.inputs, "--out", str(out), *(["--compare"] if spec.compare else []),
                *([] if spec.semantic else ["--no-semantic"])]
        return _recount_into(spec, argv, name, run, profile_figures, out)
    if spec.kind == "matrix":
        argv = ["matrix", "recount", str(spec.dir)]
        code = run(argv, name)
        log = scratch / f"{name}.log"
        problems = []
        if code != 0:
            lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if "differs" in ln
                     or "error" in ln.lower()] if log.is_file() else []
            problems = [f"`bloodwork {' '.join(argv)}` exited {code}: {'; '.join(lines[:10]) or 'see its log'}"]
        # Exit 0 means every stored figure equals its recount, so the stored file's figures are the recount's.
        values = matrix_figures(Path(spec.dir or "")) if code == 0 else {}
        return Recounted(evidence=spec.name, command="bloodwork " + " ".join(argv), values=values,
                         problems=problems, log=f"{name}.log")
    if spec.kind == "dataset":
        values, problems = dataset_recount(Path(spec.dir or ""))
        return Recounted(evidence=spec.name, command=recount_description(spec), values=values, problems=problems)
    if spec.kind == "json":
        return Recounted(evidence=spec.name, command=recount_description(spec), values=json_figures(spec),
                         problems=[])
    return Recounted(evidence=spec.name, command="-", values={}, problems=[])


# -- the evidence index ------------------------------------------------------------------------------

def tree_digest(path: Path) -> tuple[str, int, int]:
    """(sha256, files, bytes) of a file, or of a folder as the sha256 of its sorted (path, sha256) lines."""
    if path.is_file():
        return sha256_file(path), 1, path.stat().st_size
    digest = hashlib.sha256()
    files = size = 0
    for p in sorted(path.rglob("*")):
        if p.is_file() and not p.is_symlink():
            digest.update(f"{p.relative_to(path)}\0{sha256_file(p)}\n".encode())
            files += 1
            size += p.stat().st_size
    return digest.hexdigest(), files, size


def evidence_paths(spec: EvidenceSpec) -> list[Path]:
    """What an evidence item indexes: its inputs (raw runs) and its own files."""
    paths = [Path(p) for p in spec.inputs]
    for p in (spec.out, spec.dir, spec.file, spec.path):
        if p:
            paths.append(Path(p))
    return paths
