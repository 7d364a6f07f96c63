"""Frame folders and still images.

Frame folders use the layouts of the seed projects' tools: ``img_%05d.jpg`` (mmaction),
``image_%05d.jpg`` (TSN), ``%08d.jpg`` / ``%05d.jpg`` (plain numbers); optical flow as pairs
``x_%05d.jpg`` + ``y_%05d.jpg`` (or ``flow_x_`` / ``flow_y_``), read as C=2 uint8 frames (x, y).
Files are ordered by their number; source index ``i`` is the ``i``-th file in that order
(``img_00001.jpg`` is index 0). A folder has no frame rate of its own: ``fps`` is what the caller
states (30.0 by default). A still image is one frame at ``fps = 1.0`` (duration 1 s, time 0).
"""

from __future__ import annotations

import os
import re

import numpy as np
from PIL import Image, UnidentifiedImageError

from featbank.extract.decode_base import VideoSource, index_times, make_info
from featbank.extract.errors import DecodeError

DEFAULT_FOLDER_FPS = 30.0
IMAGE_FPS = 1.0

_FRAME_RE = re.compile(r"^(img_|image_|flow_x_|flow_y_|x_|y_|frame_|)(\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)
RGB_PREFIXES = ("img_", "image_", "frame_", "")  # priority when a folder holds several
FLOW_PREFIXES = (("x_", "y_"), ("flow_x_", "flow_y_"))


def list_frame_files(folder: str) -> dict[str, list[str]]:
    """Frame files of a folder grouped by prefix, each list sorted by frame number."""
    try:
        names = os.listdir(folder)
    except PermissionError as e:
        raise DecodeError(folder, "unreadable", f"permission denied listing the folder ({e.strerror})") from None
    groups: dict[str, list[tuple[int, str]]] = {}
    for name in names:
        m = _FRAME_RE.match(name)
        if m:
            groups.setdefault(m.group(1).lower(), []).append((int(m.group(2)), name))
    return {k: [os.path.join(folder, n) for _, n in sorted(v)] for k, v in groups.items()}


def _load(path: str, mode: str, owner: str) -> np.ndarray:
    """One image file as a uint8 array ((H, W, 3) for mode RGB, (H, W) for mode L)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert(mode), dtype=np.uint8)
    except FileNotFoundError:
        raise DecodeError(owner, "missing", f"frame file {os.path.basename(path)} disappeared") from None
    except PermissionError:
        raise DecodeError(owner, "unreadable", f"frame file {os.path.basename(path)}: permission denied") from None
    except UnidentifiedImageError:
        kind = "empty" if os.path.getsize(path) == 0 else "corrupt"
        raise DecodeError(owner, kind, f"frame file {os.path.basename(path)} is not a decodable image") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL: "image file is truncated", broken PNG chunks
        kind = "truncated" if "truncated" in str(e) else "corrupt"
        raise DecodeError(owner, kind, f"frame file {os.path.basename(path)}: {e}") from None


def _size_of(path: str, owner: str) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            w, h = im.size
    except UnidentifiedImageError:
        kind = "empty" if os.path.getsize(path) == 0 else "corrupt"
        raise DecodeError(owner, kind, f"{os.path.basename(path)} is not a decodable image") from None
    except OSError as e:
        raise DecodeError(owner, "unreadable", f"{os.path.basename(path)}: {e}") from None
    return h, w


class FolderSource(VideoSource):
    """A folder of numbered frame images (RGB) or x/y flow image pairs.

    Args:
        folder: The frame folder.
        modality: ``"rgb"`` or ``"flow"``.
        fps: Frame rate the frames were extracted at.
    """

    def __init__(self, folder: str, *, modality: str = "rgb", fps: float = DEFAULT_FOLDER_FPS) -> None:
        self.path = folder
        groups = list_frame_files(folder)
        if modality == "rgb":
            prefix = next((p for p in RGB_PREFIXES if p in groups), None)
            if prefix is None:
                raise DecodeError(folder, "empty", "no RGB frame files (img_%05d.jpg, image_%05d.jpg, %08d.jpg) found")
            self._files = [(f,) for f in groups[prefix]]
        elif modality == "flow":
            pair = next((p for p in FLOW_PREFIXES if p[0] in groups or p[1] in groups), None)
            if pair is None:
                raise DecodeError(folder, "empty", "no flow frame files (x_%05d.jpg + y_%05d.jpg) found")
            xs, ys = groups.get(pair[0], []), groups.get(pair[1], [])
            num = lambda fs, p: [os.path.basename(f)[len(p) :].split(".")[0] for f in fs]  # noqa: E731
            if num(xs, pair[0]) != num(ys, pair[1]):
                raise DecodeError(
                    folder, "corrupt", f"flow pairs do not match: {len(xs)} {pair[0]}* files vs {len(ys)} {pair[1]}* files"
                )
            self._files = list(zip(xs, ys))
        else:
            raise ValueError(f"unknown modality {modality!r}; expected 'rgb' or 'flow'")
        self._modality = modality
        h, w = _size_of(self._files[0][0], folder)
        channels = 3 if modality == "rgb" else 2
        self.info = make_info(folder, "folder", fps, len(self._files), h, w, channels)

    def _read_sorted(self, uniq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        info = self.info
        out = np.empty((uniq.shape[0], info.height, info.width, info.channels), dtype=np.uint8)  # (K, H, W, C)
        for j, i in enumerate(uniq.tolist()):
            if self._modality == "rgb":
                img = _load(self._files[i][0], "RGB", self.path)  # (H, W, 3)
            else:
                img = np.stack([_load(f, "L", self.path) for f in self._files[i]], axis=-1)  # 2 x (H, W) -> (H, W, 2)
            if img.shape[:2] != (info.height, info.width):
                raise DecodeError(
                    self.path, "corrupt",
                    f"frame file {os.path.basename(self._files[i][0])} is {img.shape[1]}x{img.shape[0]}, "
                    f"the first frame is {info.width}x{info.height}",
                )
            out[j] = img
        return out, index_times(uniq, info.fps)

    def close(self) -> None:
        self._files = []


class ImageSource(VideoSource):
    """A still image as a one-frame input (fps 1.0, time 0)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._frame = _load(path, "RGB", path)[None]  # (H, W, 3) -> (1, H, W, 3)
        h, w = self._frame.shape[1:3]
        self.info = make_info(path, "image", IMAGE_FPS, 1, h, w)

    def _read_sorted(self, uniq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._frame[uniq], np.zeros(uniq.shape[0], dtype=np.float64)

    def close(self) -> None:
        pass
