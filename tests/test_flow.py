"""Dense optical flow (extract/flow.py): direction and magnitude on a constructed translation,
the I3D clipping/scaling convention, and the frame-folder writers in both layouts."""

from __future__ import annotations

import json

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from featbank.extract.flow import (  # noqa: E402
    FlowConfig,
    FlowError,
    dense_flow,
    dequantize_flow,
    extract_flow_folders,
    quantize_flow,
    read_flow_frames,
    scale_flow,
    tvl1_available,
    write_flow_frames,
)


def _texture(size: int = 128, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    g = cv2.GaussianBlur((rng.random((size, size)) * 255).astype(np.float32), (0, 0), 2.0)
    return cv2.normalize(g, None, 0, 255, cv2.NORM_MINMAX)


def _translating(dx: float, dy: float, n: int = 3, size: int = 128) -> np.ndarray:
    """``n`` RGB frames of a smooth random texture moving ``(dx, dy)`` px per frame (sub-pixel ok)."""
    base = _texture(size)
    frames = []
    for t in range(n):
        m = np.float32([[1, 0, dx * t], [0, 1, dy * t]])
        g = cv2.warpAffine(base, m, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
        frames.append(np.repeat(g.clip(0, 255).astype(np.uint8)[..., None], 3, -1))
    return np.stack(frames)


@pytest.mark.parametrize("algorithm", ["dis", "farneback"] + (["tvl1"] if tvl1_available() else []))
@pytest.mark.parametrize("dx,dy", [(3.0, -2.0), (-4.5, 1.5)])
def test_translation_direction_and_magnitude(algorithm, dx, dy):
    flow = dense_flow(_translating(dx, dy), FlowConfig(algorithm))
    assert flow.shape == (2, 128, 128, 2) and flow.dtype == np.float32
    inner = flow[:, 16:-16, 16:-16]  # away from the reflected border
    mx, my = float(np.median(inner[..., 0])), float(np.median(inner[..., 1]))
    assert abs(mx - dx) <= 0.1 * abs(dx) and abs(my - dy) <= 0.1 * abs(dy), (algorithm, mx, my)
    assert np.sign(inner[..., 0]).mean() * np.sign(dx) > 0.9  # x right, y down, per pixel


def test_clipping_and_scaling():
    f = np.array([-50.0, -20.0, -10.0, 0.0, 7.5, 20.0, 31.0], np.float32).reshape(1, 1, 7, 1).repeat(2, -1)
    s = scale_flow(f, 20.0)
    np.testing.assert_allclose(s[0, 0, :, 0], [-1, -1, -0.5, 0, 0.375, 1, 1])
    q = quantize_flow(f, 20.0)
    assert q.dtype == np.uint8 and q[0, 0, 0, 0] == 0 and q[0, 0, -1, 0] == 255 and q[0, 0, 3, 0] == 128
    back = dequantize_flow(q)  # what the I3D flow stream reads: x / 255 * 2 - 1
    assert np.abs(back - s).max() <= 1.0 / 255 + 1e-6
    assert np.abs(scale_flow(f, 10.0)).max() == 1.0 and scale_flow(f, 10.0)[0, 0, 2, 0] == -1.0


@pytest.mark.parametrize("layout", ["xy", "uv"])
def test_writers_round_trip_both_layouts(tmp_path, layout):
    flow = dense_flow(_translating(2.0, 1.0, n=4, size=64), FlowConfig("dis"))
    q = quantize_flow(flow)
    paths = write_flow_frames(tmp_path / "v", q, layout=layout, ext="png")
    names = sorted(p.relative_to(tmp_path / "v").as_posix() for p in paths)
    if layout == "xy":
        assert names[:2] == ["x_00001.png", "x_00002.png"] and "y_00003.png" in names
    else:
        assert names[:2] == ["u/000001.png", "u/000002.png"] and "v/000003.png" in names
    np.testing.assert_array_equal(read_flow_frames(tmp_path / "v", layout), q)  # png: lossless


def test_xy_folder_reads_through_the_flow_decoder(tmp_path):
    from featbank.extract.decode_folder import FolderSource

    q = quantize_flow(dense_flow(_translating(2.0, 0.0, n=3, size=64), FlowConfig("dis")))
    write_flow_frames(tmp_path / "v", q, layout="xy", ext="png")
    src = FolderSource(str(tmp_path / "v"), modality="flow")
    got = src.read(np.arange(2)).frames
    assert got.shape == (2, 64, 64, 2)
    np.testing.assert_array_equal(got, q)


def test_batch_folders_resume_failures_and_provenance(tmp_path):
    from featbank.experiments.data.synth_i2v import write_mp4

    write_mp4(tmp_path / "a.mp4", _translating(2.0, 0.0, n=5, size=64), fps=8)
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    items = [("a", str(tmp_path / "a.mp4")), ("bad", str(tmp_path / "bad.mp4"))]
    s = extract_flow_folders(items, tmp_path / "out", FlowConfig("farneback"), layout="uv")
    assert s.done == ["a"] and [v for v, _ in s.failures] == ["bad"] and s.exit_code == 2
    rec = json.loads((tmp_path / "out" / "a" / "flow.json").read_text())
    assert rec["flow"]["algorithm"] == "farneback" and rec["flow"]["bound"] == 20.0 and "fb_winsize" in rec["flow"]
    assert rec["flow_frames"] == 4 and len(list((tmp_path / "out" / "a" / "u").iterdir())) == 4
    assert "bad" in (tmp_path / "out" / "failures.jsonl").read_text()
    again = extract_flow_folders(items, tmp_path / "out", FlowConfig("farneback"), layout="uv")
    assert again.skipped == ["a"] and again.done == []  # resume: finished folders are skipped


def test_bad_config_names_the_culprit():
    with pytest.raises(FlowError, match="raft"):
        FlowConfig("raft")
    with pytest.raises(FlowError, match="bound"):
        FlowConfig(bound=0)
    if not tvl1_available():
        from featbank.extract.flow import flow_function

        with pytest.raises(FlowError, match="opencv-contrib"):
            flow_function(FlowConfig("tvl1"))


def test_flow_stream_weights_published_layout_and_rgb_stand_in(tmp_path):
    """pytorch-i3d flow_charades.pt layout (DataParallel prefix, 157 classes, no num_batches_tracked)
    loads as i3d-flow; the stand-in built from an RGB state dict averages the first conv."""
    import sys
    from pathlib import Path

    import torch

    from featbank.extract.backbones import create_backbone
    from featbank.extract.flow import FIRST_CONV, flow_weights_from_rgb

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from naive_i3d import NaiveI3D  # the pytorch-i3d module layout

    torch.manual_seed(0)
    ref = NaiveI3D(in_channels=2, num_classes=157).eval()
    sd = {f"module.{k}": v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "flow_charades.pt")
    model = create_backbone("i3d-flow", weights=tmp_path / "flow_charades.pt")
    assert model.num_classes == 157 and model.spec.in_channels == 2
    x = torch.rand(1, 2, 8, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(model.forward_features(x), ref.extract_features(x), atol=1e-5)

    rgb = NaiveI3D(in_channels=3, num_classes=400).state_dict()
    flow_sd = flow_weights_from_rgb(rgb)
    assert flow_sd[FIRST_CONV].shape[1] == 2
    assert torch.allclose(flow_sd[FIRST_CONV][:, 0], rgb[FIRST_CONV].mean(1)) and torch.equal(
        flow_sd[FIRST_CONV][:, 0], flow_sd[FIRST_CONV][:, 1])
    torch.save(flow_sd, tmp_path / "stand_in.pt")
    stand_in = create_backbone("i3d-flow", weights=tmp_path / "stand_in.pt")
    assert stand_in.spec.in_channels == 2 and stand_in.num_classes == 400
    with pytest.raises(FlowError, match="not an I3D"):
        flow_weights_from_rgb({"fc.weight": torch.zeros(2, 2)})


def test_flow_frames_at_lines_up_with_rgb_indices():
    from featbank.extract.decode_base import Frames
    from featbank.extract.flow import flow_frames_at, flow_read_plan

    video = _translating(2.0, -1.0, n=6, size=64)
    calls = []

    def read(idx):
        calls.append(list(idx))
        return Frames(video[idx], idx.astype(np.float64) / 8, idx)

    a, b = flow_read_plan(np.array([0, 3, 5]), 6)
    assert a.tolist() == [0, 3, 4] and b.tolist() == [1, 4, 5]  # the last frame repeats 4 -> 5
    got = flow_frames_at(read, np.array([0, 3, 5]), 6, FlowConfig("dis"))
    assert got.frames.shape == (3, 64, 64, 2) and got.frames.dtype == np.uint8
    assert got.indices.tolist() == [0, 3, 5] and got.times.tolist() == [0.0, 3 / 8, 5 / 8]
    assert calls == [[0, 1, 3, 4, 5]]  # one decode of the needed RGB frames
    full = quantize_flow(dense_flow(video, FlowConfig("dis")))  # (5, ...)
    np.testing.assert_array_equal(got.frames, full[[0, 3, 4]])
    x = dequantize_flow(got.frames[..., 0])[:, 16:-16, 16:-16]
    assert abs(np.median(x) * 20 - 2.0) < 0.2  # +2 px/frame in x, scaled by the 20 px bound
    one = flow_frames_at(lambda i: Frames(video[:1][i], i.astype(float), i), np.array([0]), 1, FlowConfig("dis"))
    assert np.all(one.frames == 128)  # a single frame has no motion
