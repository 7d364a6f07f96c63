"""Engines: where the per-window network runs (torch eager or OpenVINO) and at what precision.

The same ``features.FeatureHead`` (backbone up to the rows of one window) runs under every
runtime, so a runtime only changes speed, never the function. Which runtime and precision
are fastest *and exact enough* depends on the machine the job lands on, so ``select_engine``
decides at run time:

* runtime ``auto``: CUDA -> torch; CPU -> OpenVINO when installed (1.85x torch fp32 for I3D on
  2 cores, same values to 1e-6), else torch;
* precision ``auto``: CUDA -> bf16 (fp16 where the GPU has no bf16); CPU -> bf16 only where the
  CPU has it natively (``avx512_bf16`` or ``amx_bf16`` in its flags, read at run time), else fp32;
* any precision other than fp32 is checked on a probe clip against torch fp32: ``auto`` falls
  back to fp32 below cosine 0.999; an explicit request keeps its precision and records the cosine.

The choice, the probe cosine and the CPU flags go into the feature set's provenance
(``EngineChoice.to_dict``). A converted OpenVINO model is cached next to the converted weights
(``$FEATBANK_CACHE/compiled``), keyed by weights id, backbone, endpoint/pooling, input shape and
runtime version, with the row shape and probe result, so a later run neither converts nor probes.
Random-init weights all share the weights id ``random`` and are never cached.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, get_args

import numpy as np

from .errors import EngineError
from .features import Sampling, split_views

if TYPE_CHECKING:
    import torch

RuntimeName = Literal["auto", "torch", "openvino"]
PrecisionName = Literal["auto", "fp32", "bf16", "fp16"]
RUNTIMES: tuple[str, ...] = get_args(RuntimeName)
PRECISIONS: tuple[str, ...] = get_args(PrecisionName)

PROBE_MIN_COSINE = 0.999  # a lower precision is used by ``auto`` only above this agreement with fp32
_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16", "amx_fp16")
_OV_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


# ---------------------------------------------------------------------------------------
# the machine


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``), read at call time; empty off Linux."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_native(precision: str, flags: frozenset[str] | None = None) -> bool:
    """True when the CPU computes ``precision`` natively (fp32 always)."""
    flags = cpu_flags() if flags is None else flags
    if precision == "bf16":
        return bool({"avx512_bf16", "amx_bf16"} & flags)
    if precision == "fp16":
        return bool({"avx512_fp16", "amx_fp16"} & flags)
    return True


def _package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def openvino_version() -> str | None:
    """The installed OpenVINO version, or None (read from the package metadata: no import)."""
    return _package_version("openvino")


def torch_version() -> str:
    """The installed torch version (package metadata: reading it does not import torch)."""
    return str(_package_version("torch"))


# ---------------------------------------------------------------------------------------
# engines


class TorchEngine:
    """``FeatureHead`` in torch eager mode, under autocast for bf16/fp16."""

    runtime = "torch"

    def __init__(self, model: "torch.nn.Module", sampling: Sampling, device: Any, precision: str) -> None:
        import torch

        from .feature_head import FeatureHead, _is_channels_last

        self.head = FeatureHead(model, sampling).eval()
        self.device = torch.device(str(device))
        self.precision = precision
        self.channels_last = self.device.type == "cuda" or _is_channels_last(model)
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def __call__(self, clips: "np.ndarray | torch.Tensor") -> np.ndarray:
        """``(B, V, C, T, H, W)`` (numpy or torch) -> ``(B, R, V, *F)`` float32 numpy."""
        import torch

        b, v = clips.shape[:2]
        x = torch.as_tensor(clips).flatten(0, 1)  # (B*V, C, T, H, W), no copy
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        ctx = torch.autocast(device_type=self.device.type, dtype=self.dtype) if self.dtype else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            out = self.head(x)  # (B*V, R, *F)
        return split_views(out.float().cpu().numpy(), b, v)


class OpenVINOEngine:
    """A compiled OpenVINO model of ``FeatureHead`` (dynamic batch, fixed clip shape), on CPU.
    Runs without torch: numpy in, numpy out."""

    runtime = "openvino"

    def __init__(self, compiled: Any, precision: str) -> None:
        self.compiled = compiled
        self.precision = precision
        self._request = compiled.create_infer_request()

    def __call__(self, clips: Any) -> np.ndarray:
        """``(B, V, C, T, H, W)`` (numpy or torch) -> ``(B, R, V, *F)`` float32 numpy."""
        b, v = clips.shape[:2]
        x = np.asarray(clips, dtype=np.float32)
        x = np.ascontiguousarray(x.reshape(b * v, *x.shape[2:]))  # (B*V, C, T, H, W)
        out = self._request.infer({0: x}, share_inputs=True)[0]  # (B*V, R, *F)
        return split_views(np.array(out, np.float32, copy=True), b, v)


# ---------------------------------------------------------------------------------------
# choice


@dataclass
class EngineChoice:
    """How features are computed on this machine (recorded in the set's provenance).

    Attributes:
        runtime: ``torch`` or ``openvino``.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        requested: the ``runtime/precision`` asked for (``auto`` or explicit).
        device: ``cpu`` or ``cuda``.
        probe_cosine: cosine of the probe clip's rows against torch fp32 (None for fp32).
        cpu_flags: the precision-relevant CPU flags present.
        cpu_native_bf16: the CPU has native bf16.
        versions: runtime versions (torch, openvino).
        cached: the converted model and probe came from the cache (no conversion, no probe).
        reason: why this runtime and precision were chosen.
        batch_size: windows per model call the job used (0: not set by a job).
    """

    runtime: str
    precision: str
    requested: str
    device: str
    probe_cosine: float | None = None
    cpu_flags: list[str] = field(default_factory=list)
    cpu_native_bf16: bool = False
    versions: dict[str, str] = field(default_factory=dict)
    cached: bool = False
    reason: str = ""
    batch_size: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-300))


def probe_clip(clip_shape: tuple[int, ...], seed: int = 0) -> "torch.Tensor":
    """A deterministic normalised clip ``(1, 1, C, T, H, W)``: smooth moving gradients plus noise
    (in the value range of real normalised frames), for precision probes and shape probes."""
    import torch

    c, t, h, w = clip_shape
    g = torch.Generator().manual_seed(seed)
    tt = torch.linspace(0, 1, t).view(1, t, 1, 1)
    yy = torch.linspace(-1, 1, h).view(1, 1, h, 1)
    xx = torch.linspace(-1, 1, w).view(1, 1, 1, w)
    phase = torch.arange(c, dtype=torch.float32).view(c, 1, 1, 1)
    x = torch.sin(3 * xx + 2 * yy + 4 * tt + phase) + 0.3 * torch.randn((c, t, h, w), generator=g)
    return x.clamp(-2, 2)[None, None]


class _Cache:
    """One folder per converted model: ``model.xml``/``model.bin`` (OpenVINO) and ``meta.json``
    (row shape, probe cosines); ``None`` root = no caching."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.meta: dict[str, Any] = {}
        if root is not None and (root / "meta.json").is_file():
            try:
                self.meta = json.loads((root / "meta.json").read_text())
            except (OSError, ValueError):  # a damaged entry is rebuilt
                self.meta = {}

    def save(self) -> None:
        if self.root is None:
            return
        from .cache_paths import write_atomic

        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.root / "meta.json", lambda p: p.write_text(json.dumps(self.meta, indent=1, sort_keys=True)))


