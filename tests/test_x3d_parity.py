"""X3D == pytorchvideo ``create_x3d`` under identical random weights; checkpoint key mapping."""

from __future__ import annotations

import re

import pytest
import torch

from featbank.extract import weights as W
from featbank.extract.backbones import VARIANTS, create_backbone
from featbank.extract.variants import X3D_ARCH
from featbank.extract.errors import WeightsError

pv_x3d = pytest.importorskip("pytorchvideo.models.x3d", reason="pytorchvideo not installed")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _randomise_bn(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)


def _reference(name: str, t: int, crop: int) -> torch.nn.Module:
    torch.manual_seed(0)
    ref = pv_x3d.create_x3d(
        input_clip_length=t, input_crop_size=crop, depth_factor=X3D_ARCH[name]["depth_factor"],
        head_activation=None, dropout_rate=0.0,
    ).eval()
    _randomise_bn(ref, 1)
    return ref


@pytest.mark.parametrize("name", ["x3d-xs", "x3d-s", "x3d-m", "x3d-l"])
def test_identical_outputs_to_pytorchvideo(name, tmp_path):
    t, crop = 4, 64
    ref = _reference(name, t, crop)
    path = tmp_path / f"{name}_pytorchvideo.pyth"
    torch.save({"model_state": ref.state_dict()}, path)  # hub-style file
    ours = create_backbone(name, weights=path)
    assert ours.spec.weights_id == W.weights_id(ours.state_dict()) != "random"
    x = torch.randn(2, 3, t, crop, crop, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = ref(x)  # (2, 400) pre-softmax logits
        got = ours(x)
        assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4), (got - expected).abs().max()
        # Trunk parity: pytorchvideo blocks 0..4 == our res5 endpoint.
        y = x
        for block in ref.blocks[:5]:
            y = block(y)
        assert torch.allclose(ours.forward_features(x, endpoint="res5"), y, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["x3d-xs", "x3d-s", "x3d-m", "x3d-l"])
def test_parameter_count_matches_published(name):
    model = create_backbone(name, weights=None)
    n = sum(p.numel() for p in model.parameters()) / 1e6
    assert n == pytest.approx(VARIANTS[name].params_m, rel=0.01)  # 3.79 M (XS/S/M), 6.15 M (L)


def _to_slowfast(pv_state: dict) -> dict:
    """pytorchvideo names -> SlowFast X3D names (written out independently of featbank's mapping)."""
    out = {}
    for k, v in pv_state.items():
        k2 = k
        k2 = re.sub(r"^blocks\.0\.conv\.conv_t\.", "s1.pathway0_stem.conv_xy.", k2)
        k2 = re.sub(r"^blocks\.0\.conv\.conv_xy\.", "s1.pathway0_stem.conv.", k2)
        k2 = re.sub(r"^blocks\.0\.norm\.", "s1.pathway0_stem.bn.", k2)
        m = re.match(r"^blocks\.([1-4])\.res_blocks\.(\d+)\.(.*)$", k2)
        if m:
            stage, blk, rest = int(m.group(1)) + 1, m.group(2), m.group(3)
            rest = (rest.replace("branch1_conv.", "branch1.").replace("branch1_norm.", "branch1_bn.")
                    .replace("branch2.conv_a.", "branch2.a.").replace("branch2.norm_a.", "branch2.a_bn.")
                    .replace("branch2.conv_b.", "branch2.b.").replace("branch2.norm_b.0.", "branch2.b_bn.")
                    .replace("branch2.norm_b.1.block.0.", "branch2.se.fc1.")
                    .replace("branch2.norm_b.1.block.2.", "branch2.se.fc2.")
                    .replace("branch2.conv_c.", "branch2.c.").replace("branch2.norm_c.", "branch2.c_bn."))
            k2 = f"s{stage}.pathway0_res{blk}.{rest}"
        k2 = (k2.replace("blocks.5.pool.pre_conv.", "head.conv_5.").replace("blocks.5.pool.pre_norm.", "head.conv_5_bn.")
              .replace("blocks.5.pool.post_conv.", "head.lin_5.").replace("blocks.5.proj.", "head.projection."))
        out[k2] = v
    return out


def test_slowfast_checkpoint_loads_with_res2_shortcut_norm(tmp_path):
    ref = _reference("x3d-xs", 4, 64)
    sf = _to_slowfast(ref.state_dict())
    # SlowFast normalises the res2 projection shortcut; an identity BN keeps outputs comparable.
    sf.update({
        "s2.pathway0_res0.branch1_bn.weight": torch.ones(24), "s2.pathway0_res0.branch1_bn.bias": torch.zeros(24),
        "s2.pathway0_res0.branch1_bn.running_mean": torch.zeros(24),
        "s2.pathway0_res0.branch1_bn.running_var": torch.full((24,), 1.0 - 1e-5),
    })
    path = tmp_path / "x3d_xs.pyth"
    torch.save({"model_state": sf, "epoch": 300}, path)
    ours = create_backbone("x3d-xs", weights=path)
    assert ours.res2[0].branch1_bn is not None
    x = torch.randn(1, 3, 4, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x), atol=1e-5, rtol=1e-4)


def test_unknown_and_missing_keys_are_named(tmp_path):
    ref = _reference("x3d-xs", 4, 64)
    sd = dict(ref.state_dict())
    sd["blocks.9.extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pyth"
    torch.save(sd, bad)
    with pytest.raises(WeightsError, match=r"blocks\.9\.extra\.weight"):
        create_backbone("x3d-xs", weights=bad)
    sd = dict(ref.state_dict())
    del sd["blocks.5.pool.post_conv.weight"]
    torch.save(sd, bad)
    with pytest.raises(WeightsError, match=r"missing keys \[lin5\.weight\]"):
        create_backbone("x3d-xs", weights=bad)
    torch.save(ref.state_dict(), bad)
    with pytest.raises(WeightsError, match="missing keys"):  # X3D-L has more blocks than XS
        create_backbone("x3d-l", weights=bad)
