"""The SQLite catalog: the source of truth for roots, images, paths, vectors and failures.

Images are keyed by content hash; paths point at images. An image whose last path goes
away is *orphaned*, not deleted: its vector stays so that content which comes back (an
undo, a move seen as delete-then-create) is never embedded twice. Orphans are purged
after ORPHAN_RETENTION_SECONDS.

One writer (the worker thread or `wmpd index`) uses a read-write Catalog; every other
thread opens its own read-only one. Every batch is one `BEGIN IMMEDIATE` transaction.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wmpd.errors import CatalogError, SchemaTooNewError

ORPHAN_RETENTION_SECONDS = 7 * 24 * 3600
BUSY_TIMEOUT_MS = 10_000
ROOT_ONLINE = "online"
ROOT_OFFLINE = "offline"

_MIGRATIONS: list[str] = [
    # version 1: the initial schema.
    """
    CREATE TABLE roots (
        id INTEGER PRIMARY KEY,
        path TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL DEFAULT 'online',
        state_detail TEXT,
        last_scan_at REAL
    );
    CREATE TABLE images (
        id INTEGER PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        width INTEGER,
        height INTEGER,
        taken_at REAL,
        format TEXT,
        model_id TEXT NOT NULL,
        vector BLOB NOT NULL,
        added_at REAL NOT NULL,
        orphaned_at REAL
    );
    CREATE TABLE paths (
        id INTEGER PRIMARY KEY,
        path TEXT NOT NULL UNIQUE,
        root_id INTEGER NOT NULL REFERENCES roots(id) ON DELETE CASCADE,
        image_id INTEGER NOT NULL REFERENCES images(id),
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        seen_at REAL NOT NULL
    );
    CREATE INDEX paths_image ON paths(image_id);
    CREATE INDEX paths_root ON paths(root_id);
    CREATE INDEX images_taken ON images(taken_at);
    CREATE TABLE failures (
        path TEXT PRIMARY KEY,
        root_id INTEGER REFERENCES roots(id) ON DELETE CASCADE,
        size INTEGER,
        mtime_ns INTEGER,
        reason TEXT NOT NULL,
        detail TEXT,
        failed_at REAL NOT NULL
    );
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    INSERT INTO meta(key, value) VALUES ('generation', '0');
    """,
]
SCHEMA_VERSION = len(_MIGRATIONS)


@dataclass(frozen=True)
class RootRow:
    id: int
    path: str
    state: str
    state_detail: str | None
    last_scan_at: float | None


@dataclass(frozen=True)
class PathRow:
    path: str
    root_id: int
    image_id: int
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class ImageRow:
    id: int
    hash: str
    width: int | None
    height: int | None
    taken_at: float | None
    format: str | None
    model_id: str
    orphaned: bool


@dataclass(frozen=True)
class FailureRow:
    path: str
    size: int | None
    mtime_ns: int | None
    reason: str
    detail: str | None


@dataclass(frozen=True)
class NewImage:
    """What the embedder made of one file, ready to store."""

    hash: str
    vector: np.ndarray
    model_id: str
    width: int | None
    height: int | None
    taken_at: float | None
    format: str | None


@dataclass(frozen=True)
class CatalogCounts:
    images: int
    paths: int
    failed: int
    orphans: int


def vector_to_blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def blob_to_vector(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4")


class Catalog:
    """One connection to the catalog file; not shared between threads."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self._dirty = False
        if readonly and not path.exists():
            # sqlite3 would create an empty file and fail later with "no such table".
            raise CatalogError(
                f"no catalog at {path} yet: run `wmpd index` (or start the daemon with "
                f"`wmpd run`) first"
            )
        try:
            if not readonly:
                path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False
            )
            self._configure()
            if not readonly:
                self._migrate()
            else:
                self._check_version()
        except sqlite3.DatabaseError as exc:
            raise CatalogError(
                f"cannot open the catalog {path}: {exc}. If the file is corrupt, stop wmpd and run "
                f"`wmpd repair` (it moves the damaged catalog aside and re-indexes; photos are "
                f"never touched)."
            ) from exc

    def _configure(self) -> None:
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._db.execute("PRAGMA foreign_keys = ON")
        if self.readonly:
            self._db.execute("PRAGMA query_only = ON")
        else:
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")

    def _user_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _check_version(self) -> None:
        version = self._user_version()
        if version > SCHEMA_VERSION:
            raise SchemaTooNewError(
                f"the catalog {self.path} has schema version {version}, but this wmpd knows only "
                f"up to {SCHEMA_VERSION}: upgrade wmpd, or point index.data_dir elsewhere"
            )

    def _migrate(self) -> None:
        self._check_version()
        version = self._user_version()
        for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
            # Each step and its version bump commit together, so a crash mid-migration
            # leaves the previous version intact.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in script.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {number}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self._db.close()

    # -- transactions -------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One batch = one transaction; the generation moves on when images changed."""
        self._db.execute("BEGIN IMMEDIATE")
        self._dirty = False
        try:
            yield
            if self._dirty:
                self._db.execute(
                    "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'"
                )
            self._db.execute("COMMIT")
        except BaseException:
            # SQLite may already have rolled back (a full disk fails the COMMIT itself);
            # a second ROLLBACK would then hide the real error.
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def generation(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(row[0])

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # -- roots --------------------------------------------------------------------------

    def ensure_root(self, path: str) -> int:
        self._db.execute("INSERT OR IGNORE INTO roots(path) VALUES (?)", (path,))
        row = self._db.execute("SELECT id FROM roots WHERE path = ?", (path,)).fetchone()
        return int(row[0])

    def roots(self) -> list[RootRow]:
        rows = self._db.execute(
            "SELECT id, path, state, state_detail, last_scan_at FROM roots ORDER BY path"
        )
        return [RootRow(*row) for row in rows]

    def set_root_state(self, root_id: int, state: str, detail: str | None = None) -> None:
        self._db.execute(
            "UPDATE roots SET state = ?, state_detail = ? WHERE id = ?", (state, detail, root_id)
        )

    def mark_root_scanned(self, root_id: int) -> None:
        self._db.execute("UPDATE roots SET last_scan_at = ? WHERE id = ?", (time.time(), root_id))

    def remove_root(self, root_id: int) -> int:
        """Forget a root the user took out of the config; its images become orphans."""
        image_ids = [
            int(r[0])
            for r in self._db.execute(
                "SELECT DISTINCT image_id FROM paths WHERE root_id = ?", (root_id,)
            )
        ]
        removed = self._db.execute("DELETE FROM paths WHERE root_id = ?", (root_id,)).rowcount
        self._db.execute("DELETE FROM failures WHERE root_id = ?", (root_id,))
        self._db.execute("DELETE FROM roots WHERE id = ?", (root_id,))
        for image_id in image_ids:
            self.orphan_if_unreferenced(image_id)
        return int(removed)

    # -- paths --------------------------------------------------------------------------

    def path_row(self, path: str) -> PathRow | None:
        row = self._db.execute(
            "SELECT path, root_id, image_id, size, mtime_ns FROM paths WHERE path = ?", (path,)
        ).fetchone()
        return None if row is None else PathRow(*row)

    def paths_of_root(self, root_id: int) -> dict[str, PathRow]:
        rows = self._db.execute(
            "SELECT path, root_id, image_id, size, mtime_ns FROM paths WHERE root_id = ?",
            (root_id,),
        )
        return {row[0]: PathRow(*row) for row in rows}

    def paths_of_image(self, image_id: int) -> list[str]:
        rows = self._db.execute(
            "SELECT path FROM paths WHERE image_id = ? ORDER BY path", (image_id,)
        )
        return [str(r[0]) for r in rows]

    def paths_of_images(self, image_ids: list[int]) -> dict[int, list[str]]:
        found: dict[int, list[str]] = {i: [] for i in image_ids}
        for chunk in _chunks(image_ids, 500):
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT image_id, path FROM paths WHERE image_id IN ({marks}) ORDER BY path",
                chunk,
            )
            for image_id, path in rows:
                found[int(image_id)].append(str(path))
        return found

    def link_path(
        self, path: str, root_id: int, image_id: int, size: int, mtime_ns: int
    ) -> int | None:
        """Point `path` at `image_id`; returns the image it pointed at before, if another."""
        previous = self.path_row(path)
        self._db.execute(
            "INSERT INTO paths(path, root_id, image_id, size, mtime_ns, seen_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET "
            "root_id = excluded.root_id, image_id = excluded.image_id, size = excluded.size, "
            "mtime_ns = excluded.mtime_ns, seen_at = excluded.seen_at",
            (path, root_id, image_id, size, mtime_ns, time.time()),
        )
        self._db.execute("DELETE FROM failures WHERE path = ?", (path,))
        self._dirty = True
        if previous is not None and previous.image_id != image_id:
            return previous.image_id
        return None

    def update_fingerprint(self, path: str, size: int, mtime_ns: int) -> None:
        """Content unchanged (same hash) but touched: remember the new size/mtime."""
        self._db.execute(
            "UPDATE paths SET size = ?, mtime_ns = ?, seen_at = ? WHERE path = ?",
            (size, mtime_ns, time.time(), path),
        )

    def remove_path(self, path: str) -> int | None:
        """Forget a path; returns its image id when that image lost its last path."""
        self._db.execute("DELETE FROM failures WHERE path = ?", (path,))
        row = self.path_row(path)
        if row is None:
            return None
        self._db.execute("DELETE FROM paths WHERE path = ?", (path,))
        self._dirty = True
        return row.image_id if self.orphan_if_unreferenced(row.image_id) else None

    def move_path(self, old: str, new: str, root_id: int) -> bool:
        """A rename: the path row follows the file, the image is untouched.

        A rename over another file drops that file's row; the caller orphans its image
        when that was its last path (and takes it out of the vector index).
        """
        if self.path_row(old) is None:
            return False
        self._db.execute("DELETE FROM paths WHERE path = ?", (new,))
        self._db.execute(
            "UPDATE paths SET path = ?, root_id = ?, seen_at = ? WHERE path = ?",
            (new, root_id, time.time(), old),
        )
        self._db.execute("DELETE FROM failures WHERE path IN (?, ?)", (old, new))
        self._dirty = True
        return True

    def move_tree(self, old_dir: str, new_dir: str, root_id: int) -> int:
        """A directory rename: rewrite every path under it in one statement.

        Rows already at the destination are replaced; as for move_path, the caller orphans
        images that lost their last path that way.
        """
        old_prefix = old_dir.rstrip("/") + "/"
        new_prefix = new_dir.rstrip("/") + "/"
        cursor = self._db.execute(
            "UPDATE OR REPLACE paths SET path = ? || substr(path, ?), root_id = ?, seen_at = ? "
            "WHERE substr(path, 1, ?) = ?",
            (new_prefix, len(old_prefix) + 1, root_id, time.time(), len(old_prefix), old_prefix),
        )
        self._db.execute(
            "UPDATE OR REPLACE failures SET path = ? || substr(path, ?), root_id = ? "
            "WHERE substr(path, 1, ?) = ?",
            (new_prefix, len(old_prefix) + 1, root_id, len(old_prefix), old_prefix),
        )
        if cursor.rowcount:
            self._dirty = True
        return int(cursor.rowcount)

    def paths_under(self, directory: str) -> list[PathRow]:
        prefix = directory.rstrip("/") + "/"
        rows = self._db.execute(
            "SELECT path, root_id, image_id, size, mtime_ns FROM paths "
            "WHERE substr(path, 1, ?) = ?",
            (len(prefix), prefix),
        )
        return [PathRow(*row) for row in rows]

    # -- images -------------------------------------------------------------------------

    def image_by_hash(self, content_hash: str) -> ImageRow | None:
        row = self._db.execute(_IMAGE_SELECT + " WHERE hash = ?", (content_hash,)).fetchone()
        return None if row is None else _image_row(row)

    def image(self, image_id: int) -> ImageRow | None:
        row = self._db.execute(_IMAGE_SELECT + " WHERE id = ?", (image_id,)).fetchone()
        return None if row is None else _image_row(row)

    def images(self, image_ids: list[int]) -> dict[int, ImageRow]:
        found: dict[int, ImageRow] = {}
        for chunk in _chunks(image_ids, 500):
            marks = ",".join("?" * len(chunk))
            for row in self._db.execute(_IMAGE_SELECT + f" WHERE id IN ({marks})", chunk):
                image = _image_row(row)
                found[image.id] = image
        return found

    def vector(self, image_id: int) -> np.ndarray | None:
        row = self._db.execute("SELECT vector FROM images WHERE id = ?", (image_id,)).fetchone()
        return None if row is None else blob_to_vector(row[0])

    def upsert_image(self, new: NewImage) -> int:
        """Store (or refresh, e.g. after a model change) the image for a content hash."""
        self._db.execute(
            "INSERT INTO images(hash, width, height, taken_at, format, model_id, vector, added_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(hash) DO UPDATE SET "
            "width = excluded.width, height = excluded.height, taken_at = excluded.taken_at, "
            "format = excluded.format, model_id = excluded.model_id, vector = excluded.vector",
            (
                new.hash,
                new.width,
                new.height,
                new.taken_at,
                new.format,
                new.model_id,
                vector_to_blob(new.vector),
                time.time(),
            ),
        )
        self._dirty = True
        row = self._db.execute("SELECT id FROM images WHERE hash = ?", (new.hash,)).fetchone()
        return int(row[0])

    def adopt_image(self, image_id: int) -> None:
        """An orphan got a path again: it is visible once more."""
        self._db.execute("UPDATE images SET orphaned_at = NULL WHERE id = ?", (image_id,))
        self._dirty = True

    def orphan_if_unreferenced(self, image_id: int) -> bool:
        has_path = self._db.execute(
            "SELECT 1 FROM paths WHERE image_id = ? LIMIT 1", (image_id,)
        ).fetchone()
        if has_path:
            return False
        self._db.execute(
            "UPDATE images SET orphaned_at = ? WHERE id = ? AND orphaned_at IS NULL",
            (time.time(), image_id),
        )
        self._dirty = True
        return True

    def purge_orphans(self, older_than_seconds: float = ORPHAN_RETENTION_SECONDS) -> int:
        cutoff = time.time() - older_than_seconds
        cursor = self._db.execute(
            "DELETE FROM images WHERE orphaned_at IS NOT NULL AND orphaned_at < ?", (cutoff,)
        )
        return int(cursor.rowcount)

    def visible_count(self, model_id: str) -> int:
        row = self._db.execute(
            "SELECT COUNT(*) FROM images WHERE orphaned_at IS NULL AND model_id = ?", (model_id,)
        ).fetchone()
        return int(row[0])

    def visible_ids(self, model_id: str) -> set[int]:
        rows = self._db.execute(
            "SELECT id FROM images WHERE orphaned_at IS NULL AND model_id = ?", (model_id,)
        )
        return {int(r[0]) for r in rows}

    def iter_visible_vectors(
        self, model_id: str, chunk_size: int = 20_000
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (ids, vectors) chunks of every searchable image, for an index rebuild."""
        cursor = self._db.execute(
            "SELECT id, vector FROM images WHERE orphaned_at IS NULL AND model_id = ? ORDER BY id",
            (model_id,),
        )
        while rows := cursor.fetchmany(chunk_size):
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4")
            yield ids, vectors.reshape(len(rows), -1).astype(np.float32, copy=False)

    def stale_model_count(self, model_id: str) -> int:
        row = self._db.execute(
            "SELECT COUNT(*) FROM images WHERE orphaned_at IS NULL AND model_id != ?", (model_id,)
        ).fetchone()
        return int(row[0])

    def model_ids(self) -> dict[str, int]:
        rows = self._db.execute(
            "SELECT model_id, COUNT(*) FROM images WHERE orphaned_at IS NULL GROUP BY model_id"
        )
        return {str(r[0]): int(r[1]) for r in rows}

    # -- failures -----------------------------------------------------------------------

    def record_failure(
        self,
        path: str,
        root_id: int | None,
        size: int | None,
        mtime_ns: int | None,
        reason: str,
        detail: str,
    ) -> None:
        self._db.execute(
            "INSERT INTO failures(path, root_id, size, mtime_ns, reason, detail, failed_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET "
            "root_id = excluded.root_id, size = excluded.size, mtime_ns = excluded.mtime_ns, "
            "reason = excluded.reason, detail = excluded.detail, failed_at = excluded.failed_at",
            (path, root_id, size, mtime_ns, reason, detail, time.time()),
        )

    def failure(self, path: str) -> FailureRow | None:
        row = self._db.execute(
            "SELECT path, size, mtime_ns, reason, detail FROM failures WHERE path = ?", (path,)
        ).fetchone()
        return None if row is None else FailureRow(*row)

    def failures_of_root(self, root_id: int) -> dict[str, FailureRow]:
        rows = self._db.execute(
            "SELECT path, size, mtime_ns, reason, detail FROM failures WHERE root_id = ?",
            (root_id,),
        )
        return {row[0]: FailureRow(*row) for row in rows}

    def clear_failure(self, path: str) -> None:
        self._db.execute("DELETE FROM failures WHERE path = ?", (path,))

    def failure_counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT reason, COUNT(*) FROM failures GROUP BY reason")
        return {str(r[0]): int(r[1]) for r in rows}

    def recent_failures(self, limit: int = 20) -> list[FailureRow]:
        rows = self._db.execute(
            "SELECT path, size, mtime_ns, reason, detail FROM failures "
            "ORDER BY failed_at DESC LIMIT ?",
            (limit,),
        )
        return [FailureRow(*row) for row in rows]

    # -- summaries ----------------------------------------------------------------------

    def counts(self) -> CatalogCounts:
        images = self._db.execute(
            "SELECT COUNT(*) FROM images WHERE orphaned_at IS NULL"
        ).fetchone()[0]
        orphans = self._db.execute(
            "SELECT COUNT(*) FROM images WHERE orphaned_at IS NOT NULL"
        ).fetchone()[0]
        paths = self._db.execute("SELECT COUNT(*) FROM paths").fetchone()[0]
        failed = self._db.execute("SELECT COUNT(*) FROM failures").fetchone()[0]
        return CatalogCounts(int(images), int(paths), int(failed), int(orphans))

    def filter_ids(
        self,
        image_ids: list[int],
        *,
        folder: str | None = None,
        after: float | None = None,
        before: float | None = None,
        formats: tuple[str, ...] = (),
    ) -> set[int]:
        """Which of these images pass the search filters (folder prefix, capture time, type)."""
        clauses: list[str] = []
        params: list[object] = []
        if after is not None:
            clauses.append("i.taken_at >= ?")
            params.append(after)
        if before is not None:
            clauses.append("i.taken_at < ?")
            params.append(before)
        if formats:
            clauses.append(f"i.format IN ({','.join('?' * len(formats))})")
            params.extend(formats)
        if folder is not None:
            prefix = folder.rstrip("/") + "/"
            clauses.append(
                "EXISTS (SELECT 1 FROM paths p "
                "WHERE p.image_id = i.id AND substr(p.path, 1, ?) = ?)"
            )
            params.extend([len(prefix), prefix])
        where = " AND ".join(clauses) if clauses else "1"
        kept: set[int] = set()
        for chunk in _chunks(image_ids, 500):
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT i.id FROM images i WHERE i.id IN ({marks}) AND {where}",
                [*chunk, *params],
            )
            kept.update(int(r[0]) for r in rows)
        return kept

    def integrity_check(self) -> str:
        return str(self._db.execute("PRAGMA quick_check").fetchone()[0])


_IMAGE_SELECT = (
    "SELECT id, hash, width, height, taken_at, format, model_id, orphaned_at IS NOT NULL "
    "FROM images"
)


def _image_row(row: tuple[object, ...]) -> ImageRow:
    (image_id, content_hash, width, height, taken_at, fmt, model_id, orphaned) = row
    return ImageRow(
        id=int(image_id),  # type: ignore[call-overload]
        hash=str(content_hash),
        width=width,  # type: ignore[arg-type]
        height=height,  # type: ignore[arg-type]
        taken_at=taken_at,  # type: ignore[arg-type]
        format=fmt,  # type: ignore[arg-type]
        model_id=str(model_id),
        orphaned=bool(orphaned),
    )


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
