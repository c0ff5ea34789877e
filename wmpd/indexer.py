"""Applying changes to the catalog and the vector index: no threads of its own.

Two entry points: `reconcile` compares a root on disk with the catalog and returns the
changes, and `apply` carries out a list of changes in batches, one transaction each,
then mirrors the committed result into FAISS.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wmpd.catalog import ROOT_OFFLINE, ROOT_ONLINE, Catalog, FailureRow, NewImage, PathRow
from wmpd.config import Config, FolderConfig
from wmpd.embedder import Embedder
from wmpd.errors import ImageError
from wmpd.imaging import DecodeOptions
from wmpd.pipeline import Candidate, Prepared, Preparer
from wmpd.scan import (
    Fingerprint,
    RootRules,
    is_candidate,
    is_walkable_dir,
    root_problem,
    walk_root,
)
from wmpd.vectors import VectorIndex

logger = logging.getLogger(__name__)


@dataclass
class IndexStats:
    """Counts for one run; the keys of `wmpd index --json`."""

    added: int = 0
    moved: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: int = 0
    embedded: int = 0

    def merge(self, other: IndexStats) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class ReconcilePlan:
    """What differs between one root on disk and the catalog."""

    root_id: int
    root: Path
    upserts: list[Candidate] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    unchanged: int = 0
    offline_reason: str | None = None


ProgressCallback = Callable[[int], None]


def rules_for(folder: FolderConfig, config: Config) -> RootRules:
    return RootRules(
        root=folder.path,
        recursive=folder.recursive,
        extensions=frozenset(config.extensions),
        exclude=tuple(config.exclude) + tuple(folder.exclude),
    )


class Indexer:
    """Owns writes to the catalog and the vector index (one per process, one thread)."""

    def __init__(
        self,
        catalog: Catalog,
        vectors: VectorIndex,
        embedder: Embedder,
        config: Config,
        decode_options: DecodeOptions | None = None,
    ) -> None:
        self.catalog = catalog
        self.vectors = vectors
        self.embedder = embedder
        self.config = config
        self._decode_options = decode_options or DecodeOptions(
            max_image_pixels=config.limits.max_image_pixels
        )
        self._preparer: Preparer | None = None

    def close(self) -> None:
        if self._preparer is not None:
            self._preparer.close()

    # -- reconcile ----------------------------------------------------------------------

    def reconcile(self, folder: FolderConfig, under: Path | None = None) -> ReconcilePlan:
        """Compare a root (or one directory `under` it) with the catalog.

        Size + mtime_ns decide what is read again; the content hash decides later, when
        it is read, whether anything is embedded.
        """
        root_path = str(folder.path)
        with self.catalog.transaction():
            root_id = self.catalog.ensure_root(root_path)
        plan = ReconcilePlan(root_id=root_id, root=folder.path)
        if under is not None and under != folder.path:
            return self._reconcile_dir(folder, plan, under)
        problem = root_problem(folder.path)
        known = self.catalog.paths_of_root(root_id)
        if problem is None and known and _is_empty_dir(folder.path):
            # An empty mount point looks exactly like "every photo was deleted"; treat it
            # as an unmounted disk rather than forget a whole collection.
            problem = (
                f"{folder.path} is empty but the catalog holds {len(known)} files under it "
                f"(an unmounted disk?); remove the folder from the config to forget them"
            )
        if problem is not None:
            plan.offline_reason = problem
            self._set_root_state(root_id, ROOT_OFFLINE, problem)
            return plan
        self._set_root_state(root_id, ROOT_ONLINE, None)
        failures = self.catalog.failures_of_root(root_id)
        self._compare(plan, walk_root(rules_for(folder, self.config)), known, failures)
        return plan

    def _reconcile_dir(
        self, folder: FolderConfig, plan: ReconcilePlan, under: Path
    ) -> ReconcilePlan:
        """One directory that appeared, vanished or lost its events; only while the root is
        readable, so an unmounted disk never reads as "everything deleted"."""
        problem = root_problem(folder.path)
        if problem is not None:
            plan.offline_reason = problem
            return plan
        rules = rules_for(folder, self.config)
        prefix = str(under).rstrip("/") + "/"
        known = {
            row.path: row
            for row in self.catalog.paths_under(str(under))
            if row.root_id == plan.root_id
        }
        failures = {
            path: row
            for path, row in self.catalog.failures_of_root(plan.root_id).items()
            if path.startswith(prefix)
        }
        found: Iterable[tuple[Path, Fingerprint]] = ()
        if under.is_relative_to(folder.path) and is_walkable_dir(under, rules):
            sub_rules = RootRules(under, rules.recursive, rules.extensions, rules.exclude)
            # Exclude globs are relative to the root, so every file is checked against it.
            found = ((p, f) for p, f in walk_root(sub_rules) if is_candidate(p, rules))
        self._compare(plan, found, known, failures)
        return plan

    def _compare(
        self,
        plan: ReconcilePlan,
        found_on_disk: Iterable[tuple[Path, Fingerprint]],
        known: dict[str, PathRow],
        failures: dict[str, FailureRow],
    ) -> None:
        stale = self._stale_image_ids()
        on_disk: set[str] = set()
        for path, found in found_on_disk:
            key = str(path)
            on_disk.add(key)
            row = known.get(key)
            if (
                row is not None
                and (row.size, row.mtime_ns) == (found.size, found.mtime_ns)
                and row.image_id not in stale
            ):
                plan.unchanged += 1
                continue
            failure = failures.get(key)
            # A permission fix changes no size or mtime: unreadable files are retried at
            # every scan (cheap: they fail before any decoding).
            if (
                failure is not None
                and failure.reason != "unreadable"
                and (
                    failure.size,
                    failure.mtime_ns,
                )
                == (found.size, found.mtime_ns)
            ):
                plan.unchanged += 1  # failed before and unchanged since: not retried
                continue
            plan.upserts.append(Candidate(path, plan.root_id, found))
        plan.deletes = sorted(set(known) - on_disk)
        plan.deletes += sorted(set(failures) - on_disk)

    def _stale_image_ids(self) -> set[int]:
        """Images embedded by another model: they are re-embedded with the current one."""
        return {
            image_id
            for model_id in self.catalog.model_ids()
            if model_id != self.embedder.model_id
            for image_id in self.catalog.visible_ids(model_id)
        }

    def _set_root_state(self, root_id: int, state: str, detail: str | None) -> None:
        with self.catalog.transaction():
            self.catalog.set_root_state(root_id, state, detail)

    # -- apply --------------------------------------------------------------------------

    def apply_plan(
        self, plan: ReconcilePlan, on_progress: ProgressCallback | None = None
    ) -> IndexStats:
        """Carry out a reconcile plan: content first, so moves re-link instead of re-embed."""
        stats = IndexStats(unchanged=plan.unchanged)
        if plan.offline_reason is not None:
            return stats
        leaving = {
            row.image_id
            for path in plan.deletes
            if (row := self.catalog.path_row(path)) is not None
        }
        stats.merge(self.upsert(plan.upserts, on_progress, moved_from=leaving))
        stats.merge(self.delete(plan.deletes))
        stats.removed = max(0, stats.removed - stats.moved)
        with self.catalog.transaction():
            self.catalog.mark_root_scanned(plan.root_id)
        return stats

    def upsert(
        self,
        candidates: list[Candidate],
        on_progress: ProgressCallback | None = None,
        moved_from: set[int] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> IndexStats:
        """Index these files: link known content, embed new content, record failures.

        `stop` is asked after each committed batch; when it says so the rest is abandoned
        (nothing half-done: the next reconcile finds what was left).
        """
        stats = IndexStats()
        preparer = self._preparer_for()
        items = preparer.prepare_all(candidates)
        try:
            batch: list[Prepared] = []
            for prepared in items:
                batch.append(prepared)
                if sum(p.decoded is not None for p in batch) >= self.config.model.batch_size:
                    self._commit_batch(batch, stats, moved_from or set())
                    if on_progress:
                        on_progress(len(batch))
                    batch = []
                    if stop is not None and stop():
                        return stats
            if batch:
                self._commit_batch(batch, stats, moved_from or set())
                if on_progress:
                    on_progress(len(batch))
            return stats
        finally:
            getattr(items, "close", lambda: None)()  # let the decode threads finish first
            # Every call runs its own decode threads, each with its own read-only catalog
            # connection; the daemon calls this once per chunk, so they are closed here
            # rather than piling up until the file descriptors run out.
            preparer.close()

    def _preparer_for(self) -> Preparer:
        if self._preparer is None:
            self._preparer = Preparer(
                self.catalog.path,
                self.embedder.model_id,
                self.embedder.spec,
                self._decode_options,
                self.config.limits.max_file_bytes,
            )
        return self._preparer

    def _commit_batch(self, batch: list[Prepared], stats: IndexStats, moved_from: set[int]) -> None:
        to_embed = [p for p in batch if p.decoded is not None]
        vectors = (
            self.embedder.encode_images(np.stack([p.decoded.pixels for p in to_embed]))  # type: ignore[union-attr]
            if to_embed
            else np.zeros((0, self.embedder.dim), dtype=np.float32)
        )
        embedded = {id(p): vectors[i] for i, p in enumerate(to_embed)}
        added_ids: list[int] = []
        orphaned: list[int] = []
        with self.catalog.transaction():
            for prepared in batch:
                self._store_one(
                    prepared, embedded.get(id(prepared)), stats, moved_from, added_ids, orphaned
                )
        self._mirror(added_ids, orphaned)

    def _store_one(
        self,
        prepared: Prepared,
        vector: np.ndarray | None,
        stats: IndexStats,
        moved_from: set[int],
        added_ids: list[int],
        orphaned: list[int],
    ) -> None:
        candidate = prepared.candidate
        key = str(candidate.path)
        if prepared.error is not None:
            self._record_failure(candidate, prepared.error, stats, orphaned)
            return
        assert prepared.hash is not None
        existing = self.catalog.image_by_hash(prepared.hash)
        if vector is not None and (existing is None or existing.model_id != self.embedder.model_id):
            decoded = prepared.decoded
            assert decoded is not None
            image_id = self.catalog.upsert_image(
                NewImage(
                    prepared.hash,
                    vector,
                    self.embedder.model_id,
                    decoded.width,
                    decoded.height,
                    decoded.taken_at,
                    decoded.format,
                )
            )
            stats.embedded += 1
            added_ids.append(image_id)
        elif existing is not None:
            image_id = existing.id
            if existing.orphaned:
                self.catalog.adopt_image(image_id)
                added_ids.append(image_id)
        else:  # known to the reader thread but gone since: cannot happen within one writer
            self._record_failure(
                candidate,
                ImageError(key, "corrupt", "content vanished during indexing"),
                stats,
                orphaned,
            )
            return
        previous_row = self.catalog.path_row(key)
        if previous_row is not None and previous_row.image_id == image_id:
            self.catalog.update_fingerprint(
                key, candidate.fingerprint.size, candidate.fingerprint.mtime_ns
            )
            stats.unchanged += 1
            return
        previous = self.catalog.link_path(
            key,
            candidate.root_id,
            image_id,
            candidate.fingerprint.size,
            candidate.fingerprint.mtime_ns,
        )
        if previous is not None and self.catalog.orphan_if_unreferenced(previous):
            orphaned.append(previous)
        if image_id in moved_from and previous_row is None:
            stats.moved += 1
        else:
            stats.added += 1

    def record_failure(self, candidate: Candidate, reason: str, detail: str) -> None:
        """Record a file that broke the pipeline itself, so it is not retried until it changes."""
        orphaned: list[int] = []
        with self.catalog.transaction():
            error = ImageError(str(candidate.path), reason, detail)
            self._record_failure(candidate, error, IndexStats(), orphaned)
        self._mirror([], orphaned)

    def _record_failure(
        self, candidate: Candidate, error: ImageError, stats: IndexStats, orphaned: list[int]
    ) -> None:
        key = str(candidate.path)
        logger.warning("skipping %s: %s (%s)", key, error.reason, error.detail)
        gone = self.catalog.remove_path(key)  # a file that turned bad is no longer its old self
        if gone is not None:
            orphaned.append(gone)
        if error.reason == "vanished":
            return  # nothing to remember: the file is simply not there any more
        self.catalog.record_failure(
            key,
            candidate.root_id,
            candidate.fingerprint.size,
            candidate.fingerprint.mtime_ns,
            error.reason,
            error.detail,
        )
        stats.failed += 1

    def delete(self, paths: Iterable[str]) -> IndexStats:
        stats = IndexStats()
        orphaned: list[int] = []
        with self.catalog.transaction():
            for path in paths:
                if self.catalog.path_row(path) is not None:
                    stats.removed += 1
                gone = self.catalog.remove_path(path)
                if gone is not None:
                    orphaned.append(gone)
        self._mirror([], orphaned)
        return stats

    def move(self, old: Path, new: Path, root_id: int, is_dir: bool) -> int:
        """A rename inside the collection: path rows follow, nothing is re-embedded.

        A rename may overwrite what was at the destination; an image that loses its last
        path that way is orphaned and leaves the vector index like any deleted one.
        """
        with self.catalog.transaction():
            if is_dir:
                displaced = {row.image_id for row in self.catalog.paths_under(str(new))}
                moved = self.catalog.move_tree(str(old), str(new), root_id)
            else:
                row = self.catalog.path_row(str(new))
                displaced = {row.image_id} if row is not None else set()
                moved = int(self.catalog.move_path(str(old), str(new), root_id))
                if moved:
                    self.catalog.clear_failure(str(new))
                else:
                    self.catalog.clear_failure(str(old))
            orphaned = [i for i in displaced if self._orphan_now(i)]
        self._mirror([], orphaned)
        return moved

    def _orphan_now(self, image_id: int) -> bool:
        """Orphan the image if nothing points at it; True only when it just became one."""
        image = self.catalog.image(image_id)
        if image is None or image.orphaned:
            return False
        return self.catalog.orphan_if_unreferenced(image_id)

    def forget_root(self, root_id: int) -> int:
        """The user removed a folder from the config: its paths go, images become orphans."""
        with self.catalog.transaction():
            paths = self.catalog.paths_of_root(root_id)
            image_ids = {row.image_id for row in paths.values()}
            removed = self.catalog.remove_root(root_id)
            orphaned = [i for i in image_ids if self.catalog.image(i) and self._is_orphan(i)]
        self._mirror([], orphaned)
        return removed

    def _is_orphan(self, image_id: int) -> bool:
        image = self.catalog.image(image_id)
        return image is not None and image.orphaned

    def _mirror(self, added_ids: list[int], orphaned: list[int]) -> None:
        """Bring FAISS in line with what was just committed."""
        if orphaned:
            self.vectors.remove(orphaned)
        fresh = [i for i in dict.fromkeys(added_ids) if i not in set(orphaned)]
        if fresh:
            rows = [self.catalog.vector(i) for i in fresh]
            ids = np.array([i for i, v in zip(fresh, rows, strict=True) if v is not None])
            mat = np.stack([v for v in rows if v is not None]) if len(ids) else None
            if mat is not None:
                self.vectors.add(ids, mat)


def _is_empty_dir(path: Path) -> bool:
    try:
        return not any(path.iterdir())
    except OSError:
        return False
