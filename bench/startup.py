"""Daemon start-up: process start → HTTP answering (/healthz) → model ready (/api/status).

Measured for an empty catalog (a fresh install) and a 100k-image catalog with its saved
index. Baselines, measured in the same run: a bare interpreter (`python -c pass`) and an
interpreter that only imports torch and open_clip (the floor under "model ready").
Target: HTTP answering within 2 s.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    DaemonProcess,
    emit_json,
    free_port,
    load_average,
    print_table,
    synthetic_data_dir,
    synthetic_root,
    write_config,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TARGET_HTTP_S = 2.0


def process_seconds(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - started


def one_start(label: str, data_dir: Path, folder: Path, work: Path) -> dict[str, Any]:
    port = free_port()
    config = write_config(work, [folder], data_dir, server=True, port=port)
    daemon = DaemonProcess(config, port, work / f"daemon-{label}.log")
    try:
        http_s = daemon.wait_for("/healthz", lambda body: body.get("ok"), 120, poll_s=0.005)
        ready_s = daemon.wait_for("/api/status", lambda s: s.get("model_ready"), 900)
        return {"catalog": label, "http_s": round(http_s, 3), "model_ready_s": round(ready_s, 2)}
    finally:
        daemon.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the empty catalog only")
    parser.add_argument("--repeat", type=int, default=0)
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    load_before = load_average()
    bare_s = min(process_seconds("pass") for _ in range(3))
    imports_s = min(process_seconds("import torch, open_clip") for _ in range(repeat))
    rows = []
    with tempfile.TemporaryDirectory(prefix="wmpd-bench-startup-") as tmp:
        work = Path(tmp)
        photos = work / "photos"
        photos.mkdir()
        for number in range(repeat):
            rows.append(one_start("empty", work / f"data-{number}", photos, work))
        if not args.quick:
            big = synthetic_data_dir(100_000)
            for _ in range(repeat):
                rows.append(one_start("100k", big, synthetic_root(), work))
    print_table(
        f"Start-up (s). Baselines: bare python {bare_s:.3f}, import torch+open_clip "
        f"{imports_s:.2f}",
        ["catalog", "→ /healthz answers", "→ model ready"],
        [[r["catalog"], r["http_s"], r["model_ready_s"]] for r in rows],
    )
    worst_http = max(r["http_s"] for r in rows)
    emit_json(
        "startup",
        {
            "baseline_bare_python_s": round(bare_s, 3),
            "baseline_import_torch_open_clip_s": round(imports_s, 2),
            "runs": rows,
            "load_average": [round(load_before, 2), round(load_average(), 2)],
            "target_http_2s": worst_http <= TARGET_HTTP_S,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
