"""GLAD heads and views against the released code's conventions (KHU-VLL/GLAD)."""

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from featbank.extract.glad_views import glad_windows, local_clips, sample_frames_offsets
from featbank.heads.adaptation import grad_reverse
from featbank.heads.glad import (GLAD_SOURCE, GLAD_TARGET, GLOBAL_VIEW, PERMUTATIONS_3, TEST_LOCAL_VIEWS,
                                 TRAIN_LOCAL_VIEWS, GladAlignmentLoss, GladHead, TOLHead, ViewDiscriminator,
                                 domain_bce, permute_clips)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

D = 16


def _released_test_offsets(n, clip_len=8, interval=2, num_clips=8):
    """mmaction2 SampleFrames._get_test_clips, written out independently."""
    ori = clip_len * interval
    avg = (n - ori + 1) / float(num_clips)
    if n > ori - 1:
        return (np.arange(num_clips) * avg + avg / 2.0).astype(int)
    return np.zeros(num_clips, dtype=int)


def _released_lngn(imgs, l=(4, 5), g=3):
    """The released FrameSampler.lngn slicing on imgs (B, N, C, T, H, W)."""
    locs = torch.stack([imgs[:, i:i + 1] for i in l], dim=1)  # (B, 2, 1, C, T, H, W)
    glob = torch.stack([imgs[:, :, :, g:g + 1]], dim=1)  # (B, 1, N, C, 1, H, W)
    return locs, glob


@pytest.mark.parametrize("n", [10, 16, 17, 32, 40, 101, 300])
def test_view_indices_equal_the_released_sampler(n):
    offsets = _released_test_offsets(n)
    inds = np.mod(offsets[:, None] + np.arange(8)[None, :] * 2, n)  # SampleFrames, out_of_bound 'loop'
    assert np.array_equal(sample_frames_offsets(n), offsets)
    imgs = torch.from_numpy(inds).reshape(1, 8, 1, 8, 1, 1)  # frame index as the "pixel"
    locs, glob = _released_lngn(imgs)
    w = glad_windows(n)
    assert w.shape == (9, 8)
    assert np.array_equal(w[:8], inds)
    assert np.array_equal(w[4], locs[0, 0].flatten().numpy()) and np.array_equal(w[5], locs[0, 1].flatten().numpy())
    assert np.array_equal(w[GLOBAL_VIEW], glob[0, 0].flatten().numpy())  # frame 3 of every clip
    assert TRAIN_LOCAL_VIEWS == (4, 5)


def test_train_mode_offsets_stay_in_their_segments():
    rng = np.random.default_rng(0)
    for n in (40, 100):
        avg = (n - 16 + 1) // 8
        off = sample_frames_offsets(n, rng=rng)
        assert ((off >= np.arange(8) * avg) & (off < np.arange(8) * avg + avg)).all()
    assert (local_clips(40, rng=rng) < 40).all()


def test_released_test_views_are_local_5_and_global():
    # released _do_test: subclip_size=3 over the 2 local views [4, 5]
    f_local = torch.tensor([[4.0], [5.0]])[None]  # (B=1, V_local=2, C=1): the view's clip index
    v_local, subclip = f_local.shape[1], 3
    chosen = []
    for v in list(range(subclip, v_local + 1, subclip)) + ([v_local] if v_local % subclip != 0 else []):
        chosen += f_local[0, v - subclip:v, 0].tolist()
    assert tuple(int(c) for c in chosen) == TEST_LOCAL_VIEWS == (5,)


def _probe_disc() -> ViewDiscriminator:
    """A discriminator whose logit is the first feature (after the GRL)."""
    d = ViewDiscriminator(D, hidden=8, layers=1, dropout=0.0)
    d.net = nn.Sequential(nn.Linear(D, 1, bias=False))
    with torch.no_grad():
        d.net[0].weight.zero_()
        d.net[0].weight[0, 0] = 1.0
    return d


def test_discriminator_labels_source_one_target_zero():
    assert (GLAD_SOURCE, GLAD_TARGET) == (1.0, 0.0)
    d = _probe_disc()
    src = torch.zeros(4, D)
    src[:, 0] = 20.0  # logit +20 -> "source"
    tgt = torch.zeros(3, D)
    tgt[:, 0] = -20.0
    ok = domain_bce(d, src, tgt)
    assert ok.loss.item() < 1e-6 and ok.acc.item() == 1.0
    flipped = domain_bce(d, tgt[:1].expand(4, D), src[:1].expand(3, D))
    assert flipped.loss.item() > 19 and flipped.acc.item() == 0.0


