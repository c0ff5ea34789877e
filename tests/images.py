"""Test image files of every kind, written with Pillow (or by hand where Pillow cannot).

Good kinds cover the modes and containers a photo folder holds (8-bit and 16-bit grey,
palette with and without transparency, alpha, CMYK, 32-bit integer and float TIFF,
animated GIF, WebP, HEIC when pillow-heif is installed, every EXIF orientation). Broken
kinds are the files a real folder also holds: empty, cut short, random bytes, text with
an image extension, and a PNG whose header claims ten billion pixels (a decompression
bomb that must be refused before any pixel is decoded).

Content comes from the procedural scene renderer, so distinct seeds give distinct files
(distinct content hashes) that the tiny test model can tell apart. Sizes stay small.
"""

from __future__ import annotations

import hashlib
import io
import random
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tests.models import scenes

EXIF_ORIENTATION_TAG = 0x0112
EXIF_IFD_TAG = 0x8769
EXIF_DATETIME_ORIGINAL_TAG = 0x9003
EXIF_OFFSET_TIME_ORIGINAL_TAG = 0x9011
DEFAULT_SIDE = 48
BOMB_SIDE = 100_000

# What to apply to an upright picture so that EXIF orientation `o` turns it upright again.
_STORE_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def _heif_encoder_available() -> bool:
    try:
        import pillow_heif  # the optional dependency that wmpd decodes HEIC with
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


# kind → file suffix; every kind here decodes.
GOOD_KINDS: dict[str, str] = {
    "jpeg": ".jpg",
    "jpeg-progressive": ".jpeg",
    "jpeg-gray": ".jpg",
    "jpeg-cmyk": ".jpg",
    "png-rgb": ".png",
    "png-rgba": ".png",
    "png-la": ".png",
    "png-l": ".png",
    "png-1": ".png",
    "png-p": ".png",
    "png-p-transparent": ".png",
    "png-i16": ".png",
    "gif": ".gif",
    "gif-animated": ".gif",
    "webp": ".webp",
    "webp-rgba": ".webp",
    "bmp": ".bmp",
    "tiff": ".tif",
    "tiff-float": ".tiff",
    "tiff-i32": ".tif",
    **{f"jpeg-exif-{o}": ".jpg" for o in _STORE_TRANSPOSE},
    **({"heic": ".heic"} if _heif_encoder_available() else {}),
}

# kind → (file suffix, the failure reason wmpd records for it).
BROKEN_KINDS: dict[str, tuple[str, str]] = {
    "zero-byte": (".jpg", "empty"),
    "truncated-jpeg": (".jpg", "truncated"),
    "truncated-png": (".png", "truncated"),
    "random-bytes": (".jpg", "corrupt"),
    "text-as-png": (".png", "corrupt"),
    "png-bomb": (".png", "too_many_pixels"),
}


