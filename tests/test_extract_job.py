"""The batch extraction job: oracle equality, provenance, failures, resume, verify, CLI.

Videos are generated here (PyAV, tiny frames); backbones use random weights, a tiny crop
and 4-frame windows so every run takes about a second on CPU.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from featbank.experiments.cli import main as cli_main
from featbank.experiments.config import ConfigError, load_config
from featbank.extract import job as job_mod
from featbank.extract._stream import _Reader
from featbank.extract.backbones import create_backbone
from featbank.extract.decode import decode_video
from featbank.extract.errors import ManifestError
from featbank.extract.features import Sampling, extract_video
from featbank.extract.job import ExtractConfig, run_extraction, verify_extraction
from featbank.store.memory import MemoryStore
from featbank.store.schema import VideoRows

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_video(path: Path, n_frames: int, *, width: int = 64, height: int = 48, fps: int = 30) -> Path:
    """A small mpeg4 video whose frames change over time (so windows differ)."""
    rng = np.random.default_rng(n_frames)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(n_frames):
            img = np.zeros((height, width, 3), np.uint8)
            img[..., 0] = (np.arange(width) * 4 + i * 9) % 256
            img[..., 1] = rng.integers(0, 256)
            img[..., 2] = (np.arange(height)[:, None] * 5 + i * 3) % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Three videos of 5, 23 and 40 frames (shorter and longer than a batch) + a manifest."""
    d = tmp_path_factory.mktemp("videos")
    lines = []
    for i, n in enumerate([5, 23, 40]):
        write_video(d / f"v{i}.mp4", n)
        lines.append(f"v{i}.mp4 {i}")
    (d / "list.txt").write_text("\n".join(lines) + "\n")
    return d


def tiny_cfg(manifest: Path, **kw) -> ExtractConfig:
    base = dict(
        manifest=str(manifest), store="unused", backbone="x3d-xs", weights="random", clip_len=4,
        stride=3, frame_stride=1, fps="source", resize=40, crop=32, device="cpu", workers=0,
        batch_size=3, chunk_frames=7, dtype="float32", timeout=0.0, runtime="torch", precision="fp32",
    )
    base.update(kw)
    return ExtractConfig(**base)


@pytest.fixture(scope="module")
def base_run(videos):
    """One in-process run of the base config, shared by several tests (read-only)."""
    cfg = tiny_cfg(videos / "list.txt", split="train", domain="ucf")
    store = MemoryStore()
    summary = run_extraction(cfg, progress=False, store=store)
    return cfg, store, summary


def oracle_rows(pipe, path: Path) -> VideoRows:
    """Whole-video extraction of one video with the pure ``extract_video``."""
    frames = decode_video(path, fps=pipe.sampling.fps)
    return extract_video(frames, pipe.model, pipe.spec, pipe.sampling, src_fps=30.0, batch_size=64)


def check_against_oracle(cfg, store, summary, videos):
    assert summary.exit_code == 0 and summary.n_written == 3
    fs = store.open_set(summary.feature_set)
    assert sorted(fs.video_ids()) == ["v0", "v1", "v2"]
    pipe = job_mod.build_pipeline(cfg)  # same seed -> the same random weights as the job's
    for vid in fs.video_ids():
        got = fs.read(vid)
        want = oracle_rows(pipe, videos / f"{vid}.mp4")
        assert got.feats.shape == want.feats.shape and len(got) > 0
        np.testing.assert_allclose(got.feats, want.feats, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got.starts, want.starts)
        np.testing.assert_array_equal(got.ends, want.ends)
        np.testing.assert_array_equal(got.frame_idx, want.frame_idx)
        assert np.all(np.diff(got.starts) >= 0) and np.all(got.ends > got.starts)
    return fs


def test_job_equals_whole_video_oracle(base_run, videos):
    """Overlapping windows, chunked decoding (7 frames), batches of 3 windows across videos."""
    check_against_oracle(*base_run, videos)


@pytest.mark.parametrize(
    "overrides",
    [
        {"backbone": "resnet18", "keep_time": True, "stride": 4, "views": "3crop"},
        {"backbone": "resnet18", "sampler": "tsn", "num_segments": 3, "clip_len": 2, "fps": 15.0},
    ],
    ids=["frames-3crop", "tsn-resampled"],
)
def test_job_equals_oracle_other_samplings(videos, overrides):
    cfg = tiny_cfg(videos / "list.txt", **overrides)
    store = MemoryStore()
    summary = run_extraction(cfg, progress=False, store=store)
    fs = check_against_oracle(cfg, store, summary, videos)
    if cfg.views == "3crop":
        assert fs.info.row_shape == (3, 512) and fs.info.level == "frame"
        assert fs.n_rows("v1") == 23  # one row per frame


