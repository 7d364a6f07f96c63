"""Object-store benchmark: a featbank store on S3 vs one npy object per video, same local server, same run.

Starts a local S3 server (moto, 127.0.0.1), builds a synthetic float16 feature set (default
2,000 videos of 10-70 rows x 1024, about 165 MB) and measures, for both layouts:

* write throughput (MB/s of feature bytes): featbank commits batches (default policy: 64
  videos per batch, segment objects uploaded in parallel), then ``compact``; npy puts one
  object per video, one after another (what a per-video writer does);
* reads in steady state (an untimed pass first loads each touched segment's metadata, shard indexes
  and row times, once per handle, as a training job's first epoch does), twice: on the store as the writers left it (one segment per batch) and after ``compact``;
* random whole-video reads: ``read_many`` in batches of 32 ids (a training batch; ranged GETs
  coalesced per shard, all in parallel) and a ``read()`` loop, vs one GET + ``np.load`` per video;
* random 64-row windows: ``read(vid, rows=...)`` (ranged GETs of just those rows) vs GET + slice;
* a second epoch of ``read_many`` through the read-through cache folder (``cache_dir``);
* object counts (before and after ``compact``) vs npy (goal after compaction: <= 1/100);
* the raw clients on the same server: s3fs vs obstore (when installed), PUT MB/s and ranged GETs/s.

The last line printed is one JSON object. The server runs on the same machine as the client,
so absolute numbers measure the client + moto; the ratios within one run are what matter.

    .venv/bin/python bench/store_s3.py                 # ~165 MB (several minutes on a loaded 2-core box)
    .venv/bin/python bench/store_s3.py --videos 200    # quick look
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time

import numpy as np

from featbank.store import FeatureSetInfo, VideoMeta, VideoRows, open_store, s3server

BUCKET = "bench"
SET = "bb/layer/c64"


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def raw_clients(env: dict[str, str], mb: int = 32, obj_mb: int = 4, ranges: int = 200) -> dict[str, float]:
    """PUT throughput and 64 KiB ranged GETs/s of s3fs and obstore (same objects, same server)."""
    import s3fs

    out: dict[str, float] = {}
    data = os.urandom(obj_mb << 20)
    n = mb // obj_mb
    rng = np.random.default_rng(0)
    starts = [int(s) for s in rng.integers(0, (obj_mb << 20) - 65536, ranges)]
    keys = [f"raw/s3fs/{i}" for i in range(n)]
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    t, _ = timed(lambda: fs.pipe({f"{BUCKET}/{k}": data for k in keys}))
    out["s3fs_put_mbps"] = round(mb / t, 1)
    paths = [f"{BUCKET}/{keys[i % n]}" for i in range(ranges)]
    t, _ = timed(lambda: fs.cat_ranges(paths, starts, [s + 65536 for s in starts]))
    out["s3fs_ranged_gets_per_s"] = round(ranges / t, 1)
    # the same 64 KiB ranges from one 64 MiB object (a compacted shard's size): moto's cost per
    # ranged GET grows with the object's size (real S3's does not), which the reads above pay
    fs.pipe_file(f"{BUCKET}/raw/big", os.urandom(64 << 20))
    big = [s % ((64 << 20) - 65536) for s in starts[:50]]
    t, _ = timed(lambda: fs.cat_ranges([f"{BUCKET}/raw/big"] * len(big), big, [s + 65536 for s in big]))
    out["s3fs_ranged_gets_per_s_64mib_object"] = round(len(big) / t, 1)
    try:
        import obstore
        from obstore.store import S3Store
    except ImportError:
        return out
    store = S3Store(BUCKET, endpoint=env["AWS_ENDPOINT_URL"], region=env["AWS_DEFAULT_REGION"],
                    access_key_id=env["AWS_ACCESS_KEY_ID"], secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                    client_options={"allow_http": True})

    async def put_all():
        import asyncio

        await asyncio.gather(*[obstore.put_async(store, f"raw/obstore/{i}", data) for i in range(n)])

    async def get_all():
        import asyncio

        await asyncio.gather(*[obstore.get_range_async(store, f"raw/obstore/{i % n}", start=s, end=s + 65536)
                               for i, s in enumerate(starts)])

    import asyncio

    t, _ = timed(lambda: asyncio.run(put_all()))
    out["obstore_put_mbps"] = round(mb / t, 1)
    t, _ = timed(lambda: asyncio.run(get_all()))
    out["obstore_ranged_gets_per_s"] = round(ranges / t, 1)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--videos", type=int, default=2000)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--min-rows", type=int, default=10)
    p.add_argument("--max-rows", type=int, default=70)
    p.add_argument("--reads", type=int, default=320, help="random videos read per test (read_many: batches of 32)")
    p.add_argument("--window", type=int, default=64)
    args = p.parse_args(argv)

    rng = np.random.default_rng(0)
    counts = rng.integers(args.min_rows, args.max_rows + 1, args.videos)
    ids = [f"v{i:06d}" for i in range(args.videos)]
    videos = {}
    for vid, n in zip(ids, counts):
        feats = rng.standard_normal((int(n), args.dim), dtype=np.float32).astype(np.float16)
        starts = np.arange(n) * 0.64
        videos[vid] = VideoRows(feats, starts, starts + 2.56)
    mb = sum(v.feats.nbytes for v in videos.values()) / 1e6
    picks = [ids[i] for i in rng.integers(0, args.videos, args.reads)]
    windows = []
    for vid in picks:
        n = len(videos[vid])
        a = int(rng.integers(0, max(1, n - args.window + 1)))
        windows.append((vid, a, min(n, a + args.window)))

    with s3server.local_s3(BUCKET) as env:
        import s3fs

        fs3 = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
        url = f"s3://{BUCKET}/feats.zarr"
        res: dict[str, object] = {"videos": args.videos, "rows": int(counts.sum()), "feature_mb": round(mb, 1)}

        # ---- writes
        def write_store():
            with open_store(url, "w") as store:
                fs = store.create_set(FeatureSetInfo(name=SET, row_shape=(args.dim,), dtype="float16",
                                                     backbone="bb", weights_id="w"))
                for vid in ids:
                    fs.write_video(videos[vid], VideoMeta(vid, split="train"))

        t_write, _ = timed(write_store)
        objects_before = len(fs3.find(f"{BUCKET}/feats.zarr"))

        def npy_bytes(v: VideoRows) -> bytes:
            buf = io.BytesIO()
            np.save(buf, v.feats)
            return buf.getvalue()

        def write_npy():
            for vid in ids:
                fs3.pipe_file(f"{BUCKET}/npy/{vid}.npy", npy_bytes(videos[vid]))

        t_npy_write, _ = timed(write_npy)
        npy_objects = len(fs3.find(f"{BUCKET}/npy"))

        def npy_read(vid: str) -> np.ndarray:
            return np.load(io.BytesIO(fs3.cat_file(f"{BUCKET}/npy/{vid}.npy")))

        def reads(tag: str) -> None:
            with open_store(url, "r") as store:
                fs = store.open_set(SET)
                for k in range(0, len(picks), 32):  # untimed warm-up: the index, and each touched segment's
                    fs.read_many(picks[k:k + 32])   # metadata, shard indexes and times (once per handle)

                def many():
                    for k in range(0, len(picks), 32):
                        got = fs.read_many(picks[k:k + 32])
                        assert np.array_equal(got[0].feats, videos[picks[k]].feats)

                t_many, _ = timed(many)
                t_loop, _ = timed(lambda: [fs.read(v) for v in picks])
                t_win, got = timed(lambda: [fs.read(v, rows=slice(a, b)) for v, a, b in windows])
                assert all(np.array_equal(g.feats, videos[v].feats[a:b]) for g, (v, a, b) in zip(got, windows))
            t_npy, _ = timed(lambda: [npy_read(v) for v in picks])
            t_npy_win, _ = timed(lambda: [npy_read(v)[a:b] for v, a, b in windows])
            n = len(picks)
            res.update({f"{tag}read_many_videos_per_s": round(n / t_many, 1),
                        f"{tag}read_loop_videos_per_s": round(n / t_loop, 1),
                        f"{tag}windows_per_s": round(n / t_win, 1),
                        f"{tag}npy_videos_per_s": round(n / t_npy, 1), f"{tag}npy_windows_per_s": round(n / t_npy_win, 1),
                        f"{tag}random_read_ratio_vs_npy": round(t_npy / t_many, 2),
                        f"{tag}random_read_loop_ratio_vs_npy": round(t_npy / t_loop, 2),
                        f"{tag}window_read_ratio_vs_npy": round(t_npy_win / t_win, 2)})

        reads("batches_")  # the store as the writers left it: one segment (~5 MB shard) per batch

        def compact():
            with open_store(url, "a") as store:
                store.compact()

        t_compact, _ = timed(compact)
        objects_after = len(fs3.find(f"{BUCKET}/feats.zarr"))
        res.update(write_mbps=round(mb / t_write, 1), write_plus_compact_mbps=round(mb / (t_write + t_compact), 1),
                   npy_write_mbps=round(mb / t_npy_write, 1), compact_s=round(t_compact, 2),
                   objects_before_compact=objects_before, objects=objects_after, npy_objects=npy_objects,
                   objects_ratio_vs_npy=round(objects_after / npy_objects, 4),
                   objects_before_compact_ratio_vs_npy=round(objects_before / npy_objects, 4))
        reads("")  # compacted: ~64 MiB shards
        n = len(picks)
        with tempfile.TemporaryDirectory() as cache, open_store(url, "r", cache_dir=cache) as store:
            fs = store.open_set(SET)
            epoch = lambda: [fs.read_many(picks[k:k + 32]) for k in range(0, len(picks), 32)]  # noqa: E731
            t_first, _ = timed(epoch)
            t_cached, _ = timed(epoch)
        res.update(cache_first_epoch_videos_per_s=round(n / t_first, 1),
                   cache_second_epoch_videos_per_s=round(n / t_cached, 1))
        res.update(raw_clients(env))
    for k, v in res.items():
        print(f"{k:34s} {v}")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
