"""Types shared by every decoding backend: ``VideoInfo``, ``Frames`` and the ``VideoSource`` base.

A backend implements ``_read_sorted(uniq)`` for sorted, unique, in-range source-frame indices;
the base class validates indices, handles unsorted/duplicated requests and windowed iteration.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from featbank.extract.errors import DecodeError

DEFAULT_WINDOW = 256


@dataclass(frozen=True)
class VideoInfo:
    """What is known about an input after opening it (no frame decoded yet where avoidable).

    Attributes:
        path: The file or folder.
        backend: ``"decord"``, ``"pyav"``, ``"folder"`` or ``"image"`` (the one actually used).
        fps: Source frame rate (frame folders: the ``folder_fps`` given to ``open_video``,
            30.0 by default; still images: 1.0).
        n_frames: Number of decodable source frames.
        duration: ``n_frames / fps`` in seconds.
        height: Frame height in pixels.
        width: Frame width in pixels.
        channels: 3 for RGB, 2 for optical-flow pairs (x, y).
    """

    path: str
    backend: str
    fps: float
    n_frames: int
    duration: float
    height: int
    width: int
    channels: int = 3


@dataclass(frozen=True, eq=False)
class Frames:
    """Decoded frames with their time stamps and source indices.

    Attributes:
        frames: ``(T, H, W, C)`` uint8; C=3 RGB, C=2 for flow pairs (x, y).
        times: ``(T,)`` float64 seconds, presentation time of each frame relative to the first.
        indices: ``(T,)`` int64 source-frame index of each frame.
    """

    frames: np.ndarray
    times: np.ndarray
    indices: np.ndarray

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def __post_init__(self) -> None:
        t = self.frames.shape[0]
        if self.frames.ndim != 4 or self.frames.dtype != np.uint8:
            raise ValueError(f"Frames.frames must be (T, H, W, C) uint8, got {self.frames.shape} {self.frames.dtype}")
        if self.times.shape != (t,) or self.indices.shape != (t,):
            raise ValueError(f"Frames: times {self.times.shape} / indices {self.indices.shape} do not match T={t}")


class VideoSource(abc.ABC):
    """One open input (video file, frame folder or still image); a context manager.

    Subclasses set ``self.info`` and implement ``_read_sorted`` and ``close``.
    """

    info: VideoInfo

    @abc.abstractmethod
    def _read_sorted(self, uniq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Decode sorted unique in-range indices -> ``(K, H, W, C)`` uint8 frames and ``(K,)`` times."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the decoder (idempotent)."""

    def check_indices(self, indices: np.ndarray | list[int] | range) -> np.ndarray:
        """Validate source-frame indices and return them as a 1-D int64 array.

        Raises:
            ValueError: Non-integer, non-1-D, or out of ``[0, n_frames)`` indices (names the file).
        """
        idx = np.asarray(indices)
        if idx.size == 0:
            return np.zeros(0, dtype=np.int64)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"{self.info.path}: indices must be a 1-D integer array, got {idx.dtype} {idx.shape}")
        idx = idx.astype(np.int64, copy=False)
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= self.info.n_frames:
            raise ValueError(
                f"{self.info.path}: frame index out of range [{lo}, {hi}] for a video of {self.info.n_frames} frames"
            )
        return idx

    def read(self, indices: np.ndarray | list[int] | range) -> Frames:
        """Decode arbitrary source-frame indices (any order, duplicates allowed).

        Args:
            indices: ``(T,)`` source-frame indices in ``[0, n_frames)``.

        Returns:
            Frames in the requested order.

        Raises:
            DecodeError: The frames cannot be decoded (corrupt or truncated data).
            ValueError: Indices out of range.
        """
        idx = self.check_indices(indices)
        info = self.info
        if idx.size == 0:
            empty = np.zeros((0, info.height, info.width, info.channels), dtype=np.uint8)
            return Frames(empty, np.zeros(0, dtype=np.float64), idx)
        uniq, inverse = np.unique(idx, return_inverse=True)
        frames, times = self._read_sorted(uniq)  # (K, H, W, C), (K,)
        if uniq.shape[0] != idx.shape[0] or not np.array_equal(uniq, idx):
            frames, times = frames[inverse], times[inverse]  # (K, ...) -> (T, ...)
        return Frames(frames, np.asarray(times, dtype=np.float64), idx)

    def iter_windows(self, size: int = DEFAULT_WINDOW, indices: np.ndarray | None = None) -> Iterator[Frames]:
        """Yield consecutive windows of at most ``size`` frames; their concatenation equals ``read(indices)``.

        Memory: at most ``size`` decoded frames are held by this iterator at a time
        (``size * H * W * C`` bytes, twice that transiently when ``indices`` repeat or go backwards),
        plus the decoder's own few-frame buffer.

        Args:
            size: Frames per window (>= 1).
            indices: Source-frame indices to read (default: every frame in order).
        """
        if size < 1:
            raise ValueError(f"window size must be >= 1, got {size}")
        idx = np.arange(self.info.n_frames, dtype=np.int64) if indices is None else self.check_indices(indices)
        for start in range(0, idx.shape[0], size):
            yield self.read(idx[start : start + size])

    def __enter__(self) -> "VideoSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        i = self.info
        return f"{type(self).__name__}({i.path!r}, {i.n_frames} frames, {i.fps:.3f} fps, {i.width}x{i.height})"


def make_info(path: str, backend: str, fps: float, n_frames: int, height: int, width: int, channels: int = 3) -> VideoInfo:
    """Build a ``VideoInfo`` with ``duration = n_frames / fps``; rejects zero frames with ``zero_frames``."""
    if n_frames <= 0:
        raise DecodeError(path, "zero_frames", "the input contains no decodable video frame")
    if not (fps > 0 and np.isfinite(fps)):
        raise DecodeError(path, "corrupt", f"invalid frame rate {fps!r}")
    return VideoInfo(path, backend, float(fps), int(n_frames), n_frames / float(fps), int(height), int(width), channels)


def index_times(indices: np.ndarray, fps: float) -> np.ndarray:
    """Times of frames on a constant-rate grid: ``indices / fps`` (float64 seconds)."""
    return indices.astype(np.float64) / float(fps)
