"""The FAISS index: a derived, rebuildable cache of the catalog's vectors.

Vectors are L2-normalised float32, compared by inner product (= cosine). The FAISS id
of an image is its catalog row id. The file on disk carries the catalog generation and
model id it was saved at (in a sidecar written after the index), so a stale or foreign
file is detected on open and rebuilt from the catalog, never re-embedded.

The index type follows the collection's size (`wmpd.ann`): exact search while small, an
inverted file once exact search gets slow. A change of type is built on a background
thread from a snapshot while the current index keeps serving and changing; every add
and remove made meanwhile is logged and replayed onto the new index before it is
swapped in under the lock, so nothing done during a build is lost.
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

from wmpd import ann
from wmpd.ann import DEFAULT_POLICY, AnnPolicy, FaissIndex, Layout

logger = logging.getLogger(__name__)

INDEX_FILE_NAME = "vectors.faiss"
META_FILE_NAME = "vectors.meta.json"

# (ids, vectors) for an add, (ids, None) for a remove.
Mutation = tuple[np.ndarray, np.ndarray | None]


@dataclass(frozen=True)
class IndexStamp:
    """What an index file claims to be in sync with."""

    generation: int
    model_id: str
    count: int


@dataclass(frozen=True)
class _SavedAt:
    data_dir: Path
    stamp: IndexStamp
    mutations: int


class VectorIndex:
    """A thread-safe id → vector index whose FAISS type follows the collection's size."""

    def __init__(self, dim: int, policy: AnnPolicy = DEFAULT_POLICY) -> None:
        self.dim = dim
        self.policy = policy
        self._index: FaissIndex = ann.new_exact(dim)
        self._layout = Layout(ann.EXACT)
        # FAISS indexes are not safe for concurrent mutation and search; the worker writes
        # and HTTP threads read, so every access goes through this lock.
        self._lock = threading.RLock()
        self._pending: list[Mutation] | None = None  # not None while a build runs
        self._builder: threading.Thread | None = None
        self._failed_layout: Layout | None = None
        self._mutations = 0
        self._saved: _SavedAt | None = None
        self._save_lock = threading.Lock()
        self.swaps = 0

    @classmethod
    def build(
        cls,
        dim: int,
        chunks: Iterable[tuple[np.ndarray, np.ndarray]],
        policy: AnnPolicy = DEFAULT_POLICY,
    ) -> VectorIndex:
        """Exact at once (searchable now); a large collection then upgrades in the background."""
        id_parts, vector_parts = [], []
        for ids, vectors in chunks:
            id_parts.append(np.asarray(ids, dtype=np.int64))
            vector_parts.append(np.asarray(vectors, dtype=np.float32).reshape(len(ids), dim))
        index = cls(dim, policy)
        if not id_parts:
            return index
        all_ids = np.ascontiguousarray(np.concatenate(id_parts))
        all_vectors = np.ascontiguousarray(np.concatenate(vector_parts))
        del id_parts, vector_parts
        with index._lock:
            index._index.add_with_ids(all_vectors, all_ids)
            index._schedule_layout(snapshot=(all_ids, all_vectors))
        return index

    def __len__(self) -> int:
        with self._lock:
            return int(self._index.ntotal)

    @property
    def layout(self) -> str:
        """What serves searches now, e.g. "exact" or "ivf2048,fp16,nprobe=32"."""
        with self._lock:
            return self._layout.describe(int(getattr(self._index, "nprobe", 0)))

    @property
    def building(self) -> bool:
        with self._lock:
            return self._pending is not None

    def wait_until_built(self, timeout: float | None = None) -> bool:
        """Wait for a background build (and any it leads to); False on timeout."""
        while True:
            with self._lock:
                builder = self._builder if self._pending is not None else None
            if builder is None:
                return True
            builder.join(timeout)
            if builder.is_alive():
                return False

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add or replace vectors (an id already present is replaced)."""
        if len(ids) == 0:
            return
        ids = np.array(ids, dtype=np.int64)  # copies: the log below must not alias the caller
        vectors = np.array(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        with self._lock:
            _apply(self._index, (ids, vectors))
            self._record((ids, vectors))
            self._schedule_layout()

    def remove(self, ids: Iterable[int]) -> int:
        id_array = np.fromiter(ids, dtype=np.int64)
        if len(id_array) == 0:
            return 0
        with self._lock:
            removed = ann.remove(self._index, id_array)
            self._record((id_array, None))
            self._schedule_layout()
        return removed

    def ids(self) -> set[int]:
        with self._lock:
            id_array = ann.all_ids(self._index)
        return {int(i) for i in id_array}

    def reconstruct(self, image_id: int) -> np.ndarray | None:
        with self._lock:
            return ann.reconstruct(self._index, image_id)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (scores, ids), each (n_queries, k); missing slots have id -1."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        with self._lock:
            k = max(1, min(k, int(self._index.ntotal)))
            return ann.search(self._index, queries, k)

    # -- background re-layout -----------------------------------------------------------

    def _record(self, mutation: Mutation) -> None:
        self._mutations += 1
        if self._pending is not None:
            self._pending.append(mutation)

    def _schedule_layout(self, snapshot: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Start building the layout the current size calls for, if it differs (lock held)."""
        if self._pending is not None:
            return  # the swap checks again when the running build ends
        wanted = self.policy.wanted(int(self._index.ntotal), self._layout)
        if wanted == self._layout or wanted == self._failed_layout:
            return
        # Copying under the lock (a memcpy: ~0.3 s per GB) pins down exactly what the
        # build starts from; the log then holds everything after it.
        ids, vectors = snapshot if snapshot is not None else ann.extract(self._index)
        self._pending = []
        self._builder = threading.Thread(
            target=self._build_and_swap,
            args=(wanted, ids, vectors),
            name="wmpd-index-build",
            daemon=True,
        )
        self._builder.start()

    def _build_and_swap(self, layout: Layout, ids: np.ndarray, vectors: np.ndarray) -> None:
        try:
            fresh = ann.build(layout, self.dim, ids, vectors, self.policy)
        except Exception:  # MemoryError, FAISS errors: keep serving with what we have
            logger.exception("building the %s index failed; keeping the current one", layout)
            with self._lock:
                self._pending = None
                self._failed_layout = layout
            return
        del ids, vectors
        with self._lock:
            assert self._pending is not None
            try:
                for mutation in self._pending:
                    _apply(fresh, mutation)
            except Exception:  # the current index already holds these changes
                logger.exception("replaying changes onto the new index failed; keeping the old")
                self._pending = None
                self._failed_layout = layout
                return
            logger.info(
                "vector index is now %s (%d vectors; %d changes replayed)",
                layout.describe(int(getattr(fresh, "nprobe", 0))),
                fresh.ntotal,
                len(self._pending),
            )
            self._index = fresh
            self._layout = layout
            self._pending = None
            self.swaps += 1
        self._resave_if_unchanged()
        with self._lock:
            self._schedule_layout()

    # -- files --------------------------------------------------------------------------

    def save(self, data_dir: Path, stamp: IndexStamp) -> None:
        """Write to temp files and swap them in, so a crash never leaves a torn index."""
        with self._save_lock:
            with self._lock:
                mutations = self._mutations
                self._write_index(data_dir)
            self._publish(data_dir, stamp, mutations)

    def _resave_if_unchanged(self) -> None:
        """Persist a swapped-in layout under the last stamp when the content is unchanged.

        Otherwise the next regular save (the content changed, so one is due) writes it.
        """
        with self._save_lock:
            saved = self._saved
            with self._lock:
                if saved is None or saved.mutations != self._mutations:
                    return
                self._write_index(saved.data_dir)
            self._publish(saved.data_dir, saved.stamp, saved.mutations)

    def _write_index(self, data_dir: Path) -> None:
        tmp_index = (data_dir / INDEX_FILE_NAME).with_suffix(".faiss.tmp")
        faiss.write_index(self._index, str(tmp_index))

    def _publish(self, data_dir: Path, stamp: IndexStamp, mutations: int) -> None:
        index_path = data_dir / INDEX_FILE_NAME
        meta_path = data_dir / META_FILE_NAME
        tmp_index = index_path.with_suffix(".faiss.tmp")
        tmp_meta = meta_path.with_suffix(".json.tmp")
        _fsync_file(tmp_index)
        # The meta file goes last: an index newer than its meta is caught by the count
        # or generation check and rebuilt.
        meta_path.unlink(missing_ok=True)
        os.replace(tmp_index, index_path)
        tmp_meta.write_text(json.dumps(stamp.__dict__))
        _fsync_file(tmp_meta)
        os.replace(tmp_meta, meta_path)
        self._saved = _SavedAt(data_dir, stamp, mutations)

    @classmethod
    def load(
        cls,
        data_dir: Path,
        expected: IndexStamp,
        dim: int,
        policy: AnnPolicy = DEFAULT_POLICY,
    ) -> VectorIndex | None:
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
        if not ann.is_supported(raw):  # read_index already returns the concrete class
            return None
        index = cls(dim, policy)
        with index._lock:
            index._index = raw
            index._layout = ann.layout_of(raw)
            index._saved = _SavedAt(data_dir, stamp, 0)
            index._schedule_layout()
        return index


def _apply(index: FaissIndex, mutation: Mutation) -> None:
    ids, vectors = mutation
    ann.remove(index, ids)
    if vectors is not None:
        index.add_with_ids(vectors, ids)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
