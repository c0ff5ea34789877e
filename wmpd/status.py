"""The daemon's live status: written by the worker, read by HTTP threads and the CLI.

The shape of `snapshot()` is the `/api/status` and `wmpd status --json` interface;
its documented keys stay stable. The daemon also mirrors it into a small file in the
data directory, so `wmpd status` can show the live state even with the HTTP server off.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from wmpd import __version__
from wmpd.catalog import Catalog

logger = logging.getLogger(__name__)

STATES = ("loading_model", "indexing", "idle", "paused", "model_error")
RATE_WINDOW_SECONDS = 10.0  # images/s over the last few chunks: follows bursts, not history
STATUS_FILE_NAME = "daemon-status.json"
# Keys that change on every read; a snapshot differing only in these is not rewritten.
_VOLATILE_KEYS = ("uptime_seconds",)


class DaemonStatus:
    """Thread-safe counters and states; cheap to read."""

    def __init__(self, model_id: str) -> None:
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self.model_id = model_id
        self.state = "loading_model"
        self.state_detail: str | None = "loading the model"
        self.model_ready = False
        self._counts: dict[str, Any] = {
            "images": 0,
            "paths": 0,
            "failed": 0,
            "failures": {},
            "recent_failures": [],
        }
        self._queue = 0
        self._done = 0
        self._total = 0
        self._embedded_at: deque[tuple[float, int]] = deque()
        self._roots: list[dict[str, Any]] = []
        self._index_size = 0
        self._index_consistent = True
        self._warnings: dict[str, str] = {}

    def set_state(self, state: str, detail: str | None = None) -> None:
        assert state in STATES, state
        with self._lock:
            self.state = state
            self.state_detail = detail

    def set_model_ready(self, model_id: str) -> None:
        with self._lock:
            self.model_ready = True
            self.model_id = model_id
            self.state = "idle"
            self.state_detail = None

    def warn(self, key: str, message: str | None) -> None:
        """Set (or clear, with None) a named warning shown in the status."""
        with self._lock:
            if message is None:
                self._warnings.pop(key, None)
            else:
                self._warnings[key] = message

    def set_queue(self, length: int) -> None:
        with self._lock:
            self._queue = length
            if length == 0 and self._done >= self._total:
                self._done = self._total = 0  # a finished burst starts the next count afresh

    def add_total(self, count: int) -> None:
        with self._lock:
            self._total += count

    def add_done(self, count: int, embedded: int) -> None:
        now = time.monotonic()
        with self._lock:
            self._done += count
            self._embedded_at.append((now, count))
            while self._embedded_at and now - self._embedded_at[0][0] > RATE_WINDOW_SECONDS:
                self._embedded_at.popleft()

    def set_roots(self, roots: list[dict[str, Any]]) -> None:
        with self._lock:
            self._roots = roots

    def set_index(self, size: int, consistent: bool) -> None:
        with self._lock:
            self._index_size = size
            self._index_consistent = consistent

    def refresh_counts(self, catalog: Catalog) -> None:
        """Called by the writer after a commit; HTTP threads never count rows themselves."""
        counts = catalog.counts()
        failures = catalog.failure_counts()
        recent = [
            {"path": f.path, "reason": f.reason, "detail": f.detail}
            for f in catalog.recent_failures(10)
        ]
        with self._lock:
            self._counts = {
                "images": counts.images,
                "paths": counts.paths,
                "failed": counts.failed,
                "failures": failures,
                "recent_failures": recent,
            }

    def _rate(self, now: float) -> float:
        while self._embedded_at and now - self._embedded_at[0][0] > RATE_WINDOW_SECONDS:
            self._embedded_at.popleft()
        if len(self._embedded_at) < 2:
            return 0.0
        # The first chunk's files were done before the window's first moment: leave them out.
        first_at, _ = self._embedded_at[0]
        done = sum(count for _, count in list(self._embedded_at)[1:])
        return done / max(now - first_at, 0.5)

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            rate = self._rate(now)
            remaining = max(0, self._total - self._done)
            return {
                "state": self.state,
                "state_detail": self.state_detail,
                "version": __version__,
                "uptime_seconds": round(now - self._started, 1),
                "model_id": self.model_id,
                "model_ready": self.model_ready,
                **self._counts,
                "queue": self._queue,
                "progress": {
                    "done": self._done,
                    "total": self._total,
                    "rate": round(rate, 2),
                    "eta_seconds": round(remaining / rate, 1) if rate > 0 and remaining else None,
                },
                "roots": list(self._roots),
                "index_size": self._index_size,
                "index_consistent": self._index_consistent,
                "warnings": list(self._warnings.values()),
            }


class StatusFile:
    """The snapshot on disk, rewritten (atomically) only when something changed."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / STATUS_FILE_NAME
        self._last: dict[str, Any] | None = None

    def write(self, snapshot: dict[str, Any]) -> None:
        steady = {k: v for k, v in snapshot.items() if k not in _VOLATILE_KEYS}
        if steady == self._last:
            return
        tmp = self.path.with_suffix(".json.tmp")
        try:
            tmp.write_text(json.dumps({**snapshot, "pid": os.getpid()}))
            os.replace(tmp, self.path)
        except OSError as exc:  # a full disk must not stop the daemon over a status file
            logger.debug("could not write %s: %s", self.path, exc)
            return
        self._last = steady

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def read_status_file(data_dir: Path) -> dict[str, Any] | None:
    """The last snapshot a daemon wrote, or None; the caller checks the daemon is alive."""
    try:
        data = json.loads((data_dir / STATUS_FILE_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
