"""SSDet volume augmentations (Freeze, MixUp, CutMix) as pure tensor functions.

SSDet (AAAI 2023) pretrains a temporal detector with frame-level pseudo labels (each video's
labels replicated on every time step) on augmented volumes, then fine-tunes it on detection
targets. The three augmentations work on any tensor with a time axis:

* pixel clips ``(B, C, T, H, W)``: ``time_dim=2`` (CutMix pastes along ``W``);
* feature sequences ``(B, T, D)``: ``time_dim=1`` (no spatial extent: CutMix mixes the
  features with its area weights, i.e. only the weights of the sliding window apply);
* feature maps ``(B, T, C, H, W)``: ``time_dim=1`` (CutMix pastes along ``W``).

Labels ``y`` are ``(B, T, K + 1)`` soft per-step targets whose **last** channel ``K`` is the
background class used for frozen steps. It is a class index of its own: the released SSDet
scripts label frozen frames ``0``, which is also the first real class; here the background is
index ``K`` (``background_index(y)``), and a label tensor without a real class (``K = 0``)
is refused. :func:`with_background` appends that channel.

Every function draws its randomness from an explicit ``torch.Generator``, applies to each
sample independently with probability ``p`` (``p = 0`` returns the inputs unchanged), and
returns ``Augmented(x, y, weights)`` where ``weights`` is ``(B, T)``: the partner's label
weight per step for MixUp / CutMix, the frozen-step indicator for Freeze.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Augmented(NamedTuple):
    x: torch.Tensor  # same shape as the input
    y: torch.Tensor  # (B, T, K + 1)
    weights: torch.Tensor  # (B, T) partner weight (MixUp / CutMix) or frozen indicator (Freeze)


def with_background(y: torch.Tensor) -> torch.Tensor:
    """``(B, T, K)`` -> ``(B, T, K + 1)`` with a zero background channel appended at index ``K``."""
    return torch.cat([y, torch.zeros_like(y[..., :1])], dim=-1)


def background_index(y: torch.Tensor) -> int:
    """Index of the background channel (the last); never 0, so it cannot collide with class 0."""
    k = int(y.shape[-1]) - 1
    if k < 1:
        raise ValueError(f"labels need at least one real class before the background channel, got {tuple(y.shape)}")
    return k


def _check(x: torch.Tensor, y: torch.Tensor, time_dim: int) -> tuple[int, int]:
    if time_dim not in (1, 2) or x.ndim <= time_dim:
        raise ValueError(f"time_dim must be 1 (B, T, ...) or 2 (B, C, T, H, W); got {time_dim} for shape {tuple(x.shape)}")
    b, t = int(x.shape[0]), int(x.shape[time_dim])
    if y.shape[:2] != (b, t):
        raise ValueError(f"labels {tuple(y.shape)} do not match the batch and time of x {tuple(x.shape)}")
    background_index(y)
    return b, t


def _gather_time(x: torch.Tensor, idx: torch.Tensor, time_dim: int) -> torch.Tensor:
    """``x`` with its time axis re-indexed per sample: ``idx`` is ``(B, T)``."""
    shape = [1] * x.ndim
    shape[0], shape[time_dim] = x.shape[0], x.shape[time_dim]
    full = idx.view(shape).expand_as(x)
    return torch.gather(x, time_dim, full)


def _per_step(w: torch.Tensor, x: torch.Tensor, time_dim: int) -> torch.Tensor:
    """``(B, T)`` weights broadcast against ``x``."""
    shape = [1] * x.ndim
    shape[0], shape[time_dim] = x.shape[0], x.shape[time_dim]
    return w.view(shape).to(x.dtype)


def freeze(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, *, p: float = 0.5, time_dim: int = 1,
           lengths: torch.Tensor | None = None) -> Augmented:
    """Freeze a moment: step ``s`` is repeated for ``L ~ U[1, T/2)`` steps and the rest shifted later.

    The output keeps the input's length (the last ``L`` steps fall off the end); frozen
    steps ``s+1 .. s+L`` show step ``s`` and are labelled background only.

    Args:
        x: clips / sequences / maps (see the module docstring).
        y: ``(B, T, K + 1)`` labels, background last.
        gen: random generator.
        p: probability per sample.
        time_dim: the time axis of ``x``.
        lengths: ``(B,)`` valid steps per sample (padding is never frozen into); default ``T``.
    """
    b, t = _check(x, y, time_dim)
    bg = background_index(y)
    idx = torch.arange(t).repeat(b, 1)  # (B, T) source step of each output step
    frozen = torch.zeros(b, t, dtype=torch.bool)
    lens = lengths.tolist() if lengths is not None else [t] * b
    for i in range(b):
        n = int(lens[i])
        if n < 3 or float(torch.rand((), generator=gen)) >= p:
            continue
        span = int(torch.randint(1, max(2, n // 2), (), generator=gen))  # L in [1, n/2)
        s = int(torch.randint(0, n - 1, (), generator=gen))
        span = min(span, n - 1 - s)
        if span < 1:
            continue
        src = torch.arange(n)
        src[s + 1:s + 1 + span] = s
        src[s + 1 + span:] = torch.arange(s + 1, n - span)
        idx[i, :n] = src
        frozen[i, s + 1:s + 1 + span] = True
    x_out = _gather_time(x, idx, time_dim)
    y_out = torch.gather(y, 1, idx[..., None].expand_as(y)).clone()
    y_out[frozen] = 0.0
    y_out[..., bg][frozen] = 1.0
    return Augmented(x_out, y_out, frozen.to(y.dtype))


def mixup_weights(t: int, a: float, b: float) -> torch.Tensor:
    """``(T,)`` weight of the *second* clip: 0 before ``a``, a linear ramp on ``[a, b]``, 1 after ``b``.

    The first clip spans ``[0, b]`` and the second ``[a, T]``; together they cover ``[0, T]``.
    """
    steps = torch.arange(t, dtype=torch.float64) + 0.5  # step centres
    if b <= a:
        return (steps >= a).to(torch.float32)
    return ((steps - a) / (b - a)).clamp(0.0, 1.0).to(torch.float32)


def mixup(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, *, p: float = 0.5, time_dim: int = 1,
          min_overlap: float = 0.1) -> Augmented:
    """Temporal MixUp: each sample blends into a partner (a batch permutation) over an overlap.

    Per step ``t`` the output is ``(1 - g(t)) x + g(t) x_partner`` and the label
    ``(1 - g(t)) y + g(t) y_partner``, with ``g`` from :func:`mixup_weights` (overlap
    ``[a, b]`` drawn uniformly, at least ``min_overlap * T`` long), so the two label weights
    sum to 1 at every step and ramp continuously.
    """
    bsz, t = _check(x, y, time_dim)
    perm = torch.randperm(bsz, generator=gen)
    g = torch.zeros(bsz, t)
    for i in range(bsz):
        if float(torch.rand((), generator=gen)) >= p or perm[i] == i:
            continue
        a = float(torch.rand((), generator=gen)) * t * (1 - min_overlap)
        b = a + min_overlap * t + float(torch.rand((), generator=gen)) * (t - a - min_overlap * t)
        g[i] = mixup_weights(t, a, b)
    gx = _per_step(g, x, time_dim)
    x_out = (1 - gx) * x + gx * x[perm]
    y_out = (1 - g[..., None].to(y.dtype)) * y + g[..., None].to(y.dtype) * y[perm]
    return Augmented(x_out, y_out, g.to(y.dtype))


def cutmix_weights(t: int, width: int, win: int, t0: float, t1: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The sliding window of CutMix: ``(T,)`` left edges (pixels) and ``(T,)`` visible-area fractions.

    The window (``win`` pixels wide, full height) enters from the left at step ``t0`` and has
    left the frame on the right at step ``t1``; its left edge moves linearly (the ramp). The
    area fraction at a step is the visible window width over ``width``.
    """
    steps = torch.arange(t, dtype=torch.float64) + 0.5
    frac = ((steps - t0) / max(t1 - t0, 1e-6)).clamp(0.0, 1.0)
    left = torch.round(-win + frac * (width + win)).to(torch.int64)  # (T,) from -win to width
    visible = (torch.minimum(left + win, torch.tensor(width)) - left.clamp(min=0)).clamp(min=0)
    area = visible.to(torch.float32) / width
    area[(steps < t0) | (steps > t1)] = 0.0
    return left, area


