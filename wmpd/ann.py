"""Which FAISS index to use for a collection of a given size, and how to build and query it.

Small collections use exact search (IndexFlatIP inside IndexIDMap2). Past
`AnnPolicy.exact_max_vectors` a single-query exact search costs more than the whole
repeated-query budget, so the index becomes an inverted file (IVF): k-means lists of
float16 vectors, probed `nprobe` lists at a time. IVF rather than HNSW because
 - IVF removes ids in place (with a hash-table direct map); HNSW cannot remove at all,
   and tombstones plus periodic rebuilds would cost a full rebuild per batch of deletes;
 - building HNSW over 1M 512-d vectors takes tens of minutes on two cores, IVF a few;
 - float16 lists halve memory (1M vectors: 1 GB instead of 2) at a score error ~1e-4.
`nprobe` is not a guess: after each build it is calibrated on queries drawn from the
collection itself to the smallest value whose recall@10 against exact search reaches
`AnnPolicy.recall_target`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import faiss as _faiss
import numpy as np

# The stubs bundled with faiss miss most of what is used here (DirectMap, IVF fields,
# inverted lists, search parameters), so the module and its indexes are typed loosely.
faiss: Any = _faiss
FaissIndex = Any

logger = logging.getLogger(__name__)

EXACT = "exact"
IVF = "ivf"
NPROBE_LADDER = (4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
CALIBRATION_QUERIES = 400
CALIBRATION_K = 10
TEXT_QUERY_COSINE = 0.35
ADD_CHUNK_VECTORS = 65_536


@dataclass(frozen=True)
class AnnPolicy:
    """When to switch index types, and how big and how precise the IVF index is."""

    # Exact search above this size costs more than ~5 ms per query on one core.
    exact_max_vectors: int = 32_768
    # Lists = LISTS_PER_SQRT * sqrt(n), rounded to a power of two.
    lists_per_sqrt: float = 2.0
    train_points_per_list: int = 32
    train_iterations: int = 10
    recall_target: float = 0.97  # margin over the 0.95 promised for queries unlike these
    # Rebuild when the ideal list count is this factor away from the built one (≈ n x4).
    relist_factor: float = 2.0

    def nlist_for(self, count: int) -> int:
        raw = self.lists_per_sqrt * math.sqrt(max(count, 1))
        return int(max(16, 2 ** round(math.log2(raw))))

    def wanted(self, count: int, current: Layout) -> Layout:
        """The layout for `count` vectors, with hysteresis so sizes near a bound don't flap."""
        if current.kind == EXACT:
            if count >= self.exact_max_vectors:
                return Layout(IVF, self.nlist_for(count))
            return current
        if count < self.exact_max_vectors // 2:
            return Layout(EXACT)
        ideal = self.lists_per_sqrt * math.sqrt(count)
        if ideal >= current.nlist * self.relist_factor or ideal * self.relist_factor <= (
            current.nlist
        ):
            return Layout(IVF, self.nlist_for(count))
        return current


DEFAULT_POLICY = AnnPolicy()


@dataclass(frozen=True)
class Layout:
    kind: str
    nlist: int = 0

    def describe(self, nprobe: int = 0) -> str:
        return EXACT if self.kind == EXACT else f"ivf{self.nlist},fp16,nprobe={nprobe}"


def layout_of(index: FaissIndex) -> Layout:
    if isinstance(index, faiss.IndexIVF):
        return Layout(IVF, int(index.nlist))
    return Layout(EXACT)


def is_supported(index: FaissIndex) -> bool:
    if isinstance(index, faiss.IndexIVFScalarQuantizer):
        return bool(
            index.metric_type == faiss.METRIC_INNER_PRODUCT
            and index.direct_map.type == faiss.DirectMap.Hashtable
        )
    return isinstance(index, faiss.IndexIDMap2)


def new_exact(dim: int) -> FaissIndex:
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def build(
    layout: Layout, dim: int, ids: np.ndarray, vectors: np.ndarray, policy: AnnPolicy
) -> FaissIndex:
    """A new index of `layout` holding exactly these vectors."""
    if layout.kind == EXACT:
        index = new_exact(dim)
        if len(ids):
            index.add_with_ids(vectors, ids)
        return index
    return build_ivf(dim, layout.nlist, ids, vectors, policy)


def build_ivf(
    dim: int, nlist: int, ids: np.ndarray, vectors: np.ndarray, policy: AnnPolicy
) -> FaissIndex:
    started = time.perf_counter()
    rng = np.random.default_rng(len(ids))
    index = faiss.IndexIVFScalarQuantizer(
        faiss.IndexFlatIP(dim),
        dim,
        nlist,
        faiss.ScalarQuantizer.QT_fp16,
        faiss.METRIC_INNER_PRODUCT,
    )
    # fp16 needs no residuals, and without them a list's codes decode to the vectors.
    index.by_residual = False
    # Unit centroids make the inner-product list assignment match the k-means clusters.
    index.cp.spherical = True
    index.cp.niter = policy.train_iterations
    index.cp.max_points_per_centroid = policy.train_points_per_list
    index.cp.min_points_per_centroid = 1
    sample = min(len(ids), nlist * policy.train_points_per_list)
    index.train(vectors[np.sort(rng.choice(len(ids), size=sample, replace=False))])
    index.set_direct_map_type(faiss.DirectMap.Hashtable)
    for start in range(0, len(ids), ADD_CHUNK_VECTORS):
        end = start + ADD_CHUNK_VECTORS
        index.add_with_ids(vectors[start:end], ids[start:end])
    index.nprobe = calibrate_nprobe(index, ids, vectors, policy.recall_target, rng)
    logger.info(
        "built %s over %d vectors in %.1fs",
        Layout(IVF, nlist).describe(index.nprobe),
        len(ids),
        time.perf_counter() - started,
    )
    return index


