"""Image files to model-ready arrays and web thumbnails, with Pillow and numpy only.

The embedder is the only torch importer, so this module reproduces open_clip's inference
transform (shortest-side bicubic resize, centre crop, to RGB, /255, normalise) on PIL images:
decoding runs without torch and can use JPEG DCT-domain downscaling ("draft"), which is
several times faster than decoding a photo at full size. Every failure is an ImageError whose
reason is a short stable code that the catalog stores.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError, features
from PIL.JpegImagePlugin import JpegImageFile

from wmpd.errors import ImageError
from wmpd.exif import Box, orient, orient_box, read_exif, read_orientation, read_taken_at

logger = logging.getLogger(__name__)

READ_REASONS = ("empty", "too_large", "unreadable", "vanished")
DECODE_REASONS = ("corrupt", "truncated", "too_many_pixels", "unsupported_format")

# Ask the JPEG decoder for a short side of at least this times the model input, so the
# bicubic filter still has detail to average. Measured on 55 real photos (random-init
# ViT-B-32, 224 px), worst embedding cosine to open_clip's own preprocess: 0.9996 at 1.0,
# 0.99997 at 1.5 and at 2.0; mean time per JPEG 50, 52 and 55 ms.
DRAFT_OVERSAMPLE = 1.5
# For non-JPEG files with draft on, Pillow first box-averages by an integer factor while the
# image stays at least this many times the target, then resamples bicubically. Measured: a
# 15 MP PNG takes 206 instead of 265 ms; the worst cosine is unchanged to five digits.
REDUCING_GAP = 3.0
THUMBNAIL_QUALITY = 82
# Beyond this aspect ratio only the centre crop is resampled, to bound memory.
MAX_RESIZED_SIDE_FACTOR = 16

_BASE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"})
_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
# Brands of ISO-BMFF still images (HEIF/AVIF) and JPEG XL signatures: real image formats that
# this install may lack a decoder for, as opposed to bytes that are no image at all.
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_JXL_SIGNATURES = (b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")

_PIXEL_LIMIT_LOCK = threading.Lock()

# A region of an image in pixel coordinates: left, top, right, bottom.


@dataclass(frozen=True)
class PreprocessSpec:
    """What the model expects: a square input side and per-channel mean and std."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True)
class DecodeOptions:
    """How to decode: a pixel cap against decompression bombs, and two speed/fidelity knobs."""

    max_image_pixels: int = 200_000_000
    use_draft: bool = True
    apply_exif: bool = True


@dataclass(frozen=True)
class DecodedImage:
    """One image ready for the model, with what the catalog records about it."""

    pixels: np.ndarray
    width: int
    height: int
    taken_at: float | None
    format: str


def supported_extensions() -> frozenset[str]:
    """Lower-case file extensions (no dot) that this install can decode."""
    extensions = set(_BASE_EXTENSIONS)
    if _heif_available():
        extensions |= {"heic", "heif"}
    if features.check("avif"):
        extensions.add("avif")
    return frozenset(extensions)


@functools.cache
def _heif_available() -> bool:
    """Register pillow-heif's opener once per process; False when it is not installed."""
    try:
        import pillow_heif  # optional dependency
    except (ImportError, OSError):
        return False
    pillow_heif.register_heif_opener()
    return True


def read_file(path: Path, max_file_bytes: int) -> bytes:
    """Read a whole image file, refusing empty, oversized, missing and non-regular files."""
    try:
        # O_NONBLOCK: a FIFO named like a photo must not hang the worker on open().
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError as exc:
        raise ImageError(str(path), "vanished", "the file no longer exists") from exc
    except OSError as exc:
        raise ImageError(str(path), "unreadable", _os_detail(exc)) from exc
    try:
        data = _read_regular(fd, path, max_file_bytes)
    except FileNotFoundError as exc:
        raise ImageError(str(path), "vanished", _os_detail(exc)) from exc
    except OSError as exc:
        raise ImageError(str(path), "unreadable", _os_detail(exc)) from exc
    finally:
        os.close(fd)
    if not data:
        raise ImageError(str(path), "empty", "the file has 0 bytes")
    return data


def _read_regular(fd: int, path: Path, max_file_bytes: int) -> bytes:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(str(path), "unreadable", "not a regular file")
    # fstat first so that a huge file is refused without reading it into memory.
    if info.st_size > max_file_bytes:
        raise ImageError(str(path), "too_large", f"{info.st_size} bytes > limit {max_file_bytes}")
    with open(fd, "rb", closefd=False) as file:
        # One byte past the limit tells a file that grew after fstat from one that fits.
        data = file.read(max_file_bytes + 1)
    if len(data) > max_file_bytes:
        raise ImageError(str(path), "too_large", f"over {max_file_bytes} bytes (still growing?)")
    return data


def _os_detail(exc: OSError) -> str:
    return exc.strerror or str(exc)