def compiled_cache_root() -> Path:
    """``$FEATBANK_CACHE/compiled`` (next to ``weights``; default ``~/.cache/featbank/compiled``)."""
    from .cache_paths import cache_root

    return cache_root() / "compiled"


def cache_key(backbone: str, weights_id: str, sampling: Sampling, clip_shape: tuple[int, ...], runtime: str) -> str:
    """Cache folder name of one converted model (weights, network cut, input shape, versions)."""
    version = openvino_version() if runtime == "openvino" else torch_version()
    parts = [backbone, weights_id, str(sampling.endpoint), sampling.pool, str(sampling.keep_time),
             "x".join(map(str, clip_shape)), runtime, str(version), platform.machine()]
    digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    return f"{backbone}-{weights_id[:12]}-{runtime}-{digest}"


def _cache_for(backbone: str, weights_id: str, sampling: Sampling, clip_shape, runtime: str, enabled: bool) -> _Cache:
    from .cache_paths import RANDOM_WEIGHTS_ID

    if not enabled or weights_id == RANDOM_WEIGHTS_ID or not backbone:
        return _Cache(None)
    return _Cache(compiled_cache_root() / cache_key(backbone, weights_id, sampling, clip_shape, runtime))


def plan(runtime: str, precision: str, device_type: str, flags: frozenset[str], *, openvino: bool,
         cuda_bf16: bool = True) -> tuple[str, str, list[str]]:
    """The runtime and precision to try on this machine, before any probe (a pure function).

    Args:
        runtime: requested runtime (``auto``, ``torch``, ``openvino``).
        precision: requested precision (``auto``, ``fp32``, ``bf16``, ``fp16``).
        device_type: ``cpu`` or ``cuda``.
        flags: the CPU flags (``cpu_flags()``).
        openvino: OpenVINO is installed.
        cuda_bf16: the GPU computes bf16.

    Returns:
        ``(runtime, precision, reasons)``.

    Raises:
        EngineError: a runtime or precision that cannot run here, saying what to use instead.
    """
    if runtime not in RUNTIMES:
        raise EngineError(f"runtime {runtime!r} is not one of {list(RUNTIMES)}")
    if precision not in PRECISIONS:
        raise EngineError(f"precision {precision!r} is not one of {list(PRECISIONS)}")
    reasons = []
    if runtime == "auto":
        if device_type == "cuda":
            runtime, why = "torch", "CUDA device: torch"
        elif openvino:
            runtime, why = "openvino", "CPU: OpenVINO (faster than torch eager at equal values)"
        else:
            runtime, why = "torch", "CPU without OpenVINO installed: torch"
        reasons.append(why)
    else:
        if runtime == "openvino" and device_type != "cpu":
            raise EngineError("runtime 'openvino' runs on the CPU here; use --device cpu or --runtime torch")
        if runtime == "openvino" and not openvino:
            raise EngineError("runtime 'openvino' requested but the openvino package is not installed "
                              "(pip install openvino), or use --runtime torch")
        reasons.append(f"{runtime} requested")
    if precision == "auto":
        if device_type == "cuda":
            precision = "bf16" if cuda_bf16 else "fp16"
        else:
            precision = "bf16" if cpu_native("bf16", flags) else "fp32"
            if precision == "fp32":
                reasons.append("fp32: no native bf16 on this CPU")
    elif device_type == "cpu" and not cpu_native(precision, flags):
        need = "avx512_bf16 or amx_bf16" if precision == "bf16" else "avx512_fp16 or amx_fp16"
        raise EngineError(f"precision {precision!r}: this CPU has no native {precision} ({need} not in its "
                          f"flags); use --precision fp32 or auto")
    return runtime, precision, reasons


