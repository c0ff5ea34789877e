"""What happens on disk while `wmpd run` watches: vanishing files, slow writers, renamed
directories, a root that goes away and comes back, a broken config, a flood of files.

One daemon watches two roots for the module (the 10,000-file flood gets its own). After
each scenario: the daemon is up, /api/status agrees with the catalog, and
catalog = disk = index.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.daemon_harness import write_photo
from tests.reliability.conftest import make_sentinel
from tests.reliability.consistency import (
    CatalogState,
    check_consistent,
    check_saved_index,
    read_catalog,
    wait_consistent,
)
from tests.reliability.guard import PhotoGuard
from tests.reliability.harness import TALLY, Daemon, DaemonFactory, wait_for

SETTLE_SECONDS = 1.0
SLOW_WRITE_SECONDS = 10.0
SLOW_WRITE_CHUNKS = 100
RENAMED_FILES = 1000
FLOOD_FILES = int(os.environ.get("WMPD_FLOOD_FILES", "10000"))


@dataclass
class Watched:
    daemon: Daemon
    photos: Path
    removable: Path
    guard: PhotoGuard

    @property
    def roots(self) -> list[Path]:
        return [self.photos, self.removable]


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watched]:
    base = tmp_path_factory.mktemp("events")
    photos, removable = base / "photos", base / "removable"
    sentinel = make_sentinel(photos / "sentinel")
    for seed in range(30):
        write_photo(removable / f"r{seed:02d}.png", seed=10_000 + seed)
    factory = DaemonFactory(base)
    guard = PhotoGuard([sentinel])
    try:
        daemon = factory(photos, removable, settle_seconds=SETTLE_SECONDS)
        yield Watched(daemon, photos, removable, guard)
        guard.check()
    finally:
        guard.close()
        factory.cleanup()


def settle_and_check(watched: Watched, timeout: float = 180.0) -> CatalogState:
    """Idle, status = catalog, catalog = disk = index."""
    return wait_consistent(watched.daemon, watched.roots, timeout)


def wait_catalog(
    watched: Watched, wanted: Callable[[CatalogState], bool], what: str, timeout: float = 60.0
) -> CatalogState:
    def probe() -> CatalogState | None:
        state = read_catalog(watched.daemon.data_dir)
        return state if wanted(state) else None

    return wait_for(probe, timeout, what, interval=0.05, details=watched.daemon.describe)


def paths_under(state: CatalogState, folder: Path) -> set[str]:
    prefix = f"{folder}/"
    return {p for p in state.paths if p.startswith(prefix)}


def test_files_deleted_between_the_event_and_the_processing(watched: Watched) -> None:
    folder = watched.photos / "vanishing"
    before = settle_and_check(watched)
    # Wave 1: created and deleted within the settle time (before anything reads them).
    early = [write_photo(folder / f"early-{n:03d}.png", seed=20_000 + n) for n in range(60)]
    for path in early[::2]:
        path.unlink()
    # Wave 2: deleted while the burst is queued, being read or being embedded.
    late = [write_photo(folder / f"late-{n:03d}.png", seed=21_000 + n) for n in range(400)]
    wait_catalog(watched, lambda s: bool(paths_under(s, folder)), "the burst's first files")
    for path in late[::2]:
        path.unlink()
    TALLY.fault("file deleted before or during processing", 30 + 200)
    state = settle_and_check(watched)
    kept = {str(p) for p in early[1::2] + late[1::2]}
    assert paths_under(state, folder) == kept
    assert not [p for p in state.failures if p.startswith(str(folder))]  # vanished ≠ failed
    assert len(state.failures) == len(before.failures)


class SlowWriter(threading.Thread):
    """Writes `data` in chunks over `seconds`, like a slow copy or a download."""

    def __init__(self, path: Path, data: bytes, seconds: float, chunks: int) -> None:
        super().__init__(daemon=True)
        self.path, self.data, self.seconds, self.chunks = path, data, seconds, chunks
        self.done = threading.Event()

    def run(self) -> None:
        step = -(-len(self.data) // self.chunks)
        with open(self.path, "wb") as out:
            for start in range(0, len(self.data), step):
                out.write(self.data[start : start + step])
                out.flush()
                time.sleep(self.seconds / self.chunks)
        self.done.set()


def noise_jpeg(seed: int, size: tuple[int, int] = (800, 600)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=95)
    return out.getvalue()


def test_a_file_written_for_ten_seconds_is_indexed_once_after_it_settles(
    watched: Watched,
) -> None:
    before = settle_and_check(watched)
    path = watched.photos / "slow" / "download.jpg"
    path.parent.mkdir()
    data = noise_jpeg(7)
    writer = SlowWriter(path, data, SLOW_WRITE_SECONDS, SLOW_WRITE_CHUNKS)
    writer.start()
    TALLY.fault("file still being written for 10 s")
    checks = 0
    while not writer.done.is_set():
        state = read_catalog(watched.daemon.data_dir)
        assert str(path) not in state.paths, "indexed before it settled"
        assert str(path) not in state.failures, "read (and failed) before it settled"
        assert len(state.images) == len(before.images), "something was embedded mid-write"
        checks += 1
        time.sleep(0.25)
    assert checks >= 20
    state = wait_catalog(watched, lambda s: str(path) in s.paths, "the finished file", 30)
    image = state.image_of(path)
    assert image is not None
    assert image.hash == hashlib.blake2b(data, digest_size=16).hexdigest()
    assert len(state.images) == len(before.images) + 1  # one embedding, no partial orphan
    settle_and_check(watched)


def test_renaming_a_directory_of_a_thousand_files_re_embeds_nothing(watched: Watched) -> None:
    album = watched.photos / "album"
    for n in range(RENAMED_FILES):
        write_photo(album / f"{n:04d}.png", seed=30_000 + n, size=24)
    wait_catalog(
        watched, lambda s: len(paths_under(s, album)) == RENAMED_FILES, "the album", timeout=180
    )
    before = settle_and_check(watched)
    renamed = watched.photos / "album 2024 (renamed)"
    album.rename(renamed)
    TALLY.fault(f"directory of {RENAMED_FILES} files renamed")
    wait_catalog(
        watched, lambda s: len(paths_under(s, renamed)) == RENAMED_FILES, "paths to follow"
    )
    after = settle_and_check(watched)
    assert not paths_under(after, album)
    assert after.images == before.images  # same rows, vectors and added_at: nothing embedded
    moved = {p.replace(str(album), str(renamed), 1): i for p, i in before.paths.items()}
    assert {p: after.paths[p] for p in paths_under(after, renamed)} == {
        p: i for p, i in moved.items() if p.startswith(f"{renamed}/")
    }
    answer = watched.daemon.get(f"/api/images/{after.paths[str(renamed / '0000.png')]}")
    assert answer.json()["paths"] == [str(renamed / "0000.png")]


def root_state(status: dict[str, Any], root: Path) -> dict[str, Any] | None:
    return next((r for r in status["roots"] if r["path"] == str(root)), None)


def unplug_and_replug(watched: Watched, leave_empty_dir: bool) -> None:
    """The root goes away (renamed, as an unmount does) and comes back; nothing is lost."""
    before = settle_and_check(watched)
    removable, away = watched.removable, watched.removable.with_name("removable.away")
    mine = paths_under(before, removable)
    assert len(mine) == 30
    removable.rename(away)
    if leave_empty_dir:
        removable.mkdir()  # what an unmounted disk leaves: an empty mount point
    TALLY.fault("root replaced by an empty directory" if leave_empty_dir else "root renamed away")
    try:
        status = watched.daemon.wait_status(
            lambda s: (root_state(s, removable) or {}).get("state") == "offline",
            "the root to be marked offline",
            timeout=20,
        )
        assert root_state(status, removable)["detail"]  # type: ignore[index]
        time.sleep(2 * SETTLE_SECONDS)  # whatever a mass delete would do, it has done now
        state = read_catalog(watched.daemon.data_dir)
        assert paths_under(state, removable) == mine, "entries dropped while offline"
        assert state.images == before.images
        assert watched.daemon.status()["images"] == len(before.visible_ids)
    finally:
        if leave_empty_dir:
            removable.rmdir()
        away.rename(removable)
    watched.daemon.wait_status(
        lambda s: (root_state(s, removable) or {}).get("state") == "watching", "the root back"
    )
    after = settle_and_check(watched)
    assert paths_under(after, removable) == mine
    assert after.images == before.images  # nothing re-embedded


def test_a_root_renamed_away_is_offline_keeps_its_entries_and_comes_back(
    watched: Watched,
) -> None:
    unplug_and_replug(watched, leave_empty_dir=False)


def test_a_root_replaced_by_an_empty_mount_point_is_offline_and_comes_back(
    watched: Watched,
) -> None:
    unplug_and_replug(watched, leave_empty_dir=True)


def replace_file(path: Path, text: str) -> None:
    """As editors save: a new file renamed over the old one."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


