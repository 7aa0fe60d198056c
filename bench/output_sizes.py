"""How much output do ordinary commands print? The measurement behind `output_ceiling_bytes`.

Output longer than a page is paged, not trapped; only output over a hard ceiling is a LOG_FLOOD (runaway
output). The ceiling must sit well above what real work prints, so this prints the size in bytes of:

- the ledger task's 40 hidden tests against its starting stubs (39 fail): `pytest -q`, `-vv`, `-vv -l --tb=long`;
- real projects' own test suites from the repo-fix instances' pinned sdists (inflection 0.5.1, sqlparse 0.5.0),
  at their buggy base: passing and failing runs with `-q` and `-vv`; and inflection with `pluralize` broken
  on purpose (a core function, so 188 of 455 tests fail) with `-vv -l --tb=long`;
- this repository's own `tests/test_isa.py tests/chronos` with `-vv`;
- with `--pip` (needs the package index): `pip install` of requests, pytest and rich into a fresh venv, plain
  and `-v`, and `pip install -v --no-binary pyyaml pyyaml==6.0.2` (a C-extension build from source).

Usage: python bench/output_sizes.py [--pip] [--out bench/results/output_sizes.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bloodwork.kernel import KernelConfig
from bloodwork.tasks.registry import BUILTIN, load_task

ROOT = Path(__file__).resolve().parents[1]
PYTEST = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]


def size(cmd: list[str], cwd: Path) -> int:
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, timeout=900, check=False)
    return len(out.stdout) + len(out.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pip", action="store_true", help="also measure pip installs (needs the package index)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/output_sizes.json"))
    args = parser.parse_args()
    rows: list[dict[str, object]] = []

    def measure(what: str, cmd: list[str], cwd: Path) -> None:
        n = size(cmd, cwd)
        rows.append({"what": what, "command": " ".join(cmd[1:] if cmd[0] == sys.executable else cmd), "bytes": n})
        print(f"{n:>9} B  {what}", flush=True)

    with tempfile.TemporaryDirectory(prefix="bw-sizes-") as tmp:
        work = Path(tmp)
        ledger = work / "ledger"
        shutil.copytree(BUILTIN / "long-haul/ledger/files", ledger)
        shutil.copytree(BUILTIN / "long-haul/ledger/hidden", ledger / "hidden")
        for flags in (["-q"], ["-vv"], ["-vv", "-l", "--tb=long"]):
            measure(f"ledger hidden tests on the stubs, pytest {' '.join(flags)}", [*PYTEST, *flags, "hidden"], ledger)
        for instance in ("inflection-humanize", "sqlparse-784"):
            tree = work / instance
            task = load_task(f"repo-fix/{instance}")  # holds the temporary folder of its base tree
            shutil.copytree(task.materialized().base, tree)  # type: ignore[attr-defined]
            for flags in (["-q"], ["-vv"]):
                measure(f"{instance} base, its own suite, pytest {' '.join(flags)}", [*PYTEST, *flags], tree)
        broken = work / "inflection-humanize"
        module = broken / "inflection" / "__init__.py"
        text = module.read_text()
        marker = "def pluralize(word: str) -> str:\n"
        assert marker in text, "inflection 0.5.1 defines pluralize with this signature"
        module.write_text(text.replace(marker, marker + "    return word + 'zz'\n", 1))
        for flags in (["-q"], ["-vv"], ["-vv", "-l", "--tb=long"]):
            measure(f"inflection with pluralize broken, pytest {' '.join(flags)}", [*PYTEST, *flags], broken)
        measure("this repository: tests/test_isa.py tests/chronos, pytest -vv",
                [*PYTEST, "-vv", "tests/test_isa.py", "tests/chronos"], ROOT)
        if args.pip:
            venv = work / "venv"
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            pip = [str(venv / "bin" / "pip"), "install", "--no-cache-dir"]
            measure("pip install requests pytest rich", [*pip, "requests", "pytest", "rich"], work)
            measure("pip install -v --force-reinstall requests pytest rich",
                    [*pip, "-v", "--force-reinstall", "requests", "pytest", "rich"], work)
            measure("pip install -v pyyaml==6.0.2 built from source (C extension)",
                    [*pip, "-v", "--no-binary", "pyyaml", "pyyaml==6.0.2"], work)
    ceiling = KernelConfig().output_ceiling_bytes
    largest = max(int(r["bytes"]) for r in rows)  # type: ignore[call-overload]
    print(f"largest {largest} B; output_ceiling_bytes {ceiling} B = {ceiling / largest:.1f}x the largest")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "output_sizes", "rows": rows, "largest": largest,
                                    "output_ceiling_bytes": ceiling}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
