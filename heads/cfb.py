"""CFB heads over cached per-time-step I3D features (RGB and optical flow streams).

* :class:`CfbStreamHead` (one stream): per time step an optional trainable trunk
  ``Linear(D, H) + ReLU``, dropout (0.5 as released), and a linear classifier applied to every
  step (the released I3D's 1x1x1 ``logits`` conv); ``logits`` are the masked time-mean of the
  step logits. Loss as released: ``BCE(time-mean logits, one-hot) + BCE(step logits, one-hot)``.
* :class:`CfbPaceHead`: video-pace prediction on RGB step features (5 paces: frame steps
  1..5), a linear classifier per step averaged over time, cross entropy on ``r - 1``.
* :class:`CfbModel`: the two streams plus the pace head, which reads the RGB stream's trunk
  (so that, with frozen cached features, the pace task shapes the RGB representation the
  classifier uses, as fine-tuning the backbone does in the released code).

The trunk is our addition: the released code fine-tunes all of I3D, here the backbone is
frozen and its features cached, so without a trainable layer shared with the classifier a
pace head could not change the classifier at all. ``hidden=0`` removes it.

Metrics (``Acc``, ``AccSf``) live in :mod:`featbank.heads.metrics`; the category-aware flow
bank is :class:`featbank.heads.memory.CategoryBank`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

NUM_PACES = 5  # frame steps 1..5


class StreamOutput(NamedTuple):
    """One stream's outputs."""

    logits: torch.Tensor  # (B, C) masked time-mean of the step logits
    embed: torch.Tensor  # (B, T, H) trunk output per step
    steps: torch.Tensor  # (B, T, C) per-step logits
    mask: torch.Tensor  # (B, T) bool, True = real step


def _mask_for(feats: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device)
    return mask.to(device=feats.device, dtype=torch.bool)


def masked_time_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, T, K)`` -> ``(B, K)`` mean over the real steps (a video with none gives 0)."""
    m = mask.to(x.dtype)[..., None]  # (B, T, 1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def bce_video_and_steps(out: StreamOutput, labels: torch.Tensor, num_classes: int) -> dict[str, torch.Tensor]:
    """Released CFB stream loss: BCE on time-mean logits and on every real step, vs one-hot labels.

    Rows with label ``-1`` are left out; with none labelled both terms are 0 (differentiable).
    """
    labels = labels.long().to(out.logits.device)
    keep = labels >= 0
    if not bool(keep.any()):
        zero = out.logits.sum() * 0.0
        return {"bce_video": zero, "bce_step": zero}
    onehot = F.one_hot(labels[keep], num_classes).to(out.logits.dtype)  # (B', C)
    video = F.binary_cross_entropy_with_logits(out.logits[keep], onehot)
    steps, m = out.steps[keep], out.mask[keep]  # (B', T, C), (B', T)
    per = F.binary_cross_entropy_with_logits(steps, onehot[:, None, :].expand_as(steps), reduction="none").mean(-1)
    step = (per * m).sum() / m.sum().clamp_min(1)
    return {"bce_video": video, "bce_step": step}


class CfbStreamHead(nn.Module):
    """One CFB stream: trunk per step, dropout, linear per step, time-mean.

    Args:
        in_features: feature dimension ``D`` (read from the store).
        num_classes: number of classes ``C``.
        hidden: width of the trainable trunk ``Linear(D, H) + ReLU`` (0: none, classifier on the features).
        dropout: dropout before the per-step classifier (0.5 as released).
    """

    feats_ndim = 3  # forward takes (B, T, D)

    def __init__(self, in_features: int, num_classes: int, *, hidden: int = 256, dropout: float = 0.5) -> None:
        super().__init__()
        self.in_features, self.num_classes, self.hidden = in_features, num_classes, hidden
        self.trunk = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU()) if hidden > 0 else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden if hidden > 0 else in_features, num_classes)

    def embed_steps(self, feats: torch.Tensor) -> torch.Tensor:
        """``(B, T, D)`` -> ``(B, T, H)`` trunk output."""
        return self.trunk(feats)

    def classify(self, embed: torch.Tensor, mask: torch.Tensor) -> StreamOutput:
        steps = self.classifier(self.dropout(embed))  # (B, T, H) -> (B, T, C)
        return StreamOutput(masked_time_mean(steps, mask), embed, steps, mask)

    def forward(self, feats: torch.Tensor, mask: torch.Tensor | None = None) -> StreamOutput:
        """``feats (B, T, D)``, ``mask (B, T)`` (True = real step) -> :class:`StreamOutput`."""
        mask = _mask_for(feats, mask)
        return self.classify(self.embed_steps(feats), mask)

    def loss(self, out: StreamOutput, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Released stream loss (see :func:`bce_video_and_steps`); ``-1`` = unlabelled."""
        return bce_video_and_steps(out, targets, self.num_classes)


