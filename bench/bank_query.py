"""Benchmark: faiss bank query speed and true-neighbour recall@10 against exact search.

Clustered synthetic vectors (N x D, default 200,000 x 512, cosine). For each index type
(Flat, IVF-Flat, IVF-SQ8, HNSW32, auto) the bank is built with ``FaissBank.from_arrays``
(nprobe / efSearch tuned to recall@10 >= 0.95 on a sample of the data), then the SAME batch
of held-out queries is searched by the bank and by exact search (faiss ``IndexFlatIP``,
same threads); time per query is the best of ``--repeats`` batch runs.

The last line is one JSON object for the ``auto`` choice:
``{"index", "n", "dim", "recall_at_10", "speedup_vs_exact", "ms_per_query", ...}``.

    .venv/bin/python bench/bank_query.py                 # N = 200,000 (a few minutes on 2 cores)
    .venv/bin/python bench/bank_query.py --n 1000000     # optional, much longer
    .venv/bin/python bench/bank_query.py --n 20000 --indexes Flat auto   # smoke run
"""

from __future__ import annotations

import argparse
import json
import time

import faiss
import numpy as np

from featbank.heads.metrics import neighbour_recall
from featbank.store.bank import FaissBank


def clustered(
    n: int, dim: int, n_clusters: int, n_queries: int, *, spread: float, intrinsic: int, noise: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Clusters of low intrinsic dimension, like learned embeddings.

    A point of cluster ``c`` is ``centre[c] + spread * z @ B[c] + noise * e``: ``z ~ N(0, I)`` in
    ``intrinsic`` dims, a random basis ``B[c]`` per cluster (unit-variance output coordinates)
    and isotropic noise ``e``. Queries are fresh draws from the same mixture (not in the index).
    """
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_clusters, dim)).astype(np.float32)
    bases = (rng.normal(size=(n_clusters, intrinsic, dim)) / np.sqrt(intrinsic)).astype(np.float32)

    def draw(m: int) -> np.ndarray:
        out = np.empty((m, dim), np.float32)
        for s in range(0, m, 4096):  # bounded temporaries
            c = rng.integers(0, n_clusters, min(4096, m - s))
            z = rng.standard_normal((len(c), intrinsic), dtype=np.float32)
            e = rng.standard_normal((len(c), dim), dtype=np.float32)
            local = np.einsum("bi,bid->bd", z, bases[c])  # (b, intrinsic) x (b, intrinsic, dim) -> (b, dim)
            out[s : s + len(c)] = centers[c] + spread * local + noise * e
        return out

    return draw(n), draw(n_queries)


def time_batch(search, queries: np.ndarray, k: int, repeats: int) -> tuple[float, np.ndarray]:
    """Best wall time of ``repeats`` batch searches, and the neighbour ids."""
    best, ids = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        _, ids = search(queries, k)
        best = min(best, time.perf_counter() - t0)
    return best, ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--spread", type=float, default=1.0, help="within-cluster scale (larger = harder)")
    ap.add_argument("--intrinsic", type=int, default=8, help="intrinsic dimension of a cluster")
    ap.add_argument("--noise", type=float, default=0.1, help="isotropic noise per coordinate")
    ap.add_argument("--hnsw-max-n", type=int, default=50_000,
                    help="skip HNSW above this N (its build takes minutes per 1e5 vectors on 2 cores)")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--recall-target", type=float, default=0.95)
    ap.add_argument("--indexes", nargs="+", default=["Flat", "IVF1024,Flat", "IVF1024,SQ8", "HNSW32", "auto"])
    args = ap.parse_args()

    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, {faiss.get_num_gpus()} GPUs")
    t0 = time.perf_counter()
    x, q = clustered(args.n, args.dim, args.clusters, args.queries, spread=args.spread,
                     intrinsic=args.intrinsic, noise=args.noise)
    print(f"data: {args.n} x {args.dim} clustered vectors ({args.clusters} clusters, spread {args.spread} in "
          f"{args.intrinsic} dims, noise {args.noise}), "
          f"{args.queries} held-out queries, generated in {time.perf_counter() - t0:.1f}s")

    # exact baseline: faiss flat inner product on the normalised vectors, same query batch
    xn, qn = x.copy(), q.copy()
    faiss.normalize_L2(xn)
    faiss.normalize_L2(qn)
    exact = faiss.IndexFlatIP(args.dim)
    exact.add(xn)
    t_exact, exact_i = time_batch(exact.search, qn, args.k, args.repeats)
    ms_exact = 1000 * t_exact / args.queries
    del exact, xn
    print(f"exact search: {ms_exact:.3f} ms/query (batch of {args.queries})")
    print(f"{'index':28s} {'build s':>8s} {'ms/query':>9s} {'speedup':>8s} {'recall@10':>10s} {'param':>14s} {'train':>7s}")

    results = {}
    for spec in args.indexes:
        if spec.startswith("HNSW") and args.n > args.hnsw_max_n:
            print(f"{spec:28s} skipped: N={args.n} > --hnsw-max-n {args.hnsw_max_n} (graph build too slow here)")
            continue
        tb = time.perf_counter()
        bank = FaissBank.from_arrays(x, index=spec, metric="cosine", recall_target=args.recall_target)
        build_s = time.perf_counter() - tb
        t, ids = time_batch(bank.search, q, args.k, args.repeats)
        ms = 1000 * t / args.queries
        rec = neighbour_recall(ids, exact_i, k=args.k)
        info = bank.info
        param = f"nprobe={info.nprobe}" if info.nprobe else (f"efSearch={info.ef_search}" if info.ef_search else "-")
        name = f"auto -> {info.index}" if spec == "auto" else spec
        print(f"{name:28s} {build_s:8.1f} {ms:9.3f} {ms_exact / ms:8.1f} {rec:10.4f} {param:>14s} {info.train_size:7d}",
              flush=True)
        results[spec] = {
            "index": info.index, "build_s": round(build_s, 2), "ms_per_query": round(ms, 4),
            "speedup_vs_exact": round(ms_exact / ms, 2), "recall_at_10": round(rec, 4),
            "tuned_recall_at_10": info.recall_at_10, "nprobe": info.nprobe, "ef_search": info.ef_search,
            "train_size": info.train_size,
        }
        del bank

    chosen = results.get("auto") or next(iter(results.values()))
    summary = {
        **chosen,
        "n": args.n,
        "dim": args.dim,
        "queries": args.queries,
        "exact_ms_per_query": round(ms_exact, 4),
        "goal_met": bool(chosen["speedup_vs_exact"] >= 10 and chosen["recall_at_10"] >= 0.95),
        "all": results,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
