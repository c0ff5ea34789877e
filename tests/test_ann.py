"""The size-dependent index: recall of the inverted file, swapping it in while the index
keeps changing, removals, and the saved file keeping its type."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from wmpd import ann
from wmpd.ann import AnnPolicy
from wmpd.vectors import INDEX_FILE_NAME, IndexStamp, VectorIndex

DIM = 64
# Small thresholds so that a few thousand vectors exercise the inverted file.
POLICY = AnnPolicy(exact_max_vectors=2_000, lists_per_sqrt=2.0)


def clustered(count: int, seed: int, dim: int = DIM) -> np.ndarray:
    """Unit vectors in topic clusters on a decaying spectrum, like image embeddings."""
    shape = np.random.default_rng(1234)
    spectrum = (1.0 / np.arange(1, dim + 1) ** 0.7).astype(np.float32)
    centres = shape.standard_normal((60, dim)).astype(np.float32) * spectrum
    mean = shape.standard_normal(dim).astype(np.float32)
    rng = np.random.default_rng(seed)
    rows = mean / np.linalg.norm(mean) * 2.0 + centres[rng.integers(0, 60, count)]
    rows += rng.standard_normal((count, dim)).astype(np.float32) * spectrum * 0.7
    normalised: np.ndarray = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    return normalised


def exact_ids(ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    order = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]
    found: np.ndarray = ids[order]
    return found


def built(count: int, seed: int = 1) -> tuple[VectorIndex, np.ndarray, np.ndarray]:
    ids = np.random.default_rng(seed).choice(10_000_000, size=count, replace=False)
    vectors = clustered(count, seed)
    index = VectorIndex.build(
        DIM, [(ids[:1000], vectors[:1000]), (ids[1000:], vectors[1000:])], POLICY
    )
    assert index.wait_until_built(timeout=120)
    return index, ids.astype(np.int64), vectors


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Hold every background build until the test opens the gate (the real build then runs)."""
    opened = threading.Event()
    real_build: Callable[..., Any] = ann.build

    def held_build(*args: Any) -> Any:
        assert opened.wait(timeout=60)
        return real_build(*args)

    monkeypatch.setattr(ann, "build", held_build)
    return opened


def test_small_collections_stay_exact() -> None:
    ids = np.arange(500, dtype=np.int64)
    index = VectorIndex.build(DIM, [(ids, clustered(500, 2))], POLICY)

    assert not index.building
    assert index.layout == "exact"


def test_a_large_collection_gets_an_ivf_index_with_recall_at_10_over_095() -> None:
    index, ids, vectors = built(8_000)
    queries = ann.calibration_queries(clustered(400, seed=99), np.random.default_rng(5))

    _, found = index.search(queries, 10)

    assert index.layout.startswith("ivf")
    assert ann.recall_at_k(found, exact_ids(ids, vectors, queries, 10)) >= 0.95


def test_k_as_large_as_the_collection_returns_every_vector() -> None:
    index, ids, vectors = built(3_000)

    _, found = index.search(vectors[:1], len(ids))

    assert index.layout.startswith("ivf")
    assert sorted(found[0].tolist()) == sorted(ids.tolist())


def test_removed_ids_never_come_back_from_an_ivf_index() -> None:
    index, ids, vectors = built(4_000)
    gone = ids[:300]

    assert index.remove(gone.tolist()) == 300
    assert index.remove(gone.tolist()) == 0

    assert len(index) == 3_700
    assert index.ids() == set(ids[300:].tolist())
    assert index.reconstruct(int(gone[0])) is None
    _, found = index.search(vectors[:300], 50)
    assert not set(found.ravel().tolist()) & set(gone.tolist())


def test_replacing_a_vector_in_an_ivf_index() -> None:
    index, ids, _ = built(3_000)
    replacement = clustered(1, seed=77)

    index.add(ids[:1], replacement)

    assert len(index) == 3_000
    reconstructed = index.reconstruct(int(ids[0]))
    assert reconstructed is not None
    np.testing.assert_allclose(reconstructed, replacement[0], atol=1e-3)  # float16 storage
    assert index.search(replacement, 1)[1][0, 0] == ids[0]


