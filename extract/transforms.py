"""Pure tensor transforms from decoded uint8 frames to normalised model input.

Clips are ``(C, T, H, W)`` float tensors throughout. Resizing is bilinear without antialias by
default (the protocol the reference I3D outputs were computed with). Crop offsets follow
torchvision: ``round((H - size) / 2)`` for the centre; the 3 crops of ``three_crop`` lie along the
long side (left/top, centre, right/bottom), as in SlowFast/pytorchvideo test-time 3-crop.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from featbank.store.schema import BackboneSpec

VIEWS = ("center", "3crop", "flip", "3crop+flip")
VIEW_COUNT = {"center": 1, "3crop": 3, "flip": 2, "3crop+flip": 6}


def to_float_clip(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Decoded frames to a float clip.

    Args:
        frames: ``(T, H, W, C)`` uint8 (numpy or torch).

    Returns:
        ``(C, T, H, W)`` float32 in ``[0, 1]``.
    """
    x = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if x.ndim != 4 or x.dtype != torch.uint8:
        raise ValueError(f"expected (T, H, W, C) uint8 frames, got {tuple(x.shape)} {x.dtype}")
    return x.permute(3, 0, 1, 2).float().div_(255.0)  # (T, H, W, C) -> (C, T, H, W)


def resize_short_side(x: torch.Tensor, size: int, antialias: bool = False) -> torch.Tensor:
    """Resize so that the shorter spatial side is ``size`` (bilinear, aspect ratio kept).

    The long side becomes ``int(size * long / short)`` (torchvision's rule).

    Args:
        x: ``(C, T, H, W)`` float clip.
        size: Target length of the short side.
        antialias: Low-pass filter when downscaling (off by default: the reference I3D protocol).

    Returns:
        ``(C, T, H', W')`` with ``min(H', W') == size``.
    """
    c, t, h, w = x.shape
    if min(h, w) == size:
        return x
    if h <= w:
        new_h, new_w = size, int(size * w / h)
    else:
        new_h, new_w = int(size * h / w), size
    y = x.permute(1, 0, 2, 3)  # (C, T, H, W) -> (T, C, H, W): T as the batch
    y = F.interpolate(y, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=antialias)
    return y.permute(1, 0, 2, 3)  # (T, C, H', W') -> (C, T, H', W')


def _check_crop(x: torch.Tensor, size: int) -> None:
    h, w = x.shape[-2:]
    if size > h or size > w:
        raise ValueError(f"crop {size} is larger than the frame {w}x{h}; resize first")


def crop(x: torch.Tensor, top: int, left: int, size: int) -> torch.Tensor:
    """Square crop ``x[..., top:top+size, left:left+size]``."""
    return x[..., top : top + size, left : left + size]


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centre square crop: ``(..., H, W) -> (..., size, size)``; offsets ``(H - size) // 2``.

    Floor offsets, as in the Kinetics I3D reference protocol; torchvision rounds
    instead, which moves the window by one pixel when the margin is odd (e.g. a 455-pixel
    side) and shifts I3D logits by up to ~0.5.
    """
    _check_crop(x, size)
    h, w = x.shape[-2:]
    return crop(x, (h - size) // 2, (w - size) // 2, size)


def three_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Three square crops along the long side (start, centre, end).

    Args:
        x: ``(C, T, H, W)`` clip.
        size: Crop side.

    Returns:
        ``(3, C, T, size, size)``.
    """
    _check_crop(x, size)
    h, w = x.shape[-2:]
    cy, cx = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    if w >= h:
        boxes = [(cy, 0), (cy, cx), (cy, w - size)]
    else:
        boxes = [(0, cx), (cy, cx), (h - size, cx)]
    return torch.stack([crop(x, top, left, size) for top, left in boxes])  # 3 x (C, T, s, s) -> (3, C, T, s, s)


def hflip(x: torch.Tensor) -> torch.Tensor:
    """Horizontal flip (mirror the last axis)."""
    return x.flip(-1)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Per-channel ``(x - mean) / std`` for a ``(C, T, H, W)`` or ``(V, C, T, H, W)`` clip."""
    c_axis = x.ndim - 4
    c = x.shape[c_axis]
    if len(mean) != c or len(std) != c:
        raise ValueError(f"mean/std have {len(mean)}/{len(std)} values for {c} channels")
    shape = [1] * x.ndim
    shape[c_axis] = c
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(shape)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(shape)
    return (x - m) / s


def make_views(x: torch.Tensor, size: int, views: str = "center") -> torch.Tensor:
    """Spatial test-time views of a resized clip.

    Args:
        x: ``(C, T, H, W)`` resized clip.
        size: Crop side.
        views: ``"center"`` (V=1), ``"3crop"`` (V=3: start, centre, end of the long side),
            ``"flip"`` (V=2: centre, flipped centre), ``"3crop+flip"`` (V=6: the 3 crops, then their flips).

    Returns:
        ``(V, C, T, size, size)``.
    """
    if views == "center":
        return center_crop(x, size)[None]  # (C, T, s, s) -> (1, C, T, s, s)
    if views == "flip":
        c = center_crop(x, size)
        return torch.stack([c, hflip(c)])  # (2, C, T, s, s)
    if views == "3crop":
        return three_crop(x, size)
    if views == "3crop+flip":
        v = three_crop(x, size)
        return torch.cat([v, hflip(v)])  # (6, C, T, s, s)
    raise ValueError(f"unknown views {views!r}; expected one of {VIEWS}")


def preprocess(frames: np.ndarray | torch.Tensor, spec: BackboneSpec, views: str = "center") -> torch.Tensor:
    """Decoded frames to normalised model input for a backbone.

    Resize the short side to ``spec.resize`` (bilinear, no antialias), crop ``spec.crop`` per
    ``views``, normalise with ``spec.mean`` / ``spec.std`` after scaling to [0, 1].

    Args:
        frames: ``(T, H, W, C)`` uint8.
        spec: The backbone's preprocessing spec.
        views: ``"center"``, ``"3crop"``, ``"flip"`` or ``"3crop+flip"``.

    Returns:
        ``(V, C, T, crop, crop)`` float32.
    """
    x = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if x.ndim != 4 or x.dtype != torch.uint8:
        raise ValueError(f"expected (T, H, W, C) uint8 frames, got {tuple(x.shape)} {x.dtype}")
    if x.shape[-1] != spec.in_channels:
        raise ValueError(f"{spec.name} expects {spec.in_channels} channels, frames have {x.shape[-1]}")
    if min(x.shape[1:3]) == spec.resize:
        # resizing is the identity: crop the uint8 frames first and convert only the pixels kept
        # (the same values as converting first: every later step is per pixel)
        v = make_views(x.permute(3, 0, 1, 2), spec.crop, views)  # (V, C, T, crop, crop) uint8
        v = v.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)
    else:
        x = resize_short_side(to_float_clip(x), spec.resize)  # (C, T, H', W') in [0, 1]
        v = make_views(x, spec.crop, views).contiguous()  # (V, C, T, crop, crop), a fresh tensor
    return _normalize_(v, spec.mean, spec.std)


def _normalize_(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``normalize`` in place on a contiguous ``(V, C, T, H, W)`` float clip (same values)."""
    shape = [1, len(mean), 1, 1, 1]
    m = torch.tensor(mean, dtype=x.dtype).view(shape)
    s = torch.tensor(std, dtype=x.dtype).view(shape)
    return x.sub_(m).div_(s)
