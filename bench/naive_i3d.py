"""A straightforward I3D port (public pytorch-i3d style) as the benchmark baseline.

What makes it "naive" on purpose, mirroring the widely used pytorch-i3d code:
one clip at a time, fp32, contiguous (NCDHW) memory, and TF-SAME padding recomputed
and applied with ``F.pad`` in front of every convolution and pool, 1x1x1 included.
It has the pytorch-i3d key layout, so ``load_state_dict(ours.state_dict())`` shares the
weights with :class:`featbank.extract.backbones.i3d.InceptionI3d`.

``compare(model, clips)`` runs both and reports features/s and the cosine similarity.

Run: ``.venv/bin/python bench/naive_i3d.py --clips 4 --clip-len 32``
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _same_pad(x: torch.Tensor, kernel, stride, value: float = 0.0) -> torch.Tensor:
    pads = []
    for size, k, s in reversed(list(zip(x.shape[2:], kernel, stride))):  # F.pad wants W, H, T order
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value)


class NaiveUnit3D(nn.Module):
    """Conv3d + BN + ReLU with SAME padding recomputed at every call."""

    def __init__(self, cin, cout, kernel=(1, 1, 1), stride=(1, 1, 1), use_bn=True, use_bias=False, relu=True):
        super().__init__()
        self.kernel, self.stride, self.relu = kernel, stride, relu
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride, padding=0, bias=use_bias)
        if use_bn:
            self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01)
        self.use_bn = use_bn

    def forward(self, x):
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        if self.use_bn:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class NaiveMaxPool(nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x):
        return F.max_pool3d(_same_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class NaiveInception(nn.Module):
    def __init__(self, cin, w):
        super().__init__()
        self.b0 = NaiveUnit3D(cin, w[0])
        self.b1a = NaiveUnit3D(cin, w[1])
        self.b1b = NaiveUnit3D(w[1], w[2], (3, 3, 3))
        self.b2a = NaiveUnit3D(cin, w[3])
        self.b2b = NaiveUnit3D(w[3], w[4], (3, 3, 3))
        self.b3a = NaiveMaxPool((3, 3, 3), (1, 1, 1))
        self.b3b = NaiveUnit3D(cin, w[5])

    def forward(self, x):
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


_LAYOUT = [
    ("Conv3d_1a_7x7", "unit", (None, 64, (7, 7, 7), (2, 2, 2))),
    ("MaxPool3d_2a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Conv3d_2b_1x1", "unit", (64, 64, (1, 1, 1), (1, 1, 1))),
    ("Conv3d_2c_3x3", "unit", (64, 192, (3, 3, 3), (1, 1, 1))),
    ("MaxPool3d_3a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Mixed_3b", "mix", (192, (64, 96, 128, 16, 32, 32))),
    ("Mixed_3c", "mix", (256, (128, 128, 192, 32, 96, 64))),
    ("MaxPool3d_4a_3x3", "pool", ((3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", "mix", (480, (192, 96, 208, 16, 48, 64))),
    ("Mixed_4c", "mix", (512, (160, 112, 224, 24, 64, 64))),
    ("Mixed_4d", "mix", (512, (128, 128, 256, 24, 64, 64))),
    ("Mixed_4e", "mix", (512, (112, 144, 288, 32, 64, 64))),
    ("Mixed_4f", "mix", (528, (256, 160, 320, 32, 128, 128))),
    ("MaxPool3d_5a_2x2", "pool", ((2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", "mix", (832, (256, 160, 320, 32, 128, 128))),
    ("Mixed_5c", "mix", (832, (384, 192, 384, 48, 128, 128))),
]


class NaiveI3D(nn.Module):
    """pytorch-i3d-style InceptionI3d (key layout identical to pytorch-i3d checkpoints)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 400):
        super().__init__()
        self.order = []
        for name, kind, args in _LAYOUT:
            if kind == "unit":
                cin, cout, k, s = args
                module = NaiveUnit3D(cin or in_channels, cout, k, s)
            elif kind == "pool":
                module = NaiveMaxPool(*args)
            else:
                module = NaiveInception(*args)
            self.add_module(name, module)
            self.order.append(name)
        self.logits = NaiveUnit3D(1024, num_classes, use_bn=False, use_bias=True, relu=False)

    def extract_features(self, x):
        for name in self.order:
            x = getattr(self, name)(x)
        return x  # (1, 1024, T/8, H/32, W/32)

    def forward(self, x):
        x = F.avg_pool3d(self.extract_features(x), (2, 7, 7), stride=1)
        return self.logits(x).mean(dim=(2, 3, 4))  # (B, K)


