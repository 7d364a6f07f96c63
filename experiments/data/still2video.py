"""Still image -> short video with a small random camera motion (CFB's source-video generation).

CFB turns every labelled still into a 16-frame clip seen by a slowly moving camera, so the
image domain gets video statistics and a (camera-only) optical flow. Its repository does this
with a vendored depth network (MiDaS) and a C warping library; here it is plain OpenCV:

* motion: per step a rotation about the image centre of ``rot_deg`` degrees (magnitude drawn
  in ``[lo, hi]``) and a translation of ``trans_frac`` of the frame side per axis; the signs are
  drawn once per video (a camera drifting one way), the magnitudes per step, and the steps are
  chained (pose ``t`` = step ``t`` o pose ``t-1``), as CFB chains its per-frame motions;
* warping: every frame is warped from the original still with the chained pose (no
  resampling blur piles up): a planar homography by default; with a depth map (``depth_dir``
  holds ``STEM.png``/``STEM.npy``, larger = farther) the translation is scaled per pixel by
  ``median depth / depth`` (parallax: near things move more) and pixels are forward-splatted
  far-to-near;
* holes (borders uncovered by the motion, disocclusions) are filled with OpenCV's Telea
  inpainting;
* deterministic: the motion of a still is a function of ``seed`` and its relative path only.

Output per still: a frame folder ``OUT/REL/img_00001.jpg...`` or ``OUT/REL.mp4``, its motion
in ``motion.jsonl`` (one line per still: per-step angles and translations), and ``videos.txt``
(``path label`` lines, labels carried over from a ``path label`` source manifest).
"""

from __future__ import annotations

import json
import math
import os
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class Still2VideoConfig:
    """Generation parameters.

    Attributes:
        frames: frames per generated video (the still is frame 0).
        rot_deg: ``(lo, hi)`` magnitude of the per-step rotation in degrees.
        trans_frac: ``(lo, hi)`` magnitude of the per-step translation, fraction of the frame side, per axis.
        seed: base seed (each still also hashes its relative path in).
        fps: frame rate of mp4 output.
        output: ``frames`` (``img_%05d.jpg`` folders) or ``mp4``.
        size: resize stills so the short side is ``size`` first (0: keep).
        inpaint_radius: Telea inpainting radius in pixels.
        depth_dir: folder of depth maps (``STEM.png`` / ``STEM.npy``); empty: planar homography.
    """

    frames: int = 16
    rot_deg: tuple[float, float] = (1.0, 2.0)
    trans_frac: tuple[float, float] = (0.01, 0.02)
    seed: int = 0
    fps: int = 8
    output: Literal["frames", "mp4"] = "frames"
    size: int = 0
    inpaint_radius: int = 3
    depth_dir: str = ""

    def __post_init__(self) -> None:
        if self.frames < 2:
            raise ValueError(f"frames must be >= 2, got {self.frames}")
        for name in ("rot_deg", "trans_frac"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name} must be (lo, hi) with 0 <= lo <= hi, got {(lo, hi)}")
        if self.output not in ("frames", "mp4"):
            raise ValueError(f"output must be 'frames' or 'mp4', got {self.output!r}")
        if self.fps < 1 or self.size < 0 or self.inpaint_radius < 1:
            raise ValueError("fps must be >= 1, size >= 0 and inpaint_radius >= 1")


@dataclass(frozen=True)
class CameraPath:
    """The chained motion of one video: per step angle (degrees) and translation (pixels)."""

    angles: np.ndarray  # (frames - 1,) degrees, signed
    shifts: np.ndarray  # (frames - 1, 2) pixels (x, y), signed

    def poses(self, size_hw: tuple[int, int]) -> np.ndarray:
        """``(frames, 3, 3)`` homographies of every frame w.r.t. the still (frame 0 = identity)."""
        h, w = size_hw
        c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
        out = [np.eye(3)]
        for a, t in zip(self.angles, self.shifts):
            out.append(step_matrix(float(a), t, c) @ out[-1])  # chained: step t o pose t-1
        return np.stack(out)

    def to_json(self) -> dict[str, Any]:
        return {"angles_deg": [round(float(a), 6) for a in self.angles],
                "shifts_px": [[round(float(v), 6) for v in s] for s in self.shifts]}


def step_matrix(angle_deg: float, shift: np.ndarray, center: np.ndarray) -> np.ndarray:
    """3x3 map of one step: rotate ``angle_deg`` about ``center``, then translate by ``shift``."""
    a = math.radians(angle_deg)
    r = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    m = np.eye(3)
    m[:2, :2] = r
    m[:2, 2] = center - r @ center + np.asarray(shift, np.float64)
    return m


