"""GLAD (WACV 2024) over cached view features: adapter, view classifier, three discriminators, TOL.

Every video arrives as ``(B, V, D)`` view features (the ``sampler: glad`` rows of the
extraction job): views ``0..7`` are the eight dense *local* clips (8 frames at interval 2,
one per segment), view ``8`` is the sparse *global* clip (frame 3 of each local clip).
Frozen features have nothing to align, so a :class:`ResidualAdapter` shared by all views is
the trainable part upstream of the discriminators.

Pieces, as in the released code (``KHU-VLL/GLAD``):

* :class:`GladHead`: adapter + :class:`ViewClassifier` (dropout 0.5, linear) on the mean of
  the selected views; cross entropy on labelled (source) videos only.
* :class:`ViewDiscriminator`: GRL (coefficient 1, fixed) -> 4 hidden layers of (Linear,
  Dropout 0.5, ReLU) -> 1 logit; binary cross entropy with **source = 1, target = 0**.
* :class:`GladAlignmentLoss`: the ``local`` (mean of local views), ``global`` (global view)
  and ``cross`` ([source-local vs target-global] and [source-global vs target-local])
  discriminators, weight 1 each, each switchable.
* :class:`TOLHead`: temporal order learning on 3 clips (6 orders): pairwise Linear(2D, 512)
  + ReLU, concatenated, dropout 0.5, Linear -> 6, cross entropy on the permutation index.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .adaptation import grad_reverse

# Domain labels of the GLAD discriminators (released DomainClassifier: "1 to source, 0 to target").
GLAD_SOURCE = 1.0
GLAD_TARGET = 0.0
# View layout of a ``sampler: glad`` row: 8 local clips then 1 global clip.
NUM_LOCAL = 8
GLOBAL_VIEW = 8
# The released training views: sampler_index=dict(l=[4, 5], g=3) -> local clips 4 and 5 (0-based).
TRAIN_LOCAL_VIEWS = (4, 5)
# The released test: subclip_size=3 over the 2 local views keeps f_local[:, -1:] -> local clip 5.
TEST_LOCAL_VIEWS = (5,)
# The 3! orders of three clips, in itertools order (the released TOLN's label -> order table).
PERMUTATIONS_3 = tuple(itertools.permutations(range(3)))


class ResidualAdapter(nn.Module):
    """``f + W2 relu(W1 f)``, shared by every view; the residual branch starts at zero (identity).

    Args:
        dim: feature size ``D``.
        hidden: bottleneck width.
    """

    def __init__(self, dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """``(..., D) -> (..., D)``."""
        return feats + self.up(F.relu(self.down(feats)))


class ViewClassifier(nn.Module):
    """Dropout 0.5 then a linear layer (the released I3DHead), on one vector per video."""

    def __init__(self, dim: int, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)  # released init_std=0.01
        nn.init.zeros_(self.fc.bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(feats))  # (B, D) -> (B, C)


class GladOutput(NamedTuple):
    """``logits`` ``(B, C)`` and the adapted views ``embed`` ``(B, V, D)``."""

    logits: torch.Tensor
    embed: torch.Tensor


def select_views(views: torch.Tensor, local: Sequence[int] | None, use_global: bool = True) -> torch.Tensor:
    """Mean over the chosen views: ``(B, V, D) -> (B, D)``.

    Args:
        views: ``sampler: glad`` views (8 local then global) or any ``(B, V, D)``.
        local: local view indices to include; ``None`` takes every view (the mean of all views).
        use_global: include the global view (view 8) when ``local`` is given.
    """
    if local is None or views.shape[1] <= GLOBAL_VIEW:
        return views.mean(1)
    idx = list(local) + ([GLOBAL_VIEW] if use_global else [])
    return views[:, idx].mean(1)


class GladHead(nn.Module):
    """Residual adapter + view classifier over ``(B, V, D)`` view features.

    ``forward(views, local=...)``: the classifier sees the mean of the selected adapted views;
    by default all views (the registry contract); the recipe passes the released train
    (local 4, 5 + global) and test (local 5 + global) views.

    Args:
        in_features: ``D``.
        num_classes: ``C``.
        hidden: adapter bottleneck width.
        dropout: classifier dropout (0.5 released).
    """

    feats_ndim = 3

    def __init__(self, in_features: int, num_classes: int, hidden: int = 256, dropout: float = 0.5) -> None:
        super().__init__()
        self.adapter = ResidualAdapter(in_features, hidden)
        self.classifier = ViewClassifier(in_features, num_classes, dropout)

    def forward(self, views: torch.Tensor, local: Sequence[int] | None = None, use_global: bool = True) -> GladOutput:
        """``(B, V, D)`` -> ``GladOutput(logits (B, C), embed (B, V, D))``."""
        embed = self.adapter(views)  # (B, V, D) -> (B, V, D)
        return GladOutput(self.classifier(select_views(embed, local, use_global)), embed)

    def loss(self, out: GladOutput, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cross entropy on the labelled rows (``targets >= 0``; unlabelled target rows are -1)."""
        known = targets >= 0
        if not known.any():
            return {"cls": out.logits.sum() * 0.0}
        return {"cls": F.cross_entropy(out.logits[known], targets[known])}