def content_hash(data: bytes) -> str:
    """The identity of an image: 128-bit BLAKE2b of its bytes, as 32 hex digits."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def decode_image(
    data: bytes, path: Path, spec: PreprocessSpec, options: DecodeOptions = DecodeOptions()
) -> DecodedImage:
    """Decode one image file into the model's normalised (3, S, S) float32 input."""
    side = spec.image_size
    with _image_errors(path, data):
        image = _open_checked(data, path, options.max_image_pixels)
        draft_side = round(side * DRAFT_OVERSAMPLE) if options.use_draft else None
        loaded = _load(image, draft_side)
        orientation = loaded.orientation if options.apply_exif else 1
        upright = _upright_size(loaded.full_size, orientation)
        box = orient_box(loaded.box, loaded.rgb.size, orientation)
        rgb = orient(loaded.rgb, orientation)
        gap = REDUCING_GAP if options.use_draft else None
        square = _resize_and_crop(rgb, side, upright, box, gap)
        return DecodedImage(
            pixels=_normalise(square, spec),
            width=upright[0],
            height=upright[1],
            taken_at=read_taken_at(loaded.exif),
            format=image.format or "UNKNOWN",
        )


def open_upright(
    data: bytes, path: Path, max_image_pixels: int, min_side: int | None = None
) -> Image.Image:
    """The first frame as an upright RGB image; JPEGs shrunk (short side >= min_side) if given."""
    with _image_errors(path, data):
        loaded = _load(_open_checked(data, path, max_image_pixels), min_side)
        return orient(loaded.rgb, loaded.orientation)


