"""CLI of detection: synth-detect, eval charades-localize --json, store import-layout; benchmark determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from featbank.experiments.cli import main
from featbank.experiments.data.annotations import read_charades_csv
from featbank.experiments.data.synth_detect import SynthDetectConfig, compose_video, generate, load_sources
from featbank.heads.detection_metrics import write_submission

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_eval_charades_localize_json(tmp_path, capsys):
    gt = tmp_path / "gt.csv"
    gt.write_text("id,actions,length\nA,c000 0.00 12.00;c002 5.00 20.00,25.00\nB,c001 30.00 50.00,50.00\n")
    rng = np.random.default_rng(0)
    sub = write_submission(tmp_path / "sub.txt", {"A": rng.random((25, 4)), "B": rng.random((25, 4))})
    assert main(["eval", "charades-localize", str(sub), str(gt), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert 0 <= res["map"] <= 1 and len(res["ap"]) == 4
    assert res["classes_without_positives"] == [3] and res["ap"][3] is None
    assert res["n_frames"] == 50 and res["missing_frames"] == 0
    # a broken submission is one line naming it, exit 1
    (tmp_path / "bad.txt").write_text("A x 0.1\n")
    assert main(["eval", "charades-localize", str(tmp_path / "bad.txt"), str(gt)]) == 1
    assert "bad.txt:1" in capsys.readouterr().err


def test_synth_detect_deterministic_and_annotated(tmp_path):
    cfg = SynthDetectConfig(seed=3, train_videos=2, test_videos=1, size=32, fps=4, duration=(1.0, 2.0),
                            gap=(0.5, 1.0), real_clips=False, shared=str(tmp_path / "nowhere"))
    res = generate(tmp_path / "a", cfg)
    assert "real_clips" in res["skipped"] and "rawframes" in res["skipped"]  # skipped with a reason
    anns = read_charades_csv(tmp_path / "a" / "train.csv", num_classes=res["num_classes"])
    assert len(anns) == 2 and all(a.segments for a in anns.values())
    for a in anns.values():
        assert all(0 <= s < e <= a.length for s, e, _ in a.segments)
    names, real, stills, _ = load_sources(cfg)
    v1, s1 = compose_video(cfg, names, real, stills, np.random.default_rng([3, 0, 0]))
    v2, s2 = compose_video(cfg, names, real, stills, np.random.default_rng([3, 0, 0]))
    assert np.array_equal(v1, v2) and s1 == s2
    # gaps are static: frames outside every segment differ only by the flicker noise
    t = (np.arange(len(v1)) + 0.5) / cfg.fps
    idle = ~np.any([(t >= s) & (t < e) for s, e, _ in s1], axis=0)
    if idle.sum() > 1:
        f = v1[idle].astype(float)
        assert np.abs(f - f.mean((1, 2, 3), keepdims=True) - (f[0] - f[0].mean())).max() < 30


def test_import_coarse_fine_layout_and_npy_sequences(tmp_path):
    from featbank.store import open_store
    from featbank.store.import_layouts import LayoutError

    src = tmp_path / "fine_spatial7x7"
    g = torch.Generator().manual_seed(0)
    dims = {"layer1": 4, "layer2": 6, "conv5": 8}
    for layer, c in dims.items():
        (src / layer).mkdir(parents=True)
        for vid, t in (("46GP8", 5), ("N11GT", 3)):
            torch.save(torch.randn(1, c, t, 7, 7, generator=g), src / layer / vid)
    store_path = tmp_path / "s.zarr"
    assert main(["store", "import-layout", "coarse-fine", str(src), str(store_path), "--set", "x3d-cf",
                 "--layers", "layer1,layer2,conv5", "--pool", "avg"]) == 0
    with open_store(str(store_path), "r") as store:
        fs = store.open_set("x3d-cf/conv5")
        rows = fs.read("46GP8")
        assert rows.feats.shape == (5, 8) and fs.info.level == "frame"
        ref = torch.load(src / "conv5" / "46GP8").mean((3, 4))[0].T.numpy()  # (T, C)
        np.testing.assert_allclose(rows.feats.astype(np.float32), ref, atol=2e-3)
        np.testing.assert_allclose(rows.starts[1], 10 / 24)
        assert store.open_set("x3d-cf/layer2").read("N11GT").feats.shape == (3, 6)
    # npy (T, D) per video
    npy = tmp_path / "npy"
    npy.mkdir()
    np.save(npy / "v1.npy", np.arange(12, dtype=np.float32).reshape(4, 3))
    assert main(["store", "import-layout", "npy-seq", str(npy), str(store_path), "--set", "i3d/seq",
                 "--row-seconds", "0.5"]) == 0
    with open_store(str(store_path), "r") as store:
        rows = store.open_set("i3d/seq").read("v1")
        assert rows.feats.shape == (4, 3) and rows.ends[-1] == 2.0
    np.save(npy / "bad.npy", np.zeros((2, 3, 4), np.float32))
    with open_store(str(store_path), "a") as store:
        from featbank.store.import_layouts import import_npy_sequences

        with pytest.raises(LayoutError, match="bad.npy"):
            import_npy_sequences(store, npy, "i3d/seq2")


@pytest.mark.slow
def test_x3d_levels_extracted_on_one_time_grid(tmp_path):
    """Several X3D endpoints per time step (random weights), one set per level, rows aligned."""
    from featbank.experiments.data.synth_i2v import write_mp4
    from featbank.experiments.recipes.detect import extract_levels
    from featbank.extract.job import ExtractConfig
    from featbank.store import open_store

    rng = np.random.default_rng(0)
    write_mp4(tmp_path / "v0.mp4", rng.integers(0, 255, (20, 48, 48, 3), dtype=np.uint8), 8)
    (tmp_path / "m.txt").write_text("v0.mp4,20\n")
    ecfg = ExtractConfig(manifest=str(tmp_path / "m.txt"), manifest_format="csv", store=str(tmp_path / "s.zarr"),
                         feature_set="x3d-m/levels", backbone="x3d-m", weights="random", sampler="sliding",
                         clip_len=4, stride=8, frame_stride=2, fps="source", resize=48, crop=48, keep_time=True,
                         pool="avg", workers=0, timeout=0, device="cpu", threads=1, split="train")
    sets = extract_levels(ecfg, ("layer1", "layer4", "conv5"))
    with open_store(str(tmp_path / "s.zarr"), "r") as store:
        rows = {lv: store.open_set(name).read("v0") for lv, name in sets.items()}
    assert rows["layer1"].feats.shape[1] == 24 and rows["layer4"].feats.shape[1] == 192
    n = len(rows["layer1"].feats)
    assert n >= 8  # several windows, 4 kept steps each (rows past the video's end are dropped)
    for r in rows.values():
        assert len(r.feats) == n and r.feats.dtype == np.float16
        np.testing.assert_array_equal(r.starts, rows["layer1"].starts)


@pytest.mark.slow
def test_demo_end_to_end_small(tmp_path, shared_data):
    """The whole demo path on a tiny benchmark: generate, extract with K400 I3D, train, results.json."""
    from featbank.experiments.data.synth_detect import SynthDetectConfig
    from featbank.experiments.recipes.detect import run_demo

    bench = SynthDetectConfig(seed=1, train_videos=4, test_videos=2, size=32, fps=8, instances=(1, 2))
    res = run_demo(tmp_path / "demo", threads=1, bench=bench, progress=False,
                   overrides=["seeds=[0,1]", "select_lrs=[0.1]", "optim.epochs=2", "optim.milestones=[1]",
                              "pretext.epochs=1", "pdan_hidden=32", "hidden=32"])
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert saved["recipe"] == "detect" and saved["metric"] == "map"
    assert {r["name"] for r in saved["rows"]} == {"fine-only", "PDAN-style", "coarse-fine", "fine-only + SSDet",
                                                  "PDAN-style + SSDet", "coarse-fine + SSDet"}
    assert 0 <= saved["source_only_acc"] <= 1 and saved["final_ci95"] is not None and res["seeds"] == [0, 1]
    sub = tmp_path / "demo" / "detect" / "fine-only" / "seed0" / "submission.txt"
    assert len(sub.read_text().splitlines()) == 25 * 2
