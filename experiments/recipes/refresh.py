"""Backbone refresh: fine-tune part of a backbone on pixels with pseudo labels, re-extract, mark stale.

A CycDA stage can be configured (``refresh.enabled``) to:

1. fine-tune the last blocks of the video backbone (e.g. I3D ``Mixed_5b``/``Mixed_5c``, or
   ResNet ``layer4``) plus a linear classifier for a few epochs on clips of the target train
   videos, with the stage's video pseudo labels as targets (the rest of the network is
   frozen, BatchNorm statistics included);
2. save the backbone weights into the run folder (``refresh/<backbone>-cycle<k>.pt``);
3. re-extract every feature set of the run that this backbone produced with the new weights,
   by re-running the extraction job from the config recorded in the set's provenance (clip,
   frame and still sets alike: the job is the only path from pixels to rows), into new sets
   named ``<old name>@<new weights id[:12]>``;
4. declare the new weights current (``store.set_backbone_weights``): the old sets become
   stale and ``open_set`` refuses them, so nothing can silently mix the two versions.

Later stages read the new sets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from featbank.store.base import FeatureStore
from featbank.store.schema import BackboneSpec


@dataclass(frozen=True)
class RefreshConfig:
    """Fine-tuning of part of the backbone on pixels (off by default).

    Attributes:
        enabled: run the refresh.
        after: the stage whose video pseudo labels drive the fine-tuning (``stage2`` or ``stage4``).
        cycles: cycles in which to refresh (empty: every cycle).
        trainable: parameter-name prefixes that are fine-tuned (everything else is frozen).
        epochs: passes over the pseudo-labelled videos.
        batch_size: clips per step.
        lr: SGD learning rate.
        momentum: SGD momentum.
        clip_len: frames per training clip (the centre window of each video).
        max_videos: at most this many pseudo-labelled videos (0: all).
    """

    enabled: bool = False
    after: str = "stage2"
    cycles: tuple[int, ...] = ()
    trainable: tuple[str, ...] = ("Mixed_5b", "Mixed_5c")
    epochs: int = 2
    batch_size: int = 4
    lr: float = 1e-3
    momentum: float = 0.9
    clip_len: int = 16
    max_videos: int = 0

    def __post_init__(self) -> None:
        if self.after not in ("stage2", "stage4"):
            raise ValueError(f"refresh.after must be 'stage2' or 'stage4', got {self.after!r}")
        if not self.trainable:
            raise ValueError("refresh.trainable must name at least one parameter prefix (e.g. Mixed_5c, layer4)")


class RefreshError(RuntimeError):
    """The refresh cannot run (no producing backbone, no video files, nothing trainable)."""


def _job_config(info) -> Mapping[str, Any] | None:
    rec = dict(info.sampling).get("config")
    return rec if isinstance(rec, Mapping) else None


def _load_clips(store: FeatureStore, clip_set: str, video_ids: list[str], clip_len: int) -> torch.Tensor:
    """The centre window of ``clip_len`` frames of each video, decoded and preprocessed by the
    extraction job's own path with the set's recorded settings: ``(N, C, T, h, w)``."""
    from featbank.extract._stream import VideoTask
    from featbank.extract.job import ExtractConfig, read_windows, resolve_modality

    fs = store.open_set(clip_set)
    tasks = []
    for k, vid in enumerate(video_ids):
        path = fs.meta(vid).source
        if not path or not Path(path).exists():
            raise RefreshError(f"video {vid!r} of {clip_set!r}: source file {path!r} not found; the refresh needs pixels")
        tasks.append(VideoTask(key=k, video_id=vid, path=path))
    # one TSN segment = the centre window (short videos repeat their last frame)
    cfg = ExtractConfig.from_record(_job_config(fs.info)).replace(
        sampler="tsn", num_segments=1, clip_len=clip_len, views="center", keep_time=False, pool="avg")
    spec = BackboneSpec.from_dict(fs.info.spec)
    windows = read_windows(cfg, spec, cfg.sampling_for(spec), tasks, resolve_modality(cfg, spec))
    return torch.stack([windows[v][0, 0] for v in video_ids])  # N x (C, T, h, w) -> (N, C, T, h, w)


def finetune_backbone(model: nn.Module, clips: torch.Tensor, labels: torch.Tensor, num_classes: int,
                      cfg: RefreshConfig, seed: int = 0) -> dict[str, float]:
    """Fine-tune the ``cfg.trainable`` parameters of ``model`` (in place) with a linear classifier.

    Args:
        model: backbone with the featbank contract.
        clips: ``(N, C, T, h, w)`` preprocessed clips.
        labels: ``(N,)`` pseudo labels.
        num_classes: classifier width.
        cfg: refresh config.
        seed: seed of the classifier init and the batch order.

    Returns:
        ``{"loss_first", "loss_last", "trainable_params"}``.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for n, p in model.named_parameters() if n.startswith(tuple(cfg.trainable))]
    if not params:
        names = sorted({n.split(".")[0] for n, _ in model.named_parameters()})
        raise RefreshError(f"refresh.trainable {list(cfg.trainable)} matches no parameter; blocks are {names}")
    for p in params:
        p.requires_grad_(True)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = nn.Linear(model.num_features, num_classes)
    opt = torch.optim.SGD(params + list(head.parameters()), lr=cfg.lr, momentum=cfg.momentum)
    model.eval()  # BatchNorm keeps its statistics (tiny batches)
    losses = []
    for _ in range(cfg.epochs):
        for b in torch.randperm(len(clips), generator=gen).split(cfg.batch_size):
            feats = model.forward_head(model.forward_features(clips[b]), pre_logits=True)  # (B, C, T, h, w) -> (B, D)
            loss = nn.functional.cross_entropy(head(feats), labels[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    for p in model.parameters():
        p.requires_grad_(False)
    return {"loss_first": losses[0], "loss_last": losses[-1], "trainable_params": int(sum(p.numel() for p in params))}


def refresh_backbone(store: FeatureStore, set_names: Mapping[str, str], video_ids: list[str], labels: np.ndarray,
                     num_classes: int, cfg: RefreshConfig, out_dir: str | Path, *, tag: str, seed: int = 0,
                     progress: bool = False) -> dict[str, Any]:
    """Fine-tune, save, re-extract and mark stale (see module docstring).

    Args:
        store: the run's store (opened for writing).
        set_names: role -> feature-set name (``target_clips`` must be a job-made set of the backbone).
        video_ids: target train videos.
        labels: ``(V,)`` their pseudo labels (``-1`` = none).
        num_classes: number of classes.
        cfg: refresh config.
        out_dir: run folder; the weights go to ``out_dir/refresh/``.
        tag: file-name tag (e.g. ``cycle1``).
        seed: seed.
        progress: progress bars of the re-extraction.

    Returns:
        ``{"weights", "weights_id", "old_weights_id", "sets" (role -> new name), "stale", "seconds", ...}``.
    """
    from featbank.extract.backbones import create_backbone
    from featbank.extract.job import ExtractConfig, run_extraction

    t0 = time.perf_counter()
    clip_info = store.open_set(set_names["target_clips"]).info
    rec = _job_config(clip_info)
    if not clip_info.backbone or rec is None:
        raise RefreshError(f"feature set {clip_info.name!r} has no recorded extraction job; cannot refresh its backbone")
    backbone, old_weights = clip_info.backbone, rec.get("weights")
    keep = np.flatnonzero(labels >= 0)
    if cfg.max_videos:
        keep = keep[: cfg.max_videos]
    if len(keep) == 0:
        raise RefreshError("no pseudo-labelled video to fine-tune on")
    with torch.random.fork_rng():
        model = create_backbone(backbone, weights=None if old_weights in (None, "random") else old_weights)
        clips = _load_clips(store, clip_info.name, [video_ids[i] for i in keep], cfg.clip_len)
        stats = finetune_backbone(model, clips, torch.from_numpy(labels[keep]), num_classes, cfg, seed)
    wdir = Path(out_dir) / "refresh"
    wdir.mkdir(parents=True, exist_ok=True)
    wpath = (wdir / f"{backbone}-{tag}.pt").resolve()
    torch.save(model.state_dict(), wpath)
    new_model = create_backbone(backbone, weights=str(wpath)).eval()
    new_id = new_model.spec.weights_id
    new_sets: dict[str, str] = {}
    for role, name in set_names.items():
        info = store.open_set(name, allow_stale=True).info  # goes stale once the first re-extraction starts
        if info.backbone != backbone:
            new_sets[role] = name  # produced by another backbone: untouched
            continue
        new_name = f"{name.split('@')[0]}@{new_id[:12]}"
        job = _job_config(info)
        if job is None:
            raise RefreshError(f"feature set {name!r} was produced by {backbone!r} but records no extraction job, "
                               "so it cannot be re-extracted")
        ecfg = ExtractConfig.from_record(job).replace(weights=str(wpath), feature_set=new_name, verify=0)
        summary = run_extraction(ecfg, progress=progress, store=store)
        if summary.failures:
            raise RefreshError(f"re-extraction of {name!r} failed for {len(summary.failures)} videos: "
                               f"{summary.failures[:3]}")
        new_sets[role] = new_name
    stale = store.set_backbone_weights(backbone, new_id)
    return {"backbone": backbone, "weights": str(wpath), "weights_id": new_id, "old_weights_id": clip_info.weights_id,
            "sets": new_sets, "stale": stale, "videos": int(len(keep)), **stats,
            "seconds": time.perf_counter() - t0}
