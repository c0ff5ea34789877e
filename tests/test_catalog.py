"""The SQLite catalog on real files: schema, transactions, paths, orphans, failures, filters."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from wmpd.catalog import SCHEMA_VERSION, Catalog, NewImage, blob_to_vector, vector_to_blob
from wmpd.errors import CatalogError, SchemaTooNewError

DIM = 4
MODEL = "tiny/test#0"


def new_image(
    seed: int,
    *,
    model_id: str = MODEL,
    taken_at: float | None = None,
    fmt: str | None = "JPEG",
) -> NewImage:
    vector = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return NewImage(
        hash=f"hash-{seed}",
        vector=vector / np.linalg.norm(vector),
        model_id=model_id,
        width=40 + seed,
        height=30,
        taken_at=taken_at,
        format=fmt,
    )


@pytest.fixture
def catalog_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "catalog.sqlite3"


@pytest.fixture
def catalog(catalog_path: Path) -> Iterator[Catalog]:
    opened = Catalog(catalog_path)
    yield opened
    opened.close()


@pytest.fixture
def root_id(catalog: Catalog) -> int:
    with catalog.transaction():
        return catalog.ensure_root("/photos")


def add_photo(catalog: Catalog, root_id: int, path: str, seed: int, **kwargs: object) -> int:
    """Store one image and point `path` at it, in one transaction; returns the image id."""
    with catalog.transaction():
        image_id = catalog.upsert_image(new_image(seed, **kwargs))  # type: ignore[arg-type]
        catalog.link_path(path, root_id, image_id, size=100 + seed, mtime_ns=seed)
    return image_id


def raw_query(path: Path, sql: str) -> list[tuple[object, ...]]:
    db = sqlite3.connect(path)
    try:
        return list(db.execute(sql))
    finally:
        db.close()


# -- schema ---------------------------------------------------------------------------------


def test_new_catalog_is_migrated_to_the_current_schema(
    catalog: Catalog, catalog_path: Path
) -> None:
    assert raw_query(catalog_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    tables = {row[0] for row in raw_query(catalog_path, "SELECT name FROM sqlite_master")}
    assert {"roots", "images", "paths", "failures", "meta"} <= tables
    assert catalog.generation() == 0
    assert catalog.counts().images == 0


def test_reopening_keeps_the_data_and_does_not_migrate_again(
    catalog: Catalog, catalog_path: Path, root_id: int
) -> None:
    add_photo(catalog, root_id, "/photos/a.jpg", 1)
    catalog.close()

    reopened = Catalog(catalog_path)
    try:
        assert reopened.counts().paths == 1
        assert reopened.generation() == 1
    finally:
        reopened.close()
    assert raw_query(catalog_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


@pytest.mark.parametrize("readonly", [False, True])
def test_a_newer_schema_is_refused_naming_the_file(
    catalog: Catalog, catalog_path: Path, readonly: bool
) -> None:
    catalog.close()
    db = sqlite3.connect(catalog_path)
    db.execute("PRAGMA user_version = 99")
    db.close()

    with pytest.raises(SchemaTooNewError) as caught:
        Catalog(catalog_path, readonly=readonly)

    assert str(catalog_path) in str(caught.value)
    assert "99" in str(caught.value)
    assert raw_query(catalog_path, "PRAGMA user_version") == [(99,)]  # left as it was


def test_the_catalog_uses_wal(catalog: Catalog, catalog_path: Path) -> None:
    assert raw_query(catalog_path, "PRAGMA journal_mode") == [("wal",)]


@pytest.mark.parametrize("readonly", [False, True])
def test_a_corrupt_file_names_itself_and_wmpd_repair(
    catalog: Catalog, catalog_path: Path, root_id: int, readonly: bool
) -> None:
    add_photo(catalog, root_id, "/photos/a.jpg", 1)
    catalog.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{catalog_path}{suffix}").unlink(missing_ok=True)
    catalog_path.write_bytes(b"this is not a database, it is garbage\n" * 200)

    with pytest.raises(CatalogError) as caught:
        Catalog(catalog_path, readonly=readonly)

    assert str(catalog_path) in str(caught.value)
    assert "wmpd repair" in str(caught.value)


def test_a_readonly_catalog_refuses_writes(
    catalog: Catalog, catalog_path: Path, root_id: int
) -> None:
    add_photo(catalog, root_id, "/photos/a.jpg", 1)
    reader = Catalog(catalog_path, readonly=True)
    try:
        with pytest.raises(sqlite3.OperationalError, match=r"readonly|read-only"):
            reader.upsert_image(new_image(2))
        with pytest.raises(sqlite3.OperationalError, match=r"readonly|read-only"):
            reader.remove_path("/photos/a.jpg")
        assert reader.counts().images == 1
        assert reader.path_row("/photos/a.jpg") is not None
    finally:
        reader.close()


def test_a_readonly_catalog_that_does_not_exist_is_an_error_not_a_new_file(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "nowhere" / "catalog.sqlite3"
    missing.parent.mkdir()

    with pytest.raises(CatalogError, match="wmpd index"):
        Catalog(missing, readonly=True)

    assert not missing.exists()


def test_a_reader_sees_only_committed_batches(
    catalog: Catalog, catalog_path: Path, root_id: int
) -> None:
    reader = Catalog(catalog_path, readonly=True)
    try:
        with catalog.transaction():
            catalog.upsert_image(new_image(1))
            assert reader.counts().images == 0
        assert reader.counts().images == 1
    finally:
        reader.close()


# -- transactions and the generation --------------------------------------------------------


def test_a_failed_transaction_leaves_nothing(catalog: Catalog, root_id: int) -> None:
    before = catalog.generation()

    def failing_batch() -> None:
        with catalog.transaction():
            image_id = catalog.upsert_image(new_image(1))
            catalog.link_path("/photos/a.jpg", root_id, image_id, 1, 1)
            catalog.record_failure("/photos/b.jpg", root_id, 1, 1, "corrupt", "bad")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        failing_batch()

    assert catalog.counts().images == 0
    assert catalog.counts().paths == 0
    assert catalog.counts().failed == 0
    assert catalog.generation() == before
    add_photo(catalog, root_id, "/photos/a.jpg", 1)  # and the connection is still usable
    assert catalog.counts().paths == 1


def test_the_generation_moves_only_when_searchable_content_changes(
    catalog: Catalog, root_id: int
) -> None:
    start = catalog.generation()
    with catalog.transaction():
        catalog.set_root_state(root_id, "offline", "unplugged")
        catalog.mark_root_scanned(root_id)
        catalog.record_failure("/photos/bad.jpg", root_id, 1, 1, "corrupt", "bad")
    assert catalog.generation() == start

    image_id = add_photo(catalog, root_id, "/photos/a.jpg", 1)
    assert catalog.generation() == start + 1

    with catalog.transaction():
        catalog.update_fingerprint("/photos/a.jpg", 999, 999)
    assert catalog.generation() == start + 1

    with catalog.transaction():
        catalog.remove_path("/photos/a.jpg")
    assert catalog.generation() == start + 2
    assert catalog.image(image_id) is not None


# -- paths, moves, orphans ------------------------------------------------------------------


def test_link_path_repoints_and_reports_the_previous_image(catalog: Catalog, root_id: int) -> None:
    first = add_photo(catalog, root_id, "/photos/a.jpg", 1)
    with catalog.transaction():
        second = catalog.upsert_image(new_image(2))
        previous = catalog.link_path("/photos/a.jpg", root_id, second, 5, 6)
        same = catalog.link_path("/photos/a.jpg", root_id, second, 5, 7)

    assert previous == first
    assert same is None
    row = catalog.path_row("/photos/a.jpg")
    assert row is not None
    assert (row.image_id, row.size, row.mtime_ns) == (second, 5, 7)
    assert catalog.counts().paths == 1


def test_two_paths_to_one_content_are_one_image(catalog: Catalog, root_id: int) -> None:
    image_id = add_photo(catalog, root_id, "/photos/a.jpg", 1)
    with catalog.transaction():
        again = catalog.upsert_image(new_image(1))
        catalog.link_path("/photos/copy of a.jpg", root_id, again, 101, 1)

    assert again == image_id
    assert catalog.paths_of_image(image_id) == ["/photos/a.jpg", "/photos/copy of a.jpg"]
    assert catalog.counts().images == 1


def test_move_path_follows_the_file_and_keeps_the_image(catalog: Catalog, root_id: int) -> None:
    image_id = add_photo(catalog, root_id, "/photos/a.jpg", 1)
    vector_before = catalog.vector(image_id)

    with catalog.transaction():
        assert catalog.move_path("/photos/a.jpg", "/photos/b.jpg", root_id)
        assert not catalog.move_path("/photos/never.jpg", "/photos/c.jpg", root_id)

    assert catalog.path_row("/photos/a.jpg") is None
    row = catalog.path_row("/photos/b.jpg")
    assert row is not None
    assert row.image_id == image_id
    assert catalog.path_row("/photos/c.jpg") is None
    np.testing.assert_array_equal(catalog.vector(image_id), vector_before)


def test_moving_onto_another_photo_replaces_its_row(catalog: Catalog, root_id: int) -> None:
    kept = add_photo(catalog, root_id, "/photos/a.jpg", 1)
    replaced = add_photo(catalog, root_id, "/photos/b.jpg", 2)

    with catalog.transaction():
        catalog.move_path("/photos/a.jpg", "/photos/b.jpg", root_id)
        # The caller (Indexer.move) orphans what lost its last path.
        assert catalog.orphan_if_unreferenced(replaced)
        assert not catalog.orphan_if_unreferenced(kept)

    assert catalog.paths_of_image(kept) == ["/photos/b.jpg"]
    assert catalog.paths_of_image(replaced) == []
    assert catalog.counts().paths == 1
    assert catalog.visible_ids(MODEL) == {kept}


def test_moving_a_good_file_over_a_failed_one_forgets_the_failure(
    catalog: Catalog, root_id: int
) -> None:
    add_photo(catalog, root_id, "/photos/a.jpg", 1)
    with catalog.transaction():
        catalog.record_failure("/photos/b.jpg", root_id, 1, 1, "corrupt", "x")

    with catalog.transaction():
        catalog.move_path("/photos/a.jpg", "/photos/b.jpg", root_id)

    assert catalog.failure("/photos/b.jpg") is None
    assert catalog.counts().failed == 0


def test_moving_a_tree_over_another_replaces_only_clashing_rows(
    catalog: Catalog, root_id: int
) -> None:
    moved = add_photo(catalog, root_id, "/photos/new/a.jpg", 1)
    replaced = add_photo(catalog, root_id, "/photos/old/a.jpg", 2)
    untouched = add_photo(catalog, root_id, "/photos/old/keep.jpg", 3)

    with catalog.transaction():
        assert catalog.move_tree("/photos/new", "/photos/old", root_id) == 1

    assert catalog.paths_of_image(moved) == ["/photos/old/a.jpg"]
    assert catalog.paths_of_image(untouched) == ["/photos/old/keep.jpg"]
    assert catalog.paths_of_image(replaced) == []
    assert catalog.counts().paths == 2


def test_move_tree_rewrites_only_that_directory(catalog: Catalog, root_id: int) -> None:
    a = add_photo(catalog, root_id, "/photos/trip/a.jpg", 1)
    b = add_photo(catalog, root_id, "/photos/trip/day 2/b.jpg", 2)
    sibling = add_photo(catalog, root_id, "/photos/trip2/c.jpg", 3)
    with catalog.transaction():
        catalog.record_failure("/photos/trip/bad.jpg", root_id, 1, 1, "corrupt", "x")
    generation = catalog.generation()

    with catalog.transaction():
        moved = catalog.move_tree("/photos/trip", "/photos/2020 trip", root_id)

    assert moved == 2
    assert catalog.paths_of_image(a) == ["/photos/2020 trip/a.jpg"]
    assert catalog.paths_of_image(b) == ["/photos/2020 trip/day 2/b.jpg"]
    assert catalog.paths_of_image(sibling) == ["/photos/trip2/c.jpg"]
    assert catalog.failure("/photos/2020 trip/bad.jpg") is not None
    assert catalog.failure("/photos/trip/bad.jpg") is None
    assert catalog.generation() == generation + 1


def test_move_tree_of_an_unknown_directory_changes_nothing(catalog: Catalog, root_id: int) -> None:
    add_photo(catalog, root_id, "/photos/a.jpg", 1)
    generation = catalog.generation()

    with catalog.transaction():
        assert catalog.move_tree("/photos/nothing-here", "/photos/elsewhere", root_id) == 0

    assert catalog.generation() == generation
    assert catalog.path_row("/photos/a.jpg") is not None


def test_removing_the_last_path_orphans_the_image_and_keeps_its_vector(
    catalog: Catalog, root_id: int
) -> None:
    image_id = add_photo(catalog, root_id, "/photos/a.jpg", 1)
    with catalog.transaction():
        again = catalog.upsert_image(new_image(1))
        catalog.link_path("/photos/b.jpg", root_id, again, 101, 1)

    with catalog.transaction():
        first = catalog.remove_path("/photos/a.jpg")
    assert first is None  # still has /photos/b.jpg
    assert catalog.visible_ids(MODEL) == {image_id}

    with catalog.transaction():
        last = catalog.remove_path("/photos/b.jpg")
        assert catalog.remove_path("/photos/b.jpg") is None  # already gone
    assert last == image_id
    row = catalog.image(image_id)
    assert row is not None
    assert row.orphaned
    assert catalog.visible_ids(MODEL) == set()
    assert catalog.vector(image_id) is not None
    assert catalog.counts().orphans == 1
    assert catalog.counts().images == 0


def test_adopting_an_orphan_makes_it_visible_again(catalog: Catalog, root_id: int) -> None:
    image_id = add_photo(catalog, root_id, "/photos/a.jpg", 1)
    with catalog.transaction():
        catalog.remove_path("/photos/a.jpg")
    generation = catalog.generation()

    with catalog.transaction():
        catalog.adopt_image(image_id)
        catalog.link_path("/photos/back.jpg", root_id, image_id, 1, 1)

    row = catalog.image(image_id)
    assert row is not None
    assert not row.orphaned
    assert catalog.visible_ids(MODEL) == {image_id}
    assert catalog.generation() == generation + 1


def test_purge_removes_only_old_orphans(catalog: Catalog, root_id: int) -> None:
    orphan = add_photo(catalog, root_id, "/photos/a.jpg", 1)
    visible = add_photo(catalog, root_id, "/photos/b.jpg", 2)
    with catalog.transaction():
        catalog.remove_path("/photos/a.jpg")

    with catalog.transaction():
        assert catalog.purge_orphans() == 0  # younger than the retention
    assert catalog.image(orphan) is not None

    time.sleep(0.01)
    with catalog.transaction():
        assert catalog.purge_orphans(older_than_seconds=0) == 1
    assert catalog.image(orphan) is None
    assert catalog.image(visible) is not None
    assert catalog.image_by_hash("hash-1") is None


def test_forgetting_a_root_orphans_only_images_with_no_other_path(catalog: Catalog) -> None:
    with catalog.transaction():
        first_root = catalog.ensure_root("/photos")
        second_root = catalog.ensure_root("/backup")
    shared = add_photo(catalog, first_root, "/photos/a.jpg", 1)
    with catalog.transaction():
        catalog.link_path("/backup/a.jpg", second_root, shared, 101, 1)
    only_here = add_photo(catalog, first_root, "/photos/b.jpg", 2)

    with catalog.transaction():
        removed = catalog.remove_root(first_root)

    assert removed == 2
    assert [r.path for r in catalog.roots()] == ["/backup"]
    assert catalog.visible_ids(MODEL) == {shared}
    only_row = catalog.image(only_here)
    assert only_row is not None
    assert only_row.orphaned


def test_vectors_round_trip_bit_for_bit(catalog: Catalog, root_id: int) -> None:
    image = new_image(7)
    image_id = add_photo(catalog, root_id, "/photos/a.jpg", 7)

    stored = catalog.vector(image_id)

    assert stored is not None
    assert stored.tobytes() == image.vector.astype("<f4").tobytes()
    np.testing.assert_array_equal(blob_to_vector(vector_to_blob(image.vector)), image.vector)


def test_iter_visible_vectors_yields_every_visible_vector_of_that_model(
    catalog: Catalog, root_id: int
) -> None:
    ids = [add_photo(catalog, root_id, f"/photos/{i}.jpg", i) for i in range(5)]
    other = add_photo(catalog, root_id, "/photos/other.jpg", 50, model_id="other")
    with catalog.transaction():
        catalog.remove_path("/photos/0.jpg")

    chunks = list(catalog.iter_visible_vectors(MODEL, chunk_size=2))

    seen = np.concatenate([chunk_ids for chunk_ids, _ in chunks]).tolist()
    assert seen == ids[1:]
    assert [len(chunk_ids) for chunk_ids, _ in chunks] == [2, 2]
    for chunk_ids, vectors in chunks:
        for image_id, vector in zip(chunk_ids, vectors, strict=True):
            np.testing.assert_array_equal(vector, catalog.vector(int(image_id)))
    assert catalog.stale_model_count(MODEL) == 1
    assert catalog.model_ids() == {MODEL: 4, "other": 1}
    assert other not in seen


# -- failures -------------------------------------------------------------------------------


def test_failures_are_recorded_updated_and_cleared(catalog: Catalog, root_id: int) -> None:
    with catalog.transaction():
        catalog.record_failure("/photos/a.jpg", root_id, 10, 1, "corrupt", "garbage")
        catalog.record_failure("/photos/b.jpg", root_id, 0, 2, "empty", "0 bytes")
        catalog.record_failure("/photos/a.jpg", root_id, 11, 3, "truncated", "cut short")

    failure = catalog.failure("/photos/a.jpg")
    assert failure is not None
    assert (failure.size, failure.mtime_ns, failure.reason) == (11, 3, "truncated")
    assert catalog.failure_counts() == {"truncated": 1, "empty": 1}
    assert {f.path for f in catalog.recent_failures()} == {"/photos/a.jpg", "/photos/b.jpg"}
    assert set(catalog.failures_of_root(root_id)) == {"/photos/a.jpg", "/photos/b.jpg"}

    with catalog.transaction():
        catalog.clear_failure("/photos/b.jpg")
        image_id = catalog.upsert_image(new_image(1))
        catalog.link_path("/photos/a.jpg", root_id, image_id, 12, 4)  # fixed: indexed now

    assert catalog.failure("/photos/a.jpg") is None
    assert catalog.failure("/photos/b.jpg") is None
    assert catalog.counts().failed == 0


def test_removing_a_failed_path_forgets_the_failure(catalog: Catalog, root_id: int) -> None:
    with catalog.transaction():
        catalog.record_failure("/photos/a.jpg", root_id, 10, 1, "corrupt", "garbage")
        assert catalog.remove_path("/photos/a.jpg") is None

    assert catalog.failure("/photos/a.jpg") is None


# -- search filters -------------------------------------------------------------------------


@pytest.fixture
def filter_catalog(catalog: Catalog, root_id: int) -> dict[str, int]:
    return {
        "old_jpeg": add_photo(catalog, root_id, "/photos/2019/a.jpg", 1, taken_at=1_000.0),
        "new_png": add_photo(
            catalog, root_id, "/photos/2021/b.png", 2, taken_at=3_000.0, fmt="PNG"
        ),
        "sibling": add_photo(catalog, root_id, "/photos/20190/c.jpg", 3, taken_at=2_000.0),
        "undated": add_photo(catalog, root_id, "/photos/2019/d.gif", 4, fmt="GIF"),
    }


def test_filter_ids_by_folder_matches_whole_path_components(
    catalog: Catalog, filter_catalog: dict[str, int]
) -> None:
    ids = list(filter_catalog.values())

    kept = catalog.filter_ids(ids, folder="/photos/2019")
    assert kept == {filter_catalog["old_jpeg"], filter_catalog["undated"]}
    assert catalog.filter_ids(ids, folder="/photos/2019/") == kept
    assert catalog.filter_ids(ids, folder="/photos") == set(ids)


def test_filter_ids_by_time_is_after_inclusive_before_exclusive(
    catalog: Catalog, filter_catalog: dict[str, int]
) -> None:
    ids = list(filter_catalog.values())

    assert catalog.filter_ids(ids, after=2_000.0) == {
        filter_catalog["sibling"],
        filter_catalog["new_png"],
    }
    assert catalog.filter_ids(ids, before=2_000.0) == {filter_catalog["old_jpeg"]}
    assert catalog.filter_ids(ids, after=1_000.0, before=3_000.0) == {
        filter_catalog["old_jpeg"],
        filter_catalog["sibling"],
    }


def test_filter_ids_by_format_and_combined(
    catalog: Catalog, filter_catalog: dict[str, int]
) -> None:
    ids = list(filter_catalog.values())

    assert catalog.filter_ids(ids, formats=("PNG", "GIF")) == {
        filter_catalog["new_png"],
        filter_catalog["undated"],
    }
    assert catalog.filter_ids(ids, folder="/photos/2019", formats=("JPEG",)) == {
        filter_catalog["old_jpeg"]
    }
    assert catalog.filter_ids(ids[:1], formats=("PNG",)) == set()
    assert catalog.filter_ids(ids) == set(ids)


def test_filter_ids_handles_more_ids_than_one_statement_holds(
    catalog: Catalog, root_id: int
) -> None:
    with catalog.transaction():
        ids = [
            catalog.upsert_image(new_image(i, fmt="PNG" if i % 2 else "JPEG")) for i in range(1200)
        ]

    kept = catalog.filter_ids(ids, formats=("PNG",))

    assert len(kept) == 600
    assert len(catalog.images(ids)) == 1200
