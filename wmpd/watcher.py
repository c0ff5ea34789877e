"""watchdog events → changes on a queue, and nothing else.

Each configured root gets its own observer so that one root can fall back to polling
(inotify watch limit hit, or `watcher.polling: true` for network mounts) without
affecting the others.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    EventsLostEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from wmpd.scan import RootRules, is_candidate, is_storable_name, is_walkable_dir

logger = logging.getLogger(__name__)

ChangeKind = Literal["upsert", "delete", "move", "scan_dir", "delete_dir", "move_dir"]
LIMIT_ERRNOS = (errno.ENOSPC, errno.EMFILE)
INOTIFY_HINT = (
    "the inotify watch limit is reached; watching {root} by polling instead (slower to notice "
    "changes). Raise the limit with `sudo sysctl fs.inotify.max_user_watches=524288` (and add "
    "it to /etc/sysctl.d/ to keep it), then restart wmpd"
)
FORCED_POLLING_DETAIL = "polling every {interval:g}s (watcher.polling is true)"
OBSERVER_STOP_SECONDS = 5.0
# Event types that say nothing about a file's content or name.
_IGNORED_EVENT_TYPES = frozenset({"opened", "closed_no_write"})


@dataclass(frozen=True)
class Change:
    """One thing that happened on disk, as the worker needs to know it."""

    kind: ChangeKind
    path: Path
    dest: Path | None = None


class RootEventHandler(FileSystemEventHandler):
    """Translates watchdog events under one root into Changes."""

    def __init__(self, rules: RootRules, changes: queue.Queue[Change]) -> None:
        self._rules = rules
        self._changes = changes

    def _put(self, change: Change) -> None:
        # The queue is bounded; blocking here only slows the observer thread, which
        # buffers in the kernel (an overflow there becomes a rescan), instead of growing
        # memory without end.
        self._changes.put(change)

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in _IGNORED_EVENT_TYPES:
            return
        if event.is_synthetic:
            # watchdog walks a moved or moved-in directory and reports each entry below it;
            # the directory's own event already covers them (one rename, or one rescan).
            return
        src = Path(os.fsdecode(event.src_path))
        if event.event_type == "created" and not is_storable_name(src.name):
            logger.warning(
                "skipping %r: its name is not valid UTF-8, which the catalog cannot store; "
                "rename it to index it",
                str(src),
            )
            return
        if isinstance(event, EventsLostEvent):
            logger.warning("the kernel dropped file events under %s; rescanning it", src)
            self._put(Change("scan_dir", self._rules.root))
        elif isinstance(event, DirMovedEvent):
            self._on_dir_moved(src, Path(os.fsdecode(event.dest_path)))
        elif isinstance(event, DirCreatedEvent):
            if is_walkable_dir(src, self._rules):
                self._put(Change("scan_dir", src))
        elif isinstance(event, DirDeletedEvent):
            self._put(Change("delete_dir", src))
        elif event.is_directory:
            return  # a directory's own mtime or attributes changed: its files report themselves
        elif event.event_type == "moved":
            self._on_file_moved(src, Path(os.fsdecode(event.dest_path)))
        elif event.event_type == "deleted":
            if is_candidate(src, self._rules):
                self._put(Change("delete", src))
        elif is_candidate(src, self._rules):  # created, modified, closed, attrib
            self._put(Change("upsert", src))

    def _on_file_moved(self, src: Path, dest: Path) -> None:
        src_wanted = is_candidate(src, self._rules)
        dest_wanted = is_candidate(dest, self._rules)
        if src_wanted and dest_wanted:
            self._put(Change("move", src, dest))
        elif src_wanted:
            self._put(Change("delete", src))
        elif dest_wanted:
            self._put(Change("upsert", dest))  # e.g. an editor's temp file renamed into place

    def _on_dir_moved(self, src: Path, dest: Path) -> None:
        src_wanted = is_walkable_dir(src, self._rules)
        dest_wanted = is_walkable_dir(dest, self._rules)
        if src_wanted and dest_wanted:
            self._put(Change("move_dir", src, dest))
        elif src_wanted:
            self._put(Change("delete_dir", src))
        elif dest_wanted:
            self._put(Change("scan_dir", dest))


@dataclass
class RootWatch:
    """A running observer for one root and how it watches."""

    rules: RootRules
    observer: BaseObserver
    polling: bool
    detail: str | None = None

    def alive(self) -> bool:
        # An emitter stops on its own when the root is deleted (the observer thread lives on).
        emitters = self.observer.emitters
        return self.observer.is_alive() and bool(emitters) and all(e.is_alive() for e in emitters)


def watch_root(
    rules: RootRules,
    changes: queue.Queue[Change],
    force_polling: bool,
    poll_interval: float,
) -> RootWatch:
    """Start an observer for one root; fall back to polling when inotify runs out."""
    handler = RootEventHandler(rules, changes)
    if force_polling:
        detail = FORCED_POLLING_DETAIL.format(interval=poll_interval)
        return start_polling(rules, changes, poll_interval, detail)
    observer: BaseObserver = Observer()
    try:
        observer.schedule(handler, str(rules.root), recursive=rules.recursive)
        observer.start()
    except OSError as exc:
        _stop_quietly(observer)
        if exc.errno not in LIMIT_ERRNOS:
            raise
        detail = INOTIFY_HINT.format(root=rules.root)
        logger.warning("%s (%s)", detail, exc.strerror)
        return start_polling(rules, changes, poll_interval, detail)
    return RootWatch(rules, observer, polling=False)


def start_polling(
    rules: RootRules, changes: queue.Queue[Change], poll_interval: float, detail: str
) -> RootWatch:
    """Watch a root by comparing directory snapshots every `poll_interval` seconds."""
    observer = PollingObserver(timeout=poll_interval)
    observer.schedule(RootEventHandler(rules, changes), str(rules.root), recursive=rules.recursive)
    observer.start()
    return RootWatch(rules, observer, polling=True, detail=detail)


def stop_watch(watch: RootWatch) -> None:
    _stop_quietly(watch.observer)


def _stop_quietly(observer: BaseObserver) -> None:
    try:
        observer.stop()
        if observer.is_alive():
            observer.join(timeout=OBSERVER_STOP_SECONDS)
    except (OSError, RuntimeError) as exc:
        logger.debug("stopping an observer: %s", exc)


class WatchLimitMonitor(logging.Handler):
    """Notices inotify running out of watches *after* a root was set up.

    When a directory is created under a watched root and the watch limit is reached,
    watchdog logs a warning and leaves that directory unwatched instead of raising; this
    handler catches that warning so the root can fall back to polling.
    """

    LOGGER_NAME = "watchdog.observers.inotify"

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self._hits: queue.SimpleQueue[Path] = queue.SimpleQueue()

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if not isinstance(args, tuple) or len(args) != 2:
            return
        path, error = args
        limit_hit = isinstance(error, OSError) and error.errno in LIMIT_ERRNOS
        if limit_hit and isinstance(path, (bytes, str)):
            self._hits.put(Path(os.fsdecode(path)))

    def install(self) -> None:
        logging.getLogger(self.LOGGER_NAME).addHandler(self)

    def uninstall(self) -> None:
        logging.getLogger(self.LOGGER_NAME).removeHandler(self)

    def take(self) -> list[Path]:
        """Directories left unwatched since the last call."""
        hits: list[Path] = []
        while True:
            try:
                hits.append(self._hits.get_nowait())
            except queue.Empty:
                return hits


class ConfigFileHandler(FileSystemEventHandler):
    """Signals when the config file is written, replaced or moved into place."""

    def __init__(self, config_path: Path, on_change: queue.Queue[Path]) -> None:
        self._path = config_path.resolve()
        self._queue = on_change

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in (*_IGNORED_EVENT_TYPES, "deleted"):
            return
        touched = {Path(os.fsdecode(event.src_path))}
        if event.dest_path:
            touched.add(Path(os.fsdecode(event.dest_path)))
        if any(_same_file(path, self._path) for path in touched):
            self._queue.put(self._path)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b
    except OSError:
        return False


def watch_config_file(config_path: Path, changes: queue.Queue[Path]) -> BaseObserver:
    """Watch the config file's directory (editors replace files instead of writing them)."""
    observer = Observer()
    observer.schedule(
        ConfigFileHandler(config_path, changes), str(config_path.resolve().parent), recursive=False
    )
    observer.start()
    return observer
