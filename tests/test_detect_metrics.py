"""Detection metrics: AP against hand-computed values and sklearn, the Charades protocol, submissions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from featbank.heads.detection_metrics import (
    average_precision,
    charades_frame_labels,
    charades_localize,
    charades_timepoints,
    mean_average_precision,
    read_submission,
    sample_step_scores,
    write_submission,
)


def test_ap_hand_computed_and_sklearn():
    # ranks: + - + - : precisions at the positives 1/1 and 2/3 -> (1 + 2/3) / 2
    s = np.array([0.9, 0.8, 0.3, 0.1])
    y = np.array([1, 0, 1, 0])
    assert average_precision(s, y) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(s, y) == pytest.approx(average_precision_score(y, s))
    assert average_precision(s, np.zeros(4)) is None


@pytest.mark.parametrize("seed", range(5))
def test_ap_equals_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    s = np.round(rng.random((200, 6)), 1)  # many ties
    y = (rng.random((200, 6)) < 0.2).astype(int)
    y[0] = 1
    res = mean_average_precision(s, y)
    for c in range(6):
        assert res["ap"][c] == pytest.approx(average_precision_score(y[:, c], s[:, c]), abs=1e-12)
    assert res["map"] == pytest.approx(np.mean([average_precision_score(y[:, c], s[:, c]) for c in range(6)]))


def test_class_without_positive_is_reported_not_dropped_silently():
    s = np.array([[0.9, 0.1], [0.2, 0.5]])
    y = np.array([[1, 0], [0, 0]])
    res = mean_average_precision(s, y)
    assert res["ap"][1] is None and res["classes_without_positives"] == [1]
    assert res["n_classes_scored"] == 1 and res["map"] == 1.0


def test_charades_frames_and_inclusive_ends():
    t = charades_timepoints(25.0)
    assert len(t) == 25 and t[0] == 0.0 and t[1] == 1.0 and t[-1] == 24.0
    lab = charades_frame_labels(25.0, [(2.0, 4.0, 1)], num_classes=3)
    assert lab[:, 1].nonzero()[0].tolist() == [2, 3, 4]  # both ends inclusive, as the official loader
    assert lab[:, [0, 2]].sum() == 0


def test_sample_step_scores_picks_containing_row():
    starts = np.arange(10.0)
    scores = np.arange(10.0)[:, None] * np.ones((1, 2))
    out = sample_step_scores(scores, starts, starts + 1, length=10.0, n=5)  # times 0, 2, 4, 6, 8
    assert out[:, 0].tolist() == [0, 2, 4, 6, 8]
    out = sample_step_scores(scores[:3], starts[:3], starts[:3] + 1, length=10.0, n=5)  # beyond last row
    assert out[:, 0].tolist() == [0, 2, 2, 2, 2]


def test_submission_round_trip_and_official_scoring(tmp_path):
    rng = np.random.default_rng(0)
    gt = {"vidA": (25.0, [(0.0, 10.0, 0), (5.0, 20.0, 2)]), "vidB": (50.0, [(30.0, 50.0, 1)])}
    per_video = {v: rng.random((25, 3)) for v in gt}
    path = write_submission(tmp_path / "sub.txt", per_video)
    first = path.read_text().splitlines()[0].split()
    assert first[0] == "vidA" and first[1] == "1" and len(first) == 2 + 3
    sub = read_submission(path, num_classes=3)
    assert len(sub.frames) == 50 and sub.frames.min() == 1 and sub.frames.max() == 25
    np.testing.assert_allclose(sub.scores[:25], per_video["vidA"], rtol=1e-5)
    res = charades_localize(sub, gt, 3)
    # oracle: the same frames and labels fed to sklearn
    labels = np.concatenate([charades_frame_labels(*gt[v], 3) for v in gt])
    scores = np.concatenate([per_video[v] for v in gt])
    for c in range(3):
        assert res["ap"][c] == pytest.approx(average_precision_score(labels[:, c], scores[:, c]), abs=1e-5)
    assert res["missing_frames"] == 0 and res["n_frames"] == 50
    # 0-indexed frames are shifted as the official script does
    (tmp_path / "zero.txt").write_text("".join(f"vidA {j} 0.1 0.2 0.3\n" for j in range(25)))
    assert read_submission(tmp_path / "zero.txt").frames.tolist() == list(range(1, 26))


def test_perfect_and_missing_predictions():
    gt = {"v": (25.0, [(0.0, 12.0, 0)])}
    perfect = {("v", j + 1): np.array([1.0 if j <= 12 else 0.0, 0.0]) for j in range(25)}
    res = charades_localize(perfect, gt, 2)
    assert res["map"] == 1.0 and res["classes_without_positives"] == [1]
    res = charades_localize({}, gt, 2)
    assert res["missing_frames"] == 25


def test_malformed_submission_names_line(tmp_path):
    (tmp_path / "bad.txt").write_text("v 1 0.1 0.2\nv x 0.3\n")
    with pytest.raises(ValueError, match="bad.txt:2"):
        read_submission(tmp_path / "bad.txt")
