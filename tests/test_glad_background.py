"""Median frames, BackgroundBlend, and the released list-file formats."""

import numpy as np
import pytest
from PIL import Image

from featbank.extract.background import BackgroundBlend, blend, fit_to, median_frame, write_median_frames
from featbank.extract.manifest import read_manifest


def test_median_frame_is_the_temporal_median():
    f = np.zeros((5, 4, 4, 3), np.uint8)
    f[:, 0, 0, 0] = [9, 1, 200, 7, 3]
    f[2, 1, 1] = 255  # a passing object in one frame vanishes
    m = median_frame(f)
    assert m.dtype == np.uint8 and m.shape == (4, 4, 3)
    assert m[0, 0, 0] == 7 and m[1, 1].tolist() == [0, 0, 0]
    assert median_frame(np.stack([np.full((2, 2, 3), 10), np.full((2, 2, 3), 13)]).astype(np.uint8))[0, 0, 0] == 12


def test_background_blend_with_p_one_equals_the_formula():
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, (4, 6, 6, 3), dtype=np.uint8)
    medians = {"a": np.full((6, 6, 3), 40, np.uint8), "b": np.full((6, 6, 3), 200, np.uint8)}
    bb = BackgroundBlend(medians, p=1.0, alpha=0.75, seed=3)
    assert bb.choose("a") == "b" and bb.choose("b") == "a"  # always another video's background
    out = bb(clip, "a")
    expect = np.rint(0.75 * clip.astype(np.float64) + 0.25 * 200.0).astype(np.uint8)
    assert out.shape == clip.shape and out.dtype == np.uint8
    assert np.array_equal(out, expect)
    assert np.array_equal(blend(clip, medians["b"]), expect)
    assert np.array_equal(BackgroundBlend(medians, p=0.0)(clip, "a"), clip)  # p = 0: untouched


def test_background_blend_probability_and_seed():
    medians = {f"v{i}": np.full((2, 2, 3), i, np.uint8) for i in range(20)}
    ids = [f"x{i}" for i in range(400)]
    bb = BackgroundBlend(medians, p=0.25, seed=0)
    chosen = [bb.choose(v) for v in ids]
    assert 0.18 < np.mean([c is not None for c in chosen]) < 0.32
    assert chosen == [BackgroundBlend(medians, p=0.25, seed=0).choose(v) for v in ids]  # seeded
    assert chosen != [BackgroundBlend(medians, p=0.25, seed=1).choose(v) for v in ids]


def test_fit_to_resizes_and_centre_crops():
    img = np.zeros((10, 20, 3), np.uint8)
    img[:, 5:15] = 255
    out = fit_to(img, 10, 10)
    assert out.shape == (10, 10, 3) and out.min() == 255  # the centre 10 columns
    assert fit_to(img, 20, 20).shape == (20, 20, 3)


def test_write_median_frames_from_a_frame_folder(tmp_path):
    video = tmp_path / "vids" / "clsA" / "v1"
    video.mkdir(parents=True)
    for i in range(5):
        arr = np.full((8, 8, 3), 100, np.uint8)
        arr[i, :] = 250  # a bar moving down
        Image.fromarray(arr).save(video / f"img_{i + 1:05d}.png")
    (tmp_path / "list.txt").write_text("vids/clsA/v1 0\n")
    res = write_median_frames(tmp_path / "list.txt", tmp_path / "med")
    assert res["written"] == 1 and not res["failures"]
    med = np.asarray(Image.open(tmp_path / "med" / "vids" / "clsA" / "v1.jpg"))
    assert abs(int(med.mean()) - 100) <= 3  # the moving bar is gone
    assert write_median_frames(tmp_path / "list.txt", tmp_path / "med")["skipped"] == 1


def test_both_released_list_formats_parse(tmp_path):
    k400 = tmp_path / "filelist_k400_train_closed.txt"
    k400.write_text("archery/-0tEgrR_q2k_000012_000022 300 0\nbowling/abc_000001_000011 250 7\n")
    babel = tmp_path / "filelist_babel_train_closed.txt"
    babel.write_text("train/005513 12 48 3\ntrain/005514 0 96 11\n")
    a = read_manifest(k400)
    assert [(e.video_id, e.n_frames, e.labels, e.offset) for e in a] == [
        ("archery/-0tEgrR_q2k_000012_000022", 300, (0,), 0), ("bowling/abc_000001_000011", 250, (7,), 0)]
    b = read_manifest(babel)
    assert [(e.video_id, e.offset, e.n_frames, e.labels) for e in b] == [
        ("train/005513", 12, 48, (3,)), ("train/005514", 0, 96, (11,))]
    with pytest.raises(Exception, match="line 1|:1:"):
        bad = tmp_path / "bad.txt"
        bad.write_text("train/1 x 48 3\n")
        read_manifest(bad)
