"""A small real-file image -> video domain-adaptation benchmark, generated procedurally.

Classes are defined by appearance: each class is a shape (circle, square, triangle, star,
cross, ring, diamond, hexagon) filled with a texture (stripes, checker, dots, solid, ...)
in a class colour. The two domains differ the way web stills differ from videos:

* **source** (labelled): still jpg images, the object centred on a light studio
  background, natural colours, random scale/rotation/position;
* **target** (videos, mp4): the object moves across the frame, the camera pans over a
  cluttered darker background, the colours have a cast and lower contrast, there is
  sensor noise, and the object sometimes leaves the frame partly. ``target_train`` is the
  unlabelled adaptation set; ``target_test`` is the labelled evaluation split.

Layout of ``OUT``::

    classes.txt                 one class name per line (line order = class index)
    source.txt                  `path label` lines (paths relative to OUT)
    target_train.txt            `path label` lines; the labels are for reports only (never trained on)
    target_test.txt             `path label` lines
    source/<class>/img_0000.jpg
    target_train/<class>/vid_0000.mp4
    target_test/<class>/vid_0000.mp4
    info.json                   the generation parameters

Everything is a function of the seed: the same seed writes the same images and the same
decoded video frames.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon")
TEXTURES = ("stripes", "checker", "dots", "solid", "grid", "waves")
CLUTTER = 20  # background blobs of a target scene
TARGET_SCALE = (0.45, 0.7)  # object side / frame side in the target videos (source: 0.45-0.7)


@dataclass(frozen=True)
class SynthI2VConfig:
    """Size and look of the benchmark.

    Attributes:
        seed: everything is a function of this seed.
        classes: number of classes (at most ``len(SHAPES)``).
        source_per_class: still images per class.
        train_per_class: unlabelled target train videos per class.
        test_per_class: labelled target test videos per class.
        frames: frames per video.
        fps: frame rate of the videos.
        size: side of the square images and videos in pixels.
    """

    seed: int = 0
    classes: int = 6
    source_per_class: int = 15
    train_per_class: int = 8
    test_per_class: int = 4
    frames: int = 16
    fps: int = 8
    size: int = 112

    def __post_init__(self) -> None:
        if not 2 <= self.classes <= len(SHAPES):
            raise ValueError(f"classes must be in [2, {len(SHAPES)}], got {self.classes}")
        for k in ("source_per_class", "train_per_class", "test_per_class", "frames", "fps"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        if self.size < 32 or self.size % 2:
            raise ValueError(f"size must be an even number >= 32, got {self.size}")


@dataclass(frozen=True)
class ClassLook:
    """Appearance of one class."""

    name: str
    shape: str
    texture: str
    color: tuple[int, int, int]
    color2: tuple[int, int, int]


def class_looks(n: int) -> list[ClassLook]:
    """The appearance of each of ``n`` classes (fixed, independent of the seed)."""
    looks = []
    for c in range(n):
        hue = c / n
        color = _hsv(hue, 0.85, 0.9)
        color2 = _hsv((hue + 0.5) % 1.0, 0.5, 0.35)
        shape, texture = SHAPES[c], TEXTURES[c % len(TEXTURES)]
        looks.append(ClassLook(f"{shape}_{texture}", shape, texture, color, color2))
    return looks


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


# ---- drawing ------------------------------------------------------------------------------


def _shape_mask(shape: str, side: int, angle: float) -> Image.Image:
    """An ``L`` mask of the shape, ``side`` pixels wide, rotated by ``angle`` degrees."""
    big = side * 2  # draw at 2x, downsample for smooth edges
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
    return m.rotate(angle, resample=Image.BILINEAR).resize((side, side), Image.LANCZOS)


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


def _object(look: ClassLook, side: int, angle: float, rng: np.random.Generator) -> tuple[Image.Image, Image.Image]:
    """(texture, mask) of one object instance."""
    return _texture(look, side, rng), _shape_mask(look.shape, side, angle)


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
    """One source still: ``(size, size, 3)`` uint8."""
    bg = _studio_background(size, rng)
    side = int(size * rng.uniform(0.45, 0.7))
    tex, mask = _object(look, side, rng.uniform(0, 360), rng)
    x0 = int(rng.uniform(0.1, 0.9) * (size - side))
    y0 = int(rng.uniform(0.1, 0.9) * (size - side))
    bg.paste(tex, (x0, y0), mask)
    return np.asarray(bg)


def draw_video(look: ClassLook, size: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """One target video: ``(T, size, size, 3)`` uint8 with object motion and camera pan."""
    scene = _scene(size, rng)
    side = int(size * rng.uniform(*TARGET_SCALE))
    # camera pan over the scene, object path in the frame (may leave the frame slightly)
    cam0, cam1 = rng.uniform(0, size, 2), rng.uniform(0, size, 2)
    p0 = rng.uniform(-0.1, 0.6, 2) * (size - side)
    p1 = rng.uniform(0.4, 1.1, 2) * (size - side)
    if rng.random() < 0.5:
        p0, p1 = p1, p0
    a0, spin = rng.uniform(0, 360), rng.uniform(-60, 60)
    cast = np.array([rng.uniform(0.75, 1.0), rng.uniform(0.8, 1.0), rng.uniform(1.0, 1.25)], np.float32)
    contrast, noise = rng.uniform(0.7, 0.9), rng.uniform(3, 8)
    tex_seed = int(rng.integers(1 << 31))
    out = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        u = t / max(1, frames - 1)
        cx, cy = (cam0 + (cam1 - cam0) * u).astype(int)
        bg = Image.fromarray(scene[cy:cy + size, cx:cx + size].astype(np.uint8))
        tex, mask = _object(look, side, a0 + spin * u, np.random.default_rng(tex_seed))
        px, py = (p0 + (p1 - p0) * u).astype(int)
        bg.paste(tex, (int(px), int(py)), mask)
        out[t] = _target_colour(np.asarray(bg, np.float32), cast, contrast, noise, rng)
    return out


# ---- files --------------------------------------------------------------------------------


def write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    """Write ``(T, H, W, 3)`` uint8 frames as an H.264 mp4 (PyAV, single-threaded: deterministic)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.options = {"crf": "18", "preset": "fast", "threads": "1"}
        stream.codec_context.thread_count = 1
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
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
                        Image.fromarray(draw_still(look, cfg.size, rng)).save(root / rel, quality=92)
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
    info = {"config": asdict(cfg), "classes": [asdict(lk) for lk in looks],
            "note": "target_train labels are for pseudo-label reports only; adaptation never reads them"}
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
