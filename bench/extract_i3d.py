"""I3D extraction speed against the public pytorch-i3d port, whole process and model only, in one run.

Workload: the two short shared clips (``clip_b``, ``clip_c``; generated videos when the shared data
is absent), resampled to 25 fps, windows of 64 frames (stride 64, last one padded), 224x224,
Mixed_5c mean-pooled, 2 threads.

* Baseline: ``bench/public_i3d_run.py`` in its own process - the public ``pytorch_i3d.py`` model
  (``--reference DIR``, a checkout of ``piergiaj/pytorch-i3d`` the user points to; never copied here)
  with our converted Kinetics-400 weights, run as its README runs it: one clip at a time, fp32,
  decord, resize 256, centre crop 224. Without ``--reference`` the baseline is ``bench/naive_i3d.py``
  (a port written in the same style), and the output says so.
* Ours: ``featbank extract`` in its own process on the same windows, once with ``--precision fp32``
  and once with ``--precision auto`` (bf16 where the CPU has it natively), ``--runtime auto``.
  One untimed run first fills the compiled-model cache (the state every later run starts from);
  its time is reported as ``ours_first_run_s``.

Reported: ``speedup_vs_public_port`` (whole process, baseline seconds / ours, auto precision),
``speedup_fp32`` (same, fp32), ``model_speedup_*`` (model time only: the baseline's summed
per-clip forward passes vs our engine on the same pre-decoded windows), ``cosine_min`` (smallest
cosine between any of our stored rows and the baseline's features), ``e2e_over_model`` (our job's
frames/s over our engine's frames/s on pre-decoded windows: how well decoding hides behind
compute), ``decode_cpu_s`` (CPU seconds the decoding side spends on the same videos, measured
alone with the job's decoding settings: decoder process start, decode, preprocessing, windows; on
2 cores every one of them is taken from the model), the runtime/precision chosen, the CPU's bf16
support, and the load average (the machine may be shared: only the ratios measured in this one
run mean anything).

Goals: whole process >= 2x the public port in fp32 at cosine >= 0.999; >= 3x with bf16 where the CPU
has it natively; ``e2e_over_model`` >= 0.9. The last line printed is one JSON object.

Run: ``.venv/bin/python bench/extract_i3d.py --reference /tmp/pytorch-i3d``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_CLIPS = Path(os.environ.get("FEATBANK_SHARED_DATA", REPO.parent / "shared" / "data")) / "clips"
FEATBANK = Path(sys.executable).with_name("featbank")


def _clips(tmp: Path) -> list[Path]:
    if SHARED_CLIPS.is_dir():
        found = [SHARED_CLIPS / f"{c}.mp4" for c in ("clip_b", "clip_c")] + [SHARED_CLIPS / "clip_b.avi"]
        found = [p for p in found if p.is_file()][:2]
        if found:
            return found
    import av

    out = []
    for i, n in enumerate([100, 48]):
        path = tmp / f"gen_{i}.mp4"
        with av.open(str(path), "w") as c:
            s = c.add_stream("mpeg4", rate=25)
            s.width, s.height, s.pix_fmt = 340, 256, "yuv420p"
            for t in range(n):
                img = np.zeros((256, 340, 3), np.uint8)
                img[..., 0] = (np.arange(340) + 3 * t) % 256
                img[..., 1] = (np.arange(256)[:, None] * 2 + t) % 256
                for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(pkt)
            for pkt in s.encode():
                c.mux(pkt)
        out.append(path)
    return out


def _plan(paths: list[Path], sampling) -> list[dict]:
    """Source frames and window positions of every clip, exactly as the job computes them."""
    from featbank.extract.decode import open_video, resample_indices
    from featbank.extract.features import window_positions

    plan = []
    for path in paths:
        with open_video(path, backend="decord") as src:
            idx = np.asarray(resample_indices(src.info.n_frames, src.info.fps, sampling.fps), np.int64)
        pos = window_positions(len(idx), sampling)  # (W, L) into idx
        uniq, inv = np.unique(idx, return_inverse=True)  # decode each source frame once
        plan.append({"path": str(path), "indices": uniq.tolist(), "positions": inv[pos].tolist()})
    return plan


def _timed(cmd: list[str], env: dict | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"command failed ({res.returncode}): {' '.join(cmd)}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return dt, res.stdout


def _ours(manifest: Path, store: Path, precision: str, a) -> tuple[float, float, float]:
    """Whole-process seconds of ``featbank extract``, its loop seconds, and the seconds from its
    launch to its first model call."""
    cmd = [str(FEATBANK), "extract", "--manifest", str(manifest), "--store", str(store), "--set", "bench",
           "--backbone", "i3d-rgb-k400", "--clip-len", str(a.clip_len), "--stride", str(a.clip_len),
           "--runtime", a.runtime, "--precision", precision, "--device", "cpu", "--dtype", "float32",
           "--workers", str(a.workers), "--batch-size", str(a.batch_size), "decoder=decord",
           "threads=" + str(a.threads), "--no-progress"]
    dt, out = _timed(cmd)
    m = re.search(r"(\d+) frames in ([\d.]+)s", out)
    launch = re.search(r"([\d.]+)s after launch", out)  # process launch -> first model call
    return dt, float(m.group(2)) if m else dt, float(launch.group(1)) if launch else float("nan")


DECODE_ONLY = """
import json, resource, sys
from featbank.extract._stream import StreamOptions, WindowStream
from featbank.extract.job import ExtractConfig, build_pipeline, load_tasks
manifest, clip_len = sys.argv[1], int(sys.argv[2])
cfg = ExtractConfig(manifest=manifest, store="unused", backbone="i3d-rgb-k400", clip_len=clip_len, stride=clip_len,
                    device="cpu", decoder="decord")
