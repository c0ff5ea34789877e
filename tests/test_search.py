"""Searching a real index built from real files: ranking, paging, filters, errors.

Nothing here depends on how well the tiny model understands pictures: queries use an
indexed picture (which must come back first, with score 1) or only check the shape and
order of results.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests import images
from tests.conftest import TINY_CONFIG, ConfigFactory
from wmpd.catalog import Catalog
from wmpd.config import Config
from wmpd.config_schema import ModelConfig
from wmpd.datadir import DataDir, open_vectors
from wmpd.embedder import Embedder
from wmpd.errors import QueryError
from wmpd.indexer import Indexer
from wmpd.search import MAX_K, Filters, Searcher
from wmpd.vectors import VectorIndex

PHOTOS = 24


@pytest.fixture(scope="module")
def embedder(tiny_weights: Path) -> Embedder:
    loaded = Embedder(ModelConfig(name=str(TINY_CONFIG), pretrained=str(tiny_weights), threads=1))
    loaded.load()
    return loaded


@dataclass
class Library:
    config: Config
    catalog: Catalog
    vectors: VectorIndex
    searcher: Searcher
    photos: list[Path]


def index_folders(config: Config, embedder: Embedder) -> tuple[Catalog, VectorIndex]:
    data_dir = DataDir(config.index.data_dir)
    catalog = Catalog(data_dir.catalog_path)
    vectors = open_vectors(catalog, data_dir, embedder.model_id, embedder.dim)
    indexer = Indexer(catalog, vectors, embedder, config)
    try:
        for folder in config.folders:
            indexer.apply_plan(indexer.reconcile(folder))
    finally:
        indexer.close()
    return catalog, vectors


@pytest.fixture
def library(make_config: ConfigFactory, photos_dir: Path, embedder: Embedder) -> Iterator[Library]:
    photos = [
        images.write_good(photos_dir / ("2019" if n % 2 else "2020") / f"p{n:02d}.jpg", "jpeg", n)
        for n in range(PHOTOS - 4)
    ]
    photos += [
        images.write_good(photos_dir / "png" / f"q{n}.png", "png-rgb", 100 + n) for n in range(4)
    ]
    config = make_config(photos_dir)
    catalog, vectors = index_folders(config, embedder)
    searcher = Searcher(lambda: vectors, embedder, catalog.path)
    yield Library(config, catalog, vectors, searcher, photos)
    catalog.close()


def test_an_indexed_picture_finds_itself_first_with_score_one(library: Library) -> None:
    for photo in library.photos[::7]:
        query = library.searcher.image_vector_from_bytes(photo.read_bytes(), photo.name)

        page = library.searcher.search(query, k=5)

        assert page.hits[0].path == str(photo)
        assert page.hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert page.hits[1].score < page.hits[0].score


def test_results_come_best_first_with_the_documented_fields(library: Library) -> None:
    query = library.searcher.text_vector("a photo of a red circle")

    page = library.searcher.search(query, k=10).to_json()

    assert set(page) == {"results", "took_ms", "next"}
    scores = [hit["score"] for hit in page["results"]]
    assert len(scores) == 10
    assert scores == sorted(scores, reverse=True)
    first = page["results"][0]
    assert set(first) == {
        "id",
        "path",
        "paths",
        "score",
        "width",
        "height",
        "taken_at",
        "format",
        "thumb_url",
        "file_url",
    }
    assert first["thumb_url"] == f"/thumb/{first['id']}"
    assert first["file_url"] == f"/file/{first['id']}"
    assert first["path"] in first["paths"]
    assert (first["width"], first["height"]) == (48, 36)
    assert page["next"] == 10


def test_a_search_by_indexed_id_excludes_nothing_unless_asked(library: Library) -> None:
    photo = library.photos[3]
    image_id = library.searcher.image_id_for_path(str(photo))
    query = library.searcher.image_vector_from_id(image_id)

    assert library.searcher.search(query, k=1).hits[0].id == image_id
    without = library.searcher.search(query, k=PHOTOS, exclude_ids=frozenset({image_id}))
    assert image_id not in {hit.id for hit in without.hits}
    assert len(without.hits) == PHOTOS - 1


def test_unknown_ids_and_paths_are_lookup_errors(library: Library) -> None:
    with pytest.raises(LookupError):
        library.searcher.image_vector_from_id(987_654)
    with pytest.raises(LookupError):
        library.searcher.image_id_for_path("/not/indexed.jpg")
    with pytest.raises(LookupError):  # JSON can carry lone surrogates; SQLite cannot
        library.searcher.image_id_for_path("/photos/\udcff.jpg")


def test_a_folder_filter_that_is_not_utf8_names_the_parameter(library: Library) -> None:
    query = library.searcher.text_vector("a dog")

    with pytest.raises(QueryError) as caught:
        library.searcher.search(query, k=5, filters=Filters(folder="/photos/\udcff"))

    assert caught.value.parameter == "folder"


def test_pages_are_consecutive_and_the_last_has_no_next(library: Library) -> None:
    query = library.searcher.text_vector("a yellow star")

    whole = library.searcher.search(query, k=PHOTOS)
    first = library.searcher.search(query, k=10)
    second = library.searcher.search(query, k=10, offset=10)
    last = library.searcher.search(query, k=10, offset=20)
    beyond = library.searcher.search(query, k=10, offset=PHOTOS)

    assert [h.id for h in first.hits + second.hits + last.hits] == [h.id for h in whole.hits]
    assert (first.next_offset, second.next_offset, last.next_offset) == (10, 20, None)
    assert len(last.hits) == PHOTOS - 20
    assert beyond.hits == []
    assert beyond.next_offset is None
    assert whole.next_offset is None


def test_copies_are_one_result_listing_every_path(library: Library, embedder: Embedder) -> None:
    original = library.photos[0]
    copy = original.parent.parent / "copies" / "same.jpg"
    copy.parent.mkdir()
    shutil.copyfile(original, copy)
    catalog, vectors = index_folders(library.config, embedder)
    searcher = Searcher(lambda: vectors, embedder, catalog.path)
    try:
        query = searcher.image_vector_from_bytes(original.read_bytes())

        hits = searcher.search(query, k=PHOTOS + 1).hits

        assert len(hits) == PHOTOS
        assert sorted(hits[0].paths) == sorted([str(original), str(copy)])
        assert hits[0].path == min(str(original), str(copy))
    finally:
        catalog.close()


def test_the_folder_filter_keeps_only_pictures_under_it(library: Library) -> None:
    folder = str(library.photos[0].parent)  # .../2020
    query = library.searcher.image_vector_from_bytes(library.photos[1].read_bytes())  # in 2019

    hits = library.searcher.search(query, k=PHOTOS, filters=Filters(folder=folder)).hits

    expected = {str(p) for p in library.photos if p.parent == library.photos[0].parent}
    assert {hit.path for hit in hits} == expected


def test_the_format_filter_keeps_only_that_format(library: Library) -> None:
    query = library.searcher.image_vector_from_bytes(library.photos[0].read_bytes())

    hits = library.searcher.search(query, k=3, filters=Filters(formats=("PNG",))).hits

    assert len(hits) == 3
    assert {hit.format for hit in hits} == {"PNG"}
    assert all(hit.path.endswith(".png") for hit in hits)


def test_min_score_keeps_only_close_enough_pictures(library: Library) -> None:
    photo = library.photos[5]
    query = library.searcher.image_vector_from_bytes(photo.read_bytes())
    scores = [h.score for h in library.searcher.search(query, k=PHOTOS).hits]
    threshold = (scores[2] + scores[3]) / 2

    hits = library.searcher.search(query, k=10, filters=Filters(min_score=threshold)).hits

    assert len(hits) == 3
    assert hits[0].path == str(photo)
    assert all(hit.score >= threshold for hit in hits)


def test_capture_time_filters_use_exif(
    make_config: ConfigFactory, photos_dir: Path, embedder: Embedder
) -> None:
    dated = {
        "2001": images.write_jpeg_taken_at(photos_dir / "a.jpg", 1, "2001:06:01 12:00:00"),
        "2011": images.write_jpeg_taken_at(photos_dir / "b.jpg", 2, "2011:06:01 12:00:00"),
        "2021": images.write_jpeg_taken_at(photos_dir / "c.jpg", 3, "2021:06:01 12:00:00"),
    }
    images.write_good(photos_dir / "undated.jpg", "jpeg", 4)
    catalog, vectors = index_folders(make_config(photos_dir), embedder)
    searcher = Searcher(lambda: vectors, embedder, catalog.path)
    query = searcher.text_vector("anything")
    year_2005, year_2015 = 1_104_537_600.0, 1_420_070_400.0
    try:
        after = searcher.search(query, k=10, filters=Filters(after=year_2005)).hits
        before = searcher.search(query, k=10, filters=Filters(before=year_2005)).hits
        between = searcher.search(
            query, k=10, filters=Filters(after=year_2005, before=year_2015)
        ).hits

        assert {h.path for h in after} == {str(dated["2011"]), str(dated["2021"])}
        assert [h.path for h in before] == [str(dated["2001"])]
        assert [h.path for h in between] == [str(dated["2011"])]
        assert between[0].to_json()["taken_at"] == "2011-06-01T12:00:00Z"
    finally:
        catalog.close()


@pytest.mark.parametrize(
    ("k", "offset", "parameter"),
    [(0, 0, "k"), (MAX_K + 1, 0, "k"), (10, -1, "offset"), (10, 10_001, "offset")],
)
def test_out_of_range_paging_names_the_parameter(
    library: Library, k: int, offset: int, parameter: str
) -> None:
    query = library.searcher.text_vector("a dog")

    with pytest.raises(QueryError) as caught:
        library.searcher.search(query, k=k, offset=offset)

    assert caught.value.parameter == parameter


def test_text_queries_are_unit_vectors_and_terms_that_cancel_are_refused(
    library: Library,
) -> None:
    vector = library.searcher.text_vector("sunset +beach -people^0.5")
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)

    with pytest.raises(QueryError, match="cancel") as caught:
        library.searcher.text_vector('dog -dog +"a cat" -"a cat"', "query")
    assert caught.value.parameter == "query"


def test_an_unreadable_upload_is_a_query_error_about_the_image(library: Library) -> None:
    for broken in ("random-bytes", "text-as-png", "truncated-jpeg", "png-bomb"):
        with pytest.raises(QueryError) as caught:
            library.searcher.image_vector_from_bytes(images.encode_broken(broken), "upload")
        assert caught.value.parameter == "image"


def test_an_empty_index_has_no_results(
    make_config: ConfigFactory, photos_dir: Path, embedder: Embedder
) -> None:
    catalog, vectors = index_folders(make_config(photos_dir), embedder)
    searcher = Searcher(lambda: vectors, embedder, catalog.path)
    try:
        page = searcher.search(searcher.text_vector("anything"), k=5)
        assert page.hits == []
        assert page.next_offset is None
        assert (
            Searcher(lambda: None, embedder, catalog.path)
            .search(searcher.text_vector("x"), k=5)
            .hits
            == []
        )
    finally:
        catalog.close()


def test_a_picture_removed_from_the_catalog_is_not_returned(
    library: Library, embedder: Embedder
) -> None:
    photo = library.photos[2]
    image_id = library.searcher.image_id_for_path(str(photo))
    query = library.searcher.image_vector_from_id(image_id)
    photo.unlink()

    index_folders(library.config, embedder)[0].close()
    # The index object held by `library` is not the one just updated: searching it still
    # finds the id, but the catalog no longer has a path for it, so it is dropped.
    hits = library.searcher.search(query, k=PHOTOS).hits

    assert image_id not in {hit.id for hit in hits}
    assert str(photo) not in {hit.path for hit in hits}
    assert len(hits) == PHOTOS - 1
