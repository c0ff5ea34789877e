"""The thumbnail disk cache, and opening a catalogued original safely.

Thumbnails are keyed by content hash and size, so a cached one is valid for as long as
any file with that content exists: browsers may keep it forever (`immutable`), and a
move or rename costs nothing. Files are only ever opened from paths the catalog holds,
and only when they still look like what was indexed.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from wmpd.catalog import Catalog
from wmpd.errors import ImageError
from wmpd.imaging import content_hash, make_thumbnail, read_file

logger = logging.getLogger(__name__)

MIN_THUMB_SIZE = 64
MAX_THUMB_SIZE = 1024
DEFAULT_THUMB_SIZE = 320
_HASH = re.compile(r"[0-9a-f]{32}")


class ThumbnailCache:
    """JPEG thumbnails on disk under `directory/<2 hex>/<hash>-<size>.jpg`."""

    def __init__(self, directory: Path, max_image_pixels: int, max_file_bytes: int) -> None:
        self.directory = directory
        self._max_image_pixels = max_image_pixels
        self._max_file_bytes = max_file_bytes

    def path_for(self, image_hash: str, size: int) -> Path:
        # The hash comes from the catalog, but it still becomes a file name: insist on its shape.
        if not _HASH.fullmatch(image_hash):
            raise ValueError(f"not a content hash: {image_hash!r}")
        return self.directory / image_hash[:2] / f"{image_hash}-{size}.jpg"

    def thumbnail(self, image_hash: str, size: int, sources: list[str]) -> bytes:
        """The cached thumbnail, made from the first source whose content still matches.

        Raises LookupError when no source has that content any more (deleted or edited since
        it was indexed: the watcher will catch up), ImageError when it cannot be decoded.
        """
        cached = self.path_for(image_hash, size)
        try:
            return cached.read_bytes()
        except FileNotFoundError:
            pass
        source, data = self._read_matching(image_hash, sources)
        thumbnail = make_thumbnail(data, source, size, self._max_image_pixels)
        self._store(cached, thumbnail)
        return thumbnail

    def _read_matching(self, image_hash: str, sources: list[str]) -> tuple[Path, bytes]:
        for source in map(Path, sources):
            try:
                data = read_file(source, self._max_file_bytes)
            except ImageError as exc:
                logger.debug("cannot read %s for a thumbnail: %s", source, exc.reason)
                continue
            # A thumbnail cached under a hash must show that content, never a later edit.
            if content_hash(data) == image_hash:
                return source, data
        raise LookupError("the file has changed or gone since it was indexed")

    def _store(self, target: Path, data: bytes) -> None:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, temp_name = tempfile.mkstemp(prefix=".thumb-", dir=target.parent)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            # Atomic, so a concurrent reader sees the whole thumbnail or none.
            os.replace(temp_name, target)
        except OSError as exc:
            # A full disk or a read-only cache only costs speed; the thumbnail is still served.
            logger.warning("cannot cache thumbnail %s: %s", target, exc)


def clamp_size(size: int) -> int:
    return max(MIN_THUMB_SIZE, min(MAX_THUMB_SIZE, size))


@dataclass
class OpenedOriginal:
    """An open catalogued file, checked to be the one that was indexed."""

    file: BinaryIO
    path: str
    size: int
    mtime: float


def open_original(catalog: Catalog, image_id: int) -> OpenedOriginal | None:
    """The first path of the image whose file still has its indexed size and mtime."""
    for path in catalog.paths_of_image(image_id):
        row = catalog.path_row(path)
        if row is None or row.image_id != image_id:
            continue  # moved between the two queries
        opened = _open_if_unchanged(path, row.size, row.mtime_ns)
        if opened is not None:
            return opened
    return None


def _open_if_unchanged(path: str, size: int, mtime_ns: int) -> OpenedOriginal | None:
    try:
        # O_NONBLOCK: a FIFO put where a photo was must not hang a server thread.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    info = os.fstat(fd)
    # The size and mtime the catalog recorded: a file swapped since (for a link to a secret
    # elsewhere, say) is not what was indexed, and is not served.
    if not stat.S_ISREG(info.st_mode) or (info.st_size, info.st_mtime_ns) != (size, mtime_ns):
        os.close(fd)
        return None
    return OpenedOriginal(os.fdopen(fd, "rb"), path, info.st_size, info.st_mtime)
