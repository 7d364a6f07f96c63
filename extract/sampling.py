"""Clip sampling: which frames of a (resampled) frame sequence form each clip.

Every sampler returns a ``(W, clip_len)`` int64 array of indices into the frame sequence (one row
per clip). int64 throughout: the released CFB computed indices in int8 and scrambled every clip
beyond frame 127.

- ``sliding_windows``: clips every ``stride`` frames; frames inside a clip ``frame_stride`` apart.
- ``tsn_segments``: one clip per equal segment (TSN); the segment centre, or a random offset.
- ``dense_frames``: one clip per frame (per-frame features, optionally with temporal context).
- ``whole_video``: the whole sequence as one clip.
- ``static_frames``: single frames (segment centres; a still image is one frame), each
  repeated into a clip of ``clip_len`` identical frames (image features from a video backbone).
- ``glad_windows`` (extract/glad_views.py): GLAD's 8 local clips + the global clip, as released.
"""

from __future__ import annotations

import numpy as np

from .glad_views import glad_windows

LAST_POLICIES = ("pad", "drop", "shift")


def _check_positive(**kw: int) -> None:
    for name, v in kw.items():
        if int(v) != v or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")


def sliding_windows(n_frames: int, clip_len: int, stride: int, frame_stride: int = 1, last: str = "pad") -> np.ndarray:
    """Sliding-window clips.

    A clip starting at ``s`` takes frames ``s + arange(clip_len) * frame_stride`` (span
    ``(clip_len - 1) * frame_stride + 1``). Full clips start at ``0, stride, 2*stride, ...`` while
    they fit. When frames after the last full clip are left uncovered and the next stride position
    still lies inside the sequence, the last partial clip is:

    - ``"pad"``: the clip at the next stride position, indices past the end repeat the last frame;
    - ``"shift"``: a clip aligned to end at the last frame (start ``n_frames - span``);
    - ``"drop"``: left out.

    A sequence shorter than one span gives one padded clip (none with ``"drop"``).

    Args:
        n_frames: Frames in the sequence (>= 1).
        clip_len: Frames per clip.
        stride: Step between clip starts.
        frame_stride: Step between frames inside a clip.
        last: ``"pad"``, ``"drop"`` or ``"shift"``.

    Returns:
        ``(W, clip_len)`` int64 indices in ``[0, n_frames)``.
    """
    _check_positive(n_frames=n_frames, clip_len=clip_len, stride=stride, frame_stride=frame_stride)
    if last not in LAST_POLICIES:
        raise ValueError(f"unknown last-window policy {last!r}; expected one of {LAST_POLICIES}")
    offsets = np.arange(clip_len, dtype=np.int64) * frame_stride  # (clip_len,)
    span = int(offsets[-1]) + 1
    if n_frames >= span:
        starts = np.arange(0, n_frames - span + 1, stride, dtype=np.int64)  # full clips
        next_start = int(starts[-1]) + stride  # would start inside the video but not fit
        uncovered = int(starts[-1]) + span < n_frames  # frames after the last full clip
        if uncovered and next_start < n_frames and last != "drop":
            extra = n_frames - span if last == "shift" else next_start
            starts = np.append(starts, np.int64(extra))
    else:
        starts = np.zeros(0 if last == "drop" else 1, dtype=np.int64)
    idx = starts[:, None] + offsets[None, :]  # (W, 1) + (1, clip_len) -> (W, clip_len)
    return np.minimum(idx, n_frames - 1)


