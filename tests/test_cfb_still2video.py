"""Still -> video generation: deterministic per seed, camera motion within the configured bounds
(checked on the recorded path and on the measured optical flow), depth parallax, layouts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from featbank.experiments.data.still2video import (  # noqa: E402
    Still2VideoConfig,
    generate,
    item_rng,
    max_step_motion,
    still_to_video,
)
from featbank.extract.flow import FlowConfig, dense_flow  # noqa: E402


def _still(size: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur((rng.random((size, size, 3)) * 255).astype(np.uint8), (0, 0), 2.0)
    return cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX)


def test_deterministic_per_seed_and_different_across_seeds():
    img, cfg = _still(), Still2VideoConfig(frames=6)
    a, pa = still_to_video(img, cfg, item_rng(3, "x/a.jpg"))
    b, pb = still_to_video(img, cfg, item_rng(3, "x/a.jpg"))
    c, _ = still_to_video(img, cfg, item_rng(4, "x/a.jpg"))
    assert np.array_equal(a, b) and np.array_equal(pa.angles, pb.angles)
    assert not np.array_equal(a, c)
    assert np.array_equal(a[0], img) and a.shape == (6, 96, 96, 3)


def test_recorded_motion_within_bounds_and_chained():
    img = _still(80)
    cfg = Still2VideoConfig(frames=16, rot_deg=(1.0, 2.0), trans_frac=(0.01, 0.02))
    for seed in range(5):
        _, path = still_to_video(img, cfg, item_rng(seed, "s.jpg"))
        assert np.all((np.abs(path.angles) >= 1.0) & (np.abs(path.angles) <= 2.0))
        frac = np.abs(path.shifts) / 80
        assert np.all((frac >= 0.01 - 1e-12) & (frac <= 0.02 + 1e-12))
        assert len(set(np.sign(path.angles))) == 1  # one drift direction per video
        poses = path.poses((80, 80))
        total = math.degrees(math.atan2(poses[-1][1, 0], poses[-1][0, 0]))
        assert total == pytest.approx(path.angles.sum(), abs=1e-6)  # chained: rotations add up


def test_measured_flow_matches_the_camera_bounds():
    img, cfg = _still(112), Still2VideoConfig(frames=8)
    video, path = still_to_video(img, cfg, item_rng(1, "m.jpg"))
    flow = dense_flow(video, FlowConfig("dis"))  # (7, H, W, 2)
    inner = flow[:, 20:-20, 20:-20]
    med = np.median(inner.reshape(len(flow), -1, 2), axis=1)  # (7, 2): centre-region motion per step
    # the centre moves by the step's translation (rotation about the centre adds ~0 there)
    np.testing.assert_allclose(med, path.shifts, atol=0.35)
    mag = np.linalg.norm(inner, axis=-1)
    assert np.percentile(mag, 99) <= max_step_motion(cfg, (112, 112)) + 0.5


def test_depth_aware_parallax_moves_near_pixels_more(tmp_path):
    img = _still(96, seed=2)
    depth = np.tile(np.where(np.arange(96) < 48, 1.0, 4.0)[None, :], (96, 1))  # left half near, right far
    cfg = Still2VideoConfig(frames=3, rot_deg=(0.0, 0.0), trans_frac=(0.02, 0.02))
    video, path = still_to_video(img, cfg, item_rng(0, "d.jpg"), depth=depth)
    flow = dense_flow(video, FlowConfig("dis"))[0]
    near = np.median(np.abs(flow[20:-20, 8:40, 0]))
    far = np.median(np.abs(flow[20:-20, 56:88, 0]))
    assert near > 1.5 * far and far > 0.2  # median depth 2.5: near x1.6..2.5, far x0.6


def test_generate_frames_and_mp4_with_manifest(tmp_path):
    from PIL import Image

    src = tmp_path / "src"
    (src / "c0").mkdir(parents=True)
    Image.fromarray(_still(64)).save(src / "c0" / "a.jpg")
    Image.fromarray(_still(64, 1)).save(src / "c0" / "b.jpg")
    (src / "list.txt").write_text("c0/a.jpg 0\nc0/b.jpg 1\n")
    p = generate(src / "list.txt", tmp_path / "out", Still2VideoConfig(frames=4, seed=5))
    assert p["videos"].read_text().split("\n")[:2] == ["c0/a 0", "c0/b 1"]
    assert sorted(f.name for f in (tmp_path / "out" / "c0" / "a").iterdir())[0] == "img_00001.jpg"
    rec = [json.loads(x) for x in p["motion"].read_text().splitlines()]
    assert len(rec) == 2 and len(rec[0]["angles_deg"]) == 3
    q = generate(src / "c0", tmp_path / "mp4", Still2VideoConfig(frames=4, seed=5, output="mp4"))
    assert (tmp_path / "mp4" / "a.mp4").is_file() and q["videos"].read_text().startswith("a.mp4 -1")
    from featbank.experiments.config import ConfigError

    with pytest.raises(ConfigError, match="does not exist"):
        generate(tmp_path / "nope", tmp_path / "x")
    with pytest.raises(ConfigError, match="no depth map"):
        generate(src / "c0", tmp_path / "d", Still2VideoConfig(frames=2, depth_dir=str(tmp_path)))
