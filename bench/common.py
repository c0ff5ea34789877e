"""Shared bench helpers: temp configs, tables, percentiles, synthetic catalogs, the daemon.

Every bench prints its figures as a table and, last, one JSON line. Absolute numbers
drift with the machine's load, so each bench also measures its own baseline in the same
run and reports ratios.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PHOTOS = REPO / "photos" / "hires"
MODEL_NAME = "ViT-B-32"
MODEL_ID = "ViT-B-32/random"  # model_id_for() of ViT-B-32 with pretrained: null


def model_id_for(precision: str) -> str:
    return MODEL_ID if precision == "fp32" else f"{MODEL_ID}@{precision}"


DIM = 512
CACHE_DIR = Path(os.environ.get("WMPD_BENCH_CACHE", "/tmp/wmpd-bench-cache"))


# -- output ---------------------------------------------------------------------------------


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    sys.stdout.flush()


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def emit_json(bench: str, figures: dict[str, Any]) -> None:
    print(json.dumps({"bench": bench, **figures}, sort_keys=True))
    sys.stdout.flush()


def percentiles(samples_ms: Sequence[float]) -> dict[str, float]:
    data = np.asarray(samples_ms, dtype=np.float64)
    return {
        "p50": round(float(np.percentile(data, 50)), 2),
        "p95": round(float(np.percentile(data, 95)), 2),
        "p99": round(float(np.percentile(data, 99)), 2),
    }


def load_average() -> float:
    return os.getloadavg()[0]


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}"


# -- configs --------------------------------------------------------------------------------


def write_config(
    directory: Path,
    folders: Sequence[Path],
    data_dir: Path,
    *,
    server: bool = False,
    port: int = 8756,
    batch_size: int = 32,
    threads: int = 0,
    precision: str = "fp32",
) -> Path:
    folder_lines = "\n".join(f"  - path: {folder}" for folder in folders)
    text = (
        f"folders:\n{folder_lines}\n"
        f"model:\n  name: {MODEL_NAME}\n  pretrained: null\n  precision: {precision}\n"
        f"  threads: {threads}\n  batch_size: {batch_size}\n  device: cpu\n"
        f"index:\n  data_dir: {data_dir}\n"
        f"server:\n  enabled: {'true' if server else 'false'}\n  port: {port}\n"
        f"logging:\n  level: WARNING\n"
    )
    path = directory / "config.yaml"
    path.write_text(text)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- synthetic, CLIP-like vectors ----------------------------------------------------------


class ClipLike:
    """Unit vectors shaped like CLIP image embeddings: a shared mean direction, topic
    clusters on a power-law spectrum, noise. Mean pairwise cosine ≈ 0.49 and mean
    nearest-neighbour cosine among 2,000 ≈ 0.84, as for real ViT-B-32 photo embeddings;
    uniformly random vectors would have neither, and no index could find structure in them.
    """

    def __init__(self, dim: int = DIM, topics: int = 2000) -> None:
        shape = np.random.default_rng(12345)
        mean = shape.standard_normal(dim).astype(np.float32)
        self.mean = mean / np.linalg.norm(mean)
        self.basis = np.linalg.qr(shape.standard_normal((dim, dim)))[0].astype(np.float32)
        self.spectrum = (1.0 / np.arange(1, dim + 1) ** 0.7).astype(np.float32)
        centres = shape.standard_normal((topics, dim)).astype(np.float32) * self.spectrum
        self.centres = centres @ self.basis.T
        self.dim = dim

    def chunk(self, count: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        topic = rng.integers(0, len(self.centres), count)
        rows = 2.0 * self.mean + self.centres[topic]
        noise = rng.standard_normal((count, self.dim)).astype(np.float32) * self.spectrum * 0.7
        rows += noise @ self.basis.T
        rows += rng.standard_normal((count, self.dim)).astype(np.float32) * 0.02
        return _unit(rows)

    def chunks(self, count: int, seed: int, size: int = 50_000) -> Iterator[np.ndarray]:
        for number, start in enumerate(range(0, count, size)):
            yield self.chunk(min(size, count - start), seed * 1_000_003 + number)

    def text_like(self, count: int, seed: int) -> np.ndarray:
        """Far from every point, as a CLIP text query is from the photos it matches best:
        a point blended with a random direction down to cosine 0.35 with it."""
        rng = np.random.default_rng(seed + 99)
        directions = _unit(rng.standard_normal((count, self.dim)).astype(np.float32))
        return _unit(0.35 * self.chunk(count, seed) + math.sqrt(1 - 0.35**2) * directions)


def _unit(rows: np.ndarray) -> np.ndarray:
    normalised: np.ndarray = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    return normalised


# -- synthetic catalogs ---------------------------------------------------------------------


def synthetic_data_dir(count: int, seed: int = 1, precision: str = "fp32") -> Path:
    """A data directory holding `count` catalogued images and their saved index (cached).

    Rows go straight into the catalog's tables (the schema comes from wmpd.catalog) in
    large transactions; the index is built and saved through wmpd.vectors, so the daemon
    finds a matching file and loads it instead of rebuilding.
    """
    from wmpd.catalog import Catalog
    from wmpd.datadir import DataDir, open_vectors, save_vectors

    model_id = model_id_for(precision)
    suffix = "" if precision == "fp32" else f"-{precision}"
    path = CACHE_DIR / f"catalog-{count}-{seed}{suffix}"
    done = path / "complete"
    if done.exists():
        _ensure_saved_index(DataDir(path), model_id)
        return path

    if path.exists():
        subprocess.run(["rm", "-rf", str(path)], check=True)
    path.mkdir(parents=True)
    data_dir = DataDir(path)
    Catalog(data_dir.catalog_path).close()  # creates the schema
    started = time.perf_counter()
    _bulk_insert(data_dir.catalog_path, count, seed, model_id)
    catalog = Catalog(data_dir.catalog_path)
    try:
        vectors = open_vectors(catalog, data_dir, model_id, DIM)
        vectors.wait_until_built()
        save_vectors(vectors, catalog, data_dir, model_id)
    finally:
        catalog.close()
    done.write_text(f"{time.perf_counter() - started:.1f}s\n")
    return path


def _ensure_saved_index(data_dir: Any, model_id: str) -> None:
    """Re-save the index if a daemon run left the catalog and the file out of step."""
    from wmpd.catalog import Catalog
    from wmpd.datadir import index_stamp, open_vectors, save_vectors
    from wmpd.vectors import META_FILE_NAME

    catalog = Catalog(data_dir.catalog_path)
    try:
        stamp = index_stamp(catalog, model_id)
        meta = data_dir.path / META_FILE_NAME
        if meta.exists() and json.loads(meta.read_text()) == stamp.__dict__:
            return
        vectors = open_vectors(catalog, data_dir, model_id, DIM)
        vectors.wait_until_built()
        save_vectors(vectors, catalog, data_dir, model_id)
    finally:
        catalog.close()


def synthetic_root() -> Path:
    """Where the synthetic paths live: absent, so the daemon marks the root offline and
    keeps its entries (a missing root never mass-deletes) instead of reconciling them."""
    return Path("/nonexistent/wmpd-bench-photos")


def _bulk_insert(catalog_path: Path, count: int, seed: int, model_id: str) -> None:
    db = sqlite3.connect(catalog_path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    root = str(synthetic_root())
    now = time.time()
    with db:
        root_id = db.execute(
            "INSERT INTO roots(path, state) VALUES (?, 'offline')", (root,)
        ).lastrowid
    image_id = 0
    for chunk in ClipLike().chunks(count, seed):
        first = image_id + 1
        images = []
        for row in chunk:
            image_id += 1
            images.append(
                (
                    image_id,
                    f"{seed:x}-{image_id:012x}",
                    4000,
                    3000,
                    now,
                    "JPEG",
                    model_id,
                    row.astype("<f4").tobytes(),
                    now,
                )
            )
        paths = [
            (f"{root}/{i // 1000:04d}/{i:08d}.jpg", root_id, i, 1_000_000, 0, now)
            for i in range(first, image_id + 1)
        ]
        with db:
            db.executemany(
                "INSERT INTO images(id, hash, width, height, taken_at, format, model_id, "
                "vector, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                images,
            )
            db.executemany(
                "INSERT INTO paths(path, root_id, image_id, size, mtime_ns, seen_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                paths,
            )
    with db:
        db.execute("UPDATE meta SET value = '1' WHERE key = 'generation'")
    db.close()


# -- a daemon in a subprocess ---------------------------------------------------------------


class DaemonProcess:
    """`python -m wmpd --config X run`, with helpers to poll it over HTTP."""

    def __init__(self, config_path: Path, port: int, log_path: Path) -> None:
        self.port = port
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "wmpd", "--config", str(config_path), "run"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )

    def get_json(self, route: str, timeout: float = 5.0) -> Any:
        url = f"http://127.0.0.1:{self.port}{route}"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())

    def wait_for(self, route: str, ready: Any, deadline_s: float, poll_s: float = 0.01) -> float:
        """Seconds from process start until `ready(json)` is true; raises on timeout/exit."""
        end = time.perf_counter() + deadline_s
        while time.perf_counter() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"the daemon exited: {self.tail()}")
            try:
                if ready(self.get_json(route, timeout=2.0)):
                    return time.perf_counter() - self.started
            except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
                pass
            time.sleep(poll_s)
        raise TimeoutError(f"{route} not ready after {deadline_s}s: {self.tail()}")

    def peak_rss_mb(self) -> float:
        """VmHWM: the kernel's high-water mark of this process's resident set."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return math.nan

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return math.nan

    def tail(self, lines: int = 15) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
