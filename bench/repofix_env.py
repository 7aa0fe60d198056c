"""How long a repo-fix instance's environment takes to build, with uv and with pip.

For each built-in instance chosen and each installer, an environment is built from scratch (a new
environment folder every time) `--repeat` times in two conditions:
  cold — the installer's own download/wheel cache is a fresh empty folder (first build on a machine);
  warm — the same cache again (what every later build of another repo/version sees).
A build is what `bloodwork` does on the first use of an instance: venv, the project with its
dependencies, pytest, the project's code removed again, `freeze`. The figure is the build's wall time
(`build_s`, from the environment's own env.json). Builds of one instance share its sdist (already
in the bloodwork cache: its download is not timed).

Usage: python bench/repofix_env.py [--instances sqlparse-784,cachetools-hashkey] [--repeat 2] [--quick]
       [--out bench/results/repofix_env.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bloodwork.tasks.repofix import builtin_instance
from bloodwork.tasks.repofix.env import ensure_env
from bloodwork.tasks.repofix.sources import materialize


def _build(inst_id: str, installer: str, envs: Path) -> float:
    inst = builtin_instance(inst_id)
    with tempfile.TemporaryDirectory(prefix="bench-src-") as src:
        mat = materialize(inst, Path(src))
        env = ensure_env(inst, mat.base, root=envs, installer=installer)  # type: ignore[arg-type]
    return float(env.info["build_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", default="sqlparse-784,cachetools-hashkey,more-itertools-minmax")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="one instance, one build per condition")
    parser.add_argument("--out", type=Path, default=Path("bench/results/repofix_env.json"))
    args = parser.parse_args()
    instances = [i for i in args.instances.split(",") if i][: 1 if args.quick else None]
    repeat = 1 if args.quick else args.repeat
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-repofix-env-") as tmp:
        root = Path(tmp)
        for installer in ("uv", "pip"):
            for inst_id in instances:
                cache = root / f"cache-{installer}-{inst_id}"
                saved = {k: os.environ.get(k) for k in ("UV_CACHE_DIR", "PIP_CACHE_DIR")}
                os.environ["UV_CACHE_DIR" if installer == "uv" else "PIP_CACHE_DIR"] = str(cache)
                try:
                    for mode in ("cold", "warm"):
                        for i in range(repeat):
                            if mode == "cold" and cache.exists():
                                shutil.rmtree(cache)
                            start = time.monotonic()
                            build_s = _build(inst_id, installer, root / f"envs-{installer}-{mode}-{i}")
                            rows.append({"installer": installer, "instance": inst_id, "mode": mode, "i": i,
                                         "build_s": build_s, "wall_s": round(time.monotonic() - start, 2)})
                            print(f"{installer:3} {mode:4} {inst_id:24} {build_s:6.2f} s", flush=True)
                finally:
                    for key, value in saved.items():
                        if value is None:
                            os.environ.pop(key, None)
                        else:
                            os.environ[key] = value
    summary = {}
    for installer in ("uv", "pip"):
        for mode in ("cold", "warm"):
            values = [r["build_s"] for r in rows if r["installer"] == installer and r["mode"] == mode]
            summary[f"{installer}_{mode}_median_s"] = round(statistics.median(values), 2)
            summary[f"{installer}_{mode}_n"] = len(values)
    for mode in ("cold", "warm"):
        summary[f"pip_over_uv_{mode}"] = round(summary[f"pip_{mode}_median_s"] / summary[f"uv_{mode}_median_s"], 2)
    result = {"summary": summary, "builds": rows, "instances": instances, "repeat": repeat,
              "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "cpus": os.cpu_count()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
