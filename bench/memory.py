"""Peak memory of a `wmpd run` daemon at 100k and 1M catalogued images, ViT-B-32 loaded.

The daemon runs as a subprocess over a synthetic catalog (see bench.common) with its
saved index, serves a few text, image and similar-image searches, and then its
kernel-reported high-water mark (VmHWM) and current RSS are read. Baseline, measured
in the same run: a bare process that only imports torch + open_clip and loads the same
model (what any CLIP daemon pays before holding a single vector).
Target: peak <= 1.5 GB at 100k.
"""

from __future__ import annotations

import argparse
import json
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
    MODEL_NAME,
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
TARGET_MB_AT_100K = 1536

BASELINE_SCRIPT = f"""
import json, sys, open_clip, torch
model = open_clip.create_model({MODEL_NAME!r}, pretrained=sys.argv[1] or None).eval()
tokens = open_clip.get_tokenizer({MODEL_NAME!r})(["a photo"])
with torch.inference_mode():
    model.encode_text(tokens)
status = dict(l.split(":", 1) for l in open("/proc/self/status"))
print(json.dumps({{k: int(status[k].split()[0]) // 1024 for k in ("VmHWM", "VmRSS")}}))
"""


def baseline_model_process(checkpoint: str = "") -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", BASELINE_SCRIPT, checkpoint],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    figures: dict[str, int] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def checkpoint_file(directory: Path) -> Path:
    """The random weights saved as a local checkpoint, to load the way real weights load."""
    path = directory / "vit-b-32-random.pt"
    code = (
        f"import open_clip, torch; torch.save(open_clip.create_model({MODEL_NAME!r}, "
        f"pretrained=None).state_dict(), {str(path)!r})"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return path


def exercise(daemon: DaemonProcess, size: int) -> None:
    """A few searches of each kind, so their buffers count in the peak."""
    from bench.search_latency import Client, query_jpeg, text_queries

    client = Client(daemon.port)
    for query in text_queries(20, seed=size):
        client.text(query)
    jpeg = query_jpeg()
    for _ in range(3):
        client.upload(jpeg)
    for image_id in range(1, 21):
        client.by_id(image_id)


def daemon_memory(size: int, work: Path, precision: str) -> dict[str, Any]:
    data_dir = synthetic_data_dir(size, precision=precision)
    port = free_port()
    config = write_config(
        work, [synthetic_root()], data_dir, server=True, port=port, precision=precision
    )
    daemon = DaemonProcess(config, port, work / f"daemon-{size}.log")
    try:
        ready_s = daemon.wait_for("/api/status", lambda s: s.get("model_ready"), 900)
        status = daemon.get_json("/api/status")
        exercise(daemon, size)
        time.sleep(1.0)
        return {
            "n": size,
            "precision": precision,
            "peak_rss_mb": round(daemon.peak_rss_mb()),
            "rss_mb": round(daemon.rss_mb()),
            "index_size": status.get("index_size"),
            "ready_s": round(ready_s, 1),
        }
    finally:
        daemon.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k images only")
    parser.add_argument("--sizes", default="")
    parser.add_argument("--precisions", default="", help="model.precision list (fp32,int8)")
    args = parser.parse_args(argv)
    precisions = [p for p in args.precisions.split(",") if p] or (
        ["fp32"] if args.quick else ["fp32", "int8"]
    )
    sizes = [int(s) for s in args.sizes.split(",") if s] or (
        [10_000] if args.quick else [100_000, 1_000_000]
    )
    load_before = load_average()
    baseline = baseline_model_process()
    rows = []
    with tempfile.TemporaryDirectory(prefix="wmpd-bench-memory-") as tmp:
        from_file = (
            baseline if args.quick else baseline_model_process(str(checkpoint_file(Path(tmp))))
        )
        for precision in precisions:
            # Other precisions at 100k only: a 1M catalog per model id costs minutes to make.
            for size in sizes if precision == "fp32" else [s for s in sizes if s <= 100_000]:
                rows.append(daemon_memory(size, Path(tmp), precision))
    print_table(
        f"Daemon memory (MB). Baseline, torch + open_clip + {MODEL_NAME} alone: "
        f"peak {baseline['VmHWM']}, now {baseline['VmRSS']}; the same loading the weights "
        f"from a checkpoint file: peak {from_file['VmHWM']}, now {from_file['VmRSS']}",
        [
            "n",
            "precision",
            "index size",
            "peak RSS",
            "RSS after searches",
            "peak - base",
            "ready s",
        ],
        [
            [
                r["n"],
                r["precision"],
                r["index_size"],
                r["peak_rss_mb"],
                r["rss_mb"],
                r["peak_rss_mb"] - baseline["VmHWM"],
                r["ready_s"],
            ]
            for r in rows
        ],
    )
    targets = {
        f"target_peak_100k_{r['precision']}_1_5gb": r["peak_rss_mb"] <= TARGET_MB_AT_100K
        for r in rows
        if r["n"] == 100_000
    }
    emit_json(
        "memory",
        {
            "baseline_model_process_mb": baseline,
            "baseline_from_checkpoint_mb": from_file,
            "daemon": rows,
            "load_average": [round(load_before, 2), round(load_average(), 2)],
            **targets,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
