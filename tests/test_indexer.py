"""Indexing real folders: what is added, moved, removed, failed and embedded, run after run.

Every run goes through `wmpd.library.run_index` (the wiring `wmpd index` uses) on real
files; after each, the saved FAISS index must match the catalog exactly, which proves
that the index was mirrored correctly during the run (a mismatch would need a rebuild).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests import images
from tests.conftest import TINY_CONFIG, ConfigFactory
from wmpd.catalog import Catalog
from wmpd.config import Config
from wmpd.datadir import DataDir, acquire_writer_lock, index_stamp, lock_holder
from wmpd.embedder import Embedder, model_id_for
from wmpd.errors import CatalogError, IndexLockedError
from wmpd.indexer import Indexer, IndexStats
from wmpd.library import catalog_status, run_index
from wmpd.pipeline import Candidate
from wmpd.repair import repair_data_dir
from wmpd.scan import fingerprint
from wmpd.vectors import INDEX_FILE_NAME, VectorIndex

DIM = json.loads(TINY_CONFIG.read_text())["embed_dim"]
GOOD = 18


@dataclass
class State:
    """The catalog and the saved index after a run, checked against each other."""

    paths: dict[str, int]  # path → image id
    failures: dict[str, str]  # path → reason
    visible: set[int]
    vectors: dict[int, bytes]  # image id → stored vector bytes


def index(config: Config) -> IndexStats:
    return run_index(config).stats


def state_of(config: Config) -> State:
    data_dir = DataDir(config.index.data_dir)
    model_id = model_id_for(config.model)
    catalog = Catalog(data_dir.catalog_path, readonly=True)
    try:
        paths: dict[str, int] = {}
        failures: dict[str, str] = {}
        for root in catalog.roots():
            paths.update({p: row.image_id for p, row in catalog.paths_of_root(root.id).items()})
            failures.update({p: f.reason for p, f in catalog.failures_of_root(root.id).items()})
        visible = catalog.visible_ids(model_id)
        saved = VectorIndex.load(data_dir.path, index_stamp(catalog, model_id), DIM)
        assert saved is not None, "the saved index does not match the catalog"
        assert saved.ids() == visible
        assert set(paths.values()) == visible  # no ghosts, no invisible pictures
        vectors = {}
        for image_id in visible:
            stored = catalog.vector(image_id)
            assert stored is not None
            vectors[image_id] = stored.tobytes()
        return State(paths, failures, visible, vectors)
    finally:
        catalog.close()


def stats(**counts: int) -> IndexStats:
    return IndexStats(**counts)


@pytest.fixture
def folder(photos_dir: Path) -> images.MixedFolder:
    return images.make_mixed_folder(photos_dir, GOOD)


@pytest.fixture
def config(make_config: ConfigFactory, photos_dir: Path) -> Config:
    return make_config(photos_dir)


@pytest.fixture
def indexed(folder: images.MixedFolder, config: Config) -> State:
    """The folder indexed once."""
    index(config)
    return state_of(config)


# -- first and second runs ------------------------------------------------------------------


def test_the_first_run_indexes_every_good_file_and_records_every_broken_one(
    make_config: ConfigFactory, photos_dir: Path
) -> None:
    folder = images.make_mixed_folder(photos_dir, 60, broken_each=2)
    config = make_config(photos_dir)

    result = run_index(config)

    broken = len(folder.broken)
    assert result.stats == stats(added=60, failed=broken, embedded=60)
    assert result.offline == {}
    after = state_of(config)
    assert set(after.paths) == {str(p) for p in folder.good}
    assert len(after.visible) == 60
    assert after.failures == {str(p): reason for p, reason in folder.broken.items()}
    catalog = Catalog(DataDir(config.index.data_dir).catalog_path, readonly=True)
    try:
        for path in folder.good:
            image = catalog.image(after.paths[str(path)])
            assert image is not None
            # Every kind is stored upright (EXIF applied) and named by its container.
            assert (image.width, image.height) == (images.DEFAULT_SIDE, 36), path.name
            assert image.format == _FORMAT_OF_SUFFIX[path.suffix], path.name
    finally:
        catalog.close()


_FORMAT_OF_SUFFIX = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".gif": "GIF",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".heic": "HEIF",
}


def test_a_second_run_finds_everything_unchanged(
    folder: images.MixedFolder, config: Config
) -> None:
    index(config)
    before = state_of(config)

    assert index(config) == stats(unchanged=len(folder.all_files))

    assert state_of(config) == before


def test_status_reads_the_counts_from_the_files(
    folder: images.MixedFolder, config: Config, indexed: State
) -> None:
    status = catalog_status(config)

    assert status["images"] == GOOD
    assert status["paths"] == GOOD
    assert status["failed"] == len(folder.broken)
    assert status["index_consistent"] is True
    assert status["index_size"] == GOOD
    assert status["writer"] is None
    assert sum(status["failures"].values()) == len(folder.broken)


# -- moves, copies, deletions, changes ------------------------------------------------------


def test_renaming_a_file_and_a_folder_moves_them_without_embedding(
    folder: images.MixedFolder, config: Config, indexed: State, photos_dir: Path
) -> None:
    renamed = folder.good[0]
    renamed.rename(renamed.with_name("renamed.jpg"))
    in_trips = [p for p in folder.good if p.parent == photos_dir / "trips" / "2021"]
    (photos_dir / "trips" / "2021").rename(photos_dir / "trips" / "twenty-one")

    result = index(config)

    assert result == stats(
        moved=1 + len(in_trips),
        unchanged=len(folder.all_files) - 1 - len(in_trips),
    )
    after = state_of(config)
    assert after.paths[str(renamed.with_name("renamed.jpg"))] == indexed.paths[str(renamed)]
    for old in in_trips:
        new = photos_dir / "trips" / "twenty-one" / old.name
        assert after.paths[str(new)] == indexed.paths[str(old)]
        assert str(old) not in after.paths
    assert after.vectors == indexed.vectors  # same images, same vectors, nothing re-embedded


def test_a_copy_is_added_without_embedding(
    folder: images.MixedFolder, config: Config, indexed: State, photos_dir: Path
) -> None:
    copy = photos_dir / "copies" / "copy.jpg"
    copy.parent.mkdir()
    shutil.copyfile(folder.good[3], copy)

    assert index(config) == stats(added=1, unchanged=len(folder.all_files))

    after = state_of(config)
    assert after.paths[str(copy)] == indexed.paths[str(folder.good[3])]
    assert after.visible == indexed.visible


def test_a_deleted_file_is_removed_and_leaves_the_index(
    folder: images.MixedFolder, config: Config, indexed: State
) -> None:
    gone = folder.good[5]
    gone.unlink()

    assert index(config) == stats(removed=1, unchanged=len(folder.all_files) - 1)

    after = state_of(config)
    assert str(gone) not in after.paths
    assert after.visible == indexed.visible - {indexed.paths[str(gone)]}


def test_changed_content_is_embedded_again_and_the_old_vector_leaves(
    folder: images.MixedFolder, config: Config, indexed: State
) -> None:
    changed = folder.good[1]
    images.write_good(changed, "png-rgb", seed=500)  # new pixels under the old name

    result = index(config)

    assert result.embedded == 1
    assert (result.moved, result.removed, result.failed) == (0, 0, 0)
    after = state_of(config)
    old_id, new_id = indexed.paths[str(changed)], after.paths[str(changed)]
    assert new_id != old_id
    assert after.visible == (indexed.visible - {old_id}) | {new_id}


def test_touching_a_file_without_changing_it_embeds_nothing(
    folder: images.MixedFolder, config: Config, indexed: State
) -> None:
    touched = folder.good[2]
    os.utime(touched, ns=(time.time_ns(), time.time_ns() + 5_000_000_000))

    assert index(config) == stats(unchanged=len(folder.all_files))
    assert index(config) == stats(unchanged=len(folder.all_files))  # new mtime remembered
    assert state_of(config) == indexed


def test_two_new_copies_in_one_run_are_one_image_embedded_once(
    folder: images.MixedFolder, config: Config, indexed: State, photos_dir: Path
) -> None:
    data = images.encode_good("jpeg", seed=321)
    (photos_dir / "new-a.jpg").write_bytes(data)
    (photos_dir / "new-b.jpg").write_bytes(data)

    assert index(config) == stats(added=2, embedded=1, unchanged=len(folder.all_files))

    after = state_of(config)
    assert after.paths[str(photos_dir / "new-a.jpg")] == after.paths[str(photos_dir / "new-b.jpg")]
    assert len(after.visible) == GOOD + 1


def test_content_that_comes_back_is_adopted_not_embedded_again(
    folder: images.MixedFolder, config: Config, indexed: State
) -> None:
    photo = folder.good[4]
    data = photo.read_bytes()
    photo.unlink()
    index(config)
    assert indexed.paths[str(photo)] not in state_of(config).visible

    photo.write_bytes(data)  # an undo

    assert index(config) == stats(added=1, unchanged=len(folder.all_files) - 1)
    after = state_of(config)
    assert after.paths[str(photo)] == indexed.paths[str(photo)]
    assert after.vectors == indexed.vectors


# -- failures -------------------------------------------------------------------------------


def test_a_failed_file_is_not_retried_until_it_changes_then_succeeds(
    folder: images.MixedFolder, config: Config, indexed: State
) -> None:
    broken = next(p for p, reason in folder.broken.items() if reason == "truncated")

    assert index(config) == stats(unchanged=len(folder.all_files))
    assert state_of(config).failures[str(broken)] == "truncated"

    images.write_good(broken, "jpeg", seed=777)  # the copy finished / the file was repaired

    assert index(config) == stats(added=1, embedded=1, unchanged=len(folder.all_files) - 1)
    after = state_of(config)
    assert str(broken) not in after.failures
    assert str(broken) in after.paths


def test_a_failed_file_that_changes_but_stays_broken_is_retried_and_recorded_again(
    folder: images.MixedFolder, config: Config, indexed: State
) -> None:
    broken = next(p for p, reason in folder.broken.items() if reason == "empty")
    broken.write_bytes(b"still not a picture")

    assert index(config) == stats(failed=1, unchanged=len(folder.all_files) - 1)
    assert state_of(config).failures[str(broken)] == "corrupt"


def test_a_good_file_that_turns_bad_leaves_the_index_and_is_recorded(
    folder: images.MixedFolder, config: Config, indexed: State
) -> None:
    spoiled = folder.good[6]
    spoiled.write_bytes(spoiled.read_bytes()[:100])

    assert index(config) == stats(failed=1, unchanged=len(folder.all_files) - 1)

    after = state_of(config)
    assert str(spoiled) not in after.paths
    assert after.failures[str(spoiled)] == "truncated"
    assert indexed.paths[str(spoiled)] not in after.visible


def test_deleting_a_broken_file_forgets_its_failure(
    folder: images.MixedFolder, config: Config, indexed: State
) -> None:
    broken = next(iter(folder.broken))
    broken.unlink()

    result = index(config)

    assert result.failed == 0
    assert str(broken) not in state_of(config).failures


def test_a_file_name_that_is_not_utf8_does_not_stop_the_run(
    folder: images.MixedFolder, config: Config, photos_dir: Path
) -> None:
    with open(os.path.join(os.fsencode(photos_dir), b"Sch\xf6n.jpg"), "wb") as latin1_name:
        latin1_name.write(images.encode_good("jpeg", seed=400))

    result = index(config)

    assert result == stats(added=GOOD, failed=len(folder.broken), embedded=GOOD)
    assert set(state_of(config).paths) == {str(p) for p in folder.good}


def test_the_configured_limits_refuse_big_files_and_big_pictures(
    make_config: ConfigFactory, photos_dir: Path
) -> None:
    small = images.write_good(photos_dir / "small.png", "png-rgb", seed=1, side=48)
    wide = images.write_good(photos_dir / "wide.png", "png-rgb", seed=2, side=200)
    heavy = images.write_good(photos_dir / "heavy.bmp", "bmp", seed=3, side=48)
    limits = "limits:\n  max_file_bytes: 4000\n  max_image_pixels: 5000\n"
    config = make_config(photos_dir, extra=limits)

    assert index(config) == stats(added=1, failed=2, embedded=1)

    after = state_of(config)
    assert set(after.paths) == {str(small)}
    assert after.failures == {str(wide): "too_many_pixels", str(heavy): "too_large"}


# -- roots ----------------------------------------------------------------------------------


def test_a_missing_root_is_offline_and_keeps_its_pictures(
    folder: images.MixedFolder, config: Config, indexed: State, photos_dir: Path, tmp_path: Path
) -> None:
    photos_dir.rename(tmp_path / "unplugged")

    result = run_index(config)

    assert str(photos_dir) in result.offline
    assert "does not exist" in result.offline[str(photos_dir)]
    assert result.stats == stats()
    assert state_of(config) == indexed
    roots = catalog_status(config)["roots"]
    assert [r["state"] for r in roots] == ["offline"]

    (tmp_path / "unplugged").rename(photos_dir)  # plugged in again
    assert index(config) == stats(unchanged=len(folder.all_files))
    assert [r["state"] for r in catalog_status(config)["roots"]] == ["online"]


def test_an_empty_mount_point_is_offline_not_a_mass_delete(
    folder: images.MixedFolder, config: Config, indexed: State, photos_dir: Path, tmp_path: Path
) -> None:
    photos_dir.rename(tmp_path / "real-disk")
    photos_dir.mkdir()  # the empty directory a disk is mounted on

    result = run_index(config)

    assert "empty" in result.offline[str(photos_dir)]
    assert state_of(config) == indexed


def test_a_folder_taken_out_of_the_config_is_forgotten(
    make_config: ConfigFactory, photos_dir: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    kept = [images.write_good(other / f"o{n}.jpg", "jpeg", 200 + n) for n in range(3)]
    gone = [images.write_good(photos_dir / f"p{n}.jpg", "jpeg", n) for n in range(4)]
    index(make_config(photos_dir, other))

    config = make_config(other)
    assert index(config) == stats(unchanged=3)

    after = state_of(config)
    assert set(after.paths) == {str(p) for p in kept}
    assert len(after.visible) == 3
    assert all(str(p) not in after.paths for p in gone)


def test_excluding_a_folder_removes_its_files(
    make_config: ConfigFactory, folder: images.MixedFolder, photos_dir: Path
) -> None:
    index(make_config(photos_dir))
    trips = [p for p in folder.good if "trips" in p.parts]

    config = make_config(photos_dir, extra='exclude: ["trips"]\n')
    result = index(config)

    assert result.removed == len(trips)
    assert all(str(p) not in state_of(config).paths for p in trips)


def test_a_corrupt_catalog_fails_the_run_and_frees_the_lock_for_repair(
    folder: images.MixedFolder, config: Config, indexed: State
) -> None:
    data_dir = DataDir(config.index.data_dir)
    for suffix in ("-wal", "-shm"):
        Path(f"{data_dir.catalog_path}{suffix}").unlink(missing_ok=True)
    data_dir.catalog_path.write_bytes(b"not sqlite " * 500)

    with pytest.raises(CatalogError, match="wmpd repair") as caught:
        run_index(config)

    # The caller still holds the error, and with it the failed call's frames, while it
    # repairs in the same process: the lock must not live on in those frames.
    assert lock_holder(data_dir) is None
    lines = repair_data_dir(data_dir.path)
    assert any("damaged" in line for line in lines)
    assert str(data_dir.catalog_path) in str(caught.value)
    assert index(config).embedded == GOOD


# -- the vector index is derived: rebuilt, never re-embedded --------------------------------


@pytest.mark.parametrize("damage", ["deleted", "garbage"])
def test_a_lost_index_file_is_rebuilt_from_the_catalog_without_embedding(
    folder: images.MixedFolder, config: Config, indexed: State, damage: str
) -> None:
    index_file = DataDir(config.index.data_dir).path / INDEX_FILE_NAME
    if damage == "deleted":
        index_file.unlink()
    else:
        index_file.write_bytes(b"garbage" * 100)
    assert catalog_status(config)["index_consistent"] is False

    assert index(config) == stats(unchanged=len(folder.all_files))

    assert state_of(config) == indexed
    assert catalog_status(config)["index_consistent"] is True


def test_a_retrained_checkpoint_re_embeds_everything(
    make_config: ConfigFactory,
    folder: images.MixedFolder,
    photos_dir: Path,
    tmp_path: Path,
    tiny_weights: Path,
) -> None:
    index(make_config(photos_dir))
    before = state_of(make_config(photos_dir))
    retrained = tmp_path / "retrained.pt"
    state = torch.load(tiny_weights, map_location="cpu", weights_only=True)
    state["visual.proj"] = state["visual.proj"] * 1.5 + 0.01
    torch.save(state, retrained)
    base = make_config(photos_dir)
    config = replace(base, model=replace(base.model, pretrained=str(retrained)))

    assert catalog_status(config)["stale_vectors"] == GOOD
    result = index(config)

    assert result.embedded == GOOD
    assert result.unchanged == len(folder.all_files)  # each path still has its image
    after = state_of(config)
    assert after.paths == before.paths  # same content → same image rows, new vectors
    assert all(after.vectors[i] != before.vectors[i] for i in after.visible)
    assert catalog_status(config)["stale_vectors"] == 0


# -- moves reported by the watcher (Indexer.move) -------------------------------------------


@pytest.fixture
def live(config: Config, indexed: State) -> Iterator[Indexer]:
    """An indexer over the indexed folder, as the daemon's worker holds it."""
    data_dir = DataDir(config.index.data_dir)
    catalog = Catalog(data_dir.catalog_path)
    embedder = Embedder(config.model)
    embedder.load()
    vectors = VectorIndex.load(data_dir.path, index_stamp(catalog, embedder.model_id), DIM)
    assert vectors is not None
    indexer = Indexer(catalog, vectors, embedder, config)
    yield indexer
    indexer.close()
    catalog.close()


