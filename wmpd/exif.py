"""EXIF: which way up a picture is, and when it was taken.

Kept apart from decoding so that the rules for broken and odd EXIF blocks (placeholders,
offsets, sub-seconds, orientation of a drafted region) live in one place.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from PIL import ExifTags, Image

logger = logging.getLogger(__name__)

Box = tuple[float, float, float, float]  # left, top, right, bottom

_TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Where point (x, y) of a w-by-h image lands after each transposition (used to carry a
# draft's content box through the rotation).
_MOVE_POINT: dict[Image.Transpose, Callable[[float, float, float, float], tuple[float, float]]] = {
    Image.Transpose.FLIP_LEFT_RIGHT: lambda x, y, w, h: (w - x, y),
    Image.Transpose.FLIP_TOP_BOTTOM: lambda x, y, w, h: (x, h - y),
    Image.Transpose.ROTATE_180: lambda x, y, w, h: (w - x, h - y),
    Image.Transpose.ROTATE_90: lambda x, y, w, h: (y, w - x),
    Image.Transpose.ROTATE_270: lambda x, y, w, h: (h - y, x),
    Image.Transpose.TRANSPOSE: lambda x, y, w, h: (y, x),
    Image.Transpose.TRANSVERSE: lambda x, y, w, h: (h - y, w - x),
}
_EXIF_TIME = re.compile(r"\s*(\d{4})[:-](\d{2})[:-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_EXIF_OFFSET = re.compile(r"\s*([+-])(\d{2}):?(\d{2})")


def read_exif(image: Image.Image) -> Image.Exif | None:
    try:
        return image.getexif()
    except Exception:  # a broken EXIF block must not cost us the picture itself
        logger.debug("unreadable EXIF ignored", exc_info=True)
        return None


def read_orientation(exif: Image.Exif | None) -> int:
    value = exif.get(ExifTags.Base.Orientation, 1) if exif is not None else 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def orient(image: Image.Image, orientation: int) -> Image.Image:
    method = _TRANSPOSE_FOR_ORIENTATION.get(orientation)
    return image if method is None else image.transpose(method)


def orient_box(box: Box, size: tuple[int, int], orientation: int) -> Box:
    method = _TRANSPOSE_FOR_ORIENTATION.get(orientation)
    if method is None:
        return box
    move = _MOVE_POINT[method]
    xa, ya = move(box[0], box[1], *size)
    xb, yb = move(box[2], box[3], *size)
    return (min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb))


def read_taken_at(exif: Image.Exif | None) -> float | None:
    """DateTimeOriginal, else DateTime, as UNIX seconds; None when absent or invalid."""
    if exif is None:
        return None
    try:
        details = exif.get_ifd(ExifTags.IFD.Exif)
    except Exception:  # a broken sub-IFD: fall back to IFD0's DateTime alone
        details = {}
    base = ExifTags.Base
    candidates = (
        (
            details.get(base.DateTimeOriginal),
            details.get(base.OffsetTimeOriginal),
            details.get(base.SubsecTimeOriginal),
        ),
        (exif.get(base.DateTime), details.get(base.OffsetTime), details.get(base.SubsecTime)),
    )
    for stamp, offset, subsec in candidates:
        seconds = _parse_exif_time(stamp, offset, subsec)
        if seconds is not None:
            return seconds
    return None


def _parse_exif_time(stamp: object, offset: object, subsec: object) -> float | None:
    match = _EXIF_TIME.match(_exif_text(stamp))
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(part) for part in match.groups())
    try:
        # Without an offset tag the time is the camera's wall clock: local time is the best
        # guess (datetime.timestamp() reads a naive time as local).
        moment = datetime(year, month, day, hour, minute, second, tzinfo=_exif_zone(offset))
        seconds = moment.timestamp()
    except (ValueError, OverflowError, OSError):  # "0000:00:00 00:00:00" placeholders
        return None
    digits = _exif_text(subsec).strip()
    if digits.isdigit():
        seconds += int(digits) / 10 ** len(digits)
    return seconds


def _exif_zone(offset: object) -> timezone | None:
    match = _EXIF_OFFSET.match(_exif_text(offset))
    if match is None:
        return None
    sign, hours, minutes = match.groups()
    delta = timedelta(hours=int(hours), minutes=int(minutes))
    try:
        return timezone(-delta if sign == "-" else delta)
    except ValueError:  # 24 hours or more
        return None


def _exif_text(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return value.strip("\x00 ") if isinstance(value, str) else ""
