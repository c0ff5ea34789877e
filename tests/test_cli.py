"""The real `wmpd` command in subprocesses, on real folders, configs and data directories.

Commands that load the model cost a torch import each, so only the ones whose point is the
command itself run that way (index, search, a killed index); their set-up and the checks
afterwards use the library in this process.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tests import images
from tests.conftest import TINY_CONFIG, ConfigFactory
from wmpd.catalog import Catalog
from wmpd.config import Config
from wmpd.datadir import DataDir, acquire_writer_lock, index_stamp
from wmpd.embedder import model_id_for
from wmpd.library import run_index
from wmpd.vectors import INDEX_FILE_NAME, VectorIndex

DIM = json.loads(TINY_CONFIG.read_text())["embed_dim"]
COUNT_KEYS = ("added", "moved", "removed", "unchanged", "failed", "embedded")
COMMAND_TIMEOUT_SECONDS = 180


def free_port() -> int:
    """A port nothing listens on, so no daemon answers and every command works locally."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wmpd(
    config: Config | Path, *args: str, check: int | None = 0
) -> subprocess.CompletedProcess[str]:
    config_path = config if isinstance(config, Path) else config.source
    assert config_path is not None
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "wmpd", "--config", str(config_path), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=COMMAND_TIMEOUT_SECONDS,
    )
    if check is not None:
        assert done.returncode == check, f"exit {done.returncode}\n{done.stderr}"
    return done


@pytest.fixture
def config(make_config: ConfigFactory, photos_dir: Path) -> Config:
    return make_config(photos_dir, port=free_port())


@pytest.fixture
def small_folder(photos_dir: Path) -> images.MixedFolder:
    return images.make_mixed_folder(photos_dir, 20)


def consistent_state(config: Config) -> dict[str, int]:
    """Path → image id, after checking that the saved index holds exactly the catalog's
    visible images and every visible image has a path."""
    data_dir = DataDir(config.index.data_dir)
    model_id = model_id_for(config.model)
    catalog = Catalog(data_dir.catalog_path, readonly=True)
    try:
        paths = {
            path: row.image_id
            for root in catalog.roots()
            for path, row in catalog.paths_of_root(root.id).items()
        }
        visible = catalog.visible_ids(model_id)
        saved = VectorIndex.load(data_dir.path, index_stamp(catalog, model_id), DIM)
        assert saved is not None
        assert saved.ids() == visible == set(paths.values())
        return paths
    finally:
        catalog.close()


# -- wmpd index -----------------------------------------------------------------------------


def test_index_json_counts_a_mixed_folder(make_config: ConfigFactory, photos_dir: Path) -> None:
    folder = images.make_mixed_folder(photos_dir, 120, broken_each=2)
    config = make_config(photos_dir, port=free_port(), batch_size=16)

    done = wmpd(config, "index", "--json")

    report = json.loads(done.stdout)
    assert set(report) == {*COUNT_KEYS, "offline", "seconds"}
    assert {key: report[key] for key in COUNT_KEYS} == {
        "added": 120,
        "moved": 0,
        "removed": 0,
        "unchanged": 0,
        "failed": len(folder.broken),
        "embedded": 120,
    }
    assert report["offline"] == {}
    assert set(consistent_state(config)) == {str(p) for p in folder.good}
    second = run_index(config).stats  # the same data directory, read by the library
    assert (second.unchanged, second.embedded, second.added) == (len(folder.all_files), 0, 0)


def test_index_refuses_while_another_writer_holds_the_data_directory(
    config: Config, small_folder: images.MixedFolder
) -> None:
    lock = acquire_writer_lock(DataDir(config.index.data_dir), "test holder")
    try:
        done = wmpd(config, "index", check=1)
    finally:
        lock.release()

    assert f"test holder (pid {os.getpid()}" in done.stderr
    assert "Traceback" not in done.stderr
    assert not DataDir(config.index.data_dir).catalog_path.exists()