pipe = build_pipeline(cfg, probe=False)
opts = StreamOptions(spec=pipe.spec, sampling=pipe.sampling, decoder=cfg.decoder, timeout_s=cfg.timeout,
                     chunk_frames=cfg.chunk_frames)
tasks = load_tasks(cfg)
def cpu():
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime
c0 = cpu()
n = sum(1 for _ in WindowStream(tasks, opts))
print(json.dumps({"decode_cpu_s": cpu() - c0, "items": n}))
"""


def _decode_cpu(manifest: Path, clip_len: int) -> float:
    """CPU seconds (this process and its decoder process) of the job's decoding side alone."""
    from featbank.extract.worker_server import DECODER_MALLOC_ENV

    env = {**os.environ, **DECODER_MALLOC_ENV}  # as the job's decoding processes run
    _, out = _timed([sys.executable, "-c", DECODE_ONLY, str(manifest), str(clip_len)], env=env)
    return float(json.loads(out.strip().splitlines()[-1])["decode_cpu_s"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", default="", help="checkout of piergiaj/pytorch-i3d (default: bench/naive_i3d.py)")
    p.add_argument("--clip-len", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=0, help="windows per model call (0: the job's default per engine)")
    p.add_argument("--workers", type=int, default=1, help="decoding workers of our job")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runtime", default="auto", choices=("auto", "torch", "openvino"))
    a = p.parse_args(argv)
    if a.reference and not (Path(a.reference) / "pytorch_i3d.py").is_file():
        raise SystemExit(f"--reference {a.reference}: no pytorch_i3d.py there (a checkout of piergiaj/pytorch-i3d)")
    baseline = "public pytorch-i3d port" if a.reference else "bench/naive_i3d.py (no --reference given)"
    if not a.reference:
        print("note: no --reference DIR given: the baseline is bench/naive_i3d.py, written in the public port's style",
              file=sys.stderr)
    torch.set_num_threads(a.threads)
    load_before = os.getloadavg()

    from featbank.extract import engines
    from featbank.extract.backbones import create_backbone
    from featbank.extract.job import ExtractConfig, build_pipeline
    from featbank.extract.job.runtime import default_batch_size
    from featbank.store import open_store

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = _clips(tmp)
        manifest = tmp / "list.txt"
        manifest.write_text("".join(f"{p} 0\n" for p in paths))
        weights = tmp / "i3d_k400.pt"
        torch.save(create_backbone("i3d-rgb-k400").state_dict(), weights)  # our converted weights, port key layout
        cfg = ExtractConfig(manifest=str(manifest), store="unused", backbone="i3d-rgb-k400", clip_len=a.clip_len,
                            stride=a.clip_len, device="cpu", runtime=a.runtime, precision="fp32", threads=a.threads,
                            decoder="decord")
        pipe = build_pipeline(cfg, probe=False)
        plan = _plan(paths, pipe.sampling)
        (tmp / "plan.json").write_text(json.dumps(plan))
        n_windows = sum(len(v["positions"]) for v in plan)

        # untimed: fills the compiled-model cache and the probe results, as any earlier run would
        first_s, _, _ = _ours(manifest, tmp / "warm.zarr", "auto", a)
        _ours(manifest, tmp / "warm32.zarr", "fp32", a)

        # whole processes, back to back: baseline, ours fp32, ours auto
        ref_cmd = [sys.executable, str(REPO / "bench" / "public_i3d_run.py"), str(tmp / "plan.json"), str(weights),
                   str(tmp / "ref.npy"), "--threads", str(a.threads)] + (["--reference", a.reference] if a.reference else [])
        t_ref, ref_out = _timed(ref_cmd)
        ref_stats = json.loads(ref_out.strip().splitlines()[-1])
        t_fp32, loop_fp32, launch_fp32 = _ours(manifest, tmp / "fp32.zarr", "fp32", a)
        t_auto, loop_auto, launch_auto = _ours(manifest, tmp / "auto.zarr", "auto", a)
        decode_cpu = _decode_cpu(manifest, a.clip_len)
        ref = torch.from_numpy(np.load(tmp / "ref.npy"))  # (N, 1024)

        cosines, choice = {}, {}
        for tag in ("fp32", "auto"):
            with open_store(str(tmp / f"{tag}.zarr"), "r") as st:
                fs = st.open_set("bench")
                rows = torch.from_numpy(np.concatenate([fs.read(vid).feats for vid in _ids_in_order(fs, plan)]))
                choice[tag] = dict(fs.info.sampling["engine"])
            assert rows.shape == ref.shape, (rows.shape, ref.shape)
            cosines[tag] = float(torch.nn.functional.cosine_similarity(rows.double(), ref.double(), dim=1).min())

        # model only: our engine on the same pre-decoded windows (batch_size), fp32 and auto
        clips = _windows(plan, pipe)  # (N, 1, C, L, h, w)
        model_s = {}
        for tag in ("fp32", "auto"):
            engine, picked, _ = engines.select_engine(lambda: pipe.model, pipe.sampling, pipe.clip_shape, pipe.device,
                                                      runtime=a.runtime, precision=tag, backbone="i3d-rgb-k400",
                                                      weights_id=pipe.spec.weights_id, threads=a.threads)
            bs = a.batch_size or default_batch_size(picked.runtime, "cpu")
            engine(clips[:1])  # warm-up
            t0 = time.perf_counter()
            for i in range(0, len(clips), bs):
                engine(clips[i:i + bs])
            model_s[tag] = time.perf_counter() - t0

    flags = engines.cpu_flags()

    frames = n_windows * a.clip_len
    result = {
        "baseline": baseline,
        "speedup_vs_public_port": round(t_ref / t_auto, 2),
        "speedup_fp32": round(t_ref / t_fp32, 2),
        "model_speedup_auto": round(ref_stats["model_s"] / model_s["auto"], 2),
        "model_speedup_fp32": round(ref_stats["model_s"] / model_s["fp32"], 2),
        "cosine_min": round(min(cosines.values()), 6),
        "cosine_fp32": round(cosines["fp32"], 6),
        "cosine_auto": round(cosines["auto"], 6),
        "e2e_over_model": round(model_s["auto"] / loop_auto, 3),
        "e2e_over_model_fp32": round(model_s["fp32"] / loop_fp32, 3),
        "decode_cpu_s": round(decode_cpu, 2),
        "runtime": choice["auto"]["runtime"],
        "precision": choice["auto"]["precision"],
        "probe_cosine": choice["auto"]["probe_cosine"],
        "cpu_bf16": engines.cpu_native("bf16", flags),
        "whole_process_s": {"baseline": round(t_ref, 2), "fp32": round(t_fp32, 2), "auto": round(t_auto, 2)},
        "ours_first_run_s": round(first_s, 2),
        "ours_launch_to_first_compute_s": {"fp32": round(launch_fp32, 2), "auto": round(launch_auto, 2)},
        "model_only_s": {"baseline": round(ref_stats["model_s"], 2), "fp32": round(model_s["fp32"], 2),
                         "auto": round(model_s["auto"], 2)},
        "baseline_setup_s": round(ref_stats["setup_s"], 2),
        "windows": n_windows,
        "frames": frames,
        "clips": [p.name for p in paths],
        "clip_len": a.clip_len,
        "batch_size": choice["auto"].get("batch_size", a.batch_size),
        "workers": a.workers,
        "threads": a.threads,
        "load_avg_1m": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result))
    return 0


def _ids_in_order(fs, plan) -> list[str]:
    """The set's video ids in plan order (ids are file stems relative to the manifest folder)."""
    by_name = {Path(vid).name: vid for vid in fs.video_ids()}
    return [by_name[Path(v["path"]).stem] for v in plan]


def _windows(plan, pipe) -> torch.Tensor:
    """The plan's windows decoded and preprocessed by our path: ``(N, 1, C, L, h, w)``."""
    from featbank.extract.decode import open_video
    from featbank.extract.transforms import preprocess

    out = []
    for v in plan:
        with open_video(v["path"], backend="decord") as src:
            frames = src.read(np.asarray(v["indices"], np.int64)).frames  # (K, H, W, C)
        video = preprocess(frames, pipe.spec)  # (1, C, K, h, w)
        pos = torch.as_tensor(v["positions"])  # (W, L)
        out.append(video[:, :, pos].permute(2, 0, 1, 3, 4, 5))  # (1, C, W, L, h, w) -> (W, 1, C, L, h, w)
    return torch.cat(out)


if __name__ == "__main__":
    raise SystemExit(main())
