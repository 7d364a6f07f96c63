"""R3D-18 (torchvision's ``r3d_18`` architecture) under the backbone contract.

Tran et al. 2018, "A Closer Look at Spatiotemporal Convolutions": a ResNet-18 with full
3x3x3 convolutions. It is the backbone of most self-supervised video papers (the multi-level
optimisation recipe in ``experiments/recipes/ssl.py`` pretrains it). The modules are
torchvision's (``torchvision.models.video.r3d_18(weights=None)``, no download) under the same
attribute names, so torchvision's Kinetics-400 state_dict file (``r3d_18-b3b3357e.pth``)
loads as is.

Endpoints and their strides on a ``(B, 3, T, H, W)`` clip (ceil division, padding 1):

=========  ========  ======  ==========
endpoint   channels  time    space
=========  ========  ======  ==========
stem       64        1       2
layer1     64        1       2
layer2     128       2       4
layer3     256       4       8
layer4     512       8       16
=========  ========  ======  ==========

``layer2`` / ``layer3`` / ``layer4`` are the low / mid / high levels of the multi-level
self-supervised heads (``heads/ssl.py``): at 16 input frames they keep 8 / 4 / 2 time steps.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from featbank.extract.backbones.common import VideoBackbone
from featbank.extract.backbones.variants import variant_spec

R3D_ENDPOINTS: tuple[str, ...] = ("stem", "layer1", "layer2", "layer3", "layer4")
R3D_CHANNELS: dict[str, int] = {"stem": 64, "layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}
# Cumulative (time, space) stride of each endpoint.
R3D_STRIDES: dict[str, tuple[int, int]] = {
    "stem": (1, 2), "layer1": (1, 2), "layer2": (2, 4), "layer3": (4, 8), "layer4": (8, 16),
}
# The three levels the multi-level heads read (low, mid, high).
R3D_LEVELS: dict[str, str] = {"low": "layer2", "mid": "layer3", "high": "layer4"}


class R3D(VideoBackbone):
    """torchvision ``r3d_18`` with the feature contract (default endpoint ``layer4``, 512-d)."""

    endpoints = R3D_ENDPOINTS

    def __init__(self, *, name: str = "r3d-18", num_classes: int = 400) -> None:
        super().__init__()
        from torchvision.models.video import r3d_18

        net = r3d_18(weights=None, num_classes=num_classes)
        # torchvision's attribute names, so its state_dict keys match exactly.
        self.stem = net.stem
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.fc = net.fc
        self.endpoint_channels = dict(R3D_CHANNELS)
        self.endpoint_dims = dict(R3D_CHANNELS)
        self.num_features = R3D_CHANNELS["layer4"]
        self.num_classes = num_classes
        self.spec = variant_spec(name, feature_dim=self.num_features)

    def _features(self, x: torch.Tensor, endpoint: str) -> torch.Tensor:
        y = x
        for name in R3D_ENDPOINTS:
            y = getattr(self, name)(y)  # (B, C, T, H, W) -> (B, C', T', H', W')
            if name == endpoint:
                break
        return y

    def forward_levels(self, x: torch.Tensor, levels: tuple[str, ...] = ("layer2", "layer3", "layer4")) -> dict[str, torch.Tensor]:
        """Several endpoint maps from one pass: ``{endpoint: (B, C', T', H', W')}``.

        Args:
            x: normalised clip batch ``(B, 3, T, H, W)``.
            levels: endpoints to return (any of ``endpoints``).
        """
        for lv in levels:
            self.check_endpoint(lv)
        if x.ndim != 5 or x.shape[1] != self.spec.in_channels:
            self.forward_features(x[:0] if x.ndim == 5 else x, endpoint="stem")  # raises the contract's error
        out: dict[str, torch.Tensor] = {}
        y = x
        last = max(R3D_ENDPOINTS.index(lv) for lv in levels)
        for name in R3D_ENDPOINTS[: last + 1]:
            y = getattr(self, name)(y)
            if name in levels:
                out[name] = y
        return out

    def _head_logits(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc(feats.mean(dim=(3, 4)).transpose(1, 2))  # (B, C, T, H, W) -> (B, T, K)


def create_r3d(*, name: str = "r3d-18", num_classes: int = 400) -> R3D:
    """Build a randomly initialised R3D-18 (torchvision's initialisation)."""
    return R3D(name=name, num_classes=num_classes)


def r3d_18(*, weights: str | os.PathLike | None = None, num_classes: int | None = None) -> R3D:
    """R3D-18; random init unless ``weights`` is a torchvision (or featbank) state_dict file.

    ``weights="default"`` is random init too: no Kinetics file ships with featbank (torchvision's
    ``r3d_18-b3b3357e.pth`` loads when a user has it).
    """
    from featbank.extract import weights as W

    if weights is None or weights == "default":
        return create_r3d(num_classes=num_classes or 400).eval()  # spec.weights_id == "random"
    source = os.fspath(weights)
    sd = W.read_state_dict(source)
    fc = sd.get("fc.weight")
    if num_classes is None and fc is not None:
        num_classes = int(fc.shape[0])
    model = create_r3d(num_classes=num_classes or 400)
    model.set_weights_id(W.load_checked(model, sd, source=source))
    return model.eval()
