"""wmpd.imaging against open_clip's own inference transform, on real photographs.

Without draft the arrays must be the same as open_clip's (the transform is reproduced
pixel for pixel); with JPEG draft and reducing_gap they must stay close enough that the
embedding barely moves. The photos come from /work/shared/fetch-photos.sh; point
WMPD_TEST_PHOTOS elsewhere to use another set (a folder with a hires/ subfolder).
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps

from wmpd.imaging import DecodeOptions, PreprocessSpec, decode_image

open_clip = pytest.importorskip("open_clip")
torch = pytest.importorskip("torch")

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
PHOTOS = Path(os.environ.get("WMPD_TEST_PHOTOS", REPO / "photos"))
TINY_CONFIG = REPO / "tests" / "models" / "tiny-clip.json"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# One photo in SAMPLE_EVERY of the sorted set keeps the default run to a few seconds while
# still mixing baseline and progressive JPEGs, PNGs, portrait and landscape, 1 to 24 MP.
SAMPLE_EVERY = 5
EXACT = DecodeOptions(use_draft=False)
FAST = DecodeOptions(use_draft=True)


@dataclass(frozen=True)
class Photo:
    path: Path
    data: bytes

    def upright(self) -> Image.Image:
        """What an open_clip user feeds preprocess: the file opened and turned upright."""
        return ImageOps.exif_transpose(Image.open(io.BytesIO(self.data)))

    def megapixels(self) -> float:
        width, height = Image.open(io.BytesIO(self.data)).size
        return width * height / 1e6


def has_transparency(image: Image.Image) -> bool:
    if "A" not in image.mode and "transparency" not in image.info:
        return False
    lowest, _ = image.convert("RGBA").getchannel("A").getextrema()
    return bool(lowest != 255)


def load_photos(every: int) -> list[Photo]:
    folder = PHOTOS / "hires"
    paths = sorted(folder.glob("*.jp*g")) + sorted(folder.glob("*.png"))
    if not paths:
        pytest.skip(
            f"no photos in {folder}: run `bash /work/shared/fetch-photos.sh {PHOTOS}` "
            "or set WMPD_TEST_PHOTOS"
        )
    photos = []
    for path in sorted(paths)[::every]:
        photo = Photo(path, path.read_bytes())
        # Transparent pixels are composited on white on purpose, where open_clip drops
        # alpha and shows whatever colour hides under it: not comparable.
        if not has_transparency(photo.upright()):
            photos.append(photo)
    return photos


@pytest.fixture(scope="module")
def photos() -> list[Photo]:
    return load_photos(SAMPLE_EVERY)


def spec_of(preprocess: Any, image_size: int) -> PreprocessSpec:
    normalize = preprocess.transforms[-1]
    return PreprocessSpec(image_size, tuple(normalize.mean), tuple(normalize.std))


def ours(photos: list[Photo], spec: PreprocessSpec, options: DecodeOptions) -> np.ndarray:
    return np.stack([decode_image(p.data, p.path, spec, options).pixels for p in photos])


def theirs(photos: list[Photo], preprocess: Callable[[Image.Image], Any]) -> np.ndarray:
    return np.stack([preprocess(p.upright()).numpy() for p in photos])


def embed(model: Any, pixels: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        features = model.encode_image(torch.from_numpy(pixels))
        return np.asarray(torch.nn.functional.normalize(features, dim=-1).numpy())


def cosines(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    return np.asarray((left * right).sum(axis=-1))


def report(name: str, values: np.ndarray, record: Callable[[str, object], None]) -> str:
    summary = f"{name}: min {values.min():.6f} mean {values.mean():.6f} (n={len(values)})"
    logger.info("%s", summary)
    record(name, summary)
    return summary


def assert_same_pixels(
    photos: list[Photo], mine: np.ndarray, reference: np.ndarray, label: str, record: Any
) -> None:
    worst = np.abs(mine - reference).reshape(len(photos), -1).max(axis=1)
    report(f"max abs pixel difference, {label}", worst, record)
    assert worst.max() <= 1e-6, [p.path.name for p, w in zip(photos, worst, strict=True) if w]


def test_pixels_identical_without_draft(
    photos: list[Photo], record_property: Callable[[str, object], None]
) -> None:
    preprocess = open_clip.image_transform(224, is_train=False, mean=OPENAI_MEAN, std=OPENAI_STD)
    spec = PreprocessSpec(224, OPENAI_MEAN, OPENAI_STD)
    mine, reference = ours(photos, spec, EXACT), theirs(photos, preprocess)
    assert_same_pixels(photos, mine, reference, "224 px, no draft", record_property)


def test_pillow_orientation_samples_match_open_clip() -> None:
    # EXIF-rotated files: we turn them upright ourselves; the reference uses exif_transpose.
    samples = sorted((PHOTOS / "pillow").glob("hopper_orientation_*"))
    if not samples:
        pytest.skip(f"no Pillow samples in {PHOTOS / 'pillow'}: run fetch-photos.sh")
    photos = [Photo(p, p.read_bytes()) for p in samples]
    preprocess = open_clip.image_transform(224, is_train=False, mean=OPENAI_MEAN, std=OPENAI_STD)
    spec = PreprocessSpec(224, OPENAI_MEAN, OPENAI_STD)
    assert np.abs(ours(photos, spec, EXACT) - theirs(photos, preprocess)).max() <= 1e-6


def test_tiny_clip_embeddings(
    photos: list[Photo], record_property: Callable[[str, object], None]
) -> None:
    open_clip.add_model_config(TINY_CONFIG)
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("tiny-clip", pretrained=None)
    model.eval()
    spec = spec_of(preprocess, model.visual.image_size[0])
    exact_pixels, reference_pixels = ours(photos, spec, EXACT), theirs(photos, preprocess)
    assert_same_pixels(photos, exact_pixels, reference_pixels, "64 px, no draft", record_property)
    reference = embed(model, reference_pixels)
    exact = cosines(embed(model, exact_pixels), reference)
    fast = cosines(embed(model, ours(photos, spec, FAST)), reference)
    report("tiny-clip cosine, no draft", exact, record_property)
    summary = report("tiny-clip cosine, draft", fast, record_property)
    assert exact.min() >= 0.999
    assert fast.min() >= 0.99, summary


@pytest.mark.slow
def test_vit_b_32_embeddings(
    photos: list[Photo], record_property: Callable[[str, object], None]
) -> None:
    # Random weights, but the real architecture and input size. Cosines between different
    # photos are recorded too, to show how far apart unrelated inputs land in this space.
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    preprocess = open_clip.image_transform(224, is_train=False, mean=OPENAI_MEAN, std=OPENAI_STD)
    spec = PreprocessSpec(224, OPENAI_MEAN, OPENAI_STD)
    chosen = photos[:8]
    reference = embed(model, theirs(chosen, preprocess))
    exact = cosines(embed(model, ours(chosen, spec, EXACT)), reference)
    fast = cosines(embed(model, ours(chosen, spec, FAST)), reference)
    unrelated = cosines(reference, np.roll(reference, 1, axis=0))
    report("ViT-B-32 cosine, no draft", exact, record_property)
    summary = report("ViT-B-32 cosine, draft", fast, record_property)
    report("ViT-B-32 cosine between different photos", unrelated, record_property)
    assert exact.min() >= 0.999
    assert fast.min() >= 0.99, summary


def test_draft_is_faster_on_jpegs(
    photos: list[Photo], record_property: Callable[[str, object], None]
) -> None:
    jpegs = [p for p in photos if p.path.suffix.lower() in {".jpg", ".jpeg"}]
    spec = PreprocessSpec(224, OPENAI_MEAN, OPENAI_STD)
    seconds = {}
    for label, options in ("no draft", EXACT), ("draft", FAST):
        started = time.perf_counter()
        ours(jpegs, spec, options)
        seconds[label] = time.perf_counter() - started
        megapixels = sum(p.megapixels() for p in jpegs)
        summary = (
            f"{1000 * seconds[label] / len(jpegs):.0f} ms/image over {len(jpegs)} JPEGs "
            f"averaging {megapixels / len(jpegs):.1f} MP"
        )
        report_line = f"decode+preprocess, {label}: {summary}"
        logger.info("%s", report_line)
        record_property(f"speed {label}", report_line)
    # Shared CPUs make single timings noisy; the draft path is 2-10 times faster, so only
    # a broken draft (full-size decoding) would make it slower than the exact path.
    assert seconds["draft"] < seconds["no draft"]
