"""Benchmark: faiss bank query speed and true-neighbour recall@10 against exact search, per data mode.

Data modes (``--data``, several allowed; default all three):

* ``easy``: clustered vectors of low intrinsic dimension (1,000 clusters, intrinsic dimension 8,
  small isotropic noise): IVF finds the neighbours with nprobe 1.
* ``embedding``: vectors shaped like learned embeddings: a power-law eigen-spectrum
  (variance of principal direction ``j`` proportional to ``j ** -alpha``, ``alpha = 1``) in a random
  orthogonal basis, and weak clusters (1,000 centres that carry ``--cluster-share`` = 30% of the
  variance; the rest is Gaussian under the same spectrum). Neighbourhoods cut across IVF cells.
* ``real``: real I3D features: the shared clips (``../shared/data/clips``) extracted by the
  extraction job (``featbank extract``, K400 I3D, 8-frame windows every 4 frames, 3 crops) into
  ``--real-store``; every (window, crop) row is one vector. Extracted on the first run when the
  store is absent. Small (a few hundred vectors) but real.

Per mode the queries are held out (fresh draws for the synthetic modes; a random 10% of the
vectors, removed from the indexed set, for ``real``). Every index is searched with the SAME
query batch as exact search (faiss ``IndexFlatIP`` on the normalised vectors, same threads, same
process); time per query is the best of ``--repeats`` batch runs. Rows:

* exact search; ``IVF{nlist},Flat``, ``IVF{nlist},SQ8``, ``IVF{fs_nlist},PQ{D/2}x4fs,RFlat`` (fast-scan
  codes re-ranked exactly), ``HNSW32`` built explicitly with
  ``FaissBank.from_arrays`` (search parameters tuned on held-out data vectors to the target);
* ``auto`` with ``flat_max`` = ``--flat-max`` (so that sets this size are not simply exact), and
  the candidates ``auto`` weighed (measured by ``auto`` itself on its own held-out queries).

The last line is one JSON object with one entry per data mode:
``{"easy": {...}, "embedding": {...}, "real": {...}}``, each holding ``auto``'s index,
``speedup_vs_exact``, ``recall_at_10`` (on the bench queries), ``ms_per_query`` and every row.

    .venv/bin/python bench/bank_query.py                           # N = 200,000, D = 512, all modes
    .venv/bin/python bench/bank_query.py --data embedding --n 50000
    .venv/bin/python bench/bank_query.py --data easy --n 20000 --indexes auto   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from featbank.heads.metrics import neighbour_recall
from featbank.store.bank import FaissBank
from featbank.store.bank_auto import FASTSCAN_LISTS_PER_SQRT, auto_nlist, describe

MODES = ("easy", "embedding", "real")
SHARED_CLIPS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "clips"


def clustered(n: int, dim: int, n_queries: int, *, n_clusters: int = 1000, spread: float = 1.0, intrinsic: int = 8,
              noise: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``easy``: a point of cluster ``c`` is ``centre[c] + spread * z @ B[c] + noise * e``."""
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


