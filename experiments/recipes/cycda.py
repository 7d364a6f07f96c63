"""CycDA on cached features: the complete cycle (image -> video domain adaptation).

The recipe reads like the paper's algorithm box::

    source_only = image model on the labelled source only                    (the baseline)
    image = stage1_spatial_alignment(data)          new image model: source CE + DANN (source 0, target 1)
    frames_pl = pseudo_label_frames(image)          frame_v2 over >= 8 frames per target video
    video, video_pl = stage2_video_model(frames_pl) CE on target pseudo labels; hands on per-class top-k
    for cycle in 1..N:
        image = stage3_class_aware_alignment(video_pl)   NEW image model: source CE + contrastive
        frames_pl = pseudo_label_frames(image)
        video, video_pl = stage4_video_model(frames_pl)  its labels feed the next cycle's stage 3

Modules: ``cycda_config`` (settings), ``cycda_data`` (the five feature sets through
``featbank.store.dataset``), ``cycda_sampler`` (TSN frame draws, positives/negatives),
``cycda_stages`` (each stage, trained by ``featbank.experiments.fit.fit``), ``cycda_plot``.

Every stage writes into ``out_dir/cycle<k>/<stage>/``: ``metrics.json``, ``metrics.jsonl`` (per
epoch, from the fit loop), the pseudo-label files in the published formats and a quality
report; the run writes ``config.yaml`` (resolved), ``metrics.json`` (all stages) and
``accuracy.png``. Metrics are taken at the final epoch of each stage: nothing is selected on
the target test split. Target test labels are only used for the reported metrics; target
train labels (when the store has them) only for transductive and pseudo-label accuracy.

Reproducible: the same config and seed give bit-identical metrics on CPU (seeded generators,
a fixed thread count, CPU kernels that are deterministic for a fixed thread count; no global
RNG state leaks out of a run). ``torch.use_deterministic_algorithms`` is not switched on here:
its first call imports torch's compiler stack (~45 s on a loaded 2-core machine) and changes no
CPU kernel this recipe uses; the rerun test pins the bit-identity.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from featbank.experiments.config import save_config, to_dict
from featbank.experiments.recipes.cycda_config import (  # noqa: F401  (public names of the recipe)
    CycdaConfig,
    FeatureSetsConfig,
    ImageStageConfig,
    PseudoLabelConfig,
    VideoStageConfig,
    effective,
    load_cycda_config,
)
from featbank.experiments.recipes.cycda_data import CycdaData, CycdaDataError, load_cycda_data  # noqa: F401
from featbank.experiments.recipes.cycda_io import stage_dir, write_json
from featbank.experiments.recipes.cycda_plot import fmt, format_table, plot_stages  # noqa: F401
from featbank.experiments.recipes.cycda_stages import (  # noqa: F401
    StageMetrics,
    align_labels,
    evaluate_image_model,
    evaluate_video_model,
    image_metrics,
    new_image_head,
    oracle,
    pseudo_label_frames,
    source_only,
    stage1_spatial_alignment,
    stage2_video_model,
    stage3_class_aware_alignment,
    stage4_video_model,
    train_image_model,
    video_metrics,
)
from featbank.experiments.recipes.refresh import refresh_backbone
from featbank.heads.pseudo_labels import VideoPseudoLabels

ROLES = ("source_images", "target_frames", "target_clips", "test_frames", "test_clips")


def _open_store(cfg: CycdaConfig, mode: str = "r"):
    from featbank.experiments.config import ConfigError
    from featbank.store import open_store

    if not cfg.features.store:
        raise ConfigError("features.store is empty: set it to a store path (features.store=PATH)")
    if not Path(cfg.features.store).exists():
        raise ConfigError(f"features.store: {cfg.features.store} does not exist")
    return open_store(cfg.features.store, mode)


def set_names(cfg: CycdaConfig) -> dict[str, str]:
    """Role -> feature-set name, from ``cfg.features``."""
    return {r: getattr(cfg.features, r) for r in ROLES}


def val_videos(cfg: CycdaConfig) -> tuple[str, ...]:
    """Video ids of ``features.val_manifest`` (path without extension, as the extraction job names them)."""
    if not cfg.features.val_manifest:
        return ()
    from featbank.experiments.config import ConfigError
    from featbank.experiments.data.synth_i2v import read_path_label

    p = Path(cfg.features.val_manifest)
    if not p.is_file():
        raise ConfigError(f"features.val_manifest: {p} does not exist")
    return tuple(str(Path(rel).with_suffix("")) for rel, _ in read_path_label(p))


def load_data(cfg: CycdaConfig, store=None, names: dict[str, str] | None = None) -> CycdaData:
    """Read the feature sets (``names``, default ``cfg.features``) from ``store`` or ``cfg.features.store``."""
    own = store is None
    store = _open_store(cfg) if own else store
    try:
        return load_cycda_data(store, **(names or set_names(cfg)), max_clips=cfg.features.max_clips,
                               val_videos=val_videos(cfg))
    finally:
        if own:
            store.close()


def run_cycle(cfg: CycdaConfig, out_dir: str | Path, *, store=None, data: CycdaData | None = None,
              progress: bool = False) -> dict[str, Any]:
    """Run source-only + ``cfg.cycles`` CycDA cycles and write everything into ``out_dir``.

    Args:
        cfg: the run config.
        out_dir: output folder (created; only files inside it are written).
        store: an open feature store (default: open ``cfg.features.store`` read-only).
        data: already loaded features (skips reading the store).
        progress: print one line per stage.

    Returns:
        ``{"source_only_acc", "final_acc", "final_mean_class_acc", "stages": [...], "oracle": [...],
        "seconds", "out_dir", ...}``; the same dict is written to ``out_dir/metrics.json``.
    """
    t_start = time.perf_counter()
    out = Path(out_dir)
    own = store is None and (data is None or cfg.refresh.enabled)
    if own:
        store = _open_store(cfg, "a" if cfg.refresh.enabled else "r")
    try:
        data = load_data(cfg, store) if data is None else data  # bad input fails before any output
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        threads_before = torch.get_num_threads()
        torch.set_num_threads(cfg.threads or threads_before)  # a fixed count: the same sums in the same order
        try:
            with torch.random.fork_rng():  # no global RNG state leaks out of the run
                return _run_cycle(cfg, out, store, data, progress, t_start)
        finally:
            torch.set_num_threads(threads_before)
    finally:
        if own:
            store.close()


def _run_cycle(cfg: CycdaConfig, out: Path, store, data: CycdaData, progress: bool,
               t_start: float) -> dict[str, Any]:
    names = set_names(cfg)
    pseudo, cfg2, cfg4 = effective(cfg)
    stages: list[StageMetrics] = []
    refreshes: list[dict[str, Any]] = []

    def maybe_refresh(after: str, cycle: int, video_pl: VideoPseudoLabels, d: Path) -> CycdaData:
        nonlocal names
        r = cfg.refresh
        if not r.enabled or r.after != after or (r.cycles and cycle not in r.cycles):
            return data
        labels = align_labels(video_pl, data.target_clips.video_ids)
        info = refresh_backbone(store, names, list(data.target_clips.video_ids), labels, data.num_classes, r, out,
                                tag=f"cycle{cycle}-{after}", seed=cfg.seed * 1000 + cycle, progress=progress)
        info.update(cycle=cycle, after=after)
        refreshes.append(info)
        write_json(d / "refresh.json", info)
        if progress:
            print(f"  [{cycle}] backbone refresh: {info['backbone']} -> weights {info['weights_id'][:12]} "
                  f"({info['seconds']:.1f}s); stale: {', '.join(info['stale'])}", flush=True)
        names = dict(info["sets"])
        return load_data(cfg, store, names)  # later stages read the re-extracted sets

    def record(name: str, cycle: int, metrics: dict[str, float], vpl: VideoPseudoLabels | None, t0: float,
               losses: dict[str, float], d: Path) -> None:
        m = StageMetrics(name, cycle, **metrics,
                         pl_acc=vpl.accuracy if vpl is not None else math.nan,
                         pl_coverage=vpl.coverage if vpl is not None else math.nan,
                         pl_classes=vpl.classes_present if vpl is not None else None,
                         seconds=time.perf_counter() - t0, losses=losses,
                         pl_confusion=vpl.confusion(data.num_classes).tolist() if vpl is not None else None)
        stages.append(m)
        write_json(d / "metrics.json", m.to_dict())
        if progress:
            print(f"  [{m.cycle}] {m.name:<28} test {m.target_acc:.3f}  mean-class {m.mean_class_acc:.3f}  "
                  f"transd. {fmt(m.transductive_acc)}  PL acc {fmt(m.pl_acc)}  cov {fmt(m.pl_coverage)}  "
                  f"classes {m.pl_classes if m.pl_classes is not None else '-'}  ({m.seconds:.1f}s)", flush=True)

    t0 = time.perf_counter()
    d0 = stage_dir(out, 0, "source_only")
    _, so = source_only(data, cfg.source_only, cfg.seed, d0)
    stages.append(so)
    write_json(d0 / "metrics.json", so.to_dict())
    if progress:
        print(f"  [0] {'source_only':<28} test {so.target_acc:.3f}  mean-class {so.mean_class_acc:.3f}  "
              f"transd. {fmt(so.transductive_acc)}  ({so.seconds:.1f}s)", flush=True)
    base = cfg.seed * 1000
    # stage 1: class-agnostic spatial alignment -> frame pseudo labels
    t0 = time.perf_counter()
    d1 = stage_dir(out, 1, "stage1_spatial_alignment")
    image, losses = stage1_spatial_alignment(data, cfg.stage1, base + 11, d1)
    frame_pl, _ = pseudo_label_frames(image, data.target_frames, pseudo, d1, "stage1")
    record("stage1_spatial_alignment", 1, image_metrics(image, data), frame_pl, t0, losses, d1)
    # stage 2: video model on the frame pseudo labels -> video pseudo labels
    t0 = time.perf_counter()
    d2 = stage_dir(out, 1, "stage2_video_model")
    video, video_pl, losses = stage2_video_model(data, frame_pl, cfg2, base + 12, d2)
    record("stage2_video_model", 1, video_metrics(video, data), video_pl, t0, losses, d2)
    data = maybe_refresh("stage2", 1, video_pl, d2)
    for cycle in range(1, cfg.cycles + 1):
        s = base + cycle * 10
        # stage 3: class-aware spatial alignment with the video pseudo labels (stage 2, or the last stage 4)
        t0 = time.perf_counter()
        d3 = stage_dir(out, cycle, "stage3_class_aware_alignment")
        image, losses = stage3_class_aware_alignment(data, video_pl, cfg.stage3, s + 3, image, d3)
        frame_pl, _ = pseudo_label_frames(image, data.target_frames, pseudo, d3, "stage3")
        record("stage3_class_aware_alignment", cycle, image_metrics(image, data), frame_pl, t0, losses, d3)
        # stage 4: video model on the new pseudo labels; its labels feed the next cycle's stage 3
        t0 = time.perf_counter()
        d4 = stage_dir(out, cycle, "stage4_video_model")
        video, video_pl, losses = stage4_video_model(data, frame_pl, cfg4, s + 4, d4)
        record("stage4_video_model", cycle, video_metrics(video, data), video_pl, t0, losses, d4)
        data = maybe_refresh("stage4", cycle, video_pl, d4)
    oracle_rows = oracle(data, cfg.source_only, cfg2, base + 99) if cfg.oracle else []

    final = stages[-1]
    result = {
        "name": cfg.name,
        "source_only_acc": so.target_acc,
        "source_only_mean_class_acc": so.mean_class_acc,
        "final_acc": final.target_acc,
        "final_mean_class_acc": final.mean_class_acc,
        "selection": "final epoch of every stage; nothing selected on the target test split",
        "stages": [m.to_dict() for m in stages],
        "oracle": oracle_rows,
        "refresh": refreshes,
        "feature_sets": names,
        "seconds": time.perf_counter() - t_start,
        "out_dir": str(out),
    }
    write_json(out / "metrics.json", result)
    if cfg.plot:
        plot_stages(result, out / "accuracy.png")
    return result


def config_dict(cfg: CycdaConfig) -> dict[str, Any]:
    """The resolved config as plain data."""
    return to_dict(cfg)
