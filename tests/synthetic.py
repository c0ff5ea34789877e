"""Labelled photo folders for end-to-end tests, rendered from ``tests/models/scenes.py``.

Files come at realistic sizes and aspect ratios and in the formats a photo folder
holds: JPEG, PNG, WebP, palette GIF, CMYK JPEG, and JPEGs stored sideways or mirrored
with an EXIF Orientation tag that turns them upright. ``labels.tsv`` beside them says
what each shows (file name, colour, shape, background; tab separated, no header).
File names carry no label, so a search can only succeed through the pixels.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from tests.models import scenes

LABELS_FILE = "labels.tsv"
EXIF_ORIENTATION_TAG = 0x0112

# What to apply to an upright picture so that the EXIF Orientation ``o`` turns it
# upright again (the inverse of what ``ImageOps.exif_transpose`` does for ``o``).
_STORE_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}

# (format, EXIF orientation) pairs written in turn; 1 means no orientation tag.
VARIANTS: tuple[tuple[str, int], ...] = (
    ("jpeg", 1),
    ("png", 1),
    ("webp", 1),
    ("gif", 1),
    ("jpeg-cmyk", 1),
    *(("jpeg", orientation) for orientation in (3, 6, 8, 2, 4, 5, 7)),
)
FORMATS: tuple[str, ...] = ("jpeg", "png", "webp", "gif", "jpeg-cmyk")
_SUFFIX = {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "gif": ".gif", "jpeg-cmyk": ".jpg"}
ASPECTS: tuple[float, ...] = (1.0, 4 / 3, 3 / 4, 3 / 2, 2 / 3, 16 / 9)
JPEG_QUALITY = 92


@dataclass(frozen=True)
class LabelledImage:
    """One written file, what it shows, and how it is stored."""

    path: Path
    colour: str
    shape: str
    background: str
    format: str  # one of FORMATS
    orientation: int  # EXIF Orientation written into the file; 1 = none
    size: tuple[int, int] = (0, 0)  # upright (width, height)
    render_seed: int = 0

    def render_upright(self) -> Image.Image:
        """The picture as it should look once decoded and turned upright."""
        return _render(self.colour, self.shape, self.background, self.size, self.render_seed)


def make_labelled_folder(
    dest: Path,
    combos: list[tuple[str, str, str]] | None = None,
    seed: int = 0,
    sizes: tuple[int, int] = (512, 2000),
) -> list[LabelledImage]:
    """Render ``combos`` (colour, shape, background) into ``dest`` and write labels.tsv.

    Formats cycle through VARIANTS, so twelve or more combos write every format and
    orientation. Without ``combos``, twelve scenes with distinct colour and shape are
    drawn. The longer side of each picture lies within ``sizes`` (inclusive).
    """
    rng = random.Random(seed)
    dest.mkdir(parents=True, exist_ok=True)
    chosen = combos if combos is not None else default_combos(rng, len(VARIANTS))
    written = []
    for index, (colour, shape, background) in enumerate(chosen):
        fmt, orientation = VARIANTS[index % len(VARIANTS)]
        size = _pick_size(rng, sizes)
        render_seed = seed * 1_000_003 + index
        image = _render(colour, shape, background, size, render_seed)
        path = dest / f"img{index:03d}{_SUFFIX[fmt]}"
        _save(image, path, fmt, orientation)
        written.append(
            LabelledImage(path, colour, shape, background, fmt, orientation, size, render_seed)
        )
    write_labels(dest, written)
    return written


def default_combos(rng: random.Random, count: int) -> list[tuple[str, str, str]]:
    """``count`` scenes with pairwise distinct (colour, shape), backgrounds in turn."""
    pairs = rng.sample([(c, s) for c in scenes.COLOURS for s in scenes.SHAPES], count)
    backgrounds = list(scenes.BACKGROUNDS)
    return [(c, s, backgrounds[i % len(backgrounds)]) for i, (c, s) in enumerate(pairs)]


def write_labels(dest: Path, images: list[LabelledImage]) -> Path:
    path = dest / LABELS_FILE
    rows = [f"{im.path.name}\t{im.colour}\t{im.shape}\t{im.background}\n" for im in images]
    path.write_text("".join(rows), encoding="utf-8")
    return path


def read_labels(folder: Path) -> dict[str, tuple[str, str, str]]:
    """labels.tsv as {file name: (colour, shape, background)}."""
    labels = {}
    for line in (folder / LABELS_FILE).read_text(encoding="utf-8").splitlines():
        name, colour, shape, background = line.split("\t")
        labels[name] = (colour, shape, background)
    return labels


def make_rotated_copy(src: Path, dest: Path, orientation: int) -> Path:
    """Copy ``src`` to ``dest`` stored turned, with an EXIF tag that turns it back.

    Viewers that honour EXIF show ``dest`` exactly as ``src`` (up to re-encoding), which
    makes it a near duplicate whose raw pixels differ. The format follows ``dest``'s
    suffix (JPEG, PNG and WebP carry EXIF).
    """
    if orientation not in _STORE_TRANSPOSE:
        raise ValueError(f"EXIF orientation must be 2..8, got {orientation}")
    with Image.open(src) as opened:
        upright = ImageOps.exif_transpose(opened).convert("RGB")
    fmt = "jpeg" if dest.suffix.lower() in (".jpg", ".jpeg") else dest.suffix.lower().lstrip(".")
    _save(upright, dest, fmt, orientation)
    return dest


def _pick_size(rng: random.Random, sizes: tuple[int, int]) -> tuple[int, int]:
    long_side = rng.randint(*sizes)
    aspect = rng.choice(ASPECTS)
    if aspect >= 1:
        return long_side, max(8, round(long_side / aspect))
    return max(8, round(long_side * aspect)), long_side


def _render(
    colour: str, shape: str, background: str, size: tuple[int, int], render_seed: int
) -> Image.Image:
    width, height = size
    rng = random.Random(render_seed)
    return scenes.render_scene(colour, shape, background, max(size), rng, aspect=width / height)


def _save(image: Image.Image, path: Path, fmt: str, orientation: int) -> None:
    extra: dict[str, bytes] = {}
    if orientation != 1:
        image = image.transpose(_STORE_TRANSPOSE[orientation])
        exif = Image.Exif()
        exif[EXIF_ORIENTATION_TAG] = orientation
        extra["exif"] = exif.tobytes()
    if fmt == "jpeg":
        image.save(path, "JPEG", quality=JPEG_QUALITY, **extra)
    elif fmt == "jpeg-cmyk":
        image.convert("CMYK").save(path, "JPEG", quality=JPEG_QUALITY)
    elif fmt == "png":
        image.save(path, "PNG", compress_level=1, **extra)
    elif fmt == "webp":
        image.save(path, "WEBP", quality=85, method=0, **extra)
    elif fmt == "gif":
        # A real palette image: 64 colours, as old GIFs and exports carry them.
        image.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(path, "GIF")
    else:
        raise ValueError(f"unknown format {fmt!r}; use one of {FORMATS}")