def embedding_like(n: int, dim: int, n_queries: int, *, n_clusters: int = 1000, alpha: float = 1.0,
                   cluster_share: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``embedding``: power-law spectrum ``j ** -alpha`` in a random basis, weak clusters.

    ``x = Q @ (sqrt(lambda) * (sqrt(share) * centre[c] + sqrt(1 - share) * z))`` with ``Q``
    random orthogonal, ``centre`` and ``z`` standard normal: the cluster centres explain
    ``share`` of the variance in every principal direction.
    """
    rng = np.random.default_rng(seed)
    scale = (np.arange(1, dim + 1, dtype=np.float64) ** (-alpha / 2)).astype(np.float32)  # sqrt(lambda_j)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    rot = q.astype(np.float32)
    centers = rng.standard_normal((n_clusters, dim), dtype=np.float32)
    a, b = np.float32(np.sqrt(cluster_share)), np.float32(np.sqrt(1 - cluster_share))

    def draw(m: int) -> np.ndarray:
        out = np.empty((m, dim), np.float32)
        for s in range(0, m, 8192):
            c = rng.integers(0, n_clusters, min(8192, m - s))
            z = rng.standard_normal((len(c), dim), dtype=np.float32)
            out[s : s + len(c)] = ((a * centers[c] + b * z) * scale) @ rot.T  # (b, D) in the principal basis -> rotated
        return out

    return draw(n), draw(n_queries)


def real_features(store_path: Path, set_name: str, frac_queries: float = 0.1, seed: int = 0):
    """``real``: I3D rows of the shared clips; (window, crop) vectors, a random 10% held out as queries."""
    if not (store_path / "zarr.json").exists():
        if not SHARED_CLIPS.is_dir():
            raise SystemExit(f"real mode needs the shared clips at {SHARED_CLIPS} (or an existing --real-store)")
        store_path.parent.mkdir(parents=True, exist_ok=True)
        clips = sorted(p for p in SHARED_CLIPS.iterdir() if p.suffix in (".mp4", ".avi"))
        manifest = store_path.parent / "real_clips_manifest.txt"
        manifest.write_text("".join(f"{p.resolve()} {i}\n" for i, p in enumerate(clips)))
        cmd = [sys.executable, "-m", "featbank.experiments.cli", "extract",
               str(Path(__file__).resolve().parents[1] / "configs" / "extract" / "i3d_rgb_k400.yaml"),
               "--manifest", str(manifest), "--manifest-format", "path_label", "--store", str(store_path),
               "--set", set_name, "--clip-len", "8", "--stride", "4", "--views", "3crop", "--dtype", "float32",
               "--workers", "1", "--no-progress"]
        print("extracting the real features:", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        print(f"extracted in {time.perf_counter() - t0:.0f}s", flush=True)
    from featbank.store import open_store
    from featbank.store.dataset import load_rows

    with open_store(store_path, mode="r") as store:
        rows = load_rows(store, set_name)
    feats = rows.feats.float().numpy()  # (R, V, D) or (R, D)
    x = feats.reshape(-1, feats.shape[-1])  # every (window, view) is a vector
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(x))
    nq = max(10, int(frac_queries * len(x)))
    desc = f"{len(rows.video_ids)} clips, {feats.shape[0]} windows x {feats.shape[1] if feats.ndim == 3 else 1} views"
    return x[perm[nq:]], x[perm[:nq]], desc


def time_batch(search, queries: np.ndarray, k: int, repeats: int) -> tuple[float, np.ndarray]:
    """Best wall time of ``repeats`` batch searches, and the neighbour ids."""
    best, ids = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        _, ids = search(queries, k)
        best = min(best, time.perf_counter() - t0)
    return best, np.asarray(ids)


def run_mode(mode: str, x: np.ndarray, q: np.ndarray, args) -> dict:
    n, dim = x.shape
    k = min(args.k, n)
    xn, qn = x.copy(), q.copy()
    faiss.normalize_L2(xn)
    faiss.normalize_L2(qn)
    exact = faiss.IndexFlatIP(dim)
    exact.add(xn)
    t_exact, exact_i = time_batch(exact.search, qn, k, args.repeats)
    ms_exact = 1000 * t_exact / len(q)
    del exact, xn
    print(f"[{mode}] exact search: {ms_exact:.3f} ms/query (batch of {len(q)})", flush=True)
    print(f"[{mode}] {'index':28s} {'build s':>8s} {'ms/query':>9s} {'speedup':>8s} {'recall@10':>10s} {'param':>22s}")
    rows: dict[str, dict] = {"exact": {"ms_per_query": round(ms_exact, 4), "speedup_vs_exact": 1.0, "recall_at_10": 1.0}}
    nlist = auto_nlist(n)
    fs_nlist = auto_nlist(n, FASTSCAN_LISTS_PER_SQRT)
    specs = [s.replace("{nlist}", str(nlist)).replace("{fs_nlist}", str(fs_nlist)).replace("{half}", str(dim // 2))
             for s in args.indexes]
    for spec in specs:
        if spec.startswith("IVF") and int(spec[3:].split(",")[0].split("_")[0]) * 39 > n:
            print(f"[{mode}] {spec:28s} skipped: {n} vectors are too few to train {nlist} lists")
            continue
        tb = time.perf_counter()
        kw = {"flat_max": args.flat_max, "build_budget": args.build_budget} if spec == "auto" else {}
        bank = FaissBank.from_arrays(x, index=spec, metric="cosine", recall_target=args.recall_target,
                                     tune_queries=args.tune_queries, **kw)
        build_s = time.perf_counter() - tb
        t, ids = time_batch(bank.search, q, k, args.repeats)
        ms = 1000 * t / len(q)
        rec = neighbour_recall(ids, exact_i, k=k)
        info = bank.info
        param = f"nprobe={info.nprobe}" if info.nprobe else (f"efSearch={info.ef_search}" if info.ef_search else "-")
        param += f",k_factor={info.k_factor}" if info.k_factor else ""
        name = f"auto -> {info.index}" if spec == "auto" else spec
        print(f"[{mode}] {name:28s} {build_s:8.1f} {ms:9.3f} {ms_exact / ms:8.1f} {rec:10.4f} {param:>22s}", flush=True)
        rows[spec] = {
            "index": info.index, "build_s": round(build_s, 2), "ms_per_query": round(ms, 4),
            "speedup_vs_exact": round(ms_exact / ms, 2), "recall_at_10": round(rec, 4),
            "heldout_recall_at_10": info.recall_at_10, "nprobe": info.nprobe, "ef_search": info.ef_search,
            "k_factor": info.k_factor,
            "warning": info.warning,
        }
        if spec == "auto":
            print(f"[{mode}]   auto's own measurements (its held-out queries, its timing batch):")
            for c in info.candidates:
                print(f"[{mode}]     " + describe(c))
            print(f"[{mode}]   choice: {info.auto_reason}")
            rows[spec]["candidates"] = list(info.candidates)
            rows[spec]["auto_reason"] = info.auto_reason
        del bank
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--n", type=int, default=200_000, help="vectors of the synthetic modes")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--cluster-share", type=float, default=0.3, help="embedding: variance carried by cluster centres")
    ap.add_argument("--alpha", type=float, default=1.0, help="embedding: power-law exponent of the spectrum")
    ap.add_argument("--real-store", type=Path, default=Path("/tmp/featbank_bench/real_i3d.zarr"))
    ap.add_argument("--real-set", default="i3d/c8s4-3crop")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--recall-target", type=float, default=0.95)
    ap.add_argument("--tune-queries", type=int, default=500)
    ap.add_argument("--flat-max", type=int, default=10_000, help="auto's flat_max in this bench")
    ap.add_argument("--build-budget", type=float, default=None, help="auto's build budget (s)")
    ap.add_argument("--threads", type=int, default=1,
                    help="faiss OpenMP threads (0: faiss default). 1 on a shared machine: spinning threads stall")
    ap.add_argument("--indexes", nargs="+",
                    default=["IVF{nlist},Flat", "IVF{nlist},SQ8", "IVF{fs_nlist},PQ{half}x4fs,RFlat", "HNSW32", "auto"],
                    help="faiss factories ({nlist}: auto's IVF list count, {fs_nlist}: its fast-scan list count, "
                    "{half}: dim/2) and/or auto")
    args = ap.parse_args()

    if args.threads > 0:
        faiss.omp_set_num_threads(args.threads)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, {os.cpu_count()} cores, "
          f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    summary = {}
    for mode in args.data:
        t0 = time.perf_counter()
        if mode == "easy":
            x, q = clustered(args.n, args.dim, args.queries)
            desc = f"{args.n} x {args.dim} clustered (1000 clusters, intrinsic dim 8, noise 0.1)"
        elif mode == "embedding":
            x, q = embedding_like(args.n, args.dim, args.queries, alpha=args.alpha, cluster_share=args.cluster_share)
            desc = (f"{args.n} x {args.dim} embedding-like (spectrum j^-{args.alpha}, 1000 weak clusters "
                    f"with {args.cluster_share:.0%} of the variance)")
        else:
            x, q, desc = real_features(args.real_store, args.real_set)
            desc = f"{len(x)} x {x.shape[1]} real I3D vectors ({desc})"
        print(f"[{mode}] data: {desc}, {len(q)} held-out queries, ready in {time.perf_counter() - t0:.1f}s", flush=True)
        rows = run_mode(mode, x, q, args)
        auto = rows.get("auto", {})
        summary[mode] = {
            "n": int(len(x)), "dim": int(x.shape[1]), "queries": int(len(q)),
            "index": auto.get("index"), "speedup_vs_exact": auto.get("speedup_vs_exact"),
            "recall_at_10": auto.get("recall_at_10"), "ms_per_query": auto.get("ms_per_query"),
            "exact_ms_per_query": rows["exact"]["ms_per_query"], "rows": rows,
        }
        load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
        print(f"[{mode}] done in {time.perf_counter() - t0:.0f}s, load average now {load[0]:.1f}", flush=True)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