@pytest.mark.parametrize(
    "broken",
    [
        "folders: [unclosed\n  - nope: {\n",  # not YAML at all
        "folders:\n  - path: /x\nmodle: {}\n",  # YAML, but an unknown key
        "",  # emptied
    ],
    ids=["not-yaml", "unknown-key", "empty"],
)
def test_an_invalid_config_keeps_the_last_good_one(watched: Watched, broken: str) -> None:
    daemon = watched.daemon
    good = daemon.config_path.read_text()
    before = settle_and_check(watched)
    replace_file(daemon.config_path, broken)
    TALLY.fault("config replaced by an invalid one")
    try:
        status = daemon.wait_status(
            lambda s: any("config" in w for w in s["warnings"]), "a config warning in the status"
        )
        warning = next(w for w in status["warnings"] if "config" in w)
        assert str(daemon.config_path) in warning
        assert "Traceback" not in warning
        os.kill(daemon.pid, signal.SIGHUP)  # an explicit reload of the broken file, too
        time.sleep(1.0)
        assert daemon.alive(), daemon.describe()
        # Still watching and indexing under the last good config.
        added = write_photo(watched.photos / "after-bad-config" / "new.png", seed=40_000)
        wait_catalog(watched, lambda s: str(added) in s.paths, "a file added meanwhile", 30)
        assert daemon.get("/api/search?q=red").status == 200
        state = read_catalog(daemon.data_dir)
        assert paths_under(state, watched.removable) == paths_under(before, watched.removable)
    finally:
        replace_file(daemon.config_path, good)
    daemon.wait_status(lambda s: not s["warnings"], "the warning to clear with a good config")
    settle_and_check(watched)
    assert daemon.alive()