def make_thumbnail(data: bytes, path: Path, size: int, max_image_pixels: int) -> bytes:
    """JPEG bytes of the upright image, longest side `size` (never enlarged)."""
    with _image_errors(path, data):
        image = _open_checked(data, path, max_image_pixels)
        # Twice the final size lets the bicubic filter average real detail (as thumbnail() does).
        loaded = _load(image, max(1, round(2 * size * min(image.size) / max(image.size))))
        rgb = loaded.rgb
        rgb.thumbnail((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)
        rgb = orient(rgb, loaded.orientation)
        out = io.BytesIO()
        profile = _rgb_profile(image.info.get("icc_profile"))
        rgb.save(out, "JPEG", quality=THUMBNAIL_QUALITY, icc_profile=profile)
        return out.getvalue()


@dataclass(frozen=True)
class _Loaded:
    """The first frame in RGB, as stored (not yet upright), with what is needed to finish."""

    rgb: Image.Image
    box: Box  # where the full image lies in rgb: all of it, unless drafted
    full_size: tuple[int, int]  # as stored, before any draft
    orientation: int
    exif: Image.Exif | None


def _load(image: Image.Image, draft_side: int | None) -> _Loaded:
    full_size = image.size
    box = _draft(image, draft_side) if draft_side is not None else None
    # Load before reading the orientation: Pillow turns a TIFF upright while loading it and
    # drops the tag; read earlier, the tag would make us turn it a second time.
    image.load()
    exif = read_exif(image)
    rgb = _to_rgb(image)
    return _Loaded(
        rgb=rgb,
        box=box or (0.0, 0.0, *rgb.size),
        full_size=full_size,
        orientation=read_orientation(exif),
        exif=exif,
    )


def _rgb_profile(profile: object) -> bytes | None:
    """The ICC profile if it describes RGB (a CMYK source's profile would misdescribe us)."""
    if isinstance(profile, bytes) and profile[16:20] == b"RGB ":
        return profile
    return None


def _open_checked(data: bytes, path: Path, max_image_pixels: int) -> Image.Image:
    """Open lazily (header only) and refuse decompression bombs before any pixel is decoded."""
    _heif_available()
    _raise_pillow_pixel_limit(max_image_pixels)
    image = Image.open(io.BytesIO(data))
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(str(path), "corrupt", f"header says {width}x{height}")
    if width * height > max_image_pixels:
        detail = f"{width}x{height} = {width * height} pixels > limit {max_image_pixels}"
        raise ImageError(str(path), "too_many_pixels", detail)
    return image


def _raise_pillow_pixel_limit(max_image_pixels: int) -> None:
    """Keep Pillow's process-wide bomb check as a backstop that never undercuts our limit.

    Our own check reads the header; Pillow's also guards sizes a header does not tell (a GIF
    frame larger than its screen). Pillow rejects above twice its limit, so a limit below ours
    would refuse images the config allows. The limit is only ever raised.
    """
    with _PIXEL_LIMIT_LOCK:
        current = Image.MAX_IMAGE_PIXELS
        if current is not None and current < max_image_pixels:
            Image.MAX_IMAGE_PIXELS = max_image_pixels


@contextmanager
def _image_errors(path: Path, data: bytes) -> Iterator[None]:
    """Turn whatever Pillow or a plugin raises into an ImageError with a stable reason."""
    try:
        yield
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(str(path), "too_many_pixels", str(exc)) from exc
    except UnidentifiedImageError as exc:
        reason = "unsupported_format" if _is_known_image_format(data) else "corrupt"
        raise ImageError(str(path), reason, "not an image format this install can read") from exc
    except MemoryError as exc:
        raise ImageError(str(path), "too_many_pixels", "out of memory while decoding") from exc
    except Exception as exc:  # plugins raise OSError, ValueError, SyntaxError, struct.error...
        raise ImageError(str(path), _reason_for(exc), f"{type(exc).__name__}: {exc}") from exc


def _reason_for(exc: Exception) -> str:
    message = str(exc).lower()
    if isinstance(exc, EOFError) or "truncated" in message:
        return "truncated"
    if "not available" in message or "unsupported" in message or "not supported" in message:
        return "unsupported_format"
    return "corrupt"


def _is_known_image_format(data: bytes) -> bool:
    """True for HEIF/AVIF/JPEG XL bytes that this install lacks a decoder for."""
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in _AVIF_BRANDS:
            return not features.check("avif")
        return brand in _HEIF_BRANDS and not _heif_available()
    return data.startswith(_JXL_SIGNATURES)


def _upright_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    # Orientations 5 to 8 turn the image a quarter, so width and height swap.
    return (size[1], size[0]) if orientation >= 5 else size


def _draft(image: Image.Image, min_side: int) -> Box | None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale while both sides stay >= min_side.

    Returns the region of the drafted image that the full image maps onto (the last row
    and column may be partly padding), or None when nothing was drafted.
    """
    if not isinstance(image, JpegImageFile):  # MPO is a JpegImageFile too
        return None
    result = image.draft("RGB", (min_side, min_side))
    if result is None:
        return None
    x0, y0, x1, y1 = result[1]
    return (float(x0), float(y0), float(x1), float(y1))


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB."""
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode in _HIGH_DEPTH_MODES:
        return _high_depth_to_rgb(image)
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return _composite_on_white(image)
    return image.convert("RGB")


def _composite_on_white(image: Image.Image) -> Image.Image:
    # The colour stored under fully transparent pixels is arbitrary (often black, sometimes
    # leftovers of an edit); dropping alpha would show it. Viewers show such images on a light
    # page, so white is what a person sees and what a text query describes.
    rgba = image if image.mode == "RGBA" else image.convert("RGBA")
    canvas = Image.new("RGB", rgba.size, (255, 255, 255))
    # paste() with the alpha as mask blends like alpha_composite() but 4x faster (measured).
    canvas.paste(rgba, mask=rgba.getchannel("A"))
    return canvas


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    # convert("L") would clip 16-bit values at 255 (a nearly white image); scale the range
    # instead. Mode "I" and "F" carry no declared range, so infer it from the values.
    values = np.nan_to_num(np.asarray(image).astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(values.max(initial=0.0))
    if image.mode.startswith("I;16"):
        top = 65535.0
    elif image.mode == "F" and peak <= 1.0:
        top = 1.0
    else:
        top = 255.0 if peak <= 255.0 else 65535.0 if peak <= 65535.0 else peak
    gray = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def _resize_and_crop(
    image: Image.Image, side: int, upright: tuple[int, int], box: Box, gap: float | None
) -> Image.Image:
    """torchvision's Resize(side) then CenterCrop(side), pixel for pixel.

    Sizes and offsets come from the full-resolution upright size, exactly as torchvision
    computes them; `box` is where that full image lies in `image` (smaller when drafted).
    """
    width, height = upright
    # Resize(int): the short side becomes `side`, the long side is truncated, not rounded.
    if width <= height:
        new_w, new_h = side, int(side * height / width)
    else:
        new_w, new_h = int(side * width / height), side
    # CenterCrop rounds half to even (Python's round), which matters for odd margins.
    left = round((new_w - side) / 2.0)
    top = round((new_h - side) / 2.0)
    if max(new_w, new_h) > MAX_RESIZED_SIDE_FACTOR * side:
        return _resize_crop_only(image, side, (new_w, new_h), (left, top), box, gap)
    if (new_w, new_h) != image.size or box != (0.0, 0.0, *image.size):
        # Resizing the whole frame and then cropping (rather than resizing only the crop's
        # region) keeps Pillow's filter coefficients identical to open_clip's: measured,
        # the crop-only path differs by one grey level in a few pixels of most photos.
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC, box, gap)
    return image.crop((left, top, left + side, top + side))


def _resize_crop_only(
    image: Image.Image,
    side: int,
    resized: tuple[int, int],
    offset: tuple[int, int],
    box: Box,
    gap: float | None,
) -> Image.Image:
    """Resample just the crop's source region: a 1x50000 strip must not become 224x11M."""
    x0, y0, x1, y1 = box
    scale_x, scale_y = (x1 - x0) / resized[0], (y1 - y0) / resized[1]
    left, top = offset
    source = (
        x0 + left * scale_x,
        y0 + top * scale_y,
        x0 + (left + side) * scale_x,
        y0 + (top + side) * scale_y,
    )
    return image.resize((side, side), Image.Resampling.BICUBIC, source, gap)


def _normalise(square: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    # The same float32 operations, in the same order, as ToTensor and Normalize.
    pixels = np.ascontiguousarray(np.asarray(square).transpose(2, 0, 1), dtype=np.float32)
    pixels /= np.float32(255)
    pixels -= np.asarray(spec.mean, dtype=np.float32).reshape(3, 1, 1)
    pixels /= np.asarray(spec.std, dtype=np.float32).reshape(3, 1, 1)
    return pixels
