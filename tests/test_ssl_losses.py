"""Multi-level self-supervised losses (heads/ssl.py) against direct numpy references on small
constructed inputs, gradients to every projection, and the loss across two torchrun ranks."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from featbank.heads.ssl import (
    LEVELS,
    MLOWeights,
    MultiLevelSSLHead,
    PrototypeQueue,
    graph_loss,
    graph_targets,
    instance_graph,
    local_global_loss,
    multi_positive_infonce,
    sinkhorn,
    swapped_prediction_loss,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BIN = Path(sys.executable).parent
WORKER = Path(__file__).with_name("ssl_dist_worker.py")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _ref_infonce(q, keys, offset, tau, extra=None):
    """Loop-by-loop reference of the multi-positive InfoNCE."""
    q, keys = _unit(q), _unit(keys)
    extra = None if extra is None else _unit(extra)
    b, n, _ = q.shape
    losses = []
    for i in range(b):
        for a in range(n):
            pos = sum(math.exp(q[i, a] @ q[i, c] / tau) for c in range(n) if c != a)
            neg = sum(math.exp(q[i, a] @ keys[j, v] / tau) for j in range(len(keys)) if j != offset + i
                      for v in range(keys.shape[1]))
            if extra is not None:
                neg += sum(math.exp(q[i, a] @ extra[i, m] / tau) for m in range(extra.shape[1]))
            losses.append(-math.log(pos / (pos + neg)))
    return float(np.mean(losses))


@pytest.mark.parametrize("n_views,offset", [(2, 0), (3, 2)])
def test_multi_positive_infonce_matches_reference(n_views, offset):
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(6, n_views, 5))
    q = keys[offset:offset + 3] + 0.0  # this "rank" holds videos offset..offset+2
    loss, _ = multi_positive_infonce(torch.tensor(q), torch.tensor(keys), offset, temperature=0.5)
    assert loss.item() == pytest.approx(_ref_infonce(q, keys, offset, 0.5), rel=1e-9)


def test_reversed_copy_is_an_extra_negative():
    rng = np.random.default_rng(1)
    keys = rng.normal(size=(4, 2, 8))
    rev = rng.normal(size=(4, 2, 8))
    got, _ = multi_positive_infonce(torch.tensor(keys), torch.tensor(keys), 0, temperature=0.3,
                                    extra_negatives=torch.tensor(rev))
    assert got.item() == pytest.approx(_ref_infonce(keys, keys, 0, 0.3, rev), rel=1e-9)
    # A reversed copy equal to the positive doubles the positive's mass in the denominator.
    same_pos = keys[:, ::-1].copy()
    base, _ = multi_positive_infonce(torch.tensor(keys), torch.tensor(keys), 0, temperature=0.3)
    with_copy, _ = multi_positive_infonce(torch.tensor(keys), torch.tensor(keys), 0, temperature=0.3,
                                          extra_negatives=torch.tensor(same_pos[:, :1]))
    assert with_copy.item() > base.item()
    assert with_copy.item() == pytest.approx(_ref_infonce(keys, keys, 0, 0.3, same_pos[:, :1]), rel=1e-9)


def test_local_global_matches_reference_and_perfect_match_is_found():
    rng = np.random.default_rng(2)
    b, d, t = 3, 6, 4
    fine = rng.normal(size=(b, 3, d, t))
    loss, _ = local_global_loss(torch.tensor(fine), temperature=0.2)
    ref = []
    for i in range(b):
        loc = np.concatenate([fine[i, 0].reshape(d, t // 2, 2).mean(-1), fine[i, 1].reshape(d, t // 2, 2).mean(-1)], 1)
        loc, glo = _unit(loc.T), _unit(fine[i, 2].T)  # (T, d)
        for a, bb in ((loc, glo), (glo, loc)):
            s = a @ bb.T / 0.2
            for m in range(t):
                ref.append((-(s[m, m] - np.log(np.exp(s[m]).sum()))) / 2)
    assert loss.item() == pytest.approx(np.sum(ref) / (b * t), rel=1e-9)
    # Global steps equal to the pooled local steps (orthogonal codes per step): every step matched.
    codes = torch.eye(t).repeat(b, 1, 1) * 5  # (b, d=t, T)
    perfect = torch.stack([codes[:, :, [0, 0, 1, 1]], codes[:, :, [2, 2, 3, 3]], codes], 1)
    _, acc = local_global_loss(perfect)
    assert acc.item() == 1.0


def _ref_sinkhorn(scores, eps, iters):
    q = np.exp(scores / eps - (scores / eps).max()).T
    q /= q.sum()
    k, n = q.shape
    for _ in range(iters):
        q *= (1 / k) / q.sum(1, keepdims=True)
        q *= (1 / n) / q.sum(0, keepdims=True)
    return (q / q.sum(0, keepdims=True)).T


def test_sinkhorn_matches_reference_and_marginals():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(12, 5)) * 0.1
    codes = sinkhorn(torch.tensor(scores), 0.05, 3).numpy()
    np.testing.assert_allclose(codes, _ref_sinkhorn(scores, 0.05, 3), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(codes.sum(1), 1.0, atol=1e-12)  # each sample: a distribution
    # columns of the plan (codes / N) sum to 1/N exactly; rows (prototypes) converge to 1/K
    converged = sinkhorn(torch.tensor(scores), 0.05, 500).numpy()
    np.testing.assert_allclose((converged / 12).sum(0), 1 / 5, atol=1e-6)
    three = (codes / 12).sum(0)
    assert np.abs(three - 0.2).max() < np.abs(np.exp(scores / 0.05).sum(0) / np.exp(scores / 0.05).sum() - 0.2).max()


def test_swapped_prediction_matches_reference():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(4, 2, 6))
    codes = rng.dirichlet(np.ones(6), size=(4, 2))
    got = swapped_prediction_loss(torch.tensor(logits), torch.tensor(codes), 0.1).item()
    p = np.exp(logits / 0.1) / np.exp(logits / 0.1).sum(-1, keepdims=True)
    ref = -0.5 * ((codes[:, 1] * np.log(p[:, 0] + 1e-10)).sum(-1) + (codes[:, 0] * np.log(p[:, 1] + 1e-10)).sum(-1))
    assert got == pytest.approx(ref.mean(), rel=1e-9)


def test_graph_targets_row_stochastic_and_reference():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(6, 6)) * 3
    sim = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    sim[0, 0] = 0.01  # a diagonal below the threshold is still kept
    labels = np.array([0, 0, 1, 1, 1, 2])
    got = graph_targets(torch.tensor(sim), torch.tensor(labels), 0.05).numpy()
    ins = np.where(sim < 0.05, 0.0, sim)
    np.fill_diagonal(ins, np.diag(sim))
    com = ins * (labels[:, None] == labels[None, :])
    np.testing.assert_allclose(got, com / com.sum(1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-12)
    assert (got[labels[:, None] != labels[None, :]] == 0).all() and (np.diag(got) > 0).all()
    assert torch.equal(instance_graph(torch.tensor(sim)).diagonal(), torch.tensor(sim).diagonal())


@pytest.mark.parametrize("reduction", ["released", "ce"])
def test_graph_loss_matches_reference(reduction):
    rng = np.random.default_rng(6)
    keys = rng.normal(size=(5, 2, 4))
    targets = rng.dirichlet(np.ones(5), size=2)
    got = graph_loss(torch.tensor(keys[1:3]), torch.tensor(keys), torch.tensor(targets), 0.07, reduction).item()
    s = _unit(keys[1:3, 0]) @ _unit(keys[:, 1]).T / 0.07
    sm = np.exp(s) / np.exp(s).sum(1, keepdims=True)
    per = -np.log(sm + 1e-10) * targets
    assert got == pytest.approx(per.mean() if reduction == "released" else per.sum(1).mean(), rel=1e-9)


def _feats(b=4, gen=0):
    g = torch.Generator().manual_seed(gen)
    return ({"low": torch.randn(b, 3, 16, 8, generator=g), "mid": torch.randn(b, 3, 24, 4, generator=g),
             "high": torch.randn(b, 3, 32, 2, generator=g)},
            {"low": torch.randn(b, 2, 16, 8, generator=g), "mid": torch.randn(b, 2, 24, 4, generator=g)})


def test_gradients_reach_every_projection_and_weights_apply():
    torch.manual_seed(0)
    head = MultiLevelSSLHead({"low": 16, "mid": 24, "high": 32}, dim=8, num_prototypes=5)
    feats, rev = _feats()
    out = head(feats)
    assert out.fine["low"].shape == (4, 3, 8, 8) and out.inst["mid"].shape == (4, 3, 8) and out.logits.shape == (4, 3, 5)
    res = head.loss(out, head.embed_reversed(rev), queue=PrototypeQueue(16, 5), use_graph=True)
    res["loss"].backward()
    for n, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n
    w = MLOWeights()
    total = (res["lhigh"] + res["lfine"] + res["lgraph"] + 0.5 * (res["lmid"] + res["lfmid"])
             + 0.3 * (res["llow"] + res["lflow"]) + 0.5 * res["lsd"])
    assert res["loss"].item() == pytest.approx(total.item(), rel=1e-6)
    # Every weight is configurable: only the swapped prediction left.
    only = MLOWeights(high=0, fine=0, mid=0, low=0, graph=0, swav=1.0)
    r2 = head.loss(head(feats), weights=only, use_graph=True)
    assert r2["loss"].item() == pytest.approx(r2["lsd"].item(), rel=1e-6)
    assert w.graph_mid == 0.5 and w.graph_low == 0.3 and w.temperature == 0.07


def test_queue_keeps_the_newest_at_the_end():
    q = PrototypeQueue(5, 2)
    for i in range(4):
        q.update(torch.full((2, 2, 2), float(i)))
    hist = q.history()
    assert hist.shape == (5, 2, 2) and hist[:, 0, 0].tolist() == [1, 2, 2, 3, 3]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun", path=str(BIN)) is None, reason="torchrun not installed")
def test_two_ranks_equal_one_rank_on_the_gathered_batch(tmp_path):
    """torchrun (gloo) with 2 ranks: mean of the per-rank losses and the rank-averaged gradients
    equal one process's loss and gradients on the gathered batch."""
    out = tmp_path / "dist.json"
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", str(WORKER), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    single = subprocess.run([sys.executable, str(WORKER), str(tmp_path / "one.json")], capture_output=True,
                            text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    ref = json.loads((tmp_path / "one.json").read_text())
    assert res["world"] == 2 and ref["world"] == 1
    for k in ref["losses"]:
        assert res["losses"][k] == pytest.approx(ref["losses"][k], rel=1e-9, abs=1e-12), k
    for k in ref["grads"]:
        np.testing.assert_allclose(res["grads"][k], ref["grads"][k], rtol=1e-7, atol=1e-10, err_msg=k)
    assert set(LEVELS) <= {k.split(".")[1] for k in ref["grads"] if k.startswith("inst.")}
