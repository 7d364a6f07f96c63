"""The CycDA recipe on tiny generated feature stores: a full cycle, files, staleness, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml

from featbank.experiments.config import ConfigError, load_config
from featbank.experiments.recipes.cycda import CycdaConfig, load_cycda_config, run_cycle
from featbank.experiments.recipes.cycda_data import CycdaDataError, write_synthetic_cycda_sets
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


def test_stage1_reversed_gradient_reaches_the_embedding_over_the_whole_stage(monkeypatch):
    """Inside the real stage-1 loop: the GRL coefficient runs 0 -> ~1 over the whole stage
    (not per epoch), the discriminator sees non-detached source and target embeddings, one
    optimizer steps both the embedding and the discriminator, and the embedding's gradient
    is the source CE gradient minus ``coeff * adv_weight`` times the domain-loss gradient."""
    import torch

    import featbank.experiments.recipes.cycda as cycda
    from featbank.heads.adaptation import DomainAdversarialLoss

    store, cfg = _store_and_cfg(["stage1.epochs=4", "stage1.batch_size=8", "stage1.adv_weight=0.7"])
    data = cycda.load_data(cfg, store)
    calls, opt_params, grads = [], [], []
    orig_forward = DomainAdversarialLoss.forward

    def spy_forward(self, f_s, f_t, coeff=1.0):
        calls.append((coeff, f_s.requires_grad and f_t.requires_grad, len(f_s), len(f_t)))
        return orig_forward(self, f_s, f_t, coeff)

    orig_optimizer = cycda._optimizer

    def spy_optimizer(params, c):
        params = list(params)
        opt_params.append(params)
        return orig_optimizer(params, c)

    monkeypatch.setattr(DomainAdversarialLoss, "forward", spy_forward)
    monkeypatch.setattr(cycda, "_optimizer", spy_optimizer)
    head = cycda._new_image_head(data, cfg.stage1, 0)
    head.project.weight.register_hook(lambda g: grads.append(g.clone()))
    cycda._train_image_model(head, data, cfg.stage1, 0, adversarial=True)

    n_t = len(data.target_frames.feats)
    steps_per_epoch = math.ceil(max(len(data.source.feats), n_t) / 8)
    coeffs = np.array([c for c, *_ in calls])
    assert len(calls) == 4 * steps_per_epoch == len(grads)
    assert coeffs[0] == 0.0 and coeffs[-1] > 0.99 and np.all(np.diff(coeffs) > 0)  # one ramp per stage
    assert all(attached and bs == bt == 8 for _, attached, bs, bt in calls)  # balanced, not detached
    ids = {id(p) for p in opt_params[0]}
    assert {id(p) for p in head.project.parameters()} <= ids
    assert len(ids) > len(list(head.parameters()))  # the discriminator is optimised too

    # one step by hand: the embedding gradient = CE gradient - coeff * adv_weight * domain-loss gradient
    torch.manual_seed(1)
    dann = cycda.DomainAdversarialLoss(cycda.DomainDiscriminator(cfg.stage1.embed_dim, cfg.stage1.hidden))
    xs, xt = data.source.feats[:8].float(), data.target_frames.feats[:8].float()
    ys = torch.from_numpy(data.source.row_labels[:8])
    head.eval()

    def proj_grad(ce_w, adv_w, coeff):
        head.zero_grad()
        out = head(xs)
        (ce_w * head.loss(out, ys)["ce"] + adv_w * dann(out.embed, head.embed(xt), coeff).loss).backward()
        return head.project.weight.grad.clone()

    g_ce, g_dom = proj_grad(1.0, 0.0, 1.0), proj_grad(0.0, 1.0, -1.0)  # coeff -1: the plain (unreversed) gradient
    assert g_dom.abs().sum() > 0
    torch.testing.assert_close(proj_grad(1.0, 0.7, 0.5), g_ce - 0.5 * 0.7 * g_dom, rtol=1e-4, atol=1e-6)
