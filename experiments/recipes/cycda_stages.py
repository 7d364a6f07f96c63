"""The stages of CycDA over cached features, each trained by the shared fit loop.

Every training function builds a fresh head from its seed, hands ``fit`` a ``batches`` and a
``step`` function, and returns the head and the final epoch's mean losses. Evaluation helpers
score an image model per video (mean softmax over its frames) and a video model per video.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featbank.experiments.fit import OptimConfig, balanced_weights, fit, minibatches
from featbank.experiments.recipes.cycda_config import ImageStageConfig, PseudoLabelConfig, VideoStageConfig
from featbank.experiments.recipes.cycda_data import CycdaData, PaddedSequences, RowSet
from featbank.experiments.recipes.cycda_sampler import (
    PosNegSampler,
    cycling_batches,
    inverse_frequency_weights,
    tsn_rows,
)
from featbank.heads.adaptation import DomainAdversarialLoss, DomainDiscriminator, grl_coeff
from featbank.heads.cycda import ClassAwareContrastiveLoss, CycdaImageHead, CycdaVideoHead, HeadOutput
from featbank.heads.memory import SourceMemoryBank
from featbank.heads.metrics import mean_class_accuracy, top1_accuracy
from featbank.heads.pseudo_labels import (
    FramePredictions,
    VideoPseudoLabels,
    apply_rule,
    pseudo_label_arrays,
    quality_report,
    video_pseudo_labels_from_probs,
    vid_rule,
    write_frame_ps,
    write_vid_ps,
)

EVAL_BATCH = 16384


@dataclass(frozen=True)
class StageMetrics:
    """What every stage reports (final epoch; nothing selected on the test split).

    ``target_acc`` / ``mean_class_acc``: held-out target test videos; ``transductive_acc``: the
    adaptation (target train) videos; ``val_acc``: the labelled validation list (if any);
    ``pl_*``: the pseudo labels the stage hands on (accuracy, coverage, classes present) and
    their confusion matrix (rows = truth, columns = pseudo label).
    """

    name: str
    cycle: int
    target_acc: float
    mean_class_acc: float
    transductive_acc: float
    val_acc: float
    pl_acc: float
    pl_coverage: float
    pl_classes: int | None
    seconds: float
    losses: dict[str, float] = field(default_factory=dict)
    pl_confusion: list[list[int]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return nan_to_none(dict(vars(self)))  # NaN -> null: strict JSON


def nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [nan_to_none(v) for v in x]
    return x


# ---- prediction and evaluation -----------------------------------------------------------------


@torch.no_grad()
def predict_rows(head: CycdaImageHead, feats: torch.Tensor) -> np.ndarray:
    """Logits of every row: ``(R, D) -> (R, C)``."""
    head.eval()
    out = [head(feats[i:i + EVAL_BATCH].float()).logits for i in range(0, len(feats), EVAL_BATCH)]
    return torch.cat(out).numpy() if out else np.zeros((0, head.num_classes), np.float32)


@torch.no_grad()
def predict_videos(head: CycdaVideoHead, clips: PaddedSequences) -> np.ndarray:
    """Logits of every video: ``(V, T, D) -> (V, C)``."""
    head.eval()
    out = [head(clips.feats[i:i + 1024].float(), clips.mask[i:i + 1024]).logits
           for i in range(0, len(clips.feats), 1024)]
    return torch.cat(out).numpy()


def frame_predictions(head: CycdaImageHead, rows: RowSet) -> FramePredictions:
    return FramePredictions.from_logits(predict_rows(head, rows.feats), rows.offsets, rows.video_ids, rows.labels)


def _scores(pred: np.ndarray, labels: np.ndarray, num_classes: int, mask: np.ndarray | None = None) -> tuple[float, float]:
    m = labels >= 0 if mask is None else (mask & (labels >= 0))
    if not m.any():
        return math.nan, math.nan
    return float((pred[m] == labels[m]).mean()), mean_class_accuracy(pred[m], labels[m], num_classes)


def image_video_preds(head: CycdaImageHead, rows: RowSet) -> np.ndarray:
    """``(V,)`` video predictions of an image model: argmax of the mean softmax over the frames."""
    return vid_rule(frame_predictions(head, rows)).probs.argmax(1)


def evaluate_image_model(head: CycdaImageHead, rows: RowSet, num_classes: int,
                         mask: np.ndarray | None = None) -> tuple[float, float]:
    """Video-level top-1 and mean-class accuracy of the image model (mean softmax over a video's frames)."""
    return _scores(image_video_preds(head, rows), rows.labels, num_classes, mask)


def evaluate_video_model(head: CycdaVideoHead, clips: PaddedSequences, num_classes: int,
                         mask: np.ndarray | None = None) -> tuple[float, float]:
    """Top-1 and mean-class accuracy of the video model."""
    return _scores(predict_videos(head, clips).argmax(1), clips.labels, num_classes, mask)


def image_metrics(head: CycdaImageHead, data: CycdaData) -> dict[str, float]:
    """Test, transductive and validation accuracy of an image model."""
    acc, mca = evaluate_image_model(head, data.test_frames, data.num_classes)
    pt = image_video_preds(head, data.target_frames)
    tr, _ = _scores(pt, data.target_frames.labels, data.num_classes)
    va = _scores(pt, data.target_frames.labels, data.num_classes, data.val_mask)[0] if data.val_mask is not None \
        else math.nan
    return {"target_acc": acc, "mean_class_acc": mca, "transductive_acc": tr, "val_acc": va}


def video_metrics(head: CycdaVideoHead, data: CycdaData) -> dict[str, float]:
    """Test, transductive and validation accuracy of a video model."""
    acc, mca = evaluate_video_model(head, data.test_clips, data.num_classes)
    pt = predict_videos(head, data.target_clips).argmax(1)
    tr, _ = _scores(pt, data.target_clips.labels, data.num_classes)
    va = _scores(pt, data.target_clips.labels, data.num_classes, data.val_mask)[0] if data.val_mask is not None \
        else math.nan
    return {"target_acc": acc, "mean_class_acc": mca, "transductive_acc": tr, "val_acc": va}


# ---- training ---------------------------------------------------------------------------------


def new_image_head(in_features: int, num_classes: int, cfg: ImageStageConfig, seed: int) -> CycdaImageHead:
    """A fresh image model, initialised from ``seed`` (normal(0, init_std) as released)."""
    torch.manual_seed(seed)
    return CycdaImageHead(in_features, num_classes, embed_dim=cfg.embed_dim, hidden=cfg.hidden, dropout=cfg.dropout,
                          pre_activation=cfg.pre_activation, init_std=cfg.init_std or None, bottleneck=cfg.bottleneck)


def train_image_model(head: CycdaImageHead, data: CycdaData, cfg: ImageStageConfig, seed: int, *,
                      adversarial: bool, video_labels: np.ndarray | None = None, use_target: bool = True,
                      out_dir: Path | None = None, desc: str = "image") -> dict[str, float]:
    """Source CE (+ DANN when ``adversarial``) (+ class-aware contrastive with ``video_labels``).

    Each epoch draws ``cfg.frames_per_video`` frames per target video (TSN segments, new
    positions every epoch) and runs ``ceil(max(N_s, N_t) / batch)`` steps of ``batch_size``
    source + ``batch_size`` target rows. ``video_labels``: ``(V_t,)`` pseudo label of every
    target train video (``-1`` = none); each drawn frame carries its video's label.
    ``use_target=False`` (source only): no target rows enter the loss; the step count is the same.

    Returns the final epoch's mean losses.
    """
    torch.manual_seed(seed)
    src, tgt = data.source, data.target_frames
    ys = torch.from_numpy(src.row_labels)
    n_s = len(src.feats)
    row_video = tgt.row_video
    dann = contrast = bank = sampler = None
    params = list(head.parameters())
    if adversarial and cfg.adv_weight > 0:
        dann = DomainAdversarialLoss(DomainDiscriminator(cfg.embed_dim, cfg.hidden, batch_norm=cfg.disc_batch_norm))
        params += list(dann.parameters())
    yv = None
    if video_labels is not None and cfg.contrastive_weight > 0:
        contrast = ClassAwareContrastiveLoss(cfg.temperature)
        yv = torch.from_numpy(np.asarray(video_labels, np.int64))
        bank = SourceMemoryBank(n_s, cfg.embed_dim, ys)  # detached projected source features
        with torch.no_grad():
            for i in range(0, n_s, EVAL_BATCH):
                sl = torch.arange(i, min(n_s, i + EVAL_BATCH))
                bank.update(sl, head.embed(src.feats[sl].float()))  # (B, D) -> (B, E)
    uses_target = use_target and (dann is not None or contrast is not None)
    # an epoch is a pass over the larger domain, for the source-only baseline too (same step count as stage 1)
    per_epoch_t = len(tsn_rows(tgt.offsets, cfg.frames_per_video, torch.Generator()))
    steps_per_epoch = max(1, math.ceil(max(n_s, per_epoch_t) / cfg.batch_size))
    total = steps_per_epoch * cfg.epochs
    state = {"step": 0}

    def batches(epoch: int, gen: torch.Generator):
        nonlocal sampler
        if contrast is not None and sampler is None:
            sampler = PosNegSampler(ys, data.num_classes, gen)
        idx_s = cycling_batches(n_s, cfg.batch_size, steps_per_epoch, gen)
        if not uses_target:
            return ((b, None) for b in idx_s)
        rows_t = torch.from_numpy(tsn_rows(tgt.offsets, cfg.frames_per_video, gen))  # resampled every epoch
        idx_t = rows_t[cycling_batches(len(rows_t), cfg.batch_size, steps_per_epoch, gen)]
        return zip(idx_s, idx_t)

    def step(batch) -> dict[str, torch.Tensor]:
        bs, bt = batch
        if bt is not None and head.batch_dependent:
            # one forward over both domains, so BatchNorm normalises with the statistics of the
            # mixed batch (TLlib's DANN) and not of each domain apart
            z = head.embed(torch.cat([src.feats[bs], tgt.feats[bt]]).float())  # (B_s + B_t, D) -> (B_s + B_t, E)
            z_s, z_t = z[:len(bs)], z[len(bs):]
            out_s = HeadOutput(head.classify(z_s), z_s)
        else:
            out_s = head(src.feats[bs].float())
            if bt is not None:
                z_t = head.embed(tgt.feats[bt].float())  # (B, D) -> (B, E)
        losses = dict(head.loss(out_s, ys[bs]))
        if dann is not None:
            adv = dann(out_s.embed, z_t, grl_coeff(state["step"] / max(1, total - 1)))
            losses["adv"] = cfg.adv_weight * adv.loss
            losses["disc_acc"] = adv.disc_acc
        if contrast is not None:
            bank.update(bs, out_s.embed)  # explicit memory update (detached), outside any forward
            lab = yv[torch.from_numpy(row_video)[bt]]
            pos_i, neg_i = sampler.sample(lab)
            losses["contrast"] = cfg.contrastive_weight * contrast(z_t, bank(pos_i), bank(neg_i), lab >= 0)
        losses["loss"] = sum(v for k, v in losses.items() if k != "disc_acc")
        state["step"] += 1
        return losses

    res = fit(head, step, batches, cfg.optim(), params=params, seed=seed, out_dir=out_dir, desc=desc)
    return {k: v for k, v in res.final.items() if k not in ("stage", "epoch", "lr", "steps")}


def train_video_model(data: CycdaData, labels: np.ndarray, cfg: VideoStageConfig, seed: int, *,
                      out_dir: Path | None = None, desc: str = "video") -> tuple[CycdaVideoHead, dict[str, float]]:
    """A fresh video model trained with CE on ``labels (V,)`` (pseudo labels, ``-1`` = none).

    ``cfg.class_balance``: ``weighted_ce`` weights the CE by inverse label frequency,
    ``sampling`` draws class-balanced batches, ``none`` is the released plain CE.
    """
    torch.manual_seed(seed)
    clips = data.target_clips
    head = CycdaVideoHead(clips.dim, data.num_classes, hidden=cfg.hidden, pooling=cfg.pooling, dropout=cfg.dropout,
                          init_std=cfg.init_std or None)
    keep = np.flatnonzero(labels >= 0)
    if len(keep) == 0:
        return head, {"ce": math.nan}
    y = torch.from_numpy(labels[keep])
    idx = torch.from_numpy(keep)
    weight = inverse_frequency_weights(labels, data.num_classes) if cfg.class_balance == "weighted_ce" else None
    sample_w = balanced_weights(labels[keep]) if cfg.class_balance == "sampling" else None

    def batches(epoch: int, gen: torch.Generator):
        return minibatches((idx, y), cfg.batch_size, gen, weights=sample_w)

    def step(batch) -> dict[str, torch.Tensor]:
        b, yb = batch
        out = head(clips.feats[b].float(), clips.mask[b])
        ce = head.loss(out, yb, weight)["ce"]
        return {"loss": ce, "ce": ce}

    res = fit(head, step, batches, cfg.optim(), seed=seed, out_dir=out_dir, desc=desc)
    return head, {k: v for k, v in res.final.items() if k not in ("stage", "epoch", "lr", "steps")}


# ---- stages -----------------------------------------------------------------------------------


def source_only(data: CycdaData, cfg: ImageStageConfig, seed: int, out_dir: Path | None = None) -> tuple[CycdaImageHead, StageMetrics]:
    """Baseline: the image model trained on the labelled source only."""
    t0 = time.perf_counter()
    head = new_image_head(data.source.dim, data.num_classes, cfg, seed)
    losses = train_image_model(head, data, cfg, seed, adversarial=False, use_target=False, out_dir=out_dir,
                               desc="source_only")
    m = image_metrics(head, data)
    return head, StageMetrics("source_only", 0, **m, pl_acc=math.nan, pl_coverage=math.nan, pl_classes=None,
                              seconds=time.perf_counter() - t0, losses=losses)


def stage1_spatial_alignment(data: CycdaData, cfg: ImageStageConfig, seed: int,
                             out_dir: Path | None = None) -> tuple[CycdaImageHead, dict[str, float]]:
    """Stage 1: class-agnostic spatial alignment (source CE + DANN through a GRL), a new image model."""
    head = new_image_head(data.source.dim, data.num_classes, cfg, seed)
    losses = train_image_model(head, data, cfg, seed, adversarial=True, out_dir=out_dir, desc="stage1")
    return head, losses


def pseudo_label_frames(head: CycdaImageHead, rows: RowSet, cfg: PseudoLabelConfig, stage_dir: Path,
                        prefix: str) -> tuple[VideoPseudoLabels, dict[str, Any]]:
    """Frame -> video pseudo labels of the target train videos from the image model (all cached frames).

    Writes ``<prefix>_frame_ps.npy``, ``<prefix>_vid_ps.npy`` and ``<prefix>_quality.json``.
    """
    from featbank.experiments.recipes.cycda_io import write_json

    fp = frame_predictions(head, rows)  # softmax applied once, here
    vpl = apply_rule(cfg.rule, fp, cfg.keep_fraction)
    write_frame_ps(stage_dir / f"{prefix}_frame_ps.npy", fp)
    write_vid_ps(stage_dir / f"{prefix}_vid_ps.npy", vpl)
    report = nan_to_none(quality_report(fp, vpl, cfg.percentiles))
    report["classes_present"] = vpl.classes_present
    write_json(stage_dir / f"{prefix}_quality.json", report)
    return vpl, report


def align_labels(vpl: VideoPseudoLabels, video_ids: tuple[str, ...]) -> np.ndarray:
    """Pseudo labels in the order of ``video_ids`` (``-1`` for dropped videos)."""
    return pseudo_label_arrays(vpl, video_ids)


def stage2_video_model(data: CycdaData, frame_pl: VideoPseudoLabels, cfg: VideoStageConfig, seed: int,
                       stage_dir: Path, prefix: str = "stage2") -> tuple[CycdaVideoHead, VideoPseudoLabels, dict[str, float]]:
    """Stage 2 (and 4): the video model trained on target pseudo labels only.

    Returns ``(video model, the video pseudo labels it hands on, final-epoch losses)``; the handed-on
    labels are the ``keep_fraction`` most confident videos of each predicted class (``selection:
    balanced``) or overall (``global``).
    """
    from featbank.experiments.recipes.cycda_io import write_json

    labels = align_labels(frame_pl, data.target_clips.video_ids)
    head, losses = train_video_model(data, labels, cfg, seed, out_dir=stage_dir, desc=prefix)
    logits = predict_videos(head, data.target_clips)  # (V, C)
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
    vpl = video_pseudo_labels_from_probs(probs, data.target_clips.video_ids, data.target_clips.labels,
                                         cfg.keep_fraction, balanced=cfg.selection == "balanced")
    write_vid_ps(stage_dir / f"{prefix}_vid_ps.npy", vpl)
    write_json(stage_dir / f"{prefix}_quality.json", nan_to_none({
        "coverage": vpl.coverage, "accuracy": vpl.accuracy, "classes_present": vpl.classes_present,
        "trained_on": int((labels >= 0).sum()), "trained_classes": int(len(np.unique(labels[labels >= 0]))),
        "confusion": vpl.confusion(data.num_classes).tolist()}))
    return head, vpl, losses


def stage3_class_aware_alignment(data: CycdaData, video_pl: VideoPseudoLabels, cfg: ImageStageConfig, seed: int,
                                 previous: CycdaImageHead | None = None,
                                 out_dir: Path | None = None) -> tuple[CycdaImageHead, dict[str, float]]:
    """Stage 3: class-aware spatial alignment (source CE + contrastive to a source memory bank).

    A **new** image model (as released) unless ``cfg.fresh`` is false, then a copy of ``previous``.
    Each drawn target frame carries its video's pseudo label from the video model.
    """
    if cfg.fresh or previous is None:
        head = new_image_head(data.source.dim, data.num_classes, cfg, seed)
    else:
        head = copy.deepcopy(previous)
    vlab = align_labels(video_pl, data.target_frames.video_ids)  # (V_t,)
    losses = train_image_model(head, data, cfg, seed, adversarial=cfg.adv_weight > 0, video_labels=vlab,
                               out_dir=out_dir, desc="stage3")
    return head, losses


def stage4_video_model(data: CycdaData, frame_pl: VideoPseudoLabels, cfg: VideoStageConfig, seed: int,
                       stage_dir: Path) -> tuple[CycdaVideoHead, VideoPseudoLabels, dict[str, float]]:
    """Stage 4: the video model retrained on the pseudo labels of the class-aware image model."""
    return stage2_video_model(data, frame_pl, cfg, seed, stage_dir, prefix="stage4")


def oracle(data: CycdaData, image_cfg: ImageStageConfig, video_cfg: VideoStageConfig, seed: int) -> list[dict[str, Any]]:
    """The ceiling: image and video heads trained on the target-train labels (never used by the cycle)."""
    import dataclasses

    rows = []
    lab = data.target_frames.labels
    if (lab < 0).all():
        return rows
    t0 = time.perf_counter()
    # image head on target frames with their video labels (the source replaced by the target)
    tgt = data.target_frames
    known = np.flatnonzero(lab >= 0)
    sub = tgt.subset(known)
    as_source = dataclasses.replace(data, source=sub)
    # as many steps as the source-only head takes (a larger batch over the target frames: every cached
    # frame is a training row here, 8x the stills), not 8x the steps at batch 32
    per_epoch_t = len(tsn_rows(tgt.offsets, image_cfg.frames_per_video, torch.Generator()))
    so_steps = max(1, math.ceil(max(len(data.source.feats), per_epoch_t) / image_cfg.batch_size))
    oracle_cfg = dataclasses.replace(image_cfg, batch_size=max(image_cfg.batch_size, math.ceil(len(sub.feats) / so_steps)))
    head = new_image_head(sub.dim, data.num_classes, oracle_cfg, seed)
    train_image_model(head, as_source, oracle_cfg, seed, adversarial=False, use_target=False, desc="oracle_image")
    m = image_metrics(head, data)
    rows.append({"name": "oracle_image", **m, "seconds": time.perf_counter() - t0})
    t0 = time.perf_counter()
    vh, _ = train_video_model(data, data.target_clips.labels.copy(), dataclasses.replace(video_cfg, class_balance="none"),
                              seed, desc="oracle_video")
    rows.append({"name": "oracle_video", **video_metrics(vh, data), "seconds": time.perf_counter() - t0})
    return rows
