"""Transforms: layout, resize rule, crop positions, flip, normalisation values, views axis."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from featbank.extract.transforms import (
    VIEW_COUNT,
    center_crop,
    hflip,
    make_views,
    normalize,
    preprocess,
    resize_short_side,
    three_crop,
    to_float_clip,
)
from featbank.store.schema import BackboneSpec


def spec(resize=8, crop=4, channels=3, mean=None, std=None) -> BackboneSpec:
    return BackboneSpec(
        name="test", clip_len=4, frame_stride=1, target_fps=None, resize=resize, crop=crop,
        mean=mean or (0.5,) * channels, std=std or (0.5,) * channels, feature_dim=8, weights_id="random",
        in_channels=channels,
    )


def coord_clip(t=2, h=6, w=10) -> torch.Tensor:
    """(1, T, H, W) clip whose value at (t, y, x) is 1000 t + 100 y + x: positions are readable."""
    tt, yy, xx = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    return (1000 * tt + 100 * yy + xx).float()[None]


def test_to_float_clip_layout_and_range():
    frames = np.zeros((3, 4, 5, 3), np.uint8)
    frames[1, 2, 3] = (255, 51, 0)
    x = to_float_clip(frames)
    assert x.shape == (3, 3, 4, 5) and x.dtype == torch.float32  # (C, T, H, W)
    assert x[:, 1, 2, 3].tolist() == pytest.approx([1.0, 0.2, 0.0])
    assert float(x.sum()) == pytest.approx(1.2)
    assert to_float_clip(torch.from_numpy(frames)).equal(x)
    with pytest.raises(ValueError):
        to_float_clip(frames.astype(np.float32))


def test_resize_short_side_shapes_and_rule():
    x = torch.rand(3, 2, 240, 320)
    assert resize_short_side(x, 256).shape == (3, 2, 256, 341)  # int(256 * 320 / 240) = 341
    assert resize_short_side(torch.rand(3, 1, 1080, 1920), 256).shape == (3, 1, 256, 455)
    assert resize_short_side(torch.rand(3, 1, 320, 240), 128).shape == (3, 1, 170, 128)  # portrait
    same = torch.rand(3, 1, 256, 340)
    assert resize_short_side(same, 256) is same


def test_resize_is_bilinear_without_antialias_by_default():
    x = torch.rand(3, 2, 60, 80)
    y = resize_short_side(x, 30)
    ref = F.interpolate(x.permute(1, 0, 2, 3), size=(30, 40), mode="bilinear", align_corners=False)
    torch.testing.assert_close(y, ref.permute(1, 0, 2, 3))
    aa = resize_short_side(x, 30, antialias=True)
    assert not torch.allclose(aa, y)  # the flag changes the result when downscaling
    # a constant image stays constant
    assert torch.allclose(resize_short_side(torch.full((3, 1, 10, 20), 0.25), 7), torch.tensor(0.25))


def test_center_crop_positions():
    x = coord_clip(h=6, w=10)
    c = center_crop(x, 4)
    assert c.shape == (1, 2, 4, 4)
    assert c[0, 0, 0, 0].item() == 100 * 1 + 3  # top = round(2/2)=1, left = round(6/2)=3
    assert c[0, 1, 3, 3].item() == 1000 + 100 * 4 + 6
    # floor offsets (reference I3D protocol), not torchvision's rounding: (9-4)//2 = 2, (11-4)//2 = 3
    assert center_crop(coord_clip(h=9, w=9), 4)[0, 0, 0, 0].item() == 100 * 2 + 2
    assert center_crop(coord_clip(h=9, w=11), 4)[0, 0, 0, 0].item() == 100 * 2 + 3
    with pytest.raises(ValueError):
        center_crop(x, 7)


def test_three_crop_positions_along_long_side():
    land = three_crop(coord_clip(h=6, w=10), 4)
    assert land.shape == (3, 1, 2, 4, 4)
    assert [land[v, 0, 0, 0, 0].item() for v in range(3)] == [100, 103, 106]  # left, centre, right
    port = three_crop(coord_clip(h=10, w=6), 4)
    assert [port[v, 0, 0, 0, 0].item() for v in range(3)] == [1, 301, 601]  # top, centre, bottom


def test_hflip_mirrors_width():
    x = coord_clip(h=2, w=5)
    f = hflip(x)
    assert f[0, 0, 0].tolist() == [4, 3, 2, 1, 0]
    assert hflip(f).equal(x)


def test_normalize_values_per_channel():
    x = torch.stack([torch.full((2, 3, 3), v) for v in (0.0, 0.5, 1.0)])  # (C, T, H, W)
    y = normalize(x, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert [y[c].unique().item() for c in range(3)] == [-1.0, 0.0, 1.0]
    z = normalize(x, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert z[2, 0, 0, 0].item() == pytest.approx((1.0 - 0.406) / 0.225)
    v = normalize(x[None].repeat(2, 1, 1, 1, 1), (0.0, 0.5, 1.0), (1.0, 1.0, 1.0))  # (V, C, T, H, W)
    assert v.abs().max().item() == pytest.approx(0.0)
    with pytest.raises(ValueError):
        normalize(x, (0.5, 0.5), (0.5, 0.5))


@pytest.mark.parametrize("views", list(VIEW_COUNT))
def test_views_axis(views):
    x = coord_clip(h=6, w=10)
    v = make_views(x, 4, views)
    assert v.shape == (VIEW_COUNT[views], 1, 2, 4, 4)
    assert v[0].equal(center_crop(x, 4) if views in ("center", "flip") else three_crop(x, 4)[0])
    if views == "flip":
        assert v[1].equal(hflip(v[0]))
    if views == "3crop+flip":
        assert v[3:].equal(hflip(v[:3]))
    with pytest.raises(ValueError):
        make_views(x, 4, "5crop")


def test_preprocess_matches_the_guide_protocol():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, 12, 16, 3), dtype=np.uint8)
    out = preprocess(frames, spec(resize=8, crop=6), views="center")
    assert out.shape == (1, 3, 4, 6, 6) and out.dtype == torch.float32
    x = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 255  # (C, T, H, W)
    r = F.interpolate(x.permute(1, 0, 2, 3), size=(8, 10), mode="bilinear", align_corners=False).permute(1, 0, 2, 3)
    ref = r[..., 1:7, 2:8] * 2 - 1  # centre crop, scaled to [-1, 1]
    torch.testing.assert_close(out[0], ref)
    assert out.min() >= -1 - 1e-6 and out.max() <= 1 + 1e-6
    six = preprocess(frames, spec(resize=8, crop=6), views="3crop+flip")
    assert six.shape == (6, 3, 4, 6, 6)
    torch.testing.assert_close(six[1], out[0])  # the middle of 3 crops is the centre crop


def test_preprocess_flow_two_channels():
    frames = np.full((2, 10, 10, 2), 255, np.uint8)
    out = preprocess(frames, spec(resize=10, crop=8, channels=2), views="flip")
    assert out.shape == (2, 2, 2, 8, 8) and torch.allclose(out, torch.tensor(1.0))
    with pytest.raises(ValueError):
        preprocess(frames, spec(resize=10, crop=8, channels=3))


@pytest.mark.parametrize("views", ["center", "3crop", "flip", "3crop+flip"])
@pytest.mark.parametrize("hw", [(8, 12), (12, 8), (8, 8)])
def test_preprocess_crops_before_converting_when_no_resize_is_needed_with_the_same_values(views, hw):
    """Frames whose short side already is ``resize`` are cropped as uint8 first: the values equal
    the convert-resize-crop-normalise order exactly (bit for bit), and the result is contiguous."""
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (5, *hw, 3), dtype=np.uint8)
    sp = spec(resize=8, crop=6, mean=(0.45, 0.40, 0.35), std=(0.22, 0.23, 0.21))
    out = preprocess(frames, sp, views=views)
    x = resize_short_side(to_float_clip(frames), 8)
    ref = normalize(make_views(x, 6, views), sp.mean, sp.std)
    assert out.is_contiguous() and out.dtype == torch.float32
    assert torch.equal(out, ref)


@pytest.mark.parametrize("views", ["center", "3crop", "flip", "3crop+flip"])
@pytest.mark.parametrize("hw", [(10, 14), (240, 320), (331, 250), (27, 9)])
def test_preprocess_resizes_in_numpy_like_torch_interpolate(views, hw):
    """The job's resize (numpy, only the crop's pixels) equals torch's bilinear ``interpolate``
    (align_corners=False, no antialias) of the whole frame, then the crop, to within a float32
    rounding step - upscaling and downscaling, both orientations."""
    from featbank.extract.transforms import preprocess_array, resize_region

    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (11, *hw, 3), dtype=np.uint8)  # more frames than one resize block
    size, crop = 8 if min(hw) < 200 else 224, 6 if min(hw) < 200 else 200
    sp = spec(resize=size, crop=crop, mean=(0.45, 0.40, 0.35), std=(0.22, 0.23, 0.21))
    out = preprocess_array(frames, sp, views=views)
    ref = normalize(make_views(resize_short_side(to_float_clip(frames), size), crop, views), sp.mean, sp.std)
    assert out.flags.c_contiguous and out.dtype == np.float32 and out.shape == tuple(ref.shape)
    np.testing.assert_allclose(out, ref.numpy(), rtol=0, atol=1e-6)  # a float32 step of [0, 1] values, / std
    full = resize_short_side(to_float_clip(frames), size).numpy()  # (C, T, H', W')
    part = resize_region(frames, size, 1, 2, 3, 4)
    np.testing.assert_allclose(part, full[:, :, 1:4, 2:6], rtol=0, atol=2.5e-7)


def test_gather_windows_copies_each_window_once_in_order():
    from featbank.extract._stream import gather_windows

    pool = np.arange(2 * 3 * 7 * 2 * 2, dtype=np.float32).reshape(2, 3, 7, 2, 2)  # (V, C, P, h, w)
    cols = np.array([[0, 1, 2], [2, 3, 4], [4, 4, 6]])  # overlapping windows, a repeated frame
    out = gather_windows(pool, cols)
    ref = np.stack([pool[:, :, c] for c in cols])  # (n, V, C, L, h, w)
    assert out.shape == (3, 2, 3, 3, 2, 2) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, ref)
    allocated = []
    out = gather_windows(pool, cols, alloc=lambda shape, dtype: allocated.append(np.zeros(shape, dtype)) or allocated[-1])
    assert out is allocated[0]  # written into the caller's allocation (a worker's shared memory)
    np.testing.assert_array_equal(out, ref)
