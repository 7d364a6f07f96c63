"""Benchmark: an on-disk IVF bank built by streaming a Zarr feature set, against its RAM use.

Writes ``--n`` embedding-like vectors (``bench/bank_query.py``'s ``embedding`` mode, D =
``--dim``) into a Zarr store as videos of ``--rows-per-video`` rows (once; reused when present),
then ``build_on_disk`` streams the set in chunks of ``--chunk-videos`` videos and writes
``index.ivfdata``. Reports build time, peak resident memory of this process against the size of
the vectors, the inverted-lists file size, query time at the tuned nprobe, and recall@10 on
held-out queries (measured by the build; exact neighbours from a streaming heap).

    .venv/bin/python bench/bank_ondisk.py --n 200000 --dim 256 --write-only   # the store, once
    .venv/bin/python bench/bank_ondisk.py --n 200000 --dim 256                # the build and queries
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bank_query import embedding_like  # noqa: E402

from featbank.store import FeatureSetInfo, VideoMeta, VideoRows, open_store  # noqa: E402
from featbank.store.bank_ondisk import build_on_disk  # noqa: E402

SET = "synth/emb"


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


class AnonPeak:
    """Peak anonymous resident memory (``RssAnon``), sampled every 0.1 s: unlike the total RSS it
    leaves out the memory-mapped pages of the lists file, which the kernel can drop at will."""

    def __init__(self) -> None:
        import threading

        self.peak, self._stop = 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def now() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            self._stop.wait(0.1)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.now())


def write_store(path: Path, n: int, dim: int, rows_per_video: int) -> None:
    with open_store(path, mode="w") as store:
        fs = store.create_set(FeatureSetInfo(name=SET, row_shape=(dim,), dtype="float32"))
        step = 50_000  # generate in slices: never the whole set in memory
        v = 0
        for s in range(0, n, step):
            x, _ = embedding_like(min(step, n - s), dim, 0, seed=1000 + s)
            for r in range(0, len(x), rows_per_video):
                f = x[r : r + rows_per_video]
                t = np.arange(len(f), dtype=np.float64)
                fs.write_video(VideoRows(f, t, t + 1), VideoMeta(f"v{v:07d}", labels=(v % 100,)))
                v += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--rows-per-video", type=int, default=100)
    ap.add_argument("--chunk-videos", type=int, default=100)
    ap.add_argument("--shard-rows", type=int, default=50_000)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("/tmp/featbank_bench/ondisk"))
    ap.add_argument("--write-only", action="store_true",
                    help="only write the store (run again to build: the peak RSS then belongs to the build alone)")
    args = ap.parse_args()
    if args.threads > 0:
        faiss.omp_set_num_threads(args.threads)
    import os

    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    store_path = args.out / f"emb_{args.n}x{args.dim}.zarr"
    if not (store_path / "zarr.json").exists():
        t0 = time.perf_counter()
        write_store(store_path, args.n, args.dim, args.rows_per_video)
        print(f"wrote {args.n} x {args.dim} vectors to {store_path} in {time.perf_counter() - t0:.0f}s", flush=True)
    if args.write_only:
        return
    rss_before = peak_rss_bytes()
    anon_before = AnonPeak.now()
    with open_store(store_path, mode="r") as store:
        t0 = time.perf_counter()
        with AnonPeak() as anon:
            bank = build_on_disk(store, SET, args.out / "bank", videos_per_chunk=args.chunk_videos,
                                 shard_rows=args.shard_rows, tune_queries=args.queries // 2)
        build_s = time.perf_counter() - t0
        peak = peak_rss_bytes()
        info = bank.info
        q, _ = embedding_like(args.queries, args.dim, 0, seed=99)  # fresh queries, same distribution
        best = float("inf")
        for _ in range(3):
            t1 = time.perf_counter()
            bank.search(q, 10)
            best = min(best, time.perf_counter() - t1)
    vec_bytes = args.n * args.dim * 4
    ivfdata = (args.out / "bank" / "index.ivfdata").stat().st_size
    res = {
        "n": args.n, "dim": args.dim, "index": info.index, "nprobe": info.nprobe, "build_s": round(build_s, 1),
        "heldout_recall_at_10": info.recall_at_10, "ms_per_query": round(1000 * best / args.queries, 3),
        "vectors_mib": round(vec_bytes / 2**20, 1), "ivfdata_mib": round(ivfdata / 2**20, 1),
        "peak_rss_mib": round(peak / 2**20, 1), "rss_before_build_mib": round(rss_before / 2**20, 1),
        "anon_before_build_mib": round(anon_before / 2**20, 1), "peak_anon_during_build_mib": round(anon.peak / 2**20, 1),
        "train_size": info.train_size, "chunk_videos": args.chunk_videos, "shard_rows": args.shard_rows,
        "note": info.auto_reason,
    }
    print(f"on-disk {info.index}: built in {build_s:.0f}s, nprobe {info.nprobe}, held-out recall@10 "
          f"{info.recall_at_10:.3f}, {res['ms_per_query']} ms/query; vectors {res['vectors_mib']} MiB, "
          f"lists file {res['ivfdata_mib']} MiB, peak RSS {res['peak_rss_mib']} MiB "
          f"(before the build {res['rss_before_build_mib']} MiB; anonymous memory {res['anon_before_build_mib']} MiB "
          f"before, peak {res['peak_anon_during_build_mib']} MiB during the build)")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
