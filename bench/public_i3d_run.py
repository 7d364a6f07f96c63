"""The baseline process of ``bench/extract_i3d.py``: I3D features the way the public port's README
runs them, timed as a whole process by the caller.

One clip at a time, fp32, ``torch.set_num_threads(THREADS)``, decord decoding, the short side resized
to 256 (bilinear), a centre crop of 224, values scaled to [-1, 1], Mixed_5c mean-pooled. The model is
``pytorch_i3d.InceptionI3d`` from a checkout of ``piergiaj/pytorch-i3d`` (``--reference DIR``; it is
imported from there, never copied into this repository) or, without one, ``bench/naive_i3d.py``.

Run by ``bench/extract_i3d.py``; by hand:
``python bench/public_i3d_run.py PLAN.json WEIGHTS.pt OUT.npz --reference DIR --threads 2``
(PLAN: ``[{"path", "indices": [...], "positions": [[...], ...]}, ...]``).
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("plan")
    p.add_argument("weights")
    p.add_argument("out")
    p.add_argument("--reference", default="", help="checkout of piergiaj/pytorch-i3d (empty: bench/naive_i3d.py)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()

    import decord
    import numpy as np
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(a.threads)
    if a.reference:
        sys.path.insert(0, a.reference)
        from pytorch_i3d import InceptionI3d

        model = InceptionI3d(400, in_channels=3)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from naive_i3d import NaiveI3D

        model = NaiveI3D()
    model.load_state_dict(torch.load(a.weights, map_location="cpu"))
    model.eval()
    endpoints = [e for e in model.VALID_ENDPOINTS if e in model.end_points] if a.reference else None

    def features(clip: torch.Tensor) -> torch.Tensor:
        if endpoints is None:
            return model.extract_features(clip).mean(dim=(2, 3, 4))  # (1, 1024)
        x = clip
        for name in endpoints:  # the port's extract_features, up to Mixed_5c
            x = model._modules[name](x)
            if name == "Mixed_5c":
                break
        return x.mean(dim=(2, 3, 4))  # (1, 1024, T', H', W') -> (1, 1024)

    t_ready = time.perf_counter()
    plan = json.loads(Path(a.plan).read_text())
    feats, t_model, t_decode = [], 0.0, 0.0
    with torch.no_grad():
        for video in plan:
            t0 = time.perf_counter()
            vr = decord.VideoReader(video["path"], ctx=decord.cpu(0))
            frames = vr.get_batch(video["indices"]).asnumpy()  # (K, H, W, 3) uint8
            x = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 255.0  # (C, K, H, W)
            h, w = x.shape[-2:]
            s = 256 / min(h, w)
            x = F.interpolate(x, size=(int(h * s) if h > w else 256, int(w * s) if w > h else 256),
                              mode="bilinear", align_corners=False)
            top, left = (x.shape[-2] - 224) // 2, (x.shape[-1] - 224) // 2
            x = x[..., top:top + 224, left:left + 224] * 2.0 - 1.0  # (C, K, 224, 224) in [-1, 1]
            t_decode += time.perf_counter() - t0
            for pos in video["positions"]:  # one clip at a time
                clip = x[:, pos][None].contiguous()  # (1, C, L, 224, 224)
                t0 = time.perf_counter()
                feats.append(features(clip)[0].numpy())
                t_model += time.perf_counter() - t0
    np.save(a.out, np.stack(feats))
    print(json.dumps({"setup_s": t_ready - T_START, "decode_s": t_decode, "model_s": t_model, "windows": len(feats),
                      "process_s": time.perf_counter() - T_START}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
