"""Bad, odd and hostile files dropped into a watched folder of a running `wmpd run`.

One daemon (without the capabilities that let root read any file, so that a 0o000 file
is unreadable to it) watches a folder; every kind of file below is dropped in while it
runs. Each has an asserted outcome: indexed (with the right size, format and first
frame), recorded as failed with a stable reason, or ignored by the documented policy.
Throughout, the daemon stays up, /api/status shows the failures by reason, the photos
are only ever read, and catalog = disk = index.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.images import (
    BOMB_SIDE,
    EXIF_ORIENTATION_TAG,
    encode_broken,
    encode_good,
    scene,
)
from tests.reliability.conftest import PILLOW_SAMPLES, make_sentinel
from tests.reliability.consistency import (
    CatalogState,
    check_consistent,
    check_saved_index,
    check_status_matches,
    read_catalog,
)
from tests.reliability.guard import PhotoGuard
from tests.reliability.harness import (
    TALLY,
    Daemon,
    DaemonFactory,
    can_make_unreadable_files,
    needs_setpriv_for_unreadable,
    wait_for,
)

FIFTY_MEGAPIXELS = (8660, 5774)  # 50.0 million pixels, 3:2
EXIF_SIDE = 96
# How much the daemon's peak memory may grow while reading all of this: a 50 MP photo is
# 150 MB as RGB pixels, a decoded bomb would be 30 GB; decoding by JPEG draft needs little.
MAX_RSS_GROWTH_BYTES = 300 * 1024**2


@dataclass
class Drop:
    """What was dropped and what the daemon made of it."""

    daemon: Daemon
    root: Path
    drop: Path
    outside: Path
    expected_failures: dict[str, str] = field(default_factory=dict)  # path -> reason
    expected_indexed: set[str] = field(default_factory=set)
    ignored: set[str] = field(default_factory=set)
    guards: list[PhotoGuard] = field(default_factory=list)
    state: CatalogState | None = None
    rss_before_bytes: int = 0
    peak_rss_bytes: int = 0

    def failed(self, path: Path, reason: str) -> Path:
        self.expected_failures[str(path)] = reason
        TALLY.fault(f"bad file: {reason}")
        return path

    def indexed(self, path: Path) -> Path:
        self.expected_indexed.add(str(path))
        return path

    def vector(self, path: Path) -> np.ndarray:
        assert self.state is not None
        image = self.state.image_of(path)
        assert image is not None, f"{path} is not indexed"
        return np.frombuffer(image.vector, dtype="<f4")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def jpeg(image: Image.Image, **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, **options)
    return out.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def fifty_megapixel_jpeg() -> bytes:
    """A legitimate 50 MP photo: a scene scaled up (smooth, so the file stays small)."""
    return jpeg(scene(31, side=256, aspect=1.5).resize(FIFTY_MEGAPIXELS, Image.Resampling.NEAREST))


def animated(format_name: str, seed: int, **options: Any) -> tuple[bytes, bytes, bytes]:
    """An animated file of two different scenes, and stills of its first and second frame."""
    frames = [scene(seed, side=64), scene(seed + 37, side=64)]
    if format_name == "GIF":
        frames = [frame.quantize(colors=32) for frame in frames]
    outs = [io.BytesIO() for _ in range(3)]
    frames[0].save(
        outs[0], format_name, save_all=True, append_images=frames[1:], duration=100, **options
    )
    frames[0].save(outs[1], format_name, **options)
    frames[1].save(outs[2], format_name, **options)
    return outs[0].getvalue(), outs[1].getvalue(), outs[2].getvalue()


def exif_oriented(orientation: int) -> bytes:
    """The same upright picture, stored so that EXIF `orientation` turns it upright."""
    upright = scene(23, side=EXIF_SIDE)  # a triangle: every flip and turn looks different
    transposes = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_90,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_270,
    }
    stored = upright.transpose(transposes[orientation]) if orientation > 1 else upright
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = orientation
    return jpeg(stored, exif=exif.tobytes())


def mpo(seed: int) -> bytes:
    out = io.BytesIO()
    first, second = scene(seed, side=64), scene(seed + 1, side=64)
    first.save(out, "MPO", save_all=True, append_images=[second], quality=90)
    return out.getvalue()


def drop_files(drop: Drop) -> None:
    """Write every kind of file into the watched folder while the daemon runs."""
    folder = drop.drop
    # -- broken: recorded with a reason --------------------------------------------------
    drop.failed(write(folder / "truncated.jpg", encode_broken("truncated-jpeg")), "truncated")
    drop.failed(write(folder / "zero-byte.jpg", b""), "empty")
    drop.failed(write(folder / "random-bytes.jpg", encode_broken("random-bytes", 5)), "corrupt")
    drop.failed(write(folder / "shopping-list.png", encode_broken("text-as-png")), "corrupt")
    drop.failed(write(folder / "bomb.png", encode_broken("png-bomb")), "too_many_pixels")
    for name, seed in [("unreadable.jpg", 41), ("unreadable-until-restart.jpg", 48)]:
        unreadable = write(folder / name, encode_good("jpeg", seed=seed))
        unreadable.chmod(0)
        if can_make_unreadable_files():
            drop.failed(unreadable, "unreadable")
        else:  # a daemon with all of root's powers reads it anyway
            drop.indexed(unreadable)
    # -- legitimate but demanding: indexed ------------------------------------------------
    drop.indexed(write(folder / "fifty-megapixels.jpg", fifty_megapixel_jpeg()))
    for name, kind, seed in [
        ("cmyk.jpg", "jpeg-cmyk", 42),
        ("sixteen-bit.png", "png-i16", 43),
        ("palette-transparent.png", "png-p-transparent", 44),
    ]:
        drop.indexed(write(folder / name, encode_good(kind, seed)))
    gif, gif_first, gif_second = animated("GIF", 45)
    webp, webp_first, webp_second = animated("WEBP", 46, lossless=True)
    for name, data in [
        ("animated.gif", gif),
        ("animated-first-frame.gif", gif_first),
        ("animated-second-frame.gif", gif_second),
        ("animated.webp", webp),
        ("animated-first-frame.webp", webp_first),
        ("animated-second-frame.webp", webp_second),
        ("stereo.mpo.jpg", mpo(47)),
    ]:
        drop.indexed(write(folder / name, data))
    for sample in sorted(PILLOW_SAMPLES.glob("*.mpo")) if PILLOW_SAMPLES.is_dir() else []:
        # The sample's extension is .mpo, which is not an image extension wmpd indexes;
        # renamed to .jpg as cameras name them.
        drop.indexed(write(folder / f"camera-{sample.stem}.jpg", sample.read_bytes()))
    for orientation in range(1, 9):
        drop.indexed(
            write(folder / f"exif-orientation-{orientation}.jpg", exif_oriented(orientation))
        )
    for orientation in (3, 6):  # controls: the stored pixels of those, with no EXIF at all
        stored = Image.open(io.BytesIO(exif_oriented(orientation)))
        drop.indexed(write(folder / f"no-exif-turned-{orientation}.jpg", jpeg(stored)))
    # -- odd names: indexed under exactly that name ---------------------------------------
    for number, name in enumerate(
        ["with spaces in it.jpg", "ünïcødé 写真 🐈.jpg", "new\nline.jpg", "-leading-dash.jpg"]
    ):
        drop.indexed(write(folder / name, encode_good("jpeg", seed=60 + number)))
    latin1 = os.fsdecode(b"Sch\xf6n.jpg")  # not UTF-8: skipped with a warning (wmpd/scan.py)
    write(folder / latin1, encode_good("jpeg", seed=65))
    drop.ignored.add(str(folder / latin1))
    # -- links: files followed, directories not -------------------------------------------
    outside_photo = write(drop.outside / "outside.jpg", encode_good("jpeg", seed=70))
    write(drop.outside / "sub" / "deeper.jpg", encode_good("jpeg", seed=71))
    (folder / "link-to-outside.jpg").symlink_to(outside_photo)
    drop.indexed(folder / "link-to-outside.jpg")
    (folder / "dir-link-to-outside").symlink_to(drop.outside, target_is_directory=True)
    drop.ignored.add(str(folder / "dir-link-to-outside" / "outside.jpg"))
    (folder / "loop").symlink_to(folder, target_is_directory=True)  # a directory loop
    (folder / "ping.jpg").symlink_to(folder / "pong.jpg")  # a file loop
    (folder / "pong.jpg").symlink_to(folder / "ping.jpg")
    (folder / "self.jpg").symlink_to(folder / "self.jpg")
    (folder / "dangling.jpg").symlink_to(folder / "not-there.jpg")
    # -- not files: a FIFO and a directory with image names -------------------------------
    os.mkfifo(folder / "fifo.jpg")  # reading it would block forever
    drop.ignored.add(str(folder / "fifo.jpg"))
    drop.indexed(write(folder / "album.jpg" / "inside.jpg", encode_good("png-rgb", seed=72)))
    TALLY.fault("odd file (name, link, loop, fifo, directory)", 15)


@pytest.fixture(scope="module")
def dropped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drop]:
    base = tmp_path_factory.mktemp("bad-inputs")
    root = base / "photos"
    sentinel = make_sentinel(root / "sentinel")
    (root / "drop").mkdir()
    factory = DaemonFactory(base)
    guards: list[PhotoGuard] = []
    try:
        drop_dac = needs_setpriv_for_unreadable() and can_make_unreadable_files()
        daemon = factory(root, drop_dac=drop_dac)
        drop = Drop(daemon, root, root / "drop", base / "outside", guards=guards)
        initial = len(os.listdir(sentinel))
        daemon.wait_idle(images=initial, paths=initial, failed=0)
        drop.rss_before_bytes = peak_rss(daemon.pid)
        drop.guards.append(PhotoGuard([sentinel]))
        drop_files(drop)
        drop.guards.append(PhotoGuard([drop.drop]))
        daemon.wait_idle(
            timeout=180,
            paths=initial + len(drop.expected_indexed),
            failed=len(drop.expected_failures),
        )
        drop.state = check_consistent(daemon.data_dir, [root])
        drop.peak_rss_bytes = peak_rss(daemon.pid)
        yield drop
    finally:
        for guard in guards:
            guard.close()
        factory.cleanup()


def needs_unreadable_files(dropped: Drop) -> None:
    if not can_make_unreadable_files():
        pytest.skip("setpriv (util-linux) is needed to make a file unreadable to root")


def peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def test_every_failure_is_recorded_with_its_reason(dropped: Drop) -> None:
    assert dropped.state is not None
    found = {path: reason for path, (reason, _) in dropped.state.failures.items()}
    assert found == dropped.expected_failures


def test_status_shows_the_failures_by_reason(dropped: Drop) -> None:
    assert dropped.state is not None
    state = dropped.state

    def agreeing() -> dict[str, Any] | None:
        status = dropped.daemon.status()
        return None if check_status_matches(status, state) else status

    status = wait_for(agreeing, 30, "the status counts to match the catalog")
    reasons: dict[str, int] = {}
    for reason in dropped.expected_failures.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    assert status["failures"] == reasons
    assert status["state"] == "idle"
    recent = {f["path"]: f["reason"] for f in status["recent_failures"]}
    assert recent == dropped.expected_failures  # ten or fewer: all of them are shown


def test_failure_details_leak_nothing_but_the_reason(dropped: Drop) -> None:
    assert dropped.state is not None
    for path, (_, detail) in dropped.state.failures.items():
        assert "Traceback" not in detail, (path, detail)
        assert len(detail) < 300, (path, detail)


def test_demanding_but_valid_files_are_indexed(dropped: Drop) -> None:
    assert dropped.state is not None
    missing = dropped.expected_indexed - set(dropped.state.paths)
    assert not missing


def test_fifty_megapixels_are_indexed_with_their_size_and_bounded_memory(dropped: Drop) -> None:
    image = dropped.state.image_of(dropped.drop / "fifty-megapixels.jpg")  # type: ignore[union-attr]
    assert image is not None
    details = dropped.daemon.get(f"/api/images/{image.id}").json()
    assert (details["width"], details["height"], details["format"]) == (*FIFTY_MEGAPIXELS, "JPEG")
    growth = dropped.peak_rss_bytes - dropped.rss_before_bytes
    TALLY.measurements["daemon_peak_rss_mib"] = round(dropped.peak_rss_bytes / 2**20, 1)
    TALLY.measurements["daemon_rss_growth_bad_inputs_mib"] = round(growth / 2**20, 1)
    assert dropped.rss_before_bytes > 0
    assert growth < MAX_RSS_GROWTH_BYTES


def test_the_bomb_was_refused_from_its_header(dropped: Drop) -> None:
    assert dropped.state is not None
    reason, detail = dropped.state.failures[str(dropped.drop / "bomb.png")]
    assert reason == "too_many_pixels"
    assert str(BOMB_SIDE * BOMB_SIDE) in detail or f"{BOMB_SIDE}x{BOMB_SIDE}" in detail
    assert dropped.peak_rss_bytes - dropped.rss_before_bytes < MAX_RSS_GROWTH_BYTES


@pytest.mark.parametrize("suffix", ["gif", "webp"])
def test_animated_files_are_indexed_by_their_first_frame(dropped: Drop, suffix: str) -> None:
    whole = dropped.vector(dropped.drop / f"animated.{suffix}")
    first = dropped.vector(dropped.drop / f"animated-first-frame.{suffix}")
    second = dropped.vector(dropped.drop / f"animated-second-frame.{suffix}")
    assert cosine(whole, first) > 0.999
    assert cosine(whole, second) < cosine(whole, first) - 0.01


def test_modes_and_containers_keep_their_format(dropped: Drop) -> None:
    formats = {
        "cmyk.jpg": "JPEG",
        "sixteen-bit.png": "PNG",
        "palette-transparent.png": "PNG",
        "animated.gif": "GIF",
        "animated.webp": "WEBP",
        "stereo.mpo.jpg": "MPO",
    }
    for name, wanted in formats.items():
        image = dropped.state.image_of(dropped.drop / name)  # type: ignore[union-attr]
        assert image is not None, name
        assert image.format == wanted, name


def test_every_exif_orientation_is_turned_upright(dropped: Drop) -> None:
    upright = scene(23, side=EXIF_SIDE).size
    reference = dropped.vector(dropped.drop / "exif-orientation-1.jpg")
    similarities = []
    for orientation in range(1, 9):
        path = dropped.drop / f"exif-orientation-{orientation}.jpg"
        image = dropped.state.image_of(path)  # type: ignore[union-attr]
        assert image is not None
        assert (image.width, image.height) == upright, orientation
        similarities.append(cosine(dropped.vector(path), reference))
    # The same picture turned upright is (nearly) the same vector; the same pixels left
    # turned are measurably further away, so this check would catch ignored EXIF.
    controls = [
        cosine(dropped.vector(dropped.drop / f"no-exif-turned-{o}.jpg"), reference) for o in (3, 6)
    ]
    TALLY.measurements["exif_min_upright_similarity"] = round(min(similarities), 4)
    TALLY.measurements["exif_max_turned_similarity"] = round(max(controls), 4)
    assert min(similarities) > max(controls), (similarities, controls)


@pytest.mark.parametrize(
    "name",
    [
        "with spaces in it.jpg",
        "ünïcødé 写真 🐈.jpg",
        "new\nline.jpg",
        "-leading-dash.jpg",
    ],
)
def test_odd_names_are_catalogued_and_served_exactly(dropped: Drop, name: str) -> None:
    path = dropped.drop / name
    image = dropped.state.image_of(path)  # type: ignore[union-attr]
    assert image is not None, name
    details = dropped.daemon.get(f"/api/images/{image.id}").json()
    assert details["paths"] == [str(path)]
    served = dropped.daemon.get(f"/file/{image.id}")
    assert served.status == 200
    assert served.body == path.read_bytes()


def test_a_name_that_is_not_utf8_is_skipped(dropped: Drop) -> None:
    assert dropped.state is not None
    for path in dropped.ignored:
        assert path not in dropped.state.paths
        assert path not in dropped.state.failures


def test_a_name_that_is_not_utf8_is_logged_when_dropped(dropped: Drop) -> None:
    assert re.search(r"skipping .*Sch.*\.jpg", dropped.daemon.log()), "the name is not logged"


def test_links_follow_files_but_not_directories(dropped: Drop) -> None:
    assert dropped.state is not None
    link = dropped.drop / "link-to-outside.jpg"
    assert str(link) in dropped.state.paths  # catalogued under the link's own path
    assert not [p for p in dropped.state.paths if "dir-link-to-outside" in p]
    assert not [p for p in dropped.state.paths if "/loop/" in p]
    for name in ["ping.jpg", "pong.jpg", "self.jpg", "dangling.jpg", "fifo.jpg"]:
        assert str(dropped.drop / name) not in dropped.state.paths
        assert str(dropped.drop / name) not in dropped.state.failures


def test_a_directory_named_like_an_image_is_a_directory(dropped: Drop) -> None:
    assert dropped.state is not None
    assert str(dropped.drop / "album.jpg") not in dropped.state.failures
    assert str(dropped.drop / "album.jpg" / "inside.jpg") in dropped.state.paths


def test_search_never_returns_a_ghost(dropped: Drop) -> None:
    assert dropped.state is not None
    for query in ["a red circle", "a photo", "grass"]:
        answer = dropped.daemon.get(f"/api/search?q={query.replace(' ', '%20')}&k=500")
        assert answer.status == 200
        hits = answer.json()["results"]
        assert len(hits) == len(dropped.state.visible_ids)
        for hit in hits:
            assert set(hit["paths"]) <= set(dropped.state.paths)
            assert all(os.path.exists(p) for p in hit["paths"])


def test_the_daemon_stayed_up_and_photos_were_only_read(dropped: Drop) -> None:
    assert dropped.daemon.alive(), dropped.daemon.describe()
    for guard in dropped.guards:
        guard.check()
    # A traceback the HTTP error handler logs goes with a 500 that an HTTP test reports;
    # any other means a thread of the daemon met something it did not expect.
    log = dropped.daemon.log()
    tracebacks = log.count("Traceback")
    served = log.count("unexpected error while serving a request")
    assert tracebacks == served, dropped.daemon.describe()


def test_fixed_files_are_retried_and_indexed(dropped: Drop) -> None:
    """A failure is retried when the file changes: a chmod, or the whole file rewritten."""
    needs_unreadable_files(dropped)
    unreadable = dropped.drop / "unreadable.jpg"
    truncated = dropped.drop / "truncated.jpg"
    dropped.guards[1].close()  # checked above; the test itself changes two files now
    unreadable.chmod(0o644)
    truncated.write_bytes(encode_good("jpeg", seed=73))
    for path in (unreadable, truncated):
        dropped.expected_failures.pop(str(path))
        dropped.expected_indexed.add(str(path))

    def both_indexed() -> CatalogState | None:
        state = read_catalog(dropped.daemon.data_dir)
        return state if {str(unreadable), str(truncated)} <= set(state.paths) else None

    state = wait_for(
        both_indexed, 60, "the fixed files to be indexed", details=dropped.daemon.describe
    )
    assert str(unreadable) not in state.failures
    assert str(truncated) not in state.failures
    dropped.daemon.wait_idle(failed=len(dropped.expected_failures))
    dropped.state = check_consistent(dropped.daemon.data_dir, [dropped.root])


def test_clean_stop_saves_exactly_the_catalog_and_unchanged_failures_stay(dropped: Drop) -> None:
    daemon = dropped.daemon
    assert daemon.stop() == 0
    state = check_consistent(daemon.data_dir, [dropped.root])
    check_saved_index(daemon.data_dir, state)
    daemon.start()
    daemon.wait_idle(failed=len(dropped.expected_failures), paths=len(state.paths))
    # Unchanged failures are not read again (except unreadable ones: a permission fix
    # leaves size and mtime alone, so those are retried at every scan), and nothing known
    # is re-embedded.
    retried = sum(1 for reason in dropped.expected_failures.values() if reason == "unreadable")
    reconciled = re.findall(
        r"reconciled .*: (\d+) to index, (\d+) removed", daemon.log_since_start()
    )
    assert reconciled == [(str(retried), "0")], daemon.describe()
    after = check_consistent(daemon.data_dir, [dropped.root])
    assert after.images == state.images


def test_a_file_made_readable_while_stopped_is_retried_at_start(dropped: Drop) -> None:
    needs_unreadable_files(dropped)
    daemon = dropped.daemon
    assert daemon.stop() == 0
    path = dropped.drop / "unreadable-until-restart.jpg"
    path.chmod(0o644)
    daemon.start()
    daemon.wait_idle()
    state = read_catalog(daemon.data_dir)
    assert str(path) in state.paths, state.failures.get(str(path))
