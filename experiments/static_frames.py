"""Image-domain features from a video backbone: stills and single frames as static clips.

No ImageNet weights can be downloaded here, so the image model of CycDA reads features of
the Kinetics-400 I3D applied to *static clips*: a still image (or one frame of a target
video) repeated over ``clip_len`` frames. Stills and frames go through exactly the same
code path (decode -> ``transforms.preprocess`` -> static clip -> ``features.run_model``),
so the two image domains share one feature space.

The clip-level features of the videos come from the extraction job (``run_extraction``);
this module only adds the frame-level image features, written as a ``level="frame"`` set
with the producing backbone and weights id, so a backbone refresh marks them stale too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from featbank.store.base import FeatureStore
from featbank.store.schema import BackboneSpec, FeatureSetInfo, VideoMeta, VideoRows


@dataclass(frozen=True)
class ImageItem:
    """One still or video whose frames become rows.

    Attributes:
        video_id: key in the feature set.
        path: image or video file.
        label: class index (``-1`` unknown).
        split: split name written into the metadata.
        domain: domain name written into the metadata.
    """

    video_id: str
    path: str
    label: int = -1
    split: str = ""
    domain: str = ""


def items_from_manifest(manifest: str | Path, *, split: str, domain: str) -> list[ImageItem]:
    """Items of a ``path label`` manifest; ids = path relative to the manifest folder without extension.

    Uses ``featbank.extract.manifest.read_manifest`` so ids equal those of the extraction job.
    """
    from featbank.extract.manifest import read_manifest

    return [ImageItem(e.video_id, e.path, e.labels[0] if e.labels else -1, split, domain)
            for e in read_manifest(str(manifest), fmt="path_label")]


def frame_positions(n_frames: int, k: int) -> np.ndarray:
    """Centres of ``k`` equal segments of ``n_frames`` (TSN test-time sampling); all frames if fewer."""
    if n_frames <= k:
        return np.arange(n_frames, dtype=np.int64)
    return ((np.arange(k) + 0.5) * n_frames / k).astype(np.int64)


def extract_static_frames(store: FeatureStore, set_name: str, items: Sequence[ImageItem], model, spec: BackboneSpec,
                          *, frames_per_video: int = 4, clip_len: int = 8, batch_size: int = 16,
                          endpoint: str | None = None, dtype: str = "float16", progress: bool = True,
                          backbone: str | None = None) -> int:
    """Write one row per selected frame (a static clip of it) for every item into ``set_name``.

    Args:
        store: the feature store.
        set_name: feature set to create or extend (committed items are skipped).
        items: stills and/or videos.
        model: a backbone with the featbank contract, in eval mode.
        spec: preprocessing (``resize``, ``crop``, mean/std) to apply.
        frames_per_video: frames taken from a video (segment centres); a still gives one.
        clip_len: length of the static clip each frame is repeated to.
        batch_size: static clips per model call.
        endpoint: backbone endpoint (default: the last).
        dtype: stored dtype.
        progress: show a progress bar.
        backbone: registry name recorded as the producer (default ``spec.name``); staleness
            is tracked per this name.

    Returns:
        Number of rows written.
    """
    from tqdm import tqdm

    from featbank.extract.decode import decode_video
    from featbank.extract.features import Sampling, run_model
    from featbank.extract.transforms import preprocess

    sampling = Sampling(sampler="dense", clip_len=clip_len, stride=1, endpoint=endpoint)
    info = FeatureSetInfo(
        set_name, (int(spec.feature_dim),), dtype=dtype, level="frame", backbone=backbone or spec.name,
        weights_id=spec.weights_id, endpoint=endpoint or model.endpoints[-1], spec=spec.to_dict(),
        sampling={"sampler": "static_frames", "clip_len": clip_len, "frames_per_video": frames_per_video,
                  "selection": "segment centres", "views": "center"},
    )
    fs = store.create_set(info, exist_ok=True)
    done = set(fs.video_ids())
    todo = [it for it in items if it.video_id not in done]
    device = next(iter(model.parameters()), torch.empty(0)).device
    pending: list[tuple[ImageItem, torch.Tensor, np.ndarray, np.ndarray, float, int]] = []
    written = 0

    def flush() -> None:
        nonlocal written
        if not pending:
            return
        clips = torch.cat([p[1] for p in pending])  # (N, C, h, w) one frame per clip
        feats = []
        for i in range(0, len(clips), batch_size):
            x = clips[i:i + batch_size].unsqueeze(2).expand(-1, -1, clip_len, -1, -1)  # (B, C, h, w) -> (B, C, L, h, w)
            out = run_model(model, x.unsqueeze(1).to(device), sampling)  # (B, 1, 1, D)
            feats.append(out[:, 0, 0])
        allf = torch.cat(feats).numpy()  # (N, D)
        pos = 0
        for item, fr, times, idx, fps, n in pending:
            k = len(fr)
            rows = VideoRows(allf[pos:pos + k], times, times + 1.0 / fps, np.stack([idx, idx], 1))
            meta = VideoMeta(item.video_id, source=str(item.path), labels=(item.label,) if item.label >= 0 else (),
                             split=item.split, domain=item.domain, fps=fps, n_frames=n, duration=n / fps)
            fs.write_video(rows, meta)
            written += k
            pos += k
        pending.clear()

    with tqdm(total=len(todo), desc=f"static frames {set_name}", unit="item", disable=not progress) as bar:
        for item in todo:
            frames = decode_video(item.path)
            n = len(frames.frames)
            sel = frame_positions(n, frames_per_video)
            x = preprocess(frames.frames[sel], spec)[0]  # (k, H, W, C) -> (C, k, h, w)
            fps = float(1.0 / np.median(np.diff(frames.times))) if n > 1 else 1.0
            pending.append((item, x.permute(1, 0, 2, 3), np.asarray(frames.times)[sel],
                            np.asarray(frames.indices)[sel], fps, n))
            if sum(len(p[1]) for p in pending) >= batch_size:
                flush()
            bar.update(1)
        flush()
    return written
