"""Temporal activity detection heads over cached per-time-step features.

All heads take ``feats (B, T, D)`` (one row per time step, zero padded) and an optional
``mask (B, T)`` (True on real steps), and return ``DetectOut(logits, step_logits, embed)``:
``step_logits (B, T, C)`` are the per-step detections, ``logits (B, C)`` their max over the
real steps (the video-level score), ``embed (B, T, H)`` the last hidden sequence.

``loss(out, targets, mask)`` is the Coarse-Fine loss ``1/2 [BCE(max_t z, max_t y) + mean_t BCE(z_t, y_t)]``
for ``(B, T, C)`` soft / multi-hot targets (padding excluded), or the video term alone for
``(B,)`` integer labels (``-1``: unlabelled, zero loss).

* :class:`FineOnlyHead`: per-step MLP plus a temporal convolution (the baseline).
* :class:`PDANHead`: PDAN-style: a 1x1 conv to 512 and 5 dilated-attention blocks with
  dilation ``2**i`` (each step attends over ``t - d, t, t + d`` with per-channel softmax).
* :class:`CoarseFineHead`: Coarse-Fine Networks on features. The coarse stream is a learned
  :class:`GridPool` of the cached sequence to ``ceil(T/4) + 1`` steps; the fine levels are
  aligned to the coarse steps with Gaussians centred at each coarse step's absolute time
  (``sigma = valid length / 8``) and a self-attention gate per level
  (:func:`gaussian_alignment`); FiLM (scale / shift from the concatenated aligned levels)
  modulates each coarse stage; coarse logits go back to every fine step with
  :func:`grid_unpool`.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class DetectOut(NamedTuple):
    logits: torch.Tensor  # (B, C) max over real steps
    step_logits: torch.Tensor  # (B, T, C)
    embed: torch.Tensor  # (B, T, H)


def _mask_of(feats: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device)
    return mask.to(torch.bool)


def masked_max(step_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, T, C)`` -> ``(B, C)`` max over the real steps."""
    neg = torch.finfo(step_logits.dtype).min
    return step_logits.masked_fill(~mask[..., None], neg).amax(1)


