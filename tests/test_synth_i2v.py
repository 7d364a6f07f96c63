"""The synthetic image->video benchmark: real files, parseable manifests, deterministic per seed."""

from __future__ import annotations

import numpy as np
import pytest

from featbank.experiments.data.synth_i2v import (
    CLASSES,
    SynthI2VConfig,
    class_looks,
    draw_still,
    draw_video,
    generate,
    motion_pairs,
    read_path_label,
    rgb_to_yuv420,
)

TINY = dict(classes=3, source_per_class=2, train_per_class=1, test_per_class=1, frames=4, fps=4, size=48)


def _frames(path):
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    a, b, c = (tmp_path_factory.mktemp(n) for n in "abc")
    generate(a, SynthI2VConfig(seed=1, **TINY))
    generate(b, SynthI2VConfig(seed=1, **TINY))
    generate(c, SynthI2VConfig(seed=2, **TINY))
    return a, b, c


def test_manifests_parse_and_point_at_files(two_runs):
    from featbank.extract.manifest import read_manifest

    a = two_runs[0]
    classes = (a / "classes.txt").read_text().split()
    assert len(classes) == 3 and len(set(classes)) == 3
    for split, n, ext in (("source", 6, ".jpg"), ("target_train", 3, ".mp4"), ("target_test", 3, ".mp4")):
        rows = read_path_label(a / f"{split}.txt")
        assert len(rows) == n and sorted({l for _, l in rows}) == [0, 1, 2]
        assert all((a / p).is_file() and p.endswith(ext) for p, _ in rows)
        entries = read_manifest(str(a / f"{split}.txt"), fmt="path_label")
        assert [e.labels[0] for e in entries] == [l for _, l in rows]


def test_files_are_real_images_and_videos(two_runs):
    from PIL import Image

    a = two_runs[0]
    p, _ = read_path_label(a / "source.txt")[0]
    assert Image.open(a / p).size == (48, 48)
    p, _ = read_path_label(a / "target_test.txt")[0]
    f = _frames(a / p)
    assert f.shape == (4, 48, 48, 3)
    assert np.abs(f[0].astype(int) - f[-1].astype(int)).mean() > 1  # there is motion


def test_deterministic_per_seed(two_runs):
    a, b, c = two_runs
    for split in ("source", "target_train", "target_test"):
        assert (a / f"{split}.txt").read_text() == (b / f"{split}.txt").read_text()
    for p, _ in read_path_label(a / "source.txt"):
        assert (a / p).read_bytes() == (b / p).read_bytes()
    for p, _ in read_path_label(a / "target_train.txt"):
        assert np.array_equal(_frames(a / p), _frames(b / p))
    p, _ = read_path_label(a / "source.txt")[0]
    assert (a / p).read_bytes() != (c / p).read_bytes()


def test_domains_differ_in_colour_statistics(two_runs):
    from PIL import Image

    a = two_runs[0]
    src = np.stack([np.asarray(Image.open(a / p)) for p, _ in read_path_label(a / "source.txt")]).astype(float)
    tgt = np.concatenate([_frames(a / p) for p, _ in read_path_label(a / "target_train.txt")]).astype(float)
    assert src.mean() - tgt.mean() > 40  # light studio stills vs darker scenes


def test_design_v2_defaults_and_motion_pairs():
    cfg = SynthI2VConfig()
    assert cfg.classes >= 8 and cfg.test_per_class >= 12 and cfg.train_per_class >= 16 and cfg.frames >= 32
    pairs = motion_pairs(cfg.classes)
    assert len(pairs) >= 2
    looks = class_looks(cfg.classes)
    assert len({lk.name for lk in looks}) == cfg.classes
    for a, b in pairs:  # same appearance (shape, texture, colours), different motion
        la, lb = looks[a], looks[b]
        assert (la.shape, la.texture, la.color, la.color2) == (lb.shape, lb.texture, lb.color, lb.color2)
        assert la.motion != lb.motion
    # the four other classes differ in appearance from every class
    in_pairs = {c for p in pairs for c in p}
    for c in set(range(cfg.classes)) - in_pairs:
        assert sum(CLASSES[c][:2] == CLASSES[o][:2] for o in range(cfg.classes)) == 1


