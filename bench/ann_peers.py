"""The peers of `lookalike bench ann`: the same k-NN searches in FAISS, hnswlib and usearch.

Reads base.npy and queries.npy (float32 rows, cosine = inner product of unit rows, normalised
here), answers every query one at a time (as a shop's server does) and prints one JSON line per
library and setting: build seconds, memory of the index, queries/s, p50/p99 ms, recall@k against
the exact answer computed with numpy. A library that is not installed is reported, not fatal.
"""

import argparse
import json
import time

import numpy as np


def unit(x):
    """Rows scaled to length 1, in place: a million rows leave no room for a copy."""
    x = x.astype(np.float32, copy=False)
    for start in range(0, len(x), 65536):
        rows = x[start : start + 65536]
        rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    return x


def timed_queries(search, queries, k):
    found, millis = [], []
    for q in queries:
        t = time.perf_counter()
        found.append(search(q, k))
        millis.append((time.perf_counter() - t) * 1e3)
    return found, np.array(millis)


def report(library, setting, build_s, memory_bytes, found, millis, truth, k):
    hits = sum(len(set(map(int, f[:k])) & set(map(int, t))) for f, t in zip(found, truth))
    print(json.dumps({
        "library": library,
        "setting": setting,
        "build_s": build_s,
        "memory_mb": memory_bytes / 2**20 if memory_bytes else None,
        "qps": len(millis) / (millis.sum() / 1e3),
        "p50_ms": float(np.percentile(millis, 50)),
        "p99_ms": float(np.percentile(millis, 99)),
        "recall": hits / (len(truth) * k),
    }), flush=True)


def failed(library, error):
    print(json.dumps({"library": library, "error": str(error)}), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base", required=True)
    p.add_argument("--queries", required=True)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--efs", default="16,32,64,128,256")
    p.add_argument("--peers", default="faiss,hnswlib,usearch")
    a = p.parse_args()
    base = unit(np.load(a.base).astype(np.float32))
    queries = unit(np.load(a.queries).astype(np.float32))
    k, d = a.k, base.shape[1]
    efs = [int(e) for e in a.efs.split(",")]
    peers = a.peers.split(",")
    # In slices of queries, so that a million products never need a queries × products sort.
    truth = []
    for start in range(0, len(queries), 32):
        scores = queries[start : start + 32] @ base.T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        truth.append(np.take_along_axis(top, order, axis=1))
        del scores
    truth = np.concatenate(truth)

    if "faiss" in peers:
        faiss_peer(base, queries, k, d, efs, truth, a.threads)
    if "hnswlib" in peers:
        hnswlib_peer(base, queries, k, d, efs, truth, a.threads)
    if "usearch" in peers:
        usearch_peer(base, queries, k, d, efs, truth, a.threads)


def faiss_peer(base, queries, k, d, efs, truth, threads):
    try:
        import faiss
        faiss.omp_set_num_threads(threads)
        flat = faiss.IndexFlatIP(d)
        t = time.perf_counter()
        flat.add(base)
        build = time.perf_counter() - t
        found, ms = timed_queries(lambda q, k: flat.search(q[None], k)[1][0], queries, k)
        report("faiss", "IndexFlatIP (exact)", build, base.nbytes, found, ms, truth, k)
        del flat
        hnsw = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 200
        t = time.perf_counter()
        hnsw.add(base)
        build = time.perf_counter() - t
        for ef in efs:
            hnsw.hnsw.efSearch = max(ef, k)
            found, ms = timed_queries(lambda q, k: hnsw.search(q[None], k)[1][0], queries, k)
            report("faiss", f"IndexHNSWFlat M32 ef{ef}", build, None, found, ms, truth, k)
    except Exception as e:  # noqa: BLE001 - any failure is reported as a row
        failed("faiss", e)


def hnswlib_peer(base, queries, k, d, efs, truth, threads):
    try:
        import hnswlib
        index = hnswlib.Index(space="ip", dim=d)
        index.init_index(max_elements=len(base), ef_construction=200, M=16)
        index.set_num_threads(threads)
        t = time.perf_counter()
        index.add_items(base)
        build = time.perf_counter() - t
        index.set_num_threads(1)
        for ef in efs:
            index.set_ef(max(ef, k))
            found, ms = timed_queries(lambda q, k: index.knn_query(q, k)[0][0], queries, k)
            report("hnswlib", f"M16 ef{ef}", build, None, found, ms, truth, k)
    except Exception as e:  # noqa: BLE001
        failed("hnswlib", e)


def usearch_peer(base, queries, k, d, efs, truth, threads):
    try:
        from usearch.index import Index
        for dtype in ("f32", "i8"):
            index = Index(ndim=d, metric="cos", dtype=dtype, connectivity=16, expansion_add=200)
            t = time.perf_counter()
            index.add(np.arange(len(base)), base, threads=threads)
            build = time.perf_counter() - t
            for ef in efs:
                index.expansion_search = max(ef, k)
                found, ms = timed_queries(lambda q, k: index.search(q, k).keys, queries, k)
                report("usearch", f"{dtype} M16 ef{ef}", build, index.memory_usage, found, ms, truth, k)
    except Exception as e:  # noqa: BLE001
        failed("usearch", e)


if __name__ == "__main__":
    main()
