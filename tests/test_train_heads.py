"""`featbank train`: quick heads on a feature set, over seeds, through the shared data path and fit loop."""

from __future__ import annotations

import json

import numpy as np
import pytest

from featbank.experiments.cli import main
from featbank.experiments.fit import OptimConfig
from featbank.experiments.recipes.train import TrainConfig, train_heads
from featbank.store import FeatureSetInfo, VideoMeta, VideoRows, open_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")

C, D = 4, 16


def _write(path, *, separable=True, seed=0, per_class=(12, 6)):
    """Videos of 3-7 rows; class c's rows sit around centre c (separable) or labels are shuffled."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(C, D)) * 3
    with open_store(str(path), "w") as store:
        fs = store.create_set(FeatureSetInfo(name="b/pool", row_shape=(D,), dtype="float32", backbone="b",
                                             weights_id="ab" * 32))
        for split, n in zip(("train", "test"), per_class):
            for c in range(C):
                for i in range(n):
                    rows = int(rng.integers(3, 8))
                    feats = centres[c] + rng.normal(size=(rows, D))
                    label = c if separable else int(rng.integers(0, C))
                    st = np.arange(rows) * 0.5
                    fs.write_video(VideoRows(feats.astype(np.float32), st, st + 0.5),
                                   VideoMeta(f"{split}/c{c}/v{i}", labels=(label,), split=split, fps=2.0))
    return str(path)


@pytest.mark.parametrize("head", ["linear", "mlp", "attn", "tcn"])
def test_separable_features_reach_one(tmp_path, head):
    store = _write(tmp_path / "s.zarr")
    cfg = TrainConfig(store=store, set="b/pool", head=head, seeds=2)
    res = train_heads(cfg, tmp_path / "out")
    assert res["top1_mean"] >= 0.95 and res["mca_mean"] >= 0.95, res
    assert res["n_train"] == 4 * 12 and res["n_test"] == 4 * 6 and res["num_classes"] == C
    assert len(res["per_seed"]) == 2 and res["top1_ci95"] is not None
    lines = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 * cfg.optim.epochs


def test_random_labels_stay_near_chance(tmp_path):
    store = _write(tmp_path / "r.zarr", separable=False, per_class=(12, 25))
    res = train_heads(TrainConfig(store=store, set="b/pool", head="linear", seeds=3))
    assert abs(res["top1_mean"] - 1 / C) < 0.15, res["top1_mean"]


def test_same_seed_is_bit_identical(tmp_path):
    store = _write(tmp_path / "s.zarr")
    cfg = TrainConfig(store=store, set="b/pool", head="tcn", seeds=2, optim=OptimConfig(epochs=15, lr=0.01))
    a, b = train_heads(cfg), train_heads(cfg)
    strip = lambda r: [{k: v for k, v in s.items() if k != "seconds"} for s in r["per_seed"]]  # noqa: E731
    assert strip(a) == strip(b)


def test_cli_json_and_run_yaml(tmp_path, capsys):
    store = _write(tmp_path / "s.zarr")
    rc = main(["train", "--store", store, "--set", "b/pool", "--head", "linear", "--seeds", "2", "--json",
               "optim.epochs=20"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"head", "set", "seeds", "top1_mean", "top1_ci95", "mca_mean", "mca_ci95", "per_seed"}
    assert out["seeds"] == 2 and out["top1_mean"] > 0.9
    cfg = tmp_path / "probe.yaml"
    cfg.write_text(f"recipe: train\nname: p\nstore: {store}\nset: b/pool\nseeds: 1\noptim:\n  epochs: 10\n")
    assert main(["run", str(cfg), "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "results.json").read_text())["seeds"] == 1


def test_cli_errors_are_one_line(tmp_path, capsys):
    store = _write(tmp_path / "s.zarr")
    assert main(["train", "--store", store, "--set", "b/pool", "--seeds", "0"]) == 1
    assert "seeds must be >= 1" in capsys.readouterr().err
    assert main(["train", "--store", store, "--set", "b/pool", "optim.lr=-1"]) == 1
    assert "lr must be a positive number" in capsys.readouterr().err
    assert main(["train", "--store", store, "--set", "b/pool", "--train-split", "nosuch"]) == 1
    assert "nosuch" in capsys.readouterr().err
