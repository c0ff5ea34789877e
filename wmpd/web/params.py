"""Request parameters → typed values; every bad one is a QueryError that names it.

Query strings, form fields and JSON bodies all pass through here, so the same parameter
reads the same way wherever it arrives (strings from a URL, numbers from JSON).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime

from PIL import Image
from werkzeug.datastructures import MultiDict

from wmpd.errors import QueryError
from wmpd.search import MAX_K, MAX_OFFSET, Filters

DEFAULT_K = 20
FILTER_PARAMS = ("min_score", "folder", "after", "before", "type")
PAGE_PARAMS = ("k", "offset")
SEARCH_PARAMS = ("q", *PAGE_PARAMS, *FILTER_PARAMS)
MAX_IMAGE_ID = 2**63 - 1  # SQLite's INTEGER range
MAX_TYPES = 32
MAX_FOLDER_CHARS = 4096
# datetime covers years 1 to 9999; outside that a timestamp cannot be a capture time.
_MIN_SECONDS = -62_135_596_800.0
_MAX_SECONDS = 253_402_300_799.0
# Names people use for a type beside Pillow's own format names and file extensions.
# A JPEG with extra frames (most phone photos with a depth map) is Pillow's "MPO".
_TYPE_ALIASES: dict[str, tuple[str, ...]] = {
    "jpeg": ("JPEG", "MPO"),
    "jpg": ("JPEG", "MPO"),
    "heic": ("HEIF",),
    "heif": ("HEIF",),
    "avif": ("AVIF",),
    "tif": ("TIFF",),
}


@dataclass(frozen=True)
class PageParams:
    k: int
    offset: int
    filters: Filters


def single_values(values: MultiDict[str, str], allowed: Collection[str]) -> dict[str, object]:
    """One value per name; an unknown or repeated name is an error, not silently dropped."""
    result: dict[str, object] = {}
    for name in values:
        check_known(name, allowed)
        given = values.getlist(name)
        if len(given) > 1:
            raise QueryError(name, "is given more than once")
        result[name] = given[0]
    return result


def check_known(name: str, allowed: Collection[str]) -> None:
    if name not in allowed:
        raise QueryError(name, f"is not a parameter here; known: {', '.join(allowed)}")


def read_page(values: Mapping[str, object]) -> PageParams:
    """k, offset and the filters."""
    k = read_int(values, "k", DEFAULT_K, 1, MAX_K)
    offset = read_int(values, "offset", 0, 0, MAX_OFFSET)
    return PageParams(k, offset, read_filters(values))


def read_filters(values: Mapping[str, object]) -> Filters:
    after = read_time(values, "after")
    before = read_time(values, "before")
    if after is not None and before is not None and before <= after:
        raise QueryError("before", "must be later than after")
    return Filters(
        folder=read_folder(values),
        after=after,
        before=before,
        formats=read_types(values),
        min_score=read_float(values, "min_score", -1.0, 1.0),
    )


def read_text(values: Mapping[str, object], name: str) -> str | None:
    value = values.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise QueryError(name, "must be text")
    return value


def read_int(values: Mapping[str, object], name: str, default: int, low: int, high: int) -> int:
    value = values.get(name)
    if value is None:
        return default
    number = _as_int(value, name)
    if not low <= number <= high:
        raise QueryError(name, f"must be between {low} and {high}")
    return number


def _as_int(value: object, name: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = value.strip() if isinstance(value, str) else ""
    # A length cap first: int() of a 100,000-digit string is slow by design.
    digits = text.removeprefix("-").removeprefix("+")
    if not digits.isascii() or not digits.isdigit() or len(digits) > 20:
        raise QueryError(name, f"must be a whole number, got {_show(value)}")
    return int(text)


def read_float(values: Mapping[str, object], name: str, low: float, high: float) -> float | None:
    value = values.get(name)
    if value is None:
        return None
    number = _as_float(value, name)
    if not low <= number <= high:
        raise QueryError(name, f"must be between {low:g} and {high:g}")
    return number


def _as_float(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise QueryError(name, f"must be a number, got {_show(value)}")
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise QueryError(name, f"must be a number, got {_show(value)}") from None
    if not math.isfinite(number):
        raise QueryError(name, "must be a finite number")
    return number


def read_time(values: Mapping[str, object], name: str) -> float | None:
    """A capture-time bound: ISO date or datetime (local time unless it says), or UNIX seconds."""
    value = values.get(name)
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _check_seconds(float(value), name)
    if not isinstance(value, str) or not value.strip():
        raise QueryError(name, "must be a date like 2024-05-01, a date and time, or UNIX seconds")
    text = value.strip()
    try:
        return _check_seconds(float(text), name)
    except ValueError:
        pass
    try:
        # Like EXIF times, a time without a zone is the local wall clock.
        return datetime.fromisoformat(text).timestamp()
    except (ValueError, OverflowError, OSError):
        message = f"cannot read {_show(value)} as a date like 2024-05-01 or 2024-05-01T18:30"
        raise QueryError(name, message) from None


def _check_seconds(seconds: float, name: str) -> float:
    if not math.isfinite(seconds) or not _MIN_SECONDS <= seconds <= _MAX_SECONDS:
        raise QueryError(name, "is out of the range of dates (years 1 to 9999)")
    return seconds


def read_folder(values: Mapping[str, object]) -> str | None:
    value = values.get("folder")
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise QueryError("folder", "must be an absolute folder path")
    if "\x00" in value or len(value) > MAX_FOLDER_CHARS or not os.path.isabs(value):
        raise QueryError("folder", f"must be an absolute folder path, got {_show(value)}")
    # Only a prefix to compare catalogued paths with: nothing is read from it.
    return os.path.normpath(value)


def read_types(values: Mapping[str, object]) -> tuple[str, ...]:
    value = values.get("type")
    if value is None:
        return ()
    items = _type_items(value)
    if not items:
        raise QueryError("type", "list at least one image type, e.g. jpeg,png")
    if len(items) > MAX_TYPES:
        raise QueryError("type", f"at most {MAX_TYPES} types are allowed")
    formats: list[str] = []
    for item in items:
        known = _format_names().get(item.lower())
        if known is None:
            raise QueryError("type", f"unknown image type {_show(item)}; e.g. jpeg, png, webp")
        formats.extend(fmt for fmt in known if fmt not in formats)
    return tuple(formats)


def _type_items(value: object) -> list[str]:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return [item.strip() for item in value if item.strip()]
    raise QueryError("type", "must be a comma-separated list of image types")


@functools.cache
def _format_names() -> dict[str, tuple[str, ...]]:
    """Lower-case type names and extensions → the format names the catalog stores."""
    Image.init()
    names: dict[str, tuple[str, ...]] = {fmt.lower(): (fmt,) for fmt in Image.OPEN}
    for extension, fmt in Image.registered_extensions().items():
        names.setdefault(extension.lstrip(".").lower(), (fmt,))
    names.update(_TYPE_ALIASES)
    return names


def read_image_id(value: object, name: str) -> int:
    number = _as_int(value, name)
    if not 0 <= number <= MAX_IMAGE_ID:
        raise QueryError(name, "is not an image id")
    return number


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
