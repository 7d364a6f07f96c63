"""Decoding side of the batch job: manifest entries -> preprocessed windows, in decoding workers.

``WindowStream`` is the stream of the videos of one shard. Each decoding worker
(``_workers.DecodePool``) takes every ``n_workers``-th video and, per video, yields

* ``ClipChunk`` items: up to ``chunk_frames`` newly decoded frames' worth of windows,
  ``clips`` ``(n, V, C, L, h, w)`` float32 numpy (decoding window by window keeps memory bounded
  for a video of any length), then
* one ``VideoEnd`` with the video's metadata and time grid, or
* one ``VideoFailed`` when decoding or preprocessing raised (errors are values, so the
  loader keeps going).

Frames are decoded by source index, each source frame once (a small cache of
preprocessed frames carries the overlap of consecutive windows; each window is copied once,
into shared memory inside a worker), through ``SafeDecoder``
(a decoder worker process with a per-video timeout) or directly when the timeout is 0.

Nothing here imports torch: a worker starts in a fraction of a second and decodes while the
job process is still loading its model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from featbank.store.schema import BackboneSpec, VideoMeta

from .features import RowLayout, Sampling, frame_period, row_layout, window_positions


@dataclass(frozen=True)
class VideoTask:
    """One video to extract: its key (position in the shard), id, path and metadata fields."""

    key: int
    video_id: str
    path: str
    labels: tuple[int, ...] = ()
    offset: int = 0
    n_frames: int = -1
    split: str = ""
    domain: str = ""


@dataclass(frozen=True, eq=False)
class ClipChunk:
    """Windows ``[first, first + n)`` of video ``key``: ``clips`` ``(n, V, C, L, h, w)`` float32."""

    key: int
    first: int
    clips: Any  # numpy array (a shared-memory handle while it travels between processes)


@dataclass(frozen=True, eq=False)
class VideoEnd:
    """All windows of video ``key`` have been sent (``n_windows`` of them).

    ``positions`` ``(W, L)``, ``times`` ``(K,)`` (NaN for frames no window reads), ``src_idx``
    ``(K,)`` and ``period`` (s) give the rows' time grid (``layout``); the row count per window
    is the model's, so the main process computes it.
    """

    key: int
    meta: VideoMeta
    n_windows: int
    n_frames_decoded: int
    positions: np.ndarray
    times: np.ndarray
    src_idx: np.ndarray
    period: float

    def layout(self, rows_per_window: int) -> RowLayout:
        """Start/end seconds and source-frame indices of the video's rows."""
        return row_layout(self.positions, self.times, self.src_idx, self.period, rows_per_window)


@dataclass(frozen=True)
class VideoFailed:
    """Video ``key`` could not be read; ``kind`` is a ``DECODE_KINDS`` entry or an exception name."""

    key: int
    video_id: str
    kind: str
    message: str


@dataclass(frozen=True)
class StreamOptions:
    """What the workers need besides the tasks (picklable)."""

    spec: BackboneSpec
    sampling: Sampling
    modality: str = "rgb"
    decoder: str = "auto"
    timeout_s: float = 120.0
    chunk_frames: int = 256
    flow: Any = None  # extract.flow.FlowConfig: compute flow in memory from decoded RGB frames
    pixel_transform: Any = None  # f(frames (T, H, W, C) uint8, video_id) -> frames, e.g. BackgroundBlend


def _failure(task: VideoTask, exc: BaseException) -> VideoFailed:
    from .errors import DecodeError

    if isinstance(exc, DecodeError):
        return VideoFailed(task.key, task.video_id, exc.kind, str(exc))
    return VideoFailed(task.key, task.video_id, type(exc).__name__, f"{task.path}: {exc}")


def chunk_windows(positions: np.ndarray, src_idx: np.ndarray, chunk_frames: int) -> list[tuple[int, int]]:
    """Split windows into consecutive groups decoding at most ``chunk_frames`` new frames each.

    A group always holds at least one window (a single window longer than the budget is
    its own group). The first group holds just the first window, so the model gets work as
    soon as possible after a video is opened.

    Args:
        positions: ``(W, L)`` window positions into the resampled sequence.
        src_idx: ``(K,)`` source-frame index of each resampled position.
        chunk_frames: budget of newly decoded source frames per group.

    Returns:
        ``[(a, b), ...]`` window ranges covering ``range(W)``.
    """
    groups: list[tuple[int, int]] = []
    a, seen, new = 0, -1, 0
    for w in range(len(positions)):
        src = np.unique(src_idx[positions[w]])
        fresh = int((src > seen).sum())
        if w > a and (a == 0 or new + fresh > chunk_frames):
            groups.append((a, w))
            a, new = w, 0
        new += fresh
        seen = max(seen, int(src.max()))
    if len(positions):
        groups.append((a, len(positions)))
    return groups


