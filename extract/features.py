"""The time grid and rows of feature extraction: windows in, rows out (no torch needed).

``feature_head.extract_video`` (also importable from here) is the oracle the batch job (extract/job.py) is tested against: it
takes one video's frames, already resampled to the target rate, cuts them into windows
with the configured sampler, preprocesses, runs the backbone in batches and returns the
video's rows with their start/end seconds and source-frame indices.

The helpers below are shared with the job so both produce rows the same way:

* ``window_positions`` - which positions of the (resampled) frame sequence each window reads;
* ``row_layout`` - start/end seconds, source-frame indices and the keep-mask of every row;
* ``split_views`` - per-clip model outputs back to windows;
* ``assemble_rows`` - per-window outputs + layout -> ``VideoRows``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator, Literal, get_args

import numpy as np

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


def split_views(out: Any, b: int, v: int) -> Any:
    """Per-clip outputs back to windows: ``(B*V, R, *F)`` -> ``(B, R, V, *F)`` float32
    (numpy array or torch tensor, as given)."""
    out = out.reshape(b, v, *out.shape[1:]).swapaxes(1, 2)  # (B*V, R, *F) -> (B, V, R, *F) -> (B, R, V, *F)
    return np.ascontiguousarray(out, np.float32) if isinstance(out, np.ndarray) else out.float().contiguous()


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


_TORCH_NAMES = ("FeatureHead", "run_model", "extract_video", "autocast_context")


def __getattr__(name: str) -> Any:
    """The torch side (``FeatureHead``, ``run_model``, ``extract_video``) lives in
    ``feature_head``; it is imported on first use, so the time grid and rows need no torch."""
    if name in _TORCH_NAMES:
        from . import feature_head

        return getattr(feature_head, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
