"""X3D (Feichtenhofer 2020) without temporal stride: one feature per input frame.

Same computation as ``pytorchvideo.models.x3d.create_x3d`` (and SlowFast's X3D): a
(2+1)D stem, four stages of depthwise bottleneck blocks with squeeze-excitation on every
other block and Swish inside, spatial stride 2 per stage and temporal stride 1 everywhere.
Module names are our own; ``featbank.extract.weights`` maps pytorchvideo hub and SlowFast
``.pyth`` checkpoints onto them.

Endpoints (channels for width factor 2.0): ``stem`` (24), ``res2`` (24), ``res3`` (48),
``res4`` (96), ``res5`` (192), ``conv5`` (432, default). The pre-logits head of ``conv5``
is pytorchvideo's ProjectedPool: average pool, 1x1x1 conv to 2048, ReLU -> ``num_features``
2048. With ``keep_time=True`` the pool is spatial only and the 2048-d projection is
applied per time step ``(B, T, 2048)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from featbank.extract.backbones.common import VideoBackbone
from featbank.extract.variants import X3D_ARCH, variant_spec

X3D_ENDPOINTS: tuple[str, ...] = ("stem", "res2", "res3", "res4", "res5", "conv5")
_BASE_DEPTHS = (1, 2, 5, 3)
_BN_EPS = 1e-5


def round_width(width: float, multiplier: float, min_width: int = 8, divisor: int = 8) -> int:
    """Channel rounding of X3D (pytorchvideo / SlowFast ``round_width``)."""
    width *= multiplier
    out = max(min_width, int(width + divisor / 2) // divisor * divisor)
    if out < 0.9 * width:
        out += divisor
    return int(out)


class SqueezeExcite(nn.Module):
    """Global average pool -> 1x1x1 conv -> ReLU -> 1x1x1 conv -> sigmoid gate."""

    def __init__(self, channels: int, ratio: float) -> None:
        super().__init__()
        reduced = round_width(channels, ratio)
        self.fc1 = nn.Conv3d(channels, reduced, 1, bias=True)
        self.fc2 = nn.Conv3d(reduced, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3, 4), keepdim=True)  # (B, C, T, H, W) -> (B, C, 1, 1, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class X3DBlock(nn.Module):
    """Residual bottleneck: 1x1x1 -> depthwise 3x3x3 (spatial stride) -> SE -> Swish -> 1x1x1."""

    def __init__(
        self, dim_in: int, dim_inner: int, dim_out: int, stride: int, *, se_ratio: float, shortcut_norm: bool
    ) -> None:
        super().__init__()
        needs_proj = dim_in != dim_out or stride > 1
        self.branch1 = nn.Conv3d(dim_in, dim_out, 1, stride=(1, stride, stride), bias=False) if needs_proj else None
        self.branch1_bn = nn.BatchNorm3d(dim_out, eps=_BN_EPS) if needs_proj and shortcut_norm else None
        self.a = nn.Conv3d(dim_in, dim_inner, 1, bias=False)
        self.a_bn = nn.BatchNorm3d(dim_inner, eps=_BN_EPS)
        self.b = nn.Conv3d(
            dim_inner, dim_inner, 3, stride=(1, stride, stride), padding=1, groups=dim_inner, bias=False
        )
        self.b_bn = nn.BatchNorm3d(dim_inner, eps=_BN_EPS)
        self.se = SqueezeExcite(dim_inner, se_ratio) if se_ratio > 0 else None
        self.c = nn.Conv3d(dim_inner, dim_out, 1, bias=False)
        self.c_bn = nn.BatchNorm3d(dim_out, eps=_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        if self.branch1 is not None:
            shortcut = self.branch1(x)
            if self.branch1_bn is not None:
                shortcut = self.branch1_bn(shortcut)
        y = F.relu(self.a_bn(self.a(x)))
        y = self.b_bn(self.b(y))
        if self.se is not None:
            y = self.se(y)
        y = F.silu(y)  # Swish
        y = self.c_bn(self.c(y))
        return F.relu(shortcut + y)


class X3DStem(nn.Module):
    """Spatial 1x3x3 conv (stride 2) -> depthwise temporal 5x1x1 conv -> BN -> ReLU."""

    def __init__(self, in_channels: int, dim_out: int) -> None:
        super().__init__()
        self.conv_xy = nn.Conv3d(in_channels, dim_out, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False)
        self.conv_t = nn.Conv3d(dim_out, dim_out, (5, 1, 1), padding=(2, 0, 0), groups=dim_out, bias=False)
        self.bn = nn.BatchNorm3d(dim_out, eps=_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv_t(self.conv_xy(x))))  # (B, 3, T, H, W) -> (B, 24, T, H/2, W/2)


class X3D(VideoBackbone):
    """X3D trunk and ProjectedPool head with the :class:`VideoBackbone` contract.

    Args:
        name: registry name (facts in ``variants.VARIANTS``).
        depth_factor: stage depth multiplier (2.2 for XS/S/M, 5.0 for L).
        width_factor: channel multiplier of the stem/stages (2.0 for all published variants).
        bottleneck_factor: inner width multiplier of the blocks (2.25).
        se_ratio: squeeze-excitation reduction (0.0625).
        head_dim: width of the pre-logits projection (2048).
        num_classes: classifier outputs.
        in_channels: input channels.
        res2_shortcut_norm: give the first block of ``res2`` a BatchNorm on its projection
            shortcut. SlowFast has it; pytorchvideo's ``create_x3d`` omits it (its stage 1
            keeps 24 channels), so False reproduces pytorchvideo and True SlowFast.
    """

    endpoints = X3D_ENDPOINTS

    def __init__(
        self,
        *,
        name: str = "x3d-m",
        depth_factor: float = 2.2,
        width_factor: float = 2.0,
        bottleneck_factor: float = 2.25,
        se_ratio: float = 0.0625,
        head_dim: int = 2048,
        num_classes: int = 400,
        in_channels: int = 3,
        res2_shortcut_norm: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.res2_shortcut_norm = res2_shortcut_norm
        stem_dim = round_width(12, width_factor)
        self.stem = X3DStem(in_channels, stem_dim)
        channels = {"stem": stem_dim}
        dim_in, dim_out = stem_dim, stem_dim
        for i, base_depth in enumerate(_BASE_DEPTHS):
            dim_out = round_width(stem_dim, 2.0**i)
            dim_inner = int(bottleneck_factor * dim_out)
            depth = int(math.ceil(depth_factor * base_depth))
            blocks = []
            for j in range(depth):
                blocks.append(
                    X3DBlock(
                        dim_in if j == 0 else dim_out, dim_inner, dim_out, 2 if j == 0 else 1,
                        se_ratio=se_ratio if (j + 1) % 2 else 0.0,
                        shortcut_norm=(i > 0 or res2_shortcut_norm),
                    )
                )
            setattr(self, f"res{i + 2}", nn.Sequential(*blocks))
            channels[f"res{i + 2}"] = dim_out
            dim_in = dim_out
        head_inner = int(bottleneck_factor * dim_out)
        self.conv5 = nn.Conv3d(dim_out, head_inner, 1, bias=False)
        self.conv5_bn = nn.BatchNorm3d(head_inner, eps=_BN_EPS)
        self.lin5 = nn.Conv3d(head_inner, head_dim, 1, bias=False)
        self.proj = nn.Linear(head_dim, num_classes)
        channels["conv5"] = head_inner
        self.endpoint_channels = channels
        self.endpoint_dims = {**channels, "conv5": head_dim}
        self.num_features = head_dim
        self.spec = variant_spec(name, feature_dim=head_dim).replace(in_channels=in_channels)

    def _features(self, x: torch.Tensor, endpoint: str) -> torch.Tensor:
        x = self.stem(x)  # (B, C, T, H, W) -> (B, 24, T, H/2, W/2)
        if endpoint == "stem":
            return x
        for i in range(2, 6):
            x = getattr(self, f"res{i}")(x)  # spatial /2 per stage, T kept
            if endpoint == f"res{i}":
                return x
        return F.relu(self.conv5_bn(self.conv5(x)))  # (B, 192, T, h, w) -> (B, 432, T, h, w)

    def _head_pre_logits(self, feats: torch.Tensor) -> torch.Tensor:
        # Time kept: spatial average, then the 2048-d projection per step.
        x = feats.mean(dim=(3, 4), keepdim=True)  # (B, 432, T, H, W) -> (B, 432, T, 1, 1)
        return F.relu(self.lin5(x)).flatten(2).transpose(1, 2)  # -> (B, T, 2048)

    def forward_head(
        self, feats: torch.Tensor, pre_logits: bool = True, keep_time: bool = False, endpoint: str | None = None
    ) -> torch.Tensor:
        """See :meth:`VideoBackbone.forward_head`; without ``keep_time`` the conv5 head pools
        over (T, H, W) before the projection, exactly like pytorchvideo's ProjectedPool."""
        if not keep_time and self._resolve_head_endpoint(feats, endpoint) == self.default_endpoint:
            x = F.relu(self.lin5(feats.mean(dim=(2, 3, 4), keepdim=True))).flatten(1)  # -> (B, 2048)
            return x if pre_logits else self.proj(x)  # (B, 2048) -> (B, K)
        return super().forward_head(feats, pre_logits=pre_logits, keep_time=keep_time, endpoint=endpoint)

    def _head_logits(self, feats: torch.Tensor) -> torch.Tensor:
        return self.proj(self._head_pre_logits(feats))  # (B, T, 2048) -> (B, T, K)


def create_x3d(*, name: str = "x3d-m", num_classes: int = 400, in_channels: int = 3,
               res2_shortcut_norm: bool = False) -> X3D:
    """Build a randomly initialised X3D variant (``x3d-xs``, ``x3d-s``, ``x3d-m``, ``x3d-l``)."""
    return X3D(name=name, num_classes=num_classes, in_channels=in_channels,
               res2_shortcut_norm=res2_shortcut_norm, **X3D_ARCH[name])
