"""Walking roots on a real temp tree: exclude globs, recursion, extensions, symlinks, roots."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wmpd.config_schema import DEFAULT_EXCLUDE, DEFAULT_EXTENSIONS
from wmpd.scan import (
    Fingerprint,
    RootRules,
    fingerprint,
    is_candidate,
    is_excluded,
    is_walkable_dir,
    root_problem,
    walk_root,
)


def rules(root: Path, *, recursive: bool = True, exclude: tuple[str, ...] = ()) -> RootRules:
    return RootRules(root, recursive, frozenset(DEFAULT_EXTENSIONS), DEFAULT_EXCLUDE + exclude)


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def walked(root_rules: RootRules) -> list[str]:
    return sorted(str(p.relative_to(root_rules.root)) for p, _ in walk_root(root_rules))


@pytest.mark.parametrize(
    ("relative", "patterns", "excluded"),
    [
        ("a/.hidden/b.jpg", (".*",), True),
        (".secret.jpg", (".*",), True),
        ("a/b.jpg", (".*",), False),
        ("x/@eaDir/b.jpg", ("@eaDir",), True),
        ("Screenshots/s.png", ("Screenshots",), True),
        ("my Screenshots/s.png", ("Screenshots",), False),
        ("a/b.tmp.jpg", ("*.tmp.jpg",), True),
        ("raw/2020/a.jpg", ("raw/*",), True),
        ("raw/a.jpg", ("raw/",), True),
        ("other/raw/a.jpg", ("raw/*",), False),
        ("2020/exports/a.jpg", ("*/exports",), True),
        ("2020/exports-old/a.jpg", ("*/exports",), False),
        ("a/B.JPG", ("b.jpg",), False),  # globs are case-sensitive, like the file system
    ],
)
def test_exclude_globs_match_a_component_or_the_whole_path(
    relative: str, patterns: tuple[str, ...], excluded: bool
) -> None:
    assert is_excluded(PurePosixPath(relative), patterns) is excluded


_NAME_PART = st.sampled_from(["a", "B", ".hidden", "@eaDir", "raw", "Screenshots", "x y", "ü"])
_FILE_NAME = st.builds(
    lambda stem, ext: f"{stem}{ext}",
    st.sampled_from(["p", ".dot", "raw", "img.tmp"]),
    st.sampled_from([".jpg", ".JPG", ".png", ".txt", "", ".jpeg.bak", ".HeIc"]),
)


@settings(max_examples=40, deadline=None)
@given(
    files=st.lists(
        st.tuples(st.lists(_NAME_PART, max_size=3), _FILE_NAME), min_size=1, max_size=12
    ),
    recursive=st.booleans(),
    exclude=st.lists(st.sampled_from(["raw", "raw/*", "*.tmp.jpg", "B/a", "x*"]), max_size=2),
)
def test_the_walk_finds_exactly_the_files_is_candidate_accepts(
    files: list[tuple[list[str], str]], recursive: bool, exclude: list[str]
) -> None:
    # The watcher decides with is_candidate, a rescan with walk_root: if they disagreed,
    # every rescan would delete what the watcher added (or the reverse).
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        written = set()
        for parts, name in files:
            path = root.joinpath(*parts, name)
            if any(p.is_file() for p in path.parents) or path.is_dir():
                continue  # a name already used as a file (or folder) higher up
            touch(path)
            written.add(path)
        tree = rules(root, recursive=recursive, exclude=tuple(exclude))

        found = {path for path, _ in walk_root(tree)}

        assert found == {path for path in written if is_candidate(path, tree)}


def test_walk_finds_candidates_and_skips_excluded_files_and_folders(tmp_path: Path) -> None:
    for name in (
        "a.jpg",
        "sub/b.png",
        "sub/deeper/c.webp",
        ".hidden.jpg",
        ".cache/d.jpg",
        "@eaDir/e.jpg",
        "Screenshots/f.jpg",
        "sub/Screenshots/g.jpg",
        "raw/h.jpg",
        "notes.txt",
        "noextension",
    ):
        touch(tmp_path / name)

    found = walked(rules(tmp_path, exclude=("Screenshots", "raw/*")))

    assert found == ["a.jpg", "sub/b.png", "sub/deeper/c.webp"]


def test_extensions_are_case_insensitive(tmp_path: Path) -> None:
    for name in ("A.JPG", "b.Jpeg", "c.PnG", "d.TIFF", "e.jpg.txt", "f.JPG.bak"):
        touch(tmp_path / name)

    assert walked(rules(tmp_path)) == ["A.JPG", "b.Jpeg", "c.PnG", "d.TIFF"]


def test_a_non_recursive_root_takes_only_its_own_files(tmp_path: Path) -> None:
    touch(tmp_path / "top.jpg")
    touch(tmp_path / "sub" / "inner.jpg")
    flat = rules(tmp_path, recursive=False)

    assert walked(flat) == ["top.jpg"]
    assert is_candidate(tmp_path / "top.jpg", flat)
    assert not is_candidate(tmp_path / "sub" / "inner.jpg", flat)
    assert not is_walkable_dir(tmp_path / "sub", flat)
    assert is_walkable_dir(tmp_path, flat)


def test_is_candidate_agrees_with_the_walk_for_paths_that_do_not_exist(tmp_path: Path) -> None:
    tree = rules(tmp_path / "root", exclude=("raw/*",))

    assert is_candidate(tmp_path / "root" / "gone" / "a.jpg", tree)
    assert not is_candidate(tmp_path / "root" / "raw" / "a.jpg", tree)
    assert not is_candidate(tmp_path / "root" / ".trash" / "a.jpg", tree)
    assert not is_candidate(tmp_path / "elsewhere" / "a.jpg", tree)
    assert not is_candidate(tmp_path / "root", tree)
    assert not is_walkable_dir(tmp_path / "root" / "@eaDir", tree)
    assert not is_walkable_dir(tmp_path / "elsewhere", tree)


def test_symlinked_files_are_followed_under_the_link_name(tmp_path: Path) -> None:
    outside = touch(tmp_path / "outside" / "real.jpg", b"12345")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link.jpg").symlink_to(outside)
    (root / "dangling.jpg").symlink_to(tmp_path / "missing.jpg")

    found = dict(walk_root(rules(root)))

    assert list(found) == [root / "link.jpg"]
    assert found[root / "link.jpg"].size == 5


def test_symlinked_directories_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    touch(outside / "elsewhere.jpg")
    root = tmp_path / "root"
    touch(root / "own.jpg")
    (root / "linked-dir").symlink_to(outside, target_is_directory=True)

    assert walked(rules(root)) == ["own.jpg"]


def test_a_symlink_loop_does_not_hang_the_walk(tmp_path: Path) -> None:
    root = tmp_path / "root"
    touch(root / "a" / "photo.jpg")
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)
    (root / "self.jpg").symlink_to(root / "self.jpg")  # a link to itself: stat fails, ELOOP

    assert walked(rules(root)) == ["a/photo.jpg"]


def test_directories_and_specials_named_like_photos_are_not_candidates(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "folder.jpg").mkdir(parents=True)
    touch(root / "folder.jpg" / "inside.jpg")
    os.mkfifo(root / "pipe.jpg")

    assert walked(rules(root)) == ["folder.jpg/inside.jpg"]
    assert fingerprint(root / "pipe.jpg") is None
    assert fingerprint(root / "folder.jpg") is None


def test_names_that_are_not_utf8_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    touch(tmp_path / "good.jpg")
    raw_root = os.fsencode(tmp_path)
    with open(os.path.join(raw_root, b"caf\xe9.jpg"), "wb") as latin1_file:
        latin1_file.write(b"x")
    os.mkdir(os.path.join(raw_root, b"f\xeate"))
    with open(os.path.join(raw_root, b"f\xeate", b"inside.jpg"), "wb") as inside:
        inside.write(b"x")
    tree = rules(tmp_path)
    bad_file = Path(os.fsdecode(os.path.join(raw_root, b"caf\xe9.jpg")))
    bad_dir = Path(os.fsdecode(os.path.join(raw_root, b"f\xeate")))

    assert walked(tree) == ["good.jpg"]
    assert not is_candidate(bad_file, tree)
    assert not is_candidate(bad_dir / "inside.jpg", tree)
    assert not is_walkable_dir(bad_dir, tree)
    warnings = [r.getMessage() for r in caplog.records if r.name == "wmpd.scan"]
    assert len(warnings) == 2
    assert all("not valid UTF-8" in message for message in warnings)


def test_fingerprint_is_size_and_mtime(tmp_path: Path) -> None:
    path = touch(tmp_path / "a.jpg", b"abc")
    os.utime(path, ns=(1_000_000_000, 2_000_000_123))

    assert fingerprint(path) == Fingerprint(3, 2_000_000_123)
    assert fingerprint(tmp_path / "missing.jpg") is None


def test_an_unreadable_subfolder_is_skipped_not_fatal(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads every folder")
    touch(tmp_path / "ok.jpg")
    locked = tmp_path / "locked"
    touch(locked / "hidden.jpg")
    locked.chmod(0)
    try:
        assert walked(rules(tmp_path)) == ["ok.jpg"]
    finally:
        locked.chmod(0o755)


def test_root_problem_explains_missing_and_not_a_directory(tmp_path: Path) -> None:
    missing = tmp_path / "unplugged"
    a_file = touch(tmp_path / "file.jpg")

    assert root_problem(tmp_path) is None
    missing_problem = root_problem(missing)
    assert missing_problem is not None
    assert str(missing) in missing_problem
    assert "does not exist" in missing_problem
    file_problem = root_problem(a_file)
    assert file_problem is not None
    assert "not a directory" in file_problem
