"""A small real-file video -> video domain-adaptation benchmark with background bias.

Classes are defined by **motion**: one object (its shape and colour drawn independently of
the class) moves the way its class says:

====  ================  ==========================================================
 #    class             motion over the video
====  ================  ==========================================================
 0    slide_horizontal  translates left->right or right->left across the frame
 1    slide_vertical    translates top->bottom or bottom->top
 2    orbit             one revolution on a circle (clockwise or counter-clockwise)
 3    spin              stays in place, rotates two full turns
 4    bounce            stays at one x, hops up and down three times
 5    pulse             stays in place, grows and shrinks twice
====  ================  ==========================================================

The two domains differ the way Kinetics differs from BABEL renders (GLAD, WACV 2024):

* **source** (labelled, "web videos"): natural colours, a static camera, and a
  *class-correlated background*: a video of class ``c`` is drawn on background family ``c``
  with probability ``bias`` (0.8), otherwise on a uniformly chosen other family, as
  Kinetics classes correlate with their scenes. A classifier can score well on source by
  reading the background alone.
* **target** ("renders"): the same six motions, on backgrounds drawn *independently of the
  class*; another colour model (desaturated, colour-cast palette, lower contrast, sensor
  noise) and another camera model (zoomed in, slowly panning with hand-held jitter). The
  target classes are **imbalanced** (a geometric long tail), so mean-class accuracy is the
  headline metric, as in GLAD.

Splits (each a `path label` manifest, paths relative to OUT)::

    classes.txt          class names (line order = class index)
    source_train.txt     labelled source videos
    source_val.txt       held-out labelled source videos: the only split any setting may be
                         tuned on
    target_train.txt     target adaptation videos; labels for the supervised-target oracle
                         and reports only (adaptation never reads them)
    target_test.txt      labelled target evaluation split
    meta.csv             split,path,label,background family of every video (diagnostics)
    info.json            the generation parameters
    <split>/<class>/vid_0000.mp4

Everything is a function of the seed (one independent random stream per split, class and
video): the same seed gives the same decoded frames.
"""

from __future__ import annotations

import colorsys
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from featbank.experiments.data.synth_i2v import draw_shape, write_mp4

MOTIONS = ("slide_horizontal", "slide_vertical", "orbit", "spin", "bounce", "pulse")
BACKGROUNDS = ("stripes", "checker", "dots", "gradient", "grid", "blobs")
OBJECT_SHAPES = ("circle", "square", "triangle", "star", "cross", "hexagon")
SPLITS = ("source_train", "source_val", "target_train", "target_test")


@dataclass(frozen=True)
class SynthV2VConfig:
    """Size and look of the benchmark (the design is fixed; only sizes are options).

    Attributes:
        seed: everything is a function of this seed.
        source_train_per_class: labelled source videos per class.
        source_val_per_class: held-out labelled source videos per class.
        target_train_max: target adaptation videos of the most frequent class.
        target_test_max: target test videos of the most frequent class.
        imbalance: ratio of the least to the most frequent target class (geometric tail).
        bias: probability that a source video shows its class's background family.
        frames: frames per video.
        fps: frame rate.
        size: side of the square videos in pixels.
    """

    seed: int = 0
    source_train_per_class: int = 10
    source_val_per_class: int = 4
    target_train_max: int = 12
    target_test_max: int = 10
    imbalance: float = 0.3
    bias: float = 0.8
    frames: int = 32
    fps: int = 16
    size: int = 112

    def __post_init__(self) -> None:
        for k in ("source_train_per_class", "source_val_per_class", "target_train_max", "target_test_max",
                  "frames", "fps"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        if not 0 < self.imbalance <= 1:
            raise ValueError(f"imbalance must be in (0, 1], got {self.imbalance}")
        if not 0 <= self.bias <= 1:
            raise ValueError(f"bias must be in [0, 1], got {self.bias}")
        if self.size < 64 or self.size % 2:
            raise ValueError(f"size must be an even number >= 64, got {self.size}")
        if self.frames < 16:
            raise ValueError(f"frames must be >= 16 (one GLAD clip spans 8 frames at interval 2), got {self.frames}")

    def counts(self, split: str) -> list[int]:
        """Videos per class of ``split`` (the target splits follow a geometric long tail)."""
        n = len(MOTIONS)
        if split == "source_train":
            return [self.source_train_per_class] * n
        if split == "source_val":
            return [self.source_val_per_class] * n
        top = self.target_train_max if split == "target_train" else self.target_test_max
        return [max(2, int(round(top * self.imbalance ** (c / (n - 1))))) for c in range(n)]


@dataclass(frozen=True)
class Domain:
    """Colour and camera model of a domain."""

    name: str
    saturation: float = 1.0      # scale of the object / background saturation
    cast: tuple[float, float, float] = (1.0, 1.0, 1.0)
    contrast: float = 1.0
    noise: float = 0.0
    zoom: float = 1.0            # camera magnification (target: closer camera)
    pan: float = 0.0             # camera pan over the video, fraction of the frame
    jitter: float = 0.0          # hand-held camera jitter, pixels
    class_background: bool = True
    extra: dict = field(default_factory=dict)


SOURCE = Domain("source")
TARGET = Domain("target", saturation=0.45, cast=(0.85, 0.95, 1.2), contrast=0.75, noise=4.0, zoom=1.25,
                pan=0.12, jitter=1.5, class_background=False)


def _rgb(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)), np.float32) * 255


