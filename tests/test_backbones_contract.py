"""Contract sweep over every registered backbone plus I3D padding oracles."""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import pytest
import torch

from featbank.extract.backbones import BACKBONES, VARIANTS, create_backbone
from featbank.extract.backbones.i3d import I3D_ENDPOINTS, tf_same_pads
from featbank.extract.backbones.r3d import R3D_STRIDES
from featbank.extract.errors import BackboneError
from featbank.store.schema import BackboneSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from naive_i3d import NaiveI3D, naive_from  # noqa: E402

# Tiny inputs: (T, H, W) per family (H, W >= 32 keeps a 1x1 map at stride 32).
TINY = {"i3d": (8, 32, 32), "x3d": (3, 32, 32), "resnet": (2, 32, 32), "r3d": (8, 32, 32)}
# Cumulative (temporal, spatial) stride of each I3D endpoint.
I3D_STRIDES = {
    "Conv3d_1a_7x7": (2, 2), "MaxPool3d_2a_3x3": (2, 4), "Conv3d_2b_1x1": (2, 4), "Conv3d_2c_3x3": (2, 4),
    "MaxPool3d_3a_3x3": (2, 8), "Mixed_3b": (2, 8), "Mixed_3c": (2, 8), "MaxPool3d_4a_3x3": (4, 16),
    "Mixed_4b": (4, 16), "Mixed_4c": (4, 16), "Mixed_4d": (4, 16), "Mixed_4e": (4, 16), "Mixed_4f": (4, 16),
    "MaxPool3d_5a_2x2": (8, 32), "Mixed_5b": (8, 32), "Mixed_5c": (8, 32),
}
X3D_SPATIAL = {"stem": 2, "res2": 4, "res3": 8, "res4": 16, "res5": 32, "conv5": 32}
RESNET_SPATIAL = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _expected_map_shape(family: str, endpoint: str, t: int, h: int, w: int) -> tuple[int, int, int]:
    if family == "i3d":
        st, ss = I3D_STRIDES[endpoint]
        return math.ceil(t / st), math.ceil(h / ss), math.ceil(w / ss)
    if family == "r3d":  # R3D-18 strides time too (layer2..4)
        st, ss = R3D_STRIDES[endpoint]
        return math.ceil(t / st), math.ceil(h / ss), math.ceil(w / ss)
    ss = (X3D_SPATIAL if family == "x3d" else RESNET_SPATIAL)[endpoint]
    return t, math.ceil(h / ss), math.ceil(w / ss)


@pytest.fixture(scope="module", params=sorted(BACKBONES))
def built(request):
    name = request.param
    torch.manual_seed(0)
    return name, create_backbone(name, weights=None)


def _input(name: str, model, batch: int = 1) -> torch.Tensor:
    t, h, w = TINY[VARIANTS[name].family]
    return torch.randn(batch, model.spec.in_channels, t, h, w, generator=torch.Generator().manual_seed(1))


def test_spec_fields_match_variant_table(built):
    name, model = built
    facts, spec = VARIANTS[name], model.spec
    assert isinstance(spec, BackboneSpec)
    assert spec.name == name and spec.weights_id == "random"
    assert (spec.clip_len, spec.frame_stride, spec.target_fps) == (facts.clip_len, facts.frame_stride, facts.target_fps)
    assert (spec.resize, spec.crop, spec.in_channels) == (facts.resize, facts.crop, facts.in_channels)
    assert len(spec.mean) == len(spec.std) == spec.in_channels
    assert spec.feature_dim == model.num_features == facts.feature_dim
    assert model.endpoint_dims[model.endpoints[-1]] == model.num_features
    assert BackboneSpec.from_dict(spec.to_dict()) == spec
    assert not model.training


def test_every_endpoint_shape_dtype_finite(built):
    name, model = built
    family = VARIANTS[name].family
    x = _input(name, model, batch=2)
    with torch.no_grad():
        for endpoint in model.endpoints:
            feats = model.forward_features(x, endpoint=endpoint)
            t, h, w = _expected_map_shape(family, endpoint, *x.shape[2:])
            assert feats.shape == (2, model.endpoint_channels[endpoint], t, h, w), endpoint
            assert feats.dtype == torch.float32 and torch.isfinite(feats).all(), endpoint
            pooled = model.forward_head(feats, endpoint=endpoint)
            assert pooled.shape == (2, model.endpoint_dims[endpoint]), endpoint
            timed = model.forward_head(feats, keep_time=True, endpoint=endpoint)
            assert timed.shape == (2, t, model.endpoint_dims[endpoint]), endpoint
            assert torch.isfinite(pooled).all() and torch.isfinite(timed).all()
            if family in ("x3d", "resnet"):
                assert t == x.shape[2]  # X3D and ResNet: one feature per input frame
        default = model.forward_features(x)
        assert default.shape[1] == model.endpoint_channels[model.endpoints[-1]]
        logits = model.forward_head(default, pre_logits=False)
        assert logits.shape == (2, model.num_classes) and torch.isfinite(logits).all()
        assert torch.allclose(model(x), logits, atol=1e-5)
        # Batch independence (eval mode): sample 0 alone gives the same features.
        alone = model.forward_head(model.forward_features(x[:1]))
        assert torch.allclose(alone, model.forward_head(default)[:1], atol=1e-4, rtol=1e-4)


