"""``verify_extraction``: re-extract a random sample of committed videos and compare with the
stored rows, within a tolerance set by the stored dtype and the precision used."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from featbank.store.schema import VideoMeta, VideoRows

from .config import ExtractConfig
from .loop import iterate
from .report import VerifyReport
from .runtime import Pipeline, build_pipeline
from .tasks import load_tasks

# Relative tolerance of ``verify`` per stored dtype (rounding of the stored value), and the
# extra allowance when the features were computed in bf16/fp16 (either run may differ from fp32
# by the precision's rounding).
VERIFY_RTOL = {"float32": 1e-4, "float16": 2e-3, "bfloat16": 1.6e-2}
VERIFY_BF16_RTOL = 5e-2


def _open_store(path: str, mode: str, fsync: bool = False):
    from featbank.store import open_store

    return open_store(path, mode, fsync=fsync)


def _manifest_tasks_by_id(cfg: ExtractConfig) -> dict[str, Any]:
    """The config's manifest entries by video id ({} when the manifest is gone)."""
    if not cfg.manifest or not os.path.exists(cfg.manifest):
        return {}
    try:
        return {t.video_id: t for t in load_tasks(cfg.replace(limit=None))}
    except Exception:  # a manifest edited since the run: fall back to the stored sources
        return {}


def verify_tolerance(dtype: str, scale: float, low_precision: bool) -> float:
    """Largest acceptable abs difference for values of magnitude ``scale`` stored as ``dtype``."""
    rtol = VERIFY_RTOL[dtype] + (VERIFY_BF16_RTOL if low_precision else 0.0)
    return rtol * max(1.0, scale)


def verify_extraction(
    store: Any,
    set_name: str,
    n: int,
    *,
    seed: int = 0,
    cfg: ExtractConfig | None = None,
    pipe: Pipeline | None = None,
) -> VerifyReport:
    """Re-extract ``n`` random committed videos of a set and compare with the stored rows.

    Args:
        store: an open ``FeatureStore`` or a store path.
        set_name: the feature set.
        n: number of videos (all when fewer are committed).
        seed: sample seed.
        cfg: the job's config (default: the resolved config recorded in the set's provenance).
        pipe: a built pipeline to reuse (the job passes its own).

    Returns:
        A ``VerifyReport``; ``ok`` is False above the dtype's tolerance.
    """
    from .._stream import VideoTask

    own = isinstance(store, (str, os.PathLike))
    fstore = _open_store(os.fspath(store), "r") if own else store
    try:
        fs = fstore.open_set(set_name, allow_stale=True)
        if cfg is None:
            cfg = ExtractConfig.from_record(fs.info.sampling.get("config", {}))
        if pipe is None:
            pipe = build_pipeline(cfg)
        ids = fs.video_ids()
        rng = np.random.default_rng(seed)
        pick = sorted(rng.choice(len(ids), size=min(n, len(ids)), replace=False).tolist()) if ids else []
        listed = _manifest_tasks_by_id(cfg)  # keeps manifest offsets (mmaction segments)
        tasks = []
        for k, i in enumerate(pick):
            meta = fs.meta(ids[i])
            base = listed.get(meta.video_id) or VideoTask(key=k, video_id=meta.video_id, path=meta.source)
            tasks.append(dataclasses.replace(base, key=k, labels=meta.labels, split=meta.split, domain=meta.domain))
        report = VerifyReport(set_name, [t.video_id for t in tasks], 0.0, 0.0)
        if pipe.spec.weights_id != fs.info.weights_id:
            report.failures.append(("*", "weights", f"set was extracted with weights {fs.info.weights_id!r}, "
                                    f"the rebuilt backbone has {pipe.spec.weights_id!r}"))
            return report
        scale = 0.0

        def on_rows(task, rows: VideoRows, meta: VideoMeta) -> None:
            nonlocal scale
            stored = fs.read(task.video_id)
            if stored.feats.shape != rows.feats.shape:
                report.failures.append((task.video_id, "shape", f"stored {stored.feats.shape} vs re-extracted {rows.feats.shape}"))
                return
            a = np.asarray(stored.feats, np.float64)
            b = np.asarray(rows.feats, np.float64)
            diff = float(np.abs(a - b).max()) if a.size else 0.0
            if not (np.array_equal(stored.starts, rows.starts) and np.array_equal(stored.frame_idx, rows.frame_idx)):
                report.failures.append((task.video_id, "time_grid", "start times or frame indices differ"))
            report.per_video[task.video_id] = diff
            report.max_abs_diff = max(report.max_abs_diff, diff)
            scale = max(scale, float(np.abs(a).max()) if a.size else 0.0)

        def on_failure(task, kind: str, message: str) -> None:
            report.failures.append((task.video_id, kind, message))

        if tasks:
            iterate(cfg, pipe, tasks, on_rows, on_failure, workers=min(cfg.workers, 1))
        stored_precision = dict(fs.info.sampling).get("precision", "fp32")
        low = pipe.precision != "fp32" or stored_precision not in ("fp32", "auto")
        report.tolerance = verify_tolerance(fs.info.dtype, scale, low)
        return report
    finally:
        if own:
            fstore.close()
