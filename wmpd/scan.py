"""Walking roots and deciding which files are candidates: pure functions, no database.

Symlink policy: symlinked files inside a root are followed (the link's path is the path
catalogued); symlinked directories are not descended into, which rules out loops and
keeps a root from reaching outside itself.

Names that are not valid UTF-8 (Python hands them over with surrogate escapes) cannot be
stored in the catalog's text columns; such files and folders are skipped with a warning
instead of failing the whole batch they would land in.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fingerprint:
    """What a cheap stat says about a file; equal fingerprints mean 'unchanged'."""

    size: int
    mtime_ns: int


@dataclass(frozen=True)
class RootRules:
    """Which files under one root are indexed."""

    root: Path
    recursive: bool
    extensions: frozenset[str]
    exclude: tuple[str, ...]


def is_excluded(relative: PurePosixPath, exclude: tuple[str, ...]) -> bool:
    """A glob matches either any single path component or the whole relative path."""
    text = relative.as_posix()
    for pattern in exclude:
        if "/" in pattern:
            if fnmatchcase(text, pattern) or fnmatchcase(text, pattern.rstrip("/") + "/*"):
                return True
        elif any(fnmatchcase(part, pattern) for part in relative.parts):
            return True
    return False


def has_wanted_extension(name: str, extensions: frozenset[str]) -> bool:
    suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return suffix in extensions


def is_storable_name(name: str) -> bool:
    """Can this path be stored as text (is it valid UTF-8 on disk)?"""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_candidate(path: Path, rules: RootRules) -> bool:
    """Does this path (file, existing or not) belong to the index under these rules?"""
    try:
        relative = path.relative_to(rules.root)
    except ValueError:
        return False
    if not relative.parts or not is_storable_name(str(relative)):
        return False
    if not rules.recursive and len(relative.parts) > 1:
        return False
    if not has_wanted_extension(path.name, rules.extensions):
        return False
    return not is_excluded(PurePosixPath(*relative.parts), rules.exclude)


def is_walkable_dir(path: Path, rules: RootRules) -> bool:
    """Should a directory under the root be entered (and watched)?"""
    try:
        relative = path.relative_to(rules.root)
    except ValueError:
        return False
    if not relative.parts:
        return True
    if not rules.recursive or not is_storable_name(str(relative)):
        return False
    return not is_excluded(PurePosixPath(*relative.parts), rules.exclude)


def fingerprint(path: Path) -> Fingerprint | None:
    """Size and mtime of a regular file (following symlinks), or None if it is not one."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return Fingerprint(st.st_size, st.st_mtime_ns)


def walk_root(rules: RootRules) -> Iterator[tuple[Path, Fingerprint]]:
    """Every candidate file under the root with its fingerprint, in directory order.

    Unreadable sub-directories are skipped (their files stay as they are in the
    catalog); the caller checks the root itself before walking.
    """
    stack = [rules.root]
    while stack:
        directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in sorted(entries, key=lambda e: e.name):
            if not is_storable_name(entry.name):
                logger.warning(
                    "skipping %r: its name is not valid UTF-8, which the catalog cannot "
                    "store; rename it to index it",
                    entry.path,
                )
                continue
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if is_dir:
                if is_walkable_dir(path, rules):
                    stack.append(path)
                continue
            if not is_candidate(path, rules):
                continue
            found = fingerprint(path)
            if found is not None:
                yield path, found


def root_problem(root: Path) -> str | None:
    """Why a root cannot be scanned right now (None when it can)."""
    if not root.exists():
        return f"{root} does not exist (an unmounted disk or share?)"
    if not root.is_dir():
        return f"{root} is not a directory"
    if not os.access(root, os.R_OK | os.X_OK):
        return f"{root} is not readable by this user"
    try:
        with os.scandir(root) as entries:
            next(entries, None)
    except OSError as exc:
        return f"{root} cannot be listed: {exc.strerror}"
    return None