def test_a_clean_stop_after_all_that_saves_exactly_the_catalog(watched: Watched) -> None:
    state = settle_and_check(watched)
    assert watched.daemon.stop() == 0
    check_saved_index(
        watched.daemon.data_dir, check_consistent(watched.daemon.data_dir, watched.roots)
    )
    assert read_catalog(watched.daemon.data_dir).images == state.images


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ten_thousand_files_dropped_at_once_are_all_indexed(daemons: DaemonFactory) -> None:
    root = daemons.base / "photos"
    sentinel = make_sentinel(root / "sentinel")
    daemon = daemons(root, settle_seconds=0.5, batch_size=32)
    with PhotoGuard([sentinel]):
        daemon.wait_idle()
        started = time.monotonic()
        for n in range(FLOOD_FILES):
            write_photo(
                root / "flood" / f"{n // 1000:02d}" / f"{n:05d}.png", seed=50_000 + n, size=16
            )
        written = time.monotonic() - started
        TALLY.fault("files dropped at once", FLOOD_FILES)
        wanted = FLOOD_FILES + len(os.listdir(sentinel))
        daemon.wait_idle(timeout=780, paths=wanted, images=wanted)
        took = time.monotonic() - started
        TALLY.measurements["flood_files"] = FLOOD_FILES
        TALLY.measurements["flood_write_seconds"] = round(written, 1)
        TALLY.measurements["flood_indexed_seconds"] = round(took, 1)
        state = check_consistent(daemon.data_dir, [root], expect_no_failures=True)
        assert daemon.stop() == 0
        check_saved_index(daemon.data_dir, state)
