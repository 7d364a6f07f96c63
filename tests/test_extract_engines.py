"""Every backbone runs under every runtime and agrees with torch fp32 (``featbank.extract.engines``).

Tiny random-weight networks and tiny clips keep each conversion fast; the full I3D at 64x224 is
measured in ``bench/extract_i3d.py``. bf16/fp16 cases run only where the CPU computes them natively.
"""

from __future__ import annotations

import functools
import json

import pytest
import torch

from featbank.extract import engines
from featbank.extract.backbones import BACKBONES, create_backbone
from featbank.extract.errors import EngineError
from featbank.extract.features import Sampling, run_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"i3d": (8, 32, 32), "x3d": (4, 32, 32), "resnet": (2, 32, 32), "r3d": (8, 32, 32)}
FAST = {"i3d-rgb", "x3d-xs"}  # each conversion takes seconds on a loaded 2-core box: the rest under -m slow
CPU = torch.device("cpu")


def _family(name: str) -> str:
    return next(f for f in TINY if name.startswith(f))


@functools.lru_cache(maxsize=None)
def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_backbone(name, weights=None).fused_for_inference(inplace=True)


def _case(name: str, sampling: Sampling | None = None):
    model = _model(name)  # one object per backbone: this process converts it once per cut and shape
    t, h, w = TINY[_family(name)]
    clip_shape = (model.spec.in_channels, t, h, w)
    sampling = sampling or Sampling(clip_len=t, stride=t, endpoint=model.endpoints[-1])
    clips = engines.probe_clip(clip_shape, seed=1).repeat(2, 1, 1, 1, 1, 1)  # (2, 1, C, T, H, W)
    clips[1] = clips[1].flip(-1)
    return model, sampling, clip_shape, clips


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double().flatten(1), b.double().flatten(1), dim=1).min())


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in BACKBONES
                                  if n != "i3d-rgb-k400"])
def test_openvino_fp32_equals_torch_fp32(name):
    model, sampling, clip_shape, clips = _case(name)
    want = run_model(model, clips, sampling)  # (2, 1, 1, D)
    engine, choice, _ = engines.select_engine(model, sampling, clip_shape, CPU, runtime="openvino", precision="fp32",
                                              cache=False)
    got = torch.from_numpy(engine(clips))  # engines return numpy
    assert (choice.runtime, choice.precision, choice.probe_cosine) == ("openvino", "fp32", None)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


@pytest.mark.skipif(not engines.cpu_native("bf16"), reason="this CPU has no native bf16")
@pytest.mark.parametrize("runtime", ["torch", "openvino"])
@pytest.mark.parametrize("name", ["i3d-rgb", "x3d-xs", "resnet18", "r3d-18"])
def test_bf16_agrees_with_fp32_where_native(name, runtime):
    if runtime == "openvino" and name not in FAST:
        pytest.skip("one conversion per backbone in the fast suite (the fp32 parity test of this backbone is slow)")
    model, sampling, clip_shape, clips = _case(name)
    want = run_model(model, clips, sampling)
    engine, choice, _ = engines.select_engine(model, sampling, clip_shape, CPU, runtime=runtime, precision="bf16",
                                              cache=False)
    assert choice.precision == "bf16" and choice.probe_cosine is not None and choice.probe_cosine > 0.99
    assert _cos(torch.from_numpy(engine(clips)), want) > 0.99


def test_time_resolved_maps_under_openvino():
    """keep_time rows of unpooled maps go through the same FeatureHead under OpenVINO."""
    model, sampling, clip_shape, clips = _case("x3d-xs", Sampling(clip_len=4, stride=4, keep_time=True, pool="none",
                                                                  endpoint="res4"))
    want = run_model(model, clips, sampling)  # (2, T', 1, C, H, W)
    engine, _, _ = engines.select_engine(model, sampling, clip_shape, CPU, runtime="openvino", precision="fp32",
                                         cache=False)
    got = torch.from_numpy(engine(clips))  # engines return numpy
    assert got.shape == want.shape and got.ndim == 6 and got.shape[1] == 4
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


