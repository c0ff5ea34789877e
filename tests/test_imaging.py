"""wmpd.imaging on real files made in tmp_path: every mode, format, orientation and failure."""

from __future__ import annotations

import hashlib
import io
import os
import random
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile

from wmpd.errors import ImageError
from wmpd.imaging import (
    DECODE_REASONS,
    READ_REASONS,
    DecodedImage,
    DecodeOptions,
    PreprocessSpec,
    content_hash,
    decode_image,
    make_thumbnail,
    open_upright,
    read_file,
    supported_extensions,
)

REPO = Path(__file__).resolve().parent.parent
PHOTOS = Path(os.environ.get("WMPD_TEST_PHOTOS", REPO / "photos"))
PILLOW_SAMPLES = PHOTOS / "pillow"
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
SPEC = PreprocessSpec(image_size=64, mean=MEAN, std=STD)
NO_LIMIT = 200_000_000
RED, GREEN, BLUE, YELLOW = (220, 20, 20), (20, 200, 20), (20, 20, 220), (240, 230, 20)
WHITE = (255, 255, 255)
# Where each quadrant of quadrants() lands in a 64x64 centre crop: (x, y), colour.
QUADRANT_POINTS_64 = (((12, 12), RED), ((52, 12), GREEN), ((12, 52), BLUE), ((52, 52), YELLOW))

# Pillow transposition that exif_transpose applies for each orientation, and its inverse,
# which turns an upright picture into what a camera would store with that tag.
STORE_FOR_ORIENTATION = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def colours(decoded: DecodedImage, spec: PreprocessSpec = SPEC) -> np.ndarray:
    """Undo the normalisation: (S, S, 3) floats in 0..255."""
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(3, 1, 1)
    return ((decoded.pixels * std + mean) * 255).transpose(1, 2, 0)


def assert_colour(actual: Any, expected: tuple[int, int, int], tolerance: float = 6) -> None:
    difference = np.abs(np.asarray(actual, dtype=np.float64) - np.asarray(expected))
    assert difference.max() <= tolerance, f"{actual} is not {expected}"


