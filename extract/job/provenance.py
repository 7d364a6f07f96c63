"""The feature set's schema and provenance: what a reader needs to know how its rows were made."""

from __future__ import annotations

from featbank.store.schema import BackboneSpec, FeatureSetInfo

from ..features import Sampling
from .config import ExtractConfig, resolve_modality


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("decord", "av", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


def set_info(cfg: ExtractConfig, spec: BackboneSpec, sampling: Sampling, row_shape: tuple[int, ...], name: str) -> FeatureSetInfo:
    """The feature set's schema and provenance (backbone, weights, endpoint, sampling, decoder, transforms)."""
    used_spec = spec.replace(
        clip_len=sampling.clip_len if sampling.sampler != "whole" else spec.clip_len,
        frame_stride=sampling.frame_stride,
        target_fps=sampling.fps,
        feature_dim=int(row_shape[-1] if sampling.pool == "avg" else row_shape[-3]),
    )
    fps_policy = cfg.fps if isinstance(cfg.fps, str) else "fixed"
    sampling_dict = {
        **sampling.to_dict(),
        "fps_policy": fps_policy,
        "level": sampling.level,
        "decoder": {"backend": cfg.decoder, "timeout_s": cfg.timeout, **_versions()},
        "transforms": {
            "resize_short_side": spec.resize,
            "interpolation": "bilinear",
            "antialias": False,
            "crop": spec.crop,
            "views": sampling.views,
            "mean": list(spec.mean),
            "std": list(spec.std),
            "modality": resolve_modality(cfg, spec),
        },
        "precision": cfg.precision,
        "config": cfg.to_record(),
    }
    return FeatureSetInfo(
        name=name,
        row_shape=row_shape,
        dtype=cfg.dtype,
        level=sampling.level,
        backbone=cfg.backbone,
        weights_id=spec.weights_id,
        endpoint=sampling.endpoint or "",
        spec=used_spec.to_dict(),
        sampling=sampling_dict,
    )
