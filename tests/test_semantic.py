"""Search finds the right picture: the shipped tiny CLIP, end to end through wmpd.

A folder of rendered scenes (every colour x shape, at realistic sizes, in JPEG, PNG,
WebP, GIF, CMYK JPEG and EXIF-rotated JPEG) is indexed through the real indexing path
and searched through the real search path and the real CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ConfigFactory, write_test_config
from tests.models import scenes
from tests.synthetic import LabelledImage, make_labelled_folder, make_rotated_copy
from wmpd.config import Config
from wmpd.library import LocalSearch, open_local_search, run_index

PAIRS = [(colour, shape) for colour in scenes.COLOURS for shape in scenes.SHAPES]
COPIES_PER_PAIR = 2


@pytest.fixture(scope="module")
def scene_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[LabelledImage]]:
    folder = tmp_path_factory.mktemp("scenes") / "photos"
    backgrounds = list(scenes.BACKGROUNDS)
    combos = [
        (colour, shape, backgrounds[(i * COPIES_PER_PAIR + copy) % len(backgrounds)])
        for copy in range(COPIES_PER_PAIR)
        for i, (colour, shape) in enumerate(PAIRS)
    ]
    images = make_labelled_folder(folder, combos, seed=7, sizes=(512, 1400))
    return folder, images


@pytest.fixture(scope="module")
def indexed(
    scene_folder: tuple[Path, list[LabelledImage]],
    tmp_path_factory: pytest.TempPathFactory,
    tiny_weights: Path,
) -> Iterator[tuple[Config, LocalSearch, dict[str, LabelledImage]]]:
    folder, images = scene_folder
    config = write_test_config(tmp_path_factory.mktemp("index"), folder, batch_size=32)
    result = run_index(config)
    assert result.stats.failed == 0
    assert result.stats.embedded == len(images)
    local = open_local_search(config)
    yield config, local, {str(image.path): image for image in images}
    local.close()


def _top(local: LocalSearch, query: str, k: int) -> list[str]:
    page = local.searcher.search(local.searcher.text_vector(query), k=k)
    return [hit.path for hit in page.hits]


def test_every_colour_and_shape_query_finds_its_pictures(
    indexed: tuple[Config, LocalSearch, dict[str, LabelledImage]],
) -> None:
    _, local, by_path = indexed
    precisions = {}
    for colour, shape in PAIRS:
        top = _top(local, scenes.query_for(colour, shape), COPIES_PER_PAIR)
        right = sum(
            1 for path in top if (by_path[path].colour, by_path[path].shape) == (colour, shape)
        )
        precisions[f"{colour} {shape}"] = right / COPIES_PER_PAIR
    mean_precision = sum(precisions.values()) / len(precisions)
    misses = {query: p for query, p in precisions.items() if p < 1}
    assert mean_precision >= 0.9, f"mean precision@{COPIES_PER_PAIR} {mean_precision}: {misses}"
    assert min(precisions.values()) >= 0.5, misses


@pytest.mark.parametrize("colour", list(scenes.COLOURS))
def test_colour_only_queries_return_that_colour(
    indexed: tuple[Config, LocalSearch, dict[str, LabelledImage]], colour: str
) -> None:
    _, local, by_path = indexed
    top = _top(local, f"a {colour} shape", 5)
    assert sum(by_path[path].colour == colour for path in top) >= 4, top


@pytest.mark.parametrize("shape", list(scenes.SHAPES))
def test_shape_only_queries_return_that_shape(
    indexed: tuple[Config, LocalSearch, dict[str, LabelledImage]], shape: str
) -> None:
    _, local, by_path = indexed
    top = _top(local, f"a photo of a {shape}", 5)
    assert sum(by_path[path].shape == shape for path in top) >= 4, top


def test_negative_term_pushes_a_colour_out(
    indexed: tuple[Config, LocalSearch, dict[str, LabelledImage]],
) -> None:
    _, local, by_path = indexed
    plain = _top(local, "a photo of a circle", 10)
    without_red = _top(local, "a photo of a circle -red", 10)
    assert any(by_path[path].colour == "red" for path in plain)
    assert sum(by_path[path].colour == "red" for path in without_red) < sum(
        by_path[path].colour == "red" for path in plain
    )


def test_exif_rotated_copy_is_found_as_a_near_duplicate(
    scene_folder: tuple[Path, list[LabelledImage]], make_config: ConfigFactory, tmp_path: Path
) -> None:
    _, images = scene_folder
    folder = tmp_path / "dupes"
    folder.mkdir()
    original = next(im for im in images if im.format == "jpeg" and im.orientation == 1)
    source = folder / "original.jpg"
    source.write_bytes(original.path.read_bytes())
    for orientation in (3, 6, 8):
        make_rotated_copy(source, folder / f"rotated-{orientation}.jpg", orientation)
    for other in images[:10]:  # distractors
        (folder / f"other-{other.path.name}").write_bytes(other.path.read_bytes())
    config = make_config(folder)
    run_index(config)
    local = open_local_search(config)
    try:
        source_id = local.searcher.image_id_for_path(str(source))
        page = local.searcher.search(
            local.searcher.image_vector_from_id(source_id), k=4, exclude_ids=frozenset({source_id})
        )
    finally:
        local.close()
    top = {Path(hit.path).name: hit.score for hit in page.hits[:3]}
    assert set(top) == {"rotated-3.jpg", "rotated-6.jpg", "rotated-8.jpg"}, top
    assert min(top.values()) >= 0.99, top


def test_cli_search_finds_the_picture(
    indexed: tuple[Config, LocalSearch, dict[str, LabelledImage]],
) -> None:
    config, _, by_path = indexed
    assert config.source is not None
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "wmpd",
            "--config",
            str(config.source),
            "search",
            "a photo of a blue star",
            "-k",
            "2",
            "--json",
            "--local",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    results = json.loads(completed.stdout)["results"]
    assert [(by_path[r["path"]].colour, by_path[r["path"]].shape) for r in results] == [
        ("blue", "star"),
        ("blue", "star"),
    ]
    assert results[0]["score"] >= results[1]["score"]


def test_daemon_serves_the_right_pictures_over_http(
    scene_folder: tuple[Path, list[LabelledImage]], tmp_path: Path, tiny_weights: Path
) -> None:
    """The same scenes, this time noticed by `wmpd run` and searched over its JSON API."""
    from tests.daemon_harness import Daemon, free_port, write_config

    _, images = scene_folder
    folder = tmp_path / "watched"
    folder.mkdir()
    daemon = Daemon(
        write_config(tmp_path / "config.yaml", [folder], tmp_path / "data", port=free_port()),
        tmp_path / "daemon.log",
    ).start()
    try:
        daemon.wait_ready(timeout=120)
        # Dropped in while the daemon runs: the watcher, not a start-up scan, finds them.
        chosen = [im for im in images if im.shape in ("star", "heart")]
        for image in chosen:
            (folder / image.path.name).write_bytes(image.path.read_bytes())
        daemon.wait_for(
            lambda: daemon.get_json("/api/status")["images"] == len(chosen),
            "the dropped scenes to be indexed",
            timeout=120,
        )
        by_name = {image.path.name: image for image in chosen}
        for colour in ("red", "blue", "green"):
            page = daemon.get_json("/api/search", q=scenes.query_for(colour, "star"), k=2)
            found = [by_name[Path(hit["path"]).name] for hit in page["results"]]
            assert [(im.colour, im.shape) for im in found] == [(colour, "star")] * 2, found
    finally:
        daemon.stop()