def _committed_paths(catalog_path: Path) -> int:
    try:
        db = sqlite3.connect(f"file:{catalog_path}?mode=ro", uri=True, timeout=0.1)
        try:
            return int(db.execute("SELECT COUNT(*) FROM paths").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error:
        return 0  # not created or not migrated yet


def test_a_killed_index_run_loses_nothing_and_duplicates_nothing(
    make_config: ConfigFactory, photos_dir: Path, tmp_path: Path
) -> None:
    folder = images.make_mixed_folder(photos_dir, 300)
    # Batches of two: many small commits, so the kill lands between some of them.
    config = make_config(photos_dir, port=free_port(), batch_size=2)
    catalog_path = DataDir(config.index.data_dir).catalog_path
    assert config.source is not None
    log = tmp_path / "index.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "wmpd", "--config", str(config.source), "index"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    try:
        deadline = time.monotonic() + COMMAND_TIMEOUT_SECONDS
        while _committed_paths(catalog_path) == 0 and process.poll() is None:
            assert time.monotonic() < deadline, "wmpd index committed nothing"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    committed = _committed_paths(catalog_path)
    assert process.returncode == -signal.SIGKILL, f"it ended by itself:\n{log.read_text()}"
    assert 0 < committed < len(folder.good)

    # The rerun may use bigger batches: the model id, and so every vector, is the same.
    rerun = run_index(replace(config, model=replace(config.model, batch_size=32))).stats

    assert rerun.embedded == len(folder.good) - committed
    assert rerun.added == len(folder.good) - committed
    assert rerun.unchanged == committed
    paths = consistent_state(config)
    assert sorted(paths) == sorted(str(p) for p in folder.good)  # each exactly once
    assert len(set(paths.values())) == len(folder.good)  # distinct content, distinct images
    assert run_index(config).stats.unchanged == len(folder.all_files)


# -- wmpd status ----------------------------------------------------------------------------


def test_status_json_before_and_after_indexing(
    config: Config, small_folder: images.MixedFolder
) -> None:
    before = json.loads(wmpd(config, "status", "--json").stdout)
    assert (before["images"], before["paths"], before["failed"]) == (0, 0, 0)
    assert before["index_consistent"] is True

    run_index(config)
    after = json.loads(wmpd(config, "status", "--json").stdout)

    assert after["state"] == "stopped"
    assert (after["images"], after["paths"]) == (20, 20)
    assert after["failed"] == len(small_folder.broken)
    assert after["index_consistent"] is True
    assert after["roots"][0]["path"] == str(small_folder.root)
    human = wmpd(config, "status").stdout
    assert "images:   20 (20 paths)" in human


# -- wmpd search ----------------------------------------------------------------------------


def test_search_text_json_local_returns_results_best_first(
    config: Config, small_folder: images.MixedFolder
) -> None:
    run_index(config)

    done = wmpd(config, "search", "a photo of a red circle", "--json", "--local", "-k", "7")

    page = json.loads(done.stdout)
    results = page["results"]
    assert len(results) == 7
    scores = [hit["score"] for hit in results]
    assert scores == sorted(scores, reverse=True)
    indexed = {str(p) for p in small_folder.good}
    for hit in results:
        assert {"path", "score", "id", "paths"} <= set(hit)
        assert hit["path"] in indexed
    assert page["next"] == 7


def test_search_by_image_ranks_the_identical_picture_first(
    config: Config, small_folder: images.MixedFolder
) -> None:
    run_index(config)
    target = small_folder.good[7]

    done = wmpd(config, "search", "--image", str(target), "--local", "-k", "3")

    lines = done.stdout.splitlines()
    assert len(lines) == 3
    score, path, _ = lines[0].split(None, 2)
    assert path == str(target)
    assert float(score) == pytest.approx(1.0, abs=1e-3)
    assert all(float(line.split()[0]) <= float(score) for line in lines)


def test_search_needs_a_query_and_an_index(config: Config) -> None:
    empty = wmpd(config, "search", "--local", check=2)
    assert "query" in empty.stderr

    not_indexed = wmpd(config, "search", "a dog", "--local", check=1)
    assert "wmpd index" in not_indexed.stderr
    assert "Traceback" not in not_indexed.stderr


def test_search_by_a_missing_image_is_refused_before_loading_anything(
    config: Config, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-picture.jpg"

    done = wmpd(config, "search", "--image", str(missing), check=2)

    assert "--image" in done.stderr
    assert str(missing) in done.stderr
    assert "Traceback" not in done.stderr


def test_open_before_indexing_is_an_error_not_a_traceback(config: Config) -> None:
    done = wmpd(config, "open", "1", check=1)

    assert "wmpd index" in done.stderr
    assert "Traceback" not in done.stderr
    assert not DataDir(config.index.data_dir).catalog_path.exists()


# -- wmpd config ----------------------------------------------------------------------------


def test_config_check_reports_every_problem_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "folders:\n"
        f"  - path: {tmp_path}\n"
        "modle:\n"  # line 3: a typo
        "  name: ViT-B-32\n"
        "server:\n"
        "  port: not-a-port\n"  # line 6
    )

    done = wmpd(tmp_path / "unused.yaml", "config", "check", str(bad), check=2)

    assert "2 problem(s)" in done.stderr
    assert "line 3" in done.stderr
    assert "line 6" in done.stderr
    assert "modle" in done.stderr


def test_config_init_writes_a_config_that_checks_and_is_not_overwritten(tmp_path: Path) -> None:
    target = tmp_path / "conf" / "config.yaml"

    written = wmpd(target, "config", "init")

    assert str(target) in written.stdout
    assert "folders:" in target.read_text()
    assert wmpd(target, "config", "check").stdout.strip() == "ok"
    target.write_text(target.read_text() + "# my edit\n")
    refused = wmpd(target, "config", "init", check=1)
    assert "--force" in refused.stderr
    assert target.read_text().endswith("# my edit\n")
    wmpd(target, "config", "init", "--force")
    assert not target.read_text().endswith("# my edit\n")


# -- wmpd repair ----------------------------------------------------------------------------


def test_repair_moves_a_corrupt_catalog_aside_and_never_touches_photos(
    config: Config, small_folder: images.MixedFolder
) -> None:
    run_index(config)
    photos_before = images.file_digests(small_folder.root)
    data_dir = DataDir(config.index.data_dir)
    garbage = b"disk error " * 1000
    for suffix in ("-wal", "-shm"):
        Path(f"{data_dir.catalog_path}{suffix}").unlink(missing_ok=True)
    data_dir.catalog_path.write_bytes(garbage)
    broken_status = wmpd(config, "status", "--json", check=1)
    assert "wmpd repair" in broken_status.stderr

    done = wmpd(config, "repair")

    assert "damaged" in done.stdout
    assert "photos were not touched" in done.stdout
    assert not data_dir.catalog_path.exists()
    assert not (data_dir.path / INDEX_FILE_NAME).exists()
    aside = list(data_dir.path.glob("catalog.sqlite3.corrupt-*"))
    assert len(aside) == 1
    assert aside[0].read_bytes() == garbage
    assert images.file_digests(small_folder.root) == photos_before
    assert run_index(config).stats.embedded == len(small_folder.good)  # re-indexes cleanly


def test_repair_leaves_a_healthy_catalog_alone(
    config: Config, small_folder: images.MixedFolder
) -> None:
    run_index(config)
    data_dir = DataDir(config.index.data_dir)
    catalog_bytes = hashlib.sha256(data_dir.catalog_path.read_bytes()).hexdigest()

    done = wmpd(config, "repair")

    assert ": ok" in done.stdout
    assert hashlib.sha256(data_dir.catalog_path.read_bytes()).hexdigest() == catalog_bytes
    assert run_index(config).stats.embedded == 0  # the index is rebuilt, not re-embedded
    consistent_state(config)
