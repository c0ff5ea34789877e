"""Run `wmpd run` as a real subprocess on a temporary config, and look at what it did.

Everything here reads the daemon's state the way a user or a launcher would: the status
it publishes (`wmpd status` reads the same file), the catalog through a read-only
connection, the saved vector index, and the HTTP API when the server is on.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wmpd.catalog import Catalog
from wmpd.config import Config, load_config
from wmpd.datadir import DataDir, index_stamp
from wmpd.embedder import model_id_for
from wmpd.imaging import content_hash
from wmpd.library import catalog_status
from wmpd.vectors import VectorIndex

REPO = Path(__file__).resolve().parent.parent
TINY_CONFIG = REPO / "tests" / "models" / "tiny-clip.json"
TINY_WEIGHTS = REPO / "tests" / "models" / "tiny-clip.pt"
TINY_DIM = 64
EXTENSIONS = (".jpg", ".jpeg", ".png")
STARTUP_SECONDS = 90.0  # importing torch and open_clip on a busy 2-core machine
POLL_SECONDS = 0.05


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(
    path: Path,
    folders: Sequence[Path | str],
    data_dir: Path,
    *,
    port: int | None = None,
    settle_seconds: float = 0.2,
    rescan_interval: str = "1h",
    polling: bool = False,
    poll_interval: float = 0.5,
    batch_size: int = 16,
    pretrained: Path = TINY_WEIGHTS,
    folder_extra: str = "",
) -> Path:
    """A real config file; `port=None` turns the HTTP server off."""
    folder_lines = "".join(f"  - path: {folder}\n{folder_extra}" for folder in folders)
    folder_lines = folder_lines or "  []\n"
    server = f"  port: {port}\n" if port is not None else "  enabled: false\n"
    path.write_text(
        f"folders:\n{folder_lines}"
        f"model:\n  name: {TINY_CONFIG}\n  pretrained: {pretrained}\n"
        f"  batch_size: {batch_size}\n  threads: 1\n"
        f"index:\n  data_dir: {data_dir}\n"
        f"server:\n{server}"
        f"watcher:\n  settle_seconds: {settle_seconds}\n  rescan_interval: {rescan_interval}\n"
        f"  polling: {'true' if polling else 'false'}\n  poll_interval: {poll_interval}\n"
    )
    return path


def write_photo(path: Path, seed: int, size: int = 48) -> Path:
    """A small PNG whose content is unique to `seed`."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG")
    return path


def photos_on_disk(roots: Iterable[Path], data_dir: Path | None = None) -> dict[str, str]:
    """Every photo under these roots (not wmpd's own files) → its content hash."""
    found: dict[str, str] = {}
    for root in roots:
        for path in root.rglob("*"):
            if data_dir is not None and path.is_relative_to(data_dir):
                continue  # thumbnails, when the data directory is inside a folder
            if path.suffix.lower() in EXTENSIONS and path.is_file():
                found[str(path)] = content_hash(path.read_bytes())
    return found


@dataclass
class CatalogView:
    """What the catalog says, read through its own read-only connection."""

    paths: dict[str, int]  # path → image id
    visible: set[int]  # searchable image ids of the current model
    failures: dict[str, str]  # path → reason
    roots: dict[str, str]  # root path → state
    image_count: int


def read_catalog(config: Config) -> CatalogView:
    catalog = Catalog(DataDir(config.index.data_dir).catalog_path, readonly=True)
    try:
        paths = {}
        for root in catalog.roots():
            paths.update({p: row.image_id for p, row in catalog.paths_of_root(root.id).items()})
        failures = {}
        for root in catalog.roots():
            failures.update({p: row.reason for p, row in catalog.failures_of_root(root.id).items()})
        return CatalogView(
            paths=paths,
            visible=catalog.visible_ids(model_id_for(config.model)),
            failures=failures,
            roots={r.path: r.state for r in catalog.roots()},
            image_count=len(catalog.visible_ids(model_id_for(config.model))),
        )
    finally:
        catalog.close()