class ViewDiscriminator(nn.Module):
    """GRL -> ``layers`` x (Linear, Dropout, ReLU) -> Linear -> 1 domain logit (source = 1).

    Args:
        dim: input size ``D``.
        hidden: width of the hidden layers (2048 released).
        layers: hidden layers (4 released).
        dropout: dropout after each hidden linear (0.5 released).
    """

    def __init__(self, dim: int, hidden: int = 2048, layers: int = 4, dropout: float = 0.5) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        width = dim
        for _ in range(layers):
            mods += [nn.Linear(width, hidden), nn.Dropout(dropout), nn.ReLU(inplace=True)]
            width = hidden
        mods.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, feats: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
        """``(B, D) -> (B,)`` logits of "source", behind a GRL of coefficient ``coeff``."""
        return self.net(grad_reverse(feats, coeff)).squeeze(1)


class DiscriminatorOutput(NamedTuple):
    """BCE loss of one discriminator and its accuracy (diagnostic)."""

    loss: torch.Tensor
    acc: torch.Tensor


def domain_bce(disc: ViewDiscriminator, f_s: torch.Tensor, f_t: torch.Tensor, coeff: float = 1.0) -> DiscriminatorOutput:
    """Binary cross entropy of ``disc`` with source labelled 1 and target labelled 0.

    Args:
        disc: the discriminator.
        f_s: ``(B_s, D)`` source features.
        f_t: ``(B_t, D)`` target features.
        coeff: GRL coefficient.
    """
    feats = torch.cat([f_s, f_t])  # (B_s + B_t, D)
    labels = torch.cat([torch.full((len(f_s),), GLAD_SOURCE), torch.full((len(f_t),), GLAD_TARGET)]).to(feats)
    logits = disc(feats, coeff)
    loss = F.binary_cross_entropy_with_logits(logits, labels)
    with torch.no_grad():
        acc = ((logits > 0).float() == labels).float().mean()
    return DiscriminatorOutput(loss, acc)


