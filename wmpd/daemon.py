"""`wmpd run`: the daemon's wiring, start/stop order, signals and config reloads.

Start: config → writer lock → catalog → status (answers at once; search waits for the
model) → HTTP → model load in the background → index → watchers + reconcile.
Stop: stop accepting HTTP → stop observers → drain the worker → persist the index →
close the catalog → release the lock.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from wmpd.catalog import Catalog
from wmpd.config import Config, keep_data_dir_out, load_config
from wmpd.datadir import DataDir, acquire_writer_lock, open_vectors
from wmpd.embedder import Embedder
from wmpd.errors import CatalogError, ConfigError, ModelLoadError
from wmpd.indexer import Indexer
from wmpd.sdnotify import SystemdNotifier
from wmpd.search import Searcher
from wmpd.status import DaemonStatus, StatusFile
from wmpd.vectors import VectorIndex
from wmpd.watcher import Change, watch_config_file
from wmpd.worker import Worker

logger = logging.getLogger(__name__)

CHANGE_QUEUE_SIZE = 100_000
SHUTDOWN_JOIN_SECONDS = 20.0
NOTIFY_STATUS_SECONDS = 5.0
WAIT_TICK_SECONDS = 0.2
CONFIG_SETTLE_SECONDS = 0.2  # editors write a file in steps; let the last one land
# Settings the running daemon cannot swap: they are built into the model, server and index.
RESTART_SECTIONS = ("model", "server", "index", "limits")
MODEL_ERROR_HINT = (
    "search and indexing are off; fix model.name / model.pretrained in {config} (or the file "
    "they point at) and restart wmpd"
)


class Daemon:
    """Everything `wmpd run` holds, built in one place and passed down."""

    def __init__(
        self,
        config_path: Path,
        config: Config,
        verbose: bool = False,
        stop_event: threading.Event | None = None,
        reload_event: threading.Event | None = None,
    ) -> None:
        self.config_path = config_path
        self.config = config = keep_data_dir_out(config)
        self.verbose = verbose
        self.data_dir = DataDir(config.index.data_dir)
        self.stop_event = stop_event or threading.Event()
        self.reload_event = reload_event or threading.Event()
        self.changes: queue.Queue[Change] = queue.Queue(maxsize=CHANGE_QUEUE_SIZE)
        self.config_changes: queue.Queue[Path] = queue.Queue()
        self.embedder = Embedder(config.model)
        self.status = DaemonStatus(self.embedder.model_id)
        self.notifier = SystemdNotifier()
        self.vectors: VectorIndex | None = None
        self.worker: Worker | None = None
        self.http: Any = None
        self._config_observer: Any = None
        # Held while the model thread wires the worker, so shutdown never races it.
        self._start_lock = threading.Lock()
        self._lock = acquire_writer_lock(self.data_dir, "the wmpd daemon")
        try:
            self.catalog = Catalog(self.data_dir.catalog_path)
            try:
                # Damage past the first page only shows when rows are read: counting
                # reads them, while the error can still name the file and the way out.
                self.status.refresh_counts(self.catalog)
                problem = "ok"
            except sqlite3.DatabaseError as exc:
                problem = str(exc)
            if problem != "ok":
                raise CatalogError(
                    f"the catalog {self.data_dir.catalog_path} is damaged ({problem}); stop "
                    f"wmpd and run `wmpd repair` (your photos are not touched)"
                )
        except BaseException:
            self._lock.release()
            raise
        self.status_file = StatusFile(self.data_dir.path)

    # -- start --------------------------------------------------------------------------

    def start(self) -> None:
        self.status_file.write(self.status.snapshot())
        self._start_http()
        self._watch_config()
        threading.Thread(target=self._load_model_then_index, name="wmpd-model", daemon=True).start()
        self.notifier.ready()
        self.notifier.status("loading the model")

    def _start_http(self) -> None:
        if not self.config.server.enabled:
            return
        from wmpd.web import create_app
        from wmpd.web.server import start_server

        searcher = Searcher(
            lambda: self.vectors,
            self.embedder,
            self.data_dir.catalog_path,
            self.config.limits.max_image_pixels,
        )
        app = create_app(
            searcher,
            status=self.status.snapshot,
            model_ready=lambda: self.vectors is not None,
            server=self.config.server,
            thumbnails_dir=self.data_dir.thumbnails,
            max_image_pixels=self.config.limits.max_image_pixels,
            max_file_bytes=self.config.limits.max_file_bytes,
        )
        self.http = start_server(
            app, self.config.server
        )  # refuses a non-loopback bind without a token
        logger.info("search page on http://%s:%d/", self.config.server.host, self.http.port)

    def _watch_config(self) -> None:
        try:
            self._config_observer = watch_config_file(self.config_path, self.config_changes)
        except OSError as exc:
            logger.warning(
                "cannot watch %s (%s); send SIGHUP after editing it", self.config_path, exc
            )

    def _load_model_then_index(self) -> None:
        try:
            self.embedder.load()
        except ModelLoadError as exc:
            self._model_failed(str(exc))
            return
        except Exception as exc:  # the daemon keeps serving status whatever the model does
            self._model_failed(f"the model could not be loaded: {type(exc).__name__}: {exc}")
            return
        with self._start_lock:
            if self.stop_event.is_set():
                return
            try:
                self._start_worker()
            except Exception as exc:  # e.g. the catalog unreadable: say so, keep serving status
                logger.exception("cannot start indexing")
                self.status.set_state("model_error", f"cannot start indexing: {exc}")

    def _start_worker(self) -> None:
        catalog = self.catalog
        model_id = self.embedder.model_id
        vectors = open_vectors(
            catalog, self.data_dir, model_id, self.embedder.dim, save_rebuilt=True
        )
        self.vectors = vectors
        self.status.set_model_ready(model_id)
        self.status.set_index(len(vectors), consistent=True)
        indexer = Indexer(catalog, vectors, self.embedder, self.config)
        self.worker = Worker(indexer, self.data_dir, self.config, self.changes, self.status)
        self.worker.start()

    def _model_failed(self, reason: str) -> None:
        hint = MODEL_ERROR_HINT.format(config=self.config_path)
        logger.error("%s; %s", reason, hint)
        self.status.set_state("model_error", f"{reason}; {hint}")
        self.notifier.status(f"model error: {reason}")

    # -- running ------------------------------------------------------------------------

    def wait(self) -> None:
        """Block until asked to stop, handling config reloads meanwhile."""
        last_notify = 0.0
        while not self.stop_event.wait(WAIT_TICK_SECONDS):
            if self._config_file_changed() or self.reload_event.is_set():
                self.reload_event.clear()
                self.reload_config()
            snapshot = self.status.snapshot()
            self.status_file.write(snapshot)
            now = time.monotonic()
            if now - last_notify >= NOTIFY_STATUS_SECONDS:
                self.notifier.status(_status_line(snapshot))
                last_notify = now

    def _config_file_changed(self) -> bool:
        changed = False
        while True:
            try:
                self.config_changes.get_nowait()
                changed = True
            except queue.Empty:
                break
        if changed:
            self.stop_event.wait(CONFIG_SETTLE_SECONDS)
            while not self.config_changes.empty():
                self.config_changes.get_nowait()
        return changed

    def reload_config(self) -> None:
        try:
            config = keep_data_dir_out(load_config(self.config_path))
        except ConfigError as exc:
            logger.error("config not reloaded, keeping the last good one:\n%s", exc)
            self.status.warn(
                "config", f"the config file has errors; still using the last good one: {exc}"
            )
            return
        self.status.warn("config", None)
        if config == self.config:
            return
        restart_needed = [
            name for name in RESTART_SECTIONS if getattr(config, name) != getattr(self.config, name)
        ]
        self.status.warn(
            "restart",
            f"restart wmpd to apply the changed {', '.join(restart_needed)} settings"
            if restart_needed
            else None,
        )
        if not self.verbose:
            logging.getLogger("wmpd").setLevel(config.logging.level)
        self.config = config
        if self.worker is not None:
            self.worker.request_config(config)
        logger.info("config reloaded from %s", self.config_path)

    # -- stop ---------------------------------------------------------------------------

    def shutdown(self) -> None:
        self.stop_event.set()
        self.notifier.stopping()
        if self.http is not None:
            self.http.stop()
        if self._config_observer is not None:
            self._config_observer.stop()
        with self._start_lock:
            worker = self.worker
        if worker is not None:
            worker.stop()
            worker.join(timeout=SHUTDOWN_JOIN_SECONDS)
            if worker.is_alive():
                logger.warning(
                    "the worker did not stop in time; the index is rebuilt at next start"
                )
        self.catalog.close()
        self.status_file.remove()
        self._lock.release()
        logger.info("stopped")


def _status_line(status: dict[str, Any]) -> str:
    progress = status.get("progress") or {}
    if status["state"] == "indexing" and progress.get("total"):
        return (
            f"indexing {progress['done']}/{progress['total']} "
            f"({progress['rate']:.1f} images/s); {status['images']} images"
        )
    return f"{status['state']}; {status['images']} images"


def run_daemon(config_path: Path, verbose: bool = False) -> int:
    """Run until SIGTERM/SIGINT; SIGHUP reloads the config. Returns the exit code."""
    config = load_config(config_path)
    if not verbose:
        logging.getLogger("wmpd").setLevel(config.logging.level)
    # watchdog describes every inotify event at DEBUG; with the log file in a watched
    # directory (the config's), each line written is one more event to describe.
    logging.getLogger("watchdog").setLevel(logging.INFO)
    stop_event, reload_event = threading.Event(), threading.Event()

    # Handlers only set events (the main thread acts on them), and are in place before
    # anything slow starts, so an early SIGHUP cannot kill the process.
    def on_stop(signum: int, frame: FrameType | None) -> None:
        stop_event.set()

    def on_hup(signum: int, frame: FrameType | None) -> None:
        reload_event.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    daemon = Daemon(config_path, config, verbose, stop_event, reload_event)
    try:
        daemon.start()
        daemon.wait()
    finally:
        daemon.shutdown()
    _exit_now(0)
    return 0  # not reached


def _exit_now(code: int) -> None:
    """Leave without the interpreter's teardown, once everything that matters is closed.

    Tearing down torch (its thread pools and static destructors) takes seconds, and
    aborts the process when the model thread is still importing it; a service manager
    waiting on SIGTERM deserves neither.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
