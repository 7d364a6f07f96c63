"""PyAV (FFmpeg) video backend with exact frame indexing.

Opening demuxes the video stream once without decoding (fast, I/O bound) to count frames and
collect packet time stamps. Frame ``i`` is the ``i``-th frame the decoder outputs, i.e. the
``i``-th in presentation order. Reads decode forward from the current position; a jump backwards
or more than ``SEEK_GAP`` frames ahead seeks to the preceding key frame when the time stamps are
trustworthy (unique packet pts, not AVI, whose packed B-frames carry reordered pts), otherwise
decoding restarts from the beginning. Either way the returned frames are the requested ones.
"""

from __future__ import annotations

import os

import av
import numpy as np

from featbank.extract.decode_base import VideoSource, index_times, make_info
from featbank.extract.decode_probe import diagnose
from featbank.extract.errors import DecodeError

SEEK_GAP = 64  # frames ahead beyond which a seek is cheaper than decoding through
_TRUNCATION_SLACK = 0.01  # tolerated shortfall against the container's declared count (1%, >= 1 frame)


class PyAVSource(VideoSource):
    """A video file decoded with PyAV.

    Args:
        path: Video file.
        threads: Decoder threads (0 = FFmpeg's automatic choice).
    """

    def __init__(self, path: str, *, threads: int = 0) -> None:
        self.path = path
        self._container = None
        self._iter = None
        self._pos = 0  # index of the frame the decode iterator yields next
        self._threads = threads
        try:
            self._open(threads)
        except av.error.FFmpegError as e:
            self.close()
            err = diagnose(path, f"PyAV: {e}")
            if isinstance(e, av.error.EOFError) and err.kind == "corrupt":
                err = DecodeError(path, "truncated", f"the file ends inside the container header ({e})")
            raise err from None
        except DecodeError:
            self.close()
            raise

    def _open(self, threads: int) -> None:
        path = self.path
        self._container = container = av.open(path, metadata_errors="ignore")
        if not container.streams.video:
            raise DecodeError(path, "zero_frames", "the container has no video stream")
        self._stream = stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if threads > 0:
            stream.thread_count = threads
        pts, scan_error = self._scan_packets()
        n = len(pts)
        declared = int(stream.frames or 0)
        if n == 0:
            if scan_error:
                raise diagnose(path, f"PyAV: no packet could be read ({scan_error})")
            raise DecodeError(path, "zero_frames", "the video stream holds no frame")
        if declared > 0 and n + max(1, int(declared * _TRUNCATION_SLACK)) < declared:
            extra = f"; demuxer: {scan_error}" if scan_error else ""
            raise DecodeError(
                path, "truncated", f"container declares {declared} frames but only {n} are present (file cut short?){extra}"
            )
        fmt = container.format.name or ""
        pts_arr = np.array([p for p in pts if p is not None], dtype=np.int64)
        self._pts_ok = (
            "avi" not in fmt
            and pts_arr.shape[0] == n
            and np.unique(pts_arr).shape[0] == n
            and stream.time_base is not None
        )
        self._pts = np.sort(pts_arr) if self._pts_ok else None
        self._tb = float(stream.time_base) if stream.time_base is not None else 0.0
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        if not fps > 0 and self._pts_ok and n > 1:
            fps = (n - 1) / ((self._pts[-1] - self._pts[0]) * self._tb)
        cc = stream.codec_context
        self.info = make_info(path, "pyav", fps, n, cc.height, cc.width)
        self._restart()

    def _scan_packets(self) -> tuple[list[int | None], str]:
        """Demux (no decoding) the video stream: packet pts of every non-empty packet."""
        pts: list[int | None] = []
        err = ""
        try:
            for packet in self._container.demux(self._stream):
                if packet.size:
                    pts.append(packet.pts if packet.pts is not None else packet.dts)
        except av.error.FFmpegError as e:
            err = str(e)
        return pts, err

    def _restart(self) -> None:
        """Reopen the container and decode from the first frame (exact for every demuxer)."""
        if self._container is not None:
            self._container.close()
        self._container = av.open(self.path, metadata_errors="ignore")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        if self._threads > 0:
            self._stream.thread_count = self._threads
        self._iter = self._container.decode(self._stream)
        self._pos = 0

    def _seek_to(self, target: int) -> None:
        """Position the decoder so that the next frame it yields is at or before ``target``."""
        if not self._pts_ok or target < SEEK_GAP:
            self._restart()
            return
        self._container.seek(int(self._pts[target]), stream=self._stream, backward=True, any_frame=False)
        self._iter = self._container.decode(self._stream)
        self._pos = -1  # unknown until the first frame's pts is seen

    def _locate(self, frame) -> int:
        """Index of a decoded frame from its pts (-1 when the pts is not in the packet table)."""
        if not self._pts_ok or frame.pts is None:
            return -1
        k = int(np.searchsorted(self._pts, frame.pts))
        return k if k < self._pts.shape[0] and self._pts[k] == frame.pts else -1

    def _next_frame(self, target: int):
        """Next decoded frame and its index; sets ``self._pos`` past it.

        With trustworthy time stamps the index comes from the frame's pts (robust to frames a
        decoder drops); otherwise it is the count of frames decoded since the start.
        """
        try:
            frame = next(self._iter)
        except StopIteration:
            raise DecodeError(
                self.path, "truncated", f"stream ended after frame {self._pos - 1} while reading frame {target} "
                f"of {self.info.n_frames}"
            ) from None
        k = self._locate(frame)
        if self._pos == -1 and (k < 0 or k > target):
            # Right after a seek the frame must be located and not past the target; otherwise
            # the seek did not land where the index says: decode from the start instead.
            self._restart()
            return self._next_frame(target)
        if k >= 0:
            self._pos = k
        idx = self._pos
        self._pos += 1
        return frame, idx

    def _read_sorted(self, uniq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        info = self.info
        out = np.empty((uniq.shape[0], info.height, info.width, 3), dtype=np.uint8)  # (K, H, W, 3)
        try:
            for j, target in enumerate(uniq.tolist()):
                if self._pos == -1 or target < self._pos or target - self._pos > SEEK_GAP:
                    self._seek_to(target)
                while True:
                    frame, idx = self._next_frame(target)
                    if idx == target:
                        break
                    if idx > target:
                        raise DecodeError(self.path, "corrupt", f"the decoder produced no picture for frame {target}")
                if frame.width != info.width or frame.height != info.height:
                    frame = frame.reformat(width=info.width, height=info.height)
                out[j] = frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as e:
            raise diagnose(self.path, f"PyAV failed at frame {target}: {e}") from None
        if self._pts_ok:
            times = (self._pts[uniq] - self._pts[0]).astype(np.float64) * self._tb
        else:
            times = index_times(uniq, info.fps)
        return out, times

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
            self._iter = None


def pyav_version() -> str:
    """PyAV and FFmpeg library versions, for provenance."""
    libav = getattr(av, "library_versions", {}).get("libavcodec")
    codec = ".".join(map(str, libav)) if libav else "?"
    return f"av {av.__version__} (libavcodec {codec})"


def declared_frames(path: str) -> int:
    """Frame count the container header declares (0 when unknown); header only, no demuxing."""
    try:
        with av.open(os.fspath(path), metadata_errors="ignore") as c:
            return int(c.streams.video[0].frames or 0) if c.streams.video else 0
    except av.error.FFmpegError:
        return 0