def naive_from(model: nn.Module) -> NaiveI3D:
    """A NaiveI3D holding the same weights as ``model`` (featbank InceptionI3d or a state_dict owner)."""
    sd = model.state_dict()
    naive = NaiveI3D(in_channels=sd["Conv3d_1a_7x7.conv3d.weight"].shape[1], num_classes=sd["logits.conv3d.weight"].shape[0])
    naive.load_state_dict(sd)
    return naive.eval()


def naive_features(naive: NaiveI3D, clips: torch.Tensor) -> torch.Tensor:
    """Pooled Mixed_5c features, one clip at a time, fp32: (N, C, T, H, W) -> (N, 1024)."""
    out = []
    with torch.no_grad():
        for clip in clips:
            out.append(naive.extract_features(clip[None].float()).mean(dim=(2, 3, 4)))
    return torch.cat(out)


def prepare_fast(model: nn.Module, *, channels_last: bool = True) -> nn.Module:
    """Our inference setup: BatchNorm folded, eval, no grad, channels_last_3d weights."""
    return model.fused_for_inference(channels_last=channels_last)


def fast_features(model, clips: torch.Tensor, *, batch_size: int = 8, dtype: torch.dtype = torch.float32,
                  channels_last: bool = True) -> torch.Tensor:
    """Pooled default-endpoint features, batched, inference_mode: (N, C, T, H, W) -> (N, D)."""
    out = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        for i in range(0, len(clips), batch_size):
            x = clips[i : i + batch_size]
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            out.append(model.forward_head(model.forward_features(x)).float())
    return torch.cat(out)


def _timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


def compare(model, clips: torch.Tensor, *, batch_size: int = 8, dtype: torch.dtype = torch.float32,
            channels_last: bool = True, repeats: int = 1) -> dict:
    """Run the naive port and our model on the same clips; report speed and agreement.

    Args:
        model: a featbank InceptionI3d (its weights are copied into the naive port).
        clips: (N, C, T, H, W) float32 normalised clips.
        batch_size / dtype / channels_last: our model's settings.
        repeats: timed runs per side (best is kept); one untimed warm-up each.

    Returns:
        dict with naive_fps, model_fps (frames/s = N*T / seconds), speedup, cosine_min, max_abs_diff.
    """
    naive = naive_from(model)
    fast = prepare_fast(model, channels_last=channels_last)
    frames = clips.shape[0] * clips.shape[2]
    naive_features(naive, clips[:1])  # warm-up
    fast_features(fast, clips[:batch_size], batch_size=batch_size, dtype=dtype, channels_last=channels_last)
    t_naive = t_fast = float("inf")
    for _ in range(repeats):
        ref, t = _timed(lambda: naive_features(naive, clips))
        t_naive = min(t_naive, t)
        got, t = _timed(lambda: fast_features(fast, clips, batch_size=batch_size, dtype=dtype, channels_last=channels_last))
        t_fast = min(t_fast, t)
    cos = F.cosine_similarity(ref, got, dim=1)
    return {
        "naive_fps": frames / t_naive,
        "model_fps": frames / t_fast,
        "speedup": t_naive / t_fast,
        "cosine_min": float(cos.min()),
        "max_abs_diff": float((ref - got).abs().max()),
        "clips": int(clips.shape[0]),
        "clip_len": int(clips.shape[2]),
        "size": int(clips.shape[-1]),
        "batch_size": batch_size,
        "dtype": str(dtype).replace("torch.", ""),
        "channels_last": channels_last,
        "threads": torch.get_num_threads(),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--clip-len", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--weights", default="default", help="'default' (K400), 'none' (random) or a file")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from featbank.extract.backbones import create_backbone

    model = create_backbone("i3d-rgb-k400", weights=None if a.weights == "none" else a.weights)
    gen = torch.Generator().manual_seed(0)
    clips = torch.rand(a.clips, 3, a.clip_len, a.size, a.size, generator=gen) * 2 - 1
    res = compare(model, clips, batch_size=a.batch_size, dtype=getattr(torch, a.dtype),
                  channels_last=not a.no_channels_last, repeats=a.repeats)
    print(json.dumps({k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in res.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
