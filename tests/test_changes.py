"""The settle/coalesce buffer, against a simple model of a disk and a catalog.

The disk here is a dict (the buffer's one outside dependency is `stat`); the events are
the ones wmpd's watcher emits for each operation (tests/test_watcher.py checks those
against real watchdog). Applying what the buffer releases the way the worker does must
leave the model catalog equal to the disk, whatever happened in whatever order.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from wmpd.changes import ChangeBuffer, ReadyWork, is_under, rebase
from wmpd.scan import Fingerprint
from wmpd.watcher import Change

ROOT = Path("/photos")
SETTLE = 1.0
DIRS = [ROOT / name for name in ("a", "b", "c")]
NAMES = ["x.jpg", "y.jpg", "z.jpg"]
FILES = [ROOT / n for n in NAMES] + [d / n for d in DIRS for n in NAMES]


@dataclass
class Disk:
    """Files as (size, version): every write makes a new version, so a new fingerprint."""

    files: dict[Path, Fingerprint] = field(default_factory=dict)
    dirs: set[Path] = field(default_factory=set)
    version: int = 0

    def stat(self, path: Path) -> Fingerprint | None:
        return self.files.get(path)

    def write(self, path: Path, size: int) -> None:
        self.version += 1
        self.files[path] = Fingerprint(size, self.version)


def apply_like_the_worker(
    work: ReadyWork, catalog: dict[Path, Fingerprint], disk: Disk, buffer: ChangeBuffer, now: float
) -> None:
    """What the worker does with released work, with the catalog as a dict."""
    for move in work.moves:
        assert move.dest is not None
        if move.kind == "move_dir":
            for path in [p for p in catalog if is_under(p, move.path)]:
                catalog[rebase(path, move.path, move.dest)] = catalog.pop(path)
        elif move.path in catalog:
            catalog[move.dest] = catalog.pop(move.path)
        elif move.dest in disk.files:  # never indexed under its old name: read it now
            catalog[move.dest] = disk.files[move.dest]
    for path in work.deletes:
        catalog.pop(path, None)
    for directory in work.rescans:
        for path in [p for p in catalog if is_under(p, directory) and p not in disk.files]:
            del catalog[path]
        for path, found in disk.files.items():
            if is_under(path, directory) and catalog.get(path) != found:
                buffer.add_found(path, found, now)
    for path, found in work.upserts:
        assert disk.files.get(path) == found, "an upsert is released only for what is on disk"
        catalog[path] = found


def check_release(work: ReadyWork) -> None:
    paths = [p for p, _ in work.upserts]
    assert len(paths) == len(set(paths)), "one upsert per path per release"


# -- operations: each changes the disk and returns the events the watcher would send ------


def op_write(disk: Disk, path: Path, size: int, repeats: int) -> list[Change]:
    if path.parent != ROOT and path.parent not in disk.dirs:
        return []
    disk.write(path, size)
    # created, modified, closed: the watcher sends one upsert for each
    return [Change("upsert", path)] * repeats


def op_delete(disk: Disk, path: Path) -> list[Change]:
    if disk.files.pop(path, None) is None:
        return []
    return [Change("delete", path)]


def op_move(disk: Disk, src: Path, dest: Path) -> list[Change]:
    if src not in disk.files or src == dest:
        return []
    if dest.parent != ROOT and dest.parent not in disk.dirs:
        return []
    disk.files[dest] = disk.files.pop(src)  # a rename keeps size and mtime
    return [Change("move", src, dest)]


def op_move_dir(disk: Disk, src: Path, dest: Path) -> list[Change]:
    if src not in disk.dirs or dest in disk.dirs or src == dest:
        return []
    disk.dirs.remove(src)
    disk.dirs.add(dest)
    for path in [p for p in disk.files if is_under(p, src)]:
        disk.files[rebase(path, src, dest)] = disk.files.pop(path)
    return [Change("move_dir", src, dest)]


def op_remove_dir(disk: Disk, directory: Path) -> list[Change]:
    if directory not in disk.dirs:
        return []
    disk.dirs.remove(directory)
    gone = [p for p in disk.files if is_under(p, directory)]
    for path in gone:
        del disk.files[path]
    return [Change("delete", p) for p in gone] + [Change("delete_dir", directory)]


def op_dir_moved_in(disk: Disk, directory: Path, sizes: list[int]) -> list[Change]:
    """A folder full of photos moved in from outside: one event for the folder only."""
    if directory in disk.dirs:
        return []
    disk.dirs.add(directory)
    for name, size in zip(NAMES, sizes, strict=False):
        disk.write(directory / name, size)
    return [Change("scan_dir", directory)]


def op_mkdir(disk: Disk, directory: Path) -> list[Change]:
    if directory in disk.dirs:
        return []
    disk.dirs.add(directory)
    return [Change("scan_dir", directory)]


files = st.sampled_from(FILES)
dirs = st.sampled_from(DIRS)
operations = st.one_of(
    st.tuples(st.just("write"), files, st.integers(1, 3), st.integers(1, 3)),
    st.tuples(st.just("delete"), files),
    st.tuples(st.just("move"), files, files),
    st.tuples(st.just("move_dir"), dirs, dirs),
    st.tuples(st.just("remove_dir"), dirs),
    st.tuples(st.just("mkdir"), dirs),
    st.tuples(st.just("dir_moved_in"), dirs, st.lists(st.integers(1, 3), max_size=3)),
    st.tuples(st.just("wait"), st.sampled_from([0.1, 0.4, 1.2])),
)


def run_operation(disk: Disk, op: tuple[object, ...]) -> list[Change]:
    name, *args = op
    if name == "wait":
        return []
    handlers = {
        "write": op_write,
        "delete": op_delete,
        "move": op_move,
        "move_dir": op_move_dir,
        "remove_dir": op_remove_dir,
        "dir_moved_in": op_dir_moved_in,
        "mkdir": op_mkdir,
    }
    return handlers[str(name)](disk, *args)  # type: ignore[operator]


def initial_disk() -> Disk:
    disk = Disk(dirs={DIRS[0], DIRS[1]})
    for path in (ROOT / "x.jpg", DIRS[0] / "x.jpg", DIRS[0] / "y.jpg", DIRS[1] / "z.jpg"):
        disk.write(path, 1)
    return disk


def flush(buffer: ChangeBuffer, catalog: dict[Path, Fingerprint], disk: Disk, now: float) -> float:
    """Let everything settle and apply it (rescans feed files back, so loop)."""
    for _ in range(10):
        now += SETTLE + 0.01
        work = buffer.take_ready(now)
        check_release(work)
        apply_like_the_worker(work, catalog, disk, buffer, now)
        if not work and not len(buffer):
            return now
    raise AssertionError("the buffer never emptied")


@settings(max_examples=400, deadline=None)
@given(st.lists(operations, max_size=40), st.lists(st.booleans(), min_size=40, max_size=40))
def test_whatever_happens_the_catalog_ends_equal_to_the_disk(
    ops: list[tuple[object, ...]], takes: list[bool]
) -> None:
    disk = initial_disk()
    catalog = dict(disk.files)  # indexed before the daemon started watching
    buffer = ChangeBuffer(SETTLE, stat=disk.stat)
    now = 0.0
    for op, take in zip(ops, takes, strict=False):
        if op[0] == "wait":
            now += float(op[1])  # type: ignore[arg-type]
        for change in run_operation(disk, op):
            buffer.add(change, now)
        if take:  # the worker's tick, at arbitrary moments
            check_next_due_is_never_late(buffer, now)
            work = buffer.take_ready(now)
            check_release(work)
            apply_like_the_worker(work, catalog, disk, buffer, now)
    flush(buffer, catalog, disk, now)
    assert catalog == disk.files


def check_next_due_is_never_late(buffer: ChangeBuffer, now: float) -> None:
    """Nothing may become ready before the moment next_due() names (the worker sleeps)."""
    due = buffer.next_due(now)
    if due > 0.01:
        earlier = copy.deepcopy(buffer).take_ready(now + due * 0.5)
        assert not earlier, f"ready at +{due * 0.5:.2f}s but next_due said +{due:.2f}s"


# -- the promises, one by one -------------------------------------------------------------


def make(disk: Disk) -> ChangeBuffer:
    return ChangeBuffer(SETTLE, stat=disk.stat)


def test_create_modify_modify_is_one_upsert() -> None:
    disk = Disk()
    buffer = make(disk)
    path = ROOT / "new.jpg"
    for at in (0.0, 0.2, 0.4):
        disk.write(path, 5)
        buffer.add(Change("upsert", path), at)
    assert not buffer.take_ready(1.0)  # still within the settle window of the last write
    work = buffer.take_ready(1.5)
    assert work.upserts == [(path, disk.files[path])]
    assert not work.moves
    assert not work.deletes
    assert not work.rescans
    assert not buffer.take_ready(10.0)


def test_create_then_delete_indexes_nothing() -> None:
    disk = Disk()
    buffer = make(disk)
    path = ROOT / "blink.jpg"
    disk.write(path, 5)
    buffer.add(Change("upsert", path), 0.0)
    del disk.files[path]
    buffer.add(Change("delete", path), 0.1)
    work = buffer.take_ready(5.0)
    assert work.upserts == []
    assert work.deletes == [path]  # a no-op for a path the catalog never had


def test_a_rename_is_a_path_update_released_at_once() -> None:
    disk = Disk()
    disk.write(ROOT / "old.jpg", 5)
    buffer = make(disk)
    disk.files[ROOT / "new.jpg"] = disk.files.pop(ROOT / "old.jpg")
    buffer.add(Change("move", ROOT / "old.jpg", ROOT / "new.jpg"), 0.0)
    assert buffer.next_due(0.0) == 0.0
    work = buffer.take_ready(0.0)
    assert work.moves == [Change("move", ROOT / "old.jpg", ROOT / "new.jpg")]
    assert not work.upserts
    assert not work.deletes


def test_a_directory_rename_with_a_thousand_files_is_one_move() -> None:
    disk = Disk()
    for number in range(1000):
        disk.write(ROOT / "trip" / f"{number}.jpg", 5)
    buffer = make(disk)
    buffer.add(Change("move_dir", ROOT / "trip", ROOT / "2024 trip"), 0.0)
    work = buffer.take_ready(0.0)
    assert work.moves == [Change("move_dir", ROOT / "trip", ROOT / "2024 trip")]
    assert not work.upserts
    assert not work.deletes
    assert not work.rescans
    assert len(buffer) == 0


def test_pending_work_follows_a_directory_rename() -> None:
    disk = Disk()
    buffer = make(disk)
    disk.write(ROOT / "d" / "fresh.jpg", 5)
    buffer.add(Change("upsert", ROOT / "d" / "fresh.jpg"), 0.0)
    disk.files[ROOT / "e" / "fresh.jpg"] = disk.files.pop(ROOT / "d" / "fresh.jpg")
    buffer.add(Change("move_dir", ROOT / "d", ROOT / "e"), 0.1)
    assert buffer.take_ready(0.1).moves
    work = buffer.take_ready(2.0)
    assert [p for p, _ in work.upserts] == [ROOT / "e" / "fresh.jpg"]


def test_a_file_still_growing_is_not_released() -> None:
    disk = Disk()
    buffer = make(disk)
    path = ROOT / "copying.jpg"
    disk.write(path, 1)
    buffer.add(Change("upsert", path), 0.0)
    # The copy goes on without events reaching us (polling, or a slow network share).
    for at in (1.1, 2.2, 3.3):
        disk.write(path, int(at * 10))
        assert not buffer.take_ready(at).upserts
    assert buffer.take_ready(4.4).upserts == [(path, disk.files[path])]


def test_one_rescan_covers_the_directories_below_it() -> None:
    disk = Disk()
    buffer = make(disk)
    buffer.add(Change("scan_dir", ROOT / "new" / "sub"), 0.0)
    buffer.add(Change("scan_dir", ROOT / "new"), 0.0)
    buffer.add(Change("scan_dir", ROOT / "new" / "sub" / "deeper"), 0.1)
    assert buffer.take_ready(5.0).rescans == [ROOT / "new"]


def test_a_root_going_offline_drops_its_pending_work() -> None:
    disk = Disk()
    buffer = make(disk)
    disk.write(ROOT / "a.jpg", 1)
    buffer.add(Change("upsert", ROOT / "a.jpg"), 0.0)
    buffer.add(Change("delete", ROOT / "b.jpg"), 0.0)
    buffer.add(Change("upsert", Path("/elsewhere/c.jpg")), 0.0)
    buffer.discard_under(ROOT)
    assert len(buffer) == 1


def test_next_due_names_the_moment_a_file_settles() -> None:
    disk = Disk()
    buffer = make(disk)
    disk.write(ROOT / "a.jpg", 1)
    buffer.add(Change("upsert", ROOT / "a.jpg"), 10.0)
    assert buffer.next_due(10.0) <= SETTLE
    buffer.take_ready(10.2)  # nothing yet; the exact moment is now known
    assert abs(buffer.next_due(10.2) - (SETTLE - 0.2)) < 1e-9
    assert buffer.take_ready(10.0 + SETTLE).upserts
