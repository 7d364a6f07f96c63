"""CFB heads, losses and metrics: per-step BCE as released, pace CE, Acc vs AccSf, and the
frame indices of a 300-frame video (the released int8 linspace wraps; ours does not)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from featbank.heads.cfb import CfbModel, CfbPaceHead, CfbStreamHead
from featbank.heads.metrics import acc_and_acc_sf, two_stream_scores


def test_stream_loss_is_video_bce_plus_step_bce():
    torch.manual_seed(0)
    head = CfbStreamHead(6, 3, hidden=0, dropout=0.0)
    x = torch.randn(4, 5, 6)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[1, 3:] = False
    out = head(x, mask)
    y = torch.tensor([0, 2, 1, -1])
    losses = head.loss(out, y)
    steps = head.classifier(x)  # linear per step: (B, T, C)
    onehot = F.one_hot(y[:3], 3).float()
    vid = torch.stack([steps[0].mean(0), steps[1, :3].mean(0), steps[2].mean(0)])
    assert torch.allclose(out.logits[:3], vid, atol=1e-6)
    assert torch.allclose(losses["bce_video"], F.binary_cross_entropy_with_logits(vid, onehot), atol=1e-6)
    per = [F.binary_cross_entropy_with_logits(steps[i, t], onehot[i], reduction="none").mean()
           for i in range(3) for t in range(5) if mask[i, t]]
    assert torch.allclose(losses["bce_step"], torch.stack(per).mean(), atol=1e-6)
    # padding content does not matter
    x2 = x.clone()
    x2[1, 3:] = 1e4
    assert torch.allclose(head(x2, mask).logits, out.logits)


def test_pace_head_reads_the_rgb_trunk_and_trains_it():
    torch.manual_seed(0)
    model = CfbModel(8, 4, num_classes=3, hidden=16, use_pace=True)
    x = torch.randn(5, 2, 8)
    out = model.forward_pace(x)
    assert out.logits.shape == (5, 5)
    loss = model.pace.loss(out, torch.tensor([0, 1, 2, 3, 4]))["pace_ce"]
    loss.backward()
    assert model.rgb.trunk[0].weight.grad.abs().sum() > 0  # pace shapes the RGB representation
    assert model.rgb.classifier.weight.grad is None and model.flow.trunk[0].weight.grad is None
    assert CfbPaceHead(4).loss(CfbPaceHead(4)(torch.randn(2, 1, 4)), torch.tensor([-1, -1]))["pace_ce"] == 0


def test_two_stream_losses_summed_no_target_term():
    torch.manual_seed(0)
    model = CfbModel(8, 4, num_classes=3, hidden=0)
    out = model(torch.randn(3, 2, 8), torch.randn(3, 2, 4))
    losses = model.loss(out, torch.tensor([0, 1, 2]))
    assert sorted(losses) == ["flow_bce_step", "flow_bce_video", "rgb_bce_step", "rgb_bce_video"]
    rgb_only = CfbModel(8, 4, num_classes=3, use_flow=False)
    assert sorted(rgb_only.loss(rgb_only(torch.randn(2, 2, 8)), torch.tensor([0, 1]))) == ["rgb_bce_step", "rgb_bce_video"]


def test_acc_sf_differs_from_acc_on_a_constructed_case():
    # one video, two steps, two classes. RGB: step 1 is extremely sure of class 0 (logit gap 20),
    # step 2 mildly prefers class 1; flow mildly prefers class 1 at both steps.
    rgb = torch.tensor([[[20.0, 0.0], [0.0, 1.0]]])
    flow = torch.tensor([[[0.0, 2.0], [0.0, 2.0]]])
    # Acc: time-mean logits (10, 0.5) + (0, 2) = (10, 2.5) -> class 0: the saturated step dominates.
    # AccSf: time-mean softmax (0.634, 0.366) + (0.119, 0.881) = (0.753, 1.247) -> class 1.
    s = two_stream_scores(rgb, flow)
    assert s.pred_logits.tolist() == [0] and s.pred_softmax.tolist() == [1]
    assert s.conf_softmax.item() == pytest.approx(0.3655 + 0.8808, abs=1e-3)
    assert acc_and_acc_sf(rgb, flow, torch.tensor([1])) == {"acc": 0.0, "acc_sf": 1.0}
    assert acc_and_acc_sf(rgb, flow, torch.tensor([0])) == {"acc": 1.0, "acc_sf": 0.0}


def test_fusion_masks_and_single_stream():
    rgb = torch.tensor([[[0.0, 5.0], [9.0, 0.0]]])  # step 2 is padding
    mask = torch.tensor([[True, False]])
    s = two_stream_scores(rgb, None, mask)
    assert s.pred_logits.tolist() == [1] and s.pred_softmax.tolist() == [1]
    assert s.conf_softmax.item() == pytest.approx(float(torch.softmax(torch.tensor([0.0, 5.0]), 0)[1]))


def test_frame_indices_of_a_300_frame_video():
    from featbank.experiments.recipes.cfb import eval_frame_indices, released_eval_frame_indices

    ours = eval_frame_indices(300, 16)
    released = released_eval_frame_indices(300, 16)
    assert ours.dtype == np.int64 and ours[0] == 0 and ours[-1] == 299 and np.all(np.diff(ours) > 0)
    assert np.all((ours >= 0) & (ours < 300))
    assert ours.tolist() == [0, 19, 39, 59, 79, 99, 119, 139, 159, 179, 199, 219, 239, 259, 279, 299]
    assert released[:7].tolist() == ours[:7].tolist()  # below 128 they agree
    assert released[7] < 0 and not np.all(np.diff(released.astype(np.int64)) > 0)  # wraps past 127: scrambled clip
    assert released.tolist() == ((ours + 128) % 256 - 128).tolist()  # exactly the int8 wrap
    assert eval_frame_indices(100, 16).tolist() == released_eval_frame_indices(100, 16).tolist()