def test_provenance_and_metadata(base_run, videos):
    cfg, store, summary = base_run
    fs = store.open_set(summary.feature_set)
    info = fs.info
    assert summary.feature_set == "x3d-xs/conv5/c4s3" == info.name
    assert info.backbone == "x3d-xs" and info.weights_id == "random" and info.endpoint == "conv5"
    assert info.spec["clip_len"] == 4 and info.spec["crop"] == 32 and info.spec["target_fps"] is None
    s = info.sampling
    for key in ("sampler", "clip_len", "stride", "frame_stride", "fps_policy", "views", "decoder", "transforms"):
        assert key in s, key
    assert s["fps_policy"] == "source" and s["decoder"]["av"] and s["transforms"]["resize_short_side"] == 40
    assert ExtractConfig.from_record(s["config"]) == cfg  # the resolved config reloads equal
    meta = fs.meta("v1")
    assert meta.labels == (1,) and meta.split == "train" and meta.domain == "ucf"
    assert meta.n_frames == 23 and meta.fps == pytest.approx(30.0) and meta.duration == pytest.approx(23 / 30)
    assert meta.source == str(videos / "v1.mp4")
    rows = fs.read("v1")  # windows start every 3 frames; the last one is padded at frame 22
    np.testing.assert_array_equal(rows.frame_idx[:, 0], np.arange(0, 23, 3)[: len(rows)])
    assert rows.frame_idx[-1, 1] == 22
    np.testing.assert_allclose(rows.starts, rows.frame_idx[:, 0] / 30.0, atol=1e-6)


def test_workers_and_safe_decoder_match_in_process(base_run):
    cfg, a, _ = base_run
    b = MemoryStore()
    run_extraction(cfg.replace(workers=2, timeout=30.0, batch_size=4), progress=False, store=b)
    fa, fb = a.open_set("x3d-xs/conv5/c4s3"), b.open_set("x3d-xs/conv5/c4s3")
    assert sorted(fa.video_ids()) == sorted(fb.video_ids())
    for vid in fa.video_ids():
        np.testing.assert_allclose(fa.read(vid).feats, fb.read(vid).feats, rtol=1e-5, atol=1e-5)


def test_failures_are_recorded_and_job_carries_on(videos, tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("not a video\n")
    good = write_video(tmp_path / "good.mp4", 9)
    data = good.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 3])
    write_video(tmp_path / "stuck_hang.mp4", 9)
    (tmp_path / "list.txt").write_text("good.mp4 0\nmissing.mp4 1\nnotes.txt 2\ncut.mp4 3\nstuck_hang.mp4 4\n")
    monkeypatch.setenv("FEATBANK_DECODE_TEST_HOOK", "hang:stuck_hang")
    cfg = tiny_cfg(tmp_path / "list.txt", timeout=5.0)
    store = MemoryStore()
    summary = run_extraction(cfg, progress=False, store=store)
    assert summary.exit_code == 2
    failed = {vid: kind for vid, kind, _ in summary.failures}
    assert failed["missing"] == "missing" and failed["stuck_hang"] == "decode_timeout"
    assert {"notes.txt", "cut"} <= set(failed) and "good" not in failed
    assert failed["notes.txt"] in ("not_video", "corrupt")
    logged = {r["video_id"]: r["kind"] for r in store.failures(summary.feature_set)}
    assert logged == failed
    assert store.open_set(summary.feature_set).video_ids() == ["good"]
    text = summary.format()
    assert all(vid in text for vid in failed) and "decode_timeout" in text


def test_resume_skips_committed_videos(videos, tmp_path):
    lines = (videos / "list.txt").read_text().splitlines()
    (tmp_path / "first.txt").write_text("\n".join(f"{videos}/{ln}" for ln in lines[:2]) + "\n")
    (tmp_path / "all.txt").write_text("\n".join(f"{videos}/{ln}" for ln in lines) + "\n")
    store = MemoryStore()
    s1 = run_extraction(tiny_cfg(tmp_path / "first.txt", root=str(videos)), progress=False, store=store)
    s2 = run_extraction(tiny_cfg(tmp_path / "all.txt", root=str(videos)), progress=False, store=store)
    assert (s1.n_written, s2.n_written, s2.n_skipped) == (2, 1, 2)
    assert sorted(store.open_set(s2.feature_set).video_ids()) == ["v0", "v1", "v2"]


