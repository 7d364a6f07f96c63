"""The CycDA recipe on tiny generated feature stores: a full cycle, files, staleness, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml

from featbank.experiments.config import ConfigError, load_config
from featbank.experiments.cycda import CycdaConfig, load_cycda_config, run_cycle
from featbank.experiments.cycda_data import CycdaDataError, write_synthetic_cycda_sets
from featbank.heads.pseudo_labels import read_frame_ps, read_vid_ps
from featbank.store import MemoryStore
from featbank.store.errors import StaleFeaturesError

FAST = [f"{s}.epochs=3" for s in ("source_only", "stage1", "stage2", "stage3", "stage4")] + [
    f"{s}.optimizer=adam" for s in ("source_only", "stage1", "stage2", "stage3", "stage4")] + ["plot=false", "threads=1"]
STAGE_KEYS = {"name", "cycle", "target_acc", "mean_class_acc", "pl_acc", "pl_coverage", "seconds", "losses"}


def _store_and_cfg(extra=(), **kw):
    store = MemoryStore()
    names = write_synthetic_cycda_sets(store, num_classes=3, source_per_class=8, train_per_class=4,
                                       test_per_class=3, frames_per_video=5, clips_per_video=3, dim=16, **kw)
    cfg = load_cycda_config(None, [f"features.{k}={v}" for k, v in names.items()] + FAST + list(extra))
    return store, cfg


def test_one_cycle_completes_with_all_outputs(tmp_path):
    store, cfg = _store_and_cfg(["plot=true"])
    res = run_cycle(cfg, tmp_path / "run", store=store)
    assert res["seconds"] < 60
    names = [s["name"] for s in res["stages"]]
    assert names == ["source_only", "stage1_spatial_alignment", "stage2_video_model",
                     "stage3_class_aware_alignment", "stage4_video_model"]
    for s in res["stages"]:
        assert STAGE_KEYS <= set(s)
        assert 0.0 <= s["target_acc"] <= 1.0 and 0.0 <= s["mean_class_acc"] <= 1.0
        if s["cycle"] > 0:
            assert 0.0 <= s["pl_acc"] <= 1.0 and 0.0 < s["pl_coverage"] <= 1.0
    assert res["final_acc"] == res["stages"][-1]["target_acc"]
    run = tmp_path / "run"
    assert json.loads((run / "metrics.json").read_text())["final_acc"] == res["final_acc"]
    assert (run / "accuracy.png").stat().st_size > 1000
    # resolved config reloads equal
    assert load_config(CycdaConfig, run / "config.yaml") == cfg
    # per-stage files in the published layouts
    d1 = run / "cycle1" / "stage1_spatial_alignment"
    fp = read_frame_ps(d1 / "stage1_frame_ps.npy")
    assert fp.probs.shape == (12 * 5, 3)
    raw = np.load(d1 / "stage1_frame_ps.npy", allow_pickle=True).item()
    gt, pred, conf, soft = raw["train_c0_00000"]
    assert soft.shape == (5, 3) and np.allclose(soft.sum(1), 1, atol=1e-5)
    vid = read_vid_ps(d1 / "stage1_vid_ps.npy")
    assert len(vid) == math.ceil(0.8 * 12)  # frame_v2 keeps 80% of the videos
    q = json.loads((d1 / "stage1_quality.json").read_text())
    assert [r["percentile"] for r in q["frame"]] == [100, 80, 60, 40, 20]
    assert (run / "cycle1" / "stage4_video_model" / "stage4_vid_ps.npy").is_file()
    assert json.loads((run / "cycle1" / "stage2_video_model" / "metrics.json").read_text())["name"] == "stage2_video_model"


def test_adaptation_recovers_a_shifted_domain(tmp_path):
    """With a strong shift the video stages, trained only on pseudo labels, reach high accuracy."""
    store, cfg = _store_and_cfg(["stage2.epochs=30", "stage4.epochs=30", "pseudo.rule=frame_v2_balanced"],
                                domain_shift=1.0, seed=3)
    res = run_cycle(cfg, tmp_path, store=store)
    assert res["stages"][1]["pl_acc"] > 0.6
    assert res["final_acc"] >= 0.8


def test_two_calls_in_one_process_are_identical(tmp_path):
    store, cfg = _store_and_cfg(["cycles=2"])
    a = run_cycle(cfg, tmp_path / "a", store=store)
    b = run_cycle(cfg, tmp_path / "b", store=store)
    assert [s["target_acc"] for s in a["stages"]] == [s["target_acc"] for s in b["stages"]]
    assert len(a["stages"]) == 1 + 2 * 4 and a["stages"][-1]["cycle"] == 2
    assert not (tmp_path / "a" / "cycle2" / "stage1_spatial_alignment" / "stage1_vid_ps.npy").samefile(
        tmp_path / "b" / "cycle2" / "stage1_spatial_alignment" / "stage1_vid_ps.npy")


def test_stale_features_are_refused(tmp_path):
    store, cfg = _store_and_cfg()
    stale = store.set_backbone_weights("synthetic", "finetuned-weights")
    assert "source/image" in stale
    with pytest.raises(StaleFeaturesError, match="source/image"):
        run_cycle(cfg, tmp_path, store=store)
    assert not (tmp_path / "metrics.json").exists()


def test_unlabelled_target_train_is_fine_and_labels_are_not_needed(tmp_path):
    from featbank.store.schema import VideoMeta

    store, cfg = _store_and_cfg()
    for name in ("target_train/frame", "target_train/clip"):
        fs = store.open_set(name)
        for v in fs.video_ids():
            fs.write_video(fs.read(v), VideoMeta(v, split="train", domain="target"), overwrite=True)
    res = run_cycle(cfg, tmp_path, store=store)
    assert res["stages"][1]["pl_acc"] is None and res["stages"][1]["pl_coverage"] > 0


def test_unlabelled_source_is_an_error(tmp_path):
    from featbank.store.schema import VideoMeta

    store, cfg = _store_and_cfg()
    fs = store.open_set("source/image")
    v = fs.video_ids()[0]
    fs.write_video(fs.read(v), VideoMeta(v), overwrite=True)
    with pytest.raises(CycdaDataError, match=v):
        run_cycle(cfg, tmp_path, store=store)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="stage1.nope"):
        load_cycda_config(None, ["stage1.nope=3"])
    with pytest.raises(ConfigError, match="cycles"):
        load_cycda_config(None, ["cycles=0"])


def test_shipped_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs" / "experiments"
    files = sorted(root.glob("cycda_*.yaml"))
    assert files
    for f in files:
        cfg = load_cycda_config(f)
        assert cfg.recipe == "cycda" and yaml.safe_load(f.read_text())["recipe"] == "cycda"


def test_cli_run_on_a_zarr_store(tmp_path, capsys):
    from featbank.experiments.cli import main
    from featbank.store import open_store

    store = open_store(str(tmp_path / "s.zarr"), "w")
    names = write_synthetic_cycda_sets(store, num_classes=2, source_per_class=4, train_per_class=2,
                                       test_per_class=2, frames_per_video=3, clips_per_video=2, dim=8)
    store.close()
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump({"recipe": "cycda", "features": dict(names, store=str(tmp_path / "s.zarr"))}))
    rc = main(["run", str(cfg_path), *FAST, "--out", str(tmp_path / "out")])
    assert rc == 0 and (tmp_path / "out" / "metrics.json").is_file()
    assert "final" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: nope\n")
    assert main(["run", str(bad)]) == 1
    assert "known recipes" in capsys.readouterr().err