def test_a_watched_file_move_relinks_without_embedding(
    live: Indexer, folder: images.MixedFolder, indexed: State
) -> None:
    old = folder.good[0]
    new = old.with_name("moved.jpg")
    old.rename(new)

    assert live.move(old, new, live.catalog.ensure_root(str(folder.root)), is_dir=False) == 1

    assert live.catalog.path_row(str(new)) is not None
    assert live.catalog.path_row(str(old)) is None
    assert live.vectors.ids() == indexed.visible


def test_a_watched_move_over_another_file_drops_the_replaced_picture(
    live: Indexer, folder: images.MixedFolder, indexed: State
) -> None:
    mover, victim = folder.good[0], folder.good[3]
    mover.replace(victim)
    root_id = live.catalog.ensure_root(str(folder.root))

    assert live.move(mover, victim, root_id, is_dir=False) == 1

    victim_id = indexed.paths[str(victim)]
    assert live.vectors.ids() == indexed.visible - {victim_id}
    assert live.catalog.visible_ids(live.embedder.model_id) == indexed.visible - {victim_id}


def test_a_watched_folder_move_relinks_every_file_under_it(
    live: Indexer, folder: images.MixedFolder, indexed: State, photos_dir: Path
) -> None:
    old, new = photos_dir / "trips", photos_dir / "journeys"
    old.rename(new)
    under = [p for p in folder.good if old in p.parents]

    moved = live.move(old, new, live.catalog.ensure_root(str(folder.root)), is_dir=True)

    assert moved == len(under)
    for path in under:
        row = live.catalog.path_row(str(new / path.relative_to(old)))
        assert row is not None
        assert row.image_id == indexed.paths[str(path)]
    assert live.vectors.ids() == indexed.visible


