"""Decoding: video files (decord, PyAV fallback), frame folders and still images -> uint8 frames.

Public API (the contract other modules code against)::

    with open_video("clip.mp4") as src:          # backend "auto": decord, PyAV when decord fails
        src.info                                  # VideoInfo(path, backend, fps, n_frames, duration, height, width, channels)
        frames = src.read(np.array([0, 5, 10]))   # Frames(frames (T,H,W,C) uint8, times (T,) s, indices (T,))
        for win in src.iter_windows(256):         # bounded memory: <= 256 decoded frames at a time
            ...
    frames = decode_video("clip.mp4", fps=25)    # whole video resampled by index stepping
    idx = resample_indices(300, 30.0, 25.0)       # floor(arange(0, n, src/target)) as int64

``SafeDecoder`` (featbank.extract.safe_decode) runs the same calls in a worker process with a
per-video timeout. Errors are ``featbank.extract.errors.DecodeError`` with a ``kind``.
"""

from __future__ import annotations

import os

import numpy as np

from featbank.extract.decode_base import DEFAULT_WINDOW, Frames, VideoInfo, VideoSource
from featbank.extract.decode_folder import DEFAULT_FOLDER_FPS, FolderSource, ImageSource
from featbank.extract.decode_probe import check_input, is_image_file, read_head
from featbank.extract.errors import DecodeError

BACKENDS = ("auto", "decord", "pyav", "folder", "image")
MODALITIES = ("rgb", "flow")

__all__ = [
    "BACKENDS",
    "DEFAULT_WINDOW",
    "Frames",
    "SafeDecoder",
    "VideoInfo",
    "VideoSource",
    "decode_video",
    "decoder_versions",
    "open_video",
    "resample_indices",
]


def _is_avi(path: str) -> bool:
    head = read_head(path, 12)
    return head[:4] == b"RIFF" and head[8:12] == b"AVI "


