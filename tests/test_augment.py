"""SSDet volume augmentations: Freeze, MixUp, CutMix on clips, sequences and maps."""

from __future__ import annotations

import pytest
import torch

from featbank.heads.augment import (
    background_index,
    cutmix,
    cutmix_weights,
    freeze,
    mixup,
    mixup_weights,
    ssdet_augment,
    with_background,
)

B, T, K = 6, 12, 4

SHAPES = {  # name: (shape, time_dim)
    "clip": ((B, 3, T, 8, 16), 2),
    "sequence": ((B, T, 10), 1),
    "map": ((B, T, 5, 4, 16), 1),
}


def _data(kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape, td = SHAPES[kind]
    x = torch.randn(*shape, generator=g)
    y = with_background((torch.rand(B, T, K, generator=g) > 0.5).float())
    return x, y, td


@pytest.mark.parametrize("kind", sorted(SHAPES))
def test_p_zero_is_identity(kind):
    x, y, td = _data(kind)
    for f in (freeze, mixup, cutmix):
        out = f(x, y, torch.Generator().manual_seed(1), p=0.0, time_dim=td)
        assert torch.equal(out.x, x) and torch.equal(out.y, y) and out.weights.sum() == 0
    ax, ay = ssdet_augment(x, y, torch.Generator().manual_seed(1), p_freeze=0, p_mixup=0, p_cutmix=0, time_dim=td)
    assert torch.equal(ax, x) and torch.equal(ay, y)


@pytest.mark.parametrize("kind", sorted(SHAPES))
def test_freeze_keeps_length_and_labels_frozen_steps_background(kind):
    x, y, td = _data(kind)
    out = freeze(x, y, torch.Generator().manual_seed(3), p=1.0, time_dim=td)
    assert out.x.shape == x.shape and out.y.shape == y.shape
    bg = background_index(y)
    assert bg == K and bg != 0
    frozen = out.weights.bool()
    assert frozen.any(1).all()  # p = 1: every sample froze something
    for i in range(B):
        steps = frozen[i].nonzero().flatten()
        s, L = int(steps[0]) - 1, len(steps)
        assert steps.tolist() == list(range(s + 1, s + 1 + L)) and 1 <= L < T // 2
        xi = x[i].movedim(td - 1, 0)  # (T, ...)
        oi = out.x[i].movedim(td - 1, 0)
        for t in steps.tolist():  # frozen steps repeat step s
            assert torch.equal(oi[t], xi[s])
            assert out.y[i, t, bg] == 1 and out.y[i, t, :bg].sum() == 0
        assert torch.equal(oi[: s + 1], xi[: s + 1])  # before: unchanged
        assert torch.equal(oi[s + 1 + L:], xi[s + 1: T - L])  # after: shifted by L
        assert torch.equal(out.y[i, s + 1 + L:], y[i, s + 1: T - L])


def test_background_cannot_be_class_zero():
    with pytest.raises(ValueError, match="real class"):
        background_index(torch.zeros(2, 3, 1))


def test_mixup_weights_sum_to_one_and_ramp_continuously():
    w = mixup_weights(20, 5.0, 15.0)
    assert w[:5].eq(0).all() and w[15:].eq(1).all()
    d = torch.diff(w)
    assert (d >= 0).all() and d.max() <= 1 / 10 + 1e-6  # linear ramp, no jump
    x, y, td = _data("sequence")
    out = mixup(x, y, torch.Generator().manual_seed(0), p=1.0, time_dim=td)
    g = out.weights
    assert ((g > 0) & (g < 1)).any()
    for i in range(B):
        assert (torch.diff(g[i]).abs() <= 1 / (0.1 * T) + 1e-6).all()  # continuous ramp
    # labels are the convex combination with weights (1 - g, g): real + background mass is preserved
    ysum, osum = y.sum(-1), out.y.sum(-1)
    perm_sum = (osum - (1 - g) * ysum) / g.clamp(min=1e-6)
    assert torch.all((g == 0) | (perm_sum >= -1e-5))
    assert torch.allclose((1 - g) + g, torch.ones_like(g))


@pytest.mark.parametrize("kind", ["clip", "map"])
def test_cutmix_weights_equal_window_area(kind):
    x, y, td = _data(kind)
    out = cutmix(x, y, torch.Generator().manual_seed(2), p=1.0, time_dim=td)
    # the fraction of pixels that changed (came from the partner) equals the label weight
    changed = (out.x != x)
    changed = changed.movedim(td, 1).reshape(B, T, -1).float().mean(-1)
    assert (out.weights > 0).any()
    torch.testing.assert_close(changed, out.weights, atol=1e-6, rtol=0)
    left, area = cutmix_weights(16, 16, 9, 2.0, 14.0)
    assert area.max() == pytest.approx(9 / 16)  # window of 9w/16, fully inside
    assert ((left + 9).clamp(max=16) - left.clamp(min=0)).clamp(min=0).float().div(16).sub(area).abs()[
        (torch.arange(16) + 0.5 >= 2) & (torch.arange(16) + 0.5 <= 14)].max() < 1e-6


def test_cutmix_on_pooled_features_mixes_with_area_weights():
    x, y, td = _data("sequence")
    g = torch.Generator().manual_seed(5)
    out = cutmix(x, y, g, p=1.0, time_dim=td)
    a = out.weights[..., None]
    perm = torch.randperm(B, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(out.x, (1 - a) * x + a * x[perm])
    torch.testing.assert_close(out.y, (1 - a) * y + a * y[perm])
