"""CycDA heads over cached features: the image model, the video model, the class-aware loss.

* :class:`CycdaImageHead` (stages 1 and 3): ``Linear(D, 128)`` embedding, then the
  classifier MLP ``128 -> 128 -> C`` with ReLU, as released: no activation or dropout
  between the embedding and the classifier (``pre_activation=True`` adds the ReLU + dropout
  earlier versions of this module had). The 128-d embedding feeds the domain discriminator
  (stage 1) and the class-aware contrastive loss (stage 3).
* Both heads initialise their linear layers as released: weights ``normal(0, 0.01)``, bias 0
  (``init_std=None`` keeps PyTorch's default initialisation).
* :class:`CycdaVideoHead` (stages 2 and 4): per-clip ``Linear(D, hidden) + ReLU``,
  temporal pooling over the clips of a video (masked mean, or attention), ``Linear -> C``.
* :class:`ClassAwareContrastiveLoss` (stage 3): each target frame embedding against one
  positive (same class) and one negative (other class) drawn from a source memory bank;
  cosine similarity over a temperature (0.05 as published), cross entropy with the
  positive as the correct "class".

Every head has one signature in every mode (so recipes and the registry sweep treat all alike): ``forward(feats) -> NamedTuple``
and ``loss(out, targets) -> dict[str, Tensor]``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class HeadOutput(NamedTuple):
    """Class logits and the embedding they were computed from."""

    logits: torch.Tensor  # (B, C)
    embed: torch.Tensor  # (B, E)


def _ce_loss(out: HeadOutput, targets: torch.Tensor, weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Cross entropy over labelled rows (``-1`` = no label; zero loss if none is labelled).

    ``weight`` ``(C,)``: per-class weights (e.g. inverse pseudo-label frequency).
    """
    labels = targets.long()
    if bool((labels >= 0).any()):
        return {"ce": F.cross_entropy(out.logits, labels, weight=weight, ignore_index=-1)}
    return {"ce": out.logits.sum() * 0.0}


def init_linear_normal(module: nn.Module, std: float | None = 0.01) -> nn.Module:
    """Released CycDA initialisation: every ``nn.Linear`` weight ~ normal(0, ``std``), bias 0.

    ``std=None`` leaves PyTorch's default. Returns ``module``.
    """
    if std is None:
        return module
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


