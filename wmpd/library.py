"""One-shot wiring for the commands that run without the daemon (`index`, `search`, `status`).

The daemon has its own wiring in `daemon.py`; both build the same pieces and pass them
down through constructors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from wmpd.catalog import Catalog
from wmpd.config import Config, keep_data_dir_out
from wmpd.datadir import (
    DataDir,
    WriterLock,
    acquire_writer_lock,
    index_stamp,
    lock_holder,
    open_vectors,
    save_vectors,
)
from wmpd.embedder import Embedder
from wmpd.errors import CatalogError
from wmpd.imaging import DecodeOptions
from wmpd.indexer import Indexer, IndexStats, ProgressCallback, ReconcilePlan
from wmpd.search import Searcher
from wmpd.vectors import VectorIndex

logger = logging.getLogger(__name__)


@dataclass
class IndexRun:
    """The result of `wmpd index`: counts plus what could not be scanned."""

    stats: IndexStats
    offline: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def run_index(
    config: Config,
    on_plan: Any = None,
    on_progress: ProgressCallback | None = None,
    decode_options: DecodeOptions | None = None,
) -> IndexRun:
    """Reconcile every configured folder with the catalog, embedding what is new.

    Each batch commits on its own, so an interrupted run loses nothing and the next run
    resumes where this one stopped.
    """
    import time

    started = time.perf_counter()
    config = keep_data_dir_out(config)
    data_dir = DataDir(config.index.data_dir)
    lock = acquire_writer_lock(data_dir, "wmpd index")
    try:
        catalog = Catalog(data_dir.catalog_path)
    except BaseException:
        lock.release()  # e.g. a corrupt catalog: `wmpd repair` needs the lock next
        raise
    try:
        embedder = Embedder(config.model)
        embedder.load()
        vectors = open_vectors(catalog, data_dir, embedder.model_id, embedder.dim)
        indexer = Indexer(catalog, vectors, embedder, config, decode_options)
        result = IndexRun(IndexStats())
        try:
            plans = _reconcile_all(indexer, config, catalog)
            if on_plan is not None:
                on_plan(sum(len(p.upserts) for p in plans))
            for plan in plans:
                if plan.offline_reason is not None:
                    result.offline[str(plan.root)] = plan.offline_reason
                result.stats.merge(indexer.apply_plan(plan, on_progress))
            with catalog.transaction():
                catalog.purge_orphans()
        finally:
            indexer.close()
        # Saved only after a complete run: an interruption between a commit and its FAISS
        # update would otherwise stamp a lagging index as current. Unsaved, the old file's
        # older generation makes the next start rebuild from the catalog instead.
        # A large collection's approximate index may still be building in the background:
        # save the finished one, or the daemon would rebuild it at its next start.
        vectors.wait_until_built()
        save_vectors(vectors, catalog, data_dir, embedder.model_id)
        result.seconds = time.perf_counter() - started
        return result
    finally:
        catalog.close()
        lock.release()


def _reconcile_all(indexer: Indexer, config: Config, catalog: Catalog) -> list[ReconcilePlan]:
    configured = {str(folder.path) for folder in config.folders}
    for root in catalog.roots():
        if root.path not in configured:
            removed = indexer.forget_root(root.id)
            logger.info("forgot %d paths of %s (no longer in the config)", removed, root.path)
    return [indexer.reconcile(folder) for folder in config.folders]


@dataclass
class LocalSearch:
    """Search without a daemon: load the model and the index in this process."""

    searcher: Searcher
    vectors: VectorIndex
    catalog: Catalog

    def close(self) -> None:
        self.catalog.close()


def open_local_search(config: Config) -> LocalSearch:
    data_dir = DataDir(config.index.data_dir)
    if not data_dir.exists():
        raise CatalogError(
            f"no catalog in {data_dir.path} yet: run `wmpd index` (or start the daemon with "
            f"`wmpd run`) first"
        )
    catalog = Catalog(data_dir.catalog_path, readonly=True)
    embedder = Embedder(config.model)
    embedder.load()
    vectors = open_vectors(catalog, data_dir, embedder.model_id, embedder.dim)
    searcher = Searcher(
        lambda: vectors, embedder, data_dir.catalog_path, config.limits.max_image_pixels
    )
    return LocalSearch(searcher, vectors, catalog)


def catalog_status(config: Config) -> dict[str, Any]:
    """What `wmpd status` shows when no daemon answers: read straight from the files."""
    from wmpd.embedder import model_id_for
    from wmpd.vectors import VectorIndex as _Index

    data_dir = DataDir(config.index.data_dir)
    model_id = model_id_for(config.model)
    writer = lock_holder(data_dir)
    status: dict[str, Any] = {
        "state": "stopped" if writer is None else "running",
        "data_dir": str(data_dir.path),
        "model_id": model_id,
        "writer": writer,
    }
    if writer is not None:
        status["state_detail"] = f"{writer} holds the data directory"
    if not data_dir.exists():
        status.update(
            images=0,
            paths=0,
            failed=0,
            failures={},
            roots=[],
            index_size=0,
            index_consistent=True,
            stale_vectors=0,
        )
        return status
    catalog = Catalog(data_dir.catalog_path, readonly=True)
    try:
        counts = catalog.counts()
        stamp = index_stamp(catalog, model_id)
        dim = _stored_dim(catalog, model_id)
        loaded = _Index.load(data_dir.path, stamp, dim) if dim else None
        status.update(
            images=counts.images,
            paths=counts.paths,
            failed=counts.failed,
            orphans=counts.orphans,
            failures=catalog.failure_counts(),
            roots=[
                {
                    "path": r.path,
                    "state": r.state,
                    "detail": r.state_detail,
                    "last_scan_at": r.last_scan_at,
                }
                for r in catalog.roots()
            ],
            index_size=len(loaded) if loaded is not None else 0,
            index_consistent=(loaded is not None) or stamp.count == 0,
            stale_vectors=catalog.stale_model_count(model_id),
        )
    finally:
        catalog.close()
    live = _live_daemon_status(data_dir, writer)
    if live is not None:
        # A running daemon knows more than its files (progress, roots being watched):
        # its own snapshot wins, the catalog's counts fill in the rest.
        status.update({k: v for k, v in live.items() if k != "pid"})
    return status


def _live_daemon_status(data_dir: DataDir, writer: str | None) -> dict[str, Any] | None:
    """The snapshot the running daemon mirrors to disk, when it is that daemon's."""
    from wmpd.status import read_status_file

    if writer is None:
        return None
    live = read_status_file(data_dir.path)
    if live is None or f"(pid {live.get('pid')}," not in writer:
        return None  # left behind by a daemon that was killed, or another writer
    return live


def _stored_dim(catalog: Catalog, model_id: str) -> int:
    for ids, vectors in catalog.iter_visible_vectors(model_id, chunk_size=1):
        return int(vectors.shape[1]) if len(ids) else 0
    return 0


__all__ = [
    "IndexRun",
    "LocalSearch",
    "WriterLock",
    "catalog_status",
    "open_local_search",
    "run_index",
]