def sample_path(cfg: Still2VideoConfig, size_hw: tuple[int, int], rng: np.random.Generator) -> CameraPath:
    """Signs once per video, magnitudes per step (uniform in the configured ranges)."""
    h, w = size_hw
    n = cfg.frames - 1
    sign_r = rng.choice([-1.0, 1.0])
    sign_t = rng.choice([-1.0, 1.0], size=2)
    angles = sign_r * rng.uniform(cfg.rot_deg[0], cfg.rot_deg[1], n)
    frac = rng.uniform(cfg.trans_frac[0], cfg.trans_frac[1], (n, 2))
    shifts = sign_t[None, :] * frac * np.array([w, h], np.float64)[None, :]
    return CameraPath(angles, shifts)


def _inpaint(img: np.ndarray, holes: np.ndarray, radius: int) -> np.ndarray:
    import cv2

    if not holes.any():
        return img
    bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    filled = cv2.inpaint(bgr, holes.astype(np.uint8) * 255, radius, cv2.INPAINT_TELEA)
    return cv2.cvtColor(filled, cv2.COLOR_BGR2RGB)


def warp_planar(img: np.ndarray, pose: np.ndarray, radius: int = 3) -> np.ndarray:
    """Warp ``(H, W, 3)`` uint8 by the homography ``pose``; holes inpainted (Telea)."""
    import cv2

    h, w = img.shape[:2]
    out = cv2.warpPerspective(img, pose, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    valid = cv2.warpPerspective(np.full((h, w), 255, np.uint8), pose, (w, h), flags=cv2.INTER_NEAREST,
                                borderMode=cv2.BORDER_CONSTANT)
    return _inpaint(out, valid < 255, radius)


def warp_depth(img: np.ndarray, depth: np.ndarray, pose: np.ndarray, radius: int = 3) -> np.ndarray:
    """Depth-aware forward warp: rotation as in ``pose``, translation scaled by ``median(depth) / depth``.

    Pixels are splatted far to near (a nearer pixel overwrites a farther one landing on the
    same target); uncovered targets are inpainted.
    """
    h, w = img.shape[:2]
    depth = np.asarray(depth, np.float64)
    if depth.shape != (h, w):
        import cv2

        depth = cv2.resize(depth, (w, h), interpolation=cv2.INTER_LINEAR)
    depth = np.maximum(depth, 1e-6)
    parallax = np.median(depth) / depth  # (H, W): 1 at the median depth, > 1 nearer
    c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    rot = pose[:2, :2]
    trans = pose[:2, 2] - (c - rot @ c)  # the chained translation part of the pose
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    p = np.stack([xx.ravel(), yy.ravel()], 1) - c  # (HW, 2)
    q = p @ rot.T + c + trans[None, :] * parallax.ravel()[:, None]
    tx, ty = np.round(q[:, 0]).astype(np.int64), np.round(q[:, 1]).astype(np.int64)
    inside = (tx >= 0) & (tx < w) & (ty >= 0) & (ty < h)
    order = np.argsort(-depth.ravel()[inside], kind="stable")  # far first: near pixels written last win
    src = np.flatnonzero(inside)[order]
    out = np.zeros_like(img)
    hit = np.zeros((h, w), bool)
    flat = img.reshape(-1, img.shape[-1])
    out[ty[src], tx[src]] = flat[src]
    hit[ty[src], tx[src]] = True
    return _inpaint(out, ~hit, radius)


def still_to_video(img: np.ndarray, cfg: Still2VideoConfig, rng: np.random.Generator,
                   depth: np.ndarray | None = None) -> tuple[np.ndarray, CameraPath]:
    """``(H, W, 3)`` uint8 still -> ``(frames, H, W, 3)`` uint8 video and its camera path."""
    h, w = img.shape[:2]
    path = sample_path(cfg, (h, w), rng)
    poses = path.poses((h, w))
    out = np.empty((cfg.frames, h, w, 3), np.uint8)
    out[0] = img
    for t in range(1, cfg.frames):
        out[t] = (warp_depth(img, depth, poses[t], cfg.inpaint_radius) if depth is not None
                  else warp_planar(img, poses[t], cfg.inpaint_radius))
    return out, path


def _load_image(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if size:
            w, h = im.size
            s = size / min(w, h)
            im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)
        return np.asarray(im, np.uint8)


def _load_depth(depth_dir: str, stem: str) -> np.ndarray:
    from featbank.experiments.config import ConfigError

    base = Path(depth_dir)
    for ext in (".npy", ".png", ".tif", ".tiff", ".exr", ".jpg"):
        p = base / f"{stem}{ext}"
        if p.is_file():
            if ext == ".npy":
                return np.load(p).astype(np.float64)
            from PIL import Image

            with Image.open(p) as im:
                return np.asarray(im, np.float64) if im.mode in ("I", "I;16", "F") else np.asarray(im.convert("L"), np.float64)
    raise ConfigError(f"no depth map for {stem!r} in {base} (expected {stem}.npy or {stem}.png)")


def list_stills(src: str | os.PathLike) -> tuple[Path, list[tuple[str, Path, int]]]:
    """``(root, [(relative path, path, label)])`` of an image, a folder (recursive) or a ``path label`` manifest."""
    from featbank.experiments.config import ConfigError

    src = Path(src)
    if src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
        if not files:
            raise ConfigError(f"{src}: no images ({', '.join(IMAGE_EXTS)}) found")
        return src, [(p.relative_to(src).as_posix(), p, -1) for p in files]
    if src.is_file() and src.suffix.lower() in IMAGE_EXTS:
        return src.parent, [(src.name, src, -1)]
    if src.is_file():
        from featbank.experiments.data.synth_i2v import read_path_label

        try:
            rows = read_path_label(src)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        return src.parent, [(rel, src.parent / rel, lab) for rel, lab in rows]
    raise ConfigError(f"still2video source {src} does not exist (an image, a folder of images or a `path label` manifest)")


def item_rng(seed: int, rel: str) -> np.random.Generator:
    """The generator of one still: a function of the seed and its relative path only."""
    return np.random.default_rng([int(seed), zlib.crc32(rel.encode())])


def generate(src: str | os.PathLike, out: str | os.PathLike, cfg: Still2VideoConfig = Still2VideoConfig(), *,
             progress: bool = False) -> dict[str, Path]:
    """Turn every still of ``src`` into a video under ``out`` (see the module docstring).

    Returns:
        Paths of the ``videos`` manifest (``path label``, relative to ``out``) and ``motion`` log.
    """
    from PIL import Image
    from tqdm.auto import tqdm

    from featbank.experiments.data.synth_i2v import write_mp4

    _, items = list_stills(src)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    lines, motion = [], []
    for rel, path, label in tqdm(items, desc="still2video", unit="still", disable=not progress):
        img = _load_image(path, cfg.size)
        stem = Path(rel).with_suffix("").as_posix()
        depth = _load_depth(cfg.depth_dir, Path(rel).stem) if cfg.depth_dir else None
        video, cam = still_to_video(img, cfg, item_rng(cfg.seed, rel), depth)
        if cfg.output == "mp4":
            dest = Path(stem + ".mp4")
            write_mp4(root / dest, video, cfg.fps)
        else:
            dest = Path(stem)
            (root / dest).mkdir(parents=True, exist_ok=True)
            for t, f in enumerate(video):
                Image.fromarray(f).save(root / dest / f"img_{t + 1:05d}.jpg", quality=95)
        lines.append(f"{dest.as_posix()} {label}")
        motion.append({"still": rel, "video": dest.as_posix(), **cam.to_json()})
    paths = {"videos": root / "videos.txt", "motion": root / "motion.jsonl", "info": root / "still2video.json"}
    paths["videos"].write_text("\n".join(lines) + "\n")
    paths["motion"].write_text("".join(json.dumps(m) + "\n" for m in motion))
    paths["info"].write_text(json.dumps({"config": asdict(cfg), "source": str(src), "videos": len(items)}, indent=1) + "\n")
    return paths


def max_step_motion(cfg: Still2VideoConfig, size_hw: tuple[int, int]) -> float:
    """Upper bound (pixels) of how far any pixel moves in one planar step: rotation arc + translation."""
    h, w = size_hw
    radius = math.hypot((w - 1) / 2.0, (h - 1) / 2.0)
    return radius * math.radians(cfg.rot_deg[1]) + math.hypot(cfg.trans_frac[1] * w, cfg.trans_frac[1] * h)


__all__: Sequence[str] = ("Still2VideoConfig", "CameraPath", "generate", "still_to_video", "sample_path",
                          "warp_planar", "warp_depth", "list_stills", "item_rng", "max_step_motion")
