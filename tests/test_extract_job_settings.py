"""The job's static sampler (stills and frames as static clips), provenance of the engine, and the
refusal to mix settings in one feature set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from featbank.experiments.cli import main as cli_main
from featbank.extract.backbones import create_backbone
from featbank.extract.decode import decode_video
from featbank.extract.errors import SettingsConflictError
from featbank.extract.features import Sampling, run_model
from featbank.extract.job import ExtractConfig, run_extraction, verify_extraction
from featbank.extract.transforms import preprocess
from featbank.store.memory import MemoryStore

from test_extract_job import tiny_cfg, write_video

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """Two stills, one video and one broken still, with a path_label manifest."""
    d = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg"):
        Image.fromarray(rng.integers(0, 256, (44, 52, 3), dtype=np.uint8)).save(d / name)
    write_video(d / "v.mp4", 23)
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (d / "list.txt").write_text("a.png 0\nb.jpg 1\nv.mp4 2\n")
    (d / "with_broken.txt").write_text("a.png 0\nbroken.png 1\nv.mp4 2\n")
    return d


def static_cfg(manifest: Path, **kw) -> ExtractConfig:
    return tiny_cfg(manifest, sampler="static", num_segments=3, clip_len=4, **kw)


def test_static_sampler_rows_equal_repeated_frames_through_the_model(media):
    cfg = static_cfg(media / "list.txt")
    store = MemoryStore()
    summary = run_extraction(cfg, progress=False, store=store)
    assert summary.exit_code == 0 and summary.feature_set == "x3d-xs/conv5/static3x4"
    fs = store.open_set(summary.feature_set)
    assert fs.info.level == "frame" and fs.info.sampling["sampler"] == "static"
    torch.manual_seed(cfg.seed)
    model = create_backbone("x3d-xs", weights=None).eval()
    spec = model.spec.replace(resize=40, crop=32)
    sampling = Sampling(clip_len=4, stride=4, endpoint="conv5")
    for vid, picks in (("a", [0]), ("b", [0]), ("v", [3, 11, 19])):  # a still is one frame; 3 segment centres of 23
        rows = fs.read(vid)
        assert rows.frame_idx[:, 0].tolist() == picks and (rows.frame_idx[:, 0] == rows.frame_idx[:, 1]).all()
        frames = decode_video(media / f"{vid}.{ {'a': 'png', 'b': 'jpg', 'v': 'mp4'}[vid]}").frames[picks]
        x = preprocess(frames, spec)  # (1, C, k, h, w)
        clips = x[0].permute(1, 0, 2, 3)[:, None, :, None].expand(-1, 1, -1, 4, -1, -1)  # (k, 1, C, 4, h, w)
        want = run_model(model, clips, sampling)[:, 0, 0]  # (k, D)
        np.testing.assert_allclose(rows.feats, want.numpy(), rtol=1e-4, atol=1e-5)


def test_static_set_has_failure_log_exit_code_and_verify(media):
    store = MemoryStore()
    summary = run_extraction(static_cfg(media / "with_broken.txt"), progress=False, store=store)
    assert summary.exit_code == 2 and summary.n_written == 2
    assert [f[0] for f in summary.failures] == ["broken"]
    assert [r["video_id"] for r in store.failures(summary.feature_set)] == ["broken"]
    report = verify_extraction(store, summary.feature_set, 2)
    assert report.ok and len(report.video_ids) == 2


def test_engine_choice_is_in_the_provenance(media):
    store = MemoryStore()
    summary = run_extraction(static_cfg(media / "list.txt"), progress=False, store=store)
    engine = store.open_set(summary.feature_set).info.sampling["engine"]
    assert engine["runtime"] == "torch" and engine["precision"] == "fp32" and engine["requested"] == "torch/fp32"
    assert isinstance(engine["cpu_flags"], list) and "cpu_native_bf16" in engine and engine["versions"]["torch"]


def test_rerun_with_other_settings_refuses_naming_each_field(media, tmp_path, capsys):
    store = MemoryStore()
    cfg = static_cfg(media / "list.txt", limit=1, feature_set="stills")
    run_extraction(cfg, progress=False, store=store)
    with pytest.raises(SettingsConflictError) as e:
        run_extraction(cfg.replace(limit=None, clip_len=2, crop=24), progress=False, store=store)
    msg = str(e.value)
    assert "'stills' was extracted with other settings" in msg
    assert "clip_len: 4 (stored) vs 2" in msg and "transforms.crop: 32 (stored) vs 24" in msg and "--set NEW_NAME" in msg
    assert store.open_set("stills").video_ids() == ["a"]  # nothing was added
    summary = run_extraction(cfg.replace(limit=None), progress=False, store=store)  # same settings: resumes
    assert summary.n_skipped == 1 and summary.n_written == 2
    summary = run_extraction(cfg.replace(clip_len=2, feature_set="stills2"), progress=False, store=store)
    assert summary.exit_code == 0  # a new set name is fine
    # on the command line: one line, exit 1
    zarr = tmp_path / "s.zarr"
    base = ["extract", "--manifest", str(media / "list.txt"), "--store", str(zarr), "--backbone", "x3d-xs",
            "--weights", "random", "--sampler", "static", "--num-segments", "1", "--fps", "source", "--device", "cpu",
            "--workers", "0", "--timeout", "0", "--no-progress", "--runtime", "torch", "--precision", "fp32",
            "--set", "s", "resize=40", "crop=32"]
    assert cli_main([*base, "--clip-len", "4"]) == 0
    capsys.readouterr()
    assert cli_main([*base, "--clip-len", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "clip_len: 4 (stored) vs 2" in err[0]


def test_config_errors_name_the_culprit(media):
    with pytest.raises(ValueError, match="keep_time: not supported with sampler 'static'"):
        static_cfg(media / "list.txt", keep_time=True)
    with pytest.raises(ValueError, match="random weights are spelled 'random'"):
        ExtractConfig(weights="none")
    with pytest.raises(ValueError, match="crop: 48 is larger than resize 40"):
        tiny_cfg(media / "list.txt", crop=48)  # both given: caught at config time
    from featbank.extract.errors import ExtractError

    with pytest.raises(ExtractError, match="crop 300 is larger than resize 182"):  # the spec's resize: once, at start
        run_extraction(tiny_cfg(media / "list.txt", resize=None, crop=300), progress=False, store=MemoryStore())
