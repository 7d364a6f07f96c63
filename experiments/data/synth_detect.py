"""A temporal activity detection benchmark composed from real footage, with known segments.

Each long video is a timeline of **action instances** separated by **static gaps**:

* action classes ``real_<clip>``: one per real clip in ``../shared/data/clips`` (six mmaction2
  sample clips, each a different action). An instance is a random span of its clip resampled
  to the benchmark's fps with a random speed (0.8-1.25x, looping back and forth when the clip
  is short), a random horizontal flip and a random brightness;
* action classes ``gen_<motion>``: generated motions (a disc orbiting, a block bouncing, a bar
  spinning, a ring pulsing) drawn over a real still from ``../shared/data/rawframes``: the
  scene is real and static, only the motion tells the class;
* static gaps: a real still (a rawframes frame, or when absent a generated one) held still
  with light sensor noise, labelled with no class;
* overlaps (multi-label): with probability ``p_overlap`` an instance starts before the
  previous one ends; during the overlap the later one is shown as a half-size inset in a
  corner of the earlier one, and both are annotated.

Without the shared folder the real classes are skipped with the reason recorded in
``info.json`` (``skipped``) and printed; the generated classes and generated stills remain.

Layout of ``OUT``::

    classes.txt              one class name per line (line order = index; Charades code cNNN)
    train.csv, test.csv      Charades CSV: id, actions (`c001 2.50 6.12;...`), length (seconds)
    train.txt, test.txt      extraction manifests (csv `path,n_frames`)
    train/vid_0000.mp4 ...   videos; their video ids are `train/vid_0000` (path without extension)
    info.json                the generation parameters and per-class instance counts

Everything is a function of the seed (same seed: same frames, same annotations). The design
(sizes, classes, composition) is frozen: results on it are never used to change it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from featbank.experiments.data.annotations import VideoAnnotation, write_charades_csv
from featbank.experiments.data.synth_i2v import write_mp4

GEN_MOTIONS = ("orbit", "bounce", "spin", "pulse")
MEDIA = (".mp4", ".avi", ".mkv", ".webm", ".mov")


def default_shared() -> Path:
    """``../shared/data`` next to the repository (where the real clips live)."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


@dataclass(frozen=True)
class SynthDetectConfig:
    """Size and composition of the benchmark.

    Attributes:
        seed: everything is a function of this seed.
        train_videos / test_videos: number of long videos per split.
        fps: frame rate of the written videos.
        size: side of the square frames (pixels).
        instances: (min, max) action instances per video.
        duration: (min, max) seconds of an instance.
        gap: (min, max) seconds of a static gap.
        p_overlap: probability that an instance overlaps the previous one.
        shared: folder with ``clips/`` and ``rawframes/`` (empty: ``../shared/data``).
        real_clips: use the real clips as classes when present.
    """

    seed: int = 0
    train_videos: int = 24
    test_videos: int = 12
    fps: int = 8
    size: int = 96
    instances: tuple[int, int] = (3, 5)
    duration: tuple[float, float] = (2.0, 5.0)
    gap: tuple[float, float] = (1.0, 3.0)
    p_overlap: float = 0.3
    shared: str = ""
    real_clips: bool = True

    def __post_init__(self) -> None:
        if self.train_videos < 1 or self.test_videos < 1:
            raise ValueError("train_videos and test_videos must be >= 1")
        if self.fps < 1 or self.size < 32 or self.size % 2:
            raise ValueError(f"fps must be >= 1 and size an even number >= 32 (got {self.fps}, {self.size})")
        if not (1 <= self.instances[0] <= self.instances[1]):
            raise ValueError(f"instances must be 1 <= min <= max, got {self.instances}")
        if not (0 < self.duration[0] <= self.duration[1]) or not (0 < self.gap[0] <= self.gap[1]):
            raise ValueError(f"duration and gap must be 0 < min <= max (got {self.duration}, {self.gap})")
        if not 0 <= self.p_overlap <= 1:
            raise ValueError(f"p_overlap must be in [0, 1], got {self.p_overlap}")


# ---- sources -------------------------------------------------------------------------------


def _square(frame: np.ndarray, size: int) -> np.ndarray:
    """Resize the short side to ``size`` and centre crop to ``size x size`` (uint8 RGB)."""
    h, w = frame.shape[:2]
    s = size / min(h, w)
    img = Image.fromarray(frame).resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
    a = np.asarray(img)
    y0, x0 = (a.shape[0] - size) // 2, (a.shape[1] - size) // 2
    return np.ascontiguousarray(a[y0:y0 + size, x0:x0 + size])


