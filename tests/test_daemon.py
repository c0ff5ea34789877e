"""`wmpd run` end to end: a real subprocess, real folders, real signals, kill -9.

Each test starts the daemon on a temporary config with the tiny model (loading torch is
most of a start, so each test covers one whole story rather than one assertion).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_harness import (
    REPO,
    CatalogView,
    Daemon,
    check_consistent,
    free_port,
    photos_on_disk,
    write_config,
    write_photo,
)

DaemonFactory = Callable[..., Daemon]
SIGTERM_EXIT_SECONDS = 5.0


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[DaemonFactory]:
    """Start `wmpd run` on a config; every daemon still running at the end is killed."""
    started: list[Daemon] = []

    def factory(config_path: Path, prefix: tuple[str, ...] = ()) -> Daemon:
        daemon = Daemon(config_path, tmp_path / "wmpd.log", prefix).start()
        started.append(daemon)
        return daemon

    yield factory
    for daemon in started:
        daemon.ensure_dead()


def wmpd_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "wmpd", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
        check=False,
    )


def path_rows(daemon: Daemon) -> dict[str, tuple[int, int]]:
    """path → (path row id, image id), straight from the catalog file."""
    db = sqlite3.connect(
        f"file:{daemon.config.index.data_dir / 'catalog.sqlite3'}?mode=ro", uri=True
    )
    try:
        return {p: (r, i) for r, p, i in db.execute("SELECT id, path, image_id FROM paths")}
    finally:
        db.close()


def has_paths(*paths: Path) -> Callable[[CatalogView], bool]:
    return lambda view: all(str(p) in view.paths for p in paths)


def lacks_paths(*paths: Path) -> Callable[[CatalogView], bool]:
    return lambda view: not any(str(p) in view.paths for p in paths)


def test_a_day_in_the_life(tmp_path: Path, start_daemon: DaemonFactory) -> None:
    photos = tmp_path / "photos"
    for number in range(3):
        write_photo(photos / f"old{number}.png", number)
    for number in range(100):
        write_photo(photos / "trip" / f"{number}.png", 1000 + number)
    broken = photos / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff this is not a photo")
    config_path = write_config(tmp_path / "config.yaml", [photos], tmp_path / "data")
    daemon = start_daemon(config_path)

    # Status answers at once, before the model is loaded.
    first = daemon.wait_for(lambda: "model_ready" in (s := daemon.status()) and s, "a status", 10)
    assert first["state"] == "loading_model"
    assert first["model_ready"] is False
    status = daemon.wait_ready()
    daemon.wait_catalog(lambda v: len(v.paths) == 103, "the startup scan")
    status = daemon.wait_idle()
    assert status["roots"] == [{"path": str(photos), "state": "watching", "detail": None}]
    assert status["images"] == 103
    assert status["failures"] == {"corrupt": 1}
    assert status["recent_failures"][0]["path"] == str(broken)
    assert status["model_id"].startswith("tiny-clip#")
    assert set(status["progress"]) == {"done", "total", "rate", "eta_seconds"}

    # New, modified, deleted, moved.
    new = write_photo(photos / "new.png", 5000)
    daemon.wait_catalog(has_paths(new), "a new photo")
    before = daemon.catalog()
    write_photo(photos / "old0.png", 5001)
    daemon.wait_catalog(
        lambda v: (
            v.paths.get(str(photos / "old0.png"))
            not in (None, before.paths[str(photos / "old0.png")])
        ),
        "a modified photo re-embedded",
    )
    (photos / "old1.png").unlink()
    daemon.wait_catalog(lacks_paths(photos / "old1.png"), "a deleted photo gone")
    (photos / "old2.png").rename(photos / "renamed.png")
    view = daemon.wait_catalog(has_paths(photos / "renamed.png"), "a renamed photo")
    assert str(photos / "old2.png") not in view.paths
    assert view.paths[str(photos / "renamed.png")] == before.paths[str(photos / "old2.png")]

    # A directory rename: path rows are rewritten in place, nothing is read or embedded.
    rows_before = path_rows(daemon)
    images_before = daemon.catalog().image_count
    (photos / "trip").rename(photos / "trip 2024")
    daemon.wait_catalog(has_paths(photos / "trip 2024" / "99.png"), "the renamed directory")
    rows_after = path_rows(daemon)
    for number in range(100):
        old, new_path = photos / "trip" / f"{number}.png", photos / "trip 2024" / f"{number}.png"
        assert rows_after[str(new_path)] == rows_before[str(old)]  # same row, same image
    assert daemon.catalog().image_count == images_before

    # A failed file is not retried until it changes; then it is.
    failed_at = _failed_at(daemon, broken)
    os.utime(broken)  # an attribute change with new times: a change, so retried once more
    daemon.wait_for(lambda: _failed_at(daemon, broken) != failed_at, "a changed file retried")
    failed_at = _failed_at(daemon, broken)
    os.chmod(broken, 0o644)  # same size and mtime: not retried
    time.sleep(1.0)
    assert _failed_at(daemon, broken) == failed_at
    write_photo(broken, 6000)
    daemon.wait_catalog(has_paths(broken), "a repaired file indexed")
    assert str(broken) not in daemon.catalog().failures

    # Politeness: indexing threads run at a lower priority than the rest of the process.
    nice = thread_niceness(daemon.pid)
    assert nice[daemon.pid] == 0
    assert max(nice.values()) == 10

    # The CLI sees the running daemon (its HTTP server is off).
    shown = wmpd_cli("--config", str(config_path), "status")
    assert shown.returncode == 0, shown.stderr
    assert "state:    idle" in shown.stdout or "state:    indexing" in shown.stdout
    assert f"watching {photos}" in shown.stdout

    # One writer per data directory.
    second = wmpd_cli("--config", str(config_path), "run", timeout=60)
    assert second.returncode != 0
    assert f"is in use by the wmpd daemon (pid {daemon.pid}" in second.stderr
    indexer = wmpd_cli("--config", str(config_path), "index")
    assert indexer.returncode != 0
    assert "in use by the wmpd daemon" in indexer.stderr

    daemon.wait_idle()
    code, seconds = daemon.stop()
    assert code == 0, daemon.log()[-2000:]
    assert seconds < SIGTERM_EXIT_SECONDS
    assert daemon.status()["state"] == "stopped"
    check_consistent(daemon.config, [photos])


def thread_niceness(pid: int) -> dict[int, int]:
    """Thread id → nice value, from /proc (field 19 of each task's stat)."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        found[int(task.name)] = int(fields[16])
    return found


def _failed_at(daemon: Daemon, path: Path) -> float:
    db = sqlite3.connect(
        f"file:{daemon.config.index.data_dir / 'catalog.sqlite3'}?mode=ro", uri=True
    )
    try:
        row = db.execute("SELECT failed_at FROM failures WHERE path = ?", (str(path),)).fetchone()
    finally:
        db.close()
    assert row is not None, f"{path} is not recorded as failed"
    return float(row[0])


def test_folders_go_offline_come_back_and_follow_the_config(
    tmp_path: Path, start_daemon: DaemonFactory
) -> None:
    present, later, added = tmp_path / "present", tmp_path / "later", tmp_path / "added"
    for number in range(20):
        write_photo(present / f"{number}.png", number)
    write_photo(added / "a.png", 500)
    # The config is a symlink (as dotfile managers make): retargeting it sends no event
    # to the watched directory, so only SIGHUP applies it.
    versions = tmp_path / "v1"
    versions.mkdir()
    config_file = write_config(versions / "config.yaml", [present, later], tmp_path / "data")
    config_path = tmp_path / "config.yaml"
    config_path.symlink_to(config_file)
    daemon = start_daemon(config_path)

    status = daemon.wait_ready()
    roots = {r["path"]: r for r in status["roots"]}
    assert roots[str(present)]["state"] == "watching"
    assert roots[str(later)]["state"] == "offline"
    assert "does not exist" in roots[str(later)]["detail"]
    daemon.wait_catalog(lambda v: len(v.paths) == 20, "the present folder indexed")

    # A folder missing at start is indexed once it appears.
    write_photo(tmp_path / "staging" / "l.png", 600).parent.rename(later)
    daemon.wait_catalog(has_paths(later / "l.png"), "the late folder indexed")

    # A folder that disappears goes offline and loses nothing; back, it is rescanned.
    away = tmp_path / "present-unplugged"
    present.rename(away)
    daemon.wait_for(lambda: _root_state(daemon, present) == "offline", "the folder offline")
    (away / "0.png").unlink()  # events arrive with the old paths: nothing may be deleted
    write_photo(away / "extra.png", 700)
    time.sleep(2.5)
    assert len([p for p in daemon.catalog().paths if p.startswith(f"{present}/")]) == 20
    away.rename(present)
    view = daemon.wait_catalog(
        lambda v: str(present / "extra.png") in v.paths and str(present / "0.png") not in v.paths,
        "the folder rescanned when back",
    )
    daemon.wait_for(lambda: _root_state(daemon, present) == "watching", "the folder watched again")
    assert len([p for p in view.paths if p.startswith(f"{present}/")]) == 20

    # Adding a folder to the config takes effect without a restart.
    write_config(config_file, [present, later, added], tmp_path / "data")
    daemon.wait_catalog(has_paths(added / "a.png"), "an added folder indexed")

    # An invalid edit is reported and the last good config kept.
    config_file.write_text("folders: [\n")
    daemon.wait_for(lambda: daemon.status()["warnings"], "a config warning")
    assert "still using the last good one" in daemon.status()["warnings"][0]
    write_photo(added / "b.png", 501)
    daemon.wait_catalog(has_paths(added / "b.png"), "the old config still working")

    # Retarget the symlink (no event reaches the watched folder), then SIGHUP.
    v2 = tmp_path / "v2"
    v2.mkdir()
    write_config(v2 / "config.yaml", [present, later], tmp_path / "data")
    (tmp_path / "config.new").symlink_to(v2 / "config.yaml")
    os.replace(tmp_path / "config.new", config_path)
    time.sleep(1.0)
    assert str(added / "a.png") in daemon.catalog().paths  # not applied yet
    daemon.send(signal.SIGHUP)
    daemon.wait_catalog(lacks_paths(added / "a.png", added / "b.png"), "a removed folder forgotten")
    daemon.wait_for(
        lambda: {r["path"] for r in daemon.status()["roots"]} == {str(present), str(later)},
        "the removed folder gone from the status",
    )
    assert daemon.wait_idle()["warnings"] == []

    code, seconds = daemon.stop()
    assert code == 0
    assert seconds < SIGTERM_EXIT_SECONDS
    check_consistent(daemon.config, [present, later])


def _root_state(daemon: Daemon, root: Path) -> str | None:
    for entry in daemon.status()["roots"]:
        if entry["path"] == str(root):
            return str(entry["state"])
    return None


# -- kill -9 during a burst ----------------------------------------------------------------


MAX_BURST_FILES = 700


class Burst(threading.Thread):
    """Keeps changing a folder: new photos, copies, renames, deletions, a directory rename."""

    def __init__(self, root: Path, seed: int) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.rng = random.Random(seed)
        self.stop_event = threading.Event()
        self.next_seed = 100_000
        self.error: BaseException | None = None

    def add(self, count: int, folder: str = "") -> None:
        for _ in range(count):
            self.next_seed += 1
            write_photo(self.root / folder / f"p{self.next_seed}.png", self.next_seed)

    def run(self) -> None:
        try:
            while not self.stop_event.wait(0.05):
                self.step()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def step(self) -> None:
        files = sorted(self.root.rglob("*.png"))
        action = self.rng.random()
        if (action < 0.5 and len(files) < MAX_BURST_FILES) or not files:
            self.add(self.rng.randint(1, 3), self.rng.choice(["", "a", "b"]))
        elif action < 0.65:
            source = self.rng.choice(files)
            (source.parent / f"copy-{self.next_seed}-{source.name}").write_bytes(
                source.read_bytes()
            )
            self.next_seed += 1
        elif action < 0.8:
            source = self.rng.choice(files)
            source.rename(self.root / f"moved-{self.next_seed}.png")
            self.next_seed += 1
        elif action < 0.95:
            self.rng.choice(files).unlink()
        else:
            folder = self.rng.choice([d for d in self.root.iterdir() if d.is_dir()] or [self.root])
            if folder != self.root:
                folder.rename(self.root / f"dir{self.next_seed}")
                self.next_seed += 1

    def finish(self) -> None:
        self.stop_event.set()
        self.join(10)
        if self.error is not None:
            raise self.error


def run_kill_cycles(tmp_path: Path, start_daemon: DaemonFactory, kills: int, seed: int) -> None:
    photos = tmp_path / "photos"
    burst = Burst(photos, seed)
    burst.add(300)
    for folder in ("a", "b"):
        burst.add(50, folder)
    config_path = write_config(tmp_path / "config.yaml", [photos], tmp_path / "data", batch_size=8)
    rng = random.Random(seed)
    burst.start()
    try:
        for _ in range(kills):
            daemon = start_daemon(config_path)
            daemon.wait_for(lambda d=daemon: d.status().get("model_ready"), "the model", 90)
            time.sleep(rng.uniform(0.0, 2.0))  # somewhere in the scan, a batch, a move...
            daemon.kill()
    finally:
        burst.finish()
    daemon = start_daemon(config_path)
    daemon.wait_ready()
    expected = set(photos_on_disk([photos]))
    daemon.wait_catalog(lambda v: set(v.paths) == expected, "every photo indexed", 120)
    daemon.wait_idle()
    code, _ = daemon.stop()
    assert code == 0
    check_consistent(daemon.config, [photos])
    assert daemon.log().count("Traceback") == 0, daemon.log()[-3000:]


def test_kill_9_during_a_burst_loses_nothing(tmp_path: Path, start_daemon: DaemonFactory) -> None:
    run_kill_cycles(tmp_path, start_daemon, kills=5, seed=7)


@pytest.mark.slow
@pytest.mark.timeout(900)  # 21 model loads: about 200 s on a busy 2-core machine
def test_kill_9_twenty_times_loses_nothing(tmp_path: Path, start_daemon: DaemonFactory) -> None:
    run_kill_cycles(tmp_path, start_daemon, kills=20, seed=11)


# -- model trouble, watch limits --------------------------------------------------------------


def test_a_model_that_cannot_load_leaves_the_daemon_up_and_saying_why(
    tmp_path: Path, start_daemon: DaemonFactory
) -> None:
    corrupt = tmp_path / "weights.pt"
    corrupt.write_bytes(os.urandom(4096))
    photos = tmp_path / "photos"
    write_photo(photos / "a.png", 1)
    config_path = write_config(
        tmp_path / "config.yaml", [photos], tmp_path / "data", pretrained=corrupt
    )
    daemon = start_daemon(config_path)
    status = daemon.wait_for(
        lambda: (s := daemon.status())["state"] == "model_error" and s, "the model error", 90
    )
    assert str(corrupt) in status["state_detail"]
    assert "restart wmpd" in status["state_detail"]
    assert status["model_ready"] is False
    assert "model" in daemon.log()
    assert str(corrupt) in daemon.log()
    time.sleep(0.5)
    assert daemon.alive()
    assert daemon.stop(signal.SIGINT) == (0, pytest.approx(0, abs=SIGTERM_EXIT_SECONDS))


def test_the_periodic_rescan_finds_what_no_watcher_reported(
    tmp_path: Path, start_daemon: DaemonFactory
) -> None:
    photos = tmp_path / "photos"
    write_photo(photos / "a.png", 1)
    # Polling so slow that it never looks again during the test: only the rescan can see.
    config_path = write_config(
        tmp_path / "config.yaml",
        [photos],
        tmp_path / "data",
        polling=True,
        poll_interval=3600,
        rescan_interval="1s",
    )
    daemon = start_daemon(config_path)
    daemon.wait_ready()
    daemon.wait_catalog(has_paths(photos / "a.png"), "the first scan")
    write_photo(photos / "b.png", 2)
    (photos / "a.png").unlink()
    daemon.wait_catalog(
        lambda v: set(v.paths) == {str(photos / "b.png")}, "the rescan's findings", 20
    )
    assert daemon.log().count("reconciled") >= 2
    code, seconds = daemon.stop()
    assert code == 0
    assert seconds < SIGTERM_EXIT_SECONDS


def test_too_few_inotify_watches_means_polling_that_root(
    tmp_path: Path, start_daemon: DaemonFactory
) -> None:
    big, small = tmp_path / "big", tmp_path / "small"
    for number in range(40):
        write_photo(big / f"album{number}" / "a.png", number)
    write_photo(small / "s.png", 100)
    limit = 12  # the config folder and `small` fit; `big` needs 41
    setup = f'echo {limit} > /proc/sys/user/max_inotify_watches && exec "$0" "$@"'
    prefix = ("unshare", "--user", "--map-root-user", "sh", "-c", setup)
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot lower the inotify limit here: {probe.stderr.strip()}")
    config_path = write_config(
        tmp_path / "config.yaml", [big, small], tmp_path / "data", poll_interval=0.3
    )
    daemon = start_daemon(config_path, prefix)
    status = daemon.wait_ready()
    roots = {r["path"]: r for r in status["roots"]}
    assert roots[str(small)]["state"] == "watching"
    assert roots[str(big)]["state"] == "polling"
    assert "sysctl fs.inotify.max_user_watches" in roots[str(big)]["detail"]
    assert any("max_user_watches" in w for w in status["warnings"])
    late = write_photo(big / "album3" / "late.png", 999)
    daemon.wait_catalog(has_paths(late), "a photo noticed by polling")

    # Running out later, as new folders appear: that root switches to polling too.
    for number in range(limit):
        (small / f"new{number}").mkdir()
    daemon.wait_for(lambda: _root_state(daemon, small) == "polling", "the second fallback")
    deep = write_photo(small / f"new{limit - 1}" / "deep.png", 1000)
    daemon.wait_catalog(has_paths(deep), "a photo in a folder inotify could not watch")
    code, _ = daemon.stop()
    assert code == 0
    check_consistent(daemon.config, [big, small])


# -- over HTTP, with polling -------------------------------------------------------------------


def test_http_status_and_search_while_indexing_by_polling(
    tmp_path: Path, start_daemon: DaemonFactory
) -> None:
    photos = tmp_path / "photos"
    for number in range(10):
        write_photo(photos / f"{number}.png", number)
    port = free_port()
    data_dir = photos / "wmpd-data"  # inside the folder: its thumbnails must not be indexed
    config_path = write_config(
        tmp_path / "config.yaml",
        [photos],
        data_dir,
        port=port,
        polling=True,
        poll_interval=0.3,
    )
    daemon = start_daemon(config_path)
    early = daemon.wait_for(lambda: daemon.get_json("/api/status"), "the HTTP status", 30)
    if not early["model_ready"]:  # searches wait for the model, and say so
        code, body = daemon.post_json("/api/search", {"path": str(photos / "0.png")})
        assert (code, body["error"]["code"]) == (503, "model_loading")
    daemon.wait_for(lambda: daemon.get_json("/api/status")["model_ready"], "the model", 90)
    status = daemon.wait_for(
        lambda: (s := daemon.get_json("/api/status"))["images"] == 10 and s, "the first scan"
    )
    assert status["roots"][0]["state"] == "polling"
    assert "watcher.polling" in status["roots"][0]["detail"]

    # Search without pause while a burst is indexed: every answer is whole.
    answers: list[tuple[int, Any]] = []
    searching = threading.Event()

    def search_continuously() -> None:
        while not searching.is_set():
            code, body = daemon.post_json("/api/search", {"path": str(photos / "0.png"), "k": 50})
            answers.append((code, body))

    searcher = threading.Thread(target=search_continuously, daemon=True)
    searcher.start()
    for number in range(60):
        write_photo(photos / "burst" / f"{number}.png", 100 + number)
    daemon.wait_for(lambda: daemon.get_json("/api/status")["images"] == 70, "the burst", 60)
    searching.set()
    searcher.join(10)
    assert len(answers) > 5
    for code, body in answers:
        assert code == 200, body
        assert all(Path(hit["path"]).exists() for hit in body["results"])
    assert answers[-1][1]["results"][0]["path"] == str(photos / "0.png")

    # Thumbnails land in the data directory, inside the watched folder, and stay out.
    image_id = answers[-1][1]["results"][0]["id"]
    assert daemon.get(f"/thumb/{image_id}").startswith(b"\xff\xd8")
    assert list((data_dir / "thumbnails").rglob("*.jpg"))
    # A photo written after the thumbnail is noticed no earlier and queued behind it.
    sentinel = write_photo(photos / "after-thumbnail.png", 999)
    daemon.wait_catalog(has_paths(sentinel), "a photo written after the thumbnail")
    assert not [p for p in daemon.catalog().paths if Path(p).is_relative_to(data_dir)]

    # A rename, noticed by polling, is a path update.
    (photos / "0.png").rename(photos / "zero.png")
    daemon.wait_for(
        lambda: daemon.post_json("/api/search", {"path": str(photos / "zero.png")})[0] == 200,
        "the renamed photo",
    )
    assert daemon.post_json("/api/search", {"path": str(photos / "0.png")})[0] == 404
    hits = daemon.get_json("/api/search", q="a photo", k=100)["results"]
    assert {hit["path"] for hit in hits} == set(photos_on_disk([photos], data_dir))
    assert image_id in {hit["id"] for hit in hits}

    code, seconds = daemon.stop()
    assert code == 0
    assert seconds < SIGTERM_EXIT_SECONDS
    check_consistent(daemon.config, [photos])


@pytest.mark.slow
def test_renaming_a_folder_of_a_thousand_photos_rewrites_paths_only(
    tmp_path: Path, start_daemon: DaemonFactory
) -> None:
    photos = tmp_path / "photos"
    for number in range(1000):
        write_photo(photos / "2023" / f"{number}.png", number, size=24)
    config_path = write_config(tmp_path / "config.yaml", [photos], tmp_path / "data", batch_size=64)
    daemon = start_daemon(config_path)
    daemon.wait_ready()
    daemon.wait_catalog(lambda v: len(v.paths) == 1000, "the folder indexed", 300)
    daemon.wait_idle()
    rows_before = path_rows(daemon)
    images_before = daemon.catalog().image_count
    renamed = time.monotonic()
    (photos / "2023").rename(photos / "2023 - Iceland")
    daemon.wait_catalog(
        has_paths(*(photos / "2023 - Iceland" / f"{n}.png" for n in range(1000))), "the rename"
    )
    seconds = time.monotonic() - renamed
    rows_after = path_rows(daemon)
    assert sorted(rows_after.values()) == sorted(rows_before.values())  # same rows, same images
    assert daemon.catalog().image_count == images_before
    assert seconds < 5.0
    code, _ = daemon.stop()
    assert code == 0
    check_consistent(daemon.config, [photos])
