"""How the indexing pipeline's knobs behave on this machine (the data behind its defaults).

Runs `wmpd index` (run_index) over the fetched photos with each combination of:
  model    "streams": one single-threaded model stream per core (wmpd's default), or
           "team": one forward pass with torch's thread team over every core;
  decode   decode threads (wmpd's default on 2 cores: 1);
  prefetch decoded images allowed to wait ahead of the model (default 64; 8 was the
           old window, too small to cover a batch of 32).
Configurations alternate over the rounds so that load drift hits them alike; reported:
images/s (wall, load-sensitive) and process CPU ms per image (the cost, which on an idle
machine sets the throughput: cores / CPU time per image).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import PHOTOS, emit_json, load_average, print_table
from bench.indexing import link_or_copy, photo_files, wmpd_pipeline_costs

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def configure(model: str, decode: int, prefetch: int) -> None:
    from wmpd import embedder, pipeline

    # Streams need at least this many images each; a huge value means one team pass.
    embedder.MIN_IMAGES_PER_STREAM = 4 if model == "streams" else 1 << 30
    pipeline.default_decode_workers = lambda: decode
    pipeline.PREFETCH_IMAGES = prefetch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round, 16 photos")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--limit", type=int, default=0)
    args = parser.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    limit = args.limit or (16 if args.quick else 0)
    logging.basicConfig(level=logging.ERROR)
    grid = list(product(("streams", "team"), (1, 2), (64, 8)))
    samples: dict[tuple[str, int, int], list[tuple[float, float]]] = {g: [] for g in grid}
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="wmpd-bench-tune-") as tmp:
        work = Path(tmp)
        folder = work / "photos"
        folder.mkdir()
        for path in photo_files(PHOTOS, limit or None):
            link_or_copy(path, folder / path.name)
        for _ in range(rounds):
            for knobs in grid:
                configure(*knobs)
                rate, _, cpu_ms = wmpd_pipeline_costs(folder, work, 32, 0)
                samples[knobs].append((rate, cpu_ms))
    rows: list[dict[str, Any]] = [
        {
            "model": model,
            "decode_threads": decode,
            "prefetch": prefetch,
            "images_per_s": round(float(np.median([r for r, _ in samples[knobs]])), 2),
            "cpu_ms_per_image": round(float(np.median([c for _, c in samples[knobs]])), 1),
        }
        for knobs in grid
        for model, decode, prefetch in [knobs]
    ]
    print_table(
        f"Pipeline knobs over {len(photo_files(PHOTOS, limit or None))} photos, median of "
        f"{rounds} (load {load_before:.1f}->{load_average():.1f})",
        ["model", "decode threads", "prefetch", "images/s", "CPU ms/image"],
        [list(r.values()) for r in rows],
    )
    emit_json("indexing_tune", {"rows": rows, "rounds": rounds})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
