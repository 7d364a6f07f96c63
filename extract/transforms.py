"""Pure transforms from decoded uint8 frames to normalised model input.

Clips are ``(C, T, H, W)`` arrays throughout: crops, flips and normalisation take numpy arrays or
torch tensors alike. The job's path (``preprocess_array``) runs on numpy, so the decoding workers
never import torch: its bilinear resize (``resize_region``) computes torch's ``interpolate``, the
function the reference outputs were computed with, to within a float32 rounding step, and only
for the pixels the crop keeps. Resizing is bilinear without antialias by
default (the protocol the reference I3D outputs were computed with). Crop offsets follow
torchvision: ``round((H - size) / 2)`` for the centre; the 3 crops of ``three_crop`` lie along the
long side (left/top, centre, right/bottom), as in SlowFast/pytorchvideo test-time 3-crop.
"""

from __future__ import annotations

from collections.abc import Sequence

from typing import TYPE_CHECKING, Any

import numpy as np

from featbank.store.schema import BackboneSpec

VIEWS = ("center", "3crop", "flip", "3crop+flip")
VIEW_COUNT = {"center": 1, "3crop": 3, "flip": 2, "3crop+flip": 6}

if TYPE_CHECKING:
    import torch

Array = Any  # numpy.ndarray or torch.Tensor


def _stack(parts: list) -> Array:
    if isinstance(parts[0], np.ndarray):
        return np.stack(parts)
    import torch

    return torch.stack(parts)


def to_float_clip(frames: "np.ndarray | torch.Tensor") -> "torch.Tensor":
    """Decoded frames to a float clip.

    Args:
        frames: ``(T, H, W, C)`` uint8 (numpy or torch).

    Returns:
        ``(C, T, H, W)`` float32 in ``[0, 1]``.
    """
    import torch

    x = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if x.ndim != 4 or x.dtype != torch.uint8:
        raise ValueError(f"expected (T, H, W, C) uint8 frames, got {tuple(x.shape)} {x.dtype}")
    return x.permute(3, 0, 1, 2).float().div_(255.0)  # (T, H, W, C) -> (C, T, H, W)


def resize_short_side(x: "torch.Tensor", size: int, antialias: bool = False) -> "torch.Tensor":
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
    new_h, new_w = resized_shape(h, w, size)
    import torch.nn.functional as F

    y = x.permute(1, 0, 2, 3)  # (C, T, H, W) -> (T, C, H, W): T as the batch
    y = F.interpolate(y, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=antialias)
    return y.permute(1, 0, 2, 3)  # (T, C, H', W') -> (C, T, H', W')


def resized_shape(h: int, w: int, size: int) -> tuple[int, int]:
    """``(H', W')`` of an ``h x w`` frame whose short side is resized to ``size``."""
    if min(h, w) == size:
        return h, w
    return (size, int(size * w / h)) if h <= w else (int(size * h / w), size)


def _linear_taps(in_size: int, out_size: int, lo: int, hi: int):
    """Bilinear taps (align_corners=False, no antialias) of output pixels ``[lo, hi)``: first and
    second source index and their weights, computed in float32 the way ``torch.nn.functional.
    interpolate`` computes them (so both agree to a rounding step)."""
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.arange(lo, hi, dtype=np.float32) + np.float32(0.5)
    # scale * dst - 0.5 rounded once, as the fused multiply-add torch's kernels are compiled to
    src = (np.float64(scale) * dst.astype(np.float64) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0))
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    i1 = i0 + (i0 < in_size - 1)
    w1 = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
    return i0, i1, np.float32(1) - w1, w1


def resize_region(frames: np.ndarray, size: int, top: int, left: int, height: int, width: int) -> np.ndarray:
    """A region of the frames resized so their short side is ``size`` (bilinear, no antialias),
    computing only the region's pixels.

    Values are those of ``resize_short_side(to_float_clip(frames), size)`` cropped to the region,
    to within one float32 rounding step (the same taps, weights and order of operations: along
    the width first, then along the height).

    Args:
        frames: ``(T, H, W, C)`` uint8.
        size: short side after resizing.
        top, left, height, width: the region, in resized pixels.

    Returns:
        ``(C, T, height, width)`` float32 in ``[0, 1]``, C-contiguous.
    """
    h, w = frames.shape[1:3]
    out_h, out_w = resized_shape(h, w, size)
    r0, r1, a0, a1 = _linear_taps(h, out_h, top, top + height)
    c0, c1, b0, b1 = _linear_taps(w, out_w, left, left + width)
    rows, cols = np.union1d(r0, r1), np.union1d(c0, c1)  # only the source pixels the region reads
    x = np.take(np.take(frames, rows, axis=1), cols, axis=2)  # (T, R, K, C) uint8
    x = x.transpose(3, 0, 1, 2).astype(np.float32, order="C")  # (C, T, R, K)
    x /= np.float32(255.0)
    across = np.take(x, np.searchsorted(cols, c0), axis=3)  # (C, T, R, width)
    across *= b0
    right = np.take(x, np.searchsorted(cols, c1), axis=3)
    right *= b1
    across += right
    out = np.take(across, np.searchsorted(rows, r0), axis=2)  # (C, T, height, width)
    out *= a0[:, None]
    below = np.take(across, np.searchsorted(rows, r1), axis=2)
    below *= a1[:, None]
    out += below
    return out


def _check_crop(x: Array, size: int) -> None:
    _check_crop_size(*x.shape[-2:], size)


def _check_crop_size(h: int, w: int, size: int) -> None:
    if size > h or size > w:
        raise ValueError(f"crop {size} is larger than the frame {w}x{h}; resize first")


