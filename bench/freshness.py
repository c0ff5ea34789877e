"""How fresh is the index? File-to-searchable latency, and throughput on a burst.

Starts a real `wmpd run` on a temporary folder (HTTP on a free port) and measures:

1. latency: photos dropped into the folder one at a time; for each, the time from the
   file being closed to `POST /api/search {"path": ...}` answering 200 (the daemon has it
   in the catalog *and* the vector index). Reported as p50/p95/max.
2. throughput: a burst of small photos renamed into a subfolder as fast as possible; the
   time from the first arrival until every one is searchable (`images` in /api/status).
3. a folder rename: that subfolder renamed; the time until its photos are searchable at
   their new paths, and the image count after it (a rename must not re-add anything).

    python bench/freshness.py [--files 50] [--burst 1000] [--settle 0.3]

Prints a table, then one JSON line with every number.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
TINY_CONFIG = REPO / "tests" / "models" / "tiny-clip.json"
TINY_WEIGHTS = REPO / "tests" / "models" / "tiny-clip.pt"
POLL_SECONDS = 0.01  # the latency's resolution
BURST_POLL_SECONDS = 0.1
STARTUP_SECONDS = 180.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=50, help="photos dropped one at a time")
    parser.add_argument("--burst", type=int, default=1000, help="photos in the burst")
    parser.add_argument("--settle", type=float, default=0.3, help="watcher.settle_seconds")
    parser.add_argument("--size", type=int, default=256, help="side of each photo, pixels")
    parser.add_argument("--batch-size", type=int, default=32, help="model.batch_size")
    parser.add_argument("--threads", type=int, default=0, help="model.threads (0: torch's)")
    parser.add_argument("--model", default=str(TINY_CONFIG), help="model.name")
    parser.add_argument("--pretrained", default=str(TINY_WEIGHTS), help="model.pretrained")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 10 single files, a burst of 100"
    )
    args = parser.parse_args()
    if args.quick:
        args.files, args.burst = min(args.files, 10), min(args.burst, 100)
    return args


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_photo(path: Path, seed: int, size: int) -> None:
    """A JPEG with some structure (so it is not all noise), unique to `seed`."""
    rng = np.random.default_rng(seed)
    gradient = np.linspace(0, 255, size, dtype=np.float32)
    base = np.stack([*np.meshgrid(gradient, gradient[::-1]), np.full((size, size), seed % 256)], -1)
    noise = rng.normal(0, 24, (size, size, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)


class Daemon:
    def __init__(self, work: Path, args: argparse.Namespace) -> None:
        self.photos = work / "photos"
        self.photos.mkdir()
        self.port = free_port()
        self.config = work / "config.yaml"
        self.config.write_text(
            f"folders:\n  - path: {self.photos}\n"
            f"model:\n  name: {args.model}\n  pretrained: {args.pretrained}\n"
            f"  batch_size: {args.batch_size}\n  threads: {args.threads}\n"
            f"index:\n  data_dir: {work / 'data'}\n"
            f"server:\n  port: {self.port}\n"
            f"watcher:\n  settle_seconds: {args.settle}\n"
        )
        self.log = work / "wmpd.log"
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "wmpd", "--config", str(self.config), "run"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
            )

    def request(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=data,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, None

    def status(self) -> dict[str, Any]:
        code, body = self.request("/api/status")
        assert code == 200, code
        return dict(body)

    def searchable(self, path: Path) -> bool:
        code, _ = self.request("/api/search", {"path": str(path), "k": 1})
        return code == 200

    def wait(self, ready: Any, timeout: float, what: str, poll: float = POLL_SECONDS) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"wmpd exited while waiting for {what}:\n{self.log.read_text()[-2000:]}")
            try:
                result = ready()
            except OSError:
                result = None
            if result:
                return result
            time.sleep(poll)
        sys.exit(f"timed out waiting for {what}:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> int:
        self.process.terminate()
        return self.process.wait(30)


def measure_latency(daemon: Daemon, files: int, size: int) -> list[float]:
    staging = daemon.photos.parent / "staging"
    staging.mkdir()
    latencies = []
    for number in range(files):
        # Encode first, so the time measured is the daemon's and not PIL's.
        source = staging / f"single{number}.jpg"
        write_photo(source, number, size)
        data = source.read_bytes()
        target = daemon.photos / source.name
        with target.open("wb") as handle:  # a real copy: create, write, close
            handle.write(data)
        closed = time.monotonic()
        daemon.wait(lambda t=target: daemon.searchable(t), 60, f"{target.name} searchable")
        latencies.append(time.monotonic() - closed)
    return latencies


def measure_burst(daemon: Daemon, count: int, size: int) -> dict[str, float]:
    staging = daemon.photos.parent / "burst"
    staging.mkdir()
    for number in range(count):
        write_photo(staging / f"burst{number}.jpg", 10_000 + number, size)
    before = daemon.status()["images"]
    target = daemon.photos / "burst"
    target.mkdir()
    started = time.monotonic()
    for source in sorted(staging.iterdir()):
        os.rename(source, target / source.name)
    arrived = time.monotonic() - started
    peak_rate = 0.0

    def all_in() -> bool:
        nonlocal peak_rate
        status = daemon.status()
        peak_rate = max(peak_rate, float(status["progress"]["rate"] or 0.0))
        return bool(status["images"] - before >= count)

    # Polled gently: on a small machine, asking 100 times a second would slow what it measures.
    daemon.wait(all_in, 600, "the burst indexed", poll=BURST_POLL_SECONDS)
    seconds = time.monotonic() - started
    return {
        "files": count,
        "arrival_seconds": round(arrived, 3),
        "seconds": round(seconds, 3),
        "images_per_second": round(count / seconds, 1),
        "daemon_peak_rate": round(peak_rate, 1),
    }


def measure_folder_rename(daemon: Daemon, count: int) -> float:
    """Rename the burst's folder: seconds until every photo is searchable at its new path."""
    old, new = daemon.photos / "burst", daemon.photos / "burst renamed"
    renamed = time.monotonic()
    old.rename(new)
    for number in (0, count // 2, count - 1):  # rows are rewritten in one transaction
        path = new / f"burst{number}.jpg"
        daemon.wait(lambda p=path: daemon.searchable(p), 60, f"{path.name} at its new path")
    return time.monotonic() - renamed


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="wmpd-freshness-") as tmp:
        daemon = Daemon(Path(tmp), args)
        try:
            started = time.monotonic()
            daemon.wait(lambda: daemon.status()["model_ready"], STARTUP_SECONDS, "the model")
            startup = time.monotonic() - started
            latencies = measure_latency(daemon, args.files, args.size)
            burst = measure_burst(daemon, args.burst, args.size)
            rename_seconds = measure_folder_rename(daemon, args.burst)
            images_after_rename = daemon.status()["images"]
        finally:
            code = daemon.stop()
    result = {
        "settle_seconds": args.settle,
        "model": Path(args.model).name,
        "photo_size": args.size,
        "cpus": os.cpu_count(),
        "startup_to_model_ready_seconds": round(startup, 2),
        "latency_files": len(latencies),
        "latency_p50_seconds": round(statistics.median(latencies), 3),
        "latency_p95_seconds": round(percentile(latencies, 0.95), 3),
        "latency_max_seconds": round(max(latencies), 3),
        "latency_minus_settle_p50_seconds": round(statistics.median(latencies) - args.settle, 3),
        "burst": burst,
        "folder_rename_seconds": round(rename_seconds, 3),
        "images_after_rename": images_after_rename,
        "exit_code": code,
    }
    rows = [
        ("settle_seconds", args.settle),
        ("model ready after (s)", result["startup_to_model_ready_seconds"]),
        (f"latency p50 over {len(latencies)} files (s)", result["latency_p50_seconds"]),
        ("latency p95 (s)", result["latency_p95_seconds"]),
        ("latency max (s)", result["latency_max_seconds"]),
        ("latency p50 beyond the settle window (s)", result["latency_minus_settle_p50_seconds"]),
        (f"burst of {burst['files']}: all searchable after (s)", burst["seconds"]),
        ("burst throughput (images/s)", burst["images_per_second"]),
        ("daemon's own peak rate (images/s)", burst["daemon_peak_rate"]),
        ("rename of that folder: all at the new path after (s)", result["folder_rename_seconds"]),
        ("images after the rename (nothing re-added)", images_after_rename),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
