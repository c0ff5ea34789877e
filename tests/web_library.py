"""A small indexed photo library and web apps over it, shared by the web tests.

Everything is real: files written with Pillow, indexed by `wmpd.library.run_index` with
the repository's tiny CLIP model, searched through a real Searcher and FAISS index.
"""

from __future__ import annotations

import shutil
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask
from PIL import Image

from tests.conftest import TINY_CONFIG, TINY_WEIGHTS
from wmpd.config import Config, ServerConfig, load_config
from wmpd.library import LocalSearch, open_local_search, run_index
from wmpd.web import create_app

EXIF_ORIENTATION = 0x0112
EXIF_IFD = 0x8769
EXIF_DATETIME_ORIGINAL = 0x9003
EXIF_OFFSET_TIME_ORIGINAL = 0x9011
RED_TAKEN_AT = "2021-06-01T12:00:00Z"
MAX_PIXELS = 100_000_000
MAX_FILE_BYTES = 50_000_000

STATUS: dict[str, Any] = {
    "state": "idle",
    "state_detail": None,
    "version": "0.1.0",
    "uptime_seconds": 12.5,
    "model_id": "tiny-clip",
    "model_ready": True,
    "images": 5,
    "paths": 6,
    "failed": 0,
    "failures": {},
    "recent_failures": [],
    "queue": 0,
    "progress": {"done": 6, "total": 6, "rate": 0.0, "eta_seconds": None},
    "roots": [{"path": "/photos", "state": "watching", "detail": None}],
    "index_size": 5,
    "index_consistent": True,
    "warnings": [],
}


@dataclass
class Library:
    config: Config
    local: LocalSearch
    photos: Path
    ids: dict[str, int]  # file name relative to photos → image id

    def path(self, name: str) -> Path:
        return self.photos / name


def write_photos(folder: Path) -> None:
    """Five images, six paths: one photo has a byte-identical copy in a subfolder."""
    (folder / "sub").mkdir(parents=True)
    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD)[EXIF_DATETIME_ORIGINAL] = "2021:06:01 12:00:00"
    exif.get_ifd(EXIF_IFD)[EXIF_OFFSET_TIME_ORIGINAL] = "+00:00"
    Image.new("RGB", (96, 64), (220, 20, 20)).save(folder / "red.jpg", exif=exif.tobytes())
    shutil.copyfile(folder / "red.jpg", folder / "sub" / "red-copy.jpg")
    Image.new("RGB", (64, 64), (20, 20, 220)).save(folder / "blue.png")
    big = Image.linear_gradient("L").resize((1600, 1200)).convert("RGB")
    big.save(folder / "big.jpg", quality=90)
    # Stored on its side: the left half is black; EXIF 6 turns it so that black is on top.
    sideways = Image.new("RGB", (200, 100), (255, 255, 255))
    sideways.paste((0, 0, 0), (0, 0, 100, 100))
    rotate = Image.Exif()
    rotate[EXIF_ORIENTATION] = 6
    sideways.save(folder / "sideways.jpg", exif=rotate.tobytes(), quality=95)
    Image.new("RGB", (48, 72), (20, 160, 20)).save(folder / "sub" / "green.webp")


def build_library(root: Path) -> Library:
    photos = root / "photos"
    write_photos(photos)
    config_path = root / "config.yaml"
    config_path.write_text(
        f"folders:\n  - path: {photos}\n"
        f"model:\n  name: {TINY_CONFIG}\n  pretrained: {TINY_WEIGHTS}\n  threads: 1\n"
        f"index:\n  data_dir: {root / 'data'}\n"
    )
    config = load_config(config_path)
    run_index(config)
    local = open_local_search(config)
    names = [p.relative_to(photos).as_posix() for p in sorted(photos.rglob("*")) if p.is_file()]
    ids = {}
    for name in names:
        row = local.searcher.catalog().path_row(str(photos / name))
        assert row is not None, f"{name} was not indexed"
        ids[name] = row.image_id
    return Library(config, local, photos, ids)


def make_app(
    library: Library,
    thumbnails_dir: Path,
    *,
    model_ready: bool = True,
    status: Any = None,
    **server: Any,
) -> Flask:
    app = create_app(
        library.local.searcher,
        status=status or (lambda: dict(STATUS)),
        model_ready=lambda: model_ready,
        server=ServerConfig(**server),
        thumbnails_dir=thumbnails_dir,
        max_image_pixels=MAX_PIXELS,
        max_file_bytes=MAX_FILE_BYTES,
    )
    app.testing = True
    return app


# -- watching which files the process opens ---------------------------------------------------

_OPENED: list[str] = []
_WATCHING = threading.Event()
_HOOKED: list[bool] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and _WATCHING.is_set() and args and isinstance(args[0], (str, bytes)):
        path = args[0].decode(errors="replace") if isinstance(args[0], bytes) else args[0]
        _OPENED.append(path)


@contextmanager
def files_opened() -> Iterator[list[str]]:
    """The paths opened (by open(), os.open(), ...) in this process while inside the block."""
    if not _HOOKED:
        sys.addaudithook(_audit)  # cannot be removed: it records only while watching
        _HOOKED.append(True)
    _OPENED.clear()
    _WATCHING.set()
    try:
        yield _OPENED
    finally:
        _WATCHING.clear()
