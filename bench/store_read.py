"""Read benchmark: featbank Zarr store vs npy-per-video vs HDF5 dataset-per-video, same data, same run.

Builds a synthetic float16 feature set (default 4,000 videos of 10-70 rows x 1024, about 330 MB)
in three layouts and measures write time, random per-video reads (2,000 random ids), random
64-row windows (2,000, against npy files opened with ``mmap_mode="r"``), a full scan and file
counts. The last line printed is one JSON object with the ratios.

    .venv/bin/python bench/store_read.py                # full size (a few minutes)
    .venv/bin/python bench/store_read.py --videos 400   # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from featbank.store import FeatureSetInfo, VideoMeta, VideoRows, open_store


def count_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def du(root: Path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files)


def make_video(rng: np.random.Generator, n: int, dim: int) -> VideoRows:
    feats = rng.standard_normal((n, dim), dtype=np.float32).astype(np.float16)  # (N, D)
    starts = np.arange(n) * 0.64
    return VideoRows(feats, starts, starts + 2.56)


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--videos", type=int, default=4000)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--min-rows", type=int, default=10)
    p.add_argument("--max-rows", type=int, default=70)
    p.add_argument("--reads", type=int, default=2000)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--compression", default="default")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per read test (best is kept)")
    p.add_argument("--workdir", default=None, help="where the three layouts go (default: a temp folder)")
    args = p.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="featbank-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    counts = rng.integers(args.min_rows, args.max_rows + 1, size=args.videos)
    ids = [f"video_{i:06d}" for i in range(args.videos)]
    videos = {vid: make_video(rng, int(n), args.dim) for vid, n in zip(ids, counts)}
    total_bytes = sum(v.feats.nbytes for v in videos.values())
    print(f"data: {args.videos} videos, {int(counts.sum())} rows x {args.dim} float16 = {total_bytes / 1e6:.0f} MB")

    # ---- writes --------------------------------------------------------------------------
    store_dir, npy_dir, h5_path = work / "store.zarr", work / "npy", work / "feats.h5"
    for path in (store_dir, npy_dir):
        shutil.rmtree(path, ignore_errors=True)
    npy_dir.mkdir()

    def write_store():
        with open_store(store_dir, mode="w") as st:
            fs = st.create_set(FeatureSetInfo("bench/feats", (args.dim,), "float16"), compression=args.compression)
            for vid, rows in videos.items():
                fs.write_video(rows, VideoMeta(vid))

    def compact_store():
        with open_store(store_dir) as st:
            st.compact()

    def write_npy():
        for vid, rows in videos.items():
            np.save(npy_dir / f"{vid}.npy", rows.feats)

    def write_h5():
        with h5py.File(h5_path, "w") as f:
            for vid, rows in videos.items():
                f.create_dataset(vid, data=rows.feats)

    t_store, _ = timed(write_store)
    t_compact, _ = timed(compact_store)
    t_npy, _ = timed(write_npy)
    t_h5, _ = timed(write_h5)
    print(f"write: store {t_store:.1f}s (+ compact {t_compact:.1f}s), npy {t_npy:.1f}s, hdf5 {t_h5:.1f}s")

    # ---- reads ---------------------------------------------------------------------------
    store = open_store(store_dir, mode="r")
    fs = store.open_set("bench/feats")
    pick = [ids[i] for i in rng.integers(0, args.videos, size=args.reads)]
    windows = []
    for vid in (ids[i] for i in rng.integers(0, args.videos, size=args.reads)):
        n = len(videos[vid])
        s = int(rng.integers(0, max(1, n - args.window + 1)))
        windows.append((vid, s, s + args.window))
    h5 = h5py.File(h5_path, "r")

    def best(fn) -> float:
        return min(timed(fn)[0] for _ in range(args.repeats))

    readers = {
        "store_read_many": lambda: fs.read_many(pick),
        "store_read_loop": lambda: [fs.read(v) for v in pick],
        "npy": lambda: [np.load(npy_dir / f"{v}.npy") for v in pick],
        "hdf5": lambda: [h5[v][()] for v in pick],
    }
    for fn in readers.values():  # warm the page cache equally for every layout
        fn()
    rand = {k: args.reads / best(fn) for k, fn in readers.items()}
    win = {
        "store": args.reads / best(lambda: [fs.read(v, rows=slice(a, b)) for v, a, b in windows]),
        "npy_mmap": args.reads / best(
            lambda: [np.array(np.load(npy_dir / f"{v}.npy", mmap_mode="r")[a:b]) for v, a, b in windows]),
        "hdf5": args.reads / best(lambda: [h5[v][a:b] for v, a, b in windows]),
    }
    scan = {
        "store": total_bytes / best(lambda: fs.read_all()) / 1e9,
        "npy": total_bytes / best(lambda: [np.load(npy_dir / f"{v}.npy") for v in ids]) / 1e9,
        "hdf5": total_bytes / best(lambda: [h5[v][()] for v in ids]) / 1e9,
    }
    # correctness spot check: the bench must read what it wrote
    feats, offsets, got_ids = fs.read_all()
    assert got_ids == ids and np.array_equal(feats[offsets[7]:offsets[8]], videos[ids[7]].feats)
    h5.close()
    store.close()

    files = {"store": count_files(store_dir), "npy": count_files(npy_dir), "hdf5": 1}
    sizes = {"store": du(store_dir), "npy": du(npy_dir), "hdf5": os.path.getsize(h5_path)}
    for k, v in rand.items():
        print(f"random per-video reads  {k:16s} {v:10.0f} videos/s")
    for k, v in win.items():
        print(f"random {args.window}-row windows   {k:16s} {v:10.0f} windows/s")
    for k, v in scan.items():
        print(f"full scan               {k:16s} {v:10.2f} GB/s")
    for k in files:
        print(f"files / bytes           {k:16s} {files[k]:10d} {sizes[k] / 1e6:10.0f} MB")
    result = {
        "videos": args.videos,
        "data_mb": round(total_bytes / 1e6, 1),
        "compression": args.compression,
        "write_s": {"store": round(t_store, 2), "store_compact": round(t_compact, 2),
                    "npy": round(t_npy, 2), "hdf5": round(t_h5, 2)},
        "random_read_videos_per_s": {k: round(v) for k, v in rand.items()},
        "window_reads_per_s": {k: round(v) for k, v in win.items()},
        "full_scan_gbps_all": {k: round(v, 2) for k, v in scan.items()},
        "files": files,
        "random_read_ratio_vs_npy": round(rand["store_read_many"] / rand["npy"], 2),
        "random_read_loop_ratio_vs_npy": round(rand["store_read_loop"] / rand["npy"], 2),
        "random_read_ratio_vs_hdf5": round(rand["store_read_many"] / rand["hdf5"], 2),
        "window_read_ratio_vs_npy_mmap": round(win["store"] / win["npy_mmap"], 2),
        "full_scan_gbps": round(scan["store"], 2),
        "files_ratio_vs_npy": round(files["store"] / files["npy"], 4),
    }
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