def check_consistent(config: Config, roots: Iterable[Path]) -> CatalogView:
    """After a clean stop: catalog == disk, index == catalog, one image per content.

    No lost file, no duplicate, no ghost: every photo on disk has a path row pointing at an
    image with its content; nothing else has one; the saved FAISS index holds exactly the
    searchable images.
    """
    on_disk = photos_on_disk(roots, config.index.data_dir)
    view = read_catalog(config)
    data_dir = DataDir(config.index.data_dir)
    catalog = Catalog(data_dir.catalog_path, readonly=True)
    try:
        hashes = {
            path: catalog.image(image_id).hash  # type: ignore[union-attr]
            for path, image_id in view.paths.items()
        }
        model_id = model_id_for(config.model)
        stamp = index_stamp(catalog, model_id)
    finally:
        catalog.close()
    expected = {p: h for p, h in on_disk.items() if p not in view.failures}
    assert set(hashes) == set(expected), _diff("catalog paths", set(hashes), set(expected))
    wrong = {p for p in expected if hashes[p] != expected[p]}
    assert not wrong, f"paths pointing at the wrong content: {sorted(wrong)[:5]}"
    assert set(view.paths.values()) == view.visible, "an image without a path is searchable"
    assert len(view.visible) == len(set(expected.values())), "one image per distinct content"
    vectors = VectorIndex.load(data_dir.path, stamp, TINY_DIM)
    assert vectors is not None, "the saved index does not match the catalog"
    assert vectors.ids() == view.visible
    return view


def _diff(what: str, got: set[str], want: set[str]) -> str:
    return (
        f"{what} differ from the disk: missing {sorted(want - got)[:5]} "
        f"({len(want - got)}), extra {sorted(got - want)[:5]} ({len(got - want)})"
    )


@dataclass
class Daemon:
    """One `wmpd run` subprocess."""

    config_path: Path
    log_path: Path
    prefix: Sequence[str] = ()  # e.g. a user namespace with a lowered inotify limit
    process: subprocess.Popen[bytes] | None = None
    config: Config = field(init=False)

    def __post_init__(self) -> None:
        self.config = load_config(self.config_path)

    def start(self) -> Daemon:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *self.prefix,
                    sys.executable,
                    "-m",
                    "wmpd",
                    "--config",
                    str(self.config_path),
                    "run",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def status(self) -> dict[str, Any]:
        """What `wmpd status --json` shows (the same function, called in-process)."""
        return catalog_status(self.config)

    def catalog(self) -> CatalogView:
        return read_catalog(self.config)

    def wait_for(self, ready: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
        """Poll until `ready()` returns something truthy; fail with the log otherwise."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                result = ready()
                if result:
                    return result
            except (OSError, ValueError, KeyError, sqlite3.Error) as exc:
                # the catalog being created, the port not listening yet
                last_error = exc
            if self.process is not None and not self.alive():
                code = self.process.returncode
                raise AssertionError(
                    f"wmpd exited ({code}) waiting for {what}:\n{self.log()[-3000:]}"
                )
            time.sleep(POLL_SECONDS)
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what} (last error: {last_error});\n"
            f"status: {json.dumps(self.status())[:1500]}\nlog:\n{self.log()[-3000:]}"
        )

    def wait_ready(self, timeout: float = STARTUP_SECONDS) -> dict[str, Any]:
        """The model is loaded and every root has been reconciled (or found offline)."""

        def ready() -> dict[str, Any] | None:
            status = self.status()
            configured = len(self.config.folders)
            if status.get("model_ready") and len(status.get("roots", [])) == configured:
                return status
            return None

        result: dict[str, Any] = self.wait_for(ready, "the model and the roots", timeout)
        return result

    def wait_idle(self, timeout: float = 60.0) -> dict[str, Any]:
        def idle() -> dict[str, Any] | None:
            status = self.status()
            return status if status["state"] == "idle" and status["queue"] == 0 else None

        result: dict[str, Any] = self.wait_for(idle, "the queue to empty", timeout)
        return result

    def wait_catalog(
        self, check: Callable[[CatalogView], bool], what: str, timeout: float = 30.0
    ) -> CatalogView:
        def ready() -> CatalogView | None:
            view = self.catalog()
            return view if check(view) else None

        result: CatalogView = self.wait_for(ready, what, timeout)
        return result

    def send(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 15.0) -> tuple[int, float]:
        """SIGTERM (or `signum`); returns (exit code, seconds it took)."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signum)
        code = self.process.wait(timeout)
        return code, time.monotonic() - started

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def ensure_dead(self) -> None:
        if self.alive():
            self.kill()

    # -- HTTP (when the server is on) ----------------------------------------------------

    def url(self, path: str, **params: Any) -> str:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        return f"http://127.0.0.1:{self.config.server.port}{path}{query}"

    def get_json(self, path: str, **params: Any) -> Any:
        return json.loads(self.get(path, **params))

    def get(self, path: str, **params: Any) -> bytes:
        with urllib.request.urlopen(self.url(path, **params), timeout=10) as response:
            body: bytes = response.read()
            return body

    def post_json(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.url(path),
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")


def random_moments(rng: random.Random, count: int, low: float, high: float) -> list[float]:
    return [rng.uniform(low, high) for _ in range(count)]