def _load_clip(path: Path, size: int) -> tuple[np.ndarray, float]:
    """All frames of a real clip, squared to ``size``, and its fps (PyAV: deterministic)."""
    import av

    frames = []
    with av.open(str(path)) as c:
        st = c.streams.video[0]
        fps = float(st.average_rate) if st.average_rate else 25.0
        for fr in c.decode(st):
            frames.append(_square(fr.to_ndarray(format="rgb24"), size))
    if not frames:
        raise ValueError(f"{path}: no frames decoded")
    return np.stack(frames), fps


def load_sources(cfg: SynthDetectConfig) -> tuple[list[str], list[tuple[np.ndarray, float] | None], list[np.ndarray], dict[str, str]]:
    """Class names, per class the real frames (``None`` for generated motions), the stills, skip reasons."""
    shared = Path(cfg.shared) if cfg.shared else default_shared()
    skipped: dict[str, str] = {}
    names: list[str] = []
    real: list[tuple[np.ndarray, float] | None] = []
    clip_dir, frame_dir = shared / "clips", shared / "rawframes"
    if not cfg.real_clips:
        skipped["real_clips"] = "disabled (real_clips=False)"
    elif not clip_dir.is_dir():
        skipped["real_clips"] = f"{clip_dir} not found: only generated action classes"
    else:
        for p in sorted(q for q in clip_dir.iterdir() if q.suffix.lower() in MEDIA):
            try:
                real.append(_load_clip(p, cfg.size))
                names.append(f"real_{p.stem}")
            except Exception as e:  # a broken clip is left out and named, not fatal
                skipped[p.name] = f"{type(e).__name__}: {e}"
    stills: list[np.ndarray] = []
    if frame_dir.is_dir():
        for p in sorted(frame_dir.glob("img_*.jpg")):
            stills.append(_square(np.asarray(Image.open(p).convert("RGB")), cfg.size))
    if not stills:
        skipped["rawframes"] = f"{frame_dir} has no img_*.jpg: generated stills for gaps and backgrounds"
        rng = np.random.default_rng(12345)
        for _ in range(4):
            base = rng.integers(40, 200, 3)
            grad = np.linspace(0.6, 1.2, cfg.size)[:, None, None]
            stills.append(np.clip(base[None, None, :] * grad + rng.normal(0, 8, (cfg.size, cfg.size, 3)), 0, 255)
                          .astype(np.uint8))
    for m in GEN_MOTIONS:
        names.append(f"gen_{m}")
        real.append(None)
    return names, real, stills, skipped


# ---- drawing -------------------------------------------------------------------------------