def scene(seed: int, side: int = DEFAULT_SIDE, aspect: float = 4 / 3) -> Image.Image:
    """A distinct RGB picture for each seed: one coloured shape on a background.

    Seeds 0 to 199 give 200 different (colour, shape, background) scenes.
    """
    colours = list(scenes.COLOURS)
    backgrounds = list(scenes.BACKGROUNDS)
    combos = len(colours) * len(scenes.SHAPES)
    colour = colours[seed % len(colours)]
    shape = scenes.SHAPES[(seed // len(colours)) % len(scenes.SHAPES)]
    background = backgrounds[(seed + seed // combos) % len(backgrounds)]
    return scenes.render_scene(
        colour, shape, background, side, random.Random(seed * 7919 + 1), aspect=aspect
    )


def encode_good(kind: str, seed: int = 0, side: int = DEFAULT_SIDE) -> bytes:
    """The bytes of a decodable image file of this kind."""
    image = scene(seed, side)
    out = io.BytesIO()
    if kind in ("jpeg", "jpeg-progressive"):
        image.save(out, "JPEG", quality=90, progressive=kind == "jpeg-progressive")
    elif kind == "jpeg-gray":
        image.convert("L").save(out, "JPEG", quality=90)
    elif kind == "jpeg-cmyk":
        image.convert("CMYK").save(out, "JPEG", quality=90)
    elif kind.startswith("jpeg-exif-"):
        orientation = int(kind.rsplit("-", 1)[1])
        exif = Image.Exif()
        exif[EXIF_ORIENTATION_TAG] = orientation
        stored = image.transpose(_STORE_TRANSPOSE[orientation])
        stored.save(out, "JPEG", quality=90, exif=exif.tobytes())
    elif kind.startswith("png-"):
        _save_png(image, kind, out)
    elif kind == "gif":
        image.quantize(colors=32).save(out, "GIF")
    elif kind == "gif-animated":
        frames = [image.quantize(colors=32), scene(seed + 1, side).quantize(colors=32)]
        frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=100)
    elif kind == "webp":
        image.save(out, "WEBP", quality=80, method=0)
    elif kind == "webp-rgba":
        _with_alpha(image).save(out, "WEBP", quality=80, method=0)
    elif kind == "bmp":
        image.save(out, "BMP")
    elif kind == "tiff":
        image.save(out, "TIFF")
    elif kind == "tiff-i32":
        grey = np.asarray(image.convert("L"), dtype=np.int32) * 40_000
        Image.fromarray(grey).save(out, "TIFF")
    elif kind == "heic":
        image.save(out, "HEIF", quality=80)
    elif kind == "tiff-float":
        grey = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
        Image.fromarray(grey, mode="F").save(out, "TIFF")
    else:
        raise ValueError(f"unknown good kind {kind!r}; use one of {sorted(GOOD_KINDS)}")
    return out.getvalue()


def _save_png(image: Image.Image, kind: str, out: io.BytesIO) -> None:
    if kind == "png-rgb":
        image.save(out, "PNG", compress_level=1)
    elif kind == "png-rgba":
        _with_alpha(image).save(out, "PNG", compress_level=1)
    elif kind == "png-la":
        _with_alpha(image).convert("LA").save(out, "PNG")
    elif kind == "png-l":
        image.convert("L").save(out, "PNG")
    elif kind == "png-1":
        image.convert("1").save(out, "PNG")
    elif kind == "png-p":
        image.quantize(colors=16).save(out, "PNG")
    elif kind == "png-p-transparent":
        image.quantize(colors=16).save(out, "PNG", transparency=0)
    elif kind == "png-i16":
        grey = np.asarray(image.convert("L"), dtype=np.uint16) * 257
        Image.fromarray(grey).save(out, "PNG")
    else:
        raise ValueError(f"unknown PNG kind {kind!r}")


def _with_alpha(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    alpha = Image.linear_gradient("L").resize(image.size)
    rgba.putalpha(alpha)
    return rgba


def encode_broken(kind: str, seed: int = 0) -> bytes:
    """The bytes of a file that wmpd must record as failed (never crash on)."""
    if kind == "zero-byte":
        return b""
    if kind == "truncated-jpeg":
        whole = encode_good("jpeg", seed, side=96)
        return whole[: len(whole) // 2]
    if kind == "truncated-png":
        whole = encode_good("png-rgb", seed, side=96)
        return whole[: len(whole) // 2]
    if kind == "random-bytes":
        return random.Random(seed).randbytes(777 + seed)
    if kind == "text-as-png":
        return f"this is a shopping list, not a picture ({seed})\n".encode() * 20
    if kind == "png-bomb":
        return png_bomb(BOMB_SIDE + seed)
    raise ValueError(f"unknown broken kind {kind!r}; use one of {sorted(BROKEN_KINDS)}")


def png_bomb(side: int = BOMB_SIDE) -> bytes:
    """A tiny, well-formed PNG whose header claims side x side RGB pixels."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def write_good(path: Path, kind: str = "jpeg", seed: int = 0, side: int = DEFAULT_SIDE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_good(kind, seed, side))
    return path


def write_broken(path: Path, kind: str, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_broken(kind, seed))
    return path


def write_jpeg_taken_at(path: Path, seed: int, taken_at: str, offset: str = "+00:00") -> Path:
    """A JPEG whose EXIF DateTimeOriginal is `taken_at` ("YYYY:MM:DD HH:MM:SS") at `offset`."""
    exif = Image.Exif()
    details = exif.get_ifd(EXIF_IFD_TAG)
    details[EXIF_DATETIME_ORIGINAL_TAG] = taken_at
    details[EXIF_OFFSET_TIME_ORIGINAL_TAG] = offset
    path.parent.mkdir(parents=True, exist_ok=True)
    scene(seed).save(path, "JPEG", quality=90, exif=exif.tobytes())
    return path


@dataclass
class MixedFolder:
    """What make_mixed_folder wrote: decodable files and broken ones with their reasons."""

    root: Path
    good: list[Path] = field(default_factory=list)
    broken: dict[Path, str] = field(default_factory=dict)

    @property
    def all_files(self) -> list[Path]:
        return [*self.good, *self.broken]


def make_mixed_folder(root: Path, good: int, *, broken_each: int = 1, seed: int = 0) -> MixedFolder:
    """`good` distinct decodable files cycling through every good kind, spread over three
    sub-folders, plus `broken_each` files of every broken kind."""
    folder = MixedFolder(root)
    kinds = list(GOOD_KINDS)
    for number in range(good):
        kind = kinds[number % len(kinds)]
        sub = ("", "trips", "trips/2021")[number % 3]
        name = f"{kind}-{number:04d}{GOOD_KINDS[kind]}"
        folder.good.append(write_good(root / sub / name, kind, seed + number))
    for kind, (suffix, reason) in BROKEN_KINDS.items():
        for number in range(broken_each):
            path = write_broken(root / "broken" / f"{kind}-{number}{suffix}", kind, seed + number)
            folder.broken[path] = reason
    return folder


def file_digests(root: Path) -> dict[str, str]:
    """SHA-256 of every file under root (following nothing), keyed by relative path."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }
