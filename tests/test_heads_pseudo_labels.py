"""Frame -> video pseudo labels: the frame_v2 threshold, vid rule, files, no double softmax."""

from __future__ import annotations

import math

import numpy as np
import pytest

from featbank.heads.pseudo_labels import (
    FramePredictions,
    apply_rule,
    check_probs,
    frame_v2,
    frame_v2_balanced,
    quality_report,
    read_frame_ps,
    read_vid_ps,
    softmax,
    vid_rule,
    write_frame_ps,
    write_vid_ps,
)


def _constructed(n_videos=10, n_frames=4, C=3, seed=0):
    """Videos whose max frame confidence is distinct and known: video i peaks at 0.5 + 0.04 i."""
    rng = np.random.default_rng(seed)
    probs, labels = [], []
    for i in range(n_videos):
        peak = 0.5 + 0.04 * i
        c = i % C
        rows = []
        for j in range(n_frames):
            conf = peak if j == 0 else peak - 0.2 - 0.01 * j
            row = np.full(C, (1 - conf) / (C - 1))
            row[c] = conf
            rows.append(row)
        rng.shuffle(rows)
        probs.extend(rows)
        labels.append(c)
    offsets = np.arange(0, n_videos * n_frames + 1, n_frames)
    return FramePredictions.from_probs(np.array(probs), offsets, [f"v{i}" for i in range(n_videos)], np.array(labels))


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.8, 1.0])
def test_frame_v2_keeps_exactly_the_requested_fraction(p):
    fp = _constructed()
    vpl = frame_v2(fp, p)
    assert vpl.keep.sum() == math.ceil(p * 10)
    # the kept videos are the most confident ones
    assert set(np.flatnonzero(vpl.keep)) == set(range(10 - math.ceil(p * 10), 10))
    assert float(vpl.threshold) == pytest.approx(0.5 + 0.04 * (10 - math.ceil(p * 10)))
    # kept frames are exactly those with conf >= tau, and dropped videos get -1
    assert np.array_equal(vpl.frame_mask, fp.conf >= vpl.threshold)
    assert np.all(vpl.labels[~vpl.keep] == -1)


def test_frame_v2_label_is_argmax_of_mean_over_kept_frames():
    # one video, 3 frames over 2 classes; tau chosen by p=1 keeps only frames >= its max (one frame)
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]])
    fp = FramePredictions.from_probs(np.vstack([probs, [[0.4, 0.6]]]), np.array([0, 3, 4]), ["a", "b"], np.array([0, 1]))
    vpl = frame_v2(fp, 1.0)  # tau = min(0.9, 0.6) = 0.6
    assert float(vpl.threshold) == pytest.approx(0.6)
    # video a keeps frames 0.9, 0.8, 0.7 -> mean [0.467, 0.533] -> class 1; vid rule agrees
    assert vpl.labels.tolist() == [1, 1] and vpl.n_frames.tolist() == [3, 1]
    assert np.allclose(vpl.probs[0], probs.mean(0))
    v = vid_rule(fp)
    assert v.labels.tolist() == [1, 1] and v.coverage == 1.0
    assert np.allclose(v.probs[0], probs.mean(0))


def test_vid_rule_mean_over_all_frames():
    fp = _constructed()
    v = vid_rule(fp)
    assert v.keep.all() and v.frame_mask.all()
    expect = np.add.reduceat(fp.probs, fp.offsets[:-1]) / 4
    assert np.allclose(v.probs, expect, atol=1e-6)
    assert v.accuracy == 1.0


def test_balanced_rule_keeps_fraction_per_class():
    fp = _constructed(n_videos=12, C=3)
    vpl = frame_v2_balanced(fp, 0.5)
    kept_per_class = np.bincount(np.array(fp.labels)[vpl.keep], minlength=3)
    assert kept_per_class.tolist() == [2, 2, 2]
    # the global rule would keep the 6 most confident videos, not 2 per class
    g = frame_v2(fp, 0.5)
    assert g.keep.sum() == 6


def test_empty_video_is_dropped_not_crashing():
    fp = FramePredictions.from_probs(np.array([[0.7, 0.3]]), np.array([0, 0, 1]), ["empty", "one"], np.array([0, 0]))
    vpl = frame_v2(fp, 1.0)
    assert vpl.labels.tolist() == [-1, 0]


def test_no_double_softmax():
    logits = np.array([[4.0, 0.0, 0.0], [0.0, 3.0, 1.0]])
    with pytest.raises(ValueError, match="from_logits"):
        FramePredictions.from_probs(logits, np.array([0, 2]), ["a"])
    fp = FramePredictions.from_logits(logits, np.array([0, 2]), ["a"])
    assert np.allclose(fp.probs, softmax(logits))
    assert fp.conf[0] == pytest.approx(np.exp(4) / (np.exp(4) + 2), rel=1e-5)
    # softmax of probabilities (the double-softmax bug) flattens the confidence
    assert softmax(fp.probs).max(1)[0] < 0.6 < fp.conf[0]
    check_probs(fp.probs)