def _real_instance(src: tuple[np.ndarray, float], n: int, fps: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` frames of a real clip at ``fps``: random start, speed, flip and brightness."""
    frames, src_fps = src
    speed = rng.uniform(0.8, 1.25)
    step = speed * src_fps / fps  # source frames per output frame
    m = len(frames)
    start = rng.uniform(0, m)
    pos = start + step * np.arange(n)
    period = 2 * (m - 1) if m > 1 else 1
    ph = np.mod(pos, period)
    idx = np.where(ph < m, ph, period - ph).astype(np.int64).clip(0, m - 1)  # ping-pong loop
    out = frames[idx].astype(np.float32) * rng.uniform(0.8, 1.2)
    if rng.random() < 0.5:
        out = out[:, :, ::-1]
    return np.clip(out, 0, 255).astype(np.uint8)


def _gen_instance(motion: str, still: np.ndarray, n: int, fps: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` frames of a generated motion over a real still background."""
    size = still.shape[0]
    color = tuple(int(c) for c in rng.integers(30, 255, 3))
    period = rng.uniform(1.2, 2.0) * fps  # frames per cycle
    phase = rng.uniform(0, 2 * math.pi)
    r = size * rng.uniform(0.12, 0.18)
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        a = phase + 2 * math.pi * i / period
        img = Image.fromarray(still)
        d = ImageDraw.Draw(img)
        c = size / 2
        if motion == "orbit":
            x, y = c + size * 0.28 * math.cos(a), c + size * 0.28 * math.sin(a)
            d.ellipse([x - r, y - r, x + r, y + r], fill=color)
        elif motion == "bounce":
            y = size * 0.2 + size * 0.6 * abs(math.sin(a))
            d.rectangle([c - r, y - r, c + r, y + r], fill=color)
        elif motion == "spin":
            dx, dy = size * 0.38 * math.cos(a), size * 0.38 * math.sin(a)
            d.line([c - dx, c - dy, c + dx, c + dy], fill=color, width=max(3, int(r / 2)))
        elif motion == "pulse":
            rr = size * (0.12 + 0.25 * (0.5 + 0.5 * math.sin(a)))
            d.ellipse([c - rr, c - rr, c + rr, c + rr], outline=color, width=max(3, int(r / 2)))
        else:
            raise ValueError(f"unknown motion {motion!r}")
        out[i] = np.asarray(img)
    return out


def _inset(base: np.ndarray, top: np.ndarray, corner: int) -> np.ndarray:
    """``top`` at half size in a corner of ``base`` (both ``(H, W, 3)``)."""
    s = base.shape[0]
    h = s // 2
    small = np.asarray(Image.fromarray(top).resize((h, h), Image.BILINEAR))
    out = base.copy()
    y0 = 0 if corner in (0, 1) else s - h
    x0 = 0 if corner in (0, 2) else s - h
    out[y0:y0 + h, x0:x0 + h] = small
    return out


def compose_video(cfg: SynthDetectConfig, names: list[str], real: list, stills: list[np.ndarray],
                  rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[float, float, int]]]:
    """One long video and its segments ``(start_s, end_s, class)``."""
    fps = cfg.fps
    n_inst = int(rng.integers(cfg.instances[0], cfg.instances[1] + 1))
    still = stills[int(rng.integers(len(stills)))]
    plan: list[tuple[int, int, int]] = []  # (start_frame, n_frames, class)
    cursor = int(round(rng.uniform(*cfg.gap) * fps / 2))  # a short gap opens the video
    for k in range(n_inst):
        c = int(rng.integers(len(names)))
        n = int(round(rng.uniform(*cfg.duration) * fps))
        if plan and rng.random() < cfg.p_overlap:
            prev_s, prev_n, _ = plan[-1]
            ov = int(round(rng.uniform(0.3, 0.7) * min(n, prev_n)))
            start = prev_s + prev_n - max(1, ov)
        else:
            start = cursor + (int(round(rng.uniform(*cfg.gap) * fps)) if plan else 0)
        plan.append((start, n, c))
        cursor = max(cursor, start + n)
    total = cursor + int(round(rng.uniform(*cfg.gap) * fps))
    noise = rng.normal(0, 3, (total, 1, 1, 1))  # flicker of the static gaps
    video = np.clip(still[None].astype(np.float32) + noise, 0, 255).astype(np.uint8)  # (T, H, W, 3)
    layers: list[tuple[int, np.ndarray]] = []
    for s, n, c in plan:
        if real[c] is not None:
            clip = _real_instance(real[c], n, fps, rng)
        else:
            bg = stills[int(rng.integers(len(stills)))]
            clip = _gen_instance(names[c][len("gen_"):], bg, n, fps, rng)
        layers.append((s, clip))
    corner = [int(rng.integers(4)) for _ in plan]
    for f in range(total):
        active = [(i, s, clip) for i, (s, clip) in enumerate(layers) if s <= f < s + len(clip)]
        if not active:
            continue
        i0, s0, c0 = active[0]
        frame = c0[f - s0]
        for i, s, clip in active[1:]:
            frame = _inset(frame, clip[f - s], corner[i])
        video[f] = frame
    segments = [(s / fps, (s + n) / fps, c) for s, n, c in plan]
    return video, segments


def generate(out: str | Path, cfg: SynthDetectConfig = SynthDetectConfig(), *, progress: bool = False) -> dict[str, Any]:
    """Write the benchmark into ``out`` (see the module docstring); returns paths and counts."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names, real, stills, skipped = load_sources(cfg)
    for what, why in skipped.items():
        print(f"synth-detect: skipped {what}: {why}")
    (out / "classes.txt").write_text("".join(f"c{i:03d} {n}\n" for i, n in enumerate(names)))
    counts = {n: 0 for n in names}
    result: dict[str, Any] = {"classes": out / "classes.txt", "num_classes": len(names), "skipped": skipped}
    seconds = 0.0
    for split, n_videos in (("train", cfg.train_videos), ("test", cfg.test_videos)):
        anns: dict[str, VideoAnnotation] = {}
        lines = []
        it = range(n_videos)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc=f"synth-detect {split}", leave=False)
        for i in it:
            vrng = np.random.default_rng([cfg.seed, 0 if split == "train" else 1, i])
            video, segs = compose_video(cfg, names, real, stills, vrng)
            rel = f"{split}/vid_{i:04d}.mp4"
            write_mp4(out / rel, video, cfg.fps)
            vid = rel[:-4]
            length = len(video) / cfg.fps
            seconds += length
            anns[vid] = VideoAnnotation(vid, length, tuple(segs))
            lines.append(f"{rel},{len(video)}")
            for _, _, c in segs:
                counts[names[c]] += 1
        write_charades_csv(out / f"{split}.csv", anns)
        (out / f"{split}.txt").write_text("\n".join(lines) + "\n")
        result[split] = out / f"{split}.csv"
        result[f"{split}_manifest"] = out / f"{split}.txt"
    info = {"config": asdict(cfg), "classes": names, "instances_per_class": counts, "skipped": skipped,
            "total_seconds": round(seconds, 2)}
    (out / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    result["info"] = info
    return result
