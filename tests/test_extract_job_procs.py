"""The extraction job across processes: SIGKILL then resume, and a 2-rank torchrun job.

Both write a real Zarr store from separate processes and compare it with an uninterrupted
single-process run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

from featbank.extract.job import ExtractConfig, run_extraction
from featbank.store import open_store

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def write_video(path: Path, n_frames: int, width: int = 48, height: int = 32, fps: int = 30) -> Path:
    """A small mpeg4 video with moving content."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(n_frames):
            img = np.zeros((height, width, 3), np.uint8)
            img[..., 0] = (np.arange(width) * 5 + i * 11) % 256
            img[..., 2] = (np.arange(height)[:, None] * 7 + i * 3) % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


pytestmark = pytest.mark.usefixtures("one_torch_thread")


FLAGS = ["--backbone", "resnet18", "--weights", "random", "--clip-len", "4", "--stride", "4", "--fps", "source",
         "--device", "cpu", "--no-progress", "--dtype", "float32", "resize=40", "crop=32", "frame_stride=1",
         "--runtime", "torch", "--precision", "fp32"]


def cfg_for(manifest: Path, store: Path, **kw) -> ExtractConfig:
    base = dict(manifest=str(manifest), store=str(store), backbone="resnet18", weights="random", clip_len=4,
                stride=4, fps="source", device="cpu", dtype="float32", resize=40, crop=32, frame_stride=1,
                runtime="torch", precision="fp32")
    base.update(kw)
    return ExtractConfig(**base)


def assert_same_sets(a_path: Path, b_path: Path, name: str) -> None:
    with open_store(a_path, "r") as a, open_store(b_path, "r") as b:
        fa, fb = a.open_set(name), b.open_set(name)
        ids = fa.video_ids()
        assert len(ids) == len(set(ids))  # every video exactly once
        assert sorted(ids) == sorted(fb.video_ids())
        for vid in ids:
            ra, rb = fa.read(vid), fb.read(vid)
            np.testing.assert_allclose(ra.feats, rb.feats, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(ra.starts, rb.starts)
            np.testing.assert_array_equal(ra.frame_idx, rb.frame_idx)
            assert fa.meta(vid) == fb.meta(vid)
        assert a.validate() == []


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("FEATBANK_DECODE_TEST_HOOK", None)
    return env


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
    names = ["a", "b", "c_stall", "d", "e"]  # the decoder hangs on c_stall in the first run
    for i, n in enumerate(names):
        write_video(tmp_path / f"{n}.mp4", 6 + 3 * i)
    manifest = tmp_path / "list.txt"
    manifest.write_text("".join(f"{n}.mp4 {i}\n" for i, n in enumerate(names)))
    killed = tmp_path / "killed.zarr"
    env = dict(_env(), FEATBANK_DECODE_TEST_HOOK="hang:c_stall")
    cmd = [str(BIN / "featbank"), "extract", "--manifest", str(manifest), "--store", str(killed), *FLAGS,
           "--workers", "0", "--batch-size", "1", "--timeout", "300"]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    name = "resnet18/layer4/c4s4"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # wait until a and b are committed, then kill mid-job
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                with open_store(killed, "r") as st:
                    if len(st.open_set(name).video_ids()) >= 2:
                        break
            except Exception:  # the store or set does not exist yet
                pass
            try:  # wait on the job itself between looks: it must not end (video c hangs by design)
                proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                continue
            pytest.fail(f"the job ended before it was killed: {proc.stdout.read().decode()}")
        else:
            pytest.fail("the job did not commit two videos in time")
        os.killpg(proc.pid, signal.SIGKILL)  # the job and its decoder worker
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with open_store(killed, "r") as st:
        assert sorted(st.open_set(name).video_ids()) == ["a", "b"]

    resumed = run_extraction(cfg_for(manifest, killed, workers=0, batch_size=1, timeout=0.0), progress=False)
    assert (resumed.n_skipped, resumed.n_written, resumed.exit_code) == (2, 3, 0)
    reference = tmp_path / "reference.zarr"
    run_extraction(cfg_for(manifest, reference, workers=0, batch_size=1, timeout=0.0), progress=False)
    assert_same_sets(killed, reference, name)


@pytest.mark.skipif(shutil.which("torchrun", path=str(BIN)) is None, reason="torchrun not installed")
def test_torchrun_two_ranks_write_one_store(tmp_path):
    lengths = [40, 8, 8, 8, 8, 12]  # one long video: duration balancing puts it alone on a rank
    for i, n in enumerate(lengths):
        write_video(tmp_path / f"v{i}.mp4", n)
    manifest = tmp_path / "list.txt"
    manifest.write_text("".join(f"v{i}.mp4 {i}\n" for i in range(len(lengths))))
    store = tmp_path / "dist.zarr"
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "featbank.experiments.cli",
           "extract", "--manifest", str(manifest), "--store", str(store), *FLAGS, "--workers", "1",
           "--timeout", "0"]
    out = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("feature set")]
    assert len(lines) == 2 and any("shard 0/2" in ln for ln in lines) and any("shard 1/2" in ln for ln in lines)
    written = sorted(int(ln.split(": ")[1].split(" written")[0]) for ln in lines)
    assert written == [1, 5]  # 40 frames alone vs 12+8+8+8+8 (by duration; by count it would be 3+3)
    reference = tmp_path / "single.zarr"
    run_extraction(cfg_for(manifest, reference, workers=0, timeout=0.0), progress=False)
    assert_same_sets(store, reference, "resnet18/layer4/c4s4")