class _Reader:
    """Reads arbitrary source frames of one video, with or without a timeout worker."""

    def __init__(self, task: VideoTask, opts: StreamOptions, safe: Any) -> None:
        self.task, self.opts, self.safe = task, opts, safe
        self.source = None
        # with opts.flow the video is decoded as RGB and turned into 2-channel flow frames here
        self.decode_modality = "rgb" if opts.flow is not None else opts.modality
        self.n_frames = 0
        self.flow_fn = None

    def info(self):
        if self.safe is not None:
            info = self.safe.probe(self.task.path, modality=self.decode_modality)
        else:
            from .decode import open_video

            with open_video(self.task.path, backend=self.opts.decoder, modality=self.decode_modality) as src:
                info = src.info
        self.n_frames = int(info.n_frames)
        if self.opts.flow is not None:
            import dataclasses

            info = dataclasses.replace(info, channels=2)
        return info

    def _read_decoded(self, indices: np.ndarray):
        if self.safe is not None:
            return self.safe.decode(self.task.path, modality=self.decode_modality, indices=indices)
        if self.source is None:
            from .decode import open_video

            self.source = open_video(self.task.path, backend=self.opts.decoder, modality=self.decode_modality)
        return self.source.read(indices)

    def read(self, indices: np.ndarray):
        if self.opts.flow is None:
            return self._read_decoded(indices)
        from .flow import flow_frames_at, flow_function

        if self.flow_fn is None:
            self.flow_fn = flow_function(self.opts.flow)
        return flow_frames_at(self._read_decoded, indices, self.n_frames, self.opts.flow, self.flow_fn)

    def close(self) -> None:
        if self.source is not None:
            self.source.close()
            self.source = None


def video_plan(task: VideoTask, info, sampling: Sampling) -> tuple[np.ndarray, np.ndarray]:
    """Source indices of the resampled sequence and the window positions into it.

    The usable source frames are ``[offset, offset + n_frames)`` for manifests that give an
    offset (mmaction ``path offset n_frames label``), else all frames of the video.

    Returns:
        ``(src_idx (K,), positions (W, L))`` int64.
    """
    from .decode import resample_indices

    start = max(0, task.offset)
    stop = info.n_frames
    if task.offset > 0 and task.n_frames > 0:
        stop = min(stop, start + task.n_frames)
    n_use = max(0, stop - start)
    src_idx = np.asarray(resample_indices(n_use, info.fps, sampling.fps), np.int64) + start  # (K,)
    return src_idx, window_positions(len(src_idx), sampling)


Alloc = Callable[[tuple, Any], np.ndarray]  # (shape, dtype) -> empty C-contiguous array


def gather_windows(pool: np.ndarray, cols: np.ndarray, alloc: Alloc = np.empty) -> np.ndarray:
    """Windows of preprocessed frames, copied once into one array.

    Args:
        pool: ``(V, C, P, h, w)`` preprocessed frames.
        cols: ``(n, L)`` column of ``pool`` for each frame of each window.
        alloc: allocates the result; a decoding worker allocates it in shared memory, so handing
            it to the job process does not copy it again.

    Returns:
        ``(n, V, C, L, h, w)`` contiguous.
    """
    v, c, _, h, w = pool.shape
    n, length = cols.shape
    out = alloc((n, v, c, length, h, w), pool.dtype)
    for i in range(n):
        np.take(pool, cols[i], axis=2, out=out[i], mode="clip")  # (V, C, L, h, w); "clip": no buffered copy
    return out


