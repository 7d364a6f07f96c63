"""The synth-v2v benchmark: deterministic per seed, real files, the designed biases."""

import csv

import numpy as np

from featbank.experiments.data.synth_v2v import (BACKGROUNDS, MOTIONS, SOURCE, TARGET, SynthV2VConfig,
                                                 draw_video, generate, motion_path)


def test_draw_video_is_a_function_of_the_seed():
    cfg = SynthV2VConfig(frames=16, size=64)
    a = draw_video(2, 3, TARGET, cfg, np.random.default_rng(5))
    b = draw_video(2, 3, TARGET, cfg, np.random.default_rng(5))
    c = draw_video(2, 3, TARGET, cfg, np.random.default_rng(6))
    assert a.shape == (16, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_motions_move_the_object_as_named():
    rng = np.random.default_rng(0)
    p = {m: motion_path(i, 32, rng) for i, m in enumerate(MOTIONS)}
    assert np.ptp(p["slide_horizontal"][:, 0]) > 0.5 and np.ptp(p["slide_horizontal"][:, 1]) == 0
    assert np.ptp(p["slide_vertical"][:, 1]) > 0.5 and np.ptp(p["slide_vertical"][:, 0]) == 0
    assert np.ptp(p["spin"][:, 2]) > 700 and np.ptp(p["spin"][:, :2], axis=0).max() == 0
    assert np.ptp(p["pulse"][:, 3]) > 0.8 and np.ptp(p["pulse"][:, :2], axis=0).max() == 0


def test_generate_writes_manifests_with_the_designed_biases(tmp_path):
    cfg = SynthV2VConfig(seed=1, source_train_per_class=3, source_val_per_class=1, target_train_max=3,
                         target_test_max=2, frames=16, size=64, bias=1.0)
    paths = generate(tmp_path, cfg)
    assert paths["classes"].read_text().split() == list(MOTIONS)
    for split in ("source_train", "source_val", "target_train", "target_test"):
        lines = paths[split].read_text().split("\n")
        entries = [ln.split() for ln in lines if ln]
        assert len(entries) == sum(cfg.counts(split))
        assert all((tmp_path / e[0]).is_file() and (tmp_path / e[0]).stat().st_size > 0 for e in entries)
    assert cfg.counts("target_train")[0] > cfg.counts("target_train")[-1]  # imbalanced target
    rows = list(csv.DictReader(open(paths["meta"])))
    src = [r for r in rows if r["split"] == "source_train"]
    assert all(r["background"] == BACKGROUNDS[int(r["label"])] for r in src)  # bias=1: class background
    assert SOURCE.class_background and not TARGET.class_background