def test_changes_made_during_a_background_build_survive_the_swap(gate: threading.Event) -> None:
    start_ids = np.arange(1, 1_991, dtype=np.int64)
    vectors = clustered(4_000, seed=3)
    index = VectorIndex(DIM, POLICY)
    index.add(start_ids, vectors[: len(start_ids)])
    assert index.layout == "exact"
    expected = {int(i): vectors[int(i) - 1] for i in start_ids}
    errors: list[BaseException] = []
    stop = threading.Event()

    def search_forever() -> None:
        try:
            while not stop.is_set():
                _, found = index.search(vectors[:3], 10)
                assert (found >= 0).all()
        except BaseException as exc:
            errors.append(exc)

    readers = [threading.Thread(target=search_forever) for _ in range(2)]
    for reader in readers:
        reader.start()
    crossing = np.arange(1_991, 2_101, dtype=np.int64)
    index.add(crossing, vectors[crossing - 1])  # past the threshold: a build starts
    expected.update({int(i): vectors[int(i) - 1] for i in crossing})
    assert index.building
    # While the build is held: new images, replaced vectors and removals.
    late = np.arange(2_101, 2_401, dtype=np.int64)
    index.add(late, vectors[late - 1])
    expected.update({int(i): vectors[int(i) - 1] for i in late})
    replaced = np.arange(1, 51, dtype=np.int64)
    fresh = clustered(50, seed=4)
    index.add(replaced, fresh)
    expected.update({int(i): fresh[n] for n, i in enumerate(replaced)})
    removed = list(range(100, 200)) + list(range(2_200, 2_250))
    index.remove(removed)
    for image_id in removed:
        expected.pop(image_id)
    assert index.layout == "exact"  # still serving the old index

    gate.set()
    assert index.wait_until_built(timeout=120)
    stop.set()
    for reader in readers:
        reader.join()

    assert errors == []
    assert index.layout.startswith("ivf")
    assert index.ids() == set(expected)
    assert len(index) == len(expected)
    for image_id, vector in expected.items():
        reconstructed = index.reconstruct(image_id)
        assert reconstructed is not None
        np.testing.assert_allclose(reconstructed, vector, atol=1e-3)
    _, found = index.search(vectors[np.array(removed) - 1], 20)
    assert not set(found.ravel().tolist()) & set(removed)


def test_shrinking_far_below_the_threshold_goes_back_to_exact() -> None:
    index, ids, _ = built(2_500)
    assert index.layout.startswith("ivf")

    index.remove(ids[:1_800].tolist())
    assert index.wait_until_built(timeout=120)

    assert index.layout == "exact"
    assert index.ids() == set(ids[1_800:].tolist())


@pytest.mark.parametrize("count", [500, 3_000], ids=["exact", "ivf"])
def test_the_saved_file_keeps_its_type(tmp_path: Path, count: int) -> None:
    index, _, vectors = built(count)
    stamp = IndexStamp(generation=1, model_id="m", count=count)
    index.save(tmp_path, stamp)

    loaded = VectorIndex.load(tmp_path, stamp, DIM, POLICY)

    assert loaded is not None
    assert loaded.layout == index.layout
    assert not loaded.building
    assert loaded.ids() == index.ids()
    queries = vectors[:5]
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], index.search(queries, 10)[1])


def test_a_layout_swapped_in_after_a_save_is_saved_under_that_stamp(
    tmp_path: Path, gate: threading.Event
) -> None:
    ids = np.arange(3_000, dtype=np.int64)
    index = VectorIndex.build(DIM, [(ids, clustered(3_000, seed=6))], POLICY)
    stamp = IndexStamp(generation=3, model_id="m", count=3_000)
    index.save(tmp_path, stamp)  # saved while the inverted file is still being built
    assert isinstance(faiss.read_index(str(tmp_path / INDEX_FILE_NAME)), faiss.IndexIDMap2)

    gate.set()
    assert index.wait_until_built(timeout=120)

    loaded = VectorIndex.load(tmp_path, stamp, DIM, POLICY)
    assert loaded is not None
    assert loaded.layout == index.layout
    assert loaded.layout.startswith("ivf")


def test_policy_hysteresis() -> None:
    policy = AnnPolicy(exact_max_vectors=1_000, lists_per_sqrt=2.0)
    exact = ann.Layout(ann.EXACT)

    assert policy.wanted(999, exact) == exact
    ivf = policy.wanted(1_000, exact)
    assert ivf.kind == ann.IVF
    assert policy.wanted(600, ivf) == ivf  # between half the threshold and the threshold
    assert policy.wanted(499, ivf) == exact
    assert policy.wanted(3_000, ivf) == ivf  # lists still within a factor of two
    assert policy.wanted(20_000, ivf).nlist > ivf.nlist
