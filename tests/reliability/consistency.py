"""catalog = disk = index: an independent checker of wmpd's invariants.

It reads the catalog with plain sqlite3 (read-only) and the saved FAISS file with plain
faiss, walks the roots itself under the documented policy (wmpd/scan.py: regular files
with an image extension, symlinked files followed, symlinked directories not entered,
dot-files and the default excludes skipped, names that are not UTF-8 skipped), and
hashes files with the documented content hash (128-bit BLAKE2b) — it shares no code
with the indexer it checks.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import time
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from wmpd.config_schema import DEFAULT_EXCLUDE, DEFAULT_EXTENSIONS

CATALOG = "catalog.sqlite3"
INDEX = "vectors.faiss"
INDEX_META = "vectors.meta.json"


@dataclass(frozen=True)
class ImageInfo:
    id: int
    hash: str
    orphaned: bool
    vector: bytes
    added_at: float
    model_id: str
    width: int | None
    height: int | None
    format: str | None


@dataclass
class CatalogState:
    paths: dict[str, int]  # path -> image id
    images: dict[int, ImageInfo]  # every row, orphans included
    failures: dict[str, tuple[str, str]]  # path -> (reason, detail)
    integrity: str

    @property
    def visible_ids(self) -> set[int]:
        return {i for i, image in self.images.items() if not image.orphaned}

    def image_of(self, path: Path | str) -> ImageInfo | None:
        image_id = self.paths.get(str(path))
        return None if image_id is None else self.images[image_id]

    def failure_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for reason, _ in self.failures.values():
            counts[reason] = counts.get(reason, 0) + 1
        return counts


def read_catalog(data_dir: Path) -> CatalogState:
    """A consistent snapshot (one read transaction) of the catalog, daemon running or not."""
    uri = f"file:{data_dir / CATALOG}?mode=ro"
    db = sqlite3.connect(uri, uri=True, timeout=30)
    try:
        db.execute("BEGIN")
        paths = {str(p): int(i) for p, i in db.execute("SELECT path, image_id FROM paths")}
        images = {
            int(row[0]): ImageInfo(
                id=int(row[0]),
                hash=str(row[1]),
                orphaned=row[2] is not None,
                vector=bytes(row[3]),
                added_at=float(row[4]),
                model_id=str(row[5]),
                width=row[6],
                height=row[7],
                format=row[8],
            )
            for row in db.execute(
                "SELECT id, hash, orphaned_at, vector, added_at, model_id, width, height, format "
                "FROM images"
            )
        }
        failures = {
            str(p): (str(r), str(d))
            for p, r, d in db.execute("SELECT path, reason, detail FROM failures")
        }
        integrity = str(db.execute("PRAGMA integrity_check").fetchone()[0])
        db.execute("COMMIT")
    finally:
        db.close()
    return CatalogState(paths, images, failures, integrity)


def content_hash(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


def _excluded(relative: Path) -> bool:
    return any(fnmatchcase(part, pattern) for part in relative.parts for pattern in DEFAULT_EXCLUDE)


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def disk_candidates(root: Path) -> set[str]:
    """Every file wmpd should know about under `root`, by the documented policy."""
    found: set[str] = set()
    stack = [root]
    extensions = set(DEFAULT_EXTENSIONS)
    while stack:
        directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            path = Path(entry.path)
            relative = path.relative_to(root)
            if _excluded(relative) or not _utf8(entry.name):
                continue
            if entry.is_dir(follow_symlinks=False):
                stack.append(path)
                continue
            try:
                regular = stat.S_ISREG(os.stat(path).st_mode)  # follows a symlinked file
            except OSError:
                continue  # a dangling or looping link: nothing to read
            suffix = entry.name.rsplit(".", 1)[-1].lower() if "." in entry.name else ""
            if regular and suffix in extensions:
                found.add(str(path))
    return found


def check_consistent(
    data_dir: Path,
    roots: list[Path],
    index_ids: set[int] | None = None,
    expect_no_failures: bool = False,
) -> CatalogState:
    """Assert catalog = disk (= index when `index_ids` is given); returns the snapshot.

    - every catalogued path is a candidate file on disk whose content hash is its image's;
    - every candidate on disk is catalogued or recorded as failed, never both;
    - every failure is a file still on disk (nothing stale);
    - every visible image has a path, every path a visible image (no ghosts), and no
      content is stored twice;
    - the FAISS ids are exactly the visible image ids.
    """
    state = read_catalog(data_dir)
    problems: list[str] = []
    if state.integrity != "ok":
        problems.append(f"integrity_check: {state.integrity}")
    on_disk: set[str] = set()
    for root in roots:
        on_disk |= disk_candidates(root)
    catalogued = set(state.paths)
    failed = set(state.failures)
    _report(problems, "catalogued but not a candidate on disk", catalogued - on_disk)
    _report(problems, "on disk but neither catalogued nor failed", on_disk - catalogued - failed)
    _report(problems, "both catalogued and failed", catalogued & failed)
    _report(problems, "failure recorded for a file no longer on disk", failed - on_disk)
    if expect_no_failures:
        _report(problems, "failed", {f"{p}: {r}" for p, r in state.failures.items()})
    for path in sorted(catalogued & on_disk):
        image = state.images.get(state.paths[path])
        if image is None:
            problems.append(f"{path}: image {state.paths[path]} does not exist")
        elif image.orphaned:
            problems.append(f"{path}: points at orphaned image {image.id}")
        elif content_hash(Path(path)) != image.hash:
            problems.append(f"{path}: content hash differs from image {image.id}'s")
    linked = set(state.paths.values())
    _report(problems, "visible image without a path (ghost)", state.visible_ids - linked)
    hashes = [image.hash for image in state.images.values()]
    if len(hashes) != len(set(hashes)):
        problems.append("the same content is stored twice")
    if index_ids is not None:
        _report(problems, "in FAISS but not a visible image", index_ids - state.visible_ids)
        _report(problems, "visible image missing from FAISS", state.visible_ids - index_ids)
    assert not problems, "catalog, disk and index disagree:\n" + "\n".join(problems)
    return state


def _report(problems: list[str], what: str, items: set[Any]) -> None:
    if items:
        shown = sorted(map(str, items))
        more = f" ... and {len(shown) - 10} more" if len(shown) > 10 else ""
        problems.append(f"{what} ({len(shown)}): {shown[:10]}{more}")


@dataclass
class SavedIndex:
    ids: set[int]
    vectors: dict[int, bytes]  # id -> float32 little-endian bytes, as the catalog stores them
    meta: dict[str, Any]


def read_saved_index(data_dir: Path) -> SavedIndex:
    """The FAISS file a clean shutdown left, read with plain faiss."""
    index = faiss.read_index(str(data_dir / INDEX))
    meta = json.loads((data_dir / INDEX_META).read_text())
    assert hasattr(index, "id_map"), f"unexpected index type {type(index).__name__}"
    ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    inner = faiss.downcast_index(index.index)
    flat = faiss.rev_swig_ptr(inner.get_xb(), inner.ntotal * inner.d).reshape(-1, inner.d)
    vectors = {int(i): np.asarray(flat[row], dtype="<f4").tobytes() for row, i in enumerate(ids)}
    assert len(vectors) == len(ids), "the saved index holds an id twice"
    return SavedIndex(set(vectors), vectors, meta)


def check_saved_index(data_dir: Path, state: CatalogState) -> SavedIndex:
    """The saved index holds exactly the visible images, with their catalog vectors."""
    saved = read_saved_index(data_dir)
    visible = state.visible_ids
    assert saved.ids == visible, (
        f"saved index ids differ from the visible images: extra {sorted(saved.ids - visible)[:10]}"
        f", missing {sorted(visible - saved.ids)[:10]}"
    )
    differing = [i for i in visible if saved.vectors[i] != state.images[i].vector]
    assert not differing, f"saved vectors differ from the catalog's for ids {differing[:10]}"
    assert saved.meta["count"] == len(visible), saved.meta
    return saved


def check_status_matches(status: dict[str, Any], state: CatalogState) -> list[str]:
    """What /api/status says against the catalog; empty when they agree."""
    wanted = {
        "images": len(state.visible_ids),
        "paths": len(state.paths),
        "failed": len(state.failures),
        "index_size": len(state.visible_ids),
        "failures": state.failure_counts(),
        "index_consistent": True,
    }
    return [
        f"{k}: status {status[k]!r} != catalog {v!r}" for k, v in wanted.items() if status[k] != v
    ]


def wait_consistent(
    daemon: Any, roots: list[Path], timeout: float = 180.0, **checks: bool
) -> CatalogState:
    """Until the daemon is idle, its status agrees with the catalog, and catalog = disk
    (= index, by the status' count). Fails with the last disagreement on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        status = daemon.try_status()
        problem = "no status"
        if status is not None and status["state"] == "idle" and not status["queue"]:
            try:
                state = check_consistent(daemon.data_dir, roots, **checks)
            except AssertionError as exc:
                problem = str(exc)
            else:
                disagreements = check_status_matches(status, state)
                if not disagreements:
                    return state
                problem = f"status disagrees with the catalog: {disagreements}"
        elif status is not None:
            problem = f"not idle: {status['state']}, queue {status['queue']}"
        if time.monotonic() > deadline:
            raise AssertionError(
                f"not consistent after {timeout:.0f}s: {problem}\n{daemon.describe()}"
            )
        assert daemon.alive(), daemon.describe()
        time.sleep(0.3)
