"""Run every benchmark (`make bench`; `make bench-quick` for a run of about a minute).

Each bench runs in its own process, prints its tables and a last JSON line; this script
collects those lines and prints a summary of the targets. bench/freshness.py and
bench/quality.py (owned with the daemon and the search-quality work) run too when present.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
# In the order they run; quick mode gives each a fraction of a minute.
BENCHES = (
    "indexing",
    "indexing_tune",
    "search_latency",
    "memory",
    "startup",
    "precision",
    "freshness",
)
QUICK_SKIPS = frozenset({"precision", "indexing_tune"})  # minutes even when small


def run_one(name: str, quick: bool) -> dict[str, Any]:
    script = BENCH_DIR / f"{name}.py"
    # A bench written elsewhere may have no quick mode; then it runs as it is.
    takes_quick = quick and "--quick" in script.read_text()
    command = [sys.executable, "-m", f"bench.{name}"] + (["--quick"] if takes_quick else [])
    started = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    print(f"\n=== {script.relative_to(REPO)} {'--quick' if takes_quick else ''}", flush=True)
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    last_json: dict[str, Any] = {}
    for line in process.stdout:
        sys.stdout.write(line)
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                last_json = json.loads(line)
    code = process.wait()
    return {
        "bench": name,
        "exit": code,
        "seconds": round(time.perf_counter() - started, 1),
        "result": last_json,
    }


def targets_of(result: dict[str, Any]) -> dict[str, bool]:
    return {k: v for k, v in result.items() if k.startswith("target_") and isinstance(v, bool)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="", help="comma list of bench names")
    args = parser.parse_args(argv)
    chosen = [n for n in args.only.split(",") if n] or list(BENCHES)
    started = time.perf_counter()
    print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
    runs = []
    for name in chosen:
        if not (BENCH_DIR / f"{name}.py").exists():
            print(f"\n=== bench/{name}.py is not there yet; skipped")
            continue
        if args.quick and name in QUICK_SKIPS:
            continue
        runs.append(run_one(name, args.quick))
    print("\n=== summary")
    for run in runs:
        marks = targets_of(run["result"])
        verdict = ", ".join(f"{k[7:]}: {'met' if v else 'NOT met'}" for k, v in marks.items())
        status = "ok" if run["exit"] == 0 else f"FAILED (exit {run['exit']})"
        print(f"{run['bench']:<15} {status:<18} {run['seconds']:>7.1f}s  {verdict}")
    total = time.perf_counter() - started
    print(f"total {total:.1f}s, load average at end {os.getloadavg()[0]:.2f}")
    print(
        json.dumps(
            {
                "bench": "all",
                "quick": args.quick,
                "seconds": round(total, 1),
                "runs": [
                    {k: run[k] for k in ("bench", "exit", "seconds")}
                    | {"targets": targets_of(run["result"])}
                    for run in runs
                ],
            }
        )
    )
    return 0 if all(run["exit"] == 0 for run in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