def test_files_roundtrip_in_published_layout(tmp_path):
    fp = _constructed()
    vpl = frame_v2(fp, 0.6)
    f = write_frame_ps(tmp_path / "stage1_frame_ps.npy", fp)
    d = np.load(f, allow_pickle=True).item()
    assert list(d) == list(fp.video_ids)
    gt, pred, conf, soft = d["v3"]
    assert gt.shape == pred.shape == conf.shape == (4,) and soft.shape == (4, 3)
    assert np.all(gt == fp.labels[3]) and np.allclose(conf, soft.max(1)) and np.array_equal(pred, soft.argmax(1))
    back = read_frame_ps(f)
    assert np.allclose(back.probs, fp.probs) and np.array_equal(back.offsets, fp.offsets)
    assert np.array_equal(back.labels, fp.labels)

    g = write_vid_ps(tmp_path / "stage1_vid_ps.npy", vpl)
    dv = np.load(g, allow_pickle=True).item()
    assert set(dv) == {fp.video_ids[i] for i in np.flatnonzero(vpl.keep)}
    gt, pred, conf, soft, n = dv["v9"]
    assert soft.shape == (3,) and isinstance(n, int) and n == vpl.n_frames[9]
    assert pred == vpl.labels[9] and gt == fp.labels[9] and conf == pytest.approx(soft.max())
    assert read_vid_ps(g)["v9"][1] == pred


def test_quality_report_percentiles():
    fp = _constructed()
    rep = quality_report(fp, frame_v2(fp, 0.8), percentiles=(100, 50))
    assert [r["percentile"] for r in rep["frame"]] == [100.0, 50.0]
    assert rep["frame"][0]["coverage"] == 1.0 and rep["frame"][1]["coverage"] == 0.5
    assert rep["frame"][0]["accuracy"] == pytest.approx((fp.pred == fp.frame_labels).mean())
    top = np.argsort(-fp.conf)[:20]
    assert rep["frame"][1]["accuracy"] == pytest.approx((fp.pred[top] == fp.frame_labels[top]).mean())
    assert rep["rule"]["coverage"] == pytest.approx(0.8)


def test_unknown_rule():
    with pytest.raises(ValueError, match="frame_v2"):
        apply_rule("nope", _constructed())
    assert apply_rule("vid", _constructed()).coverage == 1.0


def test_class_balanced_top_keeps_every_predicted_class():
    """Per-class top-k never drops a class the model predicts, where a global threshold does."""
    from featbank.heads.pseudo_labels import class_balanced_top, frame_v2, video_pseudo_labels_from_probs

    rng = np.random.default_rng(0)
    v, c = 40, 5
    pred = np.r_[np.zeros(30, int), np.arange(1, 5).repeat(2), np.full(2, 4)]  # class 0 dominates
    conf = np.where(pred == 0, 0.95, 0.4) + rng.uniform(0, 0.02, v)
    probs = np.full((v, c), 0.0)
    probs[np.arange(v), pred] = conf
    probs += (1 - probs.sum(1, keepdims=True)) / c
    fp = FramePredictions.from_probs(probs, np.arange(v + 1), [f"v{i}" for i in range(v)], pred)
    glob = frame_v2(fp, 0.5)
    assert glob.classes_present == 1  # the global threshold keeps only the confident class
    bal = class_balanced_top(fp, 0.5)
    assert bal.classes_present == len(np.unique(pred)) == 5
    for k in np.unique(pred):  # ceil(p * n_c) most confident of each class
        idx = np.flatnonzero(pred == k)
        kept = np.flatnonzero(bal.keep & (pred == k))
        assert len(kept) == int(np.ceil(0.5 * len(idx)))
        assert conf[kept].min() >= np.sort(conf[idx])[::-1][len(kept) - 1]
    assert np.array_equal(bal.labels[bal.keep], pred[bal.keep])
    assert bal.confusion(c).trace() == bal.keep.sum()
    via = video_pseudo_labels_from_probs(probs, fp.video_ids, pred, 0.5, balanced=True)
    assert np.array_equal(via.labels, bal.labels)


def test_frame_v2_keeps_int_p_v_videos_as_released_and_ceil_on_request():
    from featbank.heads.pseudo_labels import apply_rule, frame_v2

    v = 13
    probs = np.eye(3, dtype=np.float32)[np.arange(v) % 3] * 0.5 + 0.5 / 3
    probs[:, 0] += np.linspace(0, 0.01, v)
    probs /= probs.sum(1, keepdims=True)
    fp = FramePredictions.from_probs(probs, np.arange(v + 1), [f"v{i}" for i in range(v)])
    assert frame_v2(fp, 0.8).keep.sum() == int(0.8 * v) == 10
    assert frame_v2(fp, 0.8, rounding="ceil").keep.sum() == 11
    assert apply_rule("frame_v2_ceil", fp, 0.8).keep.sum() == 11
