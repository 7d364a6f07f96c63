"""The batch extraction job: a manifest of videos -> one feature set of a store.

``run_extraction(cfg)`` is the only loop in extract/ that touches files (GUIDE rule 5):

1. read the manifest, keep this process's shard (``--shard I/N`` or the SLURM array task,
   times the torchrun rank), balanced by video duration;
2. build the backbone on ``cfg.device`` (CUDA + bfloat16 autocast when present);
3. create (or reopen) the feature set with full provenance and skip committed videos;
4. decode + preprocess in DataLoader workers (``_stream.WindowStream``), pack windows of
   several videos into full batches (``_packer.ClipPacker``), write each video atomically
   once all its windows are done; a failing video goes to the store's failure log and the
   job carries on;
5. return an ``ExtractSummary`` (exit code 2 when any video failed).

``verify_extraction`` re-extracts a random sample of committed videos and reports the
largest difference against the stored rows.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from featbank.store.schema import BackboneSpec, FeatureSetInfo, VideoMeta, VideoRows

from .features import LAST_POLICIES, POOLS, SAMPLER_NAMES, VIEW_NAMES, Sampling, assemble_rows, run_model
from .sharding import distributed_rank, resolve_shard, select_shard

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
START_METHODS = ("forkserver", "fork", "spawn")
MODALITIES = ("auto", "rgb", "flow")
STORE_DTYPES = ("float16", "float32", "bfloat16")
MANIFEST_FORMATS = ("auto", "path_label", "csv", "mmaction", "tree")

# Relative tolerance of ``verify`` per stored dtype (rounding of the stored value), and the
# extra allowance when the features were computed under bfloat16 autocast.
VERIFY_RTOL = {"float32": 1e-4, "float16": 2e-3, "bfloat16": 1.6e-2}
VERIFY_BF16_RTOL = 5e-2


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
        weights: ``"default"`` (the backbone's published weights), ``"random"``/null, or a file.
        endpoint: backbone endpoint (null: the default, last endpoint).
        sampler: ``sliding``, ``tsn``, ``dense`` or ``whole``.
        clip_len: frames per window (null: the backbone spec's clip length).
        stride: frames between window starts (null: ``clip_len``).
        frame_stride: frames between sampled frames inside a window (null: the spec's).
        resize: short side frames are resized to (null: the spec's).
        crop: side of the square centre crop (null: the spec's).
        fps: ``"spec"`` (the backbone's target fps), ``"source"`` (keep each video's rate) or a number.
        views: ``center``, ``3crop``, ``flip``, ``3crop+flip``.
        last: last partial window policy: ``pad``, ``drop``, ``shift``.
        num_segments: segments of the ``tsn`` sampler.
        keep_time: one row per output time step (frame-level features) instead of one per window.
        pool: ``avg`` (vectors) or ``none`` (``(C, H, W)`` maps).
        modality: ``rgb``, ``flow`` or ``auto`` (flow when the backbone takes 2 channels).
        decoder: decoding backend (``auto``, ``decord``, ``pyav``, ``folder``, ``image``).
        dtype: stored dtype (``float16``, ``float32``, ``bfloat16``).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        precision: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``fp32`` or ``bf16``.
        workers: DataLoader decoding workers (0 decodes in the main process).
        start_method: how workers start: ``forkserver`` (default: safe when the job already
            runs threads - the Zarr store's I/O loop, gloo, OpenMP), ``fork`` (fastest start) or
            ``spawn``.
        prefetch: chunks queued per worker.
        batch_size: windows per model call (windows of several videos share a batch).
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
    manifest_format: str = "auto"
    root: str | None = None
    store: str = ""
    feature_set: str = ""
    backbone: str = "i3d-rgb-k400"
    weights: str | None = "default"
    endpoint: str | None = None
    sampler: str = "sliding"
    clip_len: int | None = None
    stride: int | None = None
    frame_stride: int | None = None
    resize: int | None = None
    crop: int | None = None
    fps: float | str = "spec"
    views: str = "center"
    last: str = "pad"
    num_segments: int = 8
    keep_time: bool = False
    pool: str = "avg"
    modality: str = "auto"
    decoder: str = "auto"
    dtype: str = "float16"
    device: str = "auto"
    precision: str = "auto"
    workers: int = 2
    start_method: str = "forkserver"
    prefetch: int = 2
    batch_size: int = 8
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
        choices = {
            "manifest_format": MANIFEST_FORMATS,
            "sampler": SAMPLER_NAMES,
            "views": VIEW_NAMES,
            "last": LAST_POLICIES,
            "pool": POOLS,
            "modality": MODALITIES,
            "dtype": STORE_DTYPES,
            "device": DEVICES,
            "precision": PRECISIONS,
            "start_method": START_METHODS,
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key}: {getattr(self, key)!r} is not one of {list(allowed)}")
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
        if self.batch_size < 1 or self.chunk_frames < 1 or self.num_segments < 1:
            raise ValueError("batch_size, chunk_frames and num_segments must be >= 1")
        if self.timeout < 0:
            raise ValueError(f"timeout: must be >= 0 seconds, got {self.timeout}")
        if self.keep_time and self.sampler == "whole":
            raise ValueError("keep_time: not supported with sampler 'whole' (rows per window would vary)")
        if self.shard:
            from .sharding import parse_shard

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
        from .errors import ExtractError

        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(record) - known)
        if not record or unknown:
            raise ExtractError(
                f"cannot rebuild the extraction config from the set's provenance "
                f"({'unknown keys ' + str(unknown) if unknown else 'no config recorded'}); pass a config"
            )
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
    }[s.sampler]
    window += ("t" if s.keep_time else "") + ("map" if s.pool == "none" else "")
    parts = [backbone, s.endpoint or "default", window]
    if s.views != "center":
        parts.append(s.views)
    return "/".join(parts)


@dataclass
class ExtractSummary:
    """What one process of the job did.

    Attributes:
        store: store path.
        feature_set: feature-set name.
        shard: ``(index, count)`` of this process (SLURM shard times torchrun rank).
        n_videos: videos in this process's shard.
        n_skipped: of those, already committed before the run (resume).
        n_written: videos written by this run.
        n_rows: rows written.
        n_frames: source frames decoded.
        seconds: wall time of the extraction loop.
        wait_seconds: part of it the model side spent waiting for decoded windows.
        failures: ``(video_id, kind, message)`` of each failed video.
        verify: the ``VerifyReport`` when ``cfg.verify`` > 0.
    """

    store: str
    feature_set: str
    shard: tuple[int, int] = (0, 1)
    n_videos: int = 0
    n_skipped: int = 0
    n_written: int = 0
    n_rows: int = 0
    n_frames: int = 0
    compacted: bool = False
    seconds: float = 0.0
    wait_seconds: float = 0.0
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    verify: "VerifyReport | None" = None

    @property
    def exit_code(self) -> int:
        """2 when any video failed (or verification exceeded its tolerance), else 0."""
        if self.failures:
            return 2
        if self.verify is not None and not self.verify.ok:
            return 1
        return 0

    def format(self) -> str:
        """Human-readable summary naming every failure."""
        rate = self.n_frames / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"feature set {self.feature_set!r} in {self.store} (shard {self.shard[0]}/{self.shard[1]}): "
            f"{self.n_written} written, {self.n_skipped} already committed, {len(self.failures)} failed "
            f"of {self.n_videos} videos; {self.n_rows} rows, {self.n_frames} frames in {self.seconds:.1f}s "
            f"({rate:.1f} frames/s, {self.wait_seconds:.1f}s waiting for decoding)"
            + ("; compacted" if self.compacted else "")
        ]
        for vid, kind, msg in self.failures:
            lines.append(f"  FAILED {vid} [{kind}]: {msg}")
        if self.verify is not None:
            lines.append(self.verify.format())
        return "\n".join(lines)


@dataclass
class VerifyReport:
    """Re-extraction check of committed videos.

    Attributes:
        feature_set: set name.
        video_ids: videos checked.
        max_abs_diff: largest absolute difference of any row value (0 when none checked).
        tolerance: the allowed maximum for the set's dtype and precision.
        per_video: max abs difference per video.
        failures: videos that could not be re-extracted.
    """

    feature_set: str
    video_ids: list[str]
    max_abs_diff: float
    tolerance: float
    per_video: dict[str, float] = field(default_factory=dict)
    failures: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures and self.max_abs_diff <= self.tolerance

    def format(self) -> str:
        verdict = "OK" if self.ok else "MISMATCH"
        lines = [
            f"verify {self.feature_set!r}: {len(self.video_ids)} videos re-extracted, "
            f"max abs diff {self.max_abs_diff:.3g} (tolerance {self.tolerance:.3g}) {verdict}"
        ]
        lines += [f"  {v}: {d:.3g}" for v, d in self.per_video.items() if d > self.tolerance]
        lines += [f"  FAILED {v} [{k}]: {m}" for v, k, m in self.failures]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# building blocks


def resolve_device(name: str):
    """``auto`` -> CUDA when available else CPU; ``cuda`` without a GPU is an error.

    Under torchrun the CUDA device is ``cuda:LOCAL_RANK``.
    """
    import torch

    from .errors import ExtractError

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
    from .backbones import create_backbone

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
            "modality": _modality(cfg, spec),
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


def _modality(cfg: ExtractConfig, spec: BackboneSpec) -> str:
    if cfg.modality != "auto":
        return cfg.modality
    return "flow" if spec.in_channels == 2 else "rgb"


def _duration_weights(tasks: Sequence[Any], decoder: str, modality: str) -> list[float]:
    """Cost of each video for shard balancing: manifest frame counts when every entry has
    one, else the probed duration in seconds (0 for unreadable inputs, which fail fast)."""
    if tasks and all(t.n_frames > 0 for t in tasks):
        return [float(t.n_frames) for t in tasks]
    from .decode import open_video

    out = []
    for t in tasks:
        try:
            with open_video(t.path, backend=decoder, modality=modality) as src:
                out.append(float(src.info.duration) if math.isfinite(src.info.duration) else 0.0)
        except Exception:  # an unreadable video costs nothing to (fail to) extract
            out.append(0.0)
    return out


def load_tasks(cfg: ExtractConfig):
    """Manifest entries as ``VideoTask`` s (``limit`` applied), in manifest order."""
    from .manifest import read_manifest
    from ._stream import VideoTask

    if not cfg.manifest:
        from .errors import ExtractError

        raise ExtractError("no manifest given: set manifest in the config or pass --manifest")
    entries = read_manifest(cfg.manifest, root=cfg.root, fmt=cfg.manifest_format)
    if cfg.limit is not None:
        entries = entries[: cfg.limit]
    return [
        VideoTask(
            key=i,
            video_id=e.video_id,
            path=os.path.abspath(e.path),
            labels=tuple(e.labels),
            offset=e.offset,
            n_frames=e.n_frames,
            split=cfg.split,
            domain=cfg.domain,
        )
        for i, e in enumerate(entries)
    ]


# ---------------------------------------------------------------------------------------
# the loop


@dataclass
class _Pipeline:
    """Model-side state shared by ``run_extraction`` and ``verify_extraction``."""

    model: Any
    spec: BackboneSpec
    sampling: Sampling
    device: Any
    autocast_dtype: Any
    rows_per_window: int
    row_shape: tuple[int, ...]
    modality: str


def build_pipeline(cfg: ExtractConfig, *, probe: bool = True) -> _Pipeline:
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
    pipe = _Pipeline(model, spec, sampling, device, autocast, 0, (), _modality(cfg, spec))
    if probe:
        probe_pipeline(pipe)
    return pipe


def probe_pipeline(pipe: _Pipeline) -> None:
    """Fill ``rows_per_window`` and ``row_shape`` from one dummy window."""
    rows_per_window, feat_shape = probe_rows(pipe.model, pipe.spec, pipe.sampling, pipe.device, pipe.autocast_dtype)
    pipe.rows_per_window = rows_per_window
    pipe.row_shape = (pipe.sampling.n_views, *feat_shape) if pipe.sampling.n_views > 1 else feat_shape


def _open_stream(cfg: ExtractConfig, pipe: _Pipeline, tasks: Sequence[Any], workers: int | None = None):
    """Start decoding ``tasks`` (DataLoader workers begin at once); returns the item iterator."""
    from torch.utils.data import DataLoader

    from ._stream import StreamOptions, WindowStream, worker_init

    opts = StreamOptions(
        spec=pipe.spec,
        sampling=pipe.sampling,
        modality=pipe.modality,
        decoder=cfg.decoder,
        timeout_s=cfg.timeout,
        chunk_frames=cfg.chunk_frames,
    )
    n_workers = min(cfg.workers if workers is None else workers, len(tasks))
    context = None
    if n_workers:
        import multiprocessing

        context = multiprocessing.get_context(cfg.start_method)
        if cfg.start_method == "forkserver":  # workers fork from a server that has these imported
            context.set_forkserver_preload(["torch", "featbank.extract._stream", "featbank.extract.transforms"])
    loader = DataLoader(
        WindowStream(tasks, opts),
        batch_size=None,
        num_workers=n_workers,
        pin_memory=pipe.device.type == "cuda",
        prefetch_factor=cfg.prefetch if n_workers else None,
        worker_init_fn=worker_init if n_workers else None,
        multiprocessing_context=context,
    )
    return iter(loader)


def _consume(
    cfg: ExtractConfig,
    pipe: _Pipeline,
    tasks: Sequence[Any],
    items: Any,
    on_rows: Callable[[Any, VideoRows, VideoMeta], None],
    on_failure: Callable[[Any, str, str], None],
    on_frames: Callable[[int], None] = lambda n: None,
) -> float:
    """Batch the stream's windows across videos, run the model, hand finished rows over.

    Returns:
        Seconds the model side waited for decoded windows (0 when decoding kept up).
    """
    import torch

    from ._packer import ClipPacker
    from ._stream import ClipChunk, VideoEnd, VideoFailed

    by_key = {t.key: t for t in tasks}
    cuda = pipe.device.type == "cuda"

    def run_batch(clips: torch.Tensor) -> torch.Tensor:
        # (B, V, C, L, h, w) -> (B, R, V, *F)
        return run_model(pipe.model, clips.to(pipe.device, non_blocking=cuda), pipe.sampling,
                         autocast_dtype=pipe.autocast_dtype)

    def done(end: VideoEnd, outputs: torch.Tensor | None) -> None:
        task = by_key[end.key]
        if outputs is None:  # no window: an empty video keeps its metadata with zero rows
            feats = np.zeros((0, *pipe.row_shape), np.float32)
            rows = VideoRows(feats, np.zeros(0), np.zeros(0), np.zeros((0, 2), np.int64))
        else:
            rows = assemble_rows(outputs, end.layout(pipe.rows_per_window), pipe.sampling.n_views)
        try:
            on_rows(task, rows, end.meta)
        except Exception as exc:  # a rejected write (non-finite rows, conflict) fails this video only
            on_failure(task, type(exc).__name__, str(exc))

    packer = ClipPacker(run_batch, cfg.batch_size, done)
    waited = 0.0
    while True:
        t0 = time.perf_counter()
        item = next(items, None)
        waited += time.perf_counter() - t0
        if item is None:
            break
        if isinstance(item, ClipChunk):
            packer.add(item)
        elif isinstance(item, VideoEnd):
            on_frames(item.n_frames_decoded)
            packer.end(item)
        elif isinstance(item, VideoFailed):
            packer.drop(item.key)
            on_failure(by_key[item.key], item.kind, item.message)
    packer.flush()
    return waited


def _iterate(
    cfg: ExtractConfig,
    pipe: _Pipeline,
    tasks: Sequence[Any],
    on_rows: Callable[[Any, VideoRows, VideoMeta], None],
    on_failure: Callable[[Any, str, str], None],
    on_frames: Callable[[int], None] = lambda n: None,
    workers: int | None = None,
) -> float:
    """Decode ``tasks`` in workers and extract them (``_open_stream`` + ``_consume``)."""
    return _consume(cfg, pipe, tasks, _open_stream(cfg, pipe, tasks, workers), on_rows, on_failure, on_frames)


def _open_store(path: str, mode: str, fsync: bool = False):
    from featbank.store import open_store

    return open_store(path, mode, fsync=fsync)


def _init_distributed() -> tuple[int, int, Any]:
    """torchrun rank/world size; a gloo process group (for barriers) when WORLD_SIZE > 1."""
    rank, world = distributed_rank()
    if world == 1:
        return rank, world, None
    import torch.distributed as dist

    if not dist.is_available() or "MASTER_ADDR" not in os.environ:
        return rank, world, None
    if dist.is_initialized():
        return rank, world, dist
    # gloo is enough for the two barriers (set creation, end of run), on CPU and GPU alike
    dist.init_process_group("gloo", rank=rank, world_size=world)
    return rank, world, _OwnedGroup(dist)


class _OwnedGroup:
    """A process group this job created (destroyed at the end of the run)."""

    def __init__(self, dist: Any) -> None:
        self.dist = dist

    def barrier(self) -> None:
        self.dist.barrier()

    def destroy(self) -> None:
        self.dist.destroy_process_group()


def run_extraction(cfg: ExtractConfig, *, progress: bool = True, store: Any = None) -> ExtractSummary:
    """Extract every video of ``cfg.manifest`` (this process's shard) into ``cfg.store``.

    Args:
        cfg: the job configuration.
        progress: show a tqdm bar (videos/s, frames/s, ETA) on a terminal.
        store: an open ``FeatureStore`` to write into instead of opening ``cfg.store``.

    Returns:
        The ``ExtractSummary``; ``summary.exit_code`` is 2 when any video failed.

    Raises:
        ManifestError: a malformed manifest (before any work).
        ConfigError / ExtractError / StoreError: bad configuration, backbone, weights or store.
    """
    tasks_all = load_tasks(cfg)  # manifest errors surface before the model is built
    rank, world, dist = _init_distributed()
    try:
        return _run_shard(cfg, tasks_all, rank, world, dist, progress=progress, store=store)
    finally:
        if isinstance(dist, _OwnedGroup):
            dist.destroy()


def _run_shard(cfg: ExtractConfig, tasks_all: list, rank: int, world: int, dist: Any, *, progress: bool,
               store: Any) -> ExtractSummary:
    """``run_extraction`` for one process: its shard of ``tasks_all`` into the store."""
    s_index, s_count = resolve_shard(cfg.shard)
    index, count = s_index * world + rank, s_count * world
    pipe = build_pipeline(cfg, probe=False)
    if count > 1:
        weights = _duration_weights(tasks_all, cfg.decoder, pipe.modality)
        tasks = [tasks_all[i] for i in select_shard(weights, index, count)]
    else:
        tasks = tasks_all
    name = cfg.feature_set or default_set_name(cfg.backbone, pipe.sampling)

    own_store = store is None
    fstore = _open_store(cfg.store, "a", fsync=cfg.fsync) if own_store else store
    try:
        committed = set(fstore.open_set(name, allow_stale=True).video_ids()) if name in fstore.feature_sets() else set()
        todo = [t for t in tasks if t.video_id not in committed]
        # decoding workers start now and overlap the probe forward pass and the set creation
        items = _open_stream(cfg, pipe, todo) if todo else iter(())
        probe_pipeline(pipe)
        info = set_info(cfg, pipe.spec, pipe.sampling, pipe.row_shape, name)
        if rank == 0:
            fstore.set_backbone_weights(cfg.backbone, pipe.spec.weights_id)
            fs = fstore.create_set(info, exist_ok=True)
        if dist is not None:
            dist.barrier()
        if rank != 0:
            fs = fstore.create_set(info, exist_ok=True)
        summary = ExtractSummary(
            store=str(getattr(fstore, "path", cfg.store)), feature_set=name, shard=(index, count),
            n_videos=len(tasks), n_skipped=len(tasks) - len(todo),
        )
        bar = _progress_bar(len(todo), progress and (rank == 0 or dist is None), name)
        t0 = time.perf_counter()

        def on_rows(task, rows: VideoRows, meta: VideoMeta) -> None:
            fs.write_video(rows, meta)
            summary.n_written += 1
            summary.n_rows += len(rows)
            _tick(bar, summary, t0)

        def on_failure(task, kind: str, message: str) -> None:
            fstore.record_failure(name, task.video_id, kind, message)
            summary.failures.append((task.video_id, kind, message))
            _tick(bar, summary, t0)

        def on_frames(n: int) -> None:
            summary.n_frames += n

        summary.wait_seconds = _consume(cfg, pipe, todo, items, on_rows, on_failure, on_frames)
        summary.seconds = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        close_writer = getattr(fs, "close", None)
        if close_writer is not None:  # release this process's writer segment before rank 0 compacts
            close_writer()
        if dist is not None:
            dist.barrier()
        if cfg.compact and rank == 0 and s_count == 1 and hasattr(fs, "compact"):
            summary.compacted = bool(fs.compact())
        if cfg.verify and rank == 0:
            summary.verify = verify_extraction(fstore, name, cfg.verify, seed=cfg.seed, cfg=cfg, pipe=pipe)
    finally:
        if own_store:
            fstore.close()
    return summary


def _progress_bar(total: int, enabled: bool, name: str):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="video", desc=f"extract {name}", file=sys.stderr,
                disable=not sys.stderr.isatty(), dynamic_ncols=True)


def _tick(bar, summary: ExtractSummary, t0: float) -> None:
    if bar is None:
        return
    elapsed = max(time.perf_counter() - t0, 1e-9)
    bar.set_postfix(frames_s=f"{summary.n_frames / elapsed:.1f}", failed=len(summary.failures), refresh=False)
    bar.update(1)


# ---------------------------------------------------------------------------------------
# verification


def _manifest_tasks_by_id(cfg: ExtractConfig) -> dict[str, Any]:
    """The config's manifest entries by video id ({} when the manifest is gone)."""
    if not cfg.manifest or not os.path.exists(cfg.manifest):
        return {}
    try:
        return {t.video_id: t for t in load_tasks(cfg.replace(limit=None))}
    except Exception:  # a manifest edited since the run: fall back to the stored sources
        return {}


def verify_tolerance(dtype: str, scale: float, autocast: bool) -> float:
    """Largest acceptable abs difference for values of magnitude ``scale`` stored as ``dtype``."""
    rtol = VERIFY_RTOL[dtype] + (VERIFY_BF16_RTOL if autocast else 0.0)
    return rtol * max(1.0, scale)


def verify_extraction(
    store: Any,
    set_name: str,
    n: int,
    *,
    seed: int = 0,
    cfg: ExtractConfig | None = None,
    pipe: _Pipeline | None = None,
) -> VerifyReport:
    """Re-extract ``n`` random committed videos of a set and compare with the stored rows.

    Args:
        store: an open ``FeatureStore`` or a store path.
        set_name: the feature set.
        n: number of videos (all when fewer are committed).
        seed: sample seed.
        cfg: the job's config (default: the resolved config recorded in the set's provenance).
        pipe: a built pipeline to reuse (the job passes its own).

    Returns:
        A ``VerifyReport``; ``ok`` is False above the dtype's tolerance.
    """
    from ._stream import VideoTask

    own = isinstance(store, (str, os.PathLike))
    fstore = _open_store(os.fspath(store), "r") if own else store
    try:
        fs = fstore.open_set(set_name, allow_stale=True)
        if cfg is None:
            cfg = ExtractConfig.from_record(fs.info.sampling.get("config", {}))
        if pipe is None:
            pipe = build_pipeline(cfg)
        ids = fs.video_ids()
        rng = np.random.default_rng(seed)
        pick = sorted(rng.choice(len(ids), size=min(n, len(ids)), replace=False).tolist()) if ids else []
        listed = _manifest_tasks_by_id(cfg)  # keeps manifest offsets (mmaction segments)
        tasks = []
        for k, i in enumerate(pick):
            meta = fs.meta(ids[i])
            base = listed.get(meta.video_id) or VideoTask(key=k, video_id=meta.video_id, path=meta.source)
            tasks.append(dataclasses.replace(base, key=k, labels=meta.labels, split=meta.split, domain=meta.domain))
        report = VerifyReport(set_name, [t.video_id for t in tasks], 0.0, 0.0)
        if pipe.spec.weights_id != fs.info.weights_id:
            report.failures.append(("*", "weights", f"set was extracted with weights {fs.info.weights_id!r}, "
                                    f"the rebuilt backbone has {pipe.spec.weights_id!r}"))
            return report
        scale = 0.0

        def on_rows(task, rows: VideoRows, meta: VideoMeta) -> None:
            nonlocal scale
            stored = fs.read(task.video_id)
            if stored.feats.shape != rows.feats.shape:
                report.failures.append((task.video_id, "shape", f"stored {stored.feats.shape} vs re-extracted {rows.feats.shape}"))
                return
            a = np.asarray(stored.feats, np.float64)
            b = np.asarray(rows.feats, np.float64)
            diff = float(np.abs(a - b).max()) if a.size else 0.0
            if not (np.array_equal(stored.starts, rows.starts) and np.array_equal(stored.frame_idx, rows.frame_idx)):
                report.failures.append((task.video_id, "time_grid", "start times or frame indices differ"))
            report.per_video[task.video_id] = diff
            report.max_abs_diff = max(report.max_abs_diff, diff)
            scale = max(scale, float(np.abs(a).max()) if a.size else 0.0)

        def on_failure(task, kind: str, message: str) -> None:
            report.failures.append((task.video_id, kind, message))

        if tasks:
            _iterate(cfg, pipe, tasks, on_rows, on_failure, workers=min(cfg.workers, 1))
        report.tolerance = verify_tolerance(fs.info.dtype, scale, pipe.autocast_dtype is not None)
        return report
    finally:
        if own:
            fstore.close()
