"""The one consumer thread: it owns the catalog writer, the index and every root's watch.

Each tick it drains the change queue into the settle/coalesce buffer, keeps roots
healthy (offline ↔ online, inotify ↔ polling), applies what has settled (moves first,
then deletions and directory rescans, then new content in model-sized chunks), and
persists the index now and then. An error in one tick is logged and retried with a
backoff; it never ends the thread, and nothing a file does can stop it.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from wmpd.changes import ChangeBuffer, ReadyWork, is_under, rebase
from wmpd.config import Config
from wmpd.datadir import DataDir, save_vectors
from wmpd.errors import DiskFullError, WmpdError
from wmpd.indexer import Indexer
from wmpd.pipeline import Candidate
from wmpd.roots import Root, RootSet
from wmpd.scan import Fingerprint, fingerprint, is_candidate
from wmpd.status import DaemonStatus
from wmpd.watcher import Change

logger = logging.getLogger(__name__)

TICK_SECONDS = 0.1  # the longest wait for events while nothing else is due
MAX_CHANGES_PER_TICK = 20_000
ROOT_CHECK_SECONDS = 2.0
IDLE_PERSIST_SECONDS = 5.0  # save the index this long after the last change, once idle
PERSIST_SECONDS = 60.0  # ... and at least this often while busy
COUNTS_REFRESH_SECONDS = 1.0
DISK_FULL_RETRY_SECONDS = 10.0
MAX_BACKOFF_SECONDS = 60.0
WORKER_NICENESS = 10
# Model batches handed to the indexer at once: its decode threads read ahead while the
# model encodes, and a stop request is honoured between batches.
CHUNK_BATCHES = 4
READY_BATCHES = 32  # how much settled work is taken out of the buffer ahead of embedding
# Failures a new event retries even when size and mtime are unchanged (a chmod fixes them).
RETRY_ON_EVENT_REASONS = frozenset({"unreadable"})
# Errors that are the catalog's or the disk's, not one file's: the chunk is kept and retried.
_INFRASTRUCTURE_ERRORS = (sqlite3.Error, WmpdError, OSError)


class Worker(threading.Thread):
    """Consumes changes and applies them through the indexer; the only writer."""

    def __init__(
        self,
        indexer: Indexer,
        data_dir: DataDir,
        config: Config,
        changes: queue.Queue[Change],
        status: DaemonStatus,
    ) -> None:
        super().__init__(name="wmpd-worker", daemon=True)
        self.indexer = indexer
        self.data_dir = data_dir
        self.config = config
        self.changes = changes
        self.status = status
        self.buffer = ChangeBuffer(config.watcher.settle_seconds)
        self.stop_event = threading.Event()
        self.roots = RootSet(indexer, changes, status, self.buffer, self._mark_dirty)
        self._ready: dict[Path, Candidate] = {}
        self._wanted: Config | None = config  # a config whose roots are not set up yet
        self._requests: queue.SimpleQueue[Config] = queue.SimpleQueue()
        self._dirty_since: float | None = None
        self._last_change = 0.0
        self._counts_stale = True
        self._counts_next = 0.0
        self._last_root_check = 0.0
        self._last_rescan = time.monotonic()
        self._rescan_all = False
        self._paused_until = 0.0
        self._failures_in_a_row = 0

    # -- control from other threads ------------------------------------------------------

    def request_config(self, config: Config) -> None:
        """Apply a new (already validated) config: folders added, removed or changed."""
        self._requests.put(config)

    def stop(self) -> None:
        self.stop_event.set()

    # -- the loop -----------------------------------------------------------------------

    def run(self) -> None:
        _lower_this_thread_priority()
        self.roots.start_monitoring()
        try:
            while not self.stop_event.is_set():
                self._guarded(self._tick)
        finally:
            self._shutdown()

    def _guarded(self, step: Callable[[], None]) -> None:
        try:
            step()
            if self._failures_in_a_row:
                self.status.warn("worker", None)
            self._failures_in_a_row = 0
        except Exception as exc:
            self._failures_in_a_row += 1
            delay = min(MAX_BACKOFF_SECONDS, 2.0 ** min(self._failures_in_a_row, 6))
            logger.exception("indexing step failed; retrying in %.0fs", delay)
            self.status.warn("worker", f"indexing error, retrying in {delay:.0f}s: {exc}")
            self._rescan_all = True  # whatever was taken from the buffer is found again
            self.stop_event.wait(delay)

    def _tick(self) -> None:
        self._drain_changes(self._wait_seconds())
        self._apply_config()
        now = time.monotonic()
        if now - self._last_root_check >= ROOT_CHECK_SECONDS:
            self._last_root_check = now
            self.roots.check()
        self.roots.handle_lost_watches()
        self._maybe_rescan(now)
        self._queue_all(self.roots.take_found())
        if now >= self._paused_until:
            self._do_work(now)
        self._maybe_persist(time.monotonic())
        self._publish(time.monotonic())

    def _wait_seconds(self) -> float:
        if self._ready or self._wanted is not None or not self._requests.empty():
            return 0.0
        if time.monotonic() < self._paused_until:
            return TICK_SECONDS
        return min(TICK_SECONDS, self.buffer.next_due(time.monotonic()))

    def _drain_changes(self, timeout: float) -> None:
        try:
            change = self.changes.get(timeout=timeout) if timeout > 0 else self.changes.get_nowait()
        except queue.Empty:
            return
        now = time.monotonic()
        self.buffer.add(change, now)
        for _ in range(MAX_CHANGES_PER_TICK):
            try:
                self.buffer.add(self.changes.get_nowait(), now)
            except queue.Empty:
                return

    def _apply_config(self) -> None:
        while not self._requests.empty():
            self._wanted = self._requests.get()
        if self._wanted is None:
            return
        config = self._wanted
        self.indexer.config = config
        self.buffer.settle_seconds = config.watcher.settle_seconds
        self.roots.sync(config)
        self.config = config
        self._wanted = None

    def _maybe_rescan(self, now: float) -> None:
        interval = self.config.watcher.rescan_interval
        if self._rescan_all or (interval and now - self._last_rescan >= interval):
            self._rescan_all = False
            self._last_rescan = now
            self.roots.reconcile_all()

    # -- applying changes ---------------------------------------------------------------

    def _do_work(self, now: float) -> None:
        room = max(0, self.config.model.batch_size * READY_BATCHES - len(self._ready))
        ready = self.buffer.take_ready(now, max_upserts=room)
        try:
            if ready:
                self._apply_ready(ready, now)
            self._embed_some()
        except (DiskFullError, OSError, sqlite3.OperationalError) as exc:
            if not _is_disk_full(exc):
                raise
            self._pause_for_disk(exc)

    def _pause_for_disk(self, exc: Exception) -> None:
        logger.error("disk full, indexing paused: %s", exc)
        self.status.set_state(
            "paused",
            f"no space left for the catalog in {self.data_dir.path}; indexing is paused and "
            f"resumes by itself when space is freed (search keeps working)",
        )
        self._paused_until = time.monotonic() + DISK_FULL_RETRY_SECONDS
        self._rescan_all = True

    def _apply_ready(self, ready: ReadyWork, now: float) -> None:
        for change in ready.moves:
            self._apply_move(change)
        deletes = [p for p in ready.deletes if self.roots.may_delete(p)]
        if deletes:
            self._mark_dirty(self.indexer.delete(str(p) for p in deletes).removed)
        for directory in ready.rescans:
            plan = self.roots.rescan_dir(directory)
            if plan is not None:
                self._mark_dirty(self.indexer.delete(plan.deletes).removed if plan.deletes else 0)
                for candidate in plan.upserts:  # they settle like files that sent events
                    self.buffer.add_found(candidate.path, candidate.fingerprint, now)
        for path, found in ready.upserts:
            self._queue_file(path, found)

    def _apply_move(self, change: Change) -> None:
        assert change.dest is not None
        is_dir = change.kind == "move_dir"
        dest_root = self.roots.online_root_of(change.dest)
        self._rebase_ready(change.path, change.dest, is_dir, dest_root)
        if dest_root is None:
            return  # its root is offline; the rescan when it is back sorts it out
        moved = self.indexer.move(change.path, change.dest, dest_root.root_id, is_dir=is_dir)
        self._mark_dirty(moved)
        if is_dir and not self.roots.same_rules(change.path, change.dest):
            self._rescan_all = True  # files excluded before may be wanted now, or the reverse
        elif not is_dir and is_candidate(change.dest, dest_root.rules):
            # Never indexed under its old name, or the row that moved no longer describes
            # the file (a rename keeps size and mtime): read it under the new name.
            found = fingerprint(change.dest)
            row = self.indexer.catalog.path_row(str(change.dest)) if moved else None
            if found is not None and (
                row is None or (row.size, row.mtime_ns) != (found.size, found.mtime_ns)
            ):
                self._queue_file(change.dest, found)

    def _rebase_ready(self, old: Path, new: Path, is_dir: bool, dest_root: Root | None) -> None:
        """Queued files follow a rename, so they are read under the name they now have."""
        moving = [p for p in self._ready if is_under(p, old)] if is_dir else [old]
        for path in moving:
            candidate = self._ready.pop(path, None)
            if candidate is None:
                continue
            target = rebase(path, old, new) if is_dir else new
            root_id = candidate.root_id if dest_root is None else dest_root.root_id
            self._ready[target] = Candidate(target, root_id, candidate.fingerprint)

    def _queue_file(self, path: Path, found: Fingerprint) -> None:
        root = self.roots.online_root_of(path)
        if root is None or not is_candidate(path, root.rules):
            return
        failure = self.indexer.catalog.failure(str(path))
        if (
            failure is not None
            and (failure.size, failure.mtime_ns) == (found.size, found.mtime_ns)
            and failure.reason not in RETRY_ON_EVENT_REASONS
        ):
            return  # failed before and unchanged since: not retried
        self._queue(Candidate(path, root.root_id, found))

    def _queue(self, candidate: Candidate) -> None:
        if candidate.path not in self._ready:
            self.status.add_total(1)
        self._ready[candidate.path] = candidate

    def _queue_all(self, candidates: list[Candidate]) -> None:
        for candidate in candidates:
            self._queue(candidate)

    def _forget_ready(self, root_ids: set[int]) -> None:
        dropped = [p for p, c in self._ready.items() if c.root_id in root_ids]
        for path in dropped:
            del self._ready[path]
        if dropped:
            self.status.add_total(-len(dropped))  # they wait for their root, not in the ETA

    # -- embedding ----------------------------------------------------------------------

    def _embed_some(self) -> None:
        """Index up to one chunk of ready files, then return to the loop."""
        self._forget_ready(self.roots.inactive_ids())
        if not self._ready:
            if self.status.state in ("indexing", "paused"):
                self._refresh_counts(time.monotonic())  # "idle" comes with the final counts
                self.status.set_state("idle")
            return
        self.status.set_state("indexing")
        size = self.config.model.batch_size * CHUNK_BATCHES
        chunk = [self._ready.pop(p) for p in list(itertools.islice(self._ready, size))]
        if not self.roots.still_readable({c.root_id for c in chunk}):
            self._requeue(chunk)
            self._forget_ready(self.roots.inactive_ids())
            return  # a root vanished under the queue: its files wait for it to come back
        try:
            stats = self.indexer.upsert(chunk, stop=self.stop_event.is_set)
        except _INFRASTRUCTURE_ERRORS:
            self._requeue(chunk)
            raise
        except Exception:
            logger.exception("indexing %d files failed; trying them one by one", len(chunk))
            self._isolate(chunk)
            return
        self.status.add_done(len(chunk), stats.embedded)
        self._mark_dirty(stats.added + stats.embedded + stats.moved + stats.failed)

    def _requeue(self, chunk: list[Candidate]) -> None:
        for candidate in chunk:
            self._ready.setdefault(candidate.path, candidate)

    def _isolate(self, chunk: list[Candidate]) -> None:
        """Find the file that breaks the pipeline, record it, and index the others."""
        for index, candidate in enumerate(chunk):
            try:
                self.indexer.upsert([candidate])
            except _INFRASTRUCTURE_ERRORS:
                self._requeue(chunk[index:])
                raise
            except Exception as exc:
                detail = f"{type(exc).__name__}: {exc}"
                logger.warning("skipping %s: internal error (%s)", candidate.path, detail)
                self.indexer.record_failure(candidate, "internal", detail)
        self.status.add_done(len(chunk), 0)
        self._mark_dirty(len(chunk))

    # -- persistence and status ---------------------------------------------------------

    def _mark_dirty(self, changed: int) -> None:
        if changed:
            self._last_change = time.monotonic()
            self._counts_stale = True
            if self._dirty_since is None:
                self._dirty_since = self._last_change

    def _maybe_persist(self, now: float, force: bool = False) -> None:
        if self._dirty_since is None:
            return
        idle = not self._ready and now - self._last_change >= IDLE_PERSIST_SECONDS
        if not (force or idle or now - self._dirty_since >= PERSIST_SECONDS):
            return
        try:
            save_vectors(
                self.indexer.vectors,
                self.indexer.catalog,
                self.data_dir,
                self.indexer.embedder.model_id,
            )
            self._dirty_since = None
        except OSError as exc:
            logger.warning("could not save the vector index yet: %s", exc)
        except DiskFullError as exc:
            logger.warning("%s", exc)

    def _publish(self, now: float) -> None:
        self.status.set_queue(len(self._ready) + len(self.buffer))
        self.status.set_index(len(self.indexer.vectors), consistent=True)
        # Counting rows is not free on a big catalog: at most once a second while busy.
        if self._counts_stale and now >= self._counts_next:
            self._refresh_counts(now)

    def _refresh_counts(self, now: float) -> None:
        self._counts_stale = False
        self._counts_next = now + COUNTS_REFRESH_SECONDS
        self.status.refresh_counts(self.indexer.catalog)

    def _shutdown(self) -> None:
        self.roots.stop_all()
        try:
            self._maybe_persist(time.monotonic(), force=True)
            self.status.refresh_counts(self.indexer.catalog)
        except (WmpdError, sqlite3.Error) as exc:
            logger.error("%s", exc)
        self.indexer.close()


def _is_disk_full(exc: Exception) -> bool:
    if isinstance(exc, DiskFullError):
        return True
    if isinstance(exc, OSError):
        return exc.errno == errno.ENOSPC
    return "full" in str(exc)  # sqlite3: "database or disk is full"


def _lower_this_thread_priority() -> None:
    """Indexing runs at a lower priority so the desktop and searches stay responsive.

    On Linux, niceness is per thread: this lowers the worker (and the decode threads it
    starts, which inherit it) while HTTP threads keep the normal priority.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICENESS)
    except (OSError, AttributeError) as exc:
        logger.debug("could not lower the worker's priority: %s", exc)