def test_the_indexer_mirrors_every_batch_into_faiss(
    live: Indexer, folder: images.MixedFolder, indexed: State, photos_dir: Path
) -> None:
    new = images.write_good(photos_dir / "new.png", "png-rgb", seed=900)
    root_id = live.catalog.ensure_root(str(folder.root))
    found = fingerprint(new)
    assert found is not None

    result = live.upsert([Candidate(new, root_id, found)])
    deleted = live.delete([str(folder.good[0])])

    assert (result.added, result.embedded, deleted.removed) == (1, 1, 1)
    visible = live.catalog.visible_ids(live.embedder.model_id)
    assert live.vectors.ids() == visible
    new_id = live.catalog.path_row(str(new))
    assert new_id is not None
    stored = live.catalog.vector(new_id.image_id)
    assert stored is not None
    reconstructed = live.vectors.reconstruct(new_id.image_id)
    assert reconstructed is not None
    np.testing.assert_array_equal(reconstructed, stored)


def _open_catalog_descriptors() -> int:
    count = 0
    for entry in Path("/proc/self/fd").iterdir():
        try:
            count += os.readlink(entry).rsplit("/", 1)[-1].startswith("catalog.sqlite3")
        except OSError:
            continue  # closed while listing
    return count


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_indexing_batch_after_batch_keeps_a_bounded_number_of_files_open(
    live: Indexer, folder: images.MixedFolder, photos_dir: Path
) -> None:
    # Each batch reads hashes through read-only catalog connections on decode threads; a
    # daemon runs batches for weeks, so those must not pile up (one per thread per batch).
    root_id = live.catalog.ensure_root(str(folder.root))
    before = _open_catalog_descriptors()

    for number in range(12):  # as the daemon's worker does: one small batch at a time
        path = images.write_good(photos_dir / "stream" / f"{number}.jpg", "jpeg", 600 + number)
        found = fingerprint(path)
        assert found is not None
        live.upsert([Candidate(path, root_id, found)])

    assert _open_catalog_descriptors() <= before + 4