def draw_background(family: int, side: int, rng: np.random.Generator, dom: Domain) -> np.ndarray:
    """A static background of ``family`` (``side`` x ``side`` x 3 float32), in the domain's colours.

    Each family has its own pattern and hue (family ``f`` hue = ``f / 6``), with jitter.
    """
    name = BACKGROUNDS[family]
    hue = family / len(BACKGROUNDS) + rng.uniform(-0.03, 0.03)
    c1 = _rgb(hue, 0.55 * dom.saturation, rng.uniform(0.55, 0.75))
    c2 = _rgb(hue + 0.08, 0.35 * dom.saturation, rng.uniform(0.25, 0.4))
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    period = side / rng.uniform(5, 8)
    ph = rng.uniform(0, period)
    if name == "stripes":
        m = ((xx * 0.7 + yy * 0.3 + ph) // (period / 2)) % 2
    elif name == "checker":
        m = (((xx + ph) // (period / 2)) + ((yy + ph) // (period / 2))) % 2
    elif name == "dots":
        m = (((xx + ph) % period - period / 2) ** 2 + ((yy + ph) % period - period / 2) ** 2) < (period / 4) ** 2
    elif name == "gradient":
        a = rng.uniform(0, 2 * math.pi)
        m = ((xx * math.cos(a) + yy * math.sin(a)) / side + 1.0) / 2.0
    elif name == "grid":
        m = (((xx + ph) % period) < period / 6) | (((yy + ph) % period) < period / 6)
    else:  # blobs
        img = Image.new("L", (side, side), 0)
        d = ImageDraw.Draw(img)
        for _ in range(14):
            x, y = rng.uniform(0, side, 2)
            r = rng.uniform(side / 20, side / 8)
            d.ellipse([x - r, y - r, x + r, y + r], fill=255)
        m = np.asarray(img.filter(ImageFilter.GaussianBlur(2)), np.float32) / 255.0
    m = np.asarray(m, np.float32)[..., None]
    return (1 - m) * c1 + m * c2


def _object_sprite(shape: str, side: int, color: np.ndarray, color2: np.ndarray) -> tuple[Image.Image, Image.Image]:
    """(RGB sprite, L mask) of an object with a two-tone half (so rotation is visible)."""
    big = side * 2
    m = draw_shape(shape, big)
    tex = np.empty((big, big, 3), np.float32)
    tex[:, : big // 2] = color
    tex[:, big // 2:] = color2
    return Image.fromarray(tex.astype(np.uint8)), m


def motion_path(motion: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """Per-frame ``(x, y, angle_deg, scale)`` of the object centre (x, y in [0, 1] of the scene)."""
    u = np.linspace(0.0, 1.0, frames)
    sign = 1.0 if rng.random() < 0.5 else -1.0
    x = np.full(frames, rng.uniform(0.35, 0.65))
    y = np.full(frames, rng.uniform(0.35, 0.65))
    ang = np.full(frames, rng.uniform(0, 360))
    scale = np.ones(frames)
    name = MOTIONS[motion]
    if name == "slide_horizontal":
        x = 0.5 + sign * (u - 0.5) * 0.6
    elif name == "slide_vertical":
        y = 0.5 + sign * (u - 0.5) * 0.6
    elif name == "orbit":
        a0 = rng.uniform(0, 2 * math.pi)
        x = 0.5 + 0.25 * np.cos(a0 + sign * 2 * math.pi * u)
        y = 0.5 + 0.25 * np.sin(a0 + sign * 2 * math.pi * u)
    elif name == "spin":
        ang = ang + sign * 720.0 * u
    elif name == "bounce":
        y = 0.68 - 0.3 * np.abs(np.sin(3 * math.pi * u))
    elif name == "pulse":
        scale = 1.0 + 0.45 * np.sin(4 * math.pi * u + rng.uniform(-0.3, 0.3))
    else:
        raise ValueError(f"unknown motion {motion}")
    return np.stack([x, y, ang, scale], 1)


def draw_video(motion: int, family: int, dom: Domain, cfg: SynthV2VConfig, rng: np.random.Generator) -> np.ndarray:
    """One video of ``motion`` on background ``family`` in domain ``dom``: ``(T, S, S, 3)`` uint8."""
    size, frames = cfg.size, cfg.frames
    scene_side = int(round(size * (1 + dom.pan) * 1.05))
    bg = draw_background(family, scene_side, rng, dom)
    shape = OBJECT_SHAPES[int(rng.integers(len(OBJECT_SHAPES)))]
    hue = rng.uniform(0, 1)
    color = _rgb(hue, 0.85 * dom.saturation, 0.95)
    color2 = _rgb(hue + 0.5, 0.6 * dom.saturation, 0.5)
    base_side = int(scene_side * rng.uniform(0.2, 0.26))
    path = motion_path(motion, frames, rng)
    pan_dir = rng.uniform(-1, 1, 2)
    pan_dir = pan_dir / max(1e-6, np.linalg.norm(pan_dir))
    out = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        x, y, ang, sc = path[t]
        side = max(6, int(base_side * sc))
        spr, mask = _object_sprite(shape, side, color, color2)
        spr = spr.rotate(ang, resample=Image.BILINEAR).resize((side, side), Image.BILINEAR)
        mask = mask.rotate(ang, resample=Image.BILINEAR).resize((side, side), Image.LANCZOS)
        frame = Image.fromarray(bg.astype(np.uint8))
        frame.paste(spr, (int(x * scene_side - side / 2), int(y * scene_side - side / 2)), mask)
        # camera: a window of the scene, zoomed by dom.zoom, panning and jittering
        view = scene_side / (1 + dom.pan) / dom.zoom
        u = t / max(1, frames - 1)
        cx = scene_side / 2 + pan_dir[0] * dom.pan * scene_side * (u - 0.5) / 2 + rng.normal(0, dom.jitter)
        cy = scene_side / 2 + pan_dir[1] * dom.pan * scene_side * (u - 0.5) / 2 + rng.normal(0, dom.jitter)
        box = (cx - view / 2, cy - view / 2, cx + view / 2, cy + view / 2)
        img = np.asarray(frame.resize((size, size), Image.BILINEAR, box=box), np.float32)
        if dom.contrast != 1.0 or dom.cast != (1.0, 1.0, 1.0) or dom.noise > 0:
            mean = img.mean()
            img = ((img - mean) * dom.contrast + mean) * np.asarray(dom.cast, np.float32)
            img = img + rng.normal(0, dom.noise, img.shape)
        out[t] = img.clip(0, 255).astype(np.uint8)
    return out


def generate(out: str | Path, cfg: SynthV2VConfig = SynthV2VConfig(), *, progress: bool = False) -> dict[str, Path]:
    """Write the benchmark into ``out`` (see the module docstring).

    Args:
        out: output folder (created; files of the same names are overwritten).
        cfg: sizes and seed.
        progress: show a progress bar.

    Returns:
        Paths of ``classes``, the four split manifests, ``meta`` and ``info``.
    """
    from tqdm import tqdm

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    n_cls, n_bg = len(MOTIONS), len(BACKGROUNDS)
    streams = dict(zip(SPLITS, np.random.SeedSequence(cfg.seed).spawn(len(SPLITS))))
    total = sum(sum(cfg.counts(s)) for s in SPLITS)
    lines: dict[str, list[str]] = {s: [] for s in SPLITS}
    meta = ["split,path,label,background"]
    with tqdm(total=total, desc="synth-v2v", unit="video", disable=not progress) as bar:
        for split in SPLITS:
            dom = SOURCE if split.startswith("source") else TARGET
            class_seqs = streams[split].spawn(n_cls)
            for c, n in enumerate(cfg.counts(split)):
                for i, item_seq in enumerate(class_seqs[c].spawn(n)):
                    rng = np.random.default_rng(item_seq)
                    if dom.class_background:
                        fam = c if rng.random() < cfg.bias else int((c + 1 + rng.integers(n_bg - 1)) % n_bg)
                    else:
                        fam = int(rng.integers(n_bg))
                    rel = Path(split) / MOTIONS[c] / f"vid_{i:04d}.mp4"
                    write_mp4(root / rel, draw_video(c, fam, dom, cfg, rng), cfg.fps)
                    lines[split].append(f"{rel.as_posix()} {c}")
                    meta.append(f"{split},{rel.as_posix()},{c},{BACKGROUNDS[fam]}")
                    bar.update(1)
    paths = {"classes": root / "classes.txt", "meta": root / "meta.csv", "info": root / "info.json"}
    paths["classes"].write_text("".join(f"{m}\n" for m in MOTIONS))
    for split, ls in lines.items():
        paths[split] = root / f"{split}.txt"
        paths[split].write_text("\n".join(ls) + "\n")
    paths["meta"].write_text("\n".join(meta) + "\n")
    info = {
        "benchmark": "synth-v2v",
        "config": asdict(cfg),
        "classes": list(MOTIONS),
        "backgrounds": list(BACKGROUNDS),
        "counts": {s: cfg.counts(s) for s in SPLITS},
        "domains": {"source": asdict(SOURCE), "target": asdict(TARGET)},
        "note": "source backgrounds follow the class with probability `bias`; target backgrounds are "
                "independent of the class. target_train labels are for the oracle and reports only; "
                "tune only on source_val.",
    }
    paths["info"].write_text(json.dumps(info, indent=2) + "\n")
    return paths