def quadrants(width: int, height: int) -> Image.Image:
    """An asymmetric picture: red, green / blue, yellow quadrants."""
    image = Image.new("RGB", (width, height), RED)
    image.paste(GREEN, (width // 2, 0, width, height // 2))
    image.paste(BLUE, (0, height // 2, width // 2, height))
    image.paste(YELLOW, (width // 2, height // 2, width, height))
    return image


def with_orientation(upright: Image.Image, orientation: int) -> tuple[Image.Image, Image.Exif]:
    method = STORE_FOR_ORIENTATION[orientation]
    stored = upright if method is None else upright.transpose(method)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return stored, exif


def decode(data: bytes, name: str = "x.jpg", **options: Any) -> DecodedImage:
    return decode_image(data, Path(name), SPEC, DecodeOptions(**options))


def reason_of(data: bytes, name: str = "x.jpg", **options: Any) -> str:
    with pytest.raises(ImageError) as caught:
        decode(data, name, **options)
    assert caught.value.reason in DECODE_REASONS
    assert caught.value.path == name
    return caught.value.reason


# read_file and content_hash


def test_read_file_returns_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(b"\xff\xd8 some bytes")
    assert read_file(path, 100) == b"\xff\xd8 some bytes"


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_bytes(b"x" * 101), "too_large"),
        (lambda p: p.mkdir(), "unreadable"),
        (lambda p: os.mkfifo(p), "unreadable"),  # must not block on open()
        (lambda p: None, "vanished"),
    ],
    ids=["empty", "too-large", "directory", "fifo", "vanished"],
)
def test_read_file_refuses(tmp_path: Path, setup: Any, reason: str) -> None:
    path = tmp_path / "a.jpg"
    setup(path)
    with pytest.raises(ImageError) as caught:
        read_file(path, 100)
    assert (caught.value.reason, caught.value.path) == (reason, str(path))
    assert reason in READ_REASONS


def test_read_file_accepts_exactly_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(b"x" * 100)
    assert len(read_file(path, 100)) == 100


def test_read_file_checks_size_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.jpg"
    with path.open("wb") as file:
        file.truncate(50 * 2**30)  # sparse: 50 GiB that would take minutes to read
    started = time.perf_counter()
    with pytest.raises(ImageError) as caught:
        read_file(path, 10 * 2**20)
    assert caught.value.reason == "too_large"
    assert str(50 * 2**30) in caught.value.detail
    assert time.perf_counter() - started < 1.0


def test_read_file_unreadable_without_permission(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root: permissions do not stop root from reading")
    path = tmp_path / "secret.jpg"
    path.write_bytes(b"data")
    path.chmod(0)
    with pytest.raises(ImageError) as caught:
        read_file(path, 100)
    assert caught.value.reason == "unreadable"


def test_content_hash_is_128_bit_blake2b() -> None:
    assert content_hash(b"abc") == hashlib.blake2b(b"abc", digest_size=16).hexdigest()
    assert len(content_hash(b"abc")) == 32
    assert content_hash(b"abc") != content_hash(b"abd")


# supported_extensions


def test_supported_extensions_cover_the_common_formats() -> None:
    extensions = supported_extensions()
    assert {"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"} <= extensions
    assert all(ext == ext.lower() and not ext.startswith(".") for ext in extensions)


def test_supported_extensions_include_heif_when_pillow_heif_is_installed() -> None:
    pytest.importorskip("pillow_heif")
    assert {"heic", "heif"} <= supported_extensions()


def test_supported_extensions_without_pillow_heif() -> None:
    # A fresh interpreter where importing pillow_heif fails, as on an install without it.
    code = (
        "import sys; sys.modules['pillow_heif'] = None\n"
        "from wmpd.imaging import supported_extensions\n"
        "print(sorted(supported_extensions()))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert "'jpg'" in result.stdout
    assert "heic" not in result.stdout
    assert "heif" not in result.stdout


def test_imaging_does_not_import_torch() -> None:
    # The embedder is the only torch importer: decoding must stay light and fork-friendly.
    code = "import sys, wmpd.imaging; print(sorted(m for m in sys.modules if 'torch' in m))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert result.stdout.strip() == "[]"


# formats and modes


def solid(mode: str, value: Any, size: tuple[int, int] = (80, 60)) -> Image.Image:
    return Image.new(mode, size, value)


FORMAT_CASES = [
    ("jpeg-rgb", lambda: encode(solid("RGB", RED), "JPEG", quality=95), "JPEG", RED),
    ("jpeg-gray", lambda: encode(solid("L", 90), "JPEG", quality=95), "JPEG", (90, 90, 90)),
    ("jpeg-cmyk", lambda: encode(solid("CMYK", (0, 255, 255, 0)), "JPEG"), "JPEG", (255, 0, 0)),
    ("png-rgb", lambda: encode(solid("RGB", GREEN), "PNG"), "PNG", GREEN),
    ("png-gray", lambda: encode(solid("L", 200), "PNG"), "PNG", (200, 200, 200)),
    ("png-1bit", lambda: encode(solid("1", 1), "PNG"), "PNG", WHITE),
    ("png-palette", lambda: encode(solid("RGB", BLUE).convert("P"), "PNG"), "PNG", BLUE),
    # 16-bit: 32896 / 65535 is grey 128; clipping would give 255.
    ("png-16bit", lambda: encode(solid("I;16", 32896), "PNG"), "PNG", (128, 128, 128)),
    ("webp", lambda: encode(solid("RGB", BLUE), "WEBP", lossless=True), "WEBP", BLUE),
    ("gif", lambda: encode(solid("RGB", RED).convert("P"), "GIF"), "GIF", RED),
    ("bmp", lambda: encode(solid("RGB", YELLOW), "BMP"), "BMP", YELLOW),
    ("bmp-1bit", lambda: encode(solid("1", 0), "BMP"), "BMP", (0, 0, 0)),
    ("tiff-rgb", lambda: encode(solid("RGB", GREEN), "TIFF"), "TIFF", GREEN),
    ("tiff-cmyk", lambda: encode(solid("CMYK", (0, 0, 255, 0)), "TIFF"), "TIFF", (255, 255, 0)),
    ("tiff-16bit", lambda: encode(solid("I;16", 65535), "TIFF"), "TIFF", WHITE),
    ("tiff-int32", lambda: encode(solid("I", 257 * 64), "TIFF"), "TIFF", (64, 64, 64)),
    ("tiff-float", lambda: encode(solid("F", 0.25), "TIFF"), "TIFF", (64, 64, 64)),
    ("tiff-float-255", lambda: encode(solid("F", 100.0), "TIFF"), "TIFF", (100, 100, 100)),
]


@pytest.mark.parametrize(
    ("make", "fmt", "colour"),
    [case[1:] for case in FORMAT_CASES],
    ids=[case[0] for case in FORMAT_CASES],
)
def test_decodes_every_format_and_mode(make: Any, fmt: str, colour: tuple[int, int, int]) -> None:
    decoded = decode(make())
    assert decoded.pixels.shape == (3, 64, 64)
    assert decoded.pixels.dtype == np.float32
    assert decoded.pixels.flags.c_contiguous
    assert (decoded.width, decoded.height, decoded.format) == (80, 60, fmt)
    assert_colour(colours(decoded).mean(axis=(0, 1)), colour)


def test_sixteen_bit_gradient_keeps_its_range() -> None:
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    decoded = decode(encode(Image.fromarray(ramp), "PNG"), "ramp.png")
    row = colours(decoded)[32, :, 0]
    assert row[0] < 40
    assert abs(row[31] - 127) < 8  # the middle stays mid-grey: scaled, not clipped
    assert row[-1] > 215
    assert np.all(np.diff(row) > -0.5)  # monotonic: no wrap-around or clipping plateau


def test_heic(tmp_path: Path) -> None:
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    decoded = decode(encode(solid("RGB", BLUE, (96, 64)), "HEIF", quality=95), "x.heic")
    assert (decoded.format, decoded.width, decoded.height) == ("HEIF", 96, 64)
    assert_colour(colours(decoded)[32, 32], BLUE, tolerance=12)


def test_avif_when_pillow_supports_it() -> None:
    if "avif" not in supported_extensions():
        pytest.skip("this Pillow has no AVIF support")
    decoded = decode(encode(solid("RGB", GREEN), "AVIF", quality=95), "x.avif")
    assert decoded.format == "AVIF"
    assert_colour(colours(decoded)[32, 32], GREEN, tolerance=12)


def test_cmyk_jpeg_sample_colours() -> None:
    # Pillow's own Adobe CMYK sample: red in the top-left corner, black bottom-right.
    sample = PILLOW_SAMPLES / "pil_sample_cmyk.jpg"
    if not sample.exists():
        pytest.skip(f"{sample} absent: run /work/shared/fetch-photos.sh or set WMPD_TEST_PHOTOS")
    image = open_upright(sample.read_bytes(), sample, NO_LIMIT)
    red, green, blue = image.getpixel((0, 0))  # type: ignore[misc]
    assert red > 200
    assert max(green, blue) < 70
    assert max(image.getpixel((image.width - 1, image.height - 1))) < 40  # type: ignore[arg-type]


# transparency


def transparent_rgba() -> Image.Image:
    # Fully transparent black (what a hidden layer often leaves) with a half-opaque red square.
    image = Image.new("RGBA", (80, 80), (0, 0, 0, 0))
    image.paste((255, 0, 0, 128), (20, 20, 60, 60))
    return image


@pytest.mark.parametrize(
    ("make", "centre"),
    [
        (lambda: encode(transparent_rgba(), "PNG"), (255, 127, 127)),
        (lambda: encode(transparent_rgba(), "WEBP", lossless=True), (255, 127, 127)),
        # red is grey 76 in L; half of it over white is 165
        (lambda: encode(transparent_rgba().convert("LA"), "PNG"), (165, 165, 165)),
    ],
    ids=["png-rgba", "webp-rgba", "png-la"],
)
def test_transparency_is_composited_on_white(make: Any, centre: tuple[int, int, int]) -> None:
    image = colours(decode(make(), "t.png"))
    assert_colour(image[2, 2], WHITE, tolerance=2)  # not the black hidden under alpha 0
    assert_colour(image[32, 32], centre, tolerance=3)


def test_palette_transparency_is_white() -> None:
    image = Image.new("P", (64, 64), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (16, 16, 48, 48))
    pixels = colours(decode(encode(image, "PNG", transparency=0), "p.png"))
    assert_colour(pixels[2, 2], WHITE, tolerance=1)
    assert_colour(pixels[32, 32], (255, 0, 0), tolerance=1)


# animation: the first frame


def frames() -> list[Image.Image]:
    return [solid("RGB", colour, (64, 64)) for colour in (RED, GREEN, BLUE)]


@pytest.mark.parametrize(
    ("fmt", "params", "expected_format"),
    [
        ("GIF", {}, "GIF"),
        ("WEBP", {"lossless": True}, "WEBP"),
        ("PNG", {}, "PNG"),  # APNG
        ("MPO", {}, "MPO"),
    ],
)
def test_multi_frame_files_give_the_first_frame(
    fmt: str, params: dict[str, Any], expected_format: str
) -> None:
    first, *rest = frames()
    data = encode(first, fmt, save_all=True, append_images=rest, duration=100, **params)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    decoded = decode(data, f"anim.{fmt.lower()}")
    assert decoded.format == expected_format
    assert_colour(colours(decoded)[32, 32], RED, tolerance=12)


@pytest.mark.parametrize(
    "name", ["iss634.gif", "iss634.webp", "delay.png", "sugarshack.mpo", "frozenpond.mpo"]
)
def test_real_multi_frame_samples(name: str) -> None:
    sample = PILLOW_SAMPLES / name
    if not sample.exists():
        pytest.skip(f"{sample} absent: run /work/shared/fetch-photos.sh or set WMPD_TEST_PHOTOS")
    decoded = decode(sample.read_bytes(), name)
    assert decoded.pixels.shape == (3, 64, 64)
    assert np.isfinite(decoded.pixels).all()


# EXIF orientation


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_orientation_is_applied(orientation: int, fmt: str) -> None:
    upright = quadrants(96, 48)
    stored, exif = with_orientation(upright, orientation)
    data = encode(stored, fmt, exif=exif, quality=95)
    image = open_upright(data, Path("o"), NO_LIMIT)
    assert image.size == (96, 48)
    for point, colour in ((20, 10), RED), ((76, 10), GREEN), ((20, 38), BLUE), ((76, 38), YELLOW):
        assert_colour(image.getpixel(point), colour, tolerance=12)
    decoded = decode(data)
    assert (decoded.width, decoded.height) == (96, 48)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_with_draft_and_centre_crop(orientation: int) -> None:
    # 1600x800 drafts to 1/8 (200x100): the crop must come from the upright centre.
    stored, exif = with_orientation(quadrants(1600, 800), orientation)
    data = encode(stored, "JPEG", exif=exif, quality=90)
    for use_draft in (True, False):
        image = colours(decode(data, use_draft=use_draft))
        for (x, y), colour in QUADRANT_POINTS_64:
            assert_colour(image[y, x], colour, tolerance=12)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_draft_keeps_geometry_with_partial_blocks(orientation: int) -> None:
    # 8k+1 pixels: the drafted image's last row and column are mostly padding. If that
    # padding were put on the wrong side after turning the image, the crop would shift by
    # most of a drafted pixel, which a steep gradient turns into a bias of several levels.
    width, height = 8 * 200 + 1, 8 * 100 + 1
    x = np.linspace(0, 255, width, dtype=np.float32)
    y = np.linspace(0, 255, height, dtype=np.float32)
    ramp = np.stack(np.broadcast_arrays(x[None, :], y[:, None], np.float32(128)), axis=-1)
    upright = Image.fromarray(np.rint(ramp).astype(np.uint8))
    stored, exif = with_orientation(upright, orientation)
    data = encode(stored, "JPEG", exif=exif, quality=95)
    drafted = colours(decode(data, use_draft=True))
    exact = colours(decode(data, use_draft=False))
    bias = (drafted - exact).mean(axis=(0, 1))
    assert np.abs(bias).max() < 0.5, bias


def test_orientation_can_be_ignored() -> None:
    stored, exif = with_orientation(quadrants(96, 48), 6)
    decoded = decode(encode(stored, "JPEG", exif=exif), apply_exif=False)
    assert (decoded.width, decoded.height) == (48, 96)


def test_tiff_orientation_is_applied_once() -> None:
    # Pillow turns TIFFs upright itself while loading; a second turn would undo it.
    stored, _ = with_orientation(quadrants(96, 48), 6)
    data = encode(stored, "TIFF", tiffinfo={0x0112: 6})
    image = open_upright(data, Path("o.tif"), NO_LIMIT)
    assert image.size == (96, 48)
    assert_colour(image.getpixel((76, 10)), GREEN, tolerance=2)
    assert (decode(data, "o.tif").width, decode(data, "o.tif").height) == (96, 48)


@pytest.mark.parametrize("orientation", range(2, 9))
@pytest.mark.parametrize("ext", ["jpg", "webp"])
def test_pillow_orientation_samples(orientation: int, ext: str) -> None:
    sample = PILLOW_SAMPLES / f"hopper_orientation_{orientation}.{ext}"
    reference = PILLOW_SAMPLES / "hopper.png"
    if not (sample.exists() and reference.exists()):
        pytest.skip(f"{sample} absent: run /work/shared/fetch-photos.sh or set WMPD_TEST_PHOTOS")
    image = np.asarray(open_upright(sample.read_bytes(), sample, NO_LIMIT), dtype=np.float64)
    expected = np.asarray(Image.open(reference).convert("RGB"), dtype=np.float64)
    assert image.shape == expected.shape
    assert np.abs(image - expected).mean() < 8  # lossy, but far from any wrong turn (~60)


# capture time


@pytest.fixture
def new_york_time() -> Iterator[None]:
    """Local time zone UTC-4 in June, so that local and UTC readings differ."""
    if not hasattr(time, "tzset"):
        pytest.skip("time.tzset is POSIX-only")
    previous = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    yield
    if previous is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = previous
    time.tzset()


def exif_with_times(**tags: str) -> Image.Exif:
    names = {"original": 0x9003, "offset": 0x9011, "subsec": 0x9291}
    exif = Image.Exif()
    if "datetime" in tags:
        exif[0x0132] = tags.pop("datetime")
    details = exif.get_ifd(0x8769)
    for name, value in tags.items():
        details[names[name]] = value
    return exif


UTC_1634 = datetime(2021, 6, 1, 16, 34, 56, tzinfo=timezone.utc).timestamp()


@pytest.mark.usefixtures("new_york_time")
@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({"original": "2021:06:01 12:34:56"}, UTC_1634),  # naive: local (New York) time
        ({"original": "2021:06:01 18:34:56", "offset": "+02:00"}, UTC_1634),
        ({"original": "2021:06:01 12:34:56", "subsec": "25"}, UTC_1634 + 0.25),
        ({"datetime": "2021:06:01 12:34:56"}, UTC_1634),  # fallback to IFD0 DateTime
        ({"datetime": "1999:01:01 00:00:00", "original": "2021:06:01 12:34:56"}, UTC_1634),
        ({"original": "0000:00:00 00:00:00"}, None),
        ({"original": "    :  :     :  :  "}, None),
        ({"original": "2021:13:45 99:00:00"}, None),
        ({}, None),
    ],
    ids=["naive", "offset", "subsec", "datetime", "original-wins", "zeros", "blank", "bad", "none"],
)
def test_taken_at(tags: dict[str, str], expected: float | None) -> None:
    data = encode(solid("RGB", RED), "JPEG", exif=exif_with_times(**tags))
    assert decode(data).taken_at == expected


def test_taken_at_absent_without_exif() -> None:
    assert decode(encode(solid("RGB", RED), "PNG"), "x.png").taken_at is None


# thumbnails


def test_thumbnail_is_an_upright_jpeg_of_the_requested_size() -> None:
    stored, exif = with_orientation(quadrants(1600, 800), 6)
    data = encode(stored, "JPEG", exif=exif, quality=90)
    thumbnail = Image.open(io.BytesIO(make_thumbnail(data, Path("t.jpg"), 128, NO_LIMIT)))
    assert thumbnail.format == "JPEG"
    assert thumbnail.size == (128, 64)
    assert thumbnail.getexif().get(0x0112) is None  # already turned: no tag to turn it again
    for point, colour in ((30, 15), RED), ((98, 15), GREEN), ((30, 48), BLUE), ((98, 48), YELLOW):
        assert_colour(thumbnail.getpixel(point), colour, tolerance=14)


def test_thumbnail_never_enlarges_and_flattens_transparency() -> None:
    data = encode(transparent_rgba().resize((50, 30)), "PNG")
    thumbnail = Image.open(io.BytesIO(make_thumbnail(data, Path("t.png"), 256, NO_LIMIT)))
    assert thumbnail.size == (50, 30)
    assert_colour(thumbnail.getpixel((1, 1)), WHITE, tolerance=4)


def test_thumbnail_refuses_too_many_pixels() -> None:
    data = encode(solid("RGB", RED, (200, 200)), "PNG")
    with pytest.raises(ImageError) as caught:
        make_thumbnail(data, Path("big.png"), 64, 10_000)
    assert caught.value.reason == "too_many_pixels"


# preprocessing arithmetic (the torch comparison lives in test_preprocess_equivalence.py)


def test_normalisation_is_exact_when_no_resize_is_needed() -> None:
    rng = np.random.default_rng(1)
    array = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    decoded = decode(encode(Image.fromarray(array), "PNG"), "n.png")
    expected = (array.transpose(2, 0, 1).astype(np.float32) / np.float32(255)) - np.asarray(
        MEAN, dtype=np.float32
    ).reshape(3, 1, 1)
    expected /= np.asarray(STD, dtype=np.float32).reshape(3, 1, 1)
    np.testing.assert_array_equal(decoded.pixels, expected)


@pytest.mark.parametrize(("height", "top"), [(67, 2), (69, 2), (71, 4)])
def test_centre_crop_rounds_half_to_even_like_torchvision(height: int, top: int) -> None:
    # 64 wide needs no resize; a margin of 3, 5 or 7 rows gives offsets 1.5, 2.5, 3.5.
    rows = np.repeat(np.arange(height, dtype=np.uint8)[:, None] * 3, 64, axis=1)
    decoded = decode(encode(Image.fromarray(rows).convert("RGB"), "PNG"), "c.png")
    first_row = colours(decoded)[0, 0, 0]
    assert round(float(first_row)) == top * 3


def test_extreme_aspect_ratio_is_cheap() -> None:
    # Shortest-side resizing would make this strip 64 x 3.2 million pixels.
    strip = Image.linear_gradient("L").resize((1, 50_000))
    started = time.perf_counter()
    decoded = decode(encode(strip, "PNG"), "strip.png")
    assert decoded.pixels.shape == (3, 64, 64)
    assert (decoded.width, decoded.height) == (1, 50_000)
    assert time.perf_counter() - started < 2.0


def test_tiny_images_are_enlarged_to_the_model_size() -> None:
    decoded = decode(encode(solid("RGB", RED, (3, 2)), "PNG"), "tiny.png")
    assert decoded.pixels.shape == (3, 64, 64)
    assert_colour(colours(decoded).mean(axis=(0, 1)), RED, tolerance=2)


# failures


def truncated_jpeg() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "JPEG")
    return data[: len(data) // 2]


def png_header(width: int, height: int) -> bytes:
    """A PNG header and a sliver of pixel data: a few bytes that claim a huge image."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 64)  # far too little data for the claimed size
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", pixels)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@pytest.mark.parametrize(
    ("make", "name", "reason"),
    [
        (truncated_jpeg, "t.jpg", "truncated"),
        (lambda: encode(solid("RGB", RED, (300, 300)), "PNG")[:400], "t.png", "truncated"),
        (lambda: b"", "empty.jpg", "corrupt"),
        (lambda: random.Random(3).randbytes(4096), "random.jpg", "corrupt"),
        (lambda: b"hello, I am text, not a picture\n" * 20, "text.png", "corrupt"),
        (lambda: b"\xff\x0a" + bytes(200), "x.jxl", "unsupported_format"),
        (lambda: b"\x00\x00\x00\x0cJXL \r\n\x87\n" + bytes(200), "x.jxl", "unsupported_format"),
    ],
    ids=["truncated-jpeg", "truncated-png", "zero-bytes", "random", "text", "jxl", "jxl-box"],
)
def test_failures_have_stable_reasons(make: Any, name: str, reason: str) -> None:
    assert reason_of(make(), name) == reason


def test_pillow_truncated_sample() -> None:
    sample = PILLOW_SAMPLES / "truncated_jpeg.jpg"
    if not sample.exists():
        pytest.skip(f"{sample} absent: run /work/shared/fetch-photos.sh or set WMPD_TEST_PHOTOS")
    assert reason_of(sample.read_bytes(), "truncated_jpeg.jpg") == "truncated"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_huge_header_is_refused_without_decoding() -> None:
    data = png_header(100_000, 100_000)
    assert len(data) < 100
    with pytest.raises(ImageError) as caught:
        decode(data, "bomb.png")
    assert caught.value.reason == "too_many_pixels"
    assert "10000000000" in caught.value.detail


def test_pixel_limit_is_checked_on_the_header() -> None:
    # No pixel data at all: decoding would fail as truncated, so this proves the check
    # happened on the header alone.
    with pytest.raises(ImageError) as caught:
        decode(png_header(5000, 4000), "big.png", max_image_pixels=1_000_000)
    assert caught.value.reason == "too_many_pixels"
    assert "5000x4000" in caught.value.detail
    assert reason_of(png_header(500, 400), "small.png", max_image_pixels=1_000_000) == "truncated"


def test_pillow_limit_follows_ours_upwards_only(monkeypatch: pytest.MonkeyPatch) -> None:
    before = Image.MAX_IMAGE_PIXELS
    assert before is not None
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", before)  # restored afterwards
    decode(encode(solid("RGB", RED), "PNG"), "a.png", max_image_pixels=1_000_000)
    assert before == Image.MAX_IMAGE_PIXELS
    decode(encode(solid("RGB", RED), "PNG"), "a.png", max_image_pixels=before + 1)
    assert before + 1 == Image.MAX_IMAGE_PIXELS


def test_mangled_files_only_ever_raise_image_error() -> None:
    rng = random.Random(7)
    originals = [
        encode(quadrants(64, 48), "JPEG"),
        encode(quadrants(64, 48), "PNG"),
        encode(quadrants(64, 48).convert("P"), "GIF"),
        encode(quadrants(64, 48), "WEBP"),
        encode(quadrants(64, 48), "TIFF"),
        encode(quadrants(64, 48), "BMP"),
    ]
    outcomes: list[str] = []
    for original in originals:
        for _ in range(40):
            data = bytearray(original)
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            cut = bytes(data[: rng.randint(8, len(data))] if rng.random() < 0.3 else data)
            try:
                decode(cut, "mangled")
                outcomes.append("ok")
            except ImageError as exc:  # anything else fails the test
                outcomes.append(exc.reason)
    assert set(outcomes) <= {"ok", *DECODE_REASONS}
    assert "ok" in outcomes
    assert {"corrupt", "truncated"} <= set(outcomes)
