"""Real watchdog observers on temporary folders: which Changes reach the queue.

Plus the buffer fed by a real observer (coalescing as it happens on a real disk), the
polling fallback, and inotify's watch limit, lowered for real inside a user namespace.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from wmpd.changes import ChangeBuffer
from wmpd.scan import RootRules
from wmpd.watcher import (
    INOTIFY_HINT,
    Change,
    RootWatch,
    stop_watch,
    watch_config_file,
    watch_root,
)

EXTENSIONS = frozenset({"jpg", "png"})
QUIET_SECONDS = 0.6  # no event for this long: the observer has said everything


def rules_for(root: Path, recursive: bool = True, exclude: tuple[str, ...] = ()) -> RootRules:
    return RootRules(root, recursive, EXTENSIONS, exclude)


@contextmanager
def watching(
    rules: RootRules, polling: bool = False, poll_interval: float = 0.2
) -> Iterator[tuple[RootWatch, queue.Queue[Change]]]:
    changes: queue.Queue[Change] = queue.Queue()
    watch = watch_root(rules, changes, force_polling=polling, poll_interval=poll_interval)
    try:
        yield watch, changes
    finally:
        stop_watch(watch)


def collect(
    changes: queue.Queue[Change],
    done: Callable[[list[Change]], bool] = lambda seen: False,
    timeout: float = 5.0,
) -> list[Change]:
    """Changes until `done` says so and the queue has been quiet a moment (or timeout)."""
    seen: list[Change] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            seen.append(changes.get(timeout=QUIET_SECONDS))
        except queue.Empty:
            if done(seen):
                return seen
    return seen


def has(kind: str, path: Path, dest: Path | None = None) -> Callable[[list[Change]], bool]:
    return lambda seen: Change(kind, path, dest) in seen  # type: ignore[arg-type]


def write(path: Path, data: bytes = b"\xff\xd8 not really a jpeg") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_create_modify_rename_delete(photos_dir: Path) -> None:
    photo = photos_dir / "a.jpg"
    with watching(rules_for(photos_dir)) as (watch, changes):
        assert not watch.polling
        write(photo)
        assert set(collect(changes, has("upsert", photo))) == {Change("upsert", photo)}
        with photo.open("ab") as handle:
            handle.write(b"more")
        assert set(collect(changes, has("upsert", photo))) == {Change("upsert", photo)}
        photo.rename(photos_dir / "b.jpg")
        moved = collect(changes, has("move", photo, photos_dir / "b.jpg"))
        assert moved == [Change("move", photo, photos_dir / "b.jpg")]
        (photos_dir / "b.jpg").unlink()
        deleted = collect(changes, has("delete", photos_dir / "b.jpg"))
        assert deleted == [Change("delete", photos_dir / "b.jpg")]


def test_a_directory_rename_is_one_move_however_many_files(photos_dir: Path) -> None:
    trip = photos_dir / "trip"
    for number in range(300):
        write(trip / "day" / f"{number}.jpg")
    with watching(rules_for(photos_dir)) as (_, changes):
        trip.rename(photos_dir / "2024 trip")
        seen = collect(changes, has("move_dir", trip, photos_dir / "2024 trip"))
    assert seen == [Change("move_dir", trip, photos_dir / "2024 trip")]


def test_a_directory_moved_in_from_outside_is_one_rescan(photos_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "card" / "DCIM"
    for number in range(50):
        write(outside / "sub" / f"{number}.jpg")
    with watching(rules_for(photos_dir)) as (_, changes):
        shutil.move(outside, photos_dir / "DCIM")
        seen = collect(changes, has("scan_dir", photos_dir / "DCIM"))
    assert seen == [Change("scan_dir", photos_dir / "DCIM")]


def test_a_directory_moved_out_is_one_deletion(photos_dir: Path, tmp_path: Path) -> None:
    write(photos_dir / "old" / "a.jpg")
    with watching(rules_for(photos_dir)) as (_, changes):
        shutil.move(photos_dir / "old", tmp_path / "old")
        seen = collect(changes, has("delete_dir", photos_dir / "old"))
    assert seen == [Change("delete_dir", photos_dir / "old")]


def test_a_new_directory_filled_at_once_is_rescanned(photos_dir: Path) -> None:
    with watching(rules_for(photos_dir)) as (_, changes):
        for number in range(20):  # files may land before the new directory is watched
            write(photos_dir / "new" / f"{number}.jpg")
        seen = collect(changes, has("scan_dir", photos_dir / "new"))
    assert Change("scan_dir", photos_dir / "new") in seen
    assert {c.kind for c in seen} <= {"scan_dir", "upsert"}


def test_excluded_and_unwanted_files_are_ignored(photos_dir: Path) -> None:
    rules = rules_for(photos_dir, exclude=(".thumbs", "drafts/*"))
    wanted = photos_dir / "keep.jpg"
    with watching(rules) as (_, changes):
        write(photos_dir / "notes.txt")
        write(photos_dir / ".thumbs" / "t.jpg")
        write(photos_dir / "drafts" / "d.jpg")
        write(photos_dir / "keep.jpg.part").rename(wanted)  # a download finishing
        seen = collect(changes, has("upsert", wanted))
    assert {c for c in seen if c.kind != "scan_dir"} == {Change("upsert", wanted)}
    # An excluded directory is not even looked into ("drafts/*" excludes what is inside).
    assert Change("scan_dir", photos_dir / ".thumbs") not in seen


def test_a_non_recursive_root_ignores_subfolders(photos_dir: Path) -> None:
    (photos_dir / "sub").mkdir()
    with watching(rules_for(photos_dir, recursive=False)) as (_, changes):
        write(photos_dir / "sub" / "deep.jpg")
        write(photos_dir / "top.jpg")
        seen = collect(changes, has("upsert", photos_dir / "top.jpg"))
    assert set(seen) == {Change("upsert", photos_dir / "top.jpg")}


def test_polling_notices_changes(photos_dir: Path) -> None:
    write(photos_dir / "before.jpg")
    with watching(rules_for(photos_dir), polling=True, poll_interval=0.2) as (watch, changes):
        assert watch.polling
        assert watch.detail is not None
        assert "watcher.polling" in watch.detail
        write(photos_dir / "new.jpg")
        (photos_dir / "before.jpg").rename(photos_dir / "after.jpg")
        seen = collect(changes, lambda s: len(set(s)) >= 2)
    assert Change("upsert", photos_dir / "new.jpg") in seen
    assert Change("move", photos_dir / "before.jpg", photos_dir / "after.jpg") in seen


def test_real_events_coalesce_into_one_upsert_once_settled(photos_dir: Path) -> None:
    buffer = ChangeBuffer(settle_seconds=0.3)
    photo = photos_dir / "growing.jpg"
    blink = photos_dir / "blink.jpg"
    with watching(rules_for(photos_dir)) as (_, changes):
        with photo.open("wb") as handle:
            for _ in range(5):  # create → modify → modify ...
                handle.write(b"x" * 1000)
                handle.flush()
                time.sleep(0.05)
        write(blink).unlink()  # create → delete
        for change in collect(changes, has("delete", blink)):
            buffer.add(change, time.monotonic())
    time.sleep(0.35)
    work = buffer.take_ready(time.monotonic())
    assert [path for path, _ in work.upserts] == [photo]
    assert work.deletes == [blink]


def test_the_config_file_is_noticed_when_an_editor_replaces_it(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("folders: []\n")
    seen: queue.Queue[Path] = queue.Queue()
    observer = watch_config_file(config, seen)
    try:
        write(tmp_path / "other.txt")
        (tmp_path / ".config.yaml.swp").write_text("folders: [x]\n")
        os.replace(tmp_path / ".config.yaml.swp", config)
        assert seen.get(timeout=5) == config.resolve()
    finally:
        observer.stop()


# -- the inotify watch limit, lowered for real in a user namespace -------------------------

LIMIT_SCRIPT = """
import json, queue, sys, time
from pathlib import Path
from wmpd.scan import RootRules
from wmpd.watcher import WatchLimitMonitor, stop_watch, watch_root
big, small = Path(sys.argv[1]), Path(sys.argv[2])
rules = lambda root: RootRules(root, True, frozenset({"jpg"}), ())
monitor = WatchLimitMonitor()
monitor.install()
changes = queue.Queue()
big_watch = watch_root(rules(big), changes, False, 0.2)
small_watch = watch_root(rules(small), changes, False, 0.2)
(big / "late.jpg").write_bytes(b"x")
for number in range(20):  # more directories than watches left
    (small / f"new{number}").mkdir()
