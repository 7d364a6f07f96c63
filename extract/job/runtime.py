"""Where and how the backbone runs: device, precision, the inference-ready model, and the
``Pipeline`` (model + resolved sampling + row shape) that the loop and ``verify`` share."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from featbank.store.schema import BackboneSpec

from ..features import Sampling
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
    """The torch autocast dtype of a resolved precision (None for fp32)."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def build_model(cfg: ExtractConfig, device):
    """The backbone of ``cfg``: the inference copy (``fused_for_inference``) on ``device``.

    Weights are ``"default"``, a file, or ``"random"`` (seeded by ``cfg.seed``, so verify,
    resume and every rank rebuild the same network)."""
    from ..backbones import create_backbone

    import torch

    weights = None if cfg.weights in (None, "random") else cfg.weights
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = create_backbone(cfg.backbone, weights=weights)
    channels_last = device.type == "cuda" or (model.cpu_channels_last and cfg.runtime != "openvino")
    return model.fused_for_inference(channels_last=channels_last, inplace=True).to(device)


@dataclass
class Pipeline:
    """Model-side state shared by ``run_extraction`` and ``verify_extraction``.

    Attributes:
        model: the inference copy of the backbone (torch).
        spec: preprocessing of the backbone with the config's resize/crop.
        sampling: the resolved sampling.
        device: torch device.
        engine: ``engine(clips (B, V, C, T, H, W)) -> (B, R, V, *F)`` (``prepare_engine``).
        choice: the ``EngineChoice`` (runtime, precision, probe cosine, CPU flags).
        rows_per_window: ``R`` (0 until known).
        row_shape: rows' shape (``(V, *F)`` for several views, else ``F``).
        modality: ``rgb`` or ``flow``.
    """

    model: Any
    spec: BackboneSpec
    sampling: Sampling
    device: Any
    engine: Any
    choice: Any
    rows_per_window: int
    row_shape: tuple[int, ...]
    modality: str
    backbone: str = ""

    @property
    def clip_shape(self) -> tuple[int, int, int, int]:
        """``(C, T, H, W)`` of one window."""
        return (self.spec.in_channels, self.sampling.clip_len, self.spec.crop, self.spec.crop)

    @property
    def precision(self) -> str:
        return self.choice.precision if self.choice is not None else "fp32"


def build_pipeline(cfg: ExtractConfig, *, probe: bool = True) -> Pipeline:
    """Backbone and resolved sampling for ``cfg``; ``probe`` also picks the engine
    (``prepare_engine``) and learns the row shape. The job calls ``prepare_engine`` itself,
    after the decoding workers have started."""
    import torch

    from ..errors import ExtractError

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    model = build_model(cfg, device)
    spec = model.spec.replace(resize=cfg.resize or model.spec.resize, crop=cfg.crop or model.spec.crop)
    if spec.crop > spec.resize:
        raise ExtractError(f"crop {spec.crop} is larger than resize {spec.resize} (the short side frames are "
                           f"resized to) for backbone {cfg.backbone!r}; pass a smaller --crop or a larger resize")
    endpoint = cfg.endpoint or model.endpoints[-1]
    if endpoint not in model.endpoints:
        model.check_endpoint(endpoint)  # raises BackboneError listing the valid endpoints
    sampling = cfg.sampling_for(spec, endpoint=endpoint)
    pipe = Pipeline(model, spec, sampling, device, None, None, 0, (), resolve_modality(cfg, spec), cfg.backbone)
    if probe:
        prepare_engine(pipe, cfg)
    return pipe


def prepare_engine(pipe: Pipeline, cfg: ExtractConfig, *, cache: bool = True) -> None:
    """Choose and build the engine (runtime x precision, see ``featbank.extract.engines``) and
    fill the row shape: from the compiled-model cache when known, else from one dummy window."""
    from .. import engines
    from ..errors import EngineError

    runtime = cfg.runtime
    if pipe.sampling.sampler == "whole":  # one clip length per video: only eager torch takes any length
        if runtime == "openvino":
            raise EngineError("runtime 'openvino' needs a fixed clip length; sampler 'whole' runs with --runtime torch")
        runtime = "torch"
    engine, choice, shape = engines.select_engine(
        pipe.model, pipe.sampling, pipe.clip_shape, pipe.device, runtime=runtime, precision=cfg.precision,
        backbone=pipe.backbone, weights_id=pipe.spec.weights_id, cache=cache, threads=cfg.threads,
    )
    pipe.engine, pipe.choice = engine, choice
    if shape:
        rows_per_window, feat_shape = int(shape["rows_per_window"]), tuple(shape["feat_shape"])
    else:
        rows_per_window, feat_shape = probe_rows(pipe)
        engines.remember_shape(pipe.backbone, pipe.spec.weights_id, pipe.sampling, pipe.clip_shape, choice.runtime,
                               rows_per_window, feat_shape)
    pipe.rows_per_window = rows_per_window
    pipe.row_shape = (pipe.sampling.n_views, *feat_shape) if pipe.sampling.n_views > 1 else feat_shape
    if pipe.sampling.windows_per_row > 1:  # sampler glad: one row holds the video's views
        pipe.row_shape = (pipe.sampling.windows_per_row, *feat_shape)


def probe_rows(pipe: Pipeline) -> tuple[int, tuple[int, ...]]:
    """Rows per window ``R`` and the per-view row shape ``F``, from one dummy window."""
    import torch

    dummy = torch.zeros((1, 1, *pipe.clip_shape))
    out = pipe.engine(dummy)  # (1, R, 1, *F)
    return int(out.shape[1]), tuple(int(d) for d in out.shape[3:])


def probe_pipeline(pipe: Pipeline, cfg: ExtractConfig | None = None) -> None:
    """Backward-compatible name of ``prepare_engine`` (default config: auto runtime and precision)."""
    prepare_engine(pipe, cfg if cfg is not None else ExtractConfig())