def test_a_still_cannot_tell_a_pair_apart_but_the_video_can():
    looks = class_looks(8)
    for a, b in motion_pairs(8):
        # same random stream -> the very same still for both classes of a pair
        assert np.array_equal(draw_still(looks[a], 48, np.random.default_rng(7)),
                              draw_still(looks[b], 48, np.random.default_rng(7)))
        va = draw_video(looks[a], 48, 8, np.random.default_rng(7))
        vb = draw_video(looks[b], 48, 8, np.random.default_rng(7))
        assert not np.array_equal(va, vb)


def test_motion_direction_of_the_slide_pair():
    """The object of class `right` ends right of where it started; `left` the opposite."""
    from featbank.experiments.data.synth_i2v import motion_track

    for seed in range(5):
        r = motion_track("right", 32, 64, 28, np.random.default_rng(seed))
        lft = motion_track("left", 32, 64, 28, np.random.default_rng(seed))
        assert r[-1, 0] - r[0, 0] > 20 and lft[0, 0] - lft[-1, 0] > 20
        cw = motion_track("cw", 32, 64, 28, np.random.default_rng(seed))
        ccw = motion_track("ccw", 32, 64, 28, np.random.default_rng(seed))
        assert np.all(np.diff(cw[:, 2]) < 0) and np.all(np.diff(ccw[:, 2]) > 0)


def test_reencoding_the_same_frames_in_one_process_gives_the_same_bytes(tmp_path):
    """The root cause of two demos in one process disagreeing: libx264's macroblock-tree rate
    control (on by default with CRF) wrote different bytes for identical frames within one
    process, depending on what the process had allocated before (about 5 of these 8 videos
    differed on every re-encode with it on). write_mp4 turns it off; allocations between the
    rounds stand in for an extraction running in between."""
    from featbank.experiments.data.synth_i2v import write_mp4

    looks = class_looks(8)
    vids = [draw_video(looks[i], 64, 16, np.random.default_rng(i)) for i in range(8)]

    def encode(tag):
        out = []
        for i, v in enumerate(vids):
            write_mp4(tmp_path / f"{tag}_{i}.mp4", v, 16)
            out.append((tmp_path / f"{tag}_{i}.mp4").read_bytes())
        return out

    first = encode("a")
    rng, junk = np.random.default_rng(0), []
    for r in range(3):
        junk += [bytes(int(n)) for n in rng.integers(100, 50_000, 200)]  # churn the heap
        del junk[: len(junk) // 2]
        assert encode(f"r{r}") == first


def test_yuv_planes_are_bt601_limited_range():
    white = np.full((4, 4, 3), 255, np.uint8)
    black = np.zeros((4, 4, 3), np.uint8)
    yw, yb = rgb_to_yuv420(white), rgb_to_yuv420(black)
    assert yw.shape == (6, 4) and yw[:4].min() == 235 and yb[:4].max() == 16
    assert set(yw[4:].ravel()) == {128} and set(yb[4:].ravel()) == {128}


def test_cli_runs_twice_give_identical_decoded_frames(tmp_path):
    """Two `featbank data synth-i2v` processes (each decoding and encoding many videos) write
    the same decoded frames: no encoder or scaler state leaks between videos or processes."""
    import subprocess
    import sys

    args = ["data", "synth-i2v", "--classes", "2", "--source-per-class", "1", "--train-per-class", "2",
            "--test-per-class", "1", "--frames", "6", "--size", "32", "--seed", "3"]
    code = "import sys; from featbank.experiments.cli import main; sys.exit(main(sys.argv[1:]))"
    outs = []
    for name in "xy":
        r = subprocess.run([sys.executable, "-c", code, *args[:2], str(tmp_path / name), *args[2:]],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "\r" not in r.stderr and "it/s" not in r.stderr  # no progress bar into a pipe
        outs.append(tmp_path / name)
    for p, _ in read_path_label(outs[0] / "target_train.txt"):
        assert np.array_equal(_frames(outs[0] / p), _frames(outs[1] / p))


def test_invalid_config():
    with pytest.raises(ValueError, match="classes"):
        SynthI2VConfig(classes=1)
    with pytest.raises(ValueError, match="size"):
        SynthI2VConfig(size=33)


def test_cli(tmp_path, capsys):
    from featbank.experiments.cli import main

    rc = main(["data", "synth-i2v", str(tmp_path / "d"), "--seed", "0", "--classes", "2", "--source-per-class", "1",
               "--train-per-class", "1", "--test-per-class", "1", "--frames", "2", "--size", "32"])
    assert rc == 0 and len(read_path_label(tmp_path / "d" / "source.txt")) == 2
    assert main(["data", "synth-i2v", str(tmp_path / "e"), "--classes", "1"]) == 1
