"""Contract sweep over every registered head: shapes, gradients, no NaN."""

from __future__ import annotations

import pytest
import torch

from featbank.heads.cycda import ClassAwareContrastiveLoss, CycdaVideoHead
from featbank.heads.registry import HEADS, create_head

D, C, B, T = 24, 5, 6, 4


def _example(head, batch=B):
    g = torch.Generator().manual_seed(0)
    shape = (batch, D) if head.feats_ndim == 2 else (batch, T, D)
    return torch.randn(*shape, generator=g)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_contract(name):
    torch.manual_seed(0)
    head = create_head(name, in_features=D, num_classes=C)
    x = _example(head).requires_grad_(True)
    out = head(x)
    assert isinstance(out, tuple) and out.logits.shape == (B, C)
    assert out.embed.shape[0] == B
    assert torch.isfinite(out.logits).all()
    losses = head.loss(out, torch.tensor([0, 1, 2, 3, 4, -1]))
    assert isinstance(losses, dict) and losses
    total = sum(losses.values())
    assert total.ndim == 0 and torch.isfinite(total)
    total.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for n, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    # all-unlabelled batch: zero loss, still differentiable
    head.zero_grad()
    z = head.loss(head(_example(head)), torch.full((B,), -1))
    assert all(v.item() == 0.0 for v in z.values())
    # batch of one, eval mode is deterministic
    head.eval()
    x1 = _example(head, 1)
    assert torch.equal(head(x1).logits, head(x1).logits)


def test_unknown_head_lists_names():
    with pytest.raises(KeyError, match="cycda-image"):
        create_head("nope", in_features=D, num_classes=C)


@pytest.mark.parametrize("pooling", CycdaVideoHead.POOLINGS)
def test_video_head_mask_ignores_padding(pooling):
    torch.manual_seed(0)
    head = CycdaVideoHead(D, C, pooling=pooling).eval()
    x = torch.randn(2, T, D)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    y = x.clone()
    y[0, 2:] = 1e3  # padding content must not matter
    assert torch.allclose(head(x, mask).logits, head(y, mask).logits, atol=1e-5)
    assert torch.allclose(head(x, mask).logits[0], head(x[:1, :2]).logits[0], atol=1e-5)


def test_contrastive_loss_prefers_positive():
    loss = ClassAwareContrastiveLoss(0.05)
    f = torch.tensor([[1.0, 0.0]])
    good = loss(f, torch.tensor([[1.0, 0.1]]), torch.tensor([[-1.0, 0.0]]))
    bad = loss(f, torch.tensor([[-1.0, 0.0]]), torch.tensor([[1.0, 0.1]]))
    assert good.item() < 1e-3 and bad.item() > 10
    # equal similarities: log 2
    assert loss(f, f, f).item() == pytest.approx(0.6931, abs=1e-4)
    m = torch.tensor([False])
    assert loss(f, f, f, m).item() == 0.0