def crop(x: Array, top: int, left: int, size: int) -> Array:
    """Square crop ``x[..., top:top+size, left:left+size]``."""
    return x[..., top : top + size, left : left + size]


def center_crop(x: Array, size: int) -> Array:
    """Centre square crop: ``(..., H, W) -> (..., size, size)``; offsets ``(H - size) // 2``.

    Floor offsets, as in the Kinetics I3D reference protocol; torchvision rounds
    instead, which moves the window by one pixel when the margin is odd (e.g. a 455-pixel
    side) and shifts I3D logits by up to ~0.5.
    """
    _check_crop(x, size)
    h, w = x.shape[-2:]
    return crop(x, (h - size) // 2, (w - size) // 2, size)


def three_crop(x: Array, size: int) -> Array:
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
    return _stack([crop(x, top, left, size) for top, left in boxes])  # 3 x (C, T, s, s) -> (3, C, T, s, s)


def hflip(x: Array) -> Array:
    """Horizontal flip (mirror the last axis)."""
    return np.flip(x, -1) if isinstance(x, np.ndarray) else x.flip(-1)


def normalize(x: Array, mean: Sequence[float], std: Sequence[float]) -> Array:
    """Per-channel ``(x - mean) / std`` for a ``(C, T, H, W)`` or ``(V, C, T, H, W)`` clip."""
    c_axis = x.ndim - 4
    c = x.shape[c_axis]
    if len(mean) != c or len(std) != c:
        raise ValueError(f"mean/std have {len(mean)}/{len(std)} values for {c} channels")
    shape = [1] * x.ndim
    shape[c_axis] = c
    if isinstance(x, np.ndarray):
        return (x - np.asarray(mean, x.dtype).reshape(shape)) / np.asarray(std, x.dtype).reshape(shape)
    import torch

    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(shape)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(shape)
    return (x - m) / s


def make_views(x: Array, size: int, views: str = "center") -> Array:
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
        return _stack([c, hflip(c)])  # (2, C, T, s, s)
    if views == "3crop":
        return three_crop(x, size)
    if views == "3crop+flip":
        v = three_crop(x, size)
        return _stack([*v, *hflip(v)])  # (6, C, T, s, s)
    raise ValueError(f"unknown views {views!r}; expected one of {VIEWS}")


def preprocess(frames: "np.ndarray | torch.Tensor", spec: BackboneSpec, views: str = "center") -> "torch.Tensor":
    """``preprocess_array`` as a torch tensor (shares the array's memory)."""
    import torch

    x = frames.numpy() if isinstance(frames, torch.Tensor) else frames
    return torch.from_numpy(preprocess_array(x, spec, views))


# Frames resized per call of ``resize_region``: its temporaries are then a few MB that the
# allocator hands back for the next frames, instead of hundreds of MB of fresh pages per chunk
# (a 100-frame 240p chunk: 0.9 s cold vs 0.15 s warm, the difference being page faults).
_RESIZE_FRAMES = 8


def preprocess_array(frames: np.ndarray, spec: BackboneSpec, views: str = "center") -> np.ndarray:
    """Decoded frames to normalised model input for a backbone.

    Resize the short side to ``spec.resize`` (bilinear, no antialias), crop ``spec.crop`` per
    ``views``, normalise with ``spec.mean`` / ``spec.std`` after scaling to [0, 1].

    Args:
        frames: ``(T, H, W, C)`` uint8.
        spec: The backbone's preprocessing spec.
        views: ``"center"``, ``"3crop"``, ``"flip"`` or ``"3crop+flip"``.

    Returns:
        ``(V, C, T, crop, crop)`` float32, C-contiguous.
    """
    x = np.asarray(frames)
    if x.ndim != 4 or x.dtype != np.uint8:
        raise ValueError(f"expected (T, H, W, C) uint8 frames, got {tuple(x.shape)} {x.dtype}")
    if x.shape[-1] != spec.in_channels:
        raise ValueError(f"{spec.name} expects {spec.in_channels} channels, frames have {x.shape[-1]}")
    if min(x.shape[1:3]) == spec.resize:
        # resizing is the identity: crop the uint8 frames first and convert only the pixels kept
        # (the same values as converting first: every later step is per pixel)
        v = make_views(x.transpose(3, 0, 1, 2), spec.crop, views)  # (V, C, T, crop, crop) uint8
        v = np.ascontiguousarray(v, dtype=np.float32)
        v /= np.float32(255.0)
    else:
        out_h, out_w = resized_shape(*x.shape[1:3], spec.resize)
        _check_crop_size(out_h, out_w, spec.crop)
        if views in ("center", "flip"):  # resize only the centre crop's pixels
            box = ((out_h - spec.crop) // 2, (out_w - spec.crop) // 2, spec.crop, spec.crop)
        else:  # the 3 crops span the long side: resize it whole
            box = (0, 0, out_h, out_w)
        region = np.empty((x.shape[-1], len(x), box[2], box[3]), np.float32)  # (C, T, h, w)
        for t in range(0, len(x), _RESIZE_FRAMES):  # a few frames at a time: small, reused temporaries
            region[:, t:t + _RESIZE_FRAMES] = resize_region(x[t:t + _RESIZE_FRAMES], spec.resize, *box)
        v = np.ascontiguousarray(make_views(region, spec.crop, views))  # (V, C, T, crop, crop)
    return _normalize_(v, spec.mean, spec.std)


def _normalize_(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``normalize`` in place on a contiguous ``(V, C, T, H, W)`` float32 clip (same values)."""
    shape = [1, len(mean), 1, 1, 1]
    x -= np.asarray(mean, np.float32).reshape(shape)
    x /= np.asarray(std, np.float32).reshape(shape)
    return x
