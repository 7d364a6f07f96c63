"""Background debiasing of GLAD: per-video median frames and ``BackgroundBlend``.

* :func:`median_frame`: the temporal median of a video's frames (numpy median over time,
  rounded to uint8) - a picture of the static background, the moving actor averaged out.
* :func:`write_median_frames`: one ``<video_id>.jpg`` per manifest entry (``featbank data
  median-frames``).
* :class:`BackgroundBlend`: the released pixel augmentation
  ``x' = alpha * x + (1 - alpha) * bg`` (alpha 0.75) on every frame of a clip, where ``bg`` is
  the median frame of a *random other* source video, resized (short side) and centre-cropped
  to the frame size; applied with probability ``p`` (0.25 released); the label is untouched
  (``blend_label=False``). The extraction job applies it to decoded frames (``blend_dir`` in the
  job config) to store augmented copies of the source views; the choice of background and
  whether to blend are seeded per (seed, video).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np


def median_frame(frames: np.ndarray) -> np.ndarray:
    """``(T, H, W, C)`` uint8 -> ``(H, W, C)`` uint8 temporal median (ties of even T averaged, rounded)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or len(frames) == 0:
        raise ValueError(f"median_frame expects (T, H, W, C) frames with T >= 1, got shape {frames.shape}")
    return np.rint(np.median(frames, axis=0)).clip(0, 255).astype(np.uint8)


def write_median_frames(manifest: str | os.PathLike, out: str | os.PathLike, *, root: str | None = None,
                        fmt: str = "auto", decoder: str = "auto", quality: int = 95,
                        progress: bool = False) -> dict[str, Any]:
    """Write ``out/<video_id>.jpg``, the median frame of every manifest entry.

    Returns:
        ``{"written": n, "skipped": n (already there), "failures": [(video_id, message)]}``.
    """
    from PIL import Image
    from tqdm import tqdm

    from .decode import open_video
    from .manifest import read_manifest

    out = Path(out)
    entries = read_manifest(manifest, root=root, fmt=fmt)
    res: dict[str, Any] = {"written": 0, "skipped": 0, "failures": []}
    for e in tqdm(entries, desc="median", unit="video", disable=not progress):
        dst = out / f"{e.video_id}.jpg"
        if dst.is_file():
            res["skipped"] += 1
            continue
        try:
            with open_video(e.path, backend=decoder) as src:
                n = src.info.n_frames
                lo = max(0, e.offset)
                hi = n if e.n_frames <= 0 or e.offset <= 0 else min(n, lo + e.n_frames)
                frames = src.read(np.arange(lo, hi)).frames
            dst.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(median_frame(np.asarray(frames))).save(dst, quality=quality)
            res["written"] += 1
        except Exception as exc:  # one bad video is reported, the rest go on
            res["failures"].append((e.video_id, f"{type(exc).__name__}: {exc}"))
    return res


def fit_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize ``(h, w, C)`` uint8 so it covers ``height x width`` (bilinear), then centre-crop to it."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = max(height / h, width / w)
    nh, nw = max(height, int(round(h * scale))), max(width, int(round(w * scale)))
    img = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR)) if (nh, nw) != (h, w) else image
    top, left = (nh - height) // 2, (nw - width) // 2
    return img[top:top + height, left:left + width]


def blend(frames: np.ndarray, background: np.ndarray, alpha: float = 0.75) -> np.ndarray:
    """``alpha * frames + (1 - alpha) * background`` on every frame, rounded back to uint8.

    Args:
        frames: ``(T, H, W, C)`` uint8.
        background: ``(H, W, C)`` uint8, already the frame size.
    """
    out = alpha * frames.astype(np.float32) + (1.0 - alpha) * background.astype(np.float32)[None]
    return np.rint(out).clip(0, 255).astype(np.uint8)


class BackgroundBlend:
    """Blend a random other source video's median frame into a clip (label unchanged).

    Args:
        medians: folder of ``<video_id>.jpg`` median frames (searched recursively), or a mapping
            ``video_id -> (H, W, C) uint8`` array.
        p: probability that a video is blended (0.25 released; 1.0 stores a fully blended copy).
        alpha: weight of the original frames (0.75 released).
        seed: seed of the per-video draws (copy ``k`` of an augmented set uses seed ``k``).
    """

    def __init__(self, medians: str | os.PathLike | Mapping[str, np.ndarray], p: float = 0.25,
                 alpha: float = 0.75, seed: int = 0) -> None:
        if not 0.0 <= p <= 1.0 or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"BackgroundBlend: p and alpha must be in [0, 1], got p={p}, alpha={alpha}")
        self.p, self.alpha, self.seed = float(p), float(alpha), int(seed)
        if isinstance(medians, Mapping):
            self._arrays: dict[str, np.ndarray] | None = dict(medians)
            self._files: dict[str, Path] = {}
        else:
            root = Path(medians)
            if not root.is_dir():
                raise FileNotFoundError(f"BackgroundBlend: median-frame folder {root} does not exist "
                                        "(write it with `featbank data median-frames MANIFEST OUT`)")
            self._arrays = None
            self._files = {p.relative_to(root).with_suffix("").as_posix(): p for p in sorted(root.rglob("*.jpg"))}
        self.ids = sorted(self._arrays if self._arrays is not None else self._files)
        if len(self.ids) < 2:
            raise ValueError(f"BackgroundBlend: need median frames of at least 2 videos, found {len(self.ids)}")

    def _rng(self, video_id: str) -> np.random.Generator:
        h = hashlib.sha256(f"{self.seed}/{video_id}".encode()).digest()
        return np.random.default_rng(int.from_bytes(h[:8], "little"))

    def background(self, video_id: str) -> np.ndarray:
        """The median frame stored for ``video_id``."""
        if self._arrays is not None:
            return np.asarray(self._arrays[video_id], np.uint8)
        from PIL import Image

        return np.asarray(Image.open(self._files[video_id]).convert("RGB"))

    def choose(self, video_id: str) -> str | None:
        """The other video whose background is blended into ``video_id`` (``None``: not blended)."""
        rng = self._rng(video_id)
        if rng.random() >= self.p:
            return None
        others = [v for v in self.ids if v != video_id]
        return others[int(rng.integers(len(others)))]

    def __call__(self, frames: np.ndarray, video_id: str) -> np.ndarray:
        """``(T, H, W, C)`` uint8 -> the blended (or unchanged) frames, same shape and dtype."""
        other = self.choose(video_id)
        if other is None:
            return frames
        bg = fit_to(self.background(other), frames.shape[1], frames.shape[2])
        return blend(frames, bg, self.alpha)

    def record(self) -> dict[str, Any]:
        """Provenance of this transform (written into the feature set by the job)."""
        return {"name": "BackgroundBlend", "p": self.p, "alpha": self.alpha, "seed": self.seed,
                "n_backgrounds": len(self.ids), "formula": "x' = alpha * x + (1 - alpha) * median(other source video)"}
