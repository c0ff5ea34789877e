"""Search latency through HTTP at 10k, 100k and 1M catalogued images, and the index's recall.

Two parts:
  index   search alone, in this process, one query at a time: exact search (IndexFlatIP)
          against the inverted file at several sizes (the data behind the exact→IVF
          threshold), with recall@10 against exact search and build times.
  http    a real `wmpd run` daemon (ViT-B-32, random weights) over a synthetic catalog
          (CLIP-like unit vectors; see bench.common.ClipLike), queried from this process:
          new text queries (text tower + search), repeated ones (LRU cache hit), image
          queries by id and by upload, then 16 concurrent clients. The recall@10 of the
          index file the daemon loaded is measured against exact search for image-like,
          text-like and the random model's own text vectors.
Targets: text p50 <= 30 ms at 100k and <= 40 ms at 1M (new query), <= 5 ms repeated.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    DIM,
    PHOTOS,
    ClipLike,
    DaemonProcess,
    emit_json,
    free_port,
    load_average,
    model_id_for,
    percentiles,
    print_table,
    synthetic_data_dir,
    synthetic_root,
    write_config,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ADJECTIVES = ("red", "old", "small", "wet", "sunny", "snowy", "bright", "dark", "quiet")
NOUNS = ("dog", "bicycle", "bridge", "beach", "mountain", "cat", "boat", "tree", "car")
PLACES = ("at night", "in the rain", "near a lake", "in a city", "on grass", "at sunset")
CONCURRENT_CLIENTS = 16


def text_queries(count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    queries = {
        f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(PLACES)} {rng.integers(1e6)}"
        for _ in range(count * 2)
    }
    return sorted(queries)[:count]


# -- part 1: the index alone -----------------------------------------------------------------


def time_searches(search: Any, queries: np.ndarray, k: int = 20) -> list[float]:
    samples = []
    for query in queries:
        started = time.perf_counter()
        search(query[None], k)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def index_row(size: int, vectors: np.ndarray, ids: np.ndarray, queries: int) -> dict[str, Any]:
    """Exact and inverted-file search over the same vectors: latency, recall, build time."""
    import faiss

    from wmpd import ann
    from wmpd.ann import AnnPolicy
    from wmpd.vectors import VectorIndex

    shape = ClipLike()
    image_like = shape.chunk(queries, seed=size + 7)
    text_like = shape.text_like(queries, seed=size + 8)
    flat = faiss.IndexFlatIP(DIM)
    flat.add(vectors)
    faiss.omp_set_num_threads(1)  # what a request thread gets (wmpd.ann.search)
    exact_ms = time_searches(flat.search, image_like)
    started = time.perf_counter()
    forced = AnnPolicy(exact_max_vectors=1)  # an inverted file at every size, to compare
    index = VectorIndex.build(DIM, [(ids, vectors)], forced)
    index.wait_until_built()
    build_s = time.perf_counter() - started
    ivf_ms = time_searches(index.search, image_like)
    truth_image = ids[ann.exact_top_k(vectors, image_like, 10)]
    truth_text = ids[ann.exact_top_k(vectors, text_like, 10)]
    return {
        "n": size,
        "exact_p50_ms": percentiles(exact_ms)["p50"],
        "ivf_p50_ms": percentiles(ivf_ms)["p50"],
        "ivf_layout": index.layout,
        "ivf_build_s": round(build_s, 1),
        "recall_image": round(ann.recall_at_k(index.search(image_like, 10)[1], truth_image), 3),
        "recall_text": round(ann.recall_at_k(index.search(text_like, 10)[1], truth_text), 3),
    }


def index_part(sizes: list[int], queries: int) -> list[dict[str, Any]]:
    shape = ClipLike()
    rows = []
    for size in sizes:
        vectors = np.concatenate(list(shape.chunks(size, seed=3)))
        ids = np.arange(1, size + 1, dtype=np.int64)
        rows.append(index_row(size, vectors, ids, queries))
        del vectors
        print_table(
            "Search alone (one thread, k=20): exact vs inverted file",
            ["n", "exact p50 ms", "ivf p50 ms", "ivf layout", "build s", "recall img", "text"],
            [
                [
                    r["n"],
                    r["exact_p50_ms"],
                    r["ivf_p50_ms"],
                    r["ivf_layout"],
                    r["ivf_build_s"],
                    r["recall_image"],
                    r["recall_text"],
                ]
                for r in rows
            ],
        )
    return rows


# -- part 2: through HTTP --------------------------------------------------------------------


class Client:
    """One keep-alive connection, like a browser tab or a launcher."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def request(
        self,
        method: str,
        route: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[float, dict[str, Any]]:
        started = time.perf_counter()
        self.connection.request(method, route, body=body, headers=headers or {})
        response = self.connection.getresponse()
        payload = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        if response.status != 200:
            raise RuntimeError(f"{method} {route}: {response.status} {payload[:300]!r}")
        return elapsed, json.loads(payload)

    def text(self, query: str) -> float:
        return self.text_timed(query)[0]

    def text_timed(self, query: str) -> tuple[float, float]:
        """(client-measured ms, the server's own took_ms: model + search + catalog)."""
        elapsed, body = self.request("GET", f"/api/search?k=20&q={quote(query)}")
        return elapsed, float(body["took_ms"])

    def by_id(self, image_id: int) -> float:
        body = json.dumps({"image_id": image_id, "k": 20}).encode()
        return self.request("POST", "/api/search", body, {"Content-Type": "application/json"})[0]

    def upload(self, jpeg: bytes) -> float:
        boundary = uuid.uuid4().hex
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
                f'filename="q.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
            ).encode()
            + jpeg
            + f"\r\n--{boundary}--\r\n".encode()
        )
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        return self.request("POST", "/api/search", body, headers)[0]


