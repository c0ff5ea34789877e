"""Queries (text, image, mixed, +/-) → ranked hits with their paths and metadata.

The same result shape serves `wmpd search --json` and the HTTP API.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from wmpd.catalog import Catalog
from wmpd.embedder import Embedder
from wmpd.errors import ImageError, QueryError
from wmpd.imaging import DecodeOptions, decode_image
from wmpd.query import parse_query
from wmpd.vectors import VectorIndex

MAX_K = 500
MAX_OFFSET = 10_000
# How many more neighbours to fetch than asked for when filters may drop some.
FILTER_OVERFETCH = 4


@dataclass(frozen=True)
class Filters:
    folder: str | None = None
    after: float | None = None  # capture time, UNIX seconds
    before: float | None = None
    formats: tuple[str, ...] = ()
    min_score: float | None = None

    @property
    def narrows(self) -> bool:
        return bool(
            self.folder or self.after is not None or self.before is not None or self.formats
        )


@dataclass(frozen=True)
class Hit:
    id: int
    path: str
    paths: list[str]
    score: float
    width: int | None
    height: int | None
    taken_at: float | None
    format: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "path": self.path,
            "paths": self.paths,
            "score": round(self.score, 6),
            "width": self.width,
            "height": self.height,
            "taken_at": _iso(self.taken_at),
            "format": self.format,
            "thumb_url": f"/thumb/{self.id}",
            "file_url": f"/file/{self.id}",
        }


@dataclass(frozen=True)
class SearchPage:
    hits: list[Hit]
    took_ms: float
    next_offset: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "results": [hit.to_json() for hit in self.hits],
            "took_ms": round(self.took_ms, 2),
            "next": self.next_offset,
        }


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat().replace("+00:00", "Z")


class Searcher:
    """Answers queries; safe to call from many threads at once."""

    def __init__(
        self,
        vectors: Callable[[], VectorIndex | None],
        embedder: Embedder,
        catalog_path: Path,
        max_image_pixels: int = 200_000_000,
    ) -> None:
        # `vectors` is a getter: the daemon may swap in a rebuilt index at any time.
        self._vectors = vectors
        self._embedder = embedder
        self._catalog_path = catalog_path
        self._max_image_pixels = max_image_pixels
        self._local = threading.local()

    def catalog(self) -> Catalog:
        """This thread's read-only catalog connection."""
        reader: Catalog | None = getattr(self._local, "catalog", None)
        if reader is None:
            reader = Catalog(self._catalog_path, readonly=True)
            self._local.catalog = reader
        return reader

    # -- query vectors --------------------------------------------------------------------

    def text_vector(self, query: str, parameter: str = "q") -> np.ndarray:
        terms = parse_query(query, parameter)
        total = np.zeros(self._embedder.dim, dtype=np.float32)
        for term in terms:
            total += term.weight * self._embedder.encode_text(term.text)
        return unit_vector(total, parameter)

    def image_vector_from_bytes(self, data: bytes, name: str = "upload") -> np.ndarray:
        try:
            decoded = decode_image(
                data,
                Path(name),
                self._embedder.spec,
                DecodeOptions(max_image_pixels=self._max_image_pixels),
            )
        except ImageError as exc:
            raise QueryError("image", f"cannot read the uploaded image: {exc.detail}") from exc
        vector: np.ndarray = self._embedder.encode_images(decoded.pixels[None])[0]
        return vector

    def image_vector_from_id(self, image_id: int, parameter: str = "image_id") -> np.ndarray:
        vector = self.catalog().vector(image_id)
        image = self.catalog().image(image_id)
        if vector is None or image is None or image.orphaned:
            raise LookupError(f"no image with id {image_id}")
        if image.model_id != self._embedder.model_id:
            raise QueryError(
                parameter, "this image has not been re-embedded with the current model yet"
            )
        return vector.astype(np.float32)

    def image_id_for_path(self, path: str) -> int:
        if not _is_utf8(path):  # e.g. "\udcff" from JSON: never a catalogued path
            raise LookupError(f"{path!r} is not in the catalog")
        row = self.catalog().path_row(path)
        if row is None:
            raise LookupError(f"{path} is not in the catalog")
        return row.image_id

    # -- searching ------------------------------------------------------------------------

    def search(
        self,
        query_vector: np.ndarray,
        k: int = 20,
        offset: int = 0,
        filters: Filters = Filters(),
        exclude_ids: frozenset[int] = frozenset(),
    ) -> SearchPage:
        started = time.perf_counter()
        if not 1 <= k <= MAX_K:
            raise QueryError("k", f"must be between 1 and {MAX_K}")
        if not 0 <= offset <= MAX_OFFSET:
            raise QueryError("offset", f"must be between 0 and {MAX_OFFSET}")
        if filters.folder is not None and not _is_utf8(filters.folder):
            raise QueryError("folder", "must be valid UTF-8 text")
        vectors = self._vectors()
        if vectors is None or len(vectors) == 0:
            return SearchPage([], _ms_since(started), None)
        wanted = offset + k + 1  # one more, to know whether a next page exists
        ranked = self._ranked_ids(vectors, query_vector, wanted, filters, exclude_ids)
        page = ranked[offset : offset + k]
        hits = self._hits(page)
        next_offset = offset + k if len(ranked) > offset + k else None
        return SearchPage(hits, _ms_since(started), next_offset)

    def _ranked_ids(
        self,
        vectors: VectorIndex,
        query: np.ndarray,
        wanted: int,
        filters: Filters,
        exclude_ids: frozenset[int],
    ) -> list[tuple[int, float]]:
        total = len(vectors)
        fetch = wanted + len(exclude_ids)
        if filters.narrows:
            fetch *= FILTER_OVERFETCH
        while True:
            scores, ids = vectors.search(query[None], min(fetch, total))
            pairs = [
                (int(i), float(s))
                for i, s in zip(ids[0], scores[0], strict=True)
                if i >= 0 and int(i) not in exclude_ids
            ]
            if filters.min_score is not None:
                pairs = [(i, s) for i, s in pairs if s >= filters.min_score]
            if filters.narrows:
                kept = self.catalog().filter_ids(
                    [i for i, _ in pairs],
                    folder=filters.folder,
                    after=filters.after,
                    before=filters.before,
                    formats=filters.formats,
                )
                pairs = [(i, s) for i, s in pairs if i in kept]
            exhausted = fetch >= total or (
                filters.min_score is not None
                and len(scores[0])
                and scores[0][-1] < filters.min_score
            )
            if len(pairs) >= wanted or exhausted:
                return pairs[:wanted]
            fetch *= 4

    def _hits(self, ranked: list[tuple[int, float]]) -> list[Hit]:
        ids = [i for i, _ in ranked]
        catalog = self.catalog()
        images = catalog.images(ids)
        paths = catalog.paths_of_images(ids)
        hits = []
        for image_id, score in ranked:
            image = images.get(image_id)
            image_paths = paths.get(image_id) or []
            if image is None or not image_paths:
                continue  # removed between the FAISS search and this lookup
            hits.append(
                Hit(
                    image_id,
                    image_paths[0],
                    image_paths,
                    score,
                    image.width,
                    image.height,
                    image.taken_at,
                    image.format,
                )
            )
        return hits


def _is_utf8(text: str) -> bool:
    """False for text with lone surrogates, which SQLite cannot take as a parameter."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def unit_vector(
    vector: np.ndarray, parameter: str, reason: str = "the terms cancel each other out"
) -> np.ndarray:
    """A summed query vector made unit length; a sum that cancels out names `parameter`."""
    norm = float(np.linalg.norm(vector))
    if norm < 1e-6:
        raise QueryError(parameter, reason)
    return (vector / norm).astype(np.float32)


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
