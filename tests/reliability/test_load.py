"""Load: 32 concurrent HTTP clients for WMPD_LOAD_SECONDS (default 60) of mixed searches,
status, thumbnail and detail requests against a real `wmpd run`, while a 2,000-file burst
is being indexed. Every answer must be a success; latencies (p50/p95/p99/max) go to the
suite's summary and test-artifacts/reliability.json.
"""

from __future__ import annotations

import http.client
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.daemon_harness import write_photo
from tests.reliability.conftest import make_sentinel
from tests.reliability.consistency import check_saved_index, read_catalog, wait_consistent
from tests.reliability.harness import TALLY, DaemonFactory, wait_for

CLIENTS = int(os.environ.get("WMPD_LOAD_CLIENTS", "32"))
LOAD_SECONDS = float(os.environ.get("WMPD_LOAD_SECONDS", "60"))
BURST_FILES = int(os.environ.get("WMPD_LOAD_BURST", "2000"))
INITIAL_FILES = 150
QUERIES = [
    "a red circle",
    "a blue square on grass",
    "a yellow star in the sky",
    "a green heart",
    "sand",
    "a purple triangle on a white background",
    "mountains +snow",
    "beach -people",
    '"orange star"^2 night',
]


@dataclass
class Results:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, kind: str, seconds: float, error: str | None) -> None:
        with self.lock:
            self.latencies.setdefault(kind, []).append(seconds)
            if error is not None:
                self.errors.append(f"{kind}: {error}")
        TALLY.request(error=error is not None)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Client(threading.Thread):
    """One keep-alive connection sending a random mix until the deadline."""

    def __init__(
        self, port: int, ids: list[int], deadline: float, results: Results, seed: int
    ) -> None:
        super().__init__(daemon=True)
        self.port, self.ids, self.deadline, self.results = port, ids, deadline, results
        self.rng = random.Random(seed)
        self.etags: dict[str, str] = {}

    def pick(self) -> tuple[str, str, dict[str, str]]:
        roll = self.rng.random()
        image = self.rng.choice(self.ids)
        if roll < 0.45:
            query = quote(self.rng.choice(QUERIES))
            return "search", f"/api/search?q={query}&k={self.rng.choice((10, 20, 50))}", {}
        if roll < 0.60:
            return "status", "/api/status", {}
        if roll < 0.90:
            url = f"/thumb/{image}?size={self.rng.choice((64, 128, 320))}"
            etag = self.etags.get(url)
            return "thumbnail", url, ({"If-None-Match": etag} if etag else {})
        if roll < 0.95:
            return "details", f"/api/images/{image}", {}
        return "similar", f"/api/images/{image}/similar?k=10", {}

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while time.monotonic() < self.deadline:
            kind, url, headers = self.pick()
            started = time.monotonic()
            error = None
            try:
                connection.request("GET", url, headers=headers)
                response = connection.getresponse()
                response.read()
                if response.status not in (200, 304):
                    error = f"{url} -> {response.status}"
                elif kind == "thumbnail" and response.getheader("ETag"):
                    self.etags[url] = response.getheader("ETag") or ""
            except (OSError, http.client.HTTPException) as exc:
                error = f"{url} -> {type(exc).__name__}: {exc}"
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self.results.record(kind, time.monotonic() - started, error)
        connection.close()


def write_burst(folder: Path) -> None:
    for n in range(BURST_FILES):
        write_photo(folder / f"{n // 500}" / f"{n:04d}.png", seed=90_000 + n, size=24)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_32_clients_while_a_burst_is_indexed(daemons: DaemonFactory) -> None:
    root = daemons.base / "photos"
    make_sentinel(root / "sentinel")
    for n in range(INITIAL_FILES):
        write_photo(root / "initial" / f"{n:03d}.png", seed=85_000 + n, size=32)
    daemon = daemons(root, batch_size=32)
    before = wait_consistent(daemon, [root], expect_no_failures=True)
    ids = sorted(before.visible_ids)
    results = Results()
    burst = threading.Thread(target=write_burst, args=(root / "burst",), daemon=True)
    started = time.monotonic()
    deadline = started + LOAD_SECONDS
    burst.start()
    clients = [Client(daemon.port, ids, deadline, results, seed) for seed in range(CLIENTS)]
    for client in clients:
        client.start()
    indexed_during_load = 0
    while time.monotonic() < deadline:
        time.sleep(1.0)
        indexed_during_load = len(read_catalog(daemon.data_dir).paths) - len(before.paths)
    for client in clients:
        client.join(timeout=60)
    burst.join(timeout=60)
    wanted = len(before.paths) + BURST_FILES
    wait_for(
        lambda: daemon.status()["paths"] == wanted,
        600,
        "the burst to be indexed",
        details=daemon.describe,
    )
    indexed_seconds = time.monotonic() - started
    state = wait_consistent(daemon, [root], expect_no_failures=True)
    everything = [s for values in results.latencies.values() for s in values]
    figures = {
        "load_clients": CLIENTS,
        "load_seconds": LOAD_SECONDS,
        "load_requests": len(everything),
        "load_errors": len(results.errors),
        "load_requests_per_second": round(len(everything) / LOAD_SECONDS, 1),
        "load_p50_ms": round(1000 * percentile(everything, 0.50), 1),
        "load_p95_ms": round(1000 * percentile(everything, 0.95), 1),
        "load_p99_ms": round(1000 * percentile(everything, 0.99), 1),
        "load_max_ms": round(1000 * max(everything), 1),
        "load_burst_files": BURST_FILES,
        "load_burst_indexed_during_load": indexed_during_load,
        "load_burst_indexed_seconds": round(indexed_seconds, 1),
    }
    for kind, values in sorted(results.latencies.items()):
        figures[f"load_{kind}_count"] = len(values)
        figures[f"load_{kind}_p99_ms"] = round(1000 * percentile(values, 0.99), 1)
    TALLY.measurements.update(figures)
    assert not results.errors, results.errors[:20]
    assert len(everything) > CLIENTS * LOAD_SECONDS / 10, figures  # it really was loaded
    assert indexed_during_load > 0, "the burst was not being indexed during the load"
    assert daemon.stop() == 0
    check_saved_index(daemon.data_dir, state)
