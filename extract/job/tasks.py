"""The manifest as the job's list of ``VideoTask`` s, and per-video costs for shard balancing."""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

from .config import ExtractConfig


def duration_weights(tasks: Sequence[Any], decoder: str, modality: str) -> list[float]:
    """Cost of each video for shard balancing: manifest frame counts when every entry has
    one, else the probed duration in seconds (0 for unreadable inputs, which fail fast)."""
    if tasks and all(t.n_frames > 0 for t in tasks):
        return [float(t.n_frames) for t in tasks]
    from ..decode import open_video

    out = []
    for t in tasks:
        try:
            with open_video(t.path, backend=decoder, modality=modality) as src:
                out.append(float(src.info.duration) if math.isfinite(src.info.duration) else 0.0)
        except Exception:  # an unreadable video costs nothing to (fail to) extract
            out.append(0.0)
    return out


def load_tasks(cfg: ExtractConfig):
    """Manifest entries as ``VideoTask`` s (``limit`` applied), in manifest order."""
    from ..manifest import read_manifest
    from .._stream import VideoTask

    if not cfg.manifest:
        from ..errors import ExtractError

        raise ExtractError("no manifest given: set manifest in the config or pass --manifest")
    entries = read_manifest(cfg.manifest, root=cfg.root, fmt=cfg.manifest_format)
    if cfg.limit is not None:
        entries = entries[: cfg.limit]
    return [
        VideoTask(
            key=i,
            video_id=e.video_id,
            path=os.path.abspath(e.path),
            labels=tuple(e.labels),
            offset=e.offset,
            n_frames=e.n_frames,
            split=cfg.split,
            domain=cfg.domain,
        )
        for i, e in enumerate(entries)
    ]
