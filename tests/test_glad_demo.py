"""``featbank demo --recipe glad`` end to end on a tiny benchmark with a random tiny backbone."""

from __future__ import annotations

import json

import pytest

from featbank.experiments.data.synth_v2v import SynthV2VConfig
from featbank.experiments.recipes.glad_demo import GladDemoConfig, run_glad_demo

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.slow  # generates 36 videos and runs 6 extraction jobs
def test_demo_writes_the_shared_results_file(tmp_path):
    cfg = GladDemoConfig(
        data=SynthV2VConfig(seed=2, source_train_per_class=2, source_val_per_class=1, target_train_max=2,
                            target_test_max=2, frames=16, size=64),
        backbone="x3d-xs", weights="random", resize=64, crop=64, bg_copies=2, threads=1,
        overrides=("seeds=[0,1]", "train.epochs=2", "tol.epochs=1", "model.disc_hidden=16", "plot=false"))
    res = run_glad_demo(tmp_path, cfg, progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["recipe"] == "glad" and saved["metric"] == "mean_class_acc"
    for k in ("source_only_acc", "final_acc", "source_only_ci95", "final_ci95", "seeds", "seconds", "rows"):
        assert k in saved, k
    assert [r["name"] for r in saved["rows"]][0] == "source-only" and saved["seeds"] == [0, 1]
    assert res["final_acc"] == [r for r in saved["rows"] if r["name"] == "GLAD"][0]["mean_class_acc"]
    assert (tmp_path / "glad" / "confusion_glad.csv").is_file()
    assert (tmp_path / "data" / "median").is_dir()