def query_jpeg() -> bytes:
    """A phone-sized JPEG made from a fetched photo (or a flat grey one without photos)."""
    import io

    from PIL import Image

    sources = sorted(PHOTOS.glob("*.jpg")) if PHOTOS.exists() else []
    image = Image.open(sources[0]).convert("RGB") if sources else Image.new("RGB", (640, 480))
    image.thumbnail((640, 640))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def concurrent(port: int, queries: list[list[str]]) -> tuple[list[float], float]:
    samples: list[float] = []
    lock = threading.Lock()

    def run(mine: list[str]) -> None:
        client = Client(port)
        for query in mine:
            elapsed = client.text(query)
            with lock:
                samples.append(elapsed)

    threads = [threading.Thread(target=run, args=(q,)) for q in queries]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return samples, len(samples) / (time.perf_counter() - started)


def http_size(size: int, counts: dict[str, int], work: Path, precision: str) -> dict[str, Any]:
    data_dir = synthetic_data_dir(size, precision=precision)
    port = free_port()
    config = write_config(
        work, [synthetic_root()], data_dir, server=True, port=port, precision=precision
    )
    daemon = DaemonProcess(config, port, work / f"daemon-{size}.log")
    try:
        daemon.wait_for("/api/status", lambda s: s.get("model_ready"), deadline_s=600)
        client = Client(port)
        rng = np.random.default_rng(size)
        fresh = iter(text_queries(counts["new"] + counts["concurrent"] + 10, seed=size))
        for _ in range(3):
            client.text(next(fresh))  # warm-up: first calls allocate
        new_timed = [client.text_timed(next(fresh)) for _ in range(counts["new"])]
        new = [client_ms for client_ms, _ in new_timed]
        server_ms = [took for _, took in new_timed]
        repeated_query = next(fresh)
        client.text(repeated_query)
        repeated = [client.text(repeated_query) for _ in range(counts["repeated"])]
        ids = rng.integers(1, size + 1, counts["by_id"])
        by_id = [client.by_id(int(i)) for i in ids]
        jpeg = query_jpeg()
        client.upload(jpeg)
        upload = [client.upload(jpeg) for _ in range(counts["upload"])]
        per_client = counts["concurrent"] // CONCURRENT_CLIENTS
        batches = [[next(fresh) for _ in range(per_client)] for _ in range(CONCURRENT_CLIENTS)]
        many_new, qps_new = concurrent(port, batches)
        many_repeated, qps_repeated = concurrent(
            port, [[repeated_query] * per_client for _ in range(CONCURRENT_CLIENTS)]
        )
        rss = daemon.rss_mb()
    finally:
        daemon.stop()
    return {
        "n": size,
        "text_new": percentiles(new),
        "text_new_server_took_ms": percentiles(server_ms),
        "text_repeated": percentiles(repeated),
        "image_by_id": percentiles(by_id),
        "image_upload": percentiles(upload),
        "concurrent16_new": {**percentiles(many_new), "qps": round(qps_new, 1)},
        "concurrent16_repeated": {**percentiles(many_repeated), "qps": round(qps_repeated, 1)},
        "daemon_rss_mb": round(rss),
    }


