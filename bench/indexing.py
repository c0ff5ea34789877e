"""Indexing throughput: wmpd's pipeline against the model alone and a naive loop.

For each image set (the fetched photos; small JPEGs made from them):
  model alone  Embedder.encode_images on pre-made tensors, batches of model.batch_size:
               the ceiling, since the pipeline does this plus reading, hashing, decoding
               and the catalog.
  naive        per file: full decode, EXIF transpose, open_clip's own preprocess, the
               image tower on a batch of 1 (how a first script does it).
  wmpd         run_index() on a temp config over the folder, timed from the end of the
               plan (model loaded, folder scanned) to the end of the run.
Targets: wmpd >= 0.7x model alone and >= 2.2x naive on the fetched photos.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    MODEL_NAME,
    PHOTOS,
    emit_json,
    load_average,
    print_table,
    write_config,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SMALL_SIDE_PX = 640


def photo_files(folder: Path, limit: int | None) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not files:
        raise SystemExit(f"no photos in {folder}: run bash /work/shared/fetch-photos.sh photos")
    return files[:limit] if limit else files


def link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def make_small_set(sources: list[Path], folder: Path, count: int) -> list[Path]:
    """Phone-sized JPEGs (long side 640 px) cut from the photos: decoding is cheap here."""
    from PIL import Image, ImageOps

    folder.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    for number in range(count):
        source = sources[number % len(sources)]
        with Image.open(source) as image:
            rgb = ImageOps.exif_transpose(image).convert("RGB")
        # Different crops of each photo: distinct content, so nothing is deduplicated.
        width, height = rgb.size
        shift = (number // len(sources)) * 0.05
        box = (int(width * shift), int(height * shift), width, height)
        rgb = rgb.crop(box)
        rgb.thumbnail((SMALL_SIDE_PX, SMALL_SIDE_PX))
        path = folder / f"small_{number:04d}.jpg"
        rgb.save(path, "JPEG", quality=90)
        made.append(path)
    return made


def model_alone(encode: Callable[[np.ndarray], Any], count: int, batch: int) -> tuple[float, float]:
    """(images/s, process CPU ms per image) of the image tower on pre-made tensors."""
    count = max(count, 2 * batch)  # whole batches, as the pipeline mostly runs
    pixels = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    encode(pixels)  # warm-up: first calls allocate
    done = 0
    started, cpu = time.perf_counter(), time.process_time()
    while done < count:
        encode(pixels[: min(batch, count - done)])
        done += min(batch, count - done)
    cpu_ms = (time.process_time() - cpu) * 1000 / done
    return done / (time.perf_counter() - started), cpu_ms


def plain_model() -> tuple[Any, Any]:
    """open_clip's own model and preprocess, run the way a first script would."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME, pretrained=None)
    return model.eval(), preprocess


def plain_encoder(model: Any) -> Callable[[np.ndarray], Any]:
    """The image tower with torch's defaults: one thread team over every core."""
    import torch

    threads = torch.get_num_threads()

    def encode(pixels: np.ndarray) -> Any:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            return model.encode_image(torch.from_numpy(pixels))

    return encode


def naive_loop(model: Any, preprocess: Any, files: list[Path]) -> float:
    import torch
    from PIL import Image, ImageOps

    with torch.inference_mode():
        model.encode_image(preprocess(Image.new("RGB", (224, 224)))[None])  # warm-up
        started = time.perf_counter()
        for path in files:
            with Image.open(path) as image:
                rgb = ImageOps.exif_transpose(image).convert("RGB")
            model.encode_image(preprocess(rgb)[None])
    return len(files) / (time.perf_counter() - started)


def wmpd_pipeline_costs(
    folder: Path, work: Path, batch: int, threads: int
) -> tuple[float, int, float]:
    """(images/s, images embedded, process CPU ms per image) of run_index over `folder`."""
    from wmpd.config import load_config
    from wmpd.library import run_index

    data_dir = work / f"data-{time.monotonic_ns()}"
    config = load_config(write_config(work, [folder], data_dir, batch_size=batch, threads=threads))
    marks: dict[str, float] = {}

    def on_plan(total: int) -> None:
        marks["plan"] = time.perf_counter()
        marks["cpu"] = time.process_time()

    result = run_index(config, on_plan=on_plan)
    elapsed = time.perf_counter() - marks["plan"]
    cpu_ms = (time.process_time() - marks["cpu"]) * 1000
    embedded = result.stats.embedded
    return embedded / elapsed, embedded, cpu_ms / max(1, embedded)


def load_embedder(batch: int, threads: int) -> Any:
    from wmpd.config import load_config
    from wmpd.embedder import Embedder

    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(
            write_config(Path(tmp), [Path(tmp)], Path(tmp) / "d", batch_size=batch, threads=threads)
        )
    embedder = Embedder(config.model)
    embedder.load()
    return embedder