def test_decoding_memory_is_bounded(tmp_path, monkeypatch):
    """A long video is read in pieces of at most ``chunk_frames`` frames."""
    write_video(tmp_path / "long.mp4", 120, width=32, height=24)
    (tmp_path / "list.txt").write_text("long.mp4 0\n")
    sizes = []
    original = _Reader.read

    def spy(self, indices):
        sizes.append(len(indices))
        return original(self, indices)

    monkeypatch.setattr(_Reader, "read", spy)
    cfg = tiny_cfg(tmp_path / "list.txt", chunk_frames=16, stride=4, batch_size=8)
    summary = run_extraction(cfg, progress=False, store=MemoryStore())
    assert summary.n_written == 1 and summary.n_rows == 30
    assert sum(sizes) == 120  # every source frame decoded exactly once
    assert max(sizes) <= 16


def test_verify_detects_tampering(videos):
    cfg = tiny_cfg(videos / "list.txt", verify=2, limit=2)
    store = MemoryStore()
    summary = run_extraction(cfg, progress=False, store=store)
    assert summary.verify is not None and summary.verify.ok and len(summary.verify.video_ids) == 2
    assert summary.verify.max_abs_diff <= summary.verify.tolerance
    fs = store.open_set(summary.feature_set)
    for vid in fs.video_ids():
        rows = fs.read(vid)
        fs.write_video(VideoRows(rows.feats + 0.5, rows.starts, rows.ends, rows.frame_idx), fs.meta(vid), overwrite=True)
    report = verify_extraction(store, summary.feature_set, 2)
    assert not report.ok and report.max_abs_diff == pytest.approx(0.5, abs=1e-3)
    assert "MISMATCH" in report.format()


