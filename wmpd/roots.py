"""The watched roots of a running daemon: online ↔ offline, inotify ↔ polling, reconcile.

Used only from the worker thread. A root is *online* when it can be listed and is
watched; otherwise it is *offline* and nothing under it is ever deleted (an unmounted
disk looks exactly like a folder whose files were all removed). Every time a root
comes (back) online it is reconciled with the catalog, which also catches whatever
happened while nobody was watching.
"""

from __future__ import annotations

import logging
import os
import queue
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from wmpd.catalog import ROOT_OFFLINE
from wmpd.changes import ChangeBuffer
from wmpd.config import Config, FolderConfig
from wmpd.indexer import Indexer, ReconcilePlan, rules_for
from wmpd.pipeline import Candidate
from wmpd.scan import RootRules, root_problem
from wmpd.status import DaemonStatus
from wmpd.watcher import (
    INOTIFY_HINT,
    Change,
    RootWatch,
    WatchLimitMonitor,
    start_polling,
    stop_watch,
    watch_root,
)

logger = logging.getLogger(__name__)


@dataclass
class Root:
    folder: FolderConfig
    rules: RootRules
    root_id: int
    watch: RootWatch | None = None
    online: bool = False
    problem: str | None = None  # why it is offline
    identity: tuple[int, int] | None = None  # (device, inode) of the directory watched


