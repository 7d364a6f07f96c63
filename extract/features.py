"""Pure feature extraction: frames in, rows out (I/O stays in the job, so this is testable as an oracle).

``extract_video`` is the oracle the batch job (extract/job.py) is tested against: it
takes one video's frames, already resampled to the target rate, cuts them into windows
with the configured sampler, preprocesses, runs the backbone in batches and returns the
video's rows with their start/end seconds and source-frame indices.

The helpers below are shared with the job so both produce rows the same way:

* ``window_positions`` - which positions of the (resampled) frame sequence each window reads;
* ``row_layout`` - start/end seconds, source-frame indices and the keep-mask of every row;
* ``run_model`` - clips ``(B, V, C, T, H, W)`` -> per-window rows ``(B, R, *row_shape)``;
* ``assemble_rows`` - per-window outputs + layout -> ``VideoRows``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator, Literal, get_args

import numpy as np
import torch

from featbank.store.schema import BackboneSpec, VideoRows

# The allowed values are Literal types so that configs are checked against one list (the
# job's ExtractConfig validates its fields from these annotations).
SamplerName = Literal["sliding", "tsn", "dense", "whole", "static", "glad"]
ViewName = Literal["center", "3crop", "flip", "3crop+flip"]
LastPolicy = Literal["pad", "drop", "shift"]
PoolName = Literal["avg", "none"]
SAMPLER_NAMES: tuple[str, ...] = get_args(SamplerName)
VIEW_NAMES: tuple[str, ...] = get_args(ViewName)
VIEW_COUNTS = {"center": 1, "3crop": 3, "flip": 2, "3crop+flip": 6}
LAST_POLICIES: tuple[str, ...] = get_args(LastPolicy)
POOLS: tuple[str, ...] = get_args(PoolName)


@dataclass(frozen=True)
class Sampling:
    """How one video becomes rows (resolved: no "use the spec default" placeholders left).

    Attributes:
        sampler: ``"sliding"`` windows, ``"tsn"`` segments, ``"dense"`` one window per frame,
            ``"whole"`` (the whole video as one clip) or ``"static"`` (``num_segments`` single
            frames - one for a still image - each repeated into a clip of ``clip_len``) or
            ``"glad"`` (GLAD's views, one row ``(V, D)`` per video: ``num_segments`` dense
            local clips of ``clip_len`` frames ``frame_stride`` apart at the segment centres,
            then one sparse global clip per entry of ``global_frames``; see extract/glad_views.py).
        clip_len: frames per window (ignored by ``"whole"``).
        stride: step between window starts, in resampled frames (``"sliding"``).
        frame_stride: step between frames inside a window, in resampled frames.
        fps: target frame rate frames are resampled to before windowing; None keeps the
            source rate.
        views: ``"center"``, ``"3crop"``, ``"flip"`` or ``"3crop+flip"``; more than one view
            adds a views axis to every row, ``(V, D)``.
        last: policy for the last partial window (``"pad"``, ``"drop"``, ``"shift"``).
        num_segments: segments of the ``"tsn"`` sampler; frames taken by ``"static"``.
        endpoint: backbone endpoint (None: the backbone's default, its last endpoint).
        keep_time: one row per output time step of each window (frame-level features)
            instead of one row per window.
        pool: ``"avg"`` pools space (and time unless ``keep_time``) to a vector through the
            backbone's ``forward_head``; ``"none"`` keeps the ``(C, H, W)`` map (time
            averaged unless ``keep_time``).
        reverse: read every window's frames in reverse order (the time-reversed clip); each
            row keeps the time span of the frames it saw.
        global_frames: ``"glad"``: position inside each local clip of the global view's
            frames (3 released; more positions add global views).
    """

    sampler: str = "sliding"
    clip_len: int = 16
    stride: int = 16
    frame_stride: int = 1
    fps: float | None = None
    views: str = "center"
    last: str = "pad"
    num_segments: int = 8
    endpoint: str | None = None
    keep_time: bool = False
    pool: str = "avg"
    reverse: bool = False
    global_frames: tuple[int, ...] = (3,)

    def __post_init__(self) -> None:
        checks = (
            (self.sampler in SAMPLER_NAMES, f"sampler {self.sampler!r} not in {SAMPLER_NAMES}"),
            (self.views in VIEW_NAMES, f"views {self.views!r} not in {VIEW_NAMES}"),
            (self.last in LAST_POLICIES, f"last {self.last!r} not in {LAST_POLICIES}"),
            (self.pool in POOLS, f"pool {self.pool!r} not in {POOLS}"),
            (self.clip_len >= 1, f"clip_len must be >= 1, got {self.clip_len}"),
            (self.stride >= 1, f"stride must be >= 1, got {self.stride}"),
            (self.frame_stride >= 1, f"frame_stride must be >= 1, got {self.frame_stride}"),
            (self.num_segments >= 1, f"num_segments must be >= 1, got {self.num_segments}"),
            (self.fps is None or self.fps > 0, f"fps must be positive or None, got {self.fps}"),
        )
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"Sampling: {msg}")
        if self.sampler == "glad" and (self.clip_len != self.num_segments or self.keep_time or not self.global_frames
                                       or not all(0 <= g < self.clip_len for g in self.global_frames)):
            raise ValueError(f"Sampling: sampler 'glad' needs clip_len == num_segments (the global view takes one "
                             f"frame per local clip), keep_time off and global_frames in [0, clip_len); got "
                             f"clip_len={self.clip_len}, num_segments={self.num_segments}, "
                             f"global_frames={list(self.global_frames)}")

    @property
    def n_views(self) -> int:
        return VIEW_COUNTS[self.views]

    @property
    def windows_per_row(self) -> int:
        """Windows that form one row: the GLAD views (local clips + global clips), else 1."""
        return self.num_segments + len(self.global_frames) if self.sampler == "glad" else 1

    @property
    def level(self) -> str:
        """``"frame"`` for per-time-step rows (``keep_time`` or the dense sampler), else ``"clip"``."""
        return "frame" if (self.keep_time or self.sampler in ("dense", "static")) else "clip"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def window_positions(n_frames: int, sampling: Sampling) -> np.ndarray:
    """Positions into the resampled frame sequence read by each window.

    Args:
        n_frames: length of the resampled frame sequence.
        sampling: the sampler and its parameters.

    Returns:
        ``(W, L)`` int64 positions in ``[0, n_frames)``; ``W`` may be 0 (``last="drop"`` on a
        short video).
    """
    from featbank.extract.sampling import SAMPLERS

    s = sampling
    if n_frames <= 0:
        return np.zeros((0, s.clip_len), np.int64)
    if s.sampler == "sliding":
        pos = SAMPLERS["sliding"](n_frames, s.clip_len, s.stride, s.frame_stride, last=s.last)
    elif s.sampler == "tsn":
        pos = SAMPLERS["tsn"](n_frames, s.num_segments, clip_len=s.clip_len)
    elif s.sampler == "dense":
        pos = SAMPLERS["dense"](n_frames, clip_len=s.clip_len, frame_stride=s.frame_stride)
    elif s.sampler == "static":
        pos = SAMPLERS["static"](n_frames, s.num_segments, s.clip_len)
    elif s.sampler == "glad":
        pos = SAMPLERS["glad"](n_frames, clip_len=s.clip_len, frame_interval=s.frame_stride,
                               num_clips=s.num_segments, global_frames=s.global_frames)
    else:
        pos = SAMPLERS["whole"](n_frames)
    pos = np.asarray(pos, dtype=np.int64).reshape(len(pos), -1)
    return np.ascontiguousarray(pos[:, ::-1]) if s.reverse else pos  # reverse: the clip backwards in time


@dataclass(frozen=True, eq=False)
class RowLayout:
    """Timing of the rows of one video, before features are known.

    Attributes:
        starts: ``(W*R,)`` start seconds of every candidate row (window-major).
        ends: ``(W*R,)`` end seconds.
        frame_idx: ``(W*R, 2)`` first/last source-frame index.
        keep: ``(W*R,)`` bool; False for rows made only of padding frames.
    """

    starts: np.ndarray
    ends: np.ndarray
    frame_idx: np.ndarray
    keep: np.ndarray


def row_layout(
    positions: np.ndarray,
    times: np.ndarray,
    src_indices: np.ndarray,
    period: float,
    rows_per_window: int,
) -> RowLayout:
    """Start/end seconds and source-frame indices of every row.

    Row ``r`` of window ``w`` covers the ``r``-th of ``rows_per_window`` equal blocks of the
    window's positions. Padding (a repeated final position) is ignored; a row made only of
    padding is marked ``keep=False``.

    Args:
        positions: ``(W, L)`` positions into the resampled sequence.
        times: ``(K,)`` presentation time (s) of each resampled frame.
        src_indices: ``(K,)`` source-frame index of each resampled frame.
        period: duration of one resampled frame in seconds (the row end is the last
            frame's time plus this).
        rows_per_window: ``R``, output time steps per window (1 for clip-level rows).

    Returns:
        The layout of ``W * R`` candidate rows, window-major.
    """
    n_win, length = positions.shape
    n_rows = n_win * rows_per_window
    starts = np.zeros(n_rows, np.float64)
    ends = np.zeros(n_rows, np.float64)
    fidx = np.full((n_rows, 2), -1, np.int64)
    keep = np.zeros(n_rows, bool)
    # Padding = a position equal to its predecessor inside the window.
    real = np.ones_like(positions, dtype=bool)
    if length > 1:
        real[:, 1:] = positions[:, 1:] != positions[:, :-1]
    bounds = np.linspace(0, length, rows_per_window + 1).round().astype(int)
    for w in range(n_win):
        for r in range(rows_per_window):
            i = w * rows_per_window + r
            lo, hi = bounds[r], max(bounds[r + 1], bounds[r] + 1)
            block = positions[w, lo:hi][real[w, lo:hi]]
            keep[i] = len(block) > 0
            if not keep[i]:
                block = positions[w, lo:hi]
            first, last = int(block.min()), int(block.max())
            starts[i] = float(times[first])
            ends[i] = float(times[last]) + period
            fidx[i] = (int(src_indices[first]), int(src_indices[last]))
    return RowLayout(starts, ends, fidx, keep)


def frame_period(times: np.ndarray, fps: float | None) -> float:
    """Duration of one resampled frame: ``1/fps`` when known, else the median time step."""
    if fps:
        return 1.0 / float(fps)
    times = np.asarray(times, np.float64)
    if len(times) > 1:
        step = float(np.median(np.diff(times)))
        if step > 0:
            return step
    return 0.0


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


def split_views(out: torch.Tensor, b: int, v: int) -> torch.Tensor:
    """Per-clip outputs back to windows: ``(B*V, R, *F)`` -> ``(B, R, V, *F)`` float32."""
    out = out.float().reshape(b, v, *out.shape[1:])  # (B*V, R, *F) -> (B, V, R, *F)
    return out.transpose(1, 2).contiguous()  # (B, V, R, *F) -> (B, R, V, *F)


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


def assemble_rows(outputs: torch.Tensor | np.ndarray, layout: RowLayout, n_views: int) -> VideoRows:
    """Rows of one video from its per-window outputs.

    Args:
        outputs: ``(W, R, V, *F)`` model outputs of every window, in window order.
        layout: ``row_layout`` of the same windows.
        n_views: ``V``; a single view is squeezed away (rows ``F``), several kept (``(V, *F)``).

    Returns:
        ``VideoRows`` with padding-only rows dropped.
    """
    out = np.asarray(outputs, dtype=np.float32)
    feats = out.reshape(out.shape[0] * out.shape[1], *out.shape[2:])  # (W, R, V, *F) -> (W*R, V, *F)
    if n_views == 1:
        feats = feats[:, 0]  # (N, 1, *F) -> (N, *F)
    k = layout.keep
    return VideoRows(feats[k], layout.starts[k], layout.ends[k], layout.frame_idx[k])


def iter_batches(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices of ``range(n)`` of at most ``batch_size`` items."""
    for i in range(0, n, max(1, batch_size)):
        yield slice(i, min(n, i + batch_size))


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
