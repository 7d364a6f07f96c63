"""torchvision ResNet-18/50 as per-frame video backbones.

The 5-D input ``(B, C, T, H, W)`` is folded to ``(B*T, C, H, W)``, run through the
torchvision architecture (``torchvision.models.resnet18/50(weights=None)``, no download)
and unfolded, so every frame is embedded independently and ``T' = T``.
Endpoints: ``layer1`` .. ``layer4`` (default); ``layer3`` is the usual mid-level map.
Parameter names are torchvision's, so a torchvision state_dict loads as is.
"""

from __future__ import annotations

import torch
from torch import nn

from featbank.extract.backbones.common import VideoBackbone
from featbank.extract.variants import variant_spec

RESNET_ENDPOINTS: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4")


class FrameResNet(VideoBackbone):
    """A torchvision ResNet applied frame by frame."""

    endpoints = RESNET_ENDPOINTS

    def __init__(self, *, name: str = "resnet50", num_classes: int = 1000) -> None:
        super().__init__()
        import torchvision

        arch = {"resnet18": torchvision.models.resnet18, "resnet50": torchvision.models.resnet50}[name]
        net = arch(weights=None, num_classes=num_classes)
        # Same attribute names as torchvision, so state_dict keys match it exactly.
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.fc = net.fc
        expansion = 4 if name == "resnet50" else 1
        self.endpoint_channels = {f"layer{i + 1}": 64 * 2**i * expansion for i in range(4)}
        self.endpoint_dims = dict(self.endpoint_channels)
        self.num_features = self.endpoint_channels["layer4"]
        self.num_classes = num_classes
        self.spec = variant_spec(name, feature_dim=self.num_features)

    def _features(self, x: torch.Tensor, endpoint: str) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = x.transpose(1, 2).reshape(b * t, c, h, w)  # (B, C, T, H, W) -> (B*T, C, H, W)
        y = self.maxpool(self.relu(self.bn1(self.conv1(y))))
        for name in RESNET_ENDPOINTS:
            y = getattr(self, name)(y)
            if name == endpoint:
                break
        _, c2, h2, w2 = y.shape
        return y.reshape(b, t, c2, h2, w2).transpose(1, 2)  # (B*T, C', H', W') -> (B, C', T, H', W')

    def _head_logits(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc(feats.mean(dim=(3, 4)).transpose(1, 2))  # (B, C, T, H, W) -> (B, T, K)


def create_resnet(*, name: str = "resnet50", num_classes: int = 1000) -> FrameResNet:
    """Build a randomly initialised per-frame ResNet (``resnet18`` or ``resnet50``)."""
    return FrameResNet(name=name, num_classes=num_classes)
