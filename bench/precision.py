"""model.precision modes: speed and memory against fp32, and how close their vectors stay.

Each precision runs in its own process (clean peak memory) over the same inputs: the
fetched photos, decoded once by wmpd.imaging, and a list of text queries. Reported: image
throughput (batch 32, pre-made tensors), text query latency (one thread, as the daemon
runs queries), peak RSS after loading, and the cosine between each vector and its fp32
twin (a mode is only worth keeping at cosine >= 0.99). Done for ViT-B-32 with random
weights (the speed figures) and for the repository's trained tiny CLIP (quantisation
error depends on trained weight and activation ranges, which random weights lack).
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

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import MODEL_NAME, PHOTOS, REPO, emit_json, load_average, print_table

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PRECISIONS = ("fp32", "bf16", "int8")
TINY = (str(REPO / "tests" / "models" / "tiny-clip.json"), str(REPO / "tests/models/tiny-clip.pt"))
MIN_COSINE = 0.99


def queries(count: int) -> list[str]:
    from bench.search_latency import text_queries

    return text_queries(count, seed=11)


def worker(args: argparse.Namespace) -> int:
    """In a fresh process: load one precision, time it, write its vectors."""
    import torch

    from wmpd.config import ModelConfig
    from wmpd.embedder import Embedder

    torch.manual_seed(0)  # the same random weights in every worker process
    embedder = Embedder(
        ModelConfig(name=args.model, pretrained=args.pretrained or None, precision=args.worker)
    )
    embedder.load()
    peak_after_load = _peak_mb()
    pixels = np.load(args.pixels)
    batch = pixels[:32] if len(pixels) >= 32 else np.resize(pixels, (32, *pixels.shape[1:]))
    embedder.encode_images(batch)
    started = time.perf_counter()
    rounds = 4
    for _ in range(rounds):
        embedder.encode_images(batch)
    images_per_s = rounds * len(batch) / (time.perf_counter() - started)
    texts = queries(args.queries)
    embedder.encode_texts(texts[:1])
    latencies = []
    for text in texts:
        started = time.perf_counter()
        embedder.encode_texts([text])
        latencies.append((time.perf_counter() - started) * 1000)
    image_vectors = np.concatenate(
        [embedder.encode_images(pixels[i : i + 32]) for i in range(0, len(pixels), 32)]
    )
    np.save(Path(args.out) / f"{args.worker}-images.npy", image_vectors)
    np.save(Path(args.out) / f"{args.worker}-texts.npy", embedder.encode_texts(texts))
    print(
        json.dumps(
            {
                "precision": args.worker,
                "images_per_s": round(images_per_s, 2),
                "text_ms_p50": round(float(np.median(latencies)), 2),
                "peak_mb_after_load": peak_after_load,
            }
        )
    )
    return 0


def _peak_mb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return 0


def decode_photos(spec_model: str, pretrained: str | None, limit: int, out: Path) -> Path:
    from wmpd.config import ModelConfig
    from wmpd.embedder import Embedder
    from wmpd.imaging import decode_image, read_file

    embedder = Embedder(ModelConfig(name=spec_model, pretrained=pretrained))
    embedder.load()
    files = sorted(p for p in PHOTOS.iterdir() if p.suffix.lower() in {".jpg", ".png"})[:limit]
    pixels = np.stack([decode_image(read_file(p, 1 << 30), p, embedder.spec).pixels for p in files])
    path = out / f"pixels-{Path(spec_model).stem}.npy"
    np.save(path, pixels)
    return path


def compare(model: str, pretrained: str | None, args: argparse.Namespace, out: Path) -> list[Any]:
    pixels = decode_photos(model, pretrained, args.limit, out)
    rows = []
    for precision in PRECISIONS:
        command = [sys.executable, __file__, "--worker", precision, "--model", model]
        command += ["--pixels", str(pixels), "--out", str(out), "--queries", str(args.queries)]
        if pretrained:
            command += ["--pretrained", pretrained]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    base_images = np.load(out / "fp32-images.npy")
    base_texts = np.load(out / "fp32-texts.npy")
    for row in rows:
        images = np.load(out / f"{row['precision']}-images.npy")
        texts = np.load(out / f"{row['precision']}-texts.npy")
        image_cos = np.sum(images * base_images, axis=1)
        text_cos = np.sum(texts * base_texts, axis=1)
        row.update(
            model=Path(model).stem,
            image_cos_mean=round(float(image_cos.mean()), 5),
            image_cos_min=round(float(image_cos.min()), 5),
            text_cos_mean=round(float(text_cos.mean()), 5),
            text_cos_min=round(float(text_cos.min()), 5),
        )
    base = rows[0]
    for row in rows:
        row["image_speedup"] = round(row["images_per_s"] / base["images_per_s"], 2)
        row["text_speedup"] = round(base["text_ms_p50"] / row["text_ms_p50"], 2)
        row["keep"] = min(row["image_cos_min"], row["text_cos_min"]) >= MIN_COSINE
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--limit", type=int, default=0, help="photos to embed")
    parser.add_argument("--queries", type=int, default=0)
    parser.add_argument("--worker", choices=PRECISIONS, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=MODEL_NAME, help=argparse.SUPPRESS)
    parser.add_argument("--pretrained", default="", help=argparse.SUPPRESS)
    parser.add_argument("--pixels", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.limit = args.limit or (16 if args.quick else 64)
    args.queries = args.queries or (10 if args.quick else 40)
    if args.worker:
        return worker(args)
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="wmpd-bench-precision-") as tmp:
        rows = compare(MODEL_NAME, None, args, Path(tmp))
        rows += compare(TINY[0], TINY[1], args, Path(tmp))
    print_table(
        "model.precision against fp32 (speed-ups are ratios within one model)",
        [
            "model",
            "precision",
            "img/s",
            "x",
            "text ms",
            "x",
            "peak MB",
            "img cos min",
            "text cos min",
            "keep",
        ],
        [
            [
                r["model"],
                r["precision"],
                r["images_per_s"],
                r["image_speedup"],
                r["text_ms_p50"],
                r["text_speedup"],
                r["peak_mb_after_load"],
                r["image_cos_min"],
                r["text_cos_min"],
                r["keep"],
            ]
            for r in rows
        ],
    )
    emit_json(
        "precision",
        {"rows": rows, "load_average": [round(load_before, 2), round(load_average(), 2)]},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
