"""The synthetic image->video benchmark: real files, parseable manifests, deterministic per seed."""

from __future__ import annotations

import numpy as np
import pytest

from featbank.experiments.data.synth_i2v import SynthI2VConfig, generate, read_path_label

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
