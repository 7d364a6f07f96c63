"""Quick heads over cached features: probes on pooled vectors, pooling heads on row sequences.

* :class:`LinearProbe` ``(B, D) -> (B, C)``: the linear probe of representation learning.
* :class:`MLPProbe` ``(B, D) -> (B, C)``: one hidden layer (ReLU, dropout).
* :class:`AttentionPoolHead` ``(B, T, D) -> (B, C)``: a learned score per row, softmax over the
  real rows (mask), weighted mean, linear classifier.
* :class:`TCNHead` ``(B, T, D) -> (B, C)``: two temporal convolutions (kernel 3, dilation 1
  and 2) with residual connections, masked mean over time, linear classifier.

All take an optional ``mask (B, T)`` (sequence heads) and return ``HeadOutput(logits, embed)``;
``loss(out, labels)`` is cross entropy over labelled rows (``-1``: no label).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cycda import HeadOutput


def _ce(out: HeadOutput, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    labels = labels.long()
    if bool((labels >= 0).any()):
        return {"ce": F.cross_entropy(out.logits, labels, ignore_index=-1)}
    return {"ce": out.logits.sum() * 0.0}


def _masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``(B, T, D) -> (B, D)`` mean over the real rows."""
    if mask is None:
        return x.mean(1)
    m = mask.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


class LinearProbe(nn.Module):
    """``Linear(D, C)`` on pooled features.

    Args:
        in_features: feature dimension ``D``.
        num_classes: number of classes ``C``.
    """

    feats_ndim = 2

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, feats: torch.Tensor, mask: torch.Tensor | None = None) -> HeadOutput:
        return HeadOutput(self.fc(feats), feats)  # (B, D) -> (B, C)

    def loss(self, out: HeadOutput, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return _ce(out, labels)


class MLPProbe(nn.Module):
    """``Linear(D, H) -> ReLU -> Dropout -> Linear(H, C)`` on pooled features."""

    feats_ndim = 2

    def __init__(self, in_features: int, num_classes: int, *, hidden: int = 256, dropout: float = 0.2) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, feats: torch.Tensor, mask: torch.Tensor | None = None) -> HeadOutput:
        h = self.hidden(feats)  # (B, D) -> (B, H)
        return HeadOutput(self.fc(h), h)

    def loss(self, out: HeadOutput, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return _ce(out, labels)


class AttentionPoolHead(nn.Module):
    """Attention pooling over the rows of a video, then a linear classifier."""

    feats_ndim = 3

    def __init__(self, in_features: int, num_classes: int, *, hidden: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(in_features, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, feats: torch.Tensor, mask: torch.Tensor | None = None) -> HeadOutput:
        s = self.score(feats).squeeze(-1)  # (B, T, D) -> (B, T)
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        w = torch.softmax(s, dim=1).nan_to_num(0.0)  # all-padding rows give zeros, not NaN
        pooled = (w.unsqueeze(-1) * feats).sum(1)  # (B, D)
        return HeadOutput(self.fc(self.drop(pooled)), pooled)

    def loss(self, out: HeadOutput, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return _ce(out, labels)


class TCNHead(nn.Module):
    """Two residual temporal convolutions (kernel 3, dilations 1 and 2), masked mean, linear."""

    feats_ndim = 3

    def __init__(self, in_features: int, num_classes: int, *, hidden: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        self.inp = nn.Conv1d(in_features, hidden, 1)
        self.convs = nn.ModuleList([nn.Conv1d(hidden, hidden, 3, padding=d, dilation=d) for d in (1, 2)])
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, feats: torch.Tensor, mask: torch.Tensor | None = None) -> HeadOutput:
        m = None if mask is None else mask.to(feats.dtype).unsqueeze(1)  # (B, 1, T)
        h = self.inp(feats.transpose(1, 2))  # (B, T, D) -> (B, H, T)
        for conv in self.convs:
            if m is not None:
                h = h * m  # padding never leaks into real steps
            h = h + F.relu(conv(h))
        pooled = _masked_mean(h.transpose(1, 2), mask)  # (B, H)
        return HeadOutput(self.fc(self.drop(pooled)), pooled)

    def loss(self, out: HeadOutput, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return _ce(out, labels)


PROBES = {
    "linear": LinearProbe,
    "mlp": MLPProbe,
    "attn": AttentionPoolHead,
    "tcn": TCNHead,
}