def cutmix(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, *, p: float = 0.5, time_dim: int = 1,
           width_frac: float = 9 / 16) -> Augmented:
    """Temporal CutMix: a window of ``9/16`` of the frame width slides over the clip, showing a partner.

    On clips and maps the partner's pixels replace the window (full height, ``W`` axis); the
    label per step is ``(1 - area) y + area y_partner`` with the window's visible area
    fraction. On pooled feature sequences ``(B, T, D)`` there is no spatial extent: only the
    area weights apply (the features are mixed with them, as MixUp would).
    """
    bsz, t = _check(x, y, time_dim)
    spatial = x.ndim == 5
    width = int(x.shape[-1]) if spatial else 16  # pooled features: a nominal 16-wide frame
    win = max(1, int(round(width * width_frac)))
    perm = torch.randperm(bsz, generator=gen)
    area = torch.zeros(bsz, t)
    lefts = torch.full((bsz, t), -win, dtype=torch.int64)
    for i in range(bsz):
        if float(torch.rand((), generator=gen)) >= p or perm[i] == i:
            continue
        t0 = float(torch.rand((), generator=gen)) * t * 0.5
        t1 = t0 + t * 0.25 + float(torch.rand((), generator=gen)) * (t - t0 - t * 0.25)
        lefts[i], area[i] = cutmix_weights(t, width, win, t0, t1)
    if spatial:
        cols = torch.arange(width)
        inside = (cols[None, None, :] >= lefts[..., None]) & (cols[None, None, :] < (lefts + win)[..., None])
        inside &= (area > 0)[..., None]  # (B, T, W)
        m = inside[:, None, :, None, :] if time_dim == 2 else inside[:, :, None, None, :]  # broadcast over C, H
        x_out = torch.where(m, x[perm], x)
    else:
        ax = _per_step(area, x, time_dim)
        x_out = (1 - ax) * x + ax * x[perm]
    a = area[..., None].to(y.dtype)
    y_out = (1 - a) * y + a * y[perm]
    return Augmented(x_out, y_out, area.to(y.dtype))


def ssdet_augment(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, *, p_freeze: float = 0.5,
                  p_mixup: float = 0.5, p_cutmix: float = 0.5, time_dim: int = 1,
                  lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Freeze, then MixUp, then CutMix (each with its own probability); returns ``(x, y)``."""
    x, y, _ = freeze(x, y, gen, p=p_freeze, time_dim=time_dim, lengths=lengths)
    x, y, _ = mixup(x, y, gen, p=p_mixup, time_dim=time_dim)
    x, y, _ = cutmix(x, y, gen, p=p_cutmix, time_dim=time_dim)
    return x, y
