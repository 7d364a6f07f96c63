"""The extraction job's configuration: ``ExtractConfig`` and the default feature-set name.

Every field with a fixed set of values is annotated with a ``Literal`` type, and
``__post_init__`` checks each value against its annotation, so a bad value in a YAML file or
on the command line fails before anything is opened, naming the field and the choices.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Union, get_args, get_origin

from featbank.store.schema import BackboneSpec

from ..features import LastPolicy, PoolName, SamplerName, Sampling, ViewName

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]  # engines.PRECISIONS (a test keeps them equal)
Runtime = Literal["auto", "torch", "openvino"]  # engines.RUNTIMES
StartMethod = Literal["forkserver", "fork", "spawn"]
Modality = Literal["auto", "rgb", "flow"]
FlowAlgorithm = Literal["", "dis", "farneback", "tvl1"]  # extract.flow.FLOW_ALGORITHMS, "" = none
StoreDtype = Literal["float16", "float32", "bfloat16"]
ManifestFormat = Literal["auto", "path_label", "csv", "mmaction", "tree"]
DecoderName = Literal["auto", "decord", "pyav", "folder", "image"]  # decode.BACKENDS (a test keeps them equal)

DEVICES: tuple[str, ...] = get_args(Device)
PRECISIONS: tuple[str, ...] = get_args(Precision)
RUNTIMES: tuple[str, ...] = get_args(Runtime)
START_METHODS: tuple[str, ...] = get_args(StartMethod)
MODALITIES: tuple[str, ...] = get_args(Modality)
STORE_DTYPES: tuple[str, ...] = get_args(StoreDtype)
MANIFEST_FORMATS: tuple[str, ...] = get_args(ManifestFormat)
DECODERS: tuple[str, ...] = get_args(DecoderName)


@dataclass(frozen=True)
class ExtractConfig:
    """Configuration of one extraction job (``configs/extract/*.yaml``).

    Attributes:
        manifest: manifest file (or directory tree ``CLASS/VIDEO``) listing the videos.
        manifest_format: ``auto``, ``path_label``, ``csv``, ``mmaction`` or ``tree``.
        root: folder the manifest's paths are relative to (default: the manifest's folder).
        store: path of the feature store (created when missing).
        feature_set: feature-set name; empty derives ``BACKBONE/ENDPOINT/cLsS`` (``default_set_name``).
        backbone: registry name (``featbank.extract.backbones.BACKBONES``).
        weights: ``"default"`` (the backbone's published weights), ``"random"`` (seeded by
            ``seed``; YAML null means the same), or a weights file.
        endpoint: backbone endpoint (null: the default, last endpoint).
        sampler: ``sliding``, ``tsn``, ``dense``, ``whole`` or ``static`` (``num_segments``
            single frames per video - one per still image - each repeated into a clip of
            ``clip_len`` frames; one row per frame).
        clip_len: frames per window (null: the backbone spec's clip length).
        stride: frames between window starts (null: ``clip_len``).
        frame_stride: frames between sampled frames inside a window (null: the spec's).
        resize: short side frames are resized to (null: the spec's).
        crop: side of the square centre crop (null: the spec's).
        fps: ``"spec"`` (the backbone's target fps), ``"source"`` (keep each video's rate) or a number.
        views: ``center``, ``3crop``, ``flip``, ``3crop+flip``.
        last: last partial window policy: ``pad``, ``drop``, ``shift``.
        num_segments: segments of the ``tsn`` sampler; frames per video of ``static``.
        keep_time: one row per output time step (frame-level features) instead of one per window.
        pool: ``avg`` (vectors) or ``none`` (``(C, H, W)`` maps).
        reverse: read each window's frames in reverse order (time-reversed clips, e.g. for motion
            contrast or an arrow-of-time probe); recorded in the set's sampling provenance.
        global_frames: sampler ``glad``: frame position (in each local clip) of each global view
            (``[3]`` as released; more positions store more global views as augmentation).
        blend_dir: BackgroundBlend (GLAD): folder of ``<video_id>.jpg`` median frames; every decoded
            frame becomes ``blend_alpha * x + (1 - blend_alpha) * median(other video)`` with
            probability ``blend_p`` per video, seeded by ``blend_seed`` (recorded in provenance).
        blend_p / blend_alpha / blend_seed: see ``blend_dir`` (0.25 / 0.75 released).
        modality: ``rgb``, ``flow`` or ``auto`` (flow when the backbone takes 2 channels).
        flow: compute dense optical flow in memory from the decoded RGB frames (``dis``,
            ``farneback`` or ``tvl1``; ``featbank.extract.flow``) and feed it to the flow
            stream; "" reads flow from x_/y_ frame folders. Recorded in the provenance.
        flow_bound: flow is clipped to +-this many pixels and scaled to [-1, 1].
        decoder: decoding backend (``auto``, ``decord``, ``pyav``, ``folder``, ``image``).
        dtype: stored dtype (``float16``, ``float32``, ``bfloat16``).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        runtime: ``auto`` (OpenVINO on CPU when installed, torch on CUDA), ``torch`` or
            ``openvino`` (``featbank.extract.engines``).
        precision: ``auto`` (bf16 where the device computes it natively and a probe clip agrees
            with fp32 at cosine >= 0.999, else fp32), ``fp32``, ``bf16`` or ``fp16``.
        workers: decoding worker processes (0 decodes in the main process).
        start_method: how workers start: ``forkserver`` (default: safe when the job already
            runs threads - the Zarr store's I/O loop, gloo, OpenMP), ``fork`` (fastest start) or
            ``spawn``.
        prefetch: chunks queued per worker.
        batch_size: windows per model call (windows of several videos share a batch); 0 (default)
            picks per engine: 1 for OpenVINO on the CPU (no copy to assemble a batch, and as fast
            or faster per window), 8 for torch.
        chunk_frames: most source frames a worker decodes at once for one video.
        timeout: per-call decode timeout in seconds (0 disables the decoder worker process).
        shard: ``"I/N"``; null takes ``SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT`` when set.
        limit: only the first ``limit`` manifest entries (null: all).
        verify: after the run, re-extract this many random committed videos and compare.
        split: split name written into every video's metadata.
        domain: domain name written into every video's metadata.
        threads: torch intra-op threads of the model process (0: torch's default).
        seed: seed of random-init weights and of ``verify``'s sample.
        fsync: flush every video's rows and commit record to disk before the next one (a
            committed video then survives a power loss, not only a killed process).
        compact: when the job ends, consolidate the feature set's writer segments into the
            read-optimised layout (rank 0, after every rank is done). Skipped for one task of
            an array job (``shard``), where other tasks may still write: run
            ``featbank store compact`` once the whole array has finished.
    """

    manifest: str = ""
    manifest_format: ManifestFormat = "auto"
    root: str | None = None
    store: str = ""
    feature_set: str = ""
    backbone: str = "i3d-rgb-k400"
    weights: str | None = "default"
    endpoint: str | None = None
    sampler: SamplerName = "sliding"
    clip_len: int | None = None
    stride: int | None = None
    frame_stride: int | None = None
    resize: int | None = None
    crop: int | None = None
    fps: float | Literal["spec", "source"] = "spec"
    views: ViewName = "center"
    last: LastPolicy = "pad"
    num_segments: int = 8
    keep_time: bool = False
    pool: PoolName = "avg"
    reverse: bool = False
    global_frames: tuple[int, ...] = (3,)
    blend_dir: str | None = None
    blend_p: float = 0.25
    blend_alpha: float = 0.75
    blend_seed: int = 0
    modality: Modality = "auto"
    flow: FlowAlgorithm = ""
    flow_bound: float = 20.0
    decoder: DecoderName = "auto"
    dtype: StoreDtype = "float16"
    device: Device = "auto"
    runtime: Runtime = "auto"
    precision: Precision = "auto"
    workers: int = 2
    start_method: StartMethod = "forkserver"
    prefetch: int = 2
    batch_size: int = 0
    chunk_frames: int = 64
    timeout: float = 120.0
    shard: str | None = None
    limit: int | None = None
    verify: int = 0
    split: str = ""
    domain: str = ""
    threads: int = 0
    seed: int = 0
    fsync: bool = True
    compact: bool = True

    def __post_init__(self) -> None:
        for key, allowed in _literal_fields().items():
            value = getattr(self, key)
            if value not in allowed:
                raise ValueError(f"{key}: {value!r} is not one of {list(allowed)}")
        if isinstance(self.fps, str) and self.fps not in ("spec", "source"):
            raise ValueError(f"fps: {self.fps!r} must be 'spec', 'source' or a positive number")
        if not isinstance(self.fps, str) and not self.fps > 0:
            raise ValueError(f"fps: {self.fps!r} must be positive")
        for key in ("clip_len", "stride", "frame_stride", "resize", "crop", "limit"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise ValueError(f"{key}: must be >= 1, got {v}")
        for key in ("workers", "prefetch", "verify", "threads"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key}: must be >= 0, got {getattr(self, key)}")
        if self.batch_size < 0:
            raise ValueError(f"batch_size: must be >= 1, or 0 to pick per engine, got {self.batch_size}")
        if self.chunk_frames < 1 or self.num_segments < 1:
            raise ValueError("chunk_frames and num_segments must be >= 1")
        if self.flow and self.modality == "rgb":
            raise ValueError(f"flow: {self.flow!r} computes optical flow for a flow stream; use modality flow or auto")
        if not self.flow_bound > 0:
            raise ValueError(f"flow_bound: must be > 0 pixels, got {self.flow_bound}")
        if self.timeout < 0:
            raise ValueError(f"timeout: must be >= 0 seconds, got {self.timeout}")
        object.__setattr__(self, "global_frames", tuple(self.global_frames))  # a JSON record gives a list
        if not (0.0 <= self.blend_p <= 1.0 and 0.0 <= self.blend_alpha <= 1.0):
            raise ValueError(f"blend_p / blend_alpha: must be in [0, 1], got {self.blend_p} / {self.blend_alpha}")
        if self.keep_time and self.sampler in ("whole", "static"):
            raise ValueError(f"keep_time: not supported with sampler {self.sampler!r} "
                             "(whole: rows per window would vary; static: every time step is the same frame)")
        if isinstance(self.weights, str) and self.weights.lower() in ("none", "null", ""):
            raise ValueError(f"weights: {self.weights!r}; random weights are spelled 'random'")
        if self.resize is not None and self.crop is not None and self.crop > self.resize:
            raise ValueError(f"crop: {self.crop} is larger than resize {self.resize} (the short side frames are resized to)")
        if self.shard:
            from ..sharding import parse_shard

            parse_shard(self.shard)

    def replace(self, **kw: Any) -> "ExtractConfig":
        return dataclasses.replace(self, **kw)

    def to_record(self) -> dict[str, Any]:
        """The resolved config as JSON-compatible data (written into the set's provenance)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "ExtractConfig":
        """Rebuild a config from ``to_record`` data (e.g. a feature set's provenance).

        Raises:
            ExtractError: when the record is missing or holds keys this version does not know.
        """
        from ..errors import ExtractError

        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(record) - known)
        if not record or unknown:
            why = (f"it holds keys this featbank version does not know: {unknown}" if unknown
                   else "it records no extraction config (the set was not made by `featbank extract`)")
            raise ExtractError(f"cannot rebuild the extraction job from the set's provenance: {why}")
        return cls(**dict(record))

    def sampling_for(self, spec: BackboneSpec, endpoint: str | None = None) -> Sampling:
        """The resolved ``Sampling`` for a backbone (spec defaults filled in)."""
        clip_len = self.clip_len or spec.clip_len
        if self.fps == "spec":
            fps = spec.target_fps
        elif self.fps == "source":
            fps = None
        else:
            fps = float(self.fps)
        return Sampling(
            sampler=self.sampler,
            clip_len=clip_len,
            stride=self.stride or clip_len,
            frame_stride=self.frame_stride or spec.frame_stride,
            fps=fps,
            views=self.views,
            last=self.last,
            num_segments=self.num_segments,
            endpoint=endpoint if endpoint is not None else self.endpoint,
            keep_time=self.keep_time,
            pool=self.pool,
            reverse=self.reverse,
            global_frames=tuple(self.global_frames),
        )


def default_set_name(backbone: str, sampling: Sampling) -> str:
    """``BACKBONE/ENDPOINT/WINDOW[/VIEWS]``, e.g. ``i3d-rgb-k400/Mixed_5c/c64s32``.

    WINDOW is ``c{clip}s{stride}`` (sliding), ``tsn{segments}x{clip}``, ``dense{clip}`` or
    ``whole``, with ``t`` appended for time-preserving rows and ``map`` for unpooled maps.
    """
    s = sampling
    window = {
        "sliding": f"c{s.clip_len}s{s.stride}",
        "tsn": f"tsn{s.num_segments}x{s.clip_len}",
        "dense": f"dense{s.clip_len}",
        "whole": "whole",
        "static": f"static{s.num_segments}x{s.clip_len}",
        "glad": f"glad{s.num_segments}x{s.clip_len}",
    }[s.sampler]
    window += ("t" if s.keep_time else "") + ("map" if s.pool == "none" else "") + ("rev" if s.reverse else "")
    parts = [backbone, s.endpoint or "default", window]
    if s.views != "center":
        parts.append(s.views)
    return "/".join(parts)


@functools.lru_cache(maxsize=None)
def _literal_fields() -> dict[str, tuple[Any, ...]]:
    """``{field: allowed values}`` for every field annotated with a ``Literal`` (or an optional one)."""
    hints = typing.get_type_hints(ExtractConfig)
    out = {}
    for f in dataclasses.fields(ExtractConfig):
        hint = hints[f.name]
        if get_origin(hint) is Literal:
            out[f.name] = get_args(hint)
        elif get_origin(hint) in (Union, getattr(__import__("types"), "UnionType", Union)):
            args = get_args(hint)
            lits = [a for a in args if get_origin(a) is Literal]
            if lits and all(get_origin(a) is Literal or a is type(None) for a in args):
                out[f.name] = tuple(v for a in lits for v in get_args(a)) + ((None,) if type(None) in args else ())
    return out


def resolve_modality(cfg: ExtractConfig, spec: BackboneSpec) -> str:
    """``cfg.modality``, with ``auto`` meaning flow for two-channel backbones, else rgb."""
    if cfg.modality != "auto":
        return cfg.modality
    return "flow" if (spec.in_channels == 2 or cfg.flow) else "rgb"


def flow_settings(cfg: ExtractConfig):
    """The ``FlowConfig`` of a job that computes flow in memory from RGB (None: it does not)."""
    if not cfg.flow:
        return None
    from ..flow import FlowConfig

    return FlowConfig(cfg.flow, bound=cfg.flow_bound)
