"""The GLAD recipe on tiny generated view sets: every table row, run folder, determinism, CLI config."""

from __future__ import annotations

import json

import pytest
import torch

from featbank.experiments.config import ConfigError, load_config
from featbank.experiments.recipes.glad import (VARIANTS, GladConfig, load_glad_config, param_groups, run_glad,
                                               write_synthetic_view_sets)
from featbank.experiments.stats import write_demo_results
from featbank.heads.glad import GladHead
from featbank.store import MemoryStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = ["seeds=[0,1]", "train.epochs=2", "tol.epochs=2", "model.disc_hidden=16", "model.adapter_hidden=8",
        "tol.pair_hidden=8", "plot=false", "train.lr=0.05"]


def _setup(extra=()):
    store = MemoryStore()
    names = write_synthetic_view_sets(store)
    cfg = load_glad_config(None, [f"{k}={v}" for k, v in names.items()] + FAST + list(extra))
    return store, cfg


@pytest.mark.slow  # 16 fits: ~10 s on an idle 2-core machine
def test_every_row_over_seeds_with_run_folder(tmp_path):
    store, cfg = _setup(["plot=true"])
    res = run_glad(cfg, tmp_path / "run", store=store)
    names = [r["name"] for r in res["rows"]]
    assert names == list(VARIANTS)
    for r in res["rows"]:
        assert r["seeds"] == 2 and 0 <= r["mean_class_acc"] <= 1 and 0 <= r["top1"] <= 1
        assert r["mean_class_acc_ci95"] is not None and 0 <= r["mean_class_acc_allviews"] <= 1
    run = tmp_path / "run"
    assert load_config(GladConfig, run / "config.yaml") == cfg
    assert json.loads((run / "metrics.json").read_text())["rows"][0]["name"] == "source-only"
    log = [json.loads(x) for x in (run / "glad" / "seed0" / "metrics.jsonl").read_text().splitlines()]
    assert len(log) == 2 and {"dom_local", "dom_global", "dom_cross", "acc_cross"} <= set(log[-1])
    dann = json.loads((run / "dann" / "seed0" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "dom_mean" in dann and "dom_local" not in dann
    so = json.loads((run / "source_only" / "seed0" / "metrics.jsonl").read_text().splitlines()[-1])
    assert not any(k.startswith("dom_") for k in so)
    assert (run / "tol" / "seed1" / "metrics.jsonl").is_file() and len(res["tol"]) == 2
    csv = (run / "confusion_glad.csv").read_text().splitlines()
    assert len(csv) == 4 and sum(int(v) for ln in csv[1:] for v in ln.split(",")[1:]) == 2 * 15
    assert (run / "confusion_glad.png").stat().st_size > 1000
    demo = write_demo_results(tmp_path / "demo", recipe="glad", metric="mean_class_acc", rows=res["rows"],
                              source_only="source-only", final="GLAD", seeds=res["seeds"], seconds=1.0)
    assert demo["final_acc"] == res["rows"][5]["mean_class_acc"] and demo["recipe"] == "glad"


def test_two_runs_are_identical_and_the_oracle_learns(tmp_path):
    store, cfg = _setup(["variants=[source-only, GLAD, supervised target (oracle)]", "seeds=[3]", "train.epochs=8"])
    a = run_glad(cfg, tmp_path / "a", store=store)
    b = run_glad(cfg, tmp_path / "b", store=store)
    assert [r["per_seed"][0]["mean_class_acc"] for r in a["rows"]] == [r["per_seed"][0]["mean_class_acc"]
                                                                       for r in b["rows"]]
    assert a["rows"][2]["mean_class_acc"] >= 0.7  # supervised on the target (chance 0.33)


def test_released_param_groups():
    head = GladHead(8, 3)
    groups = param_groups([head], head.classifier.fc, load_glad_config(None).train)
    lrs = sorted((g["lr"], g["weight_decay"], len(g["params"])) for g in groups)
    base = 8.75e-4
    assert lrs == sorted([(base, 1e-4, 2), (2 * base, 0.0, 2), (5 * base, 1e-4, 1), (10 * base, 0.0, 1)])


def test_bad_configs_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="variants"):
        load_glad_config(None, ["variants=[nope]"])
    store, cfg = _setup(["features.source_bg=[]"])
    with pytest.raises(ConfigError, match="source_bg"):
        run_glad(cfg, tmp_path, store=store)
    store = MemoryStore()
    from featbank.experiments.recipes.glad import write_view_set
    import numpy as np

    write_view_set(store, "flat", np.zeros((3, 1, 4)), np.array([0, 1, 0]), ["a", "b", "c"], split="train",
                   domain="source")
    _, cfg = _setup(["features.source=flat"])
    with pytest.raises(ConfigError, match="sampler: glad"):
        run_glad(cfg, tmp_path, store=store)