class CycdaImageHead(nn.Module):
    """Image model of CycDA: ``Linear(D, 128)`` then MLP ``128 -> 128 -> C`` (ReLU).

    The embedding (``bottleneck``):

    * ``"linear"``: ``Linear(D, 128)``, the released ``dim_reduct`` layer. Over cached features
      it is the *only* trainable map in front of the classifier and the discriminator, and it
      is unbounded: a reversed domain gradient can inflate it until every hidden ReLU of the
      classifier is dead (measured on benchmark v2, see docs/cycda.md).
    * ``"bn"``: ``Linear(D, 128) -> BatchNorm1d -> ReLU``, the bottleneck of the
      Transfer-Learning-Library's DANN ``ImageClassifier``. In the released model the layer
      that the reversed gradient trains next to ``dim_reduct`` is ResNet's ``layer4``, whose
      BatchNorm + ReLU + pooling bound what ``dim_reduct`` sees; over frozen cached features
      this bottleneck takes that role. Not in the released code (a named deviation).

    Args:
        in_features: feature dimension ``D`` (read from the store).
        num_classes: number of classes ``C``.
        embed_dim: width of the embedding (128 as published).
        hidden: hidden width of the classifier MLP (128 as published).
        dropout: dropout between embedding and classifier (only with ``pre_activation``).
        pre_activation: ReLU (+ dropout) between embedding and classifier (not released).
        init_std: std of the normal weight init (0.01 released; ``None``: PyTorch default).
        bottleneck: ``"linear"`` (released) or ``"bn"`` (TLlib bottleneck).
    """

    feats_ndim = 2  # forward takes (B, D)
    BOTTLENECKS = ("linear", "bn")

    def __init__(self, in_features: int, num_classes: int, *, embed_dim: int = 128, hidden: int = 128,
                 dropout: float = 0.0, pre_activation: bool = False, init_std: float | None = 0.01,
                 bottleneck: str = "linear") -> None:
        super().__init__()
        if bottleneck not in self.BOTTLENECKS:
            raise ValueError(f"bottleneck must be one of {self.BOTTLENECKS}, got {bottleneck!r}")
        self.in_features, self.num_classes, self.embed_dim = in_features, num_classes, embed_dim
        self.bottleneck = bottleneck
        if bottleneck == "bn":
            self.project = nn.Sequential(nn.Linear(in_features, embed_dim), nn.BatchNorm1d(embed_dim), nn.ReLU())
        else:
            self.project = nn.Linear(in_features, embed_dim)
        pre = [nn.ReLU(), nn.Dropout(dropout)] if pre_activation else []
        self.classifier = nn.Sequential(*pre, nn.Linear(embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        init_linear_normal(self, init_std)

    @property
    def batch_dependent(self) -> bool:
        """True when the embedding of a row depends on its batch in training mode (BatchNorm)."""
        return self.bottleneck == "bn"

    def embed(self, feats: torch.Tensor) -> torch.Tensor:
        """The 128-d embedding: ``(B, D) -> (B, E)``."""
        return self.project(feats)

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        """Class logits of embeddings: ``(B, E) -> (B, C)``."""
        return self.classifier(z)

    def forward(self, feats: torch.Tensor) -> HeadOutput:
        """``(B, D)`` features -> ``HeadOutput(logits (B, C), embed (B, E))``."""
        z = self.project(feats)  # (B, D) -> (B, E)
        return HeadOutput(self.classifier(z), z)

    def loss(self, out: HeadOutput, targets: torch.Tensor, weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``{"ce"}``: cross entropy against ``targets (B,)`` (``-1`` ignored; optional ``(C,)`` class weights)."""
        return _ce_loss(out, targets, weight)


class CycdaVideoHead(nn.Module):
    """Video model of CycDA over the clip features of a video.

    ``forward(feats, mask)`` takes ``(B, T, D)`` clip features padded to ``T`` with a
    ``(B, T)`` bool mask of real clips (all true when omitted).

    Args:
        in_features: clip feature dimension ``D``.
        num_classes: number of classes ``C``.
        hidden: per-clip embedding width.
        pooling: ``"mean"`` (masked temporal mean) or ``"attention"`` (learned softmax weights over clips).
        dropout: dropout on the pooled embedding.
        init_std: std of the normal weight init (0.01 released; ``None``: PyTorch default).
    """

    feats_ndim = 3  # forward takes (B, T, D)
    POOLINGS = ("mean", "attention")

    def __init__(self, in_features: int, num_classes: int, *, hidden: int = 256, pooling: str = "mean",
                 dropout: float = 0.5, init_std: float | None = 0.01) -> None:
        super().__init__()
        if pooling not in self.POOLINGS:
            raise ValueError(f"pooling must be one of {self.POOLINGS}, got {pooling!r}")
        self.in_features, self.num_classes, self.pooling = in_features, num_classes, pooling
        self.clip_embed = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())
        self.attn = nn.Linear(hidden, 1) if pooling == "attention" else None
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden, num_classes)
        init_linear_normal(self, init_std)

    def forward(self, feats: torch.Tensor, mask: torch.Tensor | None = None) -> HeadOutput:
        """``(B, T, D)`` clip features (+ ``(B, T)`` mask) -> ``HeadOutput(logits (B, C), embed (B, H))``."""
        if mask is None:
            mask = torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device)
        h = self.clip_embed(feats)  # (B, T, D) -> (B, T, H)
        m = mask.to(h.dtype).unsqueeze(-1)  # (B, T, 1)
        if self.attn is None:
            z = (h * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B, T, H) -> (B, H)
        else:
            score = self.attn(h).masked_fill(~mask.unsqueeze(-1), float("-inf"))  # (B, T, 1)
            w = torch.softmax(score, dim=1).nan_to_num(0.0)  # rows without clips -> zeros
            z = (h * w).sum(1)  # (B, T, H) -> (B, H)
        return HeadOutput(self.fc(self.dropout(z)), z)

    def loss(self, out: HeadOutput, targets: torch.Tensor, weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``{"ce"}``: cross entropy against pseudo labels ``targets (B,)`` (``-1`` ignored; optional class weights)."""
        return _ce_loss(out, targets, weight)


class ClassAwareContrastiveLoss(nn.Module):
    """Class-aware alignment of target frames to a source memory bank (CycDA stage 3).

    For each target embedding ``f_t[i]`` with a pseudo label, ``pos[i]`` is a (detached)
    source embedding of the same class and ``neg[i]`` one of another class. The loss is
    the cross entropy of ``[cos(f_t, pos), cos(f_t, neg)] / temperature`` with the
    positive as target.

    Args:
        temperature: softmax temperature (0.05 as published).
    """

    def __init__(self, temperature: float = 0.05) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, f_t: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean contrastive loss over the rows selected by ``mask``.

        Args:
            f_t: ``(B, E)`` target embeddings.
            pos: ``(B, E)`` positive source embeddings.
            neg: ``(B, E)`` negative source embeddings.
            mask: ``(B,)`` bool, rows that carry a pseudo label (all when omitted).

        Returns:
            Scalar loss (zero, with a graph, when no row is selected).
        """
        sim_pos = F.cosine_similarity(f_t, pos, dim=-1)  # (B, E) -> (B,)
        sim_neg = F.cosine_similarity(f_t, neg, dim=-1)  # (B,)
        logits = torch.stack([sim_pos, sim_neg], dim=1) / self.temperature  # (B, 2)
        per_row = F.cross_entropy(logits, torch.zeros(len(f_t), dtype=torch.long, device=f_t.device),
                                  reduction="none")
        if mask is None:
            return per_row.mean()
        if not bool(mask.any()):
            return per_row.sum() * 0.0
        return per_row[mask].mean()
