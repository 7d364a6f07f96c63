"""Where and how the backbone runs: device, precision, the inference-ready model, and the
``Pipeline`` (model + resolved sampling + row shape) that the loop and ``verify`` share."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from featbank.store.schema import BackboneSpec

from ..features import Sampling, run_model
from .config import ExtractConfig, resolve_modality


def resolve_device(name: str):
    """``auto`` -> CUDA when available else CPU; ``cuda`` without a GPU is an error.

    Under torchrun the CUDA device is ``cuda:LOCAL_RANK``.
    """
    import torch

    from ..errors import ExtractError

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ExtractError("device 'cuda' requested but no CUDA device is available; use --device cpu or auto")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")


def autocast_dtype_for(precision: str, device) -> Any:
    """The autocast dtype: bf16 on CUDA for ``auto``; None (fp32) otherwise unless ``bf16``."""
    import torch

    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def build_model(cfg: ExtractConfig, device):
    """The backbone of ``cfg`` in eval mode on ``device`` (inference-fused where the backbone offers it)."""
    from ..backbones import create_backbone

    import torch

    weights = None if cfg.weights in (None, "random", "none") else cfg.weights
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # random-init backbones are reproducible (verify, resume, ranks)
        model = create_backbone(cfg.backbone, weights=weights)
    model.eval().to(device)
    if hasattr(model, "fused_for_inference"):  # I3D: BatchNorm folded, channels_last_3d weights
        model = model.fused_for_inference(channels_last=True)
    elif device.type == "cuda":
        model.to(memory_format=torch.channels_last_3d)
    return model


def probe_rows(model, spec: BackboneSpec, sampling: Sampling, device, autocast_dtype) -> tuple[int, tuple[int, ...]]:
    """Rows per window ``R`` and the per-view row shape ``F``, from one dummy window."""
    import torch

    clip_len = sampling.clip_len
    dummy = torch.zeros((1, 1, spec.in_channels, clip_len, spec.crop, spec.crop), device=device)
    out = run_model(model, dummy, sampling, autocast_dtype=autocast_dtype)  # (1, R, 1, *F)
    return int(out.shape[1]), tuple(int(d) for d in out.shape[3:])


@dataclass
class Pipeline:
    """Model-side state shared by ``run_extraction`` and ``verify_extraction``."""

    model: Any
    spec: BackboneSpec
    sampling: Sampling
    device: Any
    autocast_dtype: Any
    rows_per_window: int
    row_shape: tuple[int, ...]
    modality: str


def build_pipeline(cfg: ExtractConfig, *, probe: bool = True) -> Pipeline:
    """Backbone and resolved sampling for ``cfg``; ``probe`` also runs one dummy window to
    learn the rows per window and the row shape (``probe_pipeline``)."""
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    model = build_model(cfg, device)
    spec = model.spec.replace(resize=cfg.resize or model.spec.resize, crop=cfg.crop or model.spec.crop)
    endpoint = cfg.endpoint or model.endpoints[-1]
    if endpoint not in model.endpoints:
        model.check_endpoint(endpoint)  # raises BackboneError listing the valid endpoints
    sampling = cfg.sampling_for(spec, endpoint=endpoint)
    autocast = autocast_dtype_for(cfg.precision, device)
    pipe = Pipeline(model, spec, sampling, device, autocast, 0, (), resolve_modality(cfg, spec))
    if probe:
        probe_pipeline(pipe)
    return pipe


def probe_pipeline(pipe: Pipeline) -> None:
    """Fill ``rows_per_window`` and ``row_shape`` from one dummy window."""
    rows_per_window, feat_shape = probe_rows(pipe.model, pipe.spec, pipe.sampling, pipe.device, pipe.autocast_dtype)
    pipe.rows_per_window = rows_per_window
    pipe.row_shape = (pipe.sampling.n_views, *feat_shape) if pipe.sampling.n_views > 1 else feat_shape
