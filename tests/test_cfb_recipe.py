"""The CFB recipe on constructed features (no store): the bank replaces source flow from epoch
`pre` only with entries of the sample's class, banks are saved per epoch as {cls}.npy stacks,
ablation rows differ as configured, results are deterministic per seed; config and CLI errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from featbank.experiments.config import ConfigError
from featbank.experiments.fit import OptimConfig
from featbank.experiments.recipes.cfb import CfbConfig, CfbData, Streams, load_cfb_config, run_cfb, train_row

pytestmark = pytest.mark.usefixtures("one_torch_thread")

C, D, T = 3, 12, 2


def _streams(n_per_class: int, seed: int, flow_signal: float, rgb_signal: float = 2.0) -> Streams:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(C).repeat_interleave(n_per_class)
    proto = torch.eye(C, D)
    rgb = torch.randn(len(y), T, D, generator=g) + rgb_signal * proto[y][:, None, :]
    flow = torch.randn(len(y), T, D, generator=g) + flow_signal * proto[y][:, None, :].roll(3, -1)
    mask = torch.ones(len(y), T, dtype=torch.bool)
    return Streams(rgb, mask, flow, mask.clone(), y, tuple(f"v{seed}_{i}" for i in range(len(y))))


def _data() -> CfbData:
    # source flow carries no class signal (camera motion only); target flow does
    source, target, test = _streams(10, 0, 0.0), _streams(8, 1, 3.0), _streams(4, 2, 3.0)
    pace = []
    for r in range(5):
        f = torch.randn(len(target.labels), T, D, generator=torch.Generator().manual_seed(10 + r)) + r
        pace.append((f, torch.ones(len(target.labels), T, dtype=torch.bool)))
    return CfbData(source, target, test, pace, C, {})


def _cfg(**kw) -> CfbConfig:
    base = dict(seeds=(0, 1), hidden=16, pre=2, bank_cap=5, threads=1,
                optim=OptimConfig(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4, epochs=4, batch_size=8,
                                  schedule="multistep", milestones=(3,), gamma=0.1, grad_clamp=1.0))
    base.update(kw)
    return CfbConfig(**base)


def test_bank_row_replaces_from_pre_and_saves_class_stacks(tmp_path):
    data = _data()
    m = train_row(data, _cfg(), "+ flow bank", 0, tmp_path)
    assert m["bank_size"] == C * 5  # exactly bank_cap per class (8 target videos per class)
    assert 0 < m["replaced_fraction"] <= 0.5 + 1e-9  # only epochs 2, 3 of 4 replace
    assert sorted(p.name for p in (tmp_path / "bank").iterdir()) == [f"epoch_{e:03d}" for e in range(4)]
    meta = json.loads((tmp_path / "bank" / "epoch_003" / "bank.json").read_text())
    for c, entry in meta["classes"].items():
        stack = np.load(tmp_path / "bank" / "epoch_003" / f"{c}.npy")
        assert stack.shape == (len(entry["ids"]), T, D)
        assert entry["conf"] == sorted(entry["conf"], reverse=True)
        tgt = {v: i for i, v in enumerate(data.target.video_ids)}
        for k, vid in enumerate(entry["ids"]):  # the stored feature is that target video's flow
            np.testing.assert_allclose(stack[k], data.target.flow[tgt[vid]].numpy(), atol=1e-6)
    assert 0 <= m["acc_sf"] <= 1 and 0 <= m["test_acc_sf"] <= 1 and len(m["test_per_class_sf"]) == C


def test_rows_and_determinism(tmp_path):
    data = _data()
    rgb = train_row(data, _cfg(), "RGB only", 0, None)
    assert rgb["acc"] == rgb["acc_sf"] and rgb["replaced_fraction"] == 0 and "bank_size" not in rgb
    again = train_row(data, _cfg(), "full", 1, None)
    assert again == {**train_row(data, _cfg(), "full", 1, None), "seconds": again["seconds"]}
    assert "pace_ce" in again and again["pace_ce"] > 0
    res = run_cfb(_cfg(rows=("RGB only", "full"), features=dataclass_features(((0, 1),))), tmp_path / "run",
                  data=data, log=lambda s: None)
    names = [r["name"] for r in res["rows"]]
    assert names == ["RGB only", "full"] and res["rows"][1]["seeds"] == 2
    assert res["rows"][1]["acc_sf_ci95"] is not None
    assert [e["pair"] for e in res["motion_pair_acc"]] == [[0, 1], [0, 1]]
    assert (tmp_path / "run" / "metrics.json").is_file() and (tmp_path / "run" / "config.yaml").is_file()
    assert load_cfb_config(tmp_path / "run" / "config.yaml").rows == ("RGB only", "full")


def dataclass_features(pairs):
    from featbank.experiments.recipes.cfb import CfbFeatures

    return CfbFeatures(motion_pairs=pairs)


def test_holdout_source_is_reported_and_never_trained(tmp_path):
    m = train_row(_data(), _cfg(holdout_source=0.2), "RGB+flow", 0, None)
    assert 0 <= m["source_holdout_acc_sf"] <= 1


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="rows"):
        load_cfb_config(None, ["rows=[nope]"])
    with pytest.raises(ConfigError, match="unknown config key optim.lrr"):
        load_cfb_config(None, ["optim.lrr=1"])
    from featbank.experiments.recipes.cfb import load_cfb_data

    with pytest.raises(ConfigError, match="features.store"):
        load_cfb_data(load_cfb_config(None))
    with pytest.raises(ConfigError, match="does not exist"):
        load_cfb_data(load_cfb_config(None, [f"features.store={tmp_path / 'none.zarr'}"]))


def test_cli_flow_config_errors(tmp_path):
    from featbank.experiments.cli import main

    assert main(["flow", str(tmp_path / "none.mp4"), str(tmp_path / "o")]) == 1
    assert main(["flow", str(tmp_path), str(tmp_path / "o"), "algorithm=raft"]) == 1
    assert main(["flow", str(tmp_path), str(tmp_path / "o"), "colour=1"]) == 1


def test_motion_pair_oracle_probe_sees_flow_only_pairs():
    from featbank.experiments.recipes.cfb import motion_pair_separability

    g = torch.Generator().manual_seed(0)
    y = torch.arange(2).repeat_interleave(12)
    rgb = torch.randn(24, T, D, generator=g)  # identical appearance: no class signal
    flow = torch.randn(24, T, D, generator=g)
    flow[:, :, 0] += torch.where(y == 0, 3.0, -3.0)[:, None]  # opposite motion directions
    mask = torch.ones(24, T, dtype=torch.bool)
    s = Streams(rgb, mask, flow, mask.clone(), y, tuple(str(i) for i in range(24)))
    (row,) = motion_pair_separability(CfbData(s, s, s, [], 2, {}), [(0, 1)])
    assert row["flow"] > 0.9 and row["rgb"] < 0.8 and row["videos"] == 24


@pytest.mark.slow
def test_demo_end_to_end_tiny(tmp_path):
    """The whole demo pipeline on a tiny benchmark: generation, still->video, in-memory flow through
    the extraction job, pace sets, the ablation table and the shared results.json."""
    from featbank.experiments.data.synth_i2v import SynthI2VConfig
    from featbank.experiments.recipes.cfb_demo import CfbDemoConfig, run_demo
    from featbank.store import open_store

    cfg = CfbDemoConfig(data=SynthI2VConfig(seed=0, classes=2, source_per_class=3, train_per_class=3,
                                            test_per_class=2, frames=32, fps=16, size=64),
                        overrides=("optim.epochs=3", "pre=1", "optim.milestones=[2]", 'rows=["RGB only", "full"]'))
    res = run_demo(tmp_path, cfg, seeds=(0, 1), progress=False)
    assert res["recipe"] == "cfb" and res["metric"] == "acc_sf" and len(res["rows"]) == 2
    assert res["int8_overflow"]["released_int8"][7] == -117
    with open_store(str(tmp_path / "store.zarr"), "r") as store:
        info = store.open_set("target_train/flow").info
        assert info.sampling["transforms"]["flow"]["algorithm"] == "dis" and info.level == "frame"
        assert store.open_set("target_train/pace5").info.sampling["frame_stride"] == 5