class RootSet:
    """Every configured root and its watch; reconcile results wait in `take_found()`."""

    def __init__(
        self,
        indexer: Indexer,
        changes: queue.Queue[Change],
        status: DaemonStatus,
        buffer: ChangeBuffer,
        on_changed: Callable[[int], None],
    ) -> None:
        self.indexer = indexer
        self.changes = changes
        self.status = status
        self.buffer = buffer
        self._on_changed = on_changed
        self._roots: dict[Path, Root] = {}
        self._dropped_ids: set[int] = set()
        self._found: list[Candidate] = []
        self._polling = False
        self._poll_interval = 10.0
        self._monitor = WatchLimitMonitor()

    # -- lookups ------------------------------------------------------------------------

    def root_of(self, path: Path) -> Root | None:
        # The deepest root wins: a non-recursive folder may contain another folder.
        matches = [r for r in self._roots.values() if path.is_relative_to(r.folder.path)]
        return max(matches, key=lambda r: len(r.folder.path.parts), default=None)

    def online_root_of(self, path: Path) -> Root | None:
        root = self.root_of(path)
        return root if root is not None and root.online else None

    def same_rules(self, a: Path, b: Path) -> bool:
        root_a, root_b = self.root_of(a), self.root_of(b)
        return root_a is not None and root_b is not None and root_a.rules == root_b.rules

    def inactive_ids(self) -> set[int]:
        """Roots whose queued files must not be read now (offline or no longer configured)."""
        offline = {r.root_id for r in self._roots.values() if not r.online}
        return offline | self._dropped_ids

    def take_found(self) -> list[Candidate]:
        found, self._found = self._found, []
        return found

    # -- configuration ------------------------------------------------------------------

    def start_monitoring(self) -> None:
        self._monitor.install()

    def sync(self, config: Config) -> None:
        """Make the watched roots match the config (added, removed, changed folders)."""
        watching = (config.watcher.polling, config.watcher.poll_interval)
        rewatch = watching != (self._polling, self._poll_interval)
        self._polling, self._poll_interval = watching
        wanted = {folder.path: folder for folder in config.folders}
        for path in list(self._roots):
            root = self._roots[path]
            if path not in wanted or rules_for(wanted[path], config) != root.rules:
                self._drop(root, forget=path not in wanted)
            elif rewatch and root.online:
                self._unwatch(root)
                self._bring_online(root)
        for path, folder in wanted.items():
            if path not in self._roots:
                self._add(folder, config)
        self.publish()

    def _add(self, folder: FolderConfig, config: Config) -> None:
        with self.indexer.catalog.transaction():
            root_id = self.indexer.catalog.ensure_root(str(folder.path))
        self._dropped_ids.discard(root_id)  # SQLite may hand a forgotten root's id out again
        root = Root(folder, rules_for(folder, config), root_id)
        self._roots[folder.path] = root
        self._bring_online(root)

    def _drop(self, root: Root, forget: bool) -> None:
        self._unwatch(root)
        self.buffer.discard_under(root.folder.path)
        self._dropped_ids.add(root.root_id)
        self.status.warn(f"watch {root.folder.path}", None)
        del self._roots[root.folder.path]
        if forget:
            removed = self.indexer.forget_root(root.root_id)
            self._on_changed(removed)
            logger.info("stopped watching %s and forgot its %d paths", root.folder.path, removed)

    def stop_all(self) -> None:
        self._monitor.uninstall()
        for root in self._roots.values():
            self._unwatch(root)

    # -- online / offline ---------------------------------------------------------------

    def _bring_online(self, root: Root) -> None:
        problem = root_problem(root.folder.path)
        if problem is not None:
            self._set_offline(root, problem)
            return
        try:
            root.watch = watch_root(root.rules, self.changes, self._polling, self._poll_interval)
        except OSError as exc:
            self._set_offline(root, f"cannot watch {root.folder.path}: {exc}")
            return
        root.online, root.problem = True, None
        root.identity = _identity(root.folder.path)
        # Watch first, then walk: a change during the walk is caught by one or the other.
        self.reconcile(root)

    def _unwatch(self, root: Root) -> None:
        if root.watch is not None:
            stop_watch(root.watch)
            root.watch = None

    def _set_offline(self, root: Root, reason: str) -> None:
        self._unwatch(root)
        if root.online or root.problem != reason:
            logger.warning("folder offline, its entries are kept: %s", reason)
        root.online, root.problem = False, reason
        self.buffer.discard_under(root.folder.path)
        with self.indexer.catalog.transaction():
            self.indexer.catalog.set_root_state(root.root_id, ROOT_OFFLINE, reason)
        self.publish()

    def check(self) -> None:
        """Notice roots that vanished or came back, and observers that died."""
        for root in list(self._roots.values()):
            problem = root_problem(root.folder.path)
            if root.online and problem is not None:
                self._set_offline(root, problem)
            elif not root.online and problem is None:
                logger.info("folder %s is back; rescanning it", root.folder.path)
                self._bring_online(root)
            elif root.online and _identity(root.folder.path) != root.identity:
                # Moved away and replaced (e.g. by an empty mount point): the old watch
                # follows the old directory, so watch and scan the new one afresh.
                logger.warning("folder %s was replaced; rescanning it", root.folder.path)
                self._unwatch(root)
                self._bring_online(root)
            elif root.online and root.watch is not None and not root.watch.alive():
                logger.warning("the watcher of %s stopped; starting it again", root.folder.path)
                self._unwatch(root)
                self._bring_online(root)

    def still_readable(self, root_ids: set[int]) -> bool:
        """Check these roots right before reading from them; offline ones are marked."""
        healthy = True
        for root in self._roots.values():
            if root.root_id in root_ids and root.online:
                problem = root_problem(root.folder.path)
                if problem is not None:
                    self._set_offline(root, problem)
                    healthy = False
        return healthy

    def may_delete(self, path: Path) -> bool:
        """Deletions count only while their root is demonstrably there (never mass-delete)."""
        root = self.online_root_of(path)
        if root is None:
            return False
        problem = root_problem(root.folder.path)
        if problem is not None:
            self._set_offline(root, problem)
            return False
        return True

    def handle_lost_watches(self) -> None:
        """inotify ran out of watches for a new directory: poll that root instead."""
        for path in self._monitor.take():
            root = self.online_root_of(path)
            if root is None or root.watch is None or root.watch.polling:
                continue
            detail = INOTIFY_HINT.format(root=root.folder.path)
            logger.warning("%s", detail)
            self._unwatch(root)
            root.watch = start_polling(root.rules, self.changes, self._poll_interval, detail)
            self.reconcile(root)  # files in the unwatched directory were missed so far

    # -- reconcile ----------------------------------------------------------------------

    def reconcile(self, root: Root) -> None:
        plan = self.indexer.reconcile(root.folder)
        if plan.offline_reason is not None:
            self._set_offline(root, plan.offline_reason)
            return
        if plan.deletes:
            self._on_changed(self.indexer.delete(plan.deletes).removed)
        self._found.extend(plan.upserts)
        with self.indexer.catalog.transaction():
            self.indexer.catalog.mark_root_scanned(root.root_id)
        logger.info(
            "reconciled %s: %d to index, %d removed, %d unchanged",
            root.folder.path,
            len(plan.upserts),
            len(plan.deletes),
            plan.unchanged,
        )
        self.publish()

    def reconcile_all(self) -> None:
        for root in list(self._roots.values()):
            if root.online:
                self.reconcile(root)

    def rescan_dir(self, directory: Path) -> ReconcilePlan | None:
        """Compare one directory with the catalog; None when its root is not online."""
        root = self.online_root_of(directory)
        if root is None:
            return None
        if directory == root.folder.path:
            self.reconcile(root)
            return None
        plan = self.indexer.reconcile(root.folder, under=directory)
        if plan.offline_reason is not None:
            self._set_offline(root, plan.offline_reason)
            return None
        return plan

    # -- status -------------------------------------------------------------------------

    def publish(self) -> None:
        published = []
        for path, root in self._roots.items():
            warning_key = f"watch {path}"
            if root.online and root.watch is not None:
                state = "polling" if root.watch.polling else "watching"
                detail = root.watch.detail
                limited = root.watch.polling and detail == INOTIFY_HINT.format(root=path)
                self.status.warn(warning_key, detail if limited else None)
            else:
                state, detail = "offline", root.problem
                self.status.warn(warning_key, None)
            published.append({"path": str(path), "state": state, "detail": detail})
        self.status.set_roots(published)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)
