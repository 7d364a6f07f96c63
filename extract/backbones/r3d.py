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
from featbank.extract.variants import variant_spec

R3D_ENDPOINTS: tuple[str, ...] = ("stem", "layer1", "layer2", "layer3", "layer4")
R3D_CHANNELS: dict[str, int] = {"stem": 64, "layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}
# Cumulative (time, space) stride of each endpoint.
R3D_STRIDES: dict[str, tuple[int, int]] = {
    "stem": (1, 2), "layer1": (1, 2), "layer2": (2, 4), "layer3": (4, 8), "layer4": (8, 16),
}
# The three levels the multi-level heads read (low, mid, high).
R3D_LEVELS: dict[str, str] = {"low": "layer2", "mid": "layer3", "high": "layer4"}


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def _torchvision_r3d(num_classes: int, width: float) -> nn.Module:
    """torchvision's ``r3d_18`` (width 1), or the same layout with every width scaled.

    Narrow variants (e.g. ``width=0.25``: 16/16/32/64/128 channels) exist for CPU-sized
    experiments; they are built from torchvision's own blocks with its initialisation, so
    parameter names are identical and only the shapes shrink.
    """
    from types import SimpleNamespace

    from torchvision.models.video import resnet as tvr

    if width == 1.0:
        return tvr.r3d_18(weights=None, num_classes=num_classes)
    if not 0 < width <= 4:
        raise ValueError(f"r3d width must be in (0, 4], got {width}")
    c = {k: _scaled(v, width) for k, v in R3D_CHANNELS.items()}
    net = nn.Module()
    net.stem = nn.Sequential(
        nn.Conv3d(3, c["stem"], kernel_size=(3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
        nn.BatchNorm3d(c["stem"]), nn.ReLU(inplace=True),
    )
    holder = SimpleNamespace(inplanes=c["stem"])
    for i, (layer, stride) in enumerate((("layer1", 1), ("layer2", 2), ("layer3", 2), ("layer4", 2))):
        setattr(net, layer, tvr.VideoResNet._make_layer(holder, tvr.BasicBlock, tvr.Conv3DSimple, c[layer], 2, stride))
    net.fc = nn.Linear(c["layer4"], num_classes)
    for m in net.modules():  # torchvision's initialisation
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.constant_(m.bias, 0)
    return net


class R3D(VideoBackbone):
    """torchvision ``r3d_18`` with the feature contract (default endpoint ``layer4``, 512-d)."""

    endpoints = R3D_ENDPOINTS

    def __init__(self, *, name: str = "r3d-18", num_classes: int = 400, width: float = 1.0) -> None:
        super().__init__()
        net = _torchvision_r3d(num_classes, width)
        # torchvision's attribute names, so its state_dict keys match exactly.
        self.stem = net.stem
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.fc = net.fc
        self.width = float(width)
        self.endpoint_channels = {k: _scaled(c, width) for k, c in R3D_CHANNELS.items()}
        self.endpoint_dims = dict(self.endpoint_channels)
        self.num_features = self.endpoint_channels["layer4"]
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


def create_r3d(*, name: str = "r3d-18", num_classes: int = 400, width: float = 1.0) -> R3D:
    """Build a randomly initialised R3D-18 (torchvision's initialisation); ``width`` scales every
    layer's channels (1.0 = torchvision's model)."""
    return R3D(name=name, num_classes=num_classes, width=width)


def r3d_18(*, weights: str | os.PathLike | None = None, num_classes: int | None = None, width: float = 1.0) -> R3D:
    """R3D-18; random init unless ``weights`` is a torchvision (or featbank) state_dict file.

    ``weights="default"`` is random init too: no Kinetics file ships with featbank (torchvision's
    ``r3d_18-b3b3357e.pth`` loads when a user has it). A file's width is read from its stem
    (64 channels = torchvision's model), so narrow pretrained checkpoints load by path alone.
    """
    from featbank.extract import weights as W

    if weights is None or weights == "default":
        return create_r3d(num_classes=num_classes or 400, width=width).eval()  # spec.weights_id == "random"
    source = os.fspath(weights)
    sd = W.read_state_dict(source)
    fc = sd.get("fc.weight")
    if num_classes is None and fc is not None:
        num_classes = int(fc.shape[0])
    stem = sd.get("stem.0.weight")
    if stem is not None:
        width = stem.shape[0] / R3D_CHANNELS["stem"]
    model = create_r3d(num_classes=num_classes or 400, width=width)
    model.set_weights_id(W.load_checked(model, sd, source=source))
    return model.eval()
