"""The data directory: its files, the single-writer lock, and opening the vector index.

Only one process may write a data directory: the daemon or `wmpd index`. The lock is an
flock on `wmpd.lock`, released by the kernel when the process dies (even on kill -9),
so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from wmpd.catalog import Catalog
from wmpd.errors import DiskFullError, IndexLockedError
from wmpd.vectors import IndexStamp, VectorIndex

logger = logging.getLogger(__name__)

CATALOG_FILE_NAME = "catalog.sqlite3"
LOCK_FILE_NAME = "wmpd.lock"
THUMBNAIL_DIR_NAME = "thumbnails"
FREE_SPACE_FLOOR_BYTES = 1 << 20


@dataclass(frozen=True)
class DataDir:
    path: Path

    @property
    def catalog_path(self) -> Path:
        return self.path / CATALOG_FILE_NAME

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_FILE_NAME

    @property
    def thumbnails(self) -> Path:
        return self.path / THUMBNAIL_DIR_NAME

    def exists(self) -> bool:
        return self.catalog_path.exists()


class WriterLock:
    """Held for the life of a writing process."""

    def __init__(self, handle: IO[str]) -> None:
        self._handle = handle

    def release(self) -> None:
        if not self._handle.closed:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()


def acquire_writer_lock(data_dir: DataDir, owner: str) -> WriterLock:
    """Take the data directory for writing, or say who holds it."""
    data_dir.path.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir.lock_path, "a+")  # noqa: SIM115 - kept open while the lock is held
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise IndexLockedError(
            f"the data directory {data_dir.path} is in use by {holder}; stop it first "
            f"(`wmpd service stop` or kill that process), or use another index.data_dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{owner} (pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
    handle.flush()
    return WriterLock(handle)


def lock_holder(data_dir: DataDir) -> str | None:
    """Who holds the writer lock now, or None when nobody does."""
    if not data_dir.lock_path.exists():
        return None
    with open(data_dir.lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            return handle.read().strip() or "another process"
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def index_stamp(catalog: Catalog, model_id: str) -> IndexStamp:
    return IndexStamp(
        generation=catalog.generation(),
        model_id=model_id,
        count=catalog.visible_count(model_id),
    )


def open_vectors(
    catalog: Catalog, data_dir: DataDir, model_id: str, dim: int, save_rebuilt: bool = False
) -> VectorIndex:
    """Load the saved index if it matches the catalog; otherwise rebuild it from SQLite.

    A writer passes `save_rebuilt` so that the next start loads the rebuilt index instead
    of rebuilding it again.
    """
    expected = index_stamp(catalog, model_id)
    loaded = VectorIndex.load(data_dir.path, expected, dim)
    if loaded is not None:
        return loaded
    started = time.perf_counter()
    rebuilt = VectorIndex.build(dim, catalog.iter_visible_vectors(model_id))
    logger.info(
        "rebuilt the vector index from the catalog: %d vectors in %.2fs (nothing re-embedded)",
        len(rebuilt),
        time.perf_counter() - started,
    )
    if save_rebuilt:
        try:
            save_vectors(rebuilt, catalog, data_dir, model_id)
        except (DiskFullError, OSError) as exc:
            logger.warning("the rebuilt index could not be saved yet: %s", exc)
    return rebuilt


def save_vectors(vectors: VectorIndex, catalog: Catalog, data_dir: DataDir, model_id: str) -> None:
    try:
        vectors.save(data_dir.path, index_stamp(catalog, model_id))
    except RuntimeError as exc:
        # faiss reports a failed write (a full disk among others) as a RuntimeError.
        full = "No space left" in str(exc) or _free_bytes(data_dir.path) < FREE_SPACE_FLOOR_BYTES
        raise DiskFullError(
            f"the index could not be written to {data_dir.path} ({exc}); "
            + ("the disk is full: free some space" if full else "check the disk")
            + " (it is rebuilt from the catalog at the next start)"
        ) from exc
    except OSError as exc:
        if exc.errno == 28:  # ENOSPC
            raise DiskFullError(
                f"no space left on the device holding {data_dir.path}: the index could not "
                f"be saved (it is rebuilt from the catalog at the next start); free some space"
            ) from exc
        raise


def _free_bytes(path: Path) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0