def test_gradient_reaches_every_parameter(built):
    name, model = built
    x = _input(name, model)
    model.zero_grad(set_to_none=True)
    model(x).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"{name}: no gradient for {missing[:5]}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"{name}: non-finite gradient for {bad[:5]}"
    assert sum(float(p.grad.abs().sum()) for p in model.parameters()) > 0
    model.zero_grad(set_to_none=True)


def test_unknown_endpoint_and_logits_from_wrong_map(built):
    name, model = built
    x = _input(name, model)
    with pytest.raises(BackboneError, match=model.endpoints[-1]):
        model.forward_features(x, endpoint="nope")
    with torch.no_grad():
        first = model.forward_features(x, endpoint=model.endpoints[0])
    with pytest.raises(BackboneError, match="logits need"):
        model.forward_head(first, pre_logits=False)
    with pytest.raises(BackboneError, match="input channels"):
        model.forward_features(torch.zeros(1, model.spec.in_channels + 1, *x.shape[2:]))


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(BackboneError) as err:
        create_backbone("i3d-rgb-kinetics")
    for name in BACKBONES:
        assert name in str(err.value)


def test_registry_is_complete():
    assert {"i3d-rgb-k400", "i3d-rgb", "i3d-flow", "x3d-xs", "x3d-s", "x3d-m", "x3d-l", "resnet18", "resnet50"} <= set(BACKBONES)
    assert set(BACKBONES) == set(VARIANTS)


@pytest.mark.parametrize("size,kernel,stride", [(224, 7, 2), (225, 7, 2), (112, 3, 2), (57, 3, 2), (8, 2, 2), (9, 2, 2), (5, 3, 1), (1, 7, 2)])
def test_tf_same_pads_formula(size, kernel, stride):
    left, right = tf_same_pads(size, kernel, stride)
    out = (size + left + right - kernel) // stride + 1
    assert out == math.ceil(size / stride)  # SAME: output = ceil(n / s)
    assert 0 <= right - left <= 1  # TF puts the odd pixel on the right
    assert (224, 7, 2) != (size, kernel, stride) or (left, right) == (2, 3)


@pytest.mark.parametrize("shape", [(8, 32, 32), (9, 37, 35)])
def test_i3d_equals_naive_port_at_any_size(shape):
    """Static/cached padding == padding recomputed per call (odd and even sizes, every endpoint)."""
    torch.manual_seed(0)
    model = create_backbone("i3d-rgb", weights=None)
    for m in model.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    naive = naive_from(model)
    x = torch.randn(1, 3, *shape)
    with torch.no_grad():
        ours = model.forward_features(x)
        ref = naive.extract_features(x)
        assert ours.shape == ref.shape
        assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-4)
        fused = model.fused_for_inference()
        assert torch.allclose(fused.forward_features(x.contiguous(memory_format=torch.channels_last_3d)), ref,
                              atol=1e-4, rtol=1e-3)


def test_i3d_logits_endpoint_is_time_resolved():
    torch.manual_seed(0)
    model = create_backbone("i3d-rgb", weights=None)
    x = torch.randn(1, 3, 20, 48, 48)
    with torch.no_grad():
        per_step = model.forward_features(x, endpoint="Logits")  # (1, K, T'', h, w)
        assert per_step.shape[:3] == (1, 400, 2)  # T' = ceil(20 / 8) = 3 -> AvgPool(2) VALID -> 2
        assert torch.allclose(per_step.mean(dim=(2, 3, 4)), model(x), atol=1e-5)
        assert torch.allclose(model.forward_head(per_step), model(x), atol=1e-5)


def test_naive_port_has_pytorch_i3d_key_layout():
    keys = set(NaiveI3D().state_dict())
    assert {"Conv3d_1a_7x7.conv3d.weight", "Conv3d_1a_7x7.bn.weight", "Mixed_3b.b0.conv3d.weight",
            "Mixed_3b.b1b.bn.running_var", "Mixed_5c.b3b.conv3d.weight", "logits.conv3d.weight",
            "logits.conv3d.bias"} <= keys
    assert keys == set(create_backbone("i3d-rgb", weights=None).state_dict())


def test_fused_for_inference_is_part_of_the_contract(built):
    """Every backbone declares fused_for_inference: same function, same spec, no grads, and a copy
    unless inplace (the job converts the model it owns in place)."""
    name, model = built
    x = _input(name, model, batch=2)
    with torch.no_grad():
        want = model.forward_head(model.forward_features(x))
        fused = model.fused_for_inference(channels_last=True)
        assert fused is not model and fused.spec == model.spec and not fused.training
        assert not any(p.requires_grad for p in fused.parameters())
        assert any(p.requires_grad for p in model.parameters())  # the original is untouched
        got = fused.forward_head(fused.forward_features(x))
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-3)
        same = copy.deepcopy(model)
        assert same.fused_for_inference(inplace=True) is same
    assert isinstance(type(model).cpu_channels_last, bool)
