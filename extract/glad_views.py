"""GLAD's view sampling as released (``KHU-VLL/GLAD``), as pure index functions.

The released pipeline samples ``SampleFrames(clip_len=8, frame_interval=2, num_clips=8)``
(mmaction2: segment-based clip offsets; test mode = segment centres, which the released
config uses for target videos) into ``imgs (B, N=8, C, T=8, H, W)``; its ``FrameSampler``
``lngn`` with ``sampler_index=dict(l=[4, 5], g=3)`` then takes

* **local views**: ``imgs[:, i:i+1]`` for ``i`` in ``l`` -> whole clips 4 and 5 (0-based);
* **global view**: ``imgs[:, :, :, g:g+1]`` -> frame 3 (0-based) of each of the 8 clips, one
  sparse 8-frame clip spanning the video.

:func:`glad_windows` returns the frames of *all eight* local clips followed by the global
clip(s), so a stored row holds views ``0..7`` (local) and ``8..`` (global, one per entry of
``global_frames``; 3 is the released one, others are optional augmentation copies). The
recipe picks views 4, 5 and 8 to train and 5 and 8 to test, as released.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

CLIP_LEN = 8
FRAME_INTERVAL = 2
NUM_CLIPS = 8
GLOBAL_FRAME = 3
LOCAL_TRAIN = (4, 5)


def sample_frames_offsets(num_frames: int, clip_len: int = CLIP_LEN, frame_interval: int = FRAME_INTERVAL,
                          num_clips: int = NUM_CLIPS, rng: np.random.Generator | None = None) -> np.ndarray:
    """Clip start offsets of mmaction2 ``SampleFrames`` (``rng=None``: test mode, segment centres).

    Test mode: ``avg = (n - clip_len * interval + 1) / num_clips``; offsets
    ``int(k * avg + avg / 2)`` when ``n > clip_len * interval - 1``, else zeros. Train mode
    (``rng`` given): ``avg = (n - span + 1) // num_clips``; ``k * avg + randint(avg)`` when
    ``avg > 0``; sorted random starts when ``n > max(num_clips, span)``; ``around(k * ratio)``
    when ``avg == 0``; else zeros.

    Returns:
        ``(num_clips,)`` int64 offsets.
    """
    span = clip_len * frame_interval  # mmaction's ori_clip_len
    k = np.arange(num_clips)
    if rng is None:
        avg = (num_frames - span + 1) / float(num_clips)
        if num_frames > span - 1:
            return (k * avg + avg / 2.0).astype(np.int64)
        return np.zeros(num_clips, np.int64)
    avg_i = (num_frames - span + 1) // num_clips
    if avg_i > 0:
        return (k * avg_i + rng.integers(avg_i, size=num_clips)).astype(np.int64)
    if num_frames > max(num_clips, span):
        return np.sort(rng.integers(num_frames - span + 1, size=num_clips)).astype(np.int64)
    if avg_i == 0:
        ratio = (num_frames - span + 1.0) / num_clips
        return np.around(k * ratio).astype(np.int64)
    return np.zeros(num_clips, np.int64)


def local_clips(num_frames: int, clip_len: int = CLIP_LEN, frame_interval: int = FRAME_INTERVAL,
                num_clips: int = NUM_CLIPS, rng: np.random.Generator | None = None) -> np.ndarray:
    """``(num_clips, clip_len)`` frame indices of the dense clips (out-of-bound indices loop, as released)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    offsets = sample_frames_offsets(num_frames, clip_len, frame_interval, num_clips, rng)
    idx = offsets[:, None] + np.arange(clip_len, dtype=np.int64)[None, :] * frame_interval  # (N, 1) + (1, T)
    return np.mod(idx, num_frames)  # out_of_bound_opt='loop'


def glad_windows(num_frames: int, clip_len: int = CLIP_LEN, frame_interval: int = FRAME_INTERVAL,
                 num_clips: int = NUM_CLIPS, global_frames: Sequence[int] = (GLOBAL_FRAME,),
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """Frames of every GLAD view of one video: ``(num_clips + G, clip_len)`` int64.

    Rows ``0..num_clips-1``: the dense local clips. Row ``num_clips + j``: the global clip made
    of frame ``global_frames[j]`` of every local clip (it has ``num_clips`` frames; the job
    needs ``num_clips == clip_len`` so all views are clips of one length).
    """
    if num_clips != clip_len:
        raise ValueError(f"GLAD views need num_clips == clip_len (the global view is one frame per clip), "
                         f"got {num_clips} and {clip_len}")
    bad = [g for g in global_frames if not 0 <= g < clip_len]
    if bad or not global_frames:
        raise ValueError(f"global_frames must be non-empty positions in [0, {clip_len}), got {list(global_frames)}")
    loc = local_clips(num_frames, clip_len, frame_interval, num_clips, rng)  # (N, T)
    glob = np.stack([loc[:, g] for g in global_frames])  # (G, N)
    return np.concatenate([loc, glob]).astype(np.int64)


def num_views(global_frames: Sequence[int] = (GLOBAL_FRAME,), num_clips: int = NUM_CLIPS) -> int:
    """Views per row: the local clips plus one per global frame position."""
    return num_clips + len(global_frames)
