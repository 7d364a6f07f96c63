"""Detection heads: Grid Pool / Unpool, Gaussian alignment, loss, masks, SSDet classifier swap."""

from __future__ import annotations

import pytest
import torch

from featbank.heads.detect import (
    CoarseFineHead,
    FineOnlyHead,
    GridPool,
    PDANHead,
    detection_loss,
    gaussian_alignment,
    grid_positions,
    grid_unpool,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_grid_pool_output_times_monotone():
    torch.manual_seed(0)
    pool = GridPool(8, ratio=4)
    x = torch.randn(3, 21, 8)
    mask = torch.ones(3, 21, dtype=torch.bool)
    mask[1, 13:] = False
    coarse, times = pool(x, mask)
    assert coarse.shape == (3, 7, 8) and times.shape == (3, 7)
    assert (torch.diff(times, dim=1) >= 0).all()
    assert times[:, 0].eq(0).all()
    assert times[0, -1].item() == pytest.approx(20) and times[1, -1].item() == pytest.approx(12)  # valid length - 1
    # confident steps are sampled densely: higher confidence -> shorter duration
    g = grid_positions(torch.tensor([[5.0, -5.0, -5.0]]))
    assert torch.diff(g[0])[0] < torch.diff(g[0])[1]


def test_grid_unpool_inverts_pool_grid():
    times = torch.tensor([[0.0, 2.0, 3.0, 9.0]])
    mask = torch.ones(1, 10, dtype=torch.bool)
    coarse = times[..., None].clone()  # the coarse value at each step is its own time
    back = grid_unpool(coarse, times, mask)
    torch.testing.assert_close(back[0, :, 0], torch.arange(10.0))


def test_gaussian_alignment_weights_sum_to_one_per_coarse_step():
    times = torch.tensor([[0.0, 4.0, 9.0], [0.0, 3.0, 5.0]])
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 6:] = False
    gate = torch.rand(2, 10) + 0.1
    w = gaussian_alignment(times, mask, gate)
    assert w.shape == (2, 10, 3)
    torch.testing.assert_close(w.sum(1), torch.ones(2, 3))
    assert w[1, 6:].eq(0).all()  # padding gets no weight
    assert w[0, :, 1].argmax() == 4 or gate[0].argmax() != 4  # centred at the coarse step's time
    # sigma = valid length / 8: without a gate the weights at +-sigma are exp(-1/2) of the centre
    w = gaussian_alignment(torch.tensor([[0.0, 8.0, 15.0]]), torch.ones(1, 16, dtype=torch.bool))
    assert (w[0, 10, 1] / w[0, 8, 1]).item() == pytest.approx(torch.exp(torch.tensor(-0.5)).item(), rel=1e-5)


def test_loss_is_half_video_plus_step_bce():
    torch.manual_seed(0)
    z = torch.randn(2, 5, 3)
    y = (torch.rand(2, 5, 3) > 0.5).float()
    m = torch.ones(2, 5, dtype=torch.bool)
    from featbank.heads.detect import DetectOut, masked_max

    out = DetectOut(masked_max(z, m), z, z)
    loss = detection_loss(out, y, m)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expect = 0.5 * (bce(z.amax(1), y.amax(1)) + bce(z, y))
    torch.testing.assert_close(loss["video"] + loss["step"], expect)


@pytest.mark.parametrize("cls", [FineOnlyHead, PDANHead, CoarseFineHead])
def test_padding_does_not_change_real_steps(cls):
    torch.manual_seed(0)
    head = cls(12, 4).eval()
    x = torch.randn(1, 9, 12)
    mask = torch.ones(1, 9, dtype=torch.bool)
    padded = torch.cat([x, 100 * torch.randn(1, 5, 12)], 1)
    pmask = torch.cat([mask, torch.zeros(1, 5, dtype=torch.bool)], 1)
    a = head(x, mask)
    b = head(padded, pmask)
    if cls is CoarseFineHead:  # T sets the number of coarse steps; compare at equal coarse counts
        padded = torch.cat([x, 100 * torch.randn(1, 2, 12)], 1)  # ceil(11/4) == ceil(9/4)
        pmask = torch.cat([mask, torch.zeros(1, 2, dtype=torch.bool)], 1)
        b = head(padded, pmask)
    torch.testing.assert_close(b.step_logits[:, :9], a.step_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(b.logits, a.logits, atol=1e-4, rtol=1e-4)


def test_coarse_fine_takes_extra_levels_and_swaps_classifier():
    torch.manual_seed(0)
    head = CoarseFineHead(16, 6, level_dims=(8, 4))
    x = torch.randn(2, 13, 16)
    levels = [torch.randn(2, 13, 8), torch.randn(2, 13, 4)]
    out = head(x, None, levels)
    assert out.step_logits.shape == (2, 13, 6)
    w = head.classifier.weight[:5].detach().clone()
    head.replace_classifier(5)
    assert head(x, None, levels).step_logits.shape == (2, 13, 5)
    assert torch.equal(head.classifier.weight, w)