def recall_of_saved_index(size: int, embedder: Any, queries: int, precision: str) -> dict[str, Any]:
    """recall@10 of the index file the daemon loads, against exact search over the catalog."""
    from wmpd import ann
    from wmpd.catalog import Catalog
    from wmpd.datadir import DataDir, index_stamp
    from wmpd.vectors import VectorIndex

    data_dir = DataDir(synthetic_data_dir(size, precision=precision))
    model_id = model_id_for(precision)
    catalog = Catalog(data_dir.catalog_path, readonly=True)
    try:
        stamp = index_stamp(catalog, model_id)
        parts = list(catalog.iter_visible_vectors(model_id))
    finally:
        catalog.close()
    ids = np.concatenate([p[0] for p in parts])
    vectors = np.concatenate([p[1] for p in parts])
    del parts
    index = VectorIndex.load(data_dir.path, stamp, DIM)
    if index is None:
        raise RuntimeError(f"the saved index in {data_dir.path} does not load")
    shape = ClipLike()
    sets = {
        "image_like": shape.chunk(queries, seed=size + 1),
        "text_like": shape.text_like(queries, seed=size + 2),
    }
    if embedder is not None:
        sets["model_text"] = embedder.encode_texts(text_queries(queries, seed=size + 3))
    result: dict[str, Any] = {"n": size, "layout": index.layout}
    for name, query_vectors in sets.items():
        truth = ids[ann.exact_top_k(vectors, query_vectors, 10)]
        result[name] = round(ann.recall_at_k(index.search(query_vectors, 10)[1], truth), 3)
    return result


def load_embedder(precision: str) -> Any:
    from wmpd.config import load_config
    from wmpd.embedder import Embedder

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        config = load_config(
            write_config(directory, [directory], directory / "d", precision=precision)
        )
    embedder = Embedder(config.model)
    embedder.load()
    return embedder


def print_http(rows: list[dict[str, Any]], recalls: list[dict[str, Any]]) -> None:
    kinds = [
        ("text_new", "text, new"),
        ("text_repeated", "text, repeated"),
        ("image_by_id", "image by id"),
        ("image_upload", "image upload"),
        ("concurrent16_new", "16 clients, new text"),
        ("concurrent16_repeated", "16 clients, repeated"),
    ]
    table = []
    for row in rows:
        for key, label in kinds:
            figures = row[key]
            qps = figures.get("qps", "")
            table.append([row["n"], label, figures["p50"], figures["p95"], figures["p99"], qps])
            if key == "text_new":
                took = row["text_new_server_took_ms"]
                table.append(
                    [
                        row["n"],
                        "  of which search (took_ms)",
                        took["p50"],
                        took["p95"],
                        took["p99"],
                        "",
                    ]
                )
    print_table(
        "Through HTTP (ms, client-measured, k=20)",
        ["n", "query", "p50", "p95", "p99", "qps"],
        table,
    )
    print_table(
        "recall@10 of the index the daemon serves, vs exact search",
        ["n", "layout", "image-like", "text-like", "model text"],
        [
            [r["n"], r["layout"], r["image_like"], r["text_like"], r.get("model_text", "-")]
            for r in recalls
        ],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", default="", help="comma list, e.g. 10000,100000")
    parser.add_argument("--index-sizes", default="", help="sizes for the index-alone table")
    parser.add_argument("--skip-index", action="store_true")
    parser.add_argument("--precision", default="fp32", help="model.precision of the daemon")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    quick = args.quick
    sizes = [int(s) for s in args.sizes.split(",") if s] or (
        [10_000] if quick else [10_000, 100_000, 1_000_000]
    )
    index_sizes = [int(s) for s in args.index_sizes.split(",") if s] or (
        [10_000] if quick else [10_000, 25_000, 50_000, 100_000]
    )
    counts = (
        {"new": 20, "repeated": 40, "by_id": 20, "upload": 5, "concurrent": 64}
        if quick
        else {"new": 100, "repeated": 200, "by_id": 100, "upload": 20, "concurrent": 320}
    )
    load_before = load_average()
    index_rows = [] if args.skip_index else index_part(index_sizes, 50 if quick else 200)
    embedder = None if quick else load_embedder(args.precision)
    recalls = [
        recall_of_saved_index(size, embedder, 50 if quick else 200, args.precision)
        for size in sizes
    ]
    del embedder
    rows = []
    with tempfile.TemporaryDirectory(prefix="wmpd-bench-search-") as tmp:
        for size in sizes:
            rows.append(http_size(size, counts, Path(tmp), args.precision))
            print_http(rows, recalls[: len(rows)])
    targets = {}
    for row in rows:
        if row["n"] == 100_000:
            targets["target_text_new_p50_100k_30ms"] = row["text_new"]["p50"] <= 30
        if row["n"] == 1_000_000:
            targets["target_text_new_p50_1m_40ms"] = row["text_new"]["p50"] <= 40
        if row["n"] >= 100_000:
            targets[f"target_repeated_p50_{row['n']}_5ms"] = row["text_repeated"]["p50"] <= 5
    emit_json(
        "search_latency",
        {
            "index": index_rows,
            "http": rows,
            "recall": recalls,
            "precision": args.precision,
            "load_average": [round(load_before, 2), round(load_average(), 2)],
            **targets,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