def measure_set(
    name: str, files: list[Path], work: Path, models: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """Wall-clock rates, and CPU time per image: on a busy machine the wall figures of
    the three runs see different loads, while CPU cost per image barely moves; with every
    core busy (an idle machine), rate = cores / CPU time, so the CPU ratio is the ratio
    the pipeline reaches against the model there."""
    folder = files[0].parent
    torch_team, team_cpu = model_alone(models["plain_encode"], len(files), args.batch)
    streams, streams_cpu = model_alone(models["embedder"].encode_images, len(files), args.batch)
    naive_files = files[: args.naive_limit] if args.naive_limit else files
    naive = naive_loop(models["plain"], models["preprocess"], naive_files)
    rate, embedded, cpu_ms = wmpd_pipeline_costs(folder, work, args.batch, args.threads)
    ceiling = max(torch_team, streams)
    return {
        "set": name,
        "images": embedded,
        "model_torch_team_ips": round(torch_team, 2),
        "model_wmpd_streams_ips": round(streams, 2),
        "naive_ips": round(naive, 2),
        "wmpd_ips": round(rate, 2),
        "vs_model": round(rate / ceiling, 3),
        "vs_naive": round(rate / naive, 3),
        "model_cpu_ms_per_image": round(min(team_cpu, streams_cpu), 1),
        "wmpd_cpu_ms_per_image": round(cpu_ms, 1),
        "idle_bound_vs_model": round(min(team_cpu, streams_cpu) / cpu_ms, 3),
    }


def apply_knobs(args: argparse.Namespace) -> None:
    """Override pipeline defaults for tuning runs (decode threads, prefetch window)."""
    from wmpd import pipeline

    if args.decode_workers:
        workers = args.decode_workers
        default: Callable[[], int] = lambda: workers  # noqa: E731
        pipeline.default_decode_workers = default
    if args.prefetch:
        pipeline.PREFETCH_IMAGES = args.prefetch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few photos, under ~20 s")
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--limit", type=int, default=0, help="use only the first N photos")
    parser.add_argument("--small", type=int, default=128, help="how many small images")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="model.threads (0: torch's)")
    parser.add_argument("--decode-workers", type=int, default=0)
    parser.add_argument("--prefetch", type=int, default=0)
    parser.add_argument("--naive-limit", type=int, default=0)
    parser.add_argument("--sets", default="photos,small")
    args = parser.parse_args(argv)
    if args.quick:
        args.limit = args.limit or 8
        args.small = 16
        args.naive_limit = args.naive_limit or 4
    logging.basicConfig(level=logging.WARNING)
    apply_knobs(args)
    load_before = load_average()
    plain, preprocess = plain_model()
    models = {
        "embedder": load_embedder(args.batch, args.threads),
        "plain": plain,
        "preprocess": preprocess,
        "plain_encode": plain_encoder(plain),
    }
    photos = photo_files(args.photos, args.limit or None)
    results = []
    with tempfile.TemporaryDirectory(prefix="wmpd-bench-index-") as tmp:
        work = Path(tmp)
        if "photos" in args.sets:
            # A folder of just these files, so run_index sees exactly the measured set.
            subset = work / "photos"
            subset.mkdir()
            for path in photos:
                link_or_copy(path, subset / path.name)
            results.append(measure_set("photos", sorted(subset.iterdir()), work, models, args))
        if "small" in args.sets:
            small = make_small_set(photos, work / "small", args.small)
            results.append(measure_set("small", small, work, models, args))
    import torch

    print_table(
        f"Indexing throughput (images/s), ViT-B-32 random weights, batch {args.batch}, "
        f"torch threads {torch.get_num_threads()}, load {load_before:.1f}->{load_average():.1f}",
        [
            "set",
            "images",
            "model: torch team",
            "model: wmpd streams",
            "naive loop",
            "wmpd",
            "wmpd/best model",
            "wmpd/naive",
            "CPU ms/img model",
            "CPU ms/img wmpd",
            "CPU ratio",
        ],
        [
            [
                r["set"],
                r["images"],
                r["model_torch_team_ips"],
                r["model_wmpd_streams_ips"],
                r["naive_ips"],
                r["wmpd_ips"],
                r["vs_model"],
                r["vs_naive"],
                r["model_cpu_ms_per_image"],
                r["wmpd_cpu_ms_per_image"],
                r["idle_bound_vs_model"],
            ]
            for r in results
        ],
    )
    photos_row = next((r for r in results if r["set"] == "photos"), None)
    targets = {}
    if photos_row is not None:
        targets = {
            "target_vs_model_0_7": photos_row["vs_model"] >= 0.7,
            "target_vs_naive_2_2": photos_row["vs_naive"] >= 2.2,
        }
    emit_json(
        "indexing",
        {
            "results": results,
            "torch_threads": torch.get_num_threads(),
            "load_average": [round(load_before, 2), round(load_average(), 2)],
            **targets,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
