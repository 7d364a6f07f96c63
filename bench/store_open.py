"""Open-time benchmark: how long until a store with many videos answers its first read.

Builds one feature set of N small videos (default 5,000; the README target is 100,000 within
1 s) and measures, in the same run, the time from ``open_store`` to the first read of the
last video for three layouts of the same data:

* ``compacted``: the read-optimised layout (one index file, one segment),
* ``logs``: the same videos still in the writer's commit log (before ``store compact``),
* ``npy``: a folder of one ``VIDEO_ID.npy`` per video plus a JSON metadata file (the layout
  of extraction toolkits), listed and loaded the way a reader must.

Best of 3 runs each. The last line printed is one JSON object with the times and the ratios
``logs / compacted`` and ``npy / compacted``. The wall-clock target (``--target`` seconds for
the compacted layout) is reported, not asserted: timings on a loaded machine are inflated.

    .venv/bin/python bench/store_open.py                   # 5,000 videos (about a minute)
    .venv/bin/python bench/store_open.py --videos 100000   # the README's 100k claim
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from featbank.store import FeatureSetInfo, VideoMeta, VideoRows, open_store


def _meta(i: int) -> VideoMeta:
    return VideoMeta(f"video_{i:07d}", source=f"/data/video_{i:07d}.mp4", labels=(i % 400,),
                     split="train", domain="ucf", fps=25.0, n_frames=250, duration=10.0)


def build_store(path: Path, n: int, compact: bool) -> None:
    r = VideoRows(np.ones((2, 4), np.float32), [0.0, 1.0], [1.0, 2.0])
    with open_store(path, mode="w") as st:
        fs = st.create_set(FeatureSetInfo("s", (4,), "float16"))
        for i in range(n):
            fs.write_video(r, _meta(i))
        if compact:
            st.compact()


def build_npy(path: Path, n: int) -> None:
    path.mkdir(parents=True)
    row = np.ones((2, 4), np.float16)
    for i in range(n):
        np.save(path / f"video_{i:07d}.npy", row)
    (path / "meta.json").write_text(json.dumps({f"video_{i:07d}": _meta(i).to_dict() for i in range(n)}))


def open_store_time(path: Path, probe: str) -> float:
    t0 = time.perf_counter()
    with open_store(path, mode="r") as st:
        fs = st.open_set("s")
        assert probe in fs
        fs.read(probe)
    return time.perf_counter() - t0


def open_npy_time(path: Path, probe: str) -> float:
    t0 = time.perf_counter()
    ids = sorted(p[: -len(".npy")] for p in os.listdir(path) if p.endswith(".npy"))
    meta = json.loads((path / "meta.json").read_text())
    assert probe in ids and probe in meta
    np.load(path / f"{probe}.npy")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--videos", type=int, default=5000)
    p.add_argument("--target", type=float, default=1.0, help="seconds the compacted open should take at most")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="featbank-open-"))
    try:
        n, probe = args.videos, f"video_{args.videos - 1:07d}"
        build_store(tmp / "compacted.zarr", n, compact=True)
        build_store(tmp / "logs.zarr", n, compact=False)
        build_npy(tmp / "npy", n)
        t = {
            "compacted": min(open_store_time(tmp / "compacted.zarr", probe) for _ in range(3)),
            "logs": min(open_store_time(tmp / "logs.zarr", probe) for _ in range(3)),
            "npy": min(open_npy_time(tmp / "npy", probe) for _ in range(3)),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = {
        "videos": n,
        "seconds": {k: round(v, 4) for k, v in t.items()},
        "logs_over_compacted": round(t["logs"] / t["compacted"], 2),
        "npy_over_compacted": round(t["npy"] / t["compacted"], 2),
        "target_s": args.target,
        "target_met": t["compacted"] <= args.target,
        "load": os.getloadavg()[0],
    }
    for k, v in t.items():
        print(f"{k:10s} open + first read of {n} videos: {v * 1000:8.1f} ms")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