def _build(runtime: str, precision: str, model: "Callable[[], torch.nn.Module]", sampling: Sampling, device: Any,
           clip_shape: tuple[int, ...], cache: _Cache, threads: int) -> Any:
    if runtime == "torch":
        return TorchEngine(model(), sampling, device, precision)
    return OpenVINOEngine(_compile_openvino(model, sampling, clip_shape, precision, cache, threads), precision)


def _compile_openvino(model: "Callable[[], torch.nn.Module]", sampling: Sampling, clip_shape: tuple[int, ...], precision: str,
                      cache: _Cache, threads: int) -> Any:
    import openvino as ov

    core = ov.Core()
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": _OV_HINTS[precision]}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    xml = cache.root / "model.xml" if cache.root is not None else None
    if xml is not None and xml.is_file() and (cache.root / "model.bin").is_file():
        ov_model = core.read_model(str(xml))
        cache.meta["converted_from_cache"] = True
    else:
        ov_model = _converted(model(), sampling, clip_shape)
        if xml is not None:
            cache.root.mkdir(parents=True, exist_ok=True)
            tmp = cache.root / f"model.{os.getpid()}.xml"
            ov.save_model(ov_model, str(tmp), compress_to_fp16=False)
            os.replace(tmp.with_suffix(".bin"), cache.root / "model.bin")
            os.replace(tmp, xml)
        cache.meta["converted_from_cache"] = False
    if cache.root is not None:
        config["CACHE_DIR"] = str(cache.root / "blobs")
    return core.compile_model(ov_model, "CPU", config)


# Converted models of this process, per torch model: a fallback from bf16 to fp32, verify after a
# job, or a test running one network at two precisions converts once.
_CONVERTED: "weakref.WeakKeyDictionary[Any, dict[tuple, Any]]" = weakref.WeakKeyDictionary()


def _converted(model: "torch.nn.Module", sampling: Sampling, clip_shape: tuple[int, ...]) -> Any:
    """``FeatureHead(model, sampling)`` as an OpenVINO model with a dynamic batch axis."""
    import openvino as ov
    import torch

    from .feature_head import FeatureHead

    key = (sampling.endpoint, sampling.pool, sampling.keep_time, tuple(clip_shape))
    per_model = _CONVERTED.setdefault(model, {})
    if key not in per_model:
        example = torch.zeros((1, *clip_shape))
        with torch.no_grad(), _quiet_tracer():
            traced = torch.jit.trace(FeatureHead(model, sampling).eval(), example, check_trace=False)
            per_model[key] = ov.convert_model(traced, example_input=example, input=[ov.PartialShape([-1, *clip_shape])])
    return per_model[key]


