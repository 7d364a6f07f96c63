"""Clip samplers: exact index arrays, int64 beyond 127 frames, last-window policies, TSN, dense."""

from __future__ import annotations

import numpy as np
import pytest

from featbank.extract.sampling import SAMPLERS, dense_frames, sliding_windows, static_frames, tsn_segments, whole_video


def test_sliding_exact_windows_and_last_policies():
    np.testing.assert_array_equal(sliding_windows(8, 4, 4), [[0, 1, 2, 3], [4, 5, 6, 7]])  # exact fit: no extra
    np.testing.assert_array_equal(sliding_windows(10, 4, 4, last="pad"), [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 9, 9]])
    np.testing.assert_array_equal(sliding_windows(10, 4, 4, last="shift"), [[0, 1, 2, 3], [4, 5, 6, 7], [6, 7, 8, 9]])
    np.testing.assert_array_equal(sliding_windows(10, 4, 4, last="drop"), [[0, 1, 2, 3], [4, 5, 6, 7]])


def test_sliding_overlap_and_frame_stride():
    np.testing.assert_array_equal(sliding_windows(7, 3, 2), [[0, 1, 2], [2, 3, 4], [4, 5, 6]])
    # span (3-1)*2+1 = 5; starts 0, 3; frame 8..9 uncovered -> padded window at 6
    np.testing.assert_array_equal(
        sliding_windows(10, 3, 3, frame_stride=2), [[0, 2, 4], [3, 5, 7], [6, 8, 9]]
    )
    np.testing.assert_array_equal(
        sliding_windows(10, 3, 3, frame_stride=2, last="shift"), [[0, 2, 4], [3, 5, 7], [5, 7, 9]]
    )
    # stride larger than the span skips frames by design: no partial window for the gap
    np.testing.assert_array_equal(sliding_windows(10, 2, 5), [[0, 1], [5, 6]])


def test_sliding_short_video_gives_one_padded_window():
    for last in ("pad", "shift"):
        np.testing.assert_array_equal(sliding_windows(3, 5, 5, last=last), [[0, 1, 2, 2, 2]])
    np.testing.assert_array_equal(sliding_windows(1, 3, 1), [[0, 0, 0]])
    assert sliding_windows(3, 5, 5, last="drop").shape == (0, 5)


def test_sliding_300_frames_int64_no_wraparound():
    # the released CFB used int8 and scrambled every clip past frame 127
    w = sliding_windows(300, 16, 16)
    assert w.dtype == np.int64 and w.shape == (19, 16)
    np.testing.assert_array_equal(w[:, 0], np.arange(0, 300, 16))
    np.testing.assert_array_equal(w[8], np.arange(128, 144))
    np.testing.assert_array_equal(w[-1], [288, 289, 290, 291, 292, 293, 294, 295, 296, 297, 298, 299, 299, 299, 299, 299])
    assert np.all(np.diff(w, axis=1) >= 0) and w.max() == 299 and w.min() == 0
    big = sliding_windows(100_000, 64, 64)
    assert big.dtype == np.int64 and big[-1, -1] == 99_999


def test_sliding_covers_every_frame_unless_drop():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n, c, s, fs = (int(v) for v in (rng.integers(1, 400), rng.integers(1, 40), rng.integers(1, 40), rng.integers(1, 4)))
        for last in ("pad", "shift"):
            w = sliding_windows(n, c, s, frame_stride=fs, last=last)
            assert w.dtype == np.int64 and w.shape[1] == c and w.min() >= 0 and w.max() < n
            if s <= c and fs == 1:  # contiguous overlapping/adjacent windows cover all frames
                assert set(w.ravel().tolist()) == set(range(n))
            assert w[-1, -1] == n - 1 or (s > (c - 1) * fs + 1)


@pytest.mark.parametrize("bad", [dict(clip_len=0), dict(stride=0), dict(frame_stride=0), dict(n_frames=0)])
def test_sliding_rejects_bad_arguments(bad):
    kw = dict(n_frames=10, clip_len=4, stride=4, frame_stride=1) | bad
    with pytest.raises(ValueError):
        sliding_windows(**kw)
    with pytest.raises(ValueError):
        sliding_windows(10, 4, 4, last="wrap")


def test_tsn_segment_centres_match_mmaction_test_mode():
    np.testing.assert_array_equal(tsn_segments(300, 3), [[50], [150], [250]])
    # clip_len 2: L = 299 starts; centres int(k*299/3 + 299/6) = 49, 149, 249
    np.testing.assert_array_equal(tsn_segments(300, 3, clip_len=2), [[49, 50], [149, 150], [249, 250]])
    np.testing.assert_array_equal(tsn_segments(10, 5), [[1], [3], [5], [7], [9]])
    # fewer frames than segments: segments repeat frames
    np.testing.assert_array_equal(tsn_segments(2, 4), [[0], [0], [1], [1]])
    np.testing.assert_array_equal(tsn_segments(3, 1, clip_len=5), [[0, 1, 2, 2, 2]])
    assert tsn_segments(1000, 8, clip_len=16).dtype == np.int64


def test_tsn_random_offsets_stay_inside_their_segment():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):
        s = tsn_segments(100, 4, rng=rng)
        assert s.shape == (4, 1) and s.dtype == np.int64
        for k, start in enumerate(s[:, 0]):
            assert 25 * k <= start < 25 * (k + 1)
        seen.add(int(s[0, 0]))
    assert len(seen) > 15  # it is random
    a = tsn_segments(100, 4, rng=np.random.default_rng(5))
    b = tsn_segments(100, 4, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)


def test_dense_frames():
    np.testing.assert_array_equal(dense_frames(4), [[0], [1], [2], [3]])
    np.testing.assert_array_equal(dense_frames(5, 3), [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 4]])
    np.testing.assert_array_equal(dense_frames(4, 2, align="end"), [[0, 0], [0, 1], [1, 2], [2, 3]])
    np.testing.assert_array_equal(dense_frames(4, 2, align="start"), [[0, 1], [1, 2], [2, 3], [3, 3]])
    np.testing.assert_array_equal(dense_frames(6, 3, frame_stride=2)[3], [1, 3, 5])
    d = dense_frames(300, 8)
    assert d.dtype == np.int64 and d.shape == (300, 8) and np.array_equal(d[:, 4], np.arange(300))


def test_static_frames_repeat_segment_centres():
    s = static_frames(100, 4, 8)
    assert s.shape == (4, 8) and s.dtype == np.int64
    assert s[:, 0].tolist() == [12, 37, 62, 87] and (s == s[:, :1]).all()  # one frame per clip
    assert static_frames(1, 4, 8).tolist() == [[0] * 8]  # a still image: one clip
    assert static_frames(3, 4, 2).tolist() == [[0, 0], [1, 1], [2, 2]]  # fewer frames than asked: all
    with pytest.raises(ValueError):
        static_frames(10, 0, 8)


def test_whole_video_and_registry():
    w = whole_video(300)
    assert w.shape == (1, 300) and w.dtype == np.int64 and w[0, -1] == 299
    core = {"sliding": sliding_windows, "tsn": tsn_segments, "dense": dense_frames, "whole": whole_video,
            "static": static_frames}
    assert {k: SAMPLERS[k] for k in core} == core  # recipes may register more (glad)
    with pytest.raises(ValueError):
        whole_video(0)