def iter_video(task: VideoTask, opts: StreamOptions, safe: Any = None, alloc: Alloc = np.empty) -> Iterator[Any]:
    """Items of one video: ``ClipChunk``... then ``VideoEnd``, or ``VideoFailed`` (never raises).
    ``alloc`` allocates each chunk's windows (``gather_windows``)."""
    from .transforms import preprocess_array

    reader = _Reader(task, opts, safe)
    try:
        info = reader.info()
        src_idx, positions = video_plan(task, info, opts.sampling)
        n_win = len(positions)
        times = np.full(len(src_idx), math.nan)  # (K,) seconds, filled as frames decode
        pool: np.ndarray | None = None  # (V, C, P, h, w) preprocessed frames still needed
        col_of: dict[int, int] = {}  # source index -> its column in ``pool``
        time_of: dict[int, float] = {}
        # suffix minimum of each window's first source frame: frames below it are no longer needed
        first_src = src_idx[positions.min(axis=1)] if n_win else np.zeros(0, np.int64)
        keep_from = np.minimum.accumulate(first_src[::-1])[::-1] if n_win else first_src
        n_decoded = 0
        for a, b in chunk_windows(positions, src_idx, opts.chunk_frames):
            need = np.unique(src_idx[positions[a:b]])
            missing = np.array([s for s in need if s not in col_of], np.int64)
            if len(missing):
                frames = reader.read(missing)
                pixels = frames.frames
                if opts.pixel_transform is not None:  # seeded per video: every chunk gets the same draw
                    pixels = opts.pixel_transform(np.asarray(pixels), task.video_id)
                video = preprocess_array(pixels, opts.spec, views=opts.sampling.views)  # (V, C, n, h, w)
                base = 0 if pool is None else pool.shape[2]
                pool = video if pool is None else np.concatenate([pool, video], axis=2)
                for j, s in enumerate(np.asarray(frames.indices, np.int64)):
                    col_of[int(s)] = base + j
                    time_of[int(s)] = float(frames.times[j])
                n_decoded += len(missing)
            pos = positions[a:b]  # (n, L)
            clips = gather_windows(pool, np.vectorize(col_of.__getitem__, otypes=[np.int64])(src_idx[pos]), alloc)
            for p in np.unique(pos):
                times[p] = time_of[int(src_idx[p])]
            yield ClipChunk(task.key, a, clips)
            if b < n_win:  # drop the frames no later window uses
                keep = sorted((s, c) for s, c in col_of.items() if s >= keep_from[b])
                pool = pool[:, :, [c for _, c in keep]] if len(keep) < pool.shape[2] else pool
                col_of = {s: i for i, (s, _) in enumerate(keep)}
        pool = None
        period = frame_period(times[~np.isnan(times)], opts.sampling.fps or info.fps)
        meta = VideoMeta(
            video_id=task.video_id,
            source=task.path,
            labels=task.labels,
            split=task.split,
            domain=task.domain,
            fps=float(info.fps),
            n_frames=int(info.n_frames),
            duration=float(info.duration),
        )
        yield VideoEnd(task.key, meta, n_win, n_decoded, positions, times, src_idx, period)
    except Exception as exc:  # one bad video must not stop the job: report it as a value
        yield _failure(task, exc)
    finally:
        reader.close()


class WindowStream:
    """The videos of one shard as a stream of ``ClipChunk`` / ``VideoEnd`` / ``VideoFailed``
    (picklable: decoding workers receive it whole and each reads its share).

    Args:
        tasks: videos to extract, in order.
        opts: preprocessing, sampling and decoder options.
    """

    def __init__(self, tasks: Sequence[VideoTask], opts: StreamOptions) -> None:
        self.tasks = list(tasks)
        self.opts = opts

    def __iter__(self) -> Iterator[Any]:
        return self.items()

    def items(self, wid: int = 0, nw: int = 1, alloc: Alloc = np.empty) -> Iterator[Any]:
        """The items of videos ``wid, wid + nw, ...`` (one worker's share)."""
        safe = None
        if self.opts.timeout_s and self.opts.timeout_s > 0:
            from .decode import SafeDecoder

            # one decode thread per worker, so workers x threads stays within the cores
            safe = SafeDecoder(timeout_s=self.opts.timeout_s, backend=self.opts.decoder, threads=1)
        try:
            for task in self.tasks[wid::nw]:
                yield from iter_video(task, self.opts, safe, alloc)
        finally:
            if safe is not None:
                safe.close()
