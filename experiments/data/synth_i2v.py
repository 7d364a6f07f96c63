"""The image -> video domain-adaptation benchmark (version 2), generated procedurally.

Eight classes. A class is an **appearance** (a shape filled with a texture in a class hue)
and a **motion** of that object in the target videos. Two pairs of classes share their
appearance and differ *only* in motion, so a still image cannot tell the two members of a
pair apart while a video model can:

====  =====================  ===============  ==============================================
 #    class                  appearance       motion in the target videos
====  =====================  ===============  ==============================================
 0    circle_stripes_right   circle, stripes  slides left -> right across the frame
 1    circle_stripes_left    circle, stripes  slides right -> left            (pair with 0)
 2    triangle_checker_cw    triangle, check  rotates clockwise, ~1 turn
 3    triangle_checker_ccw   triangle, check  rotates counter-clockwise       (pair with 2)
 4    star_dots_pulse        star, dots       stays, grows and shrinks 3 times
 5    square_grid_bounce     square, grid     hops up and down twice
 6    cross_waves_orbit      cross, waves     one revolution on a circle
 7    hexagon_solid_still    hexagon, solid   stays in place (only the camera moves)
====  =====================  ===============  ==============================================

The pairs are listed in ``info.json`` (``motion_pairs``). Source stills of the two members
of a pair are drawn from the same distribution, so the best any still-image model can do on
a pair is one half; the other four classes differ in appearance (and motion).

The two domains differ the way web stills differ from videos:

* **source** (labelled): jpg stills, the object on a light studio background, natural
  colours, random scale / rotation / position;
* **target** (videos, mp4): the object moves as its class says while the camera pans
  slowly over a cluttered, darker scene; colour cast, lower contrast, sensor noise.
  ``target_train`` is the unlabelled adaptation set (its labels are written for reports
  only: transductive accuracy and pseudo-label accuracy; adaptation never trains on them),
  ``target_test`` the labelled held-out evaluation split.

Layout of ``OUT``::

    classes.txt                 one class name per line (line order = class index)
    source.txt                  `path label` lines (paths relative to OUT)
    target_train.txt            `path label` lines; the labels are for reports only
    target_test.txt             `path label` lines
    target_val.txt              a labelled subset of target_train (every 4th video of a class):
                                the only labels any setting may be chosen on (never test)
    source/<class>/img_0000.jpg
    target_train/<class>/vid_0000.mp4
    target_test/<class>/vid_0000.mp4
    info.json                   version, generation parameters, classes, motion_pairs

Everything is a function of the seed (one independent stream per split, class and item):
the same seed writes the same jpg bytes and the same decoded video frames. The videos are
encoded from YUV planes computed here (no colour conversion inside FFmpeg) by single-threaded
libx264 with macroblock-tree rate control off: with it on, re-encoding the same frames in one
process gave different bytes (which videos differed depended on what the process had run
before, e.g. an extraction), so two demos in one process read different videos.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

VERSION = 2
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon")  # drawable shapes
TEXTURES = ("stripes", "checker", "dots", "solid", "grid", "waves")
MOTIONS = ("right", "left", "cw", "ccw", "pulse", "bounce", "orbit", "still")
# (shape, texture, motion) of each class; classes sharing (shape, texture) form a motion-only pair.
CLASSES = (
    ("circle", "stripes", "right"),
    ("circle", "stripes", "left"),
    ("triangle", "checker", "cw"),
    ("triangle", "checker", "ccw"),
    ("star", "dots", "pulse"),
    ("square", "grid", "bounce"),
    ("cross", "waves", "orbit"),
    ("hexagon", "solid", "still"),
)
CLUTTER = 20  # background blobs of a target scene
OBJECT_SCALE = (0.4, 0.55)  # object side / frame side (source and target)
PAN = 0.25  # largest camera pan over a video, in frame sides
VAL_EVERY = 4  # target_val = every 4th target_train video of a class (labels for choosing settings)


@dataclass(frozen=True)
class SynthI2VConfig:
    """Size and look of the benchmark (defaults: the v2 design of ``featbank demo``).

    Attributes:
        seed: everything is a function of this seed.
        classes: number of classes, the first ``classes`` rows of :data:`CLASSES` (2..8;
            the design is 8, fewer only for quick tests).
        source_per_class: still images per class.
        train_per_class: unlabelled target train (adaptation) videos per class.
        test_per_class: labelled target test videos per class.
        frames: frames per video.
        fps: frame rate of the videos.
        size: side of the square images and videos in pixels.
    """

    seed: int = 0
    classes: int = 8
    source_per_class: int = 16
    train_per_class: int = 16
    test_per_class: int = 12
    frames: int = 32
    fps: int = 16
    size: int = 64

    def __post_init__(self) -> None:
        if not 2 <= self.classes <= len(CLASSES):
            raise ValueError(f"classes must be in [2, {len(CLASSES)}], got {self.classes}")
        for k in ("source_per_class", "train_per_class", "test_per_class", "frames", "fps"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        if self.size < 32 or self.size % 2:
            raise ValueError(f"size must be an even number >= 32, got {self.size}")


@dataclass(frozen=True)
class ClassLook:
    """Appearance and motion of one class."""

    name: str
    shape: str
    texture: str
    color: tuple[int, int, int]
    color2: tuple[int, int, int]
    motion: str = "still"


def class_looks(n: int) -> list[ClassLook]:
    """The first ``n`` classes of :data:`CLASSES` (fixed, independent of the seed).

    Classes that share (shape, texture) share their colours too: only the motion differs.
    """
    appearances = list(dict.fromkeys((sh, tx) for sh, tx, _ in CLASSES))
    looks = []
    for shape, texture, motion in CLASSES[:n]:
        hue = appearances.index((shape, texture)) / len(appearances)
        color = _hsv(hue, 0.85, 0.9)
        color2 = _hsv((hue + 0.5) % 1.0, 0.5, 0.35)
        looks.append(ClassLook(f"{shape}_{texture}_{motion}", shape, texture, color, color2, motion))
    return looks


def motion_pairs(n: int = len(CLASSES)) -> list[list[int]]:
    """Pairs ``[a, b]`` among the first ``n`` classes that share their appearance."""
    out = []
    for a in range(n):
        for b in range(a + 1, n):
            if CLASSES[a][:2] == CLASSES[b][:2]:
                out.append([a, b])
    return out


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


# ---- drawing ------------------------------------------------------------------------------


def _shape_mask(shape: str, side: int, angle: float) -> Image.Image:
    """An ``L`` mask of the shape, ``side`` pixels wide, rotated by ``angle`` degrees."""
    m = draw_shape(shape, side * 2)  # draw at 2x, downsample for smooth edges
    return m.rotate(angle, resample=Image.BILINEAR).resize((side, side), Image.LANCZOS)


def draw_shape(shape: str, big: int) -> Image.Image:
    """An upright ``L`` mask (255 inside) of a named shape filling most of a ``big`` x ``big`` canvas."""
    m = Image.new("L", (big, big), 0)
    d = ImageDraw.Draw(m)
    c, r = big / 2, big * 0.46

    def poly(k: int, r0: float, r1: float | None = None, phase: float = -90) -> list[tuple[float, float]]:
        pts = []
        n = k * (2 if r1 is not None else 1)
        for i in range(n):
            rr = r0 if (r1 is None or i % 2 == 0) else r1
            a = math.radians(phase + 360 * i / n)
            pts.append((c + rr * math.cos(a), c + rr * math.sin(a)))
        return pts

    if shape == "circle":
        d.ellipse([c - r, c - r, c + r, c + r], fill=255)
    elif shape == "square":
        d.rectangle([c - r * 0.8, c - r * 0.8, c + r * 0.8, c + r * 0.8], fill=255)
    elif shape == "triangle":
        d.polygon(poly(3, r), fill=255)
    elif shape == "star":
        d.polygon(poly(5, r, r * 0.45), fill=255)
    elif shape == "cross":
        w = r * 0.33
        d.rectangle([c - r, c - w, c + r, c + w], fill=255)
        d.rectangle([c - w, c - r, c + w, c + r], fill=255)
    elif shape == "ring":
        d.ellipse([c - r, c - r, c + r, c + r], fill=255)
        d.ellipse([c - r * 0.55, c - r * 0.55, c + r * 0.55, c + r * 0.55], fill=0)
    elif shape == "diamond":
        d.polygon(poly(4, r, phase=0), fill=255)
    elif shape == "hexagon":
        d.polygon(poly(6, r, phase=0), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return m


def _texture(look: ClassLook, side: int, rng: np.random.Generator) -> Image.Image:
    """An RGB texture tile of the class, ``side`` pixels."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    period = max(4.0, side / rng.uniform(4.0, 6.0))
    ph = rng.uniform(0, period)
    if look.texture == "stripes":
        m = ((xx + yy + ph) // (period / 2)) % 2
    elif look.texture == "checker":
        m = (((xx + ph) // (period / 2)) + ((yy + ph) // (period / 2))) % 2
    elif look.texture == "dots":
        m = (((xx + ph) % period - period / 2) ** 2 + ((yy + ph) % period - period / 2) ** 2 < (period / 4) ** 2)
    elif look.texture == "grid":
        m = (((xx + ph) % period) < period / 5) | (((yy + ph) % period) < period / 5)
    elif look.texture == "waves":
        m = np.sin((xx + 3 * np.sin(yy / period * 2)) / period * 2 * np.pi + ph) > 0
    else:  # solid
        m = np.zeros_like(xx)
    m = np.asarray(m, np.float32)[..., None]
    img = (1 - m) * np.array(look.color, np.float32) + m * np.array(look.color2, np.float32)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def _object(look: ClassLook, side: int, angle: float, rng: np.random.Generator) -> Image.Image:
    """One object instance as an RGBA patch ``side`` pixels wide, texture and shape rotated together."""
    patch = _texture(look, side, rng).convert("RGBA")
    patch.putalpha(_shape_mask(look.shape, side, 0.0))
    return patch.rotate(angle, resample=Image.BILINEAR) if angle else patch


def _studio_background(size: int, rng: np.random.Generator) -> Image.Image:
    """Light, smooth background of the source stills."""
    base = rng.uniform(200, 245)
    tint = rng.uniform(-10, 10, 3)
    yy = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    grad = rng.uniform(-25, 0) * yy
    img = np.broadcast_to(base + tint + grad, (size, size, 3))
    return Image.fromarray(np.asarray(img).clip(0, 255).astype(np.uint8))


def _scene(size: int, rng: np.random.Generator) -> np.ndarray:
    """A large, cluttered, darker background scene the target camera pans over: ``(S, S, 3)`` float32."""
    s = size * 2
    img = Image.new("RGB", (s, s), tuple(int(v) for v in rng.uniform(30, 90, 3)))
    d = ImageDraw.Draw(img)
    for _ in range(CLUTTER):  # clutter: random blobs and bars in muted colours
        x, y = rng.uniform(0, s, 2)
        w, h = rng.uniform(5, s / 5, 2)
        col = tuple(int(v) for v in rng.uniform(30, 110, 3))
        if rng.random() < 0.5:
            d.ellipse([x, y, x + w, y + h], fill=col)
        else:
            d.rectangle([x, y, x + w, y + h / 3], fill=col)
    img = img.filter(ImageFilter.GaussianBlur(1.5))
    return np.asarray(img, np.float32)


def _target_colour(frame: np.ndarray, cast: np.ndarray, contrast: float, noise: float,
                   rng: np.random.Generator) -> np.ndarray:
    """Target colour statistics: channel cast, reduced contrast, sensor noise."""
    mean = frame.mean()
    out = (frame - mean) * contrast + mean
    out = out * cast + rng.normal(0, noise, frame.shape)
    return out.clip(0, 255).astype(np.uint8)


def draw_still(look: ClassLook, size: int, rng: np.random.Generator) -> np.ndarray:
    """One source still: ``(size, size, 3)`` uint8 (depends on the appearance only, never the motion)."""
    bg = _studio_background(size, rng)
    side = int(size * rng.uniform(*OBJECT_SCALE))
    obj = _object(look, side, rng.uniform(0, 360), rng)
    x0 = int(rng.uniform(0.1, 0.9) * (size - side))
    y0 = int(rng.uniform(0.1, 0.9) * (size - side))
    bg.paste(obj, (x0, y0), obj)
    return np.asarray(bg)


def motion_track(motion: str, frames: int, size: int, side: int, rng: np.random.Generator) -> np.ndarray:
    """Object track of one target video: ``(T, 4)`` float rows ``(x, y, angle_deg, scale)``.

    ``(x, y)`` is the top-left corner of an unscaled object of side ``side``; the speed,
    start and amplitude vary per video, the kind of motion is the class's.
    """
    if motion not in MOTIONS:
        raise ValueError(f"unknown motion {motion!r}; choose one of {MOTIONS}")
    u = np.linspace(0.0, 1.0, frames)  # (T,) time in [0, 1]
    free = size - side  # room for the top-left corner
    cx, cy = rng.uniform(0.3, 0.7, 2) * free  # resting position
    a0 = rng.uniform(0, 360)
    x, y = np.full(frames, cx), np.full(frames, cy)
    angle, scale = np.full(frames, a0), np.ones(frames)
    if motion in ("right", "left"):
        x0, x1 = rng.uniform(-0.15, 0.1) * free, rng.uniform(0.9, 1.15) * free
        x = x0 + (x1 - x0) * u if motion == "right" else x1 - (x1 - x0) * u
        y = cy + rng.uniform(-0.1, 0.1) * free * u
    elif motion in ("cw", "ccw"):
        turn = rng.uniform(0.8, 1.2) * 360 * (-1 if motion == "cw" else 1)  # PIL rotates counter-clockwise
        angle = a0 + turn * u
    elif motion == "pulse":
        cycles, ph = rng.uniform(2.5, 3.5), rng.uniform(0, 2 * np.pi)
        scale = 1.0 + 0.35 * np.sin(2 * np.pi * cycles * u + ph)
    elif motion == "bounce":
        hops, amp = rng.uniform(1.8, 2.2), rng.uniform(0.35, 0.5) * size
        y = np.clip(free * 0.85 - amp * np.abs(np.sin(np.pi * hops * u)), -0.1 * side, free)
    elif motion == "orbit":
        r = rng.uniform(0.25, 0.35) * size
        ph, sgn = rng.uniform(0, 2 * np.pi), rng.choice([-1.0, 1.0])
        x = free / 2 + r * np.cos(ph + sgn * 2 * np.pi * u)
        y = free / 2 + r * np.sin(ph + sgn * 2 * np.pi * u)
    return np.stack([x, y, angle, scale], axis=1)


def draw_video(look: ClassLook, size: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """One target video: ``(T, size, size, 3)`` uint8, the object moving as its class says, camera pan."""
    scene = _scene(size, rng)
    side = int(size * rng.uniform(*OBJECT_SCALE))
    cam0 = rng.uniform(0, size, 2)
    cam1 = np.clip(cam0 + rng.uniform(-PAN, PAN, 2) * size, 0, size)
    track = motion_track(look.motion, frames, size, side, rng)
    cast = np.array([rng.uniform(0.75, 1.0), rng.uniform(0.8, 1.0), rng.uniform(1.0, 1.25)], np.float32)
    contrast, noise = rng.uniform(0.7, 0.9), rng.uniform(3, 8)
    tex_seed = int(rng.integers(1 << 31))
    out = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        u = t / max(1, frames - 1)
        cx, cy = (cam0 + (cam1 - cam0) * u).astype(int)
        bg = Image.fromarray(scene[cy:cy + size, cx:cx + size].astype(np.uint8))
        x, y, angle, scale = track[t]
        s = max(4, int(round(side * scale)))
        obj = _object(look, s, float(angle), np.random.default_rng(tex_seed))  # same texture every frame
        off = (side - s) / 2  # scale about the object's centre
        bg.paste(obj, (int(round(x + off)), int(round(y + off))), obj)
        out[t] = _target_colour(np.asarray(bg, np.float32), cast, contrast, noise, rng)
    return out


# ---- files --------------------------------------------------------------------------------


def rgb_to_yuv420(frame: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB -> ``(H * 3 // 2, W)`` uint8 planar YUV 4:2:0 (BT.601, limited range).

    Done here in numpy so the encoder's input is a pure function of the pixels (FFmpeg's
    scaler gave a different first conversion in a process that had decoded other videos).
    """
    rgb = frame.astype(np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0
    cb = 128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0
    cr = 128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0
    h, w = y.shape

    def sub(c: np.ndarray) -> np.ndarray:  # (H, W) -> (H/2, W/2): mean of each 2x2 block
        return c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    planes = [np.rint(p).clip(0, 255).astype(np.uint8).reshape(-1) for p in (y, sub(cb), sub(cr))]
    return np.concatenate(planes).reshape(h * 3 // 2, w)


def write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    """Write ``(T, H, W, 3)`` uint8 frames (even ``H``, ``W``) as an H.264 mp4, deterministically.

    The YUV planes are computed by :func:`rgb_to_yuv420`, libx264 runs on one thread and
    without macroblock-tree rate control, so the same frames give the same file bytes in any
    process, however often and after whatever else it ran.
    """
    import av

    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"write_mp4: frame size must be even, got {frames.shape[2]}x{frames.shape[1]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        # mbtree=0: libx264's macroblock-tree rate control (on by default with CRF) gave different
        # bitstreams for identical frames within one process (5 of 8 videos differed on a re-encode at
        # 64 px; which ones depended on what the process had allocated before, e.g. an extraction);
        # with it off, or with constant QP, every re-encode is byte-identical
        stream.codec_context.options = {"crf": "18", "preset": "fast", "threads": "1", "x264-params": "mbtree=0"}
        stream.codec_context.thread_count = 1
        for f in frames:
            vf = av.VideoFrame.from_ndarray(rgb_to_yuv420(np.ascontiguousarray(f)), format="yuv420p")
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def generate(out: str | Path, cfg: SynthI2VConfig = SynthI2VConfig(), *, progress: bool = False) -> dict[str, Path]:
    """Write the benchmark into ``out`` (see module docstring).

    Args:
        out: output folder (created; existing files of the same names are overwritten).
        cfg: size and seed.
        progress: show a progress bar.

    Returns:
        Paths of ``classes``, ``source``, ``target_train``, ``target_test`` manifests and ``info``.
    """
    from tqdm import tqdm

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    looks = class_looks(cfg.classes)
    ss = np.random.SeedSequence(cfg.seed)
    # one independent stream per (domain, class, item): the same seed gives the same files
    streams = {name: child for name, child in zip(("source", "target_train", "target_test"), ss.spawn(3))}
    counts = {"source": cfg.source_per_class, "target_train": cfg.train_per_class, "target_test": cfg.test_per_class}
    total = cfg.classes * sum(counts.values())
    lines: dict[str, list[str]] = {k: [] for k in counts}
    with tqdm(total=total, desc="synth-i2v", unit="file", disable=not progress) as bar:
        for split, n in counts.items():
            class_seqs = streams[split].spawn(cfg.classes)
            for c, look in enumerate(looks):
                for i, item_seq in enumerate(class_seqs[c].spawn(n)):
                    rng = np.random.default_rng(item_seq)
                    if split == "source":
                        rel = Path(split) / look.name / f"img_{i:04d}.jpg"
                        (root / rel).parent.mkdir(parents=True, exist_ok=True)
                        Image.fromarray(draw_still(look, cfg.size, rng)).save(root / rel, quality=92, optimize=False)
                    else:
                        rel = Path(split) / look.name / f"vid_{i:04d}.mp4"
                        write_mp4(root / rel, draw_video(look, cfg.size, cfg.frames, rng), cfg.fps)
                    lines[split].append(f"{rel.as_posix()} {c}")
                    bar.update(1)
    paths = {"classes": root / "classes.txt", "info": root / "info.json"}
    paths["classes"].write_text("".join(f"{lk.name}\n" for lk in looks))
    for split, ls in lines.items():
        paths[split] = root / f"{split}.txt"
        paths[split].write_text("\n".join(ls) + "\n")
    # validation: labelled subset of the adaptation videos (every VAL_EVERY-th video of a class)
    val = [ln for ln in lines["target_train"] if int(ln.rsplit("_", 1)[1].split(".")[0]) % VAL_EVERY == VAL_EVERY - 1]
    paths["target_val"] = root / "target_val.txt"
    paths["target_val"].write_text("\n".join(val) + ("\n" if val else ""))
    info = {"version": VERSION, "config": asdict(cfg), "classes": [asdict(lk) for lk in looks],
            "motion_pairs": motion_pairs(cfg.classes),
            "note": "target_train labels are for reports only (transductive and pseudo-label accuracy); "
                    "adaptation never reads them"}
    paths["info"].write_text(json.dumps(info, indent=2) + "\n")
    return paths


def read_path_label(path: str | Path) -> list[tuple[str, int]]:
    """Parse a `path label` manifest (paths relative to the manifest's folder)."""
    out = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise ValueError(f"{path}:{i}: expected `path label`, got {line!r}")
        out.append((parts[0], int(parts[1])))
    return out
