"""I3D Inception-v1 (Carreira & Zisserman 2017), a faithful port of DeepMind's kinetics-i3d.

TensorFlow "SAME" padding is reproduced exactly: per spatial/temporal dim
``total = max((ceil(n / s) - 1) * s + k - n, 0)``, ``left = total // 2``, ``right = total - left``.
Layers whose padding does not depend on the input size (stride 1, odd kernel) use the
convolution's own symmetric padding; the others compute their pads once per input size
and cache them ("static padding"). Max-pools pad with -inf (TF ignores padded cells).
BatchNorm uses eps 1e-3; the DeepMind weights have no scale (gamma = 1).

Parameter names follow the public pytorch-i3d layout (``Conv3d_1a_7x7.conv3d.weight``,
``Mixed_3b.b1b.bn.running_mean``, ``logits.conv3d.bias``), so its checkpoints load as is.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from featbank.extract.backbones.common import VideoBackbone
from featbank.extract.variants import variant_spec

I3D_ENDPOINTS: tuple[str, ...] = (
    "Conv3d_1a_7x7",
    "MaxPool3d_2a_3x3",
    "Conv3d_2b_1x1",
    "Conv3d_2c_3x3",
    "MaxPool3d_3a_3x3",
    "Mixed_3b",
    "Mixed_3c",
    "MaxPool3d_4a_3x3",
    "Mixed_4b",
    "Mixed_4c",
    "Mixed_4d",
    "Mixed_4e",
    "Mixed_4f",
    "MaxPool3d_5a_2x2",
    "Mixed_5b",
    "Mixed_5c",
)
LOGITS_ENDPOINT = "Logits"

# Inception branch widths: (b0, b1a, b1b, b2a, b2b, b3b).
_MIXED: dict[str, tuple[int, ...]] = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
# (kernel, stride) of the SAME max-pools.
_POOLS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "MaxPool3d_2a_3x3": ((1, 3, 3), (1, 2, 2)),
    "MaxPool3d_3a_3x3": ((1, 3, 3), (1, 2, 2)),
    "MaxPool3d_4a_3x3": ((3, 3, 3), (2, 2, 2)),
    "MaxPool3d_5a_2x2": ((2, 2, 2), (2, 2, 2)),
}


def tf_same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding ``(left, right)`` of one dimension of length ``size``."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _SamePad(nn.Module):
    """Shared logic: static symmetric padding when possible, else per-input-size cached pads."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)
        # Stride 1 and odd kernel: SAME is symmetric and independent of the input size.
        self.static = all(s == 1 for s in self.stride) and all(k % 2 == 1 for k in self.kernel)
        self.static_padding = tuple((k - 1) // 2 for k in self.kernel) if self.static else (0, 0, 0)
        self._pads: dict[tuple[int, int, int], tuple[int, ...]] = {}

    def pads_for(self, t: int, h: int, w: int) -> tuple[int, ...]:
        """F.pad argument (w_l, w_r, h_l, h_r, t_l, t_r) for an input of size (t, h, w), cached."""
        key = (t, h, w)
        pads = self._pads.get(key)
        if pads is None:
            (tl, tr), (hl, hr), (wl, wr) = (
                tf_same_pads(n, k, s) for n, k, s in zip(key, self.kernel, self.stride)
            )
            pads = self._pads[key] = (wl, wr, hl, hr, tl, tr)
        return pads


class Unit3D(_SamePad):
    """Conv3d (TF SAME) -> BatchNorm (eps 1e-3) -> ReLU; names ``conv3d`` and ``bn`` as in pytorch-i3d."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        *,
        use_bn: bool = True,
        use_bias: bool = False,
        relu: bool = True,
    ) -> None:
        super().__init__(kernel, stride)
        self.conv3d = nn.Conv3d(
            in_channels, out_channels, self.kernel, self.stride, padding=self.static_padding, bias=use_bias
        )
        self.bn = nn.BatchNorm3d(out_channels, eps=1e-3, momentum=0.01) if use_bn else None
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.static:
            x = F.pad(x, self.pads_for(*x.shape[2:]))
        x = self.conv3d(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPool3dSame(_SamePad):
    """Max-pool with TF SAME padding; padded cells never win (-inf)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.static:
            return F.max_pool3d(x, self.kernel, self.stride, padding=self.static_padding)
        x = F.pad(x, self.pads_for(*x.shape[2:]), value=float("-inf"))
        return F.max_pool3d(x, self.kernel, self.stride)


class InceptionModule(nn.Module):
    """Four branches (1x1; 1x1->3x3; 1x1->3x3; pool->1x1) concatenated on channels."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3b = widths
        self.b0 = Unit3D(in_channels, w0)
        self.b1a = Unit3D(in_channels, w1a)
        self.b1b = Unit3D(w1a, w1b, (3, 3, 3))
        self.b2a = Unit3D(in_channels, w2a)
        self.b2b = Unit3D(w2a, w2b, (3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, w3b)
        self.out_channels = w0 + w1b + w2b + w3b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x)))
        return torch.cat(branches, dim=1)  # 4 x (B, C_i, T, H, W) -> (B, sum C_i, T, H, W)


class InceptionI3d(VideoBackbone):
    """I3D Inception-v1 with the feature contract of :class:`VideoBackbone`.

    Endpoints are the DeepMind names up to ``Mixed_5c`` (default, 1024 channels, stride
    (8, 32, 32)); ``"Logits"`` is also accepted by ``forward_features`` and returns the
    time-resolved logits map ``(B, K, T'', 1, 1)`` before temporal averaging.
    """

    endpoints = I3D_ENDPOINTS
    extra_endpoints = (LOGITS_ENDPOINT,)
    cpu_channels_last = True  # 1.2x faster than NCDHW on CPU (fp32, BatchNorm folded)

    def __init__(self, *, name: str = "i3d-rgb", in_channels: int = 3, num_classes: int = 400) -> None:
        super().__init__()
        self.spec = variant_spec(name).replace(in_channels=in_channels)
        self.num_classes = num_classes
        channels: dict[str, int] = {}
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, (7, 7, 7), (2, 2, 2))
        c = channels["Conv3d_1a_7x7"] = 64
        for name_ in I3D_ENDPOINTS[1:]:
            if name_ in _POOLS:
                setattr(self, name_, MaxPool3dSame(*_POOLS[name_]))
            elif name_ == "Conv3d_2b_1x1":
                self.Conv3d_2b_1x1 = Unit3D(c, 64)
                c = 64
            elif name_ == "Conv3d_2c_3x3":
                self.Conv3d_2c_3x3 = Unit3D(c, 192, (3, 3, 3))
                c = 192
            else:
                module = InceptionModule(c, _MIXED[name_])
                setattr(self, name_, module)
                c = module.out_channels
            channels[name_] = c
        self.logits = Unit3D(c, num_classes, use_bn=False, use_bias=True, relu=False)
        channels[LOGITS_ENDPOINT] = num_classes
        self.endpoint_channels = channels
        self.endpoint_dims = dict(channels)
        self.num_features = channels["Mixed_5c"]

    def _features(self, x: torch.Tensor, endpoint: str) -> torch.Tensor:
        for name in I3D_ENDPOINTS:
            x = getattr(self, name)(x)  # each stage: (B, C, T, H, W) -> (B, C', T', H', W')
            if name == endpoint:
                return x
        return self._logits_map(x)

    def _logits_map(self, feats: torch.Tensor) -> torch.Tensor:
        # DeepMind: AvgPool (2, 7, 7) VALID stride 1, then a 1x1x1 conv. The window is clamped
        # to the map for inputs smaller than 224x224 or shorter than 16 frames.
        t, h, w = feats.shape[2:]
        x = F.avg_pool3d(feats, (min(2, t), min(7, h), min(7, w)), stride=1)
        return self.logits(x)  # (B, 1024, T', H', W') -> (B, K, T'-1, H'-6, W'-6)

    def _head_logits(self, feats: torch.Tensor) -> torch.Tensor:
        return self._logits_map(feats).mean(dim=(3, 4)).transpose(1, 2)  # -> (B, T'', K)

    def fused_for_inference(self, *, channels_last: bool = True, inplace: bool = False) -> "InceptionI3d":
        """The network ready for inference: BatchNorm folded into the convolutions, eval mode,
        no grads, optionally channels_last_3d weights (a copy unless ``inplace``). ``spec`` (and
        its weights id) is unchanged: the folded network computes the same function."""
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        fused = self if inplace else copy.deepcopy(self)
        fused.eval()
        for unit in fused.modules():
            if isinstance(unit, Unit3D) and unit.bn is not None:
                unit.conv3d, unit.bn = fuse_conv_bn_eval(unit.conv3d, unit.bn), None
        for p in fused.parameters():
            p.requires_grad_(False)
        return fused.to(memory_format=torch.channels_last_3d) if channels_last else fused


def create_i3d(*, name: str = "i3d-rgb", in_channels: int = 3, num_classes: int = 400) -> InceptionI3d:
    """Build a randomly initialised I3D (see ``variants.VARIANTS`` for the facts of each name)."""
    return InceptionI3d(name=name, in_channels=in_channels, num_classes=num_classes)
