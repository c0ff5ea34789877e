"""Read, hash and decode files on a thread pool, overlapped with embedding.

Pillow and hashlib release the GIL, so a small pool keeps the model fed while it
encodes the previous batch. Each worker thread has its own read-only catalog
connection to ask whether a content hash is already embedded with the current model,
so known content (copies, moves seen as delete+create) is never decoded or embedded.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from wmpd.catalog import Catalog
from wmpd.errors import ImageError
from wmpd.imaging import DecodedImage, DecodeOptions, PreprocessSpec, content_hash, decode_image
from wmpd.imaging import read_file as read_image_file
from wmpd.scan import Fingerprint

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Candidate:
    """A file that may need (re)indexing."""

    path: Path
    root_id: int
    fingerprint: Fingerprint


@dataclass(frozen=True)
class Prepared:
    """A candidate after reading: its hash, and pixels when it must be embedded."""

    candidate: Candidate
    hash: str | None = None
    known: bool = False  # the hash is already embedded with the current model
    decoded: DecodedImage | None = None
    error: ImageError | None = None


# Decoded items allowed to wait ahead of the model: two default batches, so that while
# the model encodes one batch the pool is already decoding the next (a smaller window
# stalls the model at every batch boundary while the pool catches up).
PREFETCH_IMAGES = 64


def default_decode_workers() -> int:
    """One decode thread per core (at least two).

    The model runs as single-threaded streams, so extra runnable threads only share the
    cores instead of stalling a thread team, and decoders stop once PREFETCH_IMAGES are
    ready. Measured on 2 cores over the fetched photos (bench/indexing_tune.py): 12.3
    images/s with 2 decode threads, 9.9 with 1, at the same ~158 CPU-ms per image.
    """
    return max(2, min(8, os.cpu_count() or 2))


class Preparer:
    """Turns candidates into Prepared items on a bounded thread pool."""

    def __init__(
        self,
        catalog_path: Path,
        model_id: str,
        spec: PreprocessSpec,
        options: DecodeOptions,
        max_file_bytes: int,
        workers: int | None = None,
    ) -> None:
        self._catalog_path = catalog_path
        self._model_id = model_id
        self._spec = spec
        self._options = options
        self._max_file_bytes = max_file_bytes
        self._workers = workers or default_decode_workers()
        self._local = threading.local()
        self._readers: list[Catalog] = []
        self._readers_lock = threading.Lock()

    def prepare_all(self, candidates: Iterable[Candidate]) -> Iterator[Prepared]:
        with ThreadPoolExecutor(self._workers, thread_name_prefix="wmpd-decode") as pool:
            window = max(self._workers * 4, PREFETCH_IMAGES)
            yield from bounded_map(pool, self.prepare, candidates, window)

    def prepare(self, candidate: Candidate) -> Prepared:
        try:
            data = read_image_file(candidate.path, self._max_file_bytes)
            digest = content_hash(data)
            if self._is_known(digest):
                return Prepared(candidate, hash=digest, known=True)
            decoded = decode_image(data, candidate.path, self._spec, self._options)
            return Prepared(candidate, hash=digest, decoded=decoded)
        except ImageError as exc:
            return Prepared(candidate, error=exc)
        except MemoryError:
            return Prepared(
                candidate,
                error=ImageError(str(candidate.path), "corrupt", "not enough memory to decode"),
            )

    def _is_known(self, digest: str) -> bool:
        reader: Catalog | None = getattr(self._local, "catalog", None)
        if reader is None:
            reader = Catalog(self._catalog_path, readonly=True)
            self._local.catalog = reader
            with self._readers_lock:
                self._readers.append(reader)
        image = reader.image_by_hash(digest)
        return image is not None and image.model_id == self._model_id

    def close(self) -> None:
        with self._readers_lock:
            for reader in self._readers:
                reader.close()
            self._readers.clear()


def bounded_map(
    pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], window: int
) -> Iterator[R]:
    """Like pool.map, in order, but with at most `window` items in flight (bounded memory)."""
    pending: deque[Future[R]] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