@contextlib.contextmanager
def _quiet_tracer():
    """TorchScript tracer warnings about Python shape arithmetic (static shapes are intended)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def select_engine(
    model: "torch.nn.Module | Callable[[], torch.nn.Module]",
    sampling: Sampling,
    clip_shape: tuple[int, ...],
    device: Any,
    *,
    runtime: str = "auto",
    precision: str = "auto",
    backbone: str = "",
    weights_id: str = "",
    cache: bool = True,
    threads: int = 0,
) -> tuple[Any, EngineChoice, dict[str, Any]]:
    """Pick and build the engine for ``model`` on this machine.

    Args:
        model: the inference copy of the backbone (``fused_for_inference``) on ``device``, or a
            function that builds it: it is then built only when needed (torch runtime, a
            conversion or a probe), so a run from the compiled-model cache never imports torch.
        sampling: endpoint, pooling and time policy of the rows.
        clip_shape: ``(C, T, H, W)`` of one window (the engine's fixed input shape).
        device: the device (``.type`` is ``cpu`` or ``cuda``; a torch device or ``runtime.Device``).
        runtime: ``auto``, ``torch`` or ``openvino``.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
        backbone: registry name (cache key; empty disables the cache).
        weights_id: the weights' sha256 (cache key).
        cache: use the compiled-model cache.
        threads: CPU threads of the OpenVINO runtime (0: its default).

    Returns:
        ``(engine, choice, shape_info)``: ``engine(clips (B, V, C, T, H, W)) -> (B, R, V, *F)``;
        ``shape_info`` is ``{"rows_per_window", "feat_shape"}`` when known without running the
        model (cached), else ``{}``.

    Raises:
        ExtractError: a runtime or precision that cannot run on this machine.
    """
    flags = cpu_flags()
    get_model = _once(model)
    cuda_bf16 = False
    if device.type == "cuda":
        import torch

        cuda_bf16 = torch.cuda.is_bf16_supported()
    rt, want, reasons = plan(runtime, precision, device.type, flags, openvino=openvino_version() is not None,
                             cuda_bf16=cuda_bf16)
    store = _cache_for(backbone, weights_id, sampling, clip_shape, rt, cache)
    versions = {"torch": torch_version()}
    if rt == "openvino":
        versions["openvino"] = str(openvino_version())
    choice = EngineChoice(
        runtime=rt, precision=want, requested=f"{runtime}/{precision}", device=device.type,
        cpu_flags=sorted(f for f in _FLAGS_OF_INTEREST if f in flags), cpu_native_bf16=cpu_native("bf16", flags),
        versions=versions,
    )
    probes: dict[str, float] = dict(store.meta.get("probe_cosine", {}))
    shape_info = dict(store.meta.get("shape", {}))
    cached = bool(shape_info) and (want == "fp32" or want in probes)
    engine = _build(rt, want, get_model, sampling, device, clip_shape, store, threads)
    if want != "fp32" and want not in probes:
        clip = probe_clip(clip_shape)
        ref = TorchEngine(get_model(), sampling, device, "fp32")(clip)  # (1, R, 1, *F)
        out = engine(clip)
        probes[want] = _cosine(ref, out)
        shape_info = {"rows_per_window": int(ref.shape[1]), "feat_shape": [int(d) for d in ref.shape[3:]]}
    if want != "fp32":
        choice.probe_cosine = probes[want]
        if precision == "auto" and probes[want] < PROBE_MIN_COSINE:
            reasons.append(f"{want} probe cosine {probes[want]:.6f} < {PROBE_MIN_COSINE}: fp32")
            want = choice.precision = "fp32"
            engine = _build(rt, want, get_model, sampling, device, clip_shape, store, threads)
        else:
            reasons.append(f"{want}: native, probe cosine {probes[want]:.6f} vs torch fp32")
    choice.cached = cached
    choice.reason = "; ".join(reasons)
    if store.root is not None:
        store.meta["probe_cosine"] = probes
        if shape_info:
            store.meta["shape"] = shape_info
        store.meta.pop("converted_from_cache", None)
        store.save()
    return engine, choice, (shape_info if cached or shape_info else {})


def remember_shape(backbone: str, weights_id: str, sampling: Sampling, clip_shape: tuple[int, ...], runtime: str,
                   rows_per_window: int, feat_shape: tuple[int, ...]) -> None:
    """Record the row shape of a converted model in its cache entry (skips the shape probe next time)."""
    store = _cache_for(backbone, weights_id, sampling, clip_shape, runtime, True)
    if store.root is None:
        return
    store.meta["shape"] = {"rows_per_window": int(rows_per_window), "feat_shape": [int(d) for d in feat_shape]}
    store.save()


def _once(model: Any) -> Callable[[], Any]:
    """``model`` itself, or the model a builder function returns, built at most once."""
    if not callable(model) or hasattr(model, "forward"):
        return lambda: model
    built: list = []

    def get() -> Any:
        if not built:
            built.append(model())
        return built[0]

    return get
