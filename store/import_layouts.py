"""Import per-time-step features from the layouts temporal-detection code writes.

* **Coarse-Fine** (``extract_fineFEAT.py`` of the released Coarse-Fine Networks): one folder per
  layer (``layer1 .. layer4``, ``conv5``), one ``torch.save`` file per video named by its id
  (no extension) holding ``(1, C, T, H, W)`` or ``(C, T, H, W)``. Each layer becomes its own
  feature set ``PREFIX/LAYER`` with one row per time step: ``(C, H, W)`` maps, or ``(C,)``
  vectors with ``pool="avg"``.
* **npy per video** ``(T, D)``: a folder of ``VIDEO_ID.npy`` files; each row is one time step
  (``row_seconds`` apart).

Time stamps: row ``i`` spans ``[i * row_seconds, (i + 1) * row_seconds)`` (Coarse-Fine:
stride 10 frames at 24 fps, ``row_seconds = 10 / 24``). Files are read one at a time (a
video's rows are the most held in memory) and stored as float16 by default.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .errors import StoreError
from .schema import FeatureSetInfo, VideoMeta, VideoRows

COARSE_FINE_LAYERS = ("layer1", "layer2", "layer3", "layer4", "conv5")


class LayoutError(StoreError):
    """A source folder does not have the expected layout (the message names the file)."""


def _load_torch(path: Path):
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise LayoutError(f"{path}: not a torch tensor file ({type(e).__name__}: {e})") from None


def _as_steps(arr: np.ndarray, path: Path, pool: str) -> np.ndarray:
    """``(1, C, T, H, W)`` / ``(C, T, H, W)`` / ``(C, T)`` -> ``(T, C, H, W)`` or pooled ``(T, C)``."""
    a = np.asarray(arr)
    if a.ndim in (3, 5) and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 4:  # (C, T, H, W)
        a = np.moveaxis(a, 1, 0)  # (T, C, H, W)
        return a.mean(axis=(2, 3)) if pool == "avg" else a
    if a.ndim == 2:  # (C, T)
        return a.T
    raise LayoutError(f"{path}: tensor of shape {tuple(np.asarray(arr).shape)}; expected (1, C, T, H, W), "
                      "(C, T, H, W) or (C, T)")


def _write(store, name: str, items: Sequence[tuple[str, np.ndarray]], *, row_seconds: float, dtype: str,
           source: str, splits: Mapping[str, str] | None, labels: Mapping[str, Sequence[int]] | None,
           extra: Mapping) -> int:
    if not items:
        raise LayoutError(f"{source}: no videos found")
    shapes = {a.shape[1:] for _, a in items}
    if len(shapes) != 1:
        raise LayoutError(f"{source}: videos disagree on the row shape ({sorted(shapes)})")
    info = FeatureSetInfo(name=name, row_shape=tuple(int(s) for s in shapes.pop()), dtype=dtype, level="frame",
                          sampling={"row_seconds": row_seconds, "imported_from": source}, extra=dict(extra))
    fs = store.create_set(info)
    np_dtype = np.float16 if dtype == "float16" else np.float32
    for vid, a in items:
        n = len(a)
        starts = np.arange(n, dtype=np.float64) * row_seconds
        meta = VideoMeta(vid, labels=tuple((labels or {}).get(vid, ())), split=(splits or {}).get(vid, ""))
        fs.write_video(VideoRows(a.astype(np_dtype), starts, starts + row_seconds), meta)
    return len(items)


def import_coarse_fine(store, src_dir: str | os.PathLike, prefix: str, *, layers: Sequence[str] = COARSE_FINE_LAYERS,
                       row_seconds: float = 10 / 24, pool: str = "none", dtype: str = "float16",
                       splits: Mapping[str, str] | None = None,
                       labels: Mapping[str, Sequence[int]] | None = None) -> dict[str, int]:
    """Import Coarse-Fine's ``{layer}/{video_id}`` tensors: one feature set ``PREFIX/LAYER`` per layer.

    Args:
        store: a store opened for writing.
        src_dir: the folder holding one sub-folder per layer.
        prefix: feature-set name prefix.
        layers: the layer folders to import (all must exist).
        row_seconds: seconds between time steps.
        pool: ``none`` keeps ``(C, H, W)`` maps per step, ``avg`` stores ``(C,)`` vectors.
        dtype: stored dtype.
        splits / labels: optional metadata by video id.

    Returns:
        ``{feature_set: videos imported}``.
    """
    if pool not in ("none", "avg"):
        raise LayoutError(f"pool must be 'none' or 'avg', got {pool!r}")
    src = Path(src_dir)
    missing = [layer for layer in layers if not (src / layer).is_dir()]
    if missing:
        raise LayoutError(f"{src}: layer folder(s) {missing} not found (Coarse-Fine writes {list(COARSE_FINE_LAYERS)})")
    out = {}
    ids_first: list[str] | None = None
    for layer in layers:
        files = sorted(p for p in (src / layer).iterdir() if p.is_file())
        ids = [p.name for p in files]
        if ids_first is None:
            ids_first = ids
        elif ids != ids_first:
            diff = sorted(set(ids) ^ set(ids_first))[:3]
            raise LayoutError(f"{src / layer}: holds other videos than {src / layers[0]} (e.g. {diff})")
        items = []
        for p in files:
            t = _load_torch(p)
            arr = t.float().numpy() if hasattr(t, "numpy") else np.asarray(t)
            items.append((p.name, _as_steps(arr, p, pool)))
        name = f"{prefix}/{layer}"
        out[name] = _write(store, name, items, row_seconds=row_seconds, dtype=dtype, source=str(src / layer),
                           splits=splits, labels=labels, extra={"layout": "coarse-fine", "layer": layer, "pool": pool})
    return out


def import_npy_sequences(store, src_dir: str | os.PathLike, name: str, *, row_seconds: float = 1.0,
                         dtype: str = "float16", splits: Mapping[str, str] | None = None,
                         labels: Mapping[str, Sequence[int]] | None = None) -> int:
    """Import ``VIDEO_ID.npy`` files of shape ``(T, D)`` (one row per time step) into ``name``.

    Video ids are the paths below ``src_dir`` without ``.npy``. A file of another rank is
    refused naming it.
    """
    src = Path(src_dir)
    if not src.is_dir():
        raise LayoutError(f"npy source {src} is not a folder")
    items = []
    for p in sorted(src.rglob("*.npy")):
        a = np.load(p, mmap_mode="r")
        if a.ndim != 2:
            raise LayoutError(f"{p}: shape {a.shape}; expected (T, D) (one row per time step)")
        if not np.isfinite(np.asarray(a, dtype=np.float32)).all():
            raise LayoutError(f"{p}: holds NaN or Inf values")
        items.append((p.relative_to(src).with_suffix("").as_posix(), np.asarray(a)))
    if not math.isfinite(row_seconds) or row_seconds <= 0:
        raise LayoutError(f"row_seconds must be a positive number, got {row_seconds}")
    return _write(store, name, items, row_seconds=row_seconds, dtype=dtype, source=str(src), splits=splits,
                  labels=labels, extra={"layout": "npy-sequences"})