def test_configs_load_and_unknown_keys_raise(tmp_path):
    for stem in ("i3d_rgb_k400", "x3d_m_frames", "i3d_flow", "resnet50_frames"):  # (flow_*.yaml configure flow)
        cfg = load_config(ExtractConfig, REPO / "configs" / "extract" / f"{stem}.yaml")
        assert cfg.backbone
    assert {p.stem for p in (REPO / "configs" / "extract").glob("*.yaml")} >= {
        "i3d_rgb_k400", "x3d_m_frames", "i3d_flow", "resnet50_frames"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("backbone: x3d-xs\nclip_lenn: 4\n")
    with pytest.raises(ConfigError, match="clip_lenn"):
        load_config(ExtractConfig, bad)
    with pytest.raises(ConfigError, match="views"):
        load_config(ExtractConfig, None, ["views=five"])
    cfg = load_config(ExtractConfig, REPO / "configs/extract/i3d_rgb_k400.yaml", ["clip_len=16", "fps=source"])
    s = cfg.sampling_for(create_backbone("x3d-xs", weights=None).spec, endpoint="conv5")
    assert s == Sampling(clip_len=16, stride=32, frame_stride=1, fps=None, endpoint="conv5")


def test_cli_extract_exit_codes_and_malformed_manifest(videos, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{videos}/v0.mp4 0\n{videos}/v1.mp4 zero\n")
    store = tmp_path / "s.zarr"
    rc = cli_main(["extract", "--manifest", str(bad), "--store", str(store), "--backbone", "x3d-xs"])
    err = capsys.readouterr().err
    assert rc == 1 and f"{bad}:2" in err and "zero" in err
    assert not store.exists()  # nothing was started
    with pytest.raises(ManifestError):
        job_mod.load_tasks(tiny_cfg(bad))

    (tmp_path / "ok.txt").write_text(f"{videos}/v0.mp4 0\n{videos}/gone.mp4 1\n")
    args = ["extract", "--manifest", str(tmp_path / "ok.txt"), "--root", str(videos), "--store", str(store),
            "--backbone", "x3d-xs",
            "--weights", "random", "--clip-len", "4", "--fps", "source", "--device", "cpu", "--workers", "0",
            "--timeout", "0", "--no-progress", "resize=40", "crop=32", "frame_stride=1", "dtype=float32",
            "--runtime", "torch", "--precision", "fp32"]
    rc = cli_main(args)
    out = capsys.readouterr().out
    assert rc == 2 and "FAILED gone [missing]" in out and "1 written" in out
    rc = cli_main(["store", "verify", str(store), "--set", "x3d-xs/conv5/c4s4", "-n", "1", "-o", "workers=0"])
    out = capsys.readouterr().out
    assert rc == 0 and "OK" in out
    rc = cli_main(["extract", "--print-config", "--backbone", "resnet18", "batch_size=5"])
    out = capsys.readouterr().out
    assert rc == 0 and "backbone: resnet18" in out and "batch_size: 5" in out


@pytest.mark.slow
def test_real_i3d_whole_clip_logits_match_reference(shared_data, tmp_path):
    """The job with the K400 I3D, whole-clip sampling and the Logits endpoint reproduces the
    reference top-1 of the shared clip (reference protocol: 25 fps, resize 256, crop 224)."""
    import json

    expected = json.loads((shared_data / "clips" / "expected_i3d_k400.json").read_text())["clip_c.mp4"]
    labels = (shared_data / "kinetics400_labels.txt").read_text().splitlines()
    (tmp_path / "list.txt").write_text(f"{shared_data / 'clips' / 'clip_c.mp4'} 0\n")
    cfg = ExtractConfig(manifest=str(tmp_path / "list.txt"), root=str(shared_data / "clips"), store="unused",
                        backbone="i3d-rgb-k400", endpoint="Logits", sampler="whole", device="cpu",
                        workers=0, timeout=0.0, dtype="float32")
    store = MemoryStore()
    summary = run_extraction(cfg, progress=False, store=store)
    fs = store.open_set(summary.feature_set)
    assert summary.feature_set == "i3d-rgb-k400/Logits/whole"
    rows = fs.read("clip_c")
    assert rows.feats.shape == (1, 400) and tuple(rows.frame_idx[0]) == (0, 31)
    top1 = int(np.argmax(rows.feats[0]))
    assert labels[top1] == expected["top5"][0]["label"]
    assert abs(float(rows.feats[0, top1]) - expected["top5"][0]["logit"]) <= 1.0


def test_job_compacts_its_set_at_the_end_but_not_one_array_task(videos, tmp_path):
    """Closing a job consolidates the writer segments; an array task (--shard) leaves them."""
    from featbank.store import open_store

    whole = tmp_path / "whole.zarr"
    s = run_extraction(tiny_cfg(videos / "list.txt", store=str(whole)), progress=False)
    assert s.exit_code == 0 and s.compacted
    seg_dir = next(whole.rglob("segments"))
    assert [p.name[:2] for p in seg_dir.iterdir() if p.is_dir()] == ["c-"]
    assert not any((seg_dir.parent / "_commits").iterdir())

    part = tmp_path / "part.zarr"
    s0 = run_extraction(tiny_cfg(videos / "list.txt", store=str(part), shard="0/2"), progress=False)
    assert s0.exit_code == 0 and not s0.compacted
    seg_dir = next(part.rglob("segments"))
    assert all(p.name.startswith("w-") for p in seg_dir.iterdir() if p.is_dir())

    # compaction changed no value: the compacted store equals an in-memory run
    mem = MemoryStore()
    run_extraction(tiny_cfg(videos / "list.txt"), progress=False, store=mem)
    name = s.feature_set
    with open_store(whole, "r") as st:
        fs, ref = st.open_set(name), mem.open_set(name)
        assert sorted(fs.video_ids()) == sorted(ref.video_ids())
        for vid in ref.video_ids():
            assert np.array_equal(fs.read(vid).feats, ref.read(vid).feats)


def test_seconds_since_launch_matches_a_clock_read_before_the_process_started():
    """Measured against the parent's clock: to ~10 ms, not the up-to-1 s error of /proc/stat's
    whole-second boot time."""
    import subprocess
    import sys
    import time

    code = ("import time\nfrom featbank.extract.job.report import seconds_since_launch\n"
            "print(seconds_since_launch(), time.time())")
    before = time.time()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    since, now = float(out[0]), float(out[1])
    assert since <= now - before + 0.05  # the process started after `before`
    assert since >= (now - before) - 0.25  # and not long after it (interpreter start-up only)


def test_summary_times_the_first_model_call_from_the_job_call_and_from_process_launch(base_run):
    from featbank.extract.job.report import seconds_since_launch

    _, _, summary = base_run
    assert 0 < summary.startup_seconds <= summary.launch_seconds  # imports happened before the job call
    age = seconds_since_launch()
    assert summary.launch_seconds < age  # the job ran after this process started, before now
    assert "computing started" in summary.format() and "after launch" in summary.format()
