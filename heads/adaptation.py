"""Domain-adversarial alignment over features: a DA method is a loss over features (tllib style).

A gradient reversal layer (GRL), a small domain discriminator, and the DANN loss
``DomainAdversarialLoss(f_s, f_t, coeff)``. The GRL coefficient is an argument the
caller computes from the training step with :func:`grl_coeff`; nothing is stored on
``self`` during ``forward``.

Domain labels: source = 0, target = 1. (The released CycDA code labels both domains 0,
which makes the discriminator's task trivial and the reversed gradient meaningless.)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

SOURCE_DOMAIN = 0
TARGET_DOMAIN = 1


class GradientReversal(torch.autograd.Function):
    """Identity in the forward pass; multiplies the gradient by ``-coeff`` in the backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:  # type: ignore[override]
        ctx.coeff = float(coeff)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return -ctx.coeff * grad, None


def grad_reverse(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """Apply the gradient reversal layer with coefficient ``coeff``.

    Args:
        x: any tensor.
        coeff: gradient scale; the backward pass returns ``-coeff * grad``.

    Returns:
        ``x`` unchanged (a view), with reversed, scaled gradient.
    """
    return GradientReversal.apply(x, coeff)


def grl_coeff(progress: float, gamma: float = 10.0, high: float = 1.0) -> float:
    """DANN schedule ``high * (2 / (1 + exp(-gamma * p)) - 1)``, rising from 0 to ``high``.

    Args:
        progress: training progress ``p`` in ``[0, 1]`` (step / total steps).
        gamma: steepness (10 as published).
        high: final coefficient.

    Returns:
        The GRL coefficient for this step.
    """
    p = min(max(float(progress), 0.0), 1.0)
    return float(high * (2.0 / (1.0 + math.exp(-gamma * p)) - 1.0))


class DomainDiscriminator(nn.Module):
    """GRL -> Linear(in, hidden) -> ReLU -> Linear(hidden, 2), as published (128 -> 128 -> 2).

    ``batch_norm=True`` is the Transfer-Learning-Library discriminator instead: two hidden
    layers, each ``Linear -> BatchNorm1d -> ReLU``, then ``Linear(hidden, 2)``. Batch
    statistics keep its hidden units from saturating when the features it sees grow or shift
    during the min-max game.

    Args:
        in_features: feature dimension fed to the discriminator.
        hidden: hidden width.
        batch_norm: the TLlib layout with BatchNorm (default: the published one without).
    """

    def __init__(self, in_features: int = 128, hidden: int = 128, *, batch_norm: bool = False) -> None:
        super().__init__()
        if batch_norm:
            self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                     nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                     nn.Linear(hidden, 2))
        else:
            self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 2))

    def forward(self, feats: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
        """Domain logits of ``feats`` behind a GRL of coefficient ``coeff``.

        Args:
            feats: ``(B, in_features)``.
            coeff: GRL coefficient.

        Returns:
            ``(B, 2)`` domain logits (column 0 = source, 1 = target).
        """
        return self.net(grad_reverse(feats, coeff))  # (B, D) -> (B, 2)


class DomainLossOutput(NamedTuple):
    """Domain-adversarial loss and discriminator accuracy (diagnostic, no gradient)."""

    loss: torch.Tensor
    disc_acc: torch.Tensor


class DomainAdversarialLoss(nn.Module):
    """DANN loss over source and target features (tllib style).

    The discriminator sees both domains through a GRL; its cross entropy (source
    labelled 0, target 1) is minimised by the discriminator and, through the reversed
    gradient, maximised by the feature extractor.

    Args:
        discriminator: maps ``(B, D)`` features and a coefficient to ``(B, 2)`` logits.
    """

    def __init__(self, discriminator: DomainDiscriminator) -> None:
        super().__init__()
        self.discriminator = discriminator

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor, coeff: float = 1.0) -> DomainLossOutput:
        """Loss of the discriminator on a source and a target batch.

        Args:
            f_s: ``(B_s, D)`` source features.
            f_t: ``(B_t, D)`` target features.
            coeff: GRL coefficient (see :func:`grl_coeff`).

        Returns:
            ``DomainLossOutput(loss, disc_acc)``: mean cross entropy over both batches and
            the fraction of samples whose domain the discriminator gets right.
        """
        feats = torch.cat([f_s, f_t], dim=0)  # (B_s + B_t, D)
        labels = torch.cat(
            [
                torch.full((len(f_s),), SOURCE_DOMAIN, dtype=torch.long, device=feats.device),
                torch.full((len(f_t),), TARGET_DOMAIN, dtype=torch.long, device=feats.device),
            ]
        )
        logits = self.discriminator(feats, coeff)  # (B, 2)
        loss = F.cross_entropy(logits, labels)
        with torch.no_grad():
            disc_acc = (logits.argmax(1) == labels).float().mean()
        return DomainLossOutput(loss, disc_acc)
