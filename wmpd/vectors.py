"""The FAISS index: a derived, rebuildable cache of the catalog's vectors.

Vectors are L2-normalised float32, compared by inner product (= cosine). The FAISS id
of an image is its catalog row id. The file on disk carries the catalog generation and
model id it was saved at (in a sidecar written after the index), so a stale or foreign
file is detected on open and rebuilt from the catalog, never re-embedded.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

logger = logging.getLogger(__name__)

INDEX_FILE_NAME = "vectors.faiss"
META_FILE_NAME = "vectors.meta.json"


@dataclass(frozen=True)
class IndexStamp:
    """What an index file claims to be in sync with."""

    generation: int
    model_id: str
    count: int


class VectorIndex:
    """A thread-safe IndexIDMap2 over an exact inner-product index."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        # FAISS indexes are not safe for concurrent mutation and search; the worker writes
        # and HTTP threads read, so every access goes through this lock.
        self._lock = threading.RLock()

    @classmethod
    def build(cls, dim: int, chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> VectorIndex:
        index = cls(dim)
        for ids, vectors in chunks:
            index.add(ids, vectors)
        return index

    def __len__(self) -> int:
        with self._lock:
            return int(self._index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add or replace vectors (an id already present is replaced)."""
        if len(ids) == 0:
            return
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        with self._lock:
            self._index.remove_ids(ids)  # type: ignore[arg-type]
            self._index.add_with_ids(vectors, ids)

    def remove(self, ids: Iterable[int]) -> int:
        id_array = np.fromiter(ids, dtype=np.int64)
        if len(id_array) == 0:
            return 0
        with self._lock:
            return int(self._index.remove_ids(id_array))  # type: ignore[arg-type]

    def ids(self) -> set[int]:
        with self._lock:
            id_map = faiss.vector_to_array(self._index.id_map)
        return {int(i) for i in id_map}

    def reconstruct(self, image_id: int) -> np.ndarray | None:
        with self._lock:
            try:
                return np.asarray(self._index.reconstruct(int(image_id)), dtype=np.float32)
            except RuntimeError:
                return None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (scores, ids), each (n_queries, k); missing slots have id -1."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        with self._lock:
            k = max(1, min(k, int(self._index.ntotal)))
            scores, ids = self._index.search(queries, k)
        return scores, ids

    def save(self, data_dir: Path, stamp: IndexStamp) -> None:
        """Write to temp files and swap them in, so a crash never leaves a torn index."""
        index_path = data_dir / INDEX_FILE_NAME
        meta_path = data_dir / META_FILE_NAME
        tmp_index = index_path.with_suffix(".faiss.tmp")
        tmp_meta = meta_path.with_suffix(".json.tmp")
        with self._lock:
            faiss.write_index(self._index, str(tmp_index))
        _fsync_file(tmp_index)
        # The meta file goes last: an index newer than its meta is caught by the count
        # or generation check and rebuilt.
        meta_path.unlink(missing_ok=True)
        os.replace(tmp_index, index_path)
        tmp_meta.write_text(json.dumps(stamp.__dict__))
        _fsync_file(tmp_meta)
        os.replace(tmp_meta, meta_path)

    @classmethod
    def load(cls, data_dir: Path, expected: IndexStamp, dim: int) -> VectorIndex | None:
        """Load the saved index when it matches `expected`; None when it must be rebuilt."""
        index_path = data_dir / INDEX_FILE_NAME
        meta_path = data_dir / META_FILE_NAME
        if not index_path.exists() or not meta_path.exists():
            return None
        try:
            stamp = IndexStamp(**json.loads(meta_path.read_text()))
            raw = faiss.read_index(str(index_path))
        except (OSError, ValueError, TypeError, RuntimeError) as exc:
            logger.warning("index file %s is unreadable (%s); rebuilding it", index_path, exc)
            return None
        if stamp != expected or raw.ntotal != expected.count or raw.d != dim:
            logger.info(
                "index file %s is stale (%s, expected %s); rebuilding it",
                index_path,
                stamp,
                expected,
            )
            return None
        if not isinstance(raw, faiss.IndexIDMap2):
            return None
        index = cls(dim)
        index._index = raw  # read_index already returns the concrete class
        return index


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
