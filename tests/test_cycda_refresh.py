"""Backbone refresh on CPU with a tiny input: fine-tune Mixed_5c on pixels, re-extract, old sets stale."""

from __future__ import annotations

import pytest
import torch

from featbank.experiments.recipes.cycda import load_cycda_config, load_data, run_cycle
from featbank.experiments.demo import SETS, DemoConfig, extract_benchmark
from featbank.experiments.data.synth_i2v import SynthI2VConfig, generate
from featbank.store import open_store
from featbank.store.errors import StaleFeaturesError

TINY_DATA = SynthI2VConfig(seed=0, classes=2, source_per_class=3, train_per_class=2, test_per_class=1, frames=8,
                           fps=8, size=32)
TINY_EXTRACT = DemoConfig(data=TINY_DATA, backbone="i3d-rgb", weights="default", resize=32, crop=32,
                          static_clip_len=2, frames_per_video=2, clip_len=8, threads=1)
FAST = [f"{s}.epochs=2" for s in ("source_only", "stage1", "stage2", "stage3", "stage4")] + [
    "plot=false", "threads=1", "refresh.enabled=true", "refresh.trainable=[Mixed_5c]", "refresh.epochs=1",
    "refresh.batch_size=2", "refresh.clip_len=8", "refresh.lr=0.1"]


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("refresh")
    generate(root / "data", TINY_DATA)
    extract_benchmark(root / "data", root / "s.zarr", TINY_EXTRACT, progress=False)
    return root


def test_refresh_reextracts_and_marks_old_sets_stale(tiny_store, tmp_path):
    store_path = tiny_store / "s.zarr"
    overrides = [f"features.{k}={v}" for k, v in SETS.items()] + [f"features.store={store_path}"] + FAST
    cfg = load_cycda_config(None, overrides)
    res = run_cycle(cfg, tmp_path / "run")
    assert len(res["refresh"]) == 1
    r = res["refresh"][0]
    assert r["after"] == "stage2" and r["weights_id"] != r["old_weights_id"]
    assert (tmp_path / "run" / "refresh").is_dir() and r["weights"].startswith(str(tmp_path / "run"))
    assert set(r["stale"]) == set(SETS.values())
    # later stages ran on the new sets
    assert [s["name"] for s in res["stages"]][-2:] == ["stage3_class_aware_alignment", "stage4_video_model"]
    assert all(n.endswith("@" + r["weights_id"][:12]) for n in res["feature_sets"].values())

    store = open_store(str(store_path), "r")
    try:
        assert store.backbone_weights()["i3d-rgb"] == r["weights_id"]
        for name in SETS.values():
            with pytest.raises(StaleFeaturesError):
                store.open_set(name)
            old = store.open_set(name, allow_stale=True)
            new = store.open_set(f"{name}@{r['weights_id'][:12]}")
            assert new.video_ids() == old.video_ids() and new.info.weights_id == r["weights_id"]
        # the fine-tuned block changed the features
        vid = store.open_set(SETS["target_clips"], allow_stale=True).video_ids()[0]
        a = store.open_set(SETS["target_clips"], allow_stale=True).read(vid).feats
        b = store.open_set(f"{SETS['target_clips']}@{r['weights_id'][:12]}").read(vid).feats
        assert a.shape == b.shape and not torch.allclose(torch.from_numpy(a).float(), torch.from_numpy(b).float())
        # heads refuse the stale sets: the recipe's loader raises with the set's name
        with pytest.raises(StaleFeaturesError, match="source/image"):
            load_data(cfg, store)
    finally:
        store.close()
