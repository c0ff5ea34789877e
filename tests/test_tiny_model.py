"""The shipped tiny CLIP and the synthetic fixtures that the other tests build on."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from open_clip import CLIP
from PIL import Image, ImageOps

from tests import synthetic
from tests.models import scenes

MODELS_DIR = Path(__file__).parent / "models"
CONFIG_PATH = MODELS_DIR / "tiny-clip.json"
WEIGHTS_PATH = MODELS_DIR / "tiny-clip.pt"
HELD_OUT_SEED = 424_242  # neither the training stream nor the training script's eval set
MIN_RECALL_AT_1 = 0.95
JPEG_TOLERANCE = 4.0  # mean absolute difference per channel, 0..255


def load_tiny_clip(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[CLIP, Callable[[Image.Image], torch.Tensor], Callable[..., torch.Tensor]]:
    # Exactly the product's path for a local checkpoint; the hub must never be asked.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    open_clip.add_model_config(CONFIG_PATH)
    model, _, preprocess = open_clip.create_model_and_transforms(
        "tiny-clip", pretrained=str(WEIGHTS_PATH)
    )
    model.eval()
    return model, preprocess, open_clip.get_tokenizer("tiny-clip")


def recall_at_1(
    model: CLIP,
    images: torch.Tensor,
    labels: list[tuple[str, str]],
    tokenizer: Callable[..., torch.Tensor],
) -> float:
    """Share of colour x shape queries whose nearest image shows that colour and shape."""
    pairs = [(c, s) for c in scenes.COLOURS for s in scenes.SHAPES]
    with torch.no_grad():
        image_features = model.encode_image(images, normalize=True)
        text_features = model.encode_text(
            tokenizer([scenes.query_for(c, s) for c, s in pairs]), normalize=True
        )
    top = (text_features @ image_features.T).argmax(dim=1).tolist()
    hits: int = sum(labels[i] == pair for i, pair in zip(top, pairs, strict=True))
    return hits / len(pairs)


@pytest.mark.parametrize(
    ("render_size", "aspect"), [(64, 1.0), (512, 4 / 3)], ids=["64px", "512px"]
)
def test_shipped_model_finds_every_colour_and_shape(
    monkeypatch: pytest.MonkeyPatch, render_size: int, aspect: float
) -> None:
    model, preprocess, tokenizer = load_tiny_clip(monkeypatch)
    rng = random.Random(HELD_OUT_SEED + render_size)
    combos = scenes.all_combos()
    images = torch.stack(
        [
            preprocess(scenes.render_scene(*combo, render_size, rng, aspect=aspect))
            for combo in combos
        ]
    )
    labels = [(colour, shape) for colour, shape, _ in combos]

    assert recall_at_1(model, images, labels, tokenizer) >= MIN_RECALL_AT_1


def test_shipped_checkpoint_is_small_half_precision_state_dict() -> None:
    state = torch.load(WEIGHTS_PATH, map_location="cpu", weights_only=True)

    assert WEIGHTS_PATH.stat().st_size < 10_000_000
    assert state["visual.conv1.weight"].dtype == torch.float16
    assert "logit_scale" in state


def test_render_scene_is_deterministic() -> None:
    first = scenes.render_scene("red", "star", "grass", 128, random.Random(7))
    again = scenes.render_scene("red", "star", "grass", 128, random.Random(7))
    other = scenes.render_scene("red", "star", "grass", 128, random.Random(8))

    assert first.tobytes() == again.tobytes()
    assert first.tobytes() != other.tobytes()
    assert first.mode == "RGB"


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size
    left = np.asarray(a.convert("RGB"), dtype=np.float32)
    right = np.asarray(b.convert("RGB"), dtype=np.float32)
    return float(np.abs(left - right).mean())


EXPECTED_MODE = {"jpeg": "RGB", "png": "RGB", "webp": "RGB", "gif": "P", "jpeg-cmyk": "CMYK"}
EXPECTED_PIL_FORMAT = {
    "jpeg": "JPEG",
    "png": "PNG",
    "webp": "WEBP",
    "gif": "GIF",
    "jpeg-cmyk": "JPEG",
}


def test_labelled_folder_writes_every_format_and_orientation(tmp_path: Path) -> None:
    images = synthetic.make_labelled_folder(tmp_path, sizes=(512, 640))

    assert {(im.format, im.orientation) for im in images} == set(synthetic.VARIANTS)
    assert {im.orientation for im in images} >= {1, 2, 3, 4, 5, 6, 7, 8}
    for image in images:
        with Image.open(image.path) as opened:
            assert opened.format == EXPECTED_PIL_FORMAT[image.format]
            assert opened.mode == EXPECTED_MODE[image.format]
            assert opened.getexif().get(synthetic.EXIF_ORIENTATION_TAG, 1) == image.orientation
            upright = ImageOps.exif_transpose(opened)
        assert 512 <= max(upright.size) <= 640
        assert mean_difference(upright, image.render_upright()) < JPEG_TOLERANCE, image


def test_labels_tsv_lists_every_file_with_its_scene(tmp_path: Path) -> None:
    combos = [("red", "circle", "white"), ("blue", "star", "night"), ("green", "heart", "grass")]
    images = synthetic.make_labelled_folder(tmp_path, combos=combos, seed=3, sizes=(512, 512))

    lines = (tmp_path / synthetic.LABELS_FILE).read_text(encoding="utf-8").splitlines()
    assert lines == [
        f"{im.path.name}\t{c}\t{s}\t{b}" for im, (c, s, b) in zip(images, combos, strict=True)
    ]
    assert synthetic.read_labels(tmp_path) == {
        im.path.name: combo for im, combo in zip(images, combos, strict=True)
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [synthetic.LABELS_FILE, *(im.path.name for im in images)]
    )


@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_rotated_copy_turns_back_upright(tmp_path: Path, orientation: int) -> None:
    source = synthetic.make_labelled_folder(
        tmp_path / "src", combos=[("orange", "triangle", "sand")], sizes=(512, 512)
    )[0]
    copy = synthetic.make_rotated_copy(source.path, tmp_path / "copy.jpg", orientation)

    with Image.open(source.path) as original, Image.open(copy) as stored:
        assert stored.getexif()[synthetic.EXIF_ORIENTATION_TAG] == orientation
        raw = stored.convert("RGB")
        upright = ImageOps.exif_transpose(stored)
        assert mean_difference(upright, original) < JPEG_TOLERANCE
    # The stored pixels really are turned, so the copy is a near duplicate, not a twin.
    assert raw.size != original.size or mean_difference(raw, original) > 4 * JPEG_TOLERANCE