class PaceOutput(NamedTuple):
    logits: torch.Tensor  # (B, P) time-mean of the step logits
    embed: torch.Tensor  # (B, T, H)


class CfbPaceHead(nn.Module):
    """Video-pace classifier: linear per step over the (RGB) step features, averaged over time.

    Args:
        in_features: width of its input (the RGB trunk's ``H``, or ``D`` standalone).
        num_classes: number of paces (5: frame steps 1..5).
        dropout: dropout before the classifier.
    """

    feats_ndim = 3

    def __init__(self, in_features: int, num_classes: int = NUM_PACES, *, dropout: float = 0.5) -> None:
        super().__init__()
        self.in_features, self.num_classes = in_features, num_classes
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_features, num_classes)

    def forward(self, feats: torch.Tensor, mask: torch.Tensor | None = None) -> PaceOutput:
        """``(B, T, H)`` step features -> ``PaceOutput(logits (B, P), embed)``."""
        mask = _mask_for(feats, mask)
        return PaceOutput(masked_time_mean(self.classifier(self.dropout(feats)), mask), feats)

    def loss(self, out: PaceOutput, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cross entropy on the pace index ``r - 1`` (``-1`` = none)."""
        t = targets.long().to(out.logits.device)
        if not bool((t >= 0).any()):
            return {"pace_ce": out.logits.sum() * 0.0}
        return {"pace_ce": F.cross_entropy(out.logits, t, ignore_index=-1)}


class CfbOutput(NamedTuple):
    rgb: StreamOutput
    flow: StreamOutput | None


class CfbModel(nn.Module):
    """RGB and flow streams and the pace head on the RGB trunk.

    Args:
        rgb_dim, flow_dim: feature dimensions of the two streams.
        num_classes: action classes.
        hidden: trunk width of each stream (0: linear heads on the features).
        dropout: dropout of the heads (0.5 as released).
        use_flow: build the flow stream.
        use_pace: build the pace head.
        num_paces: pace classes.
    """

    def __init__(self, rgb_dim: int, flow_dim: int, num_classes: int, *, hidden: int = 256, dropout: float = 0.5,
                 use_flow: bool = True, use_pace: bool = False, num_paces: int = NUM_PACES) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.rgb = CfbStreamHead(rgb_dim, num_classes, hidden=hidden, dropout=dropout)
        self.flow = CfbStreamHead(flow_dim, num_classes, hidden=hidden, dropout=dropout) if use_flow else None
        self.pace = CfbPaceHead(hidden if hidden > 0 else rgb_dim, num_paces, dropout=dropout) if use_pace else None

    def forward(self, rgb: torch.Tensor, flow: torch.Tensor | None = None, rgb_mask: torch.Tensor | None = None,
                flow_mask: torch.Tensor | None = None) -> CfbOutput:
        """``rgb (B, T, D)`` and ``flow (B, T', D')`` step features -> both streams' outputs."""
        out_rgb = self.rgb(rgb, rgb_mask)
        out_flow = self.flow(flow, flow_mask) if (self.flow is not None and flow is not None) else None
        return CfbOutput(out_rgb, out_flow)

    def forward_pace(self, rgb: torch.Tensor, mask: torch.Tensor | None = None) -> PaceOutput:
        """Pace logits of RGB step features (through the RGB trunk)."""
        if self.pace is None:
            raise RuntimeError("CfbModel was built with use_pace=False")
        return self.pace(self.rgb.embed_steps(rgb), mask)

    def loss(self, out: CfbOutput, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Released class loss: the stream losses summed over the streams (no target term)."""
        losses = {f"rgb_{k}": v for k, v in self.rgb.loss(out.rgb, targets).items()}
        if out.flow is not None and self.flow is not None:
            losses.update({f"flow_{k}": v for k, v in self.flow.loss(out.flow, targets).items()})
        return losses
