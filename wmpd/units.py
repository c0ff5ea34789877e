"""Tiny parsers for the human-friendly values a config file may hold: sizes, durations, paths.

Each parser raises ValueError with a sentence that says what was wrong and what a good value
looks like; the config layer attaches the key path and the line number.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path

# Decimal units are powers of 1000 and binary ones powers of 1024, as the SI/IEC prefixes
# say; matching is case-insensitive because nobody means "millibytes" in a config file.
_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "byte": 1,
    "bytes": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_NUMBER = r"(?:\d[\d_]*(?:\.\d*)?|\.\d+)"
_SIZE_RE = re.compile(rf"\s*({_NUMBER})\s*([A-Za-z]*)\s*")

_DURATION_UNITS: dict[str, int] = {
    "": 1,
    "s": 1,
    "sec": 1,
    "secs": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "mins": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hr": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
}
_DURATION_PART = re.compile(rf"\s*({_NUMBER})\s*([A-Za-z]*)")
_DURATION_RE = re.compile(rf"(?:\s*{_NUMBER}\s*[A-Za-z]*)+\s*")

# `$NAME` or `${NAME}`; `$$` stands for a literal dollar sign (so a folder really named
# "$RECYCLE.BIN" can still be written down).
_VAR_RE = re.compile(r"\$(?:\$|(\w+)|\{(\w+)\})")


def parse_size(text: str) -> int:
    """Turn "25 MiB", "200MB", "1.5 GB" or "4096" into a whole number of bytes."""
    match = _SIZE_RE.fullmatch(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not a size; write a number of bytes or a number with a unit, "
            "like '25 MiB', '200MB' or '1.5 GB'"
        )
    unit = match[2].lower()
    if unit not in _SIZE_UNITS:
        raise ValueError(
            f"unknown size unit {match[2]!r} in {text!r}; "
            "use B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)"
        )
    amount = Fraction(match[1].replace("_", "")) * _SIZE_UNITS[unit]
    if amount.denominator != 1:
        raise ValueError(f"{text!r} is not a whole number of bytes")
    return int(amount)


def parse_duration(text: str) -> float:
    """Turn "90s", "15m", "1h", "1d", "1h30m" or "2.5" (seconds) into seconds."""
    if _DURATION_RE.fullmatch(text) is None:
        raise ValueError(
            f"{text!r} is not a duration; write a number of seconds or a number with a unit, "
            "like '90s', '15m', '1h' or '1d'"
        )
    parts: list[tuple[str, str]] = _DURATION_PART.findall(text)
    if len(parts) > 1 and any(not unit for _, unit in parts):
        raise ValueError(f"{text!r} mixes numbers without a unit; write it like '1h30m'")
    total = Fraction(0)
    for number, unit in parts:
        factor = _DURATION_UNITS.get(unit.lower())
        if factor is None:
            raise ValueError(
                f"unknown duration unit {unit!r} in {text!r}; use s, m, h or d "
                "(seconds, minutes, hours, days)"
            )
        total += Fraction(number.replace("_", "")) * factor
    return float(total)


def expand_path(raw: str, base_dir: Path, env: Mapping[str, str]) -> Path:
    """Expand `~` and `$VARS`, then make the path absolute against base_dir.

    The result is normalised (no `..` or `.` parts) but symlinks are not resolved: resolving
    touches the disk, and a folder on an unmounted disk must still load.
    """
    if not raw.strip():
        raise ValueError("the path is empty")
    expanded = _expand_vars(os.path.expanduser(raw), env)
    path = Path(expanded)
    if not path.is_absolute():
        path = base_dir / path
    return Path(os.path.normpath(path))


def escape_path(path: str) -> str:
    """The text that expand_path turns back into exactly this absolute path."""
    return path.replace("$", "$$")


def _expand_vars(text: str, env: Mapping[str, str]) -> str:
    missing: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        if name is None:
            return "$"
        if name not in env:
            missing.append(name)
            return match[0]
        return env[name]

    result = _VAR_RE.sub(substitute, text)
    if missing:
        names = ", ".join(f"${name}" for name in dict.fromkeys(missing))
        raise ValueError(f"environment variable {names} is not set (in the path {text!r})")
    return result
