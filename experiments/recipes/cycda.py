"""CycDA on cached features: the complete cycle (image -> video domain adaptation).

The recipe reads like the paper's algorithm box::

    image = stage1_spatial_alignment(data, cfg.stage1)             # source CE + DANN (source 0, target 1)
    for cycle in 1..N:
        frames_pl = pseudo_label_frames(image, data, cfg.pseudo)     # frame_v2: frame -> video labels
        video, video_pl = stage2_video_model(data, frames_pl, cfg.stage2)   # CE on target pseudo labels
        image = stage3_class_aware_alignment(image, data, video_pl, cfg.stage3)  # source CE + contrastive
        frames_pl = pseudo_label_frames(image, data, cfg.pseudo)
        video, video_pl = stage4_video_model(data, frames_pl, cfg.stage4)
        (cycle > 1 starts again at stage 1, continuing from the latest image model)

Every stage writes into ``out_dir/cycle<k>/<stage>/``: ``metrics.json``, the pseudo-label
files in the published formats and a quality report; the run writes ``config.yaml``
(resolved), ``metrics.json`` (all stages) and ``accuracy.png``. Metrics are taken at the
final epoch of each stage: nothing is selected on the target test split. Target test
labels are only used for the reported metrics; target train labels (when the store has
them) only for pseudo-label accuracy.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from featbank.experiments.config import load_config, save_config, to_dict
from featbank.experiments.recipes.cycda_data import CycdaData, PaddedClips, RowSet, load_cycda_data
from featbank.experiments.recipes.refresh import RefreshConfig, refresh_backbone
from featbank.heads.adaptation import DomainAdversarialLoss, DomainDiscriminator, grl_coeff
from featbank.heads.cycda import ClassAwareContrastiveLoss, CycdaImageHead, CycdaVideoHead
from featbank.heads.memory import SourceMemoryBank
from featbank.heads.metrics import mean_class_accuracy, top1_accuracy
from featbank.heads.pseudo_labels import (
    FramePredictions,
    VideoPseudoLabels,
    apply_rule,
    pseudo_label_arrays,
    quality_report,
    video_pseudo_labels_from_probs,
    write_frame_ps,
    write_vid_ps,
)

# ---- config ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureSetsConfig:
    """Where the features come from: a store and five feature-set names.

    Attributes:
        store: path of the Zarr store (unused when ``run_cycle`` is given a store object).
        source_images: labelled source stills (one or more rows per image).
        target_frames: frame-level rows of the unlabelled target train videos.
        target_clips: clip-level rows of the target train videos (video model input).
        test_frames: frame-level rows of the labelled target test videos.
        test_clips: clip-level rows of the target test videos.
        max_clips: clips per video fed to the video model (longer videos are subsampled uniformly).
    """

    store: str = ""
    source_images: str = "source/image"
    target_frames: str = "target_train/frame"
    target_clips: str = "target_train/clip"
    test_frames: str = "target_test/frame"
    test_clips: str = "target_test/clip"
    max_clips: int = 32


@dataclass(frozen=True)
class ImageStageConfig:
    """Training of the image model (stages 1 and 3, and the source-only baseline).

    Attributes:
        epochs: passes over the larger of the two domains.
        batch_size: rows per domain per step.
        optimizer: ``sgd`` (published: lr 1e-3, momentum 0.9) or ``adam``.
        lr: learning rate.
        momentum: SGD momentum.
        weight_decay: L2 penalty.
        adv_weight: weight of the domain-adversarial loss (stage 1).
        contrastive_weight: weight of the class-aware contrastive loss (stage 3).
        temperature: temperature of the contrastive loss (0.05 published).
        embed_dim: embedding width (128 published).
        hidden: classifier MLP width (128 published).
        dropout: dropout before the classifier.
    """

    epochs: int = 10
    batch_size: int = 128
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    adv_weight: float = 1.0
    contrastive_weight: float = 1.0
    temperature: float = 0.05
    embed_dim: int = 128
    hidden: int = 128
    dropout: float = 0.0


@dataclass(frozen=True)
class VideoStageConfig:
    """Training of the video model on target pseudo labels (stages 2 and 4).

    Attributes:
        epochs: passes over the pseudo-labelled videos.
        batch_size: videos per step.
        optimizer: ``sgd`` or ``adam``.
        lr: learning rate.
        momentum: SGD momentum.
        weight_decay: L2 penalty.
        pooling: ``mean`` or ``attention`` over the clips of a video.
        hidden: clip embedding width.
        dropout: dropout on the pooled embedding.
        keep_fraction: fraction of target videos (most confident first) whose video-model
            prediction is passed on as a pseudo label.
    """

    epochs: int = 20
    batch_size: int = 64
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    pooling: Literal["mean", "attention"] = "mean"
    hidden: int = 256
    dropout: float = 0.5
    keep_fraction: float = 1.0


@dataclass(frozen=True)
class PseudoLabelConfig:
    """Frame -> video pseudo labels.

    Attributes:
        rule: ``frame_v2`` (published), ``frame_v2_balanced`` or ``vid``.
        keep_fraction: fraction ``p`` of videos that keep at least one frame.
        percentiles: confidence percentiles of the quality report.
    """

    rule: Literal["frame_v2", "frame_v2_balanced", "vid"] = "frame_v2"
    keep_fraction: float = 0.8
    percentiles: tuple[float, ...] = (100.0, 80.0, 60.0, 40.0, 20.0)


@dataclass(frozen=True)
class CycdaConfig:
    """A complete CycDA run (``featbank run CONFIG.yaml`` with ``recipe: cycda``).

    Attributes:
        recipe: must be ``cycda``.
        name: run name (used in plots).
        seed: seed of every stage (each stage derives its own).
        cycles: number of 1->2->3->4 cycles.
        threads: torch CPU threads (0 leaves torch's default).
        features: the store and feature sets.
        source_only: training of the source-only baseline (adv_weight ignored).
        stage1: class-agnostic spatial alignment.
        pseudo: frame -> video pseudo labels.
        stage2: first video model.
        stage3: class-aware spatial alignment.
        stage4: second video model.
        refresh: optional backbone refresh after stage 2 or 4 (fine-tune on pixels, re-extract).
        plot: write ``accuracy.png``.
    """

    recipe: Literal["cycda"] = "cycda"
    name: str = "cycda"
    seed: int = 0
    cycles: int = 1
    threads: int = 0
    features: FeatureSetsConfig = field(default_factory=FeatureSetsConfig)
    source_only: ImageStageConfig = field(default_factory=ImageStageConfig)
    stage1: ImageStageConfig = field(default_factory=ImageStageConfig)
    pseudo: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    stage2: VideoStageConfig = field(default_factory=VideoStageConfig)
    stage3: ImageStageConfig = field(default_factory=lambda: ImageStageConfig(adv_weight=0.0))
    stage4: VideoStageConfig = field(default_factory=VideoStageConfig)
    refresh: RefreshConfig = field(default_factory=RefreshConfig)
    plot: bool = True

    def __post_init__(self) -> None:
        if self.cycles < 1:
            raise ValueError(f"cycles must be >= 1, got {self.cycles}")


def load_cycda_config(path: str | Path | None, overrides: tuple[str, ...] | list[str] = ()) -> CycdaConfig:
    """Load a :class:`CycdaConfig` from YAML plus ``key=value`` overrides."""
    return load_config(CycdaConfig, path, overrides)


# ---- metrics ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageMetrics:
    """What every stage reports (final epoch; no selection on the test split)."""

    name: str
    cycle: int
    target_acc: float
    mean_class_acc: float
    pl_acc: float
    pl_coverage: float
    seconds: float
    losses: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _nan_to_none(dict(vars(self)))  # NaN -> null: strict JSON


def _write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return x


# ---- training helpers -------------------------------------------------------------------------

EVAL_BATCH = 16384


def _optimizer(params, cfg: ImageStageConfig | VideoStageConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _batches(n: int, batch_size: int, steps: int, gen: torch.Generator) -> torch.Tensor:
    """``(steps, batch_size)`` row indices: concatenated random permutations of ``range(n)``."""
    need = steps * batch_size
    perms = [torch.randperm(n, generator=gen) for _ in range(math.ceil(need / n))]
    return torch.cat(perms)[:need].view(steps, batch_size)


@torch.no_grad()
def _predict_rows(head: CycdaImageHead, rows: RowSet) -> np.ndarray:
    """Logits of every row: ``(R, D) -> (R, C)``."""
    head.eval()
    out = [head(rows.feats[i:i + EVAL_BATCH].float()).logits for i in range(0, len(rows.feats), EVAL_BATCH)]
    return torch.cat(out).numpy() if out else np.zeros((0, head.num_classes), np.float32)


@torch.no_grad()
def _predict_videos(head: CycdaVideoHead, clips: PaddedClips) -> np.ndarray:
    """Logits of every video: ``(V, T, D) -> (V, C)``."""
    head.eval()
    out = [head(clips.feats[i:i + 1024].float(), clips.mask[i:i + 1024]).logits
           for i in range(0, len(clips.feats), 1024)]
    return torch.cat(out).numpy()


def _frame_predictions(head: CycdaImageHead, rows: RowSet) -> FramePredictions:
    return FramePredictions.from_logits(_predict_rows(head, rows), rows.offsets, rows.video_ids, rows.labels)


def evaluate_image_model(head: CycdaImageHead, test_frames: RowSet, num_classes: int) -> tuple[float, float]:
    """Video-level top-1 and mean-class accuracy of the image model: mean softmax over a video's frames."""
    fp = _frame_predictions(head, test_frames)
    probs = apply_rule("vid", fp).probs  # (V, C)
    return (top1_accuracy(probs, test_frames.labels),
            mean_class_accuracy(probs.argmax(1), test_frames.labels, num_classes))


def evaluate_video_model(head: CycdaVideoHead, test_clips: PaddedClips, num_classes: int) -> tuple[float, float]:
    """Top-1 and mean-class accuracy of the video model on the test videos."""
    logits = _predict_videos(head, test_clips)
    return (top1_accuracy(logits, test_clips.labels),
            mean_class_accuracy(logits.argmax(1), test_clips.labels, num_classes))


def _new_image_head(data: CycdaData, cfg: ImageStageConfig, seed: int) -> CycdaImageHead:
    torch.manual_seed(seed)
    return CycdaImageHead(data.source.dim, data.num_classes, embed_dim=cfg.embed_dim, hidden=cfg.hidden,
                          dropout=cfg.dropout)


def _train_image_model(head: CycdaImageHead, data: CycdaData, cfg: ImageStageConfig, seed: int, *,
                       adversarial: bool, frame_labels: np.ndarray | None = None) -> dict[str, float]:
    """Source CE (+ DANN when ``adversarial``) (+ class-aware contrastive when ``frame_labels`` given).

    ``frame_labels``: ``(R_t,)`` pseudo label of every target frame (``-1`` = none).
    Returns the mean of each loss over the last epoch.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    src, tgt = data.source, data.target_frames
    ys = torch.from_numpy(src.row_labels)
    n_s, n_t = len(src.feats), len(tgt.feats)
    uses_target = (adversarial and cfg.adv_weight > 0) or (frame_labels is not None and cfg.contrastive_weight > 0)
    steps_per_epoch = max(1, math.ceil((max(n_s, n_t) if uses_target else n_s) / cfg.batch_size))
    total = steps_per_epoch * cfg.epochs
    idx_s = _batches(n_s, cfg.batch_size, total, gen)
    idx_t = _batches(n_t, cfg.batch_size, total, gen)
    params = list(head.parameters())
    dann = None
    if adversarial and cfg.adv_weight > 0:
        dann = DomainAdversarialLoss(DomainDiscriminator(cfg.embed_dim, cfg.hidden))
        params += list(dann.parameters())
    contrast, bank, bank_labels, yt = None, None, None, None
    if frame_labels is not None and cfg.contrastive_weight > 0:
        contrast = ClassAwareContrastiveLoss(cfg.temperature)
        yt = torch.from_numpy(frame_labels)
        bank = SourceMemoryBank(n_s, cfg.embed_dim, ys)  # detached projected source features
        with torch.no_grad():
            for i in range(0, n_s, EVAL_BATCH):
                sl = torch.arange(i, min(n_s, i + EVAL_BATCH))
                bank.update(sl, head.embed(src.feats[sl].float()))  # (B, D) -> (B, E)
        bank_labels = ys
    sampler = _PosNegSampler(bank_labels, data.num_classes, gen) if bank is not None else None
    opt = _optimizer(params, cfg)
    head.train()
    sums: dict[str, float] = {}
    for step in range(total):
        if step % steps_per_epoch == 0:
            sums = {}
        bs, bt = idx_s[step], idx_t[step]
        out_s = head(src.feats[bs].float())
        losses = head.loss(out_s, ys[bs])
        if dann is not None or contrast is not None:
            z_t = head.embed(tgt.feats[bt].float())  # (B, D) -> (B, E)
        if dann is not None:
            coeff = grl_coeff(step / max(1, total - 1))
            adv = dann(out_s.embed, z_t, coeff)
            losses["adv"] = cfg.adv_weight * adv.loss
            losses["disc_acc"] = adv.disc_acc
        if contrast is not None:
            bank.update(bs, out_s.embed)  # explicit memory update (detached), outside any forward
            lab = yt[bt]
            pos_i, neg_i = sampler.sample(lab)  # O(B) index draw (sample_pos_neg is O(B * N_s))
            losses["contrast"] = cfg.contrastive_weight * contrast(z_t, bank(pos_i), bank(neg_i), lab >= 0)
        loss = sum(v for k, v in losses.items() if k != "disc_acc")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
    n_last = total - steps_per_epoch * (cfg.epochs - 1)
    return {k: v / n_last for k, v in sums.items()}


class _PosNegSampler:
    """Draw, for each label, one source row of that class and one of another class (vectorised)."""

    def __init__(self, labels: torch.Tensor, num_classes: int, gen: torch.Generator) -> None:
        order = torch.argsort(labels, stable=True)
        self.sorted_rows = order
        counts = torch.bincount(labels, minlength=num_classes)
        self.starts = torch.cumsum(counts, 0) - counts
        self.counts = counts
        self.n = len(labels)
        self.gen = gen

    def sample(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B,)`` labels (``-1`` allowed) -> ``(B,)`` positive and negative source row indices."""
        lab = labels.clamp_min(0)
        cnt = self.counts[lab].clamp_min(1)
        r = torch.rand(len(lab), generator=self.gen)
        pos = self.sorted_rows[self.starts[lab] + (r * cnt).long().clamp_max(cnt - 1)]
        # negative: a uniform row among the rows of other classes (skip over the positive class block)
        n_other = (self.n - self.counts[lab]).clamp_min(1)
        k = (torch.rand(len(lab), generator=self.gen) * n_other).long().clamp_max(n_other - 1)
        k = torch.where(k >= self.starts[lab], k + self.counts[lab], k)
        neg = self.sorted_rows[k.clamp_max(self.n - 1)]
        return pos, neg


def _train_video_model(data: CycdaData, labels: np.ndarray, cfg: VideoStageConfig, seed: int) -> tuple[CycdaVideoHead, dict[str, float]]:
    """A fresh video model trained with CE on ``labels (V,)`` (pseudo labels, ``-1`` = none)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    clips = data.target_clips
    head = CycdaVideoHead(clips.dim, data.num_classes, hidden=cfg.hidden, pooling=cfg.pooling, dropout=cfg.dropout)
    keep = torch.from_numpy(np.flatnonzero(labels >= 0))
    y = torch.from_numpy(labels)
    opt = _optimizer(head.parameters(), cfg)
    last: dict[str, float] = {}
    if len(keep) == 0:
        return head, {"ce": math.nan}
    steps_per_epoch = max(1, math.ceil(len(keep) / cfg.batch_size))
    head.train()
    for epoch in range(cfg.epochs):
        perm = keep[torch.randperm(len(keep), generator=gen)]
        tot = 0.0
        for b in perm.split(cfg.batch_size):
            out = head(clips.feats[b].float(), clips.mask[b])
            loss = head.loss(out, y[b])["ce"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach())
        last = {"ce": tot / steps_per_epoch}
    return head, last


# ---- stages ----------------------------------------------------------------------------------


def _stage_dir(out_dir: Path, cycle: int, name: str) -> Path:
    d = out_dir / f"cycle{cycle}" / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def source_only(data: CycdaData, cfg: ImageStageConfig, seed: int) -> tuple[CycdaImageHead, StageMetrics]:
    """Baseline: the image model trained on the labelled source only, evaluated on the target test split."""
    t0 = time.perf_counter()
    head = _new_image_head(data, cfg, seed)
    losses = _train_image_model(head, data, cfg, seed, adversarial=False)
    acc, mca = evaluate_image_model(head, data.test_frames, data.num_classes)
    return head, StageMetrics("source_only", 0, acc, mca, math.nan, math.nan, time.perf_counter() - t0, losses)


def stage1_spatial_alignment(data: CycdaData, cfg: ImageStageConfig, seed: int,
                             head: CycdaImageHead | None = None) -> tuple[CycdaImageHead, dict[str, float]]:
    """Stage 1: class-agnostic spatial alignment (source CE + DANN through a GRL).

    Args:
        data: the run's features.
        cfg: stage config.
        seed: stage seed.
        head: image model to continue from (a new one when None); it is copied, not modified.

    Returns:
        ``(image_model, last-epoch losses)``.
    """
    head = _new_image_head(data, cfg, seed) if head is None else copy.deepcopy(head)
    losses = _train_image_model(head, data, cfg, seed, adversarial=True)
    return head, losses


def pseudo_label_frames(head: CycdaImageHead, rows: RowSet, cfg: PseudoLabelConfig, stage_dir: Path,
                        prefix: str) -> tuple[VideoPseudoLabels, dict[str, Any]]:
    """Frame -> video pseudo labels of the target train videos from the image model.

    Writes ``<prefix>_frame_ps.npy``, ``<prefix>_vid_ps.npy`` and ``<prefix>_quality.json``
    into ``stage_dir``.

    Returns:
        ``(video pseudo labels, quality report)``.
    """
    fp = _frame_predictions(head, rows)  # softmax applied once, here
    vpl = apply_rule(cfg.rule, fp, cfg.keep_fraction)
    write_frame_ps(stage_dir / f"{prefix}_frame_ps.npy", fp)
    write_vid_ps(stage_dir / f"{prefix}_vid_ps.npy", vpl)
    report = _nan_to_none(quality_report(fp, vpl, cfg.percentiles))
    _write_json(stage_dir / f"{prefix}_quality.json", report)
    return vpl, report


def _align(vpl: VideoPseudoLabels, video_ids: tuple[str, ...]) -> np.ndarray:
    return pseudo_label_arrays(vpl, video_ids)


def stage2_video_model(data: CycdaData, frame_pl: VideoPseudoLabels, cfg: VideoStageConfig, seed: int,
                       stage_dir: Path, prefix: str = "stage2") -> tuple[CycdaVideoHead, VideoPseudoLabels, dict[str, float]]:
    """Stage 2: spatio-temporal learning; the video model trained on target pseudo labels only.

    Args:
        data: the run's features.
        frame_pl: video pseudo labels from the image model (frame -> video rule).
        cfg: stage config.
        seed: stage seed.
        stage_dir: where ``<prefix>_vid_ps.npy`` / ``<prefix>_quality.json`` are written.
        prefix: file prefix.

    Returns:
        ``(video model, its video pseudo labels on the target train videos, last-epoch losses)``.
    """
    labels = _align(frame_pl, data.target_clips.video_ids)
    head, losses = _train_video_model(data, labels, cfg, seed)
    logits = _predict_videos(head, data.target_clips)  # (V, C)
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
    vpl = video_pseudo_labels_from_probs(probs, data.target_clips.video_ids, data.target_clips.labels,
                                         cfg.keep_fraction)
    write_vid_ps(stage_dir / f"{prefix}_vid_ps.npy", vpl)
    _write_json(stage_dir / f"{prefix}_quality.json", _nan_to_none({"coverage": vpl.coverage, "accuracy": vpl.accuracy,
                                                                     "trained_on": int((labels >= 0).sum())}))
    return head, vpl, losses


def stage3_class_aware_alignment(head: CycdaImageHead, data: CycdaData, video_pl: VideoPseudoLabels,
                                 cfg: ImageStageConfig, seed: int) -> tuple[CycdaImageHead, dict[str, float]]:
    """Stage 3: class-aware spatial alignment (source CE + contrastive to a source memory bank).

    Each target frame carries its video's pseudo label from the video model; the image
    model (a copy of ``head``) pulls it to a same-class source embedding and away from
    another class's.

    Returns:
        ``(image_model, last-epoch losses)``.
    """
    head = copy.deepcopy(head)
    vlab = _align(video_pl, data.target_frames.video_ids)  # (V_t,)
    frame_labels = np.repeat(vlab, data.target_frames.n_rows)  # (R_t,)
    losses = _train_image_model(head, data, cfg, seed, adversarial=cfg.adv_weight > 0, frame_labels=frame_labels)
    return head, losses


def stage4_video_model(data: CycdaData, frame_pl: VideoPseudoLabels, cfg: VideoStageConfig, seed: int,
                       stage_dir: Path) -> tuple[CycdaVideoHead, VideoPseudoLabels, dict[str, float]]:
    """Stage 4: the video model retrained on the pseudo labels of the class-aware image model."""
    return stage2_video_model(data, frame_pl, cfg, seed, stage_dir, prefix="stage4")


# ---- the cycle -------------------------------------------------------------------------------


ROLES = ("source_images", "target_frames", "target_clips", "test_frames", "test_clips")


def _open_store(cfg: CycdaConfig, mode: str = "r"):
    from featbank.experiments.config import ConfigError
    from featbank.store import open_store

    if not cfg.features.store:
        raise ConfigError("features.store is empty: set it to a store path (features.store=PATH)")
    return open_store(cfg.features.store, mode)


def set_names(cfg: CycdaConfig) -> dict[str, str]:
    """Role -> feature-set name, from ``cfg.features``."""
    return {r: getattr(cfg.features, r) for r in ROLES}


def load_data(cfg: CycdaConfig, store=None, names: dict[str, str] | None = None) -> CycdaData:
    """Read the feature sets (``names``, default ``cfg.features``) from ``store`` or ``cfg.features.store``."""
    own = store is None
    store = _open_store(cfg) if own else store
    try:
        return load_cycda_data(store, **(names or set_names(cfg)), max_clips=cfg.features.max_clips)
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
        ``{"source_only_acc", "final_acc", "final_mean_class_acc", "stages": [...], "seconds", "out_dir"}``;
        the same dict is written to ``out_dir/metrics.json``.
    """
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    threads_before = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    own = store is None and (data is None or cfg.refresh.enabled)
    if own:
        store = _open_store(cfg, "a" if cfg.refresh.enabled else "r")
    try:
        return _run_cycle(cfg, out, store, data, progress, t_start)
    finally:
        torch.set_num_threads(threads_before)
        if own:
            store.close()


def _run_cycle(cfg: CycdaConfig, out: Path, store, data: CycdaData | None, progress: bool,
               t_start: float) -> dict[str, Any]:
    names = set_names(cfg)
    data = load_data(cfg, store, names) if data is None else data
    stages: list[StageMetrics] = []
    refreshes: list[dict[str, Any]] = []

    def maybe_refresh(after: str, cycle: int, video_pl: VideoPseudoLabels, d: Path) -> CycdaData:
        nonlocal names
        r = cfg.refresh
        if not r.enabled or r.after != after or (r.cycles and cycle not in r.cycles):
            return data
        labels = _align(video_pl, data.target_clips.video_ids)
        info = refresh_backbone(store, names, list(data.target_clips.video_ids), labels, data.num_classes, r, out,
                                tag=f"cycle{cycle}-{after}", seed=cfg.seed * 1000 + cycle, progress=progress)
        info.update(cycle=cycle, after=after)
        refreshes.append(info)
        _write_json(d / "refresh.json", info)
        if progress:
            print(f"  [{cycle}] backbone refresh: {info['backbone']} -> weights {info['weights_id'][:12]} "
                  f"({info['seconds']:.1f}s); stale: {', '.join(info['stale'])}", flush=True)
        names = dict(info["sets"])
        return load_data(cfg, store, names)  # later stages read the re-extracted sets

    def record(m: StageMetrics, d: Path | None) -> None:
        stages.append(m)
        if d is not None:
            _write_json(d / "metrics.json", m.to_dict())
        if progress:
            print(f"  [{m.cycle}] {m.name:<28} target acc {m.target_acc:.3f}  mean-class {m.mean_class_acc:.3f}  "
                  f"PL acc {_fmt(m.pl_acc)}  coverage {_fmt(m.pl_coverage)}  ({m.seconds:.1f}s)", flush=True)

    with torch.random.fork_rng():  # no global RNG state leaks out of the run
        t0 = time.perf_counter()
        _, so = source_only(data, cfg.source_only, cfg.seed)
        record(so, _stage_dir(out, 0, "source_only"))
        image: CycdaImageHead | None = None
        for cycle in range(1, cfg.cycles + 1):
            s = cfg.seed * 1000 + cycle * 10
            # stage 1: class-agnostic spatial alignment -> frame pseudo labels
            t0 = time.perf_counter()
            d1 = _stage_dir(out, cycle, "stage1_spatial_alignment")
            image, losses = stage1_spatial_alignment(data, cfg.stage1, s + 1, image)
            acc, mca = evaluate_image_model(image, data.test_frames, data.num_classes)
            frame_pl, _ = pseudo_label_frames(image, data.target_frames, cfg.pseudo, d1, "stage1")
            record(StageMetrics("stage1_spatial_alignment", cycle, acc, mca, frame_pl.accuracy, frame_pl.coverage,
                                time.perf_counter() - t0, losses), d1)
            # stage 2: video model on the frame pseudo labels -> video pseudo labels
            t0 = time.perf_counter()
            d2 = _stage_dir(out, cycle, "stage2_video_model")
            video, video_pl, losses = stage2_video_model(data, frame_pl, cfg.stage2, s + 2, d2)
            acc, mca = evaluate_video_model(video, data.test_clips, data.num_classes)
            record(StageMetrics("stage2_video_model", cycle, acc, mca, video_pl.accuracy, video_pl.coverage,
                                time.perf_counter() - t0, losses), d2)
            data = maybe_refresh("stage2", cycle, video_pl, d2)
            # stage 3: class-aware spatial alignment with the video pseudo labels
            t0 = time.perf_counter()
            d3 = _stage_dir(out, cycle, "stage3_class_aware_alignment")
            image, losses = stage3_class_aware_alignment(image, data, video_pl, cfg.stage3, s + 3)
            acc, mca = evaluate_image_model(image, data.test_frames, data.num_classes)
            frame_pl, _ = pseudo_label_frames(image, data.target_frames, cfg.pseudo, d3, "stage3")
            record(StageMetrics("stage3_class_aware_alignment", cycle, acc, mca, frame_pl.accuracy,
                                frame_pl.coverage, time.perf_counter() - t0, losses), d3)
            # stage 4: video model on the new pseudo labels
            t0 = time.perf_counter()
            d4 = _stage_dir(out, cycle, "stage4_video_model")
            video, video_pl, losses = stage4_video_model(data, frame_pl, cfg.stage4, s + 4, d4)
            acc, mca = evaluate_video_model(video, data.test_clips, data.num_classes)
            record(StageMetrics("stage4_video_model", cycle, acc, mca, video_pl.accuracy, video_pl.coverage,
                                time.perf_counter() - t0, losses), d4)
            data = maybe_refresh("stage4", cycle, video_pl, d4)

    final = stages[-1]
    result = {
        "name": cfg.name,
        "source_only_acc": so.target_acc,
        "source_only_mean_class_acc": so.mean_class_acc,
        "final_acc": final.target_acc,
        "final_mean_class_acc": final.mean_class_acc,
        "selection": "final epoch of every stage; nothing selected on the target test split",
        "stages": [m.to_dict() for m in stages],
        "refresh": refreshes,
        "feature_sets": names,
        "seconds": time.perf_counter() - t_start,
        "out_dir": str(out),
    }
    _write_json(out / "metrics.json", result)
    if cfg.plot:
        plot_stages(result, out / "accuracy.png")
    return result


def _fmt(x: float) -> str:
    return "  -  " if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def plot_stages(result: dict[str, Any], path: str | Path) -> Path:
    """PNG of target accuracy (and pseudo-label accuracy) across stages and cycles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = result["stages"]
    xs = list(range(len(stages)))
    names = [("src-only" if s["cycle"] == 0 else f"c{s['cycle']}:{s['name'].split('_')[0]}") for s in stages]
    acc = [s["target_acc"] for s in stages]
    pl = [np.nan if s["pl_acc"] is None else s["pl_acc"] for s in stages]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(xs) + 2), 3.6))
    ax.plot(xs, acc, "o-", label="target test top-1")
    ax.plot(xs, pl, "s--", label="pseudo-label accuracy")
    ax.axhline(result["source_only_acc"], color="gray", lw=0.8, ls=":", label="source only")
    ax.set_xticks(xs, names, rotation=30, ha="right")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy")
    ax.set_title(f"CycDA: {result.get('name', '')}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    p = Path(path)
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


def format_table(result: dict[str, Any]) -> str:
    """Plain-text table: source-only vs each stage (target accuracy, pseudo-label accuracy/coverage)."""
    lines = [f"{'cycle':>5}  {'stage':<30} {'target acc':>10} {'mean-class':>10} {'PL acc':>7} {'PL cov':>7}"]
    for s in result["stages"]:
        lines.append(f"{s['cycle']:>5}  {s['name']:<30} {s['target_acc']:>10.3f} {s['mean_class_acc']:>10.3f} "
                     f"{_fmt(s['pl_acc']):>7} {_fmt(s['pl_coverage']):>7}")
    return "\n".join(lines)


def config_dict(cfg: CycdaConfig) -> dict[str, Any]:
    """The resolved config as plain data."""
    return to_dict(cfg)
