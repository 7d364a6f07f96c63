"""The shared store -> heads path (load_rows, pad_sequences, step_targets) and the fit loop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from featbank.experiments.fit import OptimConfig, balanced_weights, fit, lr_factor, minibatches, seed_everything
from featbank.experiments.stats import mean_ci95, summarize, write_demo_results
from featbank.store import FeatureSetInfo, VideoMeta, VideoRows
from featbank.store.dataset import load_rows, pad_sequences, step_targets
from featbank.store.memory import MemoryStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _store(n_videos=6, dim=4):
    store = MemoryStore()
    fs = store.create_set(FeatureSetInfo(name="b/x", row_shape=(dim,), dtype="float32", backbone="b",
                                         weights_id="ab" * 32))
    for i in range(n_videos):
        n = i + 1
        starts = np.arange(n) * 0.5
        feats = np.full((n, dim), float(i), np.float32) + np.arange(n)[:, None]
        fs.write_video(VideoRows(feats, starts, starts + 0.5),
                       VideoMeta(f"v{i}", labels=(i % 3,), split="train" if i < 4 else "test",
                                 domain="source" if i % 2 == 0 else "target", fps=2.0))
    return store


def test_load_rows_filters_and_keeps_times_and_metadata():
    rows = load_rows(_store(), "b/x", split="train")
    assert rows.video_ids == ("v0", "v1", "v2", "v3")
    assert list(rows.n_rows) == [1, 2, 3, 4]
    assert rows.labels.tolist() == [0, 1, 2, 0]
    assert rows.domains == ("source", "target", "source", "target")
    np.testing.assert_allclose(rows.starts[rows.offsets[3]:], [0, 0.5, 1.0, 1.5])
    assert torch.equal(rows.video(2), torch.tensor([[2.0] * 4, [3.0] * 4, [4.0] * 4]))
    assert torch.allclose(rows.pooled()[3], torch.full((4,), 3 + 1.5))
    sub = rows.subset([3, 0])
    assert sub.video_ids == ("v3", "v0") and list(sub.n_rows) == [4, 1]
    with pytest.raises(Exception, match="no video has split"):
        load_rows(_store(), "b/x", split="nosuch")


def test_pad_sequences_masks_and_subsamples_uniformly():
    rows = load_rows(_store(), "b/x")
    padded = pad_sequences(rows)
    assert padded.feats.shape == (6, 6, 4) and padded.mask.sum(1).tolist() == [1, 2, 3, 4, 5, 6]
    assert np.isnan(padded.starts[0, 1]) and padded.starts[5, 5] == 2.5
    capped = pad_sequences(rows, max_len=3)
    # video 5 has 6 rows -> rows 0, 2, 4
    assert capped.feats[5, :, 0].tolist() == [5.0, 7.0, 9.0]
    assert capped.mask.sum(1).tolist() == [1, 2, 3, 3, 3, 3]


def test_step_targets_on_the_row_grid():
    starts = np.array([0.0, 1.0, 2.0, 3.0, np.nan])
    tg = step_targets(starts, starts + 1.0, [(0.9, 2.6, 1), (2.0, 10.0, 0)], num_classes=3)
    # centres 0.5 1.5 2.5 3.5 nan
    assert tg.tolist() == [[0, 0, 0], [0, 1, 0], [1, 1, 0], [1, 0, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="class 5"):
        step_targets(starts, starts + 1, [(0, 1, 5)], num_classes=3)


def _run(seed, out=None):
    seed_everything(seed)
    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(1))
    y = (x[:, 0] > 0).long()
    head = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    cfg = OptimConfig(optimizer="sgd", lr=0.2, epochs=5, batch_size=32, schedule="cosine")
    return fit(head, lambda b: {"loss": F.cross_entropy(head(b[0]), b[1])},
               lambda epoch, gen: minibatches((x, y), cfg.batch_size, gen), cfg,
               evaluate=lambda e: {"acc": float((head(x).argmax(1) == y).float().mean())},
               seed=seed, out_dir=out)


def test_fit_is_bit_identical_for_a_seed_and_logs_each_epoch(tmp_path):
    a, b = _run(3, tmp_path), _run(3)
    assert a.history == [dict(r) for r in b.history]
    assert a.final["acc"] > 0.9
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [0, 1, 2, 3, 4] and all("loss" in l for l in lines)
    assert _run(4).history != a.history


def test_fit_refuses_nan_loss_and_bad_config():
    head = torch.nn.Linear(2, 1)
    with pytest.raises(FloatingPointError, match="loss became nan"):
        fit(head, lambda b: {"loss": head(b[0]).sum() * float("nan")},
            lambda e, g: minibatches((torch.ones(4, 2),), 2, g), OptimConfig(epochs=1))
    for bad in ({"epochs": 0}, {"lr": -1.0}, {"batch_size": 0}, {"momentum": 1.0}):
        with pytest.raises(ValueError):
            OptimConfig(**bad)


def test_schedules_and_balanced_sampling():
    cfg = OptimConfig(schedule="multistep", milestones=(2, 4), gamma=0.1, epochs=6)
    assert [round(lr_factor(cfg, e), 6) for e in range(6)] == [1, 1, 0.1, 0.1, 0.01, 0.01]
    w = balanced_weights(np.array([0, 0, 0, 1, -1]))
    assert w.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0, 0.0])
    labels = torch.tensor([0] * 90 + [1] * 10)
    drawn = torch.cat([b[0] for b in minibatches((labels,), 100, torch.Generator().manual_seed(0),
                                                   weights=balanced_weights(labels))])
    assert 0.35 < drawn.float().mean() < 0.65


def test_mean_ci95_and_demo_results(tmp_path):
    m, h = mean_ci95([1.0, 2.0, 3.0])
    assert m == 2.0 and h == pytest.approx(4.302653 * 1.0 / np.sqrt(3), rel=1e-5)
    assert mean_ci95([0.5]) == (0.5, None)
    rows = [summarize("source-only", [{"acc": 0.4}, {"acc": 0.5}]), summarize("full", [{"acc": 0.7}, {"acc": 0.8}])]
    res = write_demo_results(tmp_path, recipe="x", metric="acc", rows=rows, source_only="source-only",
                             final="full", seeds=[0, 1], seconds=1.0)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["source_only_acc"] == pytest.approx(0.45) and saved["final_acc"] == pytest.approx(0.75)
    assert saved["final_ci95"] == pytest.approx(res["final_ci95"]) and saved["seeds"] == [0, 1]
