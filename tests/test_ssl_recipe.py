"""The multi-level recipe: view construction, a few pretraining steps on CPU at 32 px, R3D-18
weights, retrieval R@k through the faiss bank vs a brute-force count, the temporal-cue CAM."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from featbank.experiments.recipes.ssl import (
    AugmentConfig,
    SSLConfig,
    evaluate_set,
    fit_temporal_cue,
    load_ssl_config,
    make_views,
    pretrain_pixels,
    render_temporal_cam,
    sample_frame_indices,
    train_cached,
)
from featbank.experiments.config import ConfigError
from featbank.extract.backbones import create_backbone
from featbank.heads.ssl import TemporalCueHead

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = Path(__file__).resolve().parents[1]


def _write_videos(root: Path, n: int = 4, frames: int = 34, side: int = 40) -> Path:
    """Tiny lossless-enough mp4s: a bright square moving left or right; csv manifest."""
    from featbank.experiments.data.synth_i2v import write_mp4

    rng = np.random.default_rng(0)
    lines = ["path,n_frames,label"]
    for i in range(n):
        f = np.zeros((frames, side, side, 3), np.uint8) + rng.integers(0, 80, 3).astype(np.uint8)
        for t in range(frames):
            x = (t * (1 if i % 2 else -1)) % (side - 10)
            f[t, 10:20, x:x + 10] = 255
        write_mp4(root / f"v{i}.mp4", f, 8)
        lines.append(f"v{i}.mp4,{frames},{i % 2}")
    (root / "list.csv").write_text("\n".join(lines) + "\n")
    return root / "list.csv"


def test_release_frame_draw_and_views():
    g = torch.Generator().manual_seed(0)
    idx = sample_frame_indices(32, 16, 3.0, g)  # 32 frames: rate 1, start 0 is the only choice
    assert idx.tolist() == list(range(32))
    for _ in range(20):
        idx = sample_frame_indices(100, 16, 3.0, g)
        assert len(idx) == 32 and idx.min() >= 0 and idx.max() <= 99
        steps = idx.diff().double()
        assert (steps >= 0).all() and 1 <= steps.mean() <= 3.0 + 1e-6
    cfg = SSLConfig(size=24, augment=AugmentConfig(brightness=0, contrast=0, saturation=0, gray=0, flip=0,
                                                   crop_scale=(1.0, 1.0)))
    video = torch.arange(40, dtype=torch.uint8).view(1, 40, 1, 1).expand(3, 40, 24, 24).contiguous()  # frame t has value t
    views, rev = make_views(video[:, :32], cfg, torch.Generator().manual_seed(1))
    assert views.shape == (3, 3, 16, 24, 24) and rev.shape == (2, 3, 16, 24, 24)
    frame_of = (views[:, 0, :, 0, 0] * 255).round().long()  # (3, 16): source frame of each view step
    assert frame_of[0].tolist() == list(range(16)) and frame_of[1].tolist() == list(range(16, 32))
    assert frame_of[2].tolist() == list(range(0, 32, 2))
    assert torch.equal(rev, views[:2].flip(2))  # the local views reversed in time


def test_pixel_pretraining_few_steps_cpu(tmp_path):
    manifest = _write_videos(tmp_path)
    cfg = load_ssl_config(REPO / "configs/experiments/ssl_cpu_tiny.yaml",
                          [f"manifest={manifest}", "size=32", "prototypes=8", "queue=8", "optim.epochs=2",
                           "optim.batch_size=2", "threads=1"])
    res = pretrain_pixels(cfg, tmp_path / "run")
    assert len(res["history"]) == 2 and res["history"][0]["steps"] == 2
    for rec in res["history"]:
        for k in ("loss", "lhigh", "lfine", "lmid", "lfmid", "llow", "lflow", "lsd"):
            assert np.isfinite(rec[k]), k
    assert res["history"][0]["lgraph"] == 0 and res["history"][1]["lgraph"] > 0  # graph from epoch 1
    init = create_backbone("r3d-18", weights=res["init_backbone"])
    trained = create_backbone("r3d-18", weights=res["backbone"])
    assert trained.endpoint_channels["layer4"] == 128 and trained.spec.weights_id != init.spec.weights_id
    changed = [n for (n, a), (_, b) in zip(init.named_parameters(), trained.named_parameters()) if not torch.equal(a, b)]
    assert any(n.startswith("stem") for n in changed) and any(n.startswith("layer4") for n in changed)
    assert not any(n.startswith("fc") for n in changed)  # the classifier is not trained
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[-1])["epoch"] == 1
    assert load_ssl_config(tmp_path / "run" / "config.yaml") == cfg


@pytest.mark.slow  # a full-width R3D-18 file (127 MB) is written, hashed and read: ~10 s idle, a minute loaded
def test_torchvision_r3d_state_dict_loads(tmp_path):
    from torchvision.models.video import r3d_18

    torch.manual_seed(0)
    ref = r3d_18(weights=None).eval()
    path = tmp_path / "r3d_18.pth"
    torch.save(ref.state_dict(), path)
    ours = create_backbone("r3d-18", weights=str(path))
    x = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x), atol=1e-5)
        assert ours.forward_levels(x)["layer2"].shape == (1, 128, 4, 8, 8)
    assert ours.spec.weights_id != "random" and len(ours.spec.weights_id) == 64


def _constructed_store(path: Path):
    """Train/test videos with hand-made 4-d features: R@k can be counted by hand."""
    from featbank.store import FeatureSetInfo, VideoMeta, VideoRows, open_store

    rng = np.random.default_rng(0)
    train = rng.normal(size=(12, 4))
    y_train = np.arange(12) % 3
    test = rng.normal(size=(7, 4))
    y_test = np.array([0, 1, 2, 0, 1, 2, 0])
    with open_store(str(path), mode="w") as store:
        fs = store.create_set(FeatureSetInfo(name="toy", row_shape=(4,), dtype="float32", backbone="toy",
                                             weights_id="ab" * 32))
        for split, feats, labels in (("train", train, y_train), ("test", test, y_test)):
            for i, (f, y) in enumerate(zip(feats, labels)):
                two = np.stack([f, f])  # two identical rows: the video mean is f
                fs.write_video(VideoRows(two, np.array([0.0, 1.0]), np.array([1.0, 2.0])),
                               VideoMeta(f"{split}/v{i}", labels=(int(y),), split=split, fps=8.0))
    return train, y_train, test, y_test


def test_retrieval_recall_equals_brute_force_count(tmp_path):
    train, y_train, test, y_test = _constructed_store(tmp_path / "toy.zarr")
    res = evaluate_set(tmp_path / "toy.zarr", "toy", seeds=2, epochs=5, threads=1)
    cos = (test / np.linalg.norm(test, axis=1, keepdims=True)) @ (train / np.linalg.norm(train, axis=1, keepdims=True)).T
    order = np.argsort(-cos, axis=1, kind="stable")
    for k in (1, 5, 10, 20):
        hits = sum(int((y_train[order[q, :k]] == y_test[q]).any()) for q in range(len(test)))
        assert res["per_seed"][0][f"R@{k}"] == pytest.approx(hits / len(test)), k
    assert res["retrieval"]["n_queries"] == 7 and res["retrieval"]["n_gallery"] == 12  # every test video counts
    assert [r["seed"] for r in res["per_seed"]] == [0, 1] and all(0 <= r["top1"] <= 1 for r in res["per_seed"])


def test_temporal_cue_cam_is_the_pooled_logit_everywhere(tmp_path):
    head = TemporalCueHead(6, 2)
    maps = torch.randn(2, 6, 3, 4, 5)
    cam = head.cam(maps)
    assert cam.shape == (2, 2, 3, 4, 5)
    assert torch.allclose(cam.mean(dim=(2, 3, 4)), head(maps.mean(dim=(2, 3, 4))).logits, atol=1e-6)
    assert head.fc.bias is None
    # a real probe on a small R3D and its PNG
    torch.manual_seed(0)
    backbone = create_backbone("r3d-18", width=0.25)
    g = torch.Generator().manual_seed(0)
    videos = [torch.randint(0, 255, (3, 16, 36, 36), generator=g, dtype=torch.uint8) for _ in range(4)]
    probe, acc = fit_temporal_cue(backbone, videos, size=32, epochs=3, test_videos=videos[:2])
    assert 0 <= acc["train_acc"] <= 1 and 0 <= acc["test_acc"] <= 1
    paths = render_temporal_cam(backbone, probe, videos[0], tmp_path, "clip", size=32)
    from PIL import Image

    img = Image.open(paths[0])
    assert img.size == (4 * 32 * 2, 2 * 32 * 2)  # 4 frames side by side, forward over reversed, x2


def test_cli_temporal_cam(tmp_path):
    manifest = _write_videos(tmp_path, n=3)
    torch.manual_seed(0)
    weights = tmp_path / "narrow.pt"  # a CPU-sized R3D-18 (width 1/4): the width is read from the file
    torch.save(create_backbone("r3d-18", width=0.25).state_dict(), weights)
    cmd = [sys.executable, "-m", "featbank.experiments.cli", "viz", "temporal-cam", "--weights", str(weights),
           "--train-manifest", str(manifest),
           "--manifest", str(manifest), "--out", str(tmp_path / "cam"), "--clips", "2", "--size", "32", "--epochs", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # a loaded 2-core box: no OpenMP spinning in the child
    proc = subprocess.run(cmd + ["--threads", "1"], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "cam" / "cam.json").read_text())
    assert len(report["pngs"]) == 2 and all(Path(p).is_file() for p in report["pngs"])
    bad = subprocess.run([sys.executable, "-m", "featbank.experiments.cli", "viz", "temporal-cam", "--train-manifest",
                          str(tmp_path / "nope.csv"), "--manifest", str(manifest), "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert bad.returncode == 1 and "nope.csv" in bad.stderr and "Traceback" not in bad.stderr


def test_cached_mode_trains_projections_on_stored_levels(tmp_path):
    """Three keep_time sets (one row per time step) + the global-view sets -> train_cached."""
    from featbank.store import FeatureSetInfo, VideoMeta, VideoRows, open_store

    rng = np.random.default_rng(0)
    steps = {"low": 8, "mid": 4, "high": 2}
    chans = {"low": 8, "mid": 12, "high": 16}
    sets, gsets = {}, {}
    with open_store(str(tmp_path / "c.zarr"), mode="w") as store:
        for lv in ("low", "mid", "high"):
            for kind, n_clips, target in (("local", 2, sets), ("global", 1, gsets)):
                name = f"toy/{lv}/{kind}"
                target[lv] = name
                fs = store.create_set(FeatureSetInfo(name=name, row_shape=(chans[lv],), dtype="float32",
                                                     backbone="toy", weights_id="ab" * 32))
                for v in range(6):
                    n = n_clips * steps[lv]
                    t = np.arange(n, dtype=np.float64)
                    fs.write_video(VideoRows(rng.normal(size=(n, chans[lv])), t, t + 1),
                                   VideoMeta(f"v{v}", labels=(v % 2,), split="train", fps=8.0))
    cfg = load_ssl_config(REPO / "configs/experiments/ssl_cached.yaml",
                          [f"store={tmp_path / 'c.zarr'}", "optim.epochs=2", "optim.batch_size=3", "prototypes=4",
                           "queue=6", "queue_start_epoch=1", "graph_start_epoch=1"])
    cfg = dataclasses.replace(cfg, sets=sets, global_sets=gsets)
    res = train_cached(cfg, tmp_path / "run")
    assert res["videos"] == 6 and len(res["history"]) == 2
    last = res["history"][-1]
    assert all(np.isfinite(last[k]) for k in ("loss", "lhigh", "lfine", "lfmid", "lflow", "lsd", "lgraph"))
    assert last["lgraph"] > 0 and (tmp_path / "run" / "head.pt").is_file()
    bad = dataclasses.replace(cfg, sets={"low": sets["low"]})
    with pytest.raises(ConfigError, match="levels"):
        train_cached(bad, tmp_path / "bad")


def test_extraction_reverse_option(tmp_path):
    """`reverse`: every window's frames backwards; equals the model on flipped clips; provenance."""
    from featbank.extract.decode import decode_video
    from featbank.extract.features import Sampling, extract_video
    from featbank.extract.job import ExtractConfig, run_extraction
    from featbank.extract.transforms import preprocess
    from featbank.store import open_store

    manifest = _write_videos(tmp_path, n=2, frames=20)
    torch.manual_seed(0)
    model = create_backbone("r3d-18", width=0.25)
    spec = model.spec.replace(resize=36, crop=32)
    frames = decode_video(tmp_path / "v0.mp4")
    fwd = Sampling(clip_len=8, stride=8, last="drop")
    rev = Sampling(clip_len=8, stride=8, last="drop", reverse=True)
    rows_f = extract_video(frames, model, spec, fwd, src_fps=8.0)
    rows_r = extract_video(frames, model, spec, rev, src_fps=8.0)
    np.testing.assert_array_equal(rows_r.starts, rows_f.starts)  # same time spans
    clip = preprocess(frames.frames, spec)[0][:, :8]  # (C, 8, h, w): the first window
    with torch.no_grad():
        want = model.forward_head(model.forward_features(clip.flip(1)[None], endpoint="layer4"), endpoint="layer4")
    np.testing.assert_allclose(rows_r.feats[0], want[0].numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(rows_r.feats[0], rows_f.feats[0], atol=1e-4)
    weights = tmp_path / "narrow.pt"
    torch.save(model.state_dict(), weights)
    cfg = ExtractConfig(manifest=str(manifest), store=str(tmp_path / "s.zarr"), backbone="r3d-18", weights=str(weights),
                        endpoint="layer4", clip_len=8, stride=8, resize=36, crop=32, fps="source", workers=0, timeout=0,
                        runtime="torch", reverse=True, split="train", threads=1)
    summary = run_extraction(cfg, progress=False)
    assert summary.exit_code == 0 and summary.feature_set.endswith("rev")
    with open_store(str(tmp_path / "s.zarr"), "r") as store:
        fs = store.open_set(summary.feature_set)
        assert fs.info.sampling["reverse"] is True


def test_temporal_cue_from_forward_and_reversed_sets(tmp_path):
    """Cached forward/reversed rows: a separable toy (reversal flips the sign of feature 0)."""
    from featbank.experiments.recipes.ssl import temporal_cue_from_sets
    from featbank.store import FeatureSetInfo, VideoMeta, VideoRows, open_store

    rng = np.random.default_rng(0)
    with open_store(str(tmp_path / "c.zarr"), mode="w") as store:
        fw = store.create_set(FeatureSetInfo(name="fw", row_shape=(5,), dtype="float32", backbone="toy", weights_id="ab" * 32))
        rv = store.create_set(FeatureSetInfo(name="rv", row_shape=(5,), dtype="float32", backbone="toy", weights_id="ab" * 32))
        for v in range(12):
            f = rng.normal(size=(2, 5))
            f[:, 0] = np.abs(f[:, 0]) + 1
            r = f.copy()
            r[:, 0] *= -1
            meta = VideoMeta(f"v{v}", labels=(0,), split="train" if v < 8 else "test", fps=8.0)
            t = np.arange(2.0)
            fw.write_video(VideoRows(f, t, t + 1), meta)
            rv.write_video(VideoRows(r, t, t + 1), meta)
    head, acc = temporal_cue_from_sets(tmp_path / "c.zarr", "fw", "rv", epochs=30)
    assert acc["n_train"] == 32 and acc["n_test"] == 16 and acc["test_acc"] == 1.0
    assert head.fc.bias is None