def detection_loss(out: DetectOut, targets: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """``1/2 [BCE(max_t z, max_t y) + per-step BCE]`` over real steps (Coarse-Fine's loss).

    Args:
        out: a head's output.
        targets: ``(B, T, C)`` per-step targets in [0, 1], or ``(B,)`` int video labels (-1 unlabelled).
        mask: ``(B, T)`` real steps (default all).
    """
    z = out.step_logits
    m = _mask_of(z, mask)
    if targets.ndim == 1:  # video labels only: the video term
        known = targets >= 0
        if not known.any():
            zero = out.logits.sum() * 0.0
            return {"video": zero}
        y = F.one_hot(targets[known].clamp(min=0), z.shape[-1]).to(z.dtype)
        return {"video": F.binary_cross_entropy_with_logits(out.logits[known], y)}
    y = targets.to(z.dtype)
    y_video = y.masked_fill(~m[..., None], 0.0).amax(1)  # (B, C)
    video = F.binary_cross_entropy_with_logits(out.logits, y_video)
    per = F.binary_cross_entropy_with_logits(z, y, reduction="none").mean(-1)  # (B, T)
    step = (per * m).sum() / m.sum().clamp(min=1)
    return {"video": 0.5 * video, "step": 0.5 * step}


class _DetectHead(nn.Module):
    feats_ndim = 3

    def loss(self, out: DetectOut, targets: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return detection_loss(out, targets, mask)

    def replace_classifier(self, num_classes: int) -> None:
        """New output layer with ``num_classes`` outputs, keeping the rows of the classes both share.

        Used after SSDet pretraining (``C + 1`` outputs, the last one background) to fine-tune
        on the ``C`` detection classes.
        """
        old: nn.Linear = self.classifier
        new = nn.Linear(old.in_features, num_classes).to(old.weight.device)
        k = min(num_classes, old.out_features)
        with torch.no_grad():
            new.weight[:k] = old.weight[:k]
            new.bias[:k] = old.bias[:k]
        self.classifier = new
        self.num_classes = num_classes

    def _out(self, step_logits: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor) -> DetectOut:
        return DetectOut(masked_max(step_logits, mask), step_logits, hidden)


class FineOnlyHead(_DetectHead):
    """Per-step MLP and one temporal convolution, at the full (fine) time resolution."""

    def __init__(self, in_features: int, num_classes: int, *, hidden: int = 256, kernel: int = 3,
                 dropout: float = 0.3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.inp = nn.Linear(in_features, hidden)
        self.tconv = nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2)
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, feats: torch.Tensor, mask: torch.Tensor | None = None) -> DetectOut:
        m = _mask_of(feats, mask)
        h = F.relu(self.inp(self.drop(feats.float()))) * m[..., None]  # (B, T, H)
        h = F.relu(self.tconv(h.transpose(1, 2))).transpose(1, 2) * m[..., None] + h
        return self._out(self.classifier(self.drop(h)), h, m)


class DilatedAttention(nn.Module):
    """PDAN's dilated attention layer: step ``t`` attends over ``t - d, t, t + d`` (per-channel softmax)."""

    def __init__(self, channels: int, dilation: int, dropout: float = 0.3) -> None:
        super().__init__()
        self.d = dilation
        self.q = nn.Conv1d(channels, channels, 1)
        self.k = nn.Conv1d(channels, channels, 1)
        self.v = nn.Conv1d(channels, channels, 1)
        self.rel = nn.Parameter(torch.zeros(3, channels, 1))  # learned relative-position bias
        self.out = nn.Conv1d(channels, channels, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # x: (B, H, T)
        m = mask[:, None, :].to(x.dtype)
        q, k, v = self.q(x), self.k(x) * m, self.v(x) * m
        ks, vs, valid = [], [], []
        for j, off in enumerate((-self.d, 0, self.d)):
            ks.append(torch.roll(k, -off, dims=2) + self.rel[j])
            vs.append(torch.roll(v, -off, dims=2))
            idx = torch.arange(x.shape[2], device=x.device) + off
            ok = (idx >= 0) & (idx < x.shape[2])
            valid.append(ok[None, None, :] & (torch.roll(m, -off, dims=2) > 0))
        scores = torch.stack([q * kk for kk in ks], 0) / math.sqrt(x.shape[1])  # (3, B, H, T)
        scores = scores.masked_fill(~torch.stack(valid, 0).expand_as(scores), -1e4)
        att = torch.softmax(scores, dim=0)
        y = (att * torch.stack(vs, 0)).sum(0)  # (B, H, T)
        return (x + self.drop(F.relu(self.out(y)))) * m


class PDANHead(_DetectHead):
    """PDAN-style head: 1x1 conv to ``hidden`` (512), ``blocks`` dilated-attention blocks (dilation ``2**i``)."""

    def __init__(self, in_features: int, num_classes: int, *, hidden: int = 512, blocks: int = 5,
                 dropout: float = 0.3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.inp = nn.Conv1d(in_features, hidden, 1)
        self.blocks = nn.ModuleList(DilatedAttention(hidden, 2 ** i, dropout) for i in range(blocks))
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, feats: torch.Tensor, mask: torch.Tensor | None = None) -> DetectOut:
        m = _mask_of(feats, mask)
        h = self.inp(self.drop(feats.float()).transpose(1, 2)) * m[:, None, :].float()  # (B, H, T)
        for blk in self.blocks:
            h = blk(h, m)
        h = h.transpose(1, 2)  # (B, T, H)
        return self._out(self.classifier(self.drop(h)), h, m)


# ---- Coarse-Fine on features ----------------------------------------------------------------


def _interp_time(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of ``x (B, T, D)`` at fractional step indices ``pos (B, K)`` -> ``(B, K, D)``."""
    t = x.shape[1]
    pos = pos.clamp(0, t - 1)
    lo = pos.floor().long().clamp(max=t - 1)
    hi = (lo + 1).clamp(max=t - 1)
    w = (pos - lo.to(pos.dtype))[..., None]
    d = x.shape[-1]
    xl = torch.gather(x, 1, lo[..., None].expand(-1, -1, d))
    xh = torch.gather(x, 1, hi[..., None].expand(-1, -1, d))
    return xl * (1 - w) + xh * w


def grid_positions(confidence: torch.Tensor) -> torch.Tensor:
    """Grid Pool's sampling grid from per-output-step confidences.

    ``confidence (B, K)`` -> durations ``1 - sigmoid(0.5 c)`` -> normalised to sum 1 ->
    cumulative distribution with a leading 0: ``(B, K + 1)`` non-decreasing positions in
    ``[0, 1]`` (normalised time). Confident regions get short durations, so they are
    sampled densely (inverse-transform sampling), as the released ``GridPoolLayer``.
    """
    dur = 1.0 - torch.sigmoid(0.5 * confidence)
    dur = dur / (dur.sum(1, keepdim=True) + 1e-16)
    cdf = torch.cumsum(dur, dim=1).clamp(max=1.0)
    return torch.cat([torch.zeros_like(cdf[:, :1]), cdf], dim=1)


class GridPool(nn.Module):
    """Learned temporal down-sampling of a feature sequence to ``ceil(T / ratio) + 1`` steps.

    Returns ``(coarse (B, K+1, D), times (B, K+1))`` where ``times`` are the absolute
    (fractional) fine-step indices sampled, non-decreasing, in ``[0, L - 1]`` for a video
    of ``L`` real steps.
    """

    def __init__(self, in_features: int, *, hidden: int = 128, ratio: int = 4) -> None:
        super().__init__()
        self.ratio = ratio
        self.c1 = nn.Conv1d(in_features, hidden, 3, padding=1)
        self.c2 = nn.Conv1d(hidden, 1, 3, padding=1)

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, _ = feats.shape
        k = max(1, math.ceil(t / self.ratio))
        lengths = mask.sum(1).clamp(min=1).to(feats.dtype)  # (B,)
        conf = self.c2(F.relu(self.c1(feats.transpose(1, 2)))).squeeze(1)[..., None]  # (B, T, 1)
        # confidence at the K output steps, read uniformly over each video's real steps
        centres = (torch.arange(k, device=feats.device, dtype=feats.dtype) + 0.5) / k  # (K,)
        conf_k = _interp_time(conf, centres[None, :] * (lengths[:, None] - 1)).squeeze(-1)  # (B, K)
        grid = grid_positions(conf_k)  # (B, K+1) in [0, 1]
        times = grid * (lengths[:, None] - 1)  # (B, K+1) absolute fine-step indices
        return _interp_time(feats, times), times


def grid_unpool(coarse: torch.Tensor, times: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Inverse of :class:`GridPool`: values at coarse steps ``(B, K+1, C)`` sampled at ``times`` back to every fine step.

    For fine step ``t`` the fractional coarse index ``k + (t - times_k) / (times_{k+1} - times_k)``
    is found (the inverse of the piecewise-linear grid) and the coarse sequence is
    interpolated there. Returns ``(B, T, C)``.
    """
    b, t = mask.shape
    kp1 = times.shape[1]
    fine = torch.arange(t, device=times.device, dtype=times.dtype)[None, :].expand(b, -1).contiguous()  # (B, T)
    seg = torch.searchsorted(times.detach().contiguous(), fine, right=True) - 1  # (B, T)
    seg = seg.clamp(0, kp1 - 2) if kp1 > 1 else seg.clamp(0, 0)
    if kp1 == 1:
        return coarse.expand(b, t, coarse.shape[-1])
    t0 = torch.gather(times, 1, seg)
    t1 = torch.gather(times, 1, seg + 1)
    frac = ((fine - t0) / (t1 - t0).clamp(min=1e-6)).clamp(0.0, 1.0)
    return _interp_time(coarse, seg.to(times.dtype) + frac)


def gaussian_alignment(times: torch.Tensor, mask: torch.Tensor, gate: torch.Tensor | None = None,
                       sigma_frac: float = 1 / 8) -> torch.Tensor:
    """Weights aligning fine steps to coarse steps: ``(B, T, K+1)``, each coarse step's column sums to 1.

    A Gaussian over fine steps centred at each coarse step's absolute time ``times``, with
    ``sigma = sigma_frac * valid length``, times the self-attention gate of each fine step
    (``gate (B, T)``, default 1), zero on padding, normalised over the fine steps.
    """
    b, t = mask.shape
    m = mask.to(times.dtype)
    sigma = (sigma_frac * m.sum(1)).clamp(min=1e-3)  # (B,)
    steps = torch.arange(t, device=times.device, dtype=times.dtype)[None, :, None]  # (1, T, 1)
    g = torch.exp(-((steps - times[:, None, :]) ** 2) / (2 * sigma[:, None, None] ** 2))  # (B, T, K+1)
    if gate is not None:
        g = g * gate[..., None]
    g = g * m[..., None]
    return g / g.sum(1, keepdim=True).clamp(min=1e-12)


class CoarseFineHead(_DetectHead):
    """Coarse-Fine Networks on cached features (see the module docstring).

    Args:
        in_features: ``D`` of the main sequence (the coarse stream's input, also fine level 0).
        num_classes: ``C``.
        level_dims: dims of extra fine levels passed as ``levels`` (e.g. X3D ``layer1..layer4``).
        hidden: width of the coarse stream.
        stages: coarse temporal-conv stages, each FiLM-modulated by the aligned fine levels.
        ratio: temporal down-sampling of Grid Pool (4 as released).
        sigma_frac: Gaussian width as a fraction of the valid length (1/8 as released).
    """

    def __init__(self, in_features: int, num_classes: int, *, level_dims: Sequence[int] = (), hidden: int = 256,
                 stages: int = 2, ratio: int = 4, sigma_frac: float = 1 / 8, dropout: float = 0.3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.sigma_frac = sigma_frac
        dims = (in_features, *level_dims)
        self.pool = GridPool(in_features, ratio=ratio)
        self.inp = nn.Linear(in_features, hidden)
        self.gates = nn.ModuleList(nn.Sequential(nn.Linear(d, max(8, d // 8)), nn.ReLU(), nn.Linear(max(8, d // 8), 1))
                                   for d in dims)
        self.stages = nn.ModuleList(nn.Conv1d(hidden, hidden, 3, padding=1) for _ in range(stages))
        self.film_scale = nn.ModuleList(nn.Linear(sum(dims), hidden) for _ in range(stages))
        self.film_shift = nn.ModuleList(nn.Linear(sum(dims), hidden) for _ in range(stages))
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, feats: torch.Tensor, mask: torch.Tensor | None = None,
                levels: Sequence[torch.Tensor] = ()) -> DetectOut:
        m = _mask_of(feats, mask)
        feats = feats.float() * m[..., None]  # padding content must not reach the convolutions
        levels = [lvl.float() * m[..., None] for lvl in levels]
        coarse, times = self.pool(feats, m)  # (B, K+1, D), (B, K+1)
        aligned = []
        for lvl, gate_net in zip((feats, *levels), self.gates):
            lvl = lvl.float()
            gate = torch.sigmoid(gate_net(lvl)).squeeze(-1)  # (B, T) self-attention gate
            w = gaussian_alignment(times, m, gate, self.sigma_frac)  # (B, T, K+1)
            aligned.append(torch.einsum("btk,btd->bkd", w, lvl))  # (B, K+1, D_l)
        ctx = self.drop(torch.cat(aligned, -1))  # (B, K+1, sum D_l)
        h = F.relu(self.inp(self.drop(coarse)))  # (B, K+1, H)
        for conv, fs, fb in zip(self.stages, self.film_scale, self.film_shift):
            r = F.relu(conv(h.transpose(1, 2))).transpose(1, 2)
            h = h + r * torch.sigmoid(fs(ctx)) + fb(ctx)  # FiLM into the coarse stage
        coarse_logits = self.classifier(self.drop(h))  # (B, K+1, C)
        step_logits = grid_unpool(coarse_logits, times, m)  # (B, T, C)
        hidden = grid_unpool(h, times, m)
        return self._out(step_logits, hidden, m)
