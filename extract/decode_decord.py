"""decord video backend (the default; fast batched random access).

decord does not report frames the container declares but cannot deliver, so opening also reads
the declared count from the header with PyAV (no decoding) and raises ``truncated`` on a shortfall.
decord time stamps are garbage for some containers (AVI with packed B-frames gives -3.7e17 s):
they are used only when finite and non-decreasing, otherwise ``index / fps``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

import numpy as np

from featbank.extract.decode_base import VideoSource, index_times, make_info
from featbank.extract.decode_probe import diagnose
from featbank.extract.decode_pyav import _TRUNCATION_SLACK, declared_frames
from featbank.extract.errors import DecodeError


_QUIET_LOCK = threading.Lock()


def _decord():
    import decord  # imported lazily: a broken decord install must not break the PyAV path

    decord.logging.set_level(decord.logging.QUIET)  # its bundled ffmpeg's "moov atom not found" lines
    return decord


@contextlib.contextmanager
def _native_stderr_silenced():
    """Drop what decord's C++ side writes to file descriptor 2 (``video_reader.cc: ERROR opening``)
    during one call: the same failure reaches the caller as a ``DecodeError`` naming the file, so
    the raw line would only be printed twice, once unreadably. The descriptor is restored after."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (captured): nothing to silence
        yield
        return
    with _QUIET_LOCK:
        sys.stderr.flush()
        saved = os.dup(fd)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, fd)
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            os.close(devnull)


class DecordSource(VideoSource):
    """A video file decoded with decord.

    Args:
        path: Video file.
        threads: Decoder threads (0 = decord's automatic choice).
    """

    def __init__(self, path: str, *, threads: int = 0) -> None:
        self.path = path
        decord = _decord()
        try:
            with _native_stderr_silenced():
                self._vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=threads)
            n = len(self._vr)
            fps = float(self._vr.get_avg_fps())
            stamps = self._vr.get_frame_timestamp(np.arange(n).tolist())[:, 0].astype(np.float64) if n else None
            if n:
                first = self._vr.get_batch([0]).asnumpy()  # (1, H, W, 3)
                h, w = first.shape[1:3]
                self._vr.seek(0)
        except (decord.DECORDError, RuntimeError) as e:
            self._vr = None
            raise _explain_open_failure(path, e) from None
        self.info = make_info(path, "decord", fps, n, h if n else 0, w if n else 0)
        declared = declared_frames(path)
        if declared > 0 and n + max(1, int(declared * _TRUNCATION_SLACK)) < declared:
            self.close()
            raise DecodeError(path, "truncated", f"container declares {declared} frames but decord finds {n} (file cut short?)")
        ok = stamps is not None and np.all(np.isfinite(stamps)) and np.all(np.diff(stamps) >= 0) and stamps[0] > -1e6
        self._times = (stamps - stamps[0]) if ok else None

    def _read_sorted(self, uniq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        decord = _decord()
        try:
            with _native_stderr_silenced():
                frames = self._vr.get_batch(uniq.tolist()).asnumpy()  # (K, H, W, 3) uint8
        except (decord.DECORDError, RuntimeError) as e:
            raise diagnose(self.path, f"decord failed reading frames {int(uniq[0])}..{int(uniq[-1])}: {e}") from None
        if frames.shape[1:3] != (self.info.height, self.info.width):
            raise DecodeError(self.path, "corrupt", f"frame size changed mid-stream to {frames.shape[2]}x{frames.shape[1]}")
        times = self._times[uniq] if self._times is not None else index_times(uniq, self.info.fps)
        return np.ascontiguousarray(frames, dtype=np.uint8), times

    def close(self) -> None:
        self._vr = None


def _explain_open_failure(path: str, err: Exception) -> DecodeError:
    """Why decord could not open ``path``: PyAV's typed verdict when PyAV fails too, else a decord-only failure."""
    from featbank.extract.decode_pyav import PyAVSource

    try:
        PyAVSource(path).close()
    except DecodeError as e:
        return e
    msg = " ".join(str(err).split())[:300]
    return DecodeError(path, "corrupt", f"decord cannot open it but PyAV can (use backend 'auto' or 'pyav'): {msg}")


def decord_version() -> str:
    """The decord version, for provenance."""
    return f"decord {_decord().__version__}"