class AutoSource(VideoSource):
    """decord with a transparent switch to PyAV when decord fails to read (``info.backend`` says which).

    AVI files go straight to PyAV: decord 0.6 returns a wrong frame for the last frame of an AVI
    with packed B-frames after a seek in about 5-15 % of runs (measured on the shared clip_b.avi:
    frame 82 returned for frame 163), and its AVI time stamps are garbage.
    """

    def __init__(self, path: str, *, threads: int = 0) -> None:
        self.path = path
        self._threads = threads
        self.decord_error: Exception | None = None
        if _is_avi(path):
            self._src: VideoSource = _pyav_source(path, threads)
            return
        try:
            from featbank.extract.decode_decord import DecordSource

            self._src = DecordSource(path, threads=threads)
        except (DecodeError, ImportError) as e:
            self.decord_error = e
            self._src = _pyav_source(path, threads)  # its DecodeError is the one reported

    @property
    def info(self) -> VideoInfo:  # type: ignore[override]
        return self._src.info

    def _read_sorted(self, uniq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        try:
            return self._src._read_sorted(uniq)
        except DecodeError as e:
            if self._src.info.backend != "decord":
                raise
            self.decord_error = e
            self._src.close()
            self._src = _pyav_source(self.path, self._threads)
            if self._src.info.n_frames <= int(uniq[-1]):
                raise DecodeError(
                    self.path, "truncated", f"decord failed ({e.reason}); PyAV finds only {self._src.info.n_frames} frames"
                ) from None
            return self._src._read_sorted(uniq)

    def close(self) -> None:
        self._src.close()


def open_video(
    path: str | os.PathLike[str],
    *,
    backend: str = "auto",
    modality: str = "rgb",
    threads: int = 0,
    folder_fps: float = DEFAULT_FOLDER_FPS,
) -> VideoSource:
    """Open a video file, frame folder or still image for reading.

    Args:
        path: Video file; frame folder (``img_%05d.jpg``, ``image_%05d.jpg``, ``%08d.jpg``, or x_/y_
            flow pairs with ``modality="flow"``); or a still image (jpg/png: one frame, fps 1.0).
        backend: ``"auto"`` (folder/image by input type; for files decord, PyAV when decord fails
            to open or read), ``"decord"``, ``"pyav"``, ``"folder"`` or ``"image"``.
        modality: ``"rgb"`` (C=3) or ``"flow"`` (C=2, frame folders only).
        threads: Decoder threads for video files (0 = the library's automatic choice).
        folder_fps: Frame rate of a frame folder (folders carry none); ignored for files.

    Returns:
        An open ``VideoSource`` (use as a context manager).

    Raises:
        DecodeError: ``missing``, ``unreadable``, ``empty``, ``not_video``, ``corrupt``, ``truncated``
            or ``zero_frames``, naming the path.
        ValueError: Unknown backend/modality, or flow requested from a video file or image.
    """
    p = os.fspath(path)
    if backend not in BACKENDS:
        raise ValueError(f"unknown decode backend {backend!r}; expected one of {BACKENDS}")
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    check_input(p, allow_dir=backend in ("auto", "folder"))
    if os.path.isdir(p):
        return FolderSource(p, modality=modality, fps=folder_fps)
    if backend == "folder":
        raise DecodeError(p, "not_video", "backend 'folder' expects a frame folder, got a file")
    if modality != "rgb":
        raise ValueError(f"{p}: modality {modality!r} needs a frame folder with x_/y_ flow images")
    if backend == "image" or (backend == "auto" and is_image_file(p)):
        return ImageSource(p)
    if backend == "pyav":
        return _pyav_source(p, threads)
    if backend == "decord":
        from featbank.extract.decode_decord import DecordSource

        return DecordSource(p, threads=threads)
    return AutoSource(p, threads=threads)


def resample_indices(n_frames: int, src_fps: float, target_fps: float | None) -> np.ndarray:
    """Source-frame indices that resample a video to ``target_fps`` by index stepping.

    The reference I3D protocol: ``idx = floor(arange(0, n, src_fps / target_fps))``; frames are dropped when
    slowing down and repeated when ``target_fps > src_fps``.

    Args:
        n_frames: Source frames.
        src_fps: Source frame rate (> 0).
        target_fps: Wanted rate, or None to keep every frame.

    Returns:
        ``(T,)`` int64 indices in ``[0, n_frames)``.
    """
    if n_frames < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}")
    if target_fps is None:
        return np.arange(n_frames, dtype=np.int64)
    if not (src_fps > 0 and target_fps > 0):
        raise ValueError(f"frame rates must be positive, got src_fps={src_fps}, target_fps={target_fps}")
    step = float(src_fps) / float(target_fps)
    idx = np.floor(np.arange(0, n_frames, step)).astype(np.int64)
    return np.minimum(idx, n_frames - 1)


def decode_video(
    path: str | os.PathLike[str],
    *,
    backend: str = "auto",
    fps: float | None = None,
    modality: str = "rgb",
    threads: int = 0,
    folder_fps: float = DEFAULT_FOLDER_FPS,
) -> Frames:
    """Decode a whole video, resampled to ``fps`` by index stepping (all frames in memory).

    Args:
        path: As for ``open_video``.
        backend: As for ``open_video``.
        fps: Target frame rate (None keeps the source rate).
        modality: ``"rgb"`` or ``"flow"``.
        threads: Decoder threads.
        folder_fps: Frame rate of a frame folder.

    Returns:
        Frames ``(T, H, W, C)`` with ``T = len(resample_indices(n, src_fps, fps))``.
    """
    with open_video(path, backend=backend, modality=modality, threads=threads, folder_fps=folder_fps) as src:
        idx = resample_indices(src.info.n_frames, src.info.fps, fps)
        return src.read(idx)


def _pyav_source(path: str, threads: int) -> VideoSource:
    """A PyAV source (PyAV is imported on first use: a decord-only worker never loads it)."""
    from featbank.extract.decode_pyav import PyAVSource

    return PyAVSource(path, threads=threads)


def decoder_versions() -> dict[str, str]:
    """Versions of the decoding libraries, for provenance (``{"pyav": ..., "decord": ...}``)."""
    from featbank.extract.decode_pyav import pyav_version

    out = {"pyav": pyav_version()}
    try:
        from featbank.extract.decode_decord import decord_version

        out["decord"] = decord_version()
    except ImportError:
        out["decord"] = "not installed"
    return out


def __getattr__(name: str):
    # SafeDecoder lives in its own module (it starts processes); exported lazily to keep imports light.
    if name == "SafeDecoder":
        from featbank.extract.safe_decode import SafeDecoder

        return SafeDecoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