class GladAlignmentLoss(nn.Module):
    """The three GLAD discriminators and their losses over adapted views.

    Args:
        dim: ``D``.
        hidden / layers / dropout: discriminator MLP (2048 / 4 / 0.5 released).
        terms: which of ``local``, ``global``, ``cross`` are on (all three in GLAD).
        local_views: local views the discriminators see (released: 4 and 5).
    """

    TERMS = ("local", "global", "cross")

    def __init__(self, dim: int, hidden: int = 2048, layers: int = 4, dropout: float = 0.5,
                 terms: Sequence[str] = TERMS, local_views: Sequence[int] = TRAIN_LOCAL_VIEWS) -> None:
        super().__init__()
        bad = [t for t in terms if t not in self.TERMS]
        if bad:
            raise ValueError(f"unknown GLAD alignment terms {bad}; choose from {list(self.TERMS)}")
        self.terms = tuple(terms)
        self.local_views = tuple(local_views)
        self.discs = nn.ModuleDict({t: ViewDiscriminator(dim, hidden, layers, dropout) for t in self.terms})

    def forward(self, views_s: torch.Tensor, views_t: torch.Tensor, coeff: float = 1.0) -> dict[str, torch.Tensor]:
        """Losses ``dom_<term>`` and accuracies ``acc_<term>`` of the switched-on discriminators.

        Args:
            views_s: ``(B_s, V, D)`` adapted source views.
            views_t: ``(B_t, V, D)`` adapted target views.
            coeff: GRL coefficient (1, fixed, as released).
        """
        loc_s = views_s[:, list(self.local_views)].mean(1)  # (B, V, D) -> (B, D)
        loc_t = views_t[:, list(self.local_views)].mean(1)
        glo_s, glo_t = views_s[:, GLOBAL_VIEW], views_t[:, GLOBAL_VIEW]
        out: dict[str, torch.Tensor] = {}
        for term in self.terms:
            d = self.discs[term]
            if term == "local":
                r = domain_bce(d, loc_s, loc_t, coeff)
            elif term == "global":
                r = domain_bce(d, glo_s, glo_t, coeff)
            else:  # cross: [source-local vs target-global] and [source-global vs target-local] in one batch
                r = domain_bce(d, torch.cat([loc_s, glo_s]), torch.cat([glo_t, loc_t]), coeff)
            out[f"dom_{term}"] = r.loss
            out[f"acc_{term}"] = r.acc
        return out


class TOLOutput(NamedTuple):
    """Order logits ``(B, 6)`` and the permutation labels ``(B,)``."""

    logits: torch.Tensor
    labels: torch.Tensor


def permute_clips(clips: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Reorder ``(B, 3, D)`` clips by the permutation of each label (released ``take_along_dim``)."""
    perms = torch.tensor(PERMUTATIONS_3, device=clips.device)[labels]  # (B, 3)
    return torch.take_along_dim(clips, perms[:, :, None], dim=1)  # (B, 3, D)


class TOLHead(nn.Module):
    """Temporal order learning (the released TOLN with 3 clips, as in VCOP's pairwise net).

    Args:
        dim: ``D``.
        pair_hidden: width of the pairwise layer (512 released).
        dropout: dropout before the last layer (0.5 released).
    """

    def __init__(self, dim: int, pair_hidden: int = 512, dropout: float = 0.5) -> None:
        super().__init__()
        self.pair = nn.Linear(2 * dim, pair_hidden)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(pair_hidden * 3, len(PERMUTATIONS_3))

    def forward(self, clips: torch.Tensor, labels: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> TOLOutput:
        """Shuffle ``(B, 3, D)`` ordered clips by random (or given) permutations and predict the order.

        Args:
            clips: three clips per video in temporal order.
            labels: permutation indices ``(B,)`` in ``[0, 6)``; drawn uniformly when ``None``.
            generator: generator for the draw.
        """
        if labels is None:
            labels = torch.randint(len(PERMUTATIONS_3), (clips.shape[0],), generator=generator).to(clips.device)
        x = permute_clips(clips, labels)  # (B, 3, D)
        pairs = [torch.cat([x[:, i], x[:, j]], 1) for i, j in itertools.combinations(range(3), 2)]  # 3 x (B, 2D)
        h = torch.cat([F.relu(self.pair(p)) for p in pairs], 1)  # (B, 3 * pair_hidden)
        return TOLOutput(self.out(self.dropout(h)), labels)

    @staticmethod
    def loss(out: TOLOutput) -> dict[str, torch.Tensor]:
        return {"tol": F.cross_entropy(out.logits, out.labels)}