def tsn_segments(
    n_frames: int,
    num_segments: int,
    clip_len: int = 1,
    rng: np.random.Generator | None = None,
    frame_stride: int = 1,
) -> np.ndarray:
    """TSN segment sampling: the valid clip starts are split into ``num_segments`` equal parts.

    Test mode (``rng=None``): each clip starts at the centre of its part (mmaction2
    ``SampleFrames`` test clips: ``int(k * L / S + L / (2 S))``, ``L = n_frames - span + 1``).
    Train mode: a uniformly random start inside each part. Short sequences repeat the last frame.

    Args:
        n_frames: Frames in the sequence (>= 1).
        num_segments: Number of clips S.
        clip_len: Frames per clip.
        rng: Random generator for training-time jitter; None for deterministic centres.
        frame_stride: Step between frames inside a clip.

    Returns:
        ``(S, clip_len)`` int64 indices in ``[0, n_frames)``.
    """
    _check_positive(n_frames=n_frames, num_segments=num_segments, clip_len=clip_len, frame_stride=frame_stride)
    offsets = np.arange(clip_len, dtype=np.int64) * frame_stride  # (clip_len,)
    n_starts = max(1, n_frames - int(offsets[-1]))  # valid clip starts L
    seg = n_starts / num_segments
    k = np.arange(num_segments, dtype=np.float64)
    if rng is None:
        starts = (k * seg + seg / 2.0).astype(np.int64)
    else:
        lo = np.floor(k * seg).astype(np.int64)
        hi = np.maximum(np.floor((k + 1) * seg).astype(np.int64), lo + 1)  # exclusive; >= 1 choice
        starts = rng.integers(lo, hi, dtype=np.int64)
    starts = np.minimum(starts, n_starts - 1)
    idx = starts[:, None] + offsets[None, :]  # (S, 1) + (1, clip_len) -> (S, clip_len)
    return np.minimum(idx, n_frames - 1)


def dense_frames(n_frames: int, clip_len: int = 1, frame_stride: int = 1, align: str = "center") -> np.ndarray:
    """One clip per frame: row ``i`` is the temporal context of frame ``i``.

    ``clip_len=1`` gives ``arange(n)[:, None]`` (per-frame features). Longer clips place frame
    ``i`` at the centre (``align="center"``, position ``clip_len // 2``), first (``"start"``) or
    last (``"end"``); indices outside the sequence are clamped (edge frames repeat).

    Args:
        n_frames: Frames in the sequence (>= 1).
        clip_len: Frames per clip.
        frame_stride: Step between frames inside a clip.
        align: ``"center"``, ``"start"`` or ``"end"``.

    Returns:
        ``(n_frames, clip_len)`` int64 indices in ``[0, n_frames)``.
    """
    _check_positive(n_frames=n_frames, clip_len=clip_len, frame_stride=frame_stride)
    anchor = {"center": clip_len // 2, "start": 0, "end": clip_len - 1}.get(align)
    if anchor is None:
        raise ValueError(f"unknown align {align!r}; expected 'center', 'start' or 'end'")
    offsets = (np.arange(clip_len, dtype=np.int64) - anchor) * frame_stride  # (clip_len,)
    idx = np.arange(n_frames, dtype=np.int64)[:, None] + offsets[None, :]  # (n, 1) + (1, clip_len) -> (n, clip_len)
    return np.clip(idx, 0, n_frames - 1)


def whole_video(n_frames: int) -> np.ndarray:
    """The whole sequence as a single clip: ``(1, n_frames)`` int64."""
    _check_positive(n_frames=n_frames)
    return np.arange(n_frames, dtype=np.int64)[None, :]


def static_frames(n_frames: int, num_frames: int, clip_len: int) -> np.ndarray:
    """Single frames as static clips: the centres of ``num_frames`` equal segments (TSN
    test-time choice; every frame when there are fewer), each repeated ``clip_len`` times.

    A still image is a one-frame sequence and gives one clip. Repeating a frame is how a video
    backbone (I3D, X3D) reads an image, so stills and video frames share one feature space.

    Args:
        n_frames: Frames in the sequence (>= 1).
        num_frames: Frames taken from the sequence.
        clip_len: Length of each static clip.

    Returns:
        ``(min(n_frames, num_frames), clip_len)`` int64 indices; every row repeats one index.
    """
    _check_positive(n_frames=n_frames, num_frames=num_frames, clip_len=clip_len)
    if n_frames <= num_frames:
        picks = np.arange(n_frames, dtype=np.int64)
    else:
        picks = ((np.arange(num_frames) + 0.5) * n_frames / num_frames).astype(np.int64)  # segment centres
    return np.repeat(picks[:, None], clip_len, axis=1)  # (S,) -> (S, clip_len)


SAMPLERS = {
    "sliding": sliding_windows,
    "tsn": tsn_segments,
    "dense": dense_frames,
    "whole": whole_video,
    "static": static_frames,
    "glad": glad_windows,
}
