"""Search quality on a labelled folder, through wmpd's own indexing and search path.

    python bench/quality.py --folder PHOTOS --config CONFIG [--template "a photo of a {label}"]
    python bench/quality.py --synthetic 80          # the shipped test model on rendered scenes

The folder holds either a `labels.tsv` (file name, then one or more label columns; tab
separated; `--label-columns` picks which columns make the label) or one sub-folder per
label. Every distinct label becomes one query; an image is relevant when it carries that
label. Printed: recall@1/5/10 (a relevant image among the first k) and mean average
precision, for wmpd's default decoding and with EXIF handling or draft decoding off, so
that what each costs is visible. The model is whatever the config names, so the same
command measures real CLIP weights wherever they are available.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from wmpd.config import Config, load_config  # noqa: E402
from wmpd.imaging import DecodeOptions  # noqa: E402
from wmpd.library import open_local_search, run_index  # noqa: E402

VARIANTS: dict[str, DecodeOptions] = {
    "wmpd default": DecodeOptions(),
    "no EXIF orientation": DecodeOptions(apply_exif=False),
    "no draft decoding": DecodeOptions(use_draft=False),
}


@dataclass(frozen=True)
class Scores:
    recall_at_1: float
    recall_at_5: float
    recall_at_10: float
    mean_average_precision: float
    queries: int
    images: int
    seconds: float


def read_labelled_folder(folder: Path, label_columns: list[int]) -> dict[str, str]:
    """{absolute file path: label} from labels.tsv or from one sub-folder per label."""
    labels_file = folder / "labels.tsv"
    if labels_file.exists():
        labels = {}
        for line in labels_file.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            columns = line.split("\t")
            label = " ".join(columns[i] for i in label_columns if i < len(columns))
            labels[str((folder / columns[0]).resolve())] = label
        return labels
    return {
        str(path.resolve()): sub.name
        for sub in sorted(p for p in folder.iterdir() if p.is_dir())
        for path in sorted(sub.rglob("*"))
        if path.is_file()
    }


def average_precision(ranked_relevance: list[bool], relevant_total: int) -> float:
    hits, total = 0, 0.0
    for rank, relevant in enumerate(ranked_relevance, start=1):
        if relevant:
            hits += 1
            total += hits / rank
    return total / relevant_total if relevant_total else 0.0


def evaluate(
    config: Config, labels: dict[str, str], template: str, options: DecodeOptions
) -> Scores:
    started = time.perf_counter()
    run_index(config, decode_options=options)
    local = open_local_search(config)
    try:
        distinct = sorted(set(labels.values()))
        r1 = r5 = r10 = ap_sum = 0.0
        for label in distinct:
            vector = local.searcher.text_vector(template.format(label=label))
            page = local.searcher.search(vector, k=min(len(labels), 500))
            ranked = [labels.get(hit.path) == label for hit in page.hits]
            relevant_total = sum(1 for value in labels.values() if value == label)
            r1 += any(ranked[:1])
            r5 += any(ranked[:5])
            r10 += any(ranked[:10])
            ap_sum += average_precision(ranked, relevant_total)
        count = len(distinct)
        return Scores(
            r1 / count,
            r5 / count,
            r10 / count,
            ap_sum / count,
            count,
            len(labels),
            time.perf_counter() - started,
        )
    finally:
        local.close()


def config_for(base: Config, folder: Path, data_dir: Path) -> Config:
    from wmpd.config import FolderConfig, IndexConfig

    return replace(base, folders=(FolderConfig(path=folder),), index=IndexConfig(data_dir=data_dir))


def synthetic_setup(count: int, work: Path) -> tuple[Path, Config]:
    """Render a labelled folder and a config for the shipped tiny model."""
    from tests.models import scenes
    from tests.synthetic import make_labelled_folder

    pairs = [(c, s) for c in scenes.COLOURS for s in scenes.SHAPES]
    backgrounds = list(scenes.BACKGROUNDS)
    combos = [
        (*pairs[i % len(pairs)], backgrounds[(i + i // len(pairs)) % len(backgrounds)])
        for i in range(count)
    ]
    folder = work / "photos"
    make_labelled_folder(folder, combos, seed=1234, sizes=(512, 1200))
    config_path = work / "config.yaml"
    config_path.write_text(
        f"folders: [{folder}]\n"
        f"model:\n  name: {REPO / 'tests/models/tiny-clip.json'}\n"
        f"  pretrained: {REPO / 'tests/models/tiny-clip.pt'}\n"
        f"index:\n  data_dir: {work / 'data'}\n"
    )
    return folder, load_config(config_path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, help="labelled folder (labels.tsv or sub-folders)")
    parser.add_argument("--config", type=Path, help="wmpd config whose model section is used")
    parser.add_argument("--template", default="a photo of a {label}")
    parser.add_argument(
        "--label-columns",
        default="1,2",
        help="labels.tsv columns that make the label (default 1,2)",
    )
    parser.add_argument(
        "--synthetic",
        type=int,
        metavar="N",
        help="render N labelled scenes and use the shipped tiny model",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wmpd-quality-") as tmp:
        work = Path(tmp)
        if args.synthetic:
            folder, base = synthetic_setup(args.synthetic, work)
        elif args.folder and args.config:
            folder, base = args.folder.resolve(), load_config(args.config)
        else:
            parser.error("give --folder and --config, or --synthetic N")
        columns = [int(c) for c in args.label_columns.split(",")]
        labels = read_labelled_folder(folder, columns)
        results = {}
        for name, options in VARIANTS.items():
            config = config_for(base, folder, work / f"data-{len(results)}")
            results[name] = evaluate(config, labels, args.template, options)
    print_table(results)
    print(
        json.dumps(
            {
                "benchmark": "quality",
                "model": base.model.name,
                "results": {k: v.__dict__ for k, v in results.items()},
            }
        )
    )
    return 0


def print_table(results: dict[str, Scores]) -> None:
    first = next(iter(results.values()))
    print(f"{first.queries} queries over {first.images} images")
    print(f"{'variant':<22} {'R@1':>6} {'R@5':>6} {'R@10':>6} {'mAP':>6} {'seconds':>8}")
    for name, s in results.items():
        print(
            f"{name:<22} {s.recall_at_1:>6.3f} {s.recall_at_5:>6.3f} {s.recall_at_10:>6.3f} "
            f"{s.mean_average_precision:>6.3f} {s.seconds:>8.1f}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