# -- the single-writer lock -----------------------------------------------------------------

_HOLD_LOCK = """
import sys, time
from pathlib import Path
from wmpd.datadir import DataDir, acquire_writer_lock
lock = acquire_writer_lock(DataDir(Path(sys.argv[1])), "test holder")
print("locked", flush=True)
time.sleep(60)
"""


@pytest.fixture
def lock_holder_process(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(tmp_path / "data")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "locked"
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()


def test_a_second_writer_is_refused_and_told_who_holds_the_lock(
    tmp_path: Path, lock_holder_process: subprocess.Popen[str]
) -> None:
    data_dir = DataDir(tmp_path / "data")

    with pytest.raises(IndexLockedError) as caught:
        acquire_writer_lock(data_dir, "second writer")

    message = str(caught.value)
    assert "test holder" in message
    assert f"pid {lock_holder_process.pid}" in message
    assert str(data_dir.path) in message
    holder = lock_holder(data_dir)
    assert holder is not None
    assert holder.startswith(f"test holder (pid {lock_holder_process.pid}")


def test_the_lock_is_released_when_the_holder_is_killed(
    tmp_path: Path, lock_holder_process: subprocess.Popen[str]
) -> None:
    data_dir = DataDir(tmp_path / "data")

    lock_holder_process.send_signal(signal.SIGKILL)
    lock_holder_process.wait()

    assert lock_holder(data_dir) is None
    lock = acquire_writer_lock(data_dir, "next writer")
    try:
        holder = lock_holder(data_dir)
        assert holder is not None
        assert holder.startswith(f"next writer (pid {os.getpid()}")
    finally:
        lock.release()


def test_the_lock_can_be_taken_again_after_release(tmp_path: Path) -> None:
    data_dir = DataDir(tmp_path / "data")
    assert lock_holder(data_dir) is None

    acquire_writer_lock(data_dir, "first").release()
    second = acquire_writer_lock(data_dir, "second")
    second.release()
    second.release()  # idempotent