def calibration_queries(vectors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Half image queries (a stored vector, slightly moved), half text-like queries.

    A CLIP text query sits far from every image (cosine ~0.3 to its best matches), where
    an inverted file is weakest; it is modelled as a stored vector blended with a random
    direction down to cosine TEXT_QUERY_COSINE with it.
    """
    count = min(CALIBRATION_QUERIES, len(vectors))
    picks = vectors[rng.choice(len(vectors), size=count)]
    directions = _unit(rng.standard_normal(picks.shape).astype(np.float32))
    near = picks[: count // 2] + 0.05 * directions[: count // 2]
    far = picks[count // 2 :] * TEXT_QUERY_COSINE + directions[count // 2 :] * math.sqrt(
        1 - TEXT_QUERY_COSINE**2
    )
    return _unit(np.concatenate([near, far]))


def _unit(rows: np.ndarray) -> np.ndarray:
    normalised: np.ndarray = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    return normalised


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k best rows for each query (brute force, in bounded memory)."""
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_rows = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(vectors), ADD_CHUNK_VECTORS):
        scores = queries @ vectors[start : start + ADD_CHUNK_VECTORS].T
        rows = np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape)
        scores = np.concatenate([best_scores, scores], axis=1)
        rows = np.concatenate([best_rows, rows], axis=1)
        keep = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        best_scores = np.take_along_axis(scores, keep, axis=1)
        best_rows = np.take_along_axis(rows, keep, axis=1)
    return best_rows


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return hits / max(1, truth.size)


def calibrate_nprobe(
    index: FaissIndex,
    ids: np.ndarray,
    vectors: np.ndarray,
    target: float,
    rng: np.random.Generator,
) -> int:
    """The smallest nprobe whose recall@10 reaches `target` for each kind of query.

    Image and text-like queries are held to the target separately: averaged, the easy
    image queries would hide text queries well below it.
    """
    queries = calibration_queries(vectors, rng)
    truth = ids[exact_top_k(vectors, queries, CALIBRATION_K)]
    half = len(queries) // 2
    for nprobe in NPROBE_LADDER:
        if nprobe >= index.nlist:
            break
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        _, found = index.search(queries, CALIBRATION_K, params=params)
        worst = min(
            recall_at_k(found[:half], truth[:half]), recall_at_k(found[half:], truth[half:])
        )
        if worst >= target:
            return nprobe
    return int(index.nlist)


def all_ids(index: FaissIndex) -> np.ndarray:
    if isinstance(index, faiss.IndexIVF):
        lists = index.invlists
        parts = [
            faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
            for i in range(index.nlist)
            if lists.list_size(i)
        ]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    id_map: np.ndarray = faiss.vector_to_array(index.id_map).astype(np.int64)
    return id_map


def extract(index: FaissIndex) -> tuple[np.ndarray, np.ndarray]:
    """Copies of every (id, vector) the index holds, to rebuild it in another layout."""
    dim = index.d
    if isinstance(index, faiss.IndexIVF):
        lists = index.invlists
        id_parts: list[np.ndarray] = []
        vector_parts: list[np.ndarray] = []
        for i in range(index.nlist):
            size = lists.list_size(i)
            if not size:
                continue
            id_parts.append(faiss.rev_swig_ptr(lists.get_ids(i), size).copy())
            codes = faiss.rev_swig_ptr(lists.get_codes(i), size * lists.code_size)
            vector_parts.append(index.sq.decode(codes.reshape(size, lists.code_size)))
        if not id_parts:
            return np.zeros(0, dtype=np.int64), np.zeros((0, dim), dtype=np.float32)
        return np.concatenate(id_parts), np.concatenate(vector_parts).astype(np.float32)
    flat = faiss.downcast_index(index.index)
    count = int(index.ntotal)
    ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    if count == 0:
        return ids, np.zeros((0, dim), dtype=np.float32)
    vectors = faiss.rev_swig_ptr(flat.get_xb(), count * dim).reshape(count, dim).copy()
    return ids, vectors


def remove(index: FaissIndex, ids: np.ndarray) -> int:
    if isinstance(index, faiss.IndexIVF):
        # The hash-table direct map removes by id only through an IDSelectorArray.
        selector = faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids))
        return int(index.remove_ids(selector))
    return int(index.remove_ids(ids))


def reconstruct(index: FaissIndex, image_id: int) -> np.ndarray | None:
    try:
        return np.asarray(index.reconstruct(int(image_id)), dtype=np.float32)
    except RuntimeError:
        return None


def search(index: FaissIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top k by inner product; an IVF index probes more lists when k is large."""
    # One OpenMP thread for the calling thread only (the setting is per thread): FAISS
    # parallelises over queries, so a single query gains nothing from a team, and on a
    # busy machine the team's spin-waits made a 10k exact search 30x slower (measured).
    faiss.omp_set_num_threads(1)
    if not isinstance(index, faiss.IndexIVF):
        return index.search(queries, k)  # type: ignore[no-any-return]
    params = faiss.SearchParametersIVF(nprobe=probes_for(index, k))
    return index.search(queries, k, params=params)  # type: ignore[no-any-return]


def probes_for(index: FaissIndex, k: int) -> int:
    """Enough lists that the probed share of the collection holds ~4k candidates."""
    base = max(1, int(index.nprobe))
    if index.ntotal == 0:
        return base
    needed = math.ceil(4 * k * index.nlist / index.ntotal)
    return int(min(index.nlist, max(base, needed)))