@pytest.mark.parametrize("term", ["local", "global", "cross"])
def test_each_glad_discriminator_sees_its_views_with_source_one(term):
    loss = GladAlignmentLoss(D, hidden=8, layers=1, dropout=0.0, terms=(term,))
    loss.discs[term] = _probe_disc()
    b = 5
    vs, vt = torch.zeros(b, 9, D), torch.zeros(b, 9, D)
    # source views say "source" (+20), target views "target" (-20) on the views the term reads;
    # every other view says the opposite, so reading a wrong view gives a large loss.
    local, glob = list(TRAIN_LOCAL_VIEWS), [GLOBAL_VIEW]
    read_s = {"local": local, "global": glob, "cross": local + glob}[term]
    read_t = read_s
    vs[:, :, 0], vt[:, :, 0] = -20.0, 20.0
    vs[:, read_s, 0], vt[:, read_t, 0] = 20.0, -20.0
    out = loss(vs, vt)
    assert out[f"dom_{term}"].item() < 1e-6 and out[f"acc_{term}"].item() == 1.0
    out = loss(vt, vs)  # domains swapped: every prediction wrong
    assert out[f"dom_{term}"].item() > 19


def test_cross_pairs_source_local_with_target_global_and_back():
    loss = GladAlignmentLoss(D, hidden=8, layers=1, dropout=0.0, terms=("cross",))
    seen = []

    class Spy(nn.Module):
        def forward(self, feats, coeff=1.0):
            seen.append(feats.detach().clone())
            return feats[:, 0]

    loss.discs["cross"] = Spy()
    vs = torch.arange(9.0)[None, :, None].expand(2, 9, D) + 100.0  # source view v -> 100 + v
    vt = torch.arange(9.0)[None, :, None].expand(2, 9, D) + 200.0  # target view v -> 200 + v
    loss(vs, vt)
    first = seen[0][:, 0].tolist()
    loc_s, loc_t = 100 + np.mean(TRAIN_LOCAL_VIEWS), 200 + np.mean(TRAIN_LOCAL_VIEWS)
    # order: [source-local, source-global] (label 1) then [target-global, target-local] (label 0)
    assert first == pytest.approx([loc_s, loc_s, 108.0, 108.0, 208.0, 208.0, loc_t, loc_t])


@pytest.mark.parametrize("coeff", [1.0, 0.5])
def test_grl_reverses_and_scales_the_gradient(coeff):
    x = torch.randn(6, D, requires_grad=True)
    w = torch.randn(6, D)
    (grad_reverse(x, coeff) * w).sum().backward()
    assert torch.allclose(x.grad, -coeff * w)
    torch.manual_seed(0)
    d = ViewDiscriminator(D, hidden=8, layers=2, dropout=0.0)
    x1 = torch.randn(4, D, requires_grad=True)
    d(x1, coeff).sum().backward()
    x2 = x1.detach().clone().requires_grad_(True)
    d.net(x2).sum().backward()  # the same MLP without the GRL
    assert torch.allclose(x1.grad, -coeff * x2.grad, atol=1e-6)
    assert torch.equal(d(x1, coeff), d.net(x1).squeeze(1))  # identity forward


def test_tol_labels_cover_all_six_orders():
    assert sorted(PERMUTATIONS_3) == sorted(itertools.permutations(range(3))) and len(set(PERMUTATIONS_3)) == 6
    head = TOLHead(D, pair_hidden=8, dropout=0.0)
    clips = torch.arange(3.0)[None, :, None].expand(300, 3, D)  # clip i holds value i
    out = head(clips, generator=torch.Generator().manual_seed(0))
    assert set(out.labels.tolist()) == set(range(6)) and out.logits.shape == (300, 6)
    shuffled = permute_clips(clips, out.labels)[:, :, 0].long()
    expect = torch.tensor(PERMUTATIONS_3)[out.labels]
    assert torch.equal(shuffled, expect)
    loss = TOLHead.loss(out)["tol"]
    loss.backward()
    assert torch.isfinite(loss) and head.pair.weight.grad.abs().sum() > 0


def test_glad_head_uses_the_chosen_views_and_starts_as_identity_adapter():
    torch.manual_seed(0)
    head = GladHead(D, 4).eval()
    x = torch.randn(3, 9, D)
    assert torch.equal(head.adapter(x), x)  # zero-initialised residual branch
    y = x.clone()
    y[:, [0, 1, 2, 3, 6, 7]] = 1e3  # views not read at test time
    a = head(x, local=TEST_LOCAL_VIEWS).logits
    assert torch.allclose(a, head(y, local=TEST_LOCAL_VIEWS).logits)
    assert torch.allclose(a, head.classifier(x[:, [5, 8]].mean(1)))
    assert head.loss(head(x), torch.tensor([-1, -1, -1]))["cls"].item() == 0.0