time.sleep(1.0)
seen = []
while not changes.empty():
    change = changes.get()
    seen.append([change.kind, str(change.path)])
print(json.dumps({
    "big": [big_watch.polling, big_watch.detail],
    "small": [small_watch.polling, small_watch.detail],
    "lost": sorted(str(p) for p in monitor.take()),
    "seen": seen,
}))
stop_watch(big_watch); stop_watch(small_watch)
"""


def run_with_watch_limit(limit: int, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run python code with at most `limit` inotify watches (a private user namespace)."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    setup = f'echo {limit} > /proc/sys/user/max_inotify_watches && exec "$0" "$@"'
    command = ["unshare", "--user", "--map-root-user", "sh", "-c", setup]
    probe = subprocess.run([*command, "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot lower the inotify limit here: {probe.stderr.strip()}")
    return subprocess.run(
        [*command, sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_running_out_of_inotify_watches_falls_back_to_polling(tmp_path: Path) -> None:
    big, small = tmp_path / "big", tmp_path / "small"
    for number in range(30):
        (big / f"album{number}").mkdir(parents=True)
    small.mkdir()
    result = run_with_watch_limit(10, LIMIT_SCRIPT, str(big), str(small))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    # The big root could not be watched at all: it polls, and says how to fix it.
    assert report["big"] == [True, INOTIFY_HINT.format(root=big)]
    assert "fs.inotify.max_user_watches" in report["big"][1]
    assert ["upsert", str(big / "late.jpg")] in report["seen"]  # noticed by polling
    # The small one was watched, then ran out later: the monitor reports what was lost.
    assert report["small"] == [False, None]
    assert report["lost"], result.stderr
    assert all(Path(p).parent == small for p in report["lost"])


@pytest.mark.parametrize("polling", [False, True], ids=["inotify", "polling"])
def test_a_watch_knows_when_its_root_is_gone(tmp_path: Path, polling: bool) -> None:
    root = tmp_path / "card"
    write(root / "a.jpg")
    with watching(rules_for(root), polling=polling) as (watch, changes):
        assert watch.alive()
        shutil.rmtree(root)
        seen = collect(changes, has("delete_dir", root))
        assert Change("delete_dir", root) in seen
        assert not watch.alive()  # the observer thread lives on; its emitter stopped
