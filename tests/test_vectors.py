"""The FAISS index against numpy brute force, its files on disk, and rebuilding from SQLite."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from wmpd.catalog import Catalog, NewImage
from wmpd.datadir import DataDir, index_stamp, open_vectors, save_vectors
from wmpd.vectors import INDEX_FILE_NAME, META_FILE_NAME, IndexStamp, VectorIndex

DIM = 16
MODEL = "tiny/test#0"


def unit_rows(count: int, seed: int, dim: int = DIM) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    normalised: np.ndarray = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return normalised


def brute_force(
    ids: np.ndarray, vectors: np.ndarray, query: np.ndarray, k: int
) -> tuple[list[int], np.ndarray]:
    scores = vectors @ query
    order = np.argsort(-scores, kind="stable")[:k]
    return [int(ids[i]) for i in order], scores[order]


@pytest.fixture
def sparse_ids() -> np.ndarray:
    # Catalog row ids are neither dense nor ordered once images come and go.
    return np.random.default_rng(1).choice(10_000_000, size=300, replace=False).astype(np.int64)


@pytest.fixture
def filled(sparse_ids: np.ndarray) -> tuple[VectorIndex, np.ndarray]:
    vectors = unit_rows(len(sparse_ids), seed=2)
    index = VectorIndex(DIM)
    index.add(sparse_ids, vectors)
    return index, vectors


def test_search_matches_numpy_brute_force(
    filled: tuple[VectorIndex, np.ndarray], sparse_ids: np.ndarray
) -> None:
    index, vectors = filled
    queries = unit_rows(7, seed=3)

    scores, ids = index.search(queries, 25)

    assert scores.shape == ids.shape == (7, 25)
    for row, query in enumerate(queries):
        expected_ids, expected_scores = brute_force(sparse_ids, vectors, query, 25)
        assert ids[row].tolist() == expected_ids
        np.testing.assert_allclose(scores[row], expected_scores, rtol=0, atol=1e-5)


def test_a_stored_vector_finds_itself_first_with_score_one(
    filled: tuple[VectorIndex, np.ndarray], sparse_ids: np.ndarray
) -> None:
    index, vectors = filled

    scores, ids = index.search(vectors[42], 1)

    assert ids[0, 0] == sparse_ids[42]
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_adding_an_id_again_replaces_its_vector(
    filled: tuple[VectorIndex, np.ndarray], sparse_ids: np.ndarray
) -> None:
    index, vectors = filled
    target = int(sparse_ids[10])
    replacement = unit_rows(1, seed=99)

    index.add(np.array([target]), replacement)

    assert len(index) == len(sparse_ids)
    reconstructed = index.reconstruct(target)
    assert reconstructed is not None
    np.testing.assert_array_equal(reconstructed, replacement[0])
    _, ids = index.search(vectors[10], len(sparse_ids))
    assert ids[0, 0] != target  # the old vector is gone
    _, ids = index.search(replacement[0], 1)
    assert ids[0, 0] == target


def test_removed_ids_are_never_returned(
    filled: tuple[VectorIndex, np.ndarray], sparse_ids: np.ndarray
) -> None:
    index, vectors = filled
    gone = {int(i) for i in sparse_ids[:50]}

    assert index.remove(gone) == 50
    assert index.remove(gone) == 0
    assert index.remove([]) == 0

    assert len(index) == len(sparse_ids) - 50
    assert index.ids() == {int(i) for i in sparse_ids[50:]}
    assert index.reconstruct(next(iter(gone))) is None
    _, ids = index.search(vectors[:50], len(sparse_ids))
    assert not gone & set(ids.ravel().tolist())
    expected_ids, _ = brute_force(sparse_ids[50:], vectors[50:], vectors[0], 10)
    assert index.search(vectors[0], 10)[1][0].tolist() == expected_ids


def test_k_is_clamped_to_what_the_index_holds() -> None:
    index = VectorIndex(DIM)
    _, empty_ids = index.search(unit_rows(1, seed=0), 5)
    assert empty_ids.ravel().tolist() == [-1]

    index.add(np.array([7, 8, 9]), unit_rows(3, seed=4))
    scores, ids = index.search(unit_rows(1, seed=5), 50)
    assert sorted(ids[0].tolist()) == [7, 8, 9]
    assert list(scores[0]) == sorted(scores[0], reverse=True)


def test_adding_nothing_is_a_no_op() -> None:
    index = VectorIndex(DIM)
    index.add(np.array([], dtype=np.int64), np.zeros((0, DIM), dtype=np.float32))
    assert len(index) == 0


def test_searches_run_safely_while_the_index_changes(sparse_ids: np.ndarray) -> None:
    index = VectorIndex(DIM)
    vectors = unit_rows(len(sparse_ids), seed=6)
    index.add(sparse_ids[:100], vectors[:100])
    errors: list[BaseException] = []
    stop = threading.Event()

    def search_forever() -> None:
        try:
            while not stop.is_set():
                _, ids = index.search(vectors[:4], 10)
                assert set(ids.ravel().tolist()) <= {*sparse_ids.tolist(), -1}
        except BaseException as exc:
            errors.append(exc)

    readers = [threading.Thread(target=search_forever) for _ in range(2)]
    for reader in readers:
        reader.start()
    for start in range(100, len(sparse_ids), 20):
        index.add(sparse_ids[start : start + 20], vectors[start : start + 20])
        index.remove(sparse_ids[start - 100 : start - 90].tolist())
    stop.set()
    for reader in readers:
        reader.join()

    assert errors == []
    assert len(index) == len(index.ids())


# -- files on disk -------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path: Path, filled: tuple[VectorIndex, np.ndarray]) -> IndexStamp:
    index, _ = filled
    stamp = IndexStamp(generation=5, model_id=MODEL, count=len(index))
    index.save(tmp_path, stamp)
    return stamp


def test_save_then_load_round_trips_exactly(
    tmp_path: Path,
    filled: tuple[VectorIndex, np.ndarray],
    sparse_ids: np.ndarray,
    saved: IndexStamp,
) -> None:
    index, vectors = filled

    loaded = VectorIndex.load(tmp_path, saved, DIM)

    assert loaded is not None
    assert loaded.ids() == index.ids()
    for image_id, vector in zip(sparse_ids[:20], vectors[:20], strict=True):
        reconstructed = loaded.reconstruct(int(image_id))
        assert reconstructed is not None
        assert reconstructed.tobytes() == vector.tobytes()
    queries = unit_rows(3, seed=8)
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], index.search(queries, 10)[1])
    assert json.loads((tmp_path / META_FILE_NAME).read_text()) == saved.__dict__
    assert sorted(p.name for p in tmp_path.iterdir()) == [INDEX_FILE_NAME, META_FILE_NAME]


def test_a_loaded_index_can_still_be_changed(
    tmp_path: Path, sparse_ids: np.ndarray, saved: IndexStamp
) -> None:
    loaded = VectorIndex.load(tmp_path, saved, DIM)
    assert loaded is not None

    loaded.remove([int(sparse_ids[0])])
    loaded.add(np.array([123]), unit_rows(1, seed=9))

    assert int(sparse_ids[0]) not in loaded.ids()
    assert 123 in loaded.ids()


@pytest.mark.parametrize(
    "expected_change",
    [
        {"generation": 6},
        {"model_id": "another/model#1"},
        {"count": 299},
    ],
    ids=["stale-generation", "other-model", "wrong-count"],
)
def test_load_refuses_an_index_that_does_not_match(
    tmp_path: Path, saved: IndexStamp, expected_change: dict[str, object]
) -> None:
    expected = IndexStamp(**{**saved.__dict__, **expected_change})  # type: ignore[arg-type]

    assert VectorIndex.load(tmp_path, expected, DIM) is None


def test_load_refuses_an_index_of_another_dimension(tmp_path: Path, saved: IndexStamp) -> None:
    assert VectorIndex.load(tmp_path, saved, DIM * 2) is None


@pytest.mark.parametrize(
    "damage",
    [
        "meta-missing",
        "index-missing",
        "index-truncated",
        "index-garbage",
        "meta-garbage",
        "meta-list",
    ],
)
def test_load_refuses_damaged_files(tmp_path: Path, saved: IndexStamp, damage: str) -> None:
    index_file = tmp_path / INDEX_FILE_NAME
    meta_file = tmp_path / META_FILE_NAME
    if damage == "meta-missing":
        meta_file.unlink()
    elif damage == "index-missing":
        index_file.unlink()
    elif damage == "index-truncated":
        index_file.write_bytes(index_file.read_bytes()[: index_file.stat().st_size // 2])
    elif damage == "index-garbage":
        index_file.write_bytes(b"\x00garbage" * 1000)
    elif damage == "meta-garbage":
        meta_file.write_text("{not json")
    else:
        meta_file.write_text("[1, 2, 3]")

    assert VectorIndex.load(tmp_path, saved, DIM) is None


def test_saving_again_replaces_the_files(
    tmp_path: Path, filled: tuple[VectorIndex, np.ndarray], saved: IndexStamp
) -> None:
    index, _ = filled
    index.remove(list(index.ids())[:10])
    newer = IndexStamp(generation=6, model_id=MODEL, count=len(index))

    index.save(tmp_path, newer)

    assert VectorIndex.load(tmp_path, saved, DIM) is None
    reloaded = VectorIndex.load(tmp_path, newer, DIM)
    assert reloaded is not None
    assert reloaded.ids() == index.ids()


# -- the data directory: open_vectors rebuilds from the catalog -----------------------------


@pytest.fixture
def data_dir(tmp_path: Path) -> DataDir:
    return DataDir(tmp_path / "data")


@pytest.fixture
def catalog(data_dir: DataDir) -> Iterator[Catalog]:
    opened = Catalog(data_dir.catalog_path)
    yield opened
    opened.close()


@pytest.fixture
def stored_ids(catalog: Catalog) -> list[int]:
    """Forty images in the catalog (five of them orphaned, one of another model)."""
    vectors = unit_rows(41, seed=11)
    with catalog.transaction():
        root_id = catalog.ensure_root("/photos")
        ids = []
        for number, vector in enumerate(vectors):
            model = MODEL if number < 40 else "other/model#2"
            image_id = catalog.upsert_image(
                NewImage(f"h{number}", vector, model, 10, 10, None, "PNG")
            )
            catalog.link_path(f"/photos/{number}.png", root_id, image_id, 1, 1)
            ids.append(image_id)
        for number in range(5):
            catalog.remove_path(f"/photos/{number}.png")
    return ids[5:40]


def test_open_vectors_rebuilds_every_vector_bit_for_bit_from_the_catalog(
    catalog: Catalog, data_dir: DataDir, stored_ids: list[int]
) -> None:
    vectors = open_vectors(catalog, data_dir, MODEL, DIM)

    assert vectors.ids() == set(stored_ids)
    for image_id in stored_ids:
        reconstructed = vectors.reconstruct(image_id)
        stored = catalog.vector(image_id)
        assert reconstructed is not None
        assert stored is not None
        assert reconstructed.tobytes() == stored.tobytes()


def test_open_vectors_uses_a_matching_saved_index(
    catalog: Catalog, data_dir: DataDir, stored_ids: list[int]
) -> None:
    # A saved index whose vectors differ from the catalog's but whose stamp matches:
    # finding those vectors again proves the file was used and nothing was rebuilt.
    marker = VectorIndex(DIM)
    marker.add(np.array(stored_ids), unit_rows(len(stored_ids), seed=77))
    save_vectors(marker, catalog, data_dir, MODEL)

    opened = open_vectors(catalog, data_dir, MODEL, DIM)

    reconstructed = opened.reconstruct(stored_ids[0])
    assert reconstructed is not None
    np.testing.assert_array_equal(reconstructed, unit_rows(len(stored_ids), seed=77)[0])


def test_open_vectors_rebuilds_when_the_catalog_moved_on(
    catalog: Catalog, data_dir: DataDir, stored_ids: list[int]
) -> None:
    save_vectors(open_vectors(catalog, data_dir, MODEL, DIM), catalog, data_dir, MODEL)
    with catalog.transaction():
        catalog.remove_path(f"/photos/{len(stored_ids) + 4}.png")

    opened = open_vectors(catalog, data_dir, MODEL, DIM)

    assert opened.ids() == set(stored_ids[:-1])
    assert index_stamp(catalog, MODEL).count == len(stored_ids) - 1


def test_open_vectors_rebuilds_over_a_garbage_file(
    catalog: Catalog, data_dir: DataDir, stored_ids: list[int]
) -> None:
    save_vectors(open_vectors(catalog, data_dir, MODEL, DIM), catalog, data_dir, MODEL)
    (data_dir.path / INDEX_FILE_NAME).write_bytes(b"garbage")

    opened = open_vectors(catalog, data_dir, MODEL, DIM)

    assert opened.ids() == set(stored_ids)


def test_open_vectors_for_another_model_holds_only_that_models_vectors(
    catalog: Catalog, data_dir: DataDir, stored_ids: list[int]
) -> None:
    save_vectors(open_vectors(catalog, data_dir, MODEL, DIM), catalog, data_dir, MODEL)

    opened = open_vectors(catalog, data_dir, "other/model#2", DIM)

    assert len(opened) == 1
    assert not opened.ids() & set(stored_ids)