def test_plan_follows_the_cpu_flags():
    plain, amx = frozenset({"avx2", "avx512f"}), frozenset({"avx512f", "avx512_bf16", "amx_bf16"})
    assert engines.plan("auto", "auto", "cpu", plain, openvino=True)[:2] == ("openvino", "fp32")
    assert "no native bf16" in engines.plan("auto", "auto", "cpu", plain, openvino=True)[2][-1]
    assert engines.plan("auto", "auto", "cpu", amx, openvino=True)[:2] == ("openvino", "bf16")
    assert engines.plan("auto", "auto", "cpu", amx, openvino=False)[:2] == ("torch", "bf16")
    assert engines.plan("auto", "auto", "cuda", plain, openvino=True, cuda_bf16=False)[:2] == ("torch", "fp16")
    assert engines.plan("torch", "fp32", "cpu", amx, openvino=True)[:2] == ("torch", "fp32")
    with pytest.raises(EngineError, match="precision 'bf16': this CPU has no native bf16"):
        engines.plan("auto", "bf16", "cpu", plain, openvino=True)
    with pytest.raises(EngineError, match="openvino package is not installed"):
        engines.plan("openvino", "auto", "cpu", amx, openvino=False)
    with pytest.raises(EngineError, match="runs on the CPU"):
        engines.plan("openvino", "auto", "cuda", amx, openvino=True)
    with pytest.raises(EngineError, match="runtime 'tpu' is not one of"):
        engines.plan("tpu", "auto", "cpu", amx, openvino=True)


def test_auto_falls_back_to_fp32_when_the_probe_disagrees(monkeypatch):
    model, sampling, clip_shape, _ = _case("x3d-xs")
    monkeypatch.setattr(engines, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    monkeypatch.setattr(engines, "_cosine", lambda a, b: 0.98)
    _, choice, _ = engines.select_engine(model, sampling, clip_shape, CPU, runtime="torch", cache=False)
    assert choice.precision == "fp32" and choice.probe_cosine == 0.98 and "< 0.999" in choice.reason
    # an explicit request keeps its precision and records the cosine
    _, choice, _ = engines.select_engine(model, sampling, clip_shape, CPU, runtime="torch", precision="bf16",
                                         cache=False)
    assert choice.precision == "bf16" and choice.probe_cosine == 0.98


def test_compiled_model_and_probe_are_cached_by_weights_id(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATBANK_CACHE", str(tmp_path))
    model, sampling, clip_shape, clips = _case("x3d-xs")
    model.set_weights_id("f" * 64)
    kw = dict(runtime="openvino", precision="fp32", backbone="x3d-xs", weights_id=model.spec.weights_id)
    _, first, shape = engines.select_engine(model, sampling, clip_shape, CPU, **kw)
    assert not first.cached and shape == {}
    engines.remember_shape("x3d-xs", model.spec.weights_id, sampling, clip_shape, "openvino", 1, (192,))
    (entry,) = (tmp_path / "compiled").iterdir()
    assert entry.name.startswith("x3d-xs-ffffffffffff-openvino-") and (entry / "model.xml").is_file()
    engine, again, shape = engines.select_engine(model, sampling, clip_shape, CPU, **kw)
    assert again.cached and shape == {"rows_per_window": 1, "feat_shape": [192]}
    torch.testing.assert_close(torch.from_numpy(engine(clips)), run_model(model, clips, sampling), rtol=1e-4, atol=1e-6)
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["shape"]["feat_shape"] == [192]
    # another input shape or weights id is another entry; random weights (one shared id) are never cached
    assert engines.cache_key("x3d-xs", "f" * 64, sampling, (3, 4, 40, 40), "openvino") != entry.name
    assert engines.cache_key("x3d-xs", "e" * 64, sampling, clip_shape, "openvino") != entry.name
    assert engines._cache_for("x3d-xs", "random", sampling, clip_shape, "openvino", True).root is None


def test_literal_choices_match_the_job_config():
    from featbank.extract.job import PRECISIONS, RUNTIMES

    assert RUNTIMES == engines.RUNTIMES and PRECISIONS == engines.PRECISIONS
