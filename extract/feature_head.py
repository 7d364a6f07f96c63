"""The torch side of feature extraction: the per-window network (``FeatureHead``), the eager
``run_model`` every runtime is checked against, and ``extract_video``, the whole-video oracle of
the batch job."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from featbank.store.schema import BackboneSpec, VideoRows

from .features import Sampling, assemble_rows, frame_period, iter_batches, row_layout, split_views, window_positions


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype`` on ``device`` (a no-op context when ``dtype`` is None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _is_channels_last(model: torch.nn.Module) -> bool:
    """True when the model's first 5-D weight is stored channels_last_3d."""
    for p in model.parameters():
        if p.ndim == 5:
            return p.is_contiguous(memory_format=torch.channels_last_3d) and not p.is_contiguous()
    return False


class FeatureHead(torch.nn.Module):
    """The backbone up to the rows of one window: ``(N, C, T, H, W)`` -> ``(N, R, *F)``.

    One module holds the whole per-window computation (endpoint, pooling, time policy), so
    every runtime - torch eager, OpenVINO - converts and runs exactly the same function.
    """

    def __init__(self, model: torch.nn.Module, sampling: Sampling) -> None:
        super().__init__()
        self.model = model
        self.endpoint = sampling.endpoint
        self.pool = sampling.pool
        self.keep_time = sampling.keep_time

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.model.forward_features(x, endpoint=self.endpoint)  # (N, C', T', H', W')
        if self.pool == "avg":
            out = self.model.forward_head(feats, pre_logits=True, keep_time=self.keep_time, endpoint=self.endpoint)
            return out if self.keep_time else out.unsqueeze(1)  # (N, D) -> (N, 1, D); (N, T', D) kept
        if self.keep_time:
            return feats.transpose(1, 2)  # (N, C', T', H', W') -> (N, T', C', H', W')
        return feats.mean(dim=2).unsqueeze(1)  # -> (N, 1, C', H', W')


def run_model(
    model: torch.nn.Module,
    clips: torch.Tensor,
    sampling: Sampling,
    *,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Backbone features of a batch of windows (torch eager; the oracle of every runtime).

    Args:
        model: a backbone with the featbank contract (``forward_features``, ``forward_head``).
        clips: ``(B, V, C, T, H, W)`` float32 normalised windows on the model's device.
        sampling: the endpoint, pooling and time policy.
        autocast_dtype: run under ``torch.autocast`` with this dtype (e.g. bfloat16 on CUDA).

    Returns:
        ``(B, R, V, *F)`` float32 on the CPU: ``R`` rows per window (1 unless ``keep_time``),
        ``F`` = ``(D,)`` pooled or ``(C', H', W')`` maps.
    """
    b, v = clips.shape[:2]
    x = clips.flatten(0, 1)  # (B, V, C, T, H, W) -> (B*V, C, T, H, W)
    if x.device.type == "cuda" or _is_channels_last(model):
        x = x.contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode(), autocast_context(x.device, autocast_dtype):
        out = FeatureHead(model, sampling)(x)  # (B*V, R, *F)
    return split_views(out.float().cpu(), b, v)


def extract_video(
    frames,
    model: torch.nn.Module,
    spec: BackboneSpec,
    sampling: Sampling,
    *,
    src_fps: float | None = None,
    batch_size: int = 8,
    autocast_dtype: torch.dtype | None = None,
) -> VideoRows:
    """Rows of one whole video (the oracle of the chunked batch job).

    Args:
        frames: ``featbank.extract.decode.Frames`` of the video, already resampled to
            ``sampling.fps`` (e.g. ``decode_video(path, fps=sampling.fps)``): ``frames``
            ``(K, H, W, C)`` uint8, ``times`` ``(K,)`` seconds, ``indices`` ``(K,)`` source frames.
        model: backbone in eval mode, on the device the clips should run on.
        spec: the backbone's preprocessing (resize, crop, mean/std).
        sampling: windows, views, endpoint, pooling.
        src_fps: source frame rate; gives the row period when ``sampling.fps`` is None.
        batch_size: windows per model call.
        autocast_dtype: optional autocast dtype (bfloat16 on CUDA).

    Returns:
        ``VideoRows``: ``feats (N, *row_shape)`` float32, start/end seconds and first/last
        source-frame index of each row.
    """
    from featbank.extract.transforms import preprocess

    positions = window_positions(len(frames.frames), sampling)  # (W, L)
    device = next(iter(model.parameters()), torch.empty(0)).device
    outputs = []
    if len(frames.frames):
        video = preprocess(frames.frames, spec, views=sampling.views)  # (K,H,W,C) -> (V, C, K, h, w)
    for sl in iter_batches(len(positions), batch_size):
        pos = torch.from_numpy(positions[sl])  # (B, L)
        clips = video[:, :, pos]  # (V, C, B, L, h, w)
        clips = clips.permute(2, 0, 1, 3, 4, 5)  # -> (B, V, C, L, h, w)
        outputs.append(run_model(model, clips.to(device), sampling, autocast_dtype=autocast_dtype))
    if not outputs:  # no window (last="drop" on a short video): learn the row shape from a dummy clip
        dummy = torch.zeros((1, sampling.n_views, spec.in_channels, sampling.clip_len, spec.crop, spec.crop))
        outputs.append(run_model(model, dummy.to(device), sampling, autocast_dtype=autocast_dtype)[:0])
    out = torch.cat(outputs)  # (W, R, V, *F)
    rows_per_window = out.shape[1]
    period = frame_period(frames.times, sampling.fps or src_fps)
    layout = row_layout(positions, np.asarray(frames.times), np.asarray(frames.indices), period, rows_per_window)
    return assemble_rows(out, layout, sampling.n_views)
