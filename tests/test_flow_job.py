"""The extraction job computing optical flow in memory (``flow: dis``) feeds the I3D flow stream
the same rows as the job reading the same flow from a lossless x_/y_ frame folder, and records
the flow algorithm and its parameters in the feature set's provenance."""

from __future__ import annotations

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _video(n: int = 10, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur((rng.random((size, size, 3)) * 255).astype(np.float32), (0, 0), 2.0)
    base = cv2.normalize(base, None, 0, 255, cv2.NORM_MINMAX)
    out = []
    for t in range(n):
        m = np.float32([[1, 0, 1.5 * t], [0, 1, -0.5 * t]])
        out.append(cv2.warpAffine(base, m, (size, size), borderMode=cv2.BORDER_REFLECT).clip(0, 255).astype(np.uint8))
    return np.stack(out)


def test_in_memory_flow_equals_folder_flow_and_is_recorded(tmp_path):
    from featbank.experiments.data.synth_i2v import write_mp4
    from featbank.extract.decode import decode_video
    from featbank.extract.flow import FlowConfig, dense_flow, flow_as_frames, quantize_flow, write_flow_frames
    from featbank.extract.job import ExtractConfig, run_extraction
    from featbank.store import open_store

    write_mp4(tmp_path / "v" / "a.mp4", _video(), fps=8)
    (tmp_path / "v" / "list.txt").write_text("a.mp4 0\n")
    frames = decode_video(tmp_path / "v" / "a.mp4").frames  # what the job decodes
    write_flow_frames(tmp_path / "f" / "a", flow_as_frames(quantize_flow(dense_flow(frames, FlowConfig("dis")))),
                      layout="xy", ext="png")
    (tmp_path / "f" / "list.txt").write_text("a 0\n")
    common = dict(store=str(tmp_path / "s.zarr"), backbone="i3d-flow", weights="random", seed=3, sampler="sliding",
                  clip_len=8, stride=8, keep_time=True, resize=64, crop=64, fps="source", workers=0, timeout=0,
                  manifest_format="path_label", dtype="float32", device="cpu", runtime="torch")
    s1 = run_extraction(ExtractConfig(manifest=str(tmp_path / "v" / "list.txt"), feature_set="mem", flow="dis",
                                      **common), progress=False)
    s2 = run_extraction(ExtractConfig(manifest=str(tmp_path / "f" / "list.txt"), feature_set="folder",
                                      modality="flow", decoder="folder", **common), progress=False)
    assert not s1.failures and not s2.failures
    with open_store(str(tmp_path / "s.zarr"), "r") as store:
        mem, folder = store.open_set("mem"), store.open_set("folder")
        a, b = mem.read(mem.video_ids()[0]), folder.read(folder.video_ids()[0])
        assert a.feats.shape == b.feats.shape and a.feats.shape[0] == 2  # 10 frames: 2 windows x 1 step
        np.testing.assert_allclose(a.feats, b.feats, rtol=1e-4, atol=1e-4)
        rec = mem.info.sampling["transforms"]
        assert rec["modality"] == "flow" and rec["flow"]["algorithm"] == "dis" and rec["flow"]["bound"] == 20.0
        assert rec["flow"]["dis_preset"] == "medium" and mem.info.sampling["flow_engine"]["opencv"]
        assert folder.info.sampling["transforms"]["flow"] is None


def test_flow_option_needs_a_flow_stream():
    from featbank.extract.job import ExtractConfig

    with pytest.raises(ValueError, match="flow"):
        ExtractConfig(flow="dis", modality="rgb")
    with pytest.raises(ValueError, match="flow"):
        ExtractConfig(flow="raft")
    with pytest.raises(ValueError, match="flow_bound"):
        ExtractConfig(flow="dis", flow_bound=0)
