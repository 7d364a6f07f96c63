"""The feature set's schema and provenance: what a reader needs to know how its rows were made."""

from __future__ import annotations

from typing import Any

from featbank.store.schema import BackboneSpec, FeatureSetInfo

from ..features import Sampling
from .config import ExtractConfig, flow_settings, resolve_modality


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("decord", "av", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


def _flow_record(cfg: ExtractConfig) -> dict[str, Any] | None:
    flow = flow_settings(cfg)
    if flow is None:
        return None
    record = flow.record()
    record.pop("opencv", None)  # a library version does not fix the rows; kept under flow_engine
    return record


def _flow_engine(cfg: ExtractConfig) -> dict[str, str] | None:
    if not cfg.flow:
        return None
    import cv2

    return {"opencv": cv2.__version__}


def set_info(cfg: ExtractConfig, spec: BackboneSpec, sampling: Sampling, row_shape: tuple[int, ...], name: str,
             choice: Any = None) -> FeatureSetInfo:
    """The feature set's schema and provenance (backbone, weights, endpoint, sampling, decoder,
    transforms, and the engine: runtime, precision, probe cosine, CPU flags)."""
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
            "background_blend": None if not cfg.blend_dir else {
                "median_dir": cfg.blend_dir, "p": cfg.blend_p, "alpha": cfg.blend_alpha, "seed": cfg.blend_seed,
                "formula": "x' = alpha * x + (1 - alpha) * median frame of another video (GLAD BackgroundBlend)"},
            # optical flow computed in memory from the decoded RGB frames (None: read as decoded)
            "flow": _flow_record(cfg),
        },
        "precision": choice.precision if choice is not None else cfg.precision,
        "engine": choice.to_dict() if choice is not None else None,
        "flow_engine": _flow_engine(cfg),
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


# What fixes the values of a set's rows. Two runs may fill one set only when all of these agree;
# decoder versions, workers, the runtime (torch and OpenVINO fp32 agree to 1e-6) may differ.
_FIXED_INFO = ("backbone", "weights_id", "endpoint", "row_shape", "dtype", "level")
_FIXED_SAMPLING = ("sampler", "clip_len", "stride", "frame_stride", "fps", "fps_policy", "views", "last",
                   "num_segments", "keep_time", "pool", "precision", "reverse")


def settings_differences(old: FeatureSetInfo, new: FeatureSetInfo) -> list[str]:
    """``"FIELD: OLD (stored) vs NEW"`` for every setting that fixes the rows' values and differs.

    Sampling, backbone, weights id, endpoint, transforms (resize, crop, views, mean/std,
    modality), precision and the stored layout are fixed when a set is created.
    """
    out = [f"{k}: {getattr(old, k)!r} (stored) vs {getattr(new, k)!r}" for k in _FIXED_INFO
           if _norm(getattr(old, k)) != _norm(getattr(new, k))]
    so, sn = dict(old.sampling), dict(new.sampling)
    for k in _FIXED_SAMPLING:
        if k in so or k in sn:
            if _norm(so.get(k, False if k == "reverse" else None)) != _norm(sn.get(k, False if k == "reverse" else None)):
                out.append(f"{k}: {so.get(k)!r} (stored) vs {sn.get(k)!r}")
    to, tn = dict(so.get("transforms") or {}), dict(sn.get("transforms") or {})
    for k in sorted(set(to) | set(tn)):
        if _norm(to.get(k)) != _norm(tn.get(k)):
            out.append(f"transforms.{k}: {to.get(k)!r} (stored) vs {tn.get(k)!r}")
    return out


def _norm(v: Any) -> Any:
    """Tuples and lists compare equal (JSON round trips turn tuples into lists)."""
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    return v
