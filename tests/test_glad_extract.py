"""GLAD views through the extraction job: ``sampler: glad`` rows and the BackgroundBlend option."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from featbank.extract import job as job_mod
from featbank.extract.background import BackgroundBlend, write_median_frames
from featbank.extract.decode import decode_video
from featbank.extract.features import extract_video
from featbank.extract.glad_views import glad_windows
from featbank.extract.job import ExtractConfig, run_extraction
from featbank.extract.job.loop import group_windows
from featbank.store.memory import MemoryStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _video(path: Path, n: int, shade: int) -> None:
    import av

    rng = np.random.default_rng(n + shade)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=16)
        s.width, s.height, s.pix_fmt = 48, 48, "yuv420p"
        for i in range(n):
            img = np.full((48, 48, 3), shade, np.uint8)
            img[(i * 3) % 40:(i * 3) % 40 + 8, 10:20] = rng.integers(0, 256, 3)  # a moving block
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("gladvids")
    for i, (n, shade) in enumerate([(12, 30), (20, 120), (37, 220)]):
        _video(d / f"v{i}.mp4", n, shade)
    (d / "list.txt").write_text("".join(f"v{i}.mp4 {i}\n" for i in range(3)))
    return d


def _cfg(d: Path, **kw) -> ExtractConfig:
    base = dict(manifest=str(d / "list.txt"), store="unused", backbone="x3d-xs", weights="random", sampler="glad",
                clip_len=8, frame_stride=2, num_segments=8, fps="source", resize=40, crop=32, device="cpu",
                workers=0, batch_size=5, chunk_frames=7, dtype="float32", timeout=0.0, runtime="torch",
                precision="fp32", split="train", domain="source")
    base.update(kw)
    return ExtractConfig(**base)


def _oracle(cfg: ExtractConfig, path: Path, blend: BackgroundBlend | None = None):
    pipe = job_mod.build_pipeline(cfg)
    frames = decode_video(path)
    if blend is not None:
        frames = dataclasses.replace(frames, frames=blend(np.asarray(frames.frames), path.stem))
    rows = extract_video(frames, pipe.model, pipe.spec, pipe.sampling, src_fps=16.0, batch_size=64)
    return group_windows(rows, 9), len(frames.frames)


def test_glad_sampler_writes_one_view_row_per_video_equal_to_the_oracle(clips):
    cfg = _cfg(clips)
    store = MemoryStore()
    summary = run_extraction(cfg, progress=False, store=store)
    assert summary.exit_code == 0 and summary.n_written == 3
    fs = store.open_set(summary.feature_set)
    assert summary.feature_set.endswith("/glad8x8") and fs.info.row_shape == (9, 2048)
    assert fs.info.sampling["sampler"] == "glad" and list(fs.info.sampling["global_frames"]) == [3]
    for vid in fs.video_ids():
        got = fs.read(vid)
        want, n = _oracle(cfg, clips / f"{vid}.mp4")
        assert got.feats.shape == (1, 9, 2048)
        np.testing.assert_allclose(got.feats, want.feats, rtol=1e-5, atol=1e-5)
        w = glad_windows(n)
        assert got.frame_idx[0].tolist() == [int(w.min()), int(w.max())]
        assert fs.meta(vid).labels == (int(vid[1:]),)


@pytest.mark.slow  # two extraction runs: ~10 s on an idle machine
def test_background_blend_copy_through_the_job(clips, tmp_path):
    med = write_median_frames(clips / "list.txt", tmp_path / "median")
    assert med["written"] == 3
    cfg = _cfg(clips, blend_dir=str(tmp_path / "median"), blend_p=1.0, blend_seed=4, feature_set="glad/bg4")
    store = MemoryStore()
    summary = run_extraction(cfg, progress=False, store=store)
    assert summary.exit_code == 0
    fs = store.open_set("glad/bg4")
    rec = fs.info.sampling["transforms"]["background_blend"]
    assert rec["p"] == 1.0 and rec["alpha"] == 0.75 and rec["seed"] == 4
    bb = BackgroundBlend(tmp_path / "median", p=1.0, seed=4)
    plain = run_extraction(_cfg(clips, feature_set="glad/plain"), progress=False, store=store)
    for vid in fs.video_ids():
        want, _ = _oracle(cfg, clips / f"{vid}.mp4", bb)
        got = fs.read(vid)
        np.testing.assert_allclose(got.feats, want.feats, rtol=1e-4, atol=1e-4)
        assert fs.meta(vid).labels == (int(vid[1:]),)  # the label is left alone
        assert np.abs(got.feats - store.open_set(plain.feature_set).read(vid).feats).max() > 0  # blended


def test_bad_glad_settings_fail_at_config_time(clips):
    with pytest.raises(ValueError, match="glad"):
        job_mod.build_pipeline(_cfg(clips, clip_len=4))
    with pytest.raises(ValueError, match="blend_p"):
        _cfg(clips, blend_p=1.5)
