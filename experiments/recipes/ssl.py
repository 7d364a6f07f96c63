"""Multi-level self-supervised pretraining and its evaluation (``recipe: ssl``).

The algorithm box of Qian et al. (ICCV 2021) with the losses of ``featbank.heads.ssl``:

1. :func:`pretrain_pixels` (``mode: pixels``): for each video draw 32 frames at a random rate in
   ``[1, 3]`` from a random start, as released; views = frames 0:16, 16:32 and every 2nd of
   0:32, each with its own random resized crop and flip (consistent over the clip's frames)
   and colour jitter; the time-reversed copies of the two local views feed the motion
   contrast. R3D-18's ``layer2/3/4`` maps, spatially pooled with time kept, go through the
   projections; Adam 1e-3, weight decay 1e-5. ``torchrun`` with any world size: each rank
   takes its share of every batch and the projections are gathered across ranks (negatives
   and codes from the whole batch; the gradient is the one of the gathered batch).
2. :func:`train_cached` (``mode: cached``): the same losses on cached multi-level features
   (three feature sets, one per level, time kept) with only the projections trainable. The
   backbone is frozen, so this can show which levels carry the information each loss asks for
   and how the projections fit; it cannot improve the features themselves.
3. Evaluation on cached features: a linear probe (``featbank train --head linear``, several
   seeds) and retrieval Recall@1/5/10/20 through a faiss bank (test videos query the train
   videos by cosine; every test video counts): :func:`evaluate_set`.
4. The temporal-cue CAM: :func:`fit_temporal_cue` and :func:`render_temporal_cam`.

:func:`run_demo` chains generation of the motion benchmark, a short pretraining, extraction,
evaluation of random-init vs pretrained (vs supervised K400 I3D) features and the CAM pictures.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from featbank.experiments.config import ConfigError, load_config, save_config
from featbank.experiments.fit import OptimConfig, deterministic, fit, seed_everything
from featbank.heads.ssl import LEVELS, MLOWeights, MultiLevelSSLHead, PrototypeQueue, TemporalCueHead

# Backbone endpoint of each level (R3D-18).
LEVEL_ENDPOINTS: dict[str, str] = {"low": "layer2", "mid": "layer3", "high": "layer4"}


@dataclass(frozen=True)
class AugmentConfig:
    """View augmentation (released: random resized crop and flip consistent over a clip, colour jitter).

    Attributes:
        crop_scale: range of the crop's area fraction.
        flip: probability of a horizontal flip (whole clip).
        brightness, contrast, saturation: colour-jitter strengths (0.5 as released), one draw per clip.
        gray: probability that a clip is turned grey.
    """

    crop_scale: tuple[float, float] = (0.3, 1.0)
    flip: float = 0.5
    brightness: float = 0.5
    contrast: float = 0.5
    saturation: float = 0.5
    gray: float = 0.2


@dataclass(frozen=True)
class SSLConfig:
    """Config of ``recipe: ssl`` (``configs/experiments/mlo_pretrain.yaml``, ``ssl_*.yaml``).

    Attributes:
        recipe: ``ssl``.
        name: run name (default output folder ``runs/NAME``).
        mode: ``pixels`` (pretrain the backbone) or ``cached`` (projections over cached features).
        manifest: videos to pretrain on (any manifest format; csv ``path,n_frames,label`` as the
            paper's lists); labels are not read.
        root: folder the manifest's paths are relative to (default: the manifest's folder).
        backbone: ``r3d-18``.
        width: channel width factor of R3D-18 (1.0 = torchvision's model; < 1 for CPU runs).
        init_weights: a backbone state_dict to start from (null: random init with ``seed``).
        size: crop side of the views in pixels (112 as released; 32 in CPU tests).
        resize: short side the decoded videos are resized to once (null: ``size * 8 / 7``).
        clip_len: frames per view (16 as released).
        max_rate: highest frame-sampling rate (3.0 as released; lower for short videos).
        limit: only the first ``limit`` videos (null: all).
        dim, prototypes, queue: projection width (128), SwAV prototypes (1000), queue length (1024).
        queue_start_epoch: codes use the queue from this epoch (10 as released, of 100).
        graph_start_epoch: the graph constraint joins from this epoch (20 as released).
        freeze_prototypes_epochs: prototypes get no update in the first epochs (1 as released).
        weights: loss weights and temperatures.
        augment: view augmentation.
        optim: Adam 1e-3, weight decay 1e-5 as released; ``batch_size`` is the global batch
            (split over the ranks).
        store, sets: ``mode: cached``: the store and ``{level: feature set}`` of the three
            levels (rows ``(C,)`` per time step, ``keep_time``), and ``views_set`` a set of the
            same level sampled at every 2nd frame for the global view (see docs/ssl.md).
        seed: seed of the init, the views and the batch order.
        threads: torch CPU threads (0: keep).
        device: ``auto``, ``cpu`` or ``cuda``.
    """

    recipe: str = "ssl"
    name: str = "mlo_pretrain"
    mode: Literal["pixels", "cached"] = "pixels"
    manifest: str = ""
    root: str | None = None
    backbone: str = "r3d-18"
    width: float = 1.0
    init_weights: str | None = None
    size: int = 112
    resize: int | None = None
    clip_len: int = 16
    max_rate: float = 3.0
    limit: int | None = None
    dim: int = 128
    prototypes: int = 1000
    queue: int = 1024
    queue_start_epoch: int = 10
    graph_start_epoch: int = 20
    freeze_prototypes_epochs: int = 1
    weights: MLOWeights = field(default_factory=MLOWeights)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        optimizer="adam", lr=1e-3, weight_decay=1e-5, epochs=100, batch_size=64, schedule="multistep",
        milestones=(70,), gamma=0.1))
    store: str = ""
    sets: dict[str, str] = field(default_factory=dict)
    global_sets: dict[str, str] = field(default_factory=dict)
    seed: int = 0
    threads: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        if self.recipe != "ssl":
            raise ValueError(f"recipe must be 'ssl', got {self.recipe!r}")
        if self.backbone != "r3d-18":
            raise ValueError(f"backbone {self.backbone!r}: the multi-level recipe reads R3D-18's layer2/3/4 (r3d-18)")
        if self.clip_len < 2 or self.clip_len % 2:
            raise ValueError(f"clip_len must be even and >= 2, got {self.clip_len}")
        if self.size < 16:
            raise ValueError(f"size must be >= 16, got {self.size}")
        if self.max_rate < 1:
            raise ValueError(f"max_rate must be >= 1, got {self.max_rate}")


def load_ssl_config(path: str | Path | None, overrides: Sequence[str] = ()) -> SSLConfig:
    """Load ``SSLConfig`` from YAML with ``key=value`` overrides (errors name the key)."""
    try:
        return load_config(SSLConfig, path, overrides)
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{path}: {e}") from None


# ---------------------------------------------------------------------------------------- videos
def load_videos(manifest: str, *, root: str | None = None, resize: int, limit: int | None = None,
                min_frames: int = 1) -> tuple[list[torch.Tensor], list[str], np.ndarray]:
    """Decode every video of a manifest once, resized so its short side is ``resize``.

    Returns:
        ``(videos, ids, labels)``: uint8 ``(C, T, H, W)`` tensors, video ids, first labels (-1 if none).

    Raises:
        ConfigError: a missing manifest, or a video shorter than ``min_frames``.
    """
    from featbank.extract.decode import decode_video
    from featbank.extract.manifest import read_manifest
    from featbank.extract.transforms import resize_short_side, to_float_clip

    if not manifest or not Path(manifest).is_file():
        raise ConfigError(f"ssl: manifest {manifest!r} does not exist")
    entries = read_manifest(manifest, root=root)[: limit or None]
    videos, ids, labels = [], [], []
    for e in entries:
        frames = decode_video(e.path).frames[e.offset:]  # (T, H, W, 3) uint8
        if len(frames) < min_frames:
            raise ConfigError(f"ssl: {e.path} has {len(frames)} frames; the views need {min_frames}")
        x = resize_short_side(to_float_clip(frames), resize, antialias=True)  # (C, T, H, W) in [0, 1]
        videos.append(x.mul(255).round().clamp(0, 255).to(torch.uint8))
        ids.append(e.video_id)
        labels.append(e.labels[0] if e.labels else -1)
    if not videos:
        raise ConfigError(f"ssl: manifest {manifest} lists no videos")
    return videos, ids, np.asarray(labels, np.int64)


def sample_frame_indices(n: int, clip_len: int, max_rate: float, gen: torch.Generator) -> torch.Tensor:
    """The release's 32-frame draw: rate ``U(1, min(max_rate, n / 2L))``, random start, rounded."""
    span = 2 * clip_len
    hi = max(1.0, min(max_rate, n / span))
    rate = 1.0 + (hi - 1.0) * float(torch.rand((), generator=gen))
    start = int(torch.randint(0, max(1, int(n - rate * span) + 1), (), generator=gen))
    idx = torch.round(rate * torch.arange(span, dtype=torch.float64) + start).long()
    return idx.clamp(max=n - 1)


def _jitter(x: torch.Tensor, aug: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Colour jitter of one clip ``(C, T, H, W)`` in [0, 1] (one draw for the whole clip)."""
    def u(s: float) -> float:
        return 1.0 + s * (2 * float(torch.rand((), generator=gen)) - 1)

    x = x * u(aug.brightness)
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    x = (x - mean) * u(aug.contrast) + mean
    gray = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
    x = (x - gray) * u(aug.saturation) + gray
    if float(torch.rand((), generator=gen)) < aug.gray:
        x = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None].expand(3, -1, -1, -1)
    return x.clamp(0, 1)


def augment_clip(clip: torch.Tensor, size: int, aug: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """uint8 ``(C, T, H, W)`` -> float ``(C, T, size, size)``: random resized crop and flip
    (the same for every frame), colour jitter."""
    c, t, h, w = clip.shape
    area = h * w * (aug.crop_scale[0] + (aug.crop_scale[1] - aug.crop_scale[0]) * float(torch.rand((), generator=gen)))
    ratio = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * float(torch.rand((), generator=gen)))
    ch = int(round(min(h, max(8, math.sqrt(area / ratio)))))
    cw = int(round(min(w, max(8, math.sqrt(area * ratio)))))
    top = int(torch.randint(0, h - ch + 1, (), generator=gen))
    left = int(torch.randint(0, w - cw + 1, (), generator=gen))
    x = clip[:, :, top:top + ch, left:left + cw].float().div(255).transpose(0, 1)  # (T, C, ch, cw)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).transpose(0, 1)
    if float(torch.rand((), generator=gen)) < aug.flip:
        x = x.flip(-1)
    return _jitter(x, aug, gen)


def make_views(video: torch.Tensor, cfg: SSLConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Three views of one video and the time-reversed copies of the two local views.

    Returns:
        ``(views (3, C, L, S, S), reversed (2, C, L, S, S))`` in [0, 1] (not normalised).
    """
    idx = sample_frame_indices(video.shape[1], cfg.clip_len, cfg.max_rate, gen)
    L = cfg.clip_len
    picks = (idx[:L], idx[L:], idx[::2])  # frames 0:16, 16:32, every 2nd of 0:32
    views = torch.stack([augment_clip(video[:, p], cfg.size, cfg.augment, gen) for p in picks])
    return views, views[:2].flip(2)  # reverse the local views in time


# ---------------------------------------------------------------------------------------- model
class MLOModel(nn.Module):
    """R3D-18 plus the multi-level projections.

    ``forward(clips (B, V, C, T, H, W))`` returns ``{level: (B, V, C', T')}``: the level's map,
    spatially averaged with time kept.
    """

    def __init__(self, backbone: nn.Module, dim: int = 128, prototypes: int = 1000) -> None:
        super().__init__()
        self.backbone = backbone
        channels = {lv: backbone.endpoint_channels[ep] for lv, ep in LEVEL_ENDPOINTS.items()}
        self.head = MultiLevelSSLHead(channels, dim=dim, num_prototypes=prototypes)
        for p in self.backbone.fc.parameters():  # the classifier is not part of the objective
            p.requires_grad_(False)

    def forward(self, clips: torch.Tensor, levels: Sequence[str] = LEVELS) -> dict[str, torch.Tensor]:
        b, v = clips.shape[:2]
        maps = self.backbone.forward_levels(clips.flatten(0, 1), tuple(LEVEL_ENDPOINTS[lv] for lv in levels))
        out = {}
        for lv in levels:
            m = maps[LEVEL_ENDPOINTS[lv]].mean(dim=(3, 4))  # (B*V, C, T, H, W) -> (B*V, C, T)
            out[lv] = m.reshape(b, v, *m.shape[1:])
        return out


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _init_dist(device: torch.device):
    """``(rank, world)``; starts the process group under torchrun (gloo on CPU, nccl on CUDA)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank(), dist.get_world_size()


def build_backbone(cfg: SSLConfig) -> nn.Module:
    from featbank.extract.backbones.r3d import create_r3d, r3d_18

    if cfg.init_weights:
        return r3d_18(weights=cfg.init_weights)
    torch.manual_seed(cfg.seed)
    return create_r3d(width=cfg.width)


def pretrain_pixels(cfg: SSLConfig, out: str | Path, *, progress: bool = False) -> dict[str, Any]:
    """Pretrain R3D-18 with the multi-level objective on the videos of ``cfg.manifest``.

    Writes into ``out``: ``config.yaml``, ``metrics.jsonl`` (per epoch: every loss term and
    accuracy), ``init_backbone.pt`` (the starting weights: the random-init baseline),
    ``backbone.pt`` (the pretrained R3D-18 state_dict; ``create_backbone("r3d-18",
    weights=PATH)`` loads it), ``head.pt`` and ``results.json``. Under torchrun only rank 0
    writes.

    Returns:
        ``{"backbone": path, "init_backbone": path, "history": [...], "seconds": ...}``.
    """
    t0 = time.perf_counter()
    device = _device(cfg.device)
    rank, world = _init_dist(device)
    if cfg.optim.batch_size % world:
        raise ConfigError(f"ssl: optim.batch_size {cfg.optim.batch_size} must be a multiple of the world size {world}")
    out = Path(out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.jsonl").unlink(missing_ok=True)
        save_config(cfg, out / "config.yaml")
    resize = cfg.resize or int(round(cfg.size * 8 / 7))
    videos, ids, _ = load_videos(cfg.manifest, root=cfg.root, resize=resize, limit=cfg.limit, min_frames=cfg.clip_len)
    if len(videos) < cfg.optim.batch_size:
        raise ConfigError(f"ssl: {len(videos)} videos but optim.batch_size {cfg.optim.batch_size}; "
                          "lower the batch size (the contrast needs whole batches)")
    with deterministic(cfg.threads or None):
        seed_everything(cfg.seed)
        backbone = build_backbone(cfg)
        if rank == 0:
            torch.save(backbone.state_dict(), out / "init_backbone.pt")
        model = MLOModel(backbone, cfg.dim, cfg.prototypes).to(device)
        queue = PrototypeQueue(cfg.queue, cfg.prototypes).to(device)
        mean = torch.tensor(backbone.spec.mean, device=device).view(1, 1, 3, 1, 1, 1)
        std = torch.tensor(backbone.spec.std, device=device).view(1, 1, 3, 1, 1, 1)
        train_model: nn.Module = model
        if world > 1:
            if device.type == "cuda":
                train_model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            train_model = nn.parallel.DistributedDataParallel(
                train_model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
        state = {"epoch": 0}
        view_gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
        per_rank = cfg.optim.batch_size // world

        def batches(epoch: int, gen: torch.Generator):
            state["epoch"] = epoch
            model.head.prototypes.weight.requires_grad_(epoch >= cfg.freeze_prototypes_epochs)
            order = torch.randperm(len(videos), generator=gen)  # the same on every rank (same seed)
            for s in range(0, len(order) - cfg.optim.batch_size + 1, cfg.optim.batch_size):
                yield order[s + rank * per_rank: s + (rank + 1) * per_rank]

        def step(index: torch.Tensor) -> dict[str, torch.Tensor]:
            model.head.normalize_prototypes()
            pairs = [make_views(videos[int(i)], cfg, view_gen) for i in index]
            views = torch.stack([p[0] for p in pairs]).to(device)  # (b, 3, C, L, S, S)
            rev = torch.stack([p[1] for p in pairs]).to(device)  # (b, 2, C, L, S, S)
            clips = (torch.cat([views, rev], 1) - mean) / std  # one backbone pass for all five clips
            feats = train_model(clips)
            fwd = {lv: f[:, :3] for lv, f in feats.items()}
            back = {lv: feats[lv][:, 3:] for lv in ("low", "mid")}
            out_ = model.head(fwd)
            epoch = state["epoch"]
            return model.head.loss(out_, model.head.embed_reversed(back), weights=cfg.weights, queue=queue,
                                   use_queue=epoch >= cfg.queue_start_epoch, use_graph=epoch >= cfg.graph_start_epoch)

        result = fit(model, step, batches, cfg.optim, seed=cfg.seed, out_dir=out if rank == 0 else None,
                     progress=progress and rank == 0, desc="mlo pretrain")
    res = {"backbone": str(out / "backbone.pt"), "init_backbone": str(out / "init_backbone.pt"),
           "videos": len(videos), "world_size": world, "history": result.history,
           "seconds": time.perf_counter() - t0}
    if rank == 0:
        torch.save(model.backbone.state_dict(), out / "backbone.pt")
        torch.save(model.head.state_dict(), out / "head.pt")
        (out / "results.json").write_text(json.dumps(res, indent=2, default=float) + "\n")
    return res


# ---------------------------------------------------------------------------------------- cached
def load_level_clips(store, sets: dict[str, str], *, split: str | None = None, clip_len: int = 16,
                     stride: dict[str, int] | None = None, n_clips: int = 2) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Per-level ``(C, T)`` clips from sets extracted with ``keep_time`` (one row per time step).

    A video with rows of ``n`` clips of ``T_level`` steps each gives its first ``n_clips`` clips
    ``(n_clips, C, T_level)``: with clip length 16 and stride 16 the first two (frames 0:16,
    16:32) are the local views; a set sampled at every 2nd frame gives the global view (``n_clips=1``). ``T_level = clip_len / stride``
    (R3D-18: layer2 2, layer3 4, layer4 8).

    Returns:
        ``({level: (V, n_clips, C, T)}, video_ids)`` for the videos having at least ``n_clips`` clips.
    """
    from featbank.store.dataset import load_rows

    stride = stride or {"low": 2, "mid": 4, "high": 8}
    out: dict[str, list[torch.Tensor]] = {}
    ids: list[str] | None = None
    for lv in LEVELS:
        rows = load_rows(store, sets[lv], split=split)
        t = clip_len // stride[lv]
        clips, vid = [], []
        for i, v in enumerate(rows.video_ids):
            f = rows.video(i).float()  # (n*T, C)
            if f.shape[0] < n_clips * t:
                continue
            clips.append(f[: n_clips * t].reshape(n_clips, t, -1).transpose(1, 2))  # (n_clips, C, T)
            vid.append(v)
        if ids is not None and vid != ids:
            raise ConfigError(f"ssl: the level sets hold different videos ({sets})")
        ids = vid
        if not clips:
            raise ConfigError(f"ssl cached: no video of set {sets[lv]!r} has {n_clips} clips of {t} time steps "
                              "(extract with keep_time, clip_len 16)")
        out[lv] = clips
    return {lv: torch.stack(c) for lv, c in out.items()}, list(ids or [])


def train_cached(cfg: SSLConfig, out: str | Path, *, progress: bool = False) -> dict[str, Any]:
    """The multi-level losses on cached features, projections only (``mode: cached``).

    Needs ``cfg.sets`` (local clips, ``keep_time`` sets of layer2/3/4 with clip length 16 and
    stride 16) and ``cfg.global_sets`` (the same levels sampled at every 2nd frame: one clip
    covers frames 0:32, the global view). Without reversed sets the motion contrast has no
    extra negative (``weights.motion_reversed`` is ignored).
    """
    from featbank.store import open_store

    t0 = time.perf_counter()
    if set(cfg.sets) != set(LEVELS) or set(cfg.global_sets) != set(LEVELS):
        raise ConfigError(f"ssl cached: sets and global_sets must name the levels {LEVELS}")
    store = open_store(cfg.store, "r")
    try:
        local, ids = load_level_clips(store, cfg.sets, clip_len=cfg.clip_len)
        glob, gids = load_level_clips(store, cfg.global_sets, clip_len=cfg.clip_len, n_clips=1)
    finally:
        store.close()
    common = [i for i, v in enumerate(ids) if v in set(gids)]
    gpos = {v: i for i, v in enumerate(gids)}
    feats = {lv: torch.cat([local[lv][common], glob[lv][[gpos[ids[i]] for i in common]]], 1)
             for lv in LEVELS}  # (V, 3, C, T)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    save_config(cfg, out / "config.yaml")
    with deterministic(cfg.threads or None):
        seed_everything(cfg.seed)
        head = MultiLevelSSLHead({lv: feats[lv].shape[2] for lv in LEVELS}, dim=cfg.dim, num_prototypes=cfg.prototypes)
        queue = PrototypeQueue(cfg.queue, cfg.prototypes)
        state = {"epoch": 0}
        w = replace(cfg.weights, motion_reversed=False)

        def batches(epoch, gen):
            state["epoch"] = epoch
            head.prototypes.weight.requires_grad_(epoch >= cfg.freeze_prototypes_epochs)
            order = torch.randperm(len(common), generator=gen)
            for s in range(0, len(order) - cfg.optim.batch_size + 1, cfg.optim.batch_size):
                yield order[s: s + cfg.optim.batch_size]

        def step(index):
            head.normalize_prototypes()
            o = head({lv: f[index] for lv, f in feats.items()})
            e = state["epoch"]
            return head.loss(o, None, weights=w, queue=queue, use_queue=e >= cfg.queue_start_epoch,
                             use_graph=e >= cfg.graph_start_epoch)

        result = fit(head, step, batches, cfg.optim, seed=cfg.seed, out_dir=out, progress=progress, desc="mlo cached")
    torch.save(head.state_dict(), out / "head.pt")
    res = {"videos": len(common), "history": result.history, "final": result.final, "seconds": time.perf_counter() - t0}
    (out / "results.json").write_text(json.dumps(res, indent=2, default=float) + "\n")
    return res


def run_ssl(cfg: SSLConfig, out: str | Path, *, progress: bool = False) -> dict[str, Any]:
    """Dispatch on ``cfg.mode``."""
    return (pretrain_pixels if cfg.mode == "pixels" else train_cached)(cfg, out, progress=progress)


# ---------------------------------------------------------------------------------------- evaluation
def evaluate_set(store_path: str | Path, set_name: str, *, train_split: str = "train", test_split: str = "test",
                 seeds: int = 3, seed: int = 0, epochs: int = 100, threads: int = 0) -> dict[str, Any]:
    """Linear probe (``featbank train --head linear``, ``seeds`` seeds) and retrieval R@1/5/10/20.

    Returns:
        ``{"per_seed": [{"seed", "top1", "mca", "R@1", ...}], "retrieval": {...}, "probe": {...}}``; the
        retrieval numbers (deterministic) are repeated in every seed's dict so that
        :func:`featbank.experiments.stats.summarize` carries them.
    """
    from featbank.experiments.bank_eval import evaluate_bank
    from featbank.experiments.recipes.train import TrainConfig, train_heads
    from featbank.store import open_store

    tcfg = TrainConfig(store=str(store_path), set=set_name, head="linear", train_split=train_split,
                       test_split=test_split, seeds=seeds, seed=seed, threads=threads,
                       optim=OptimConfig(optimizer="adamw", lr=1e-2, weight_decay=1e-4, epochs=epochs,
                                         batch_size=64, schedule="cosine"))
    probe = train_heads(tcfg)
    store = open_store(str(store_path), "r")
    try:
        rep = evaluate_bank(store, set_name, mode="retrieval", level="video", train_split=train_split,
                            test_split=test_split, index="Flat")
    finally:
        store.close()
    recall = {k: float(v) for k, v in rep["class_metrics"]["bank"].items()}  # {"R@1": ..., "R@20": ...}
    per_seed = [{"seed": r["seed"], "top1": r["top1"], "mca": r["mca"], **recall} for r in probe["per_seed"]]
    return {"per_seed": per_seed, "retrieval": rep, "probe": probe}


# ---------------------------------------------------------------------------------------- temporal cue
def _clip_tensor(video: torch.Tensor, clip_len: int, size: int, mean, std) -> torch.Tensor:
    """The first ``clip_len`` frames, centre-cropped to ``size`` and normalised: ``(C, L, S, S)``."""
    from featbank.extract.transforms import center_crop, resize_short_side

    x = video[:, :clip_len].float().div(255)
    x = center_crop(resize_short_side(x, size), size)
    return (x - torch.tensor(mean).view(3, 1, 1, 1)) / torch.tensor(std).view(3, 1, 1, 1)


@torch.no_grad()
def _pooled_layer4(backbone, clips: torch.Tensor, batch: int = 8) -> torch.Tensor:
    outs = []
    for s in range(0, len(clips), batch):
        outs.append(backbone.forward_head(backbone.forward_features(clips[s:s + batch], endpoint="layer4"),
                                          endpoint="layer4"))
    return torch.cat(outs)


def fit_temporal_cue(backbone, videos: Sequence[torch.Tensor], *, clip_len: int = 16, size: int = 112,
                     epochs: int = 100, seed: int = 0, test_videos: Sequence[torch.Tensor] = ()) -> tuple[TemporalCueHead, dict[str, float]]:
    """Train the bias-free ``Linear(D, 2)`` forward-vs-reversed probe on frozen pooled layer4 features.

    Each video gives its first clip (class 0) and the same clip reversed in time (class 1).

    Returns:
        ``(head, {"train_acc", "test_acc"})`` (test accuracy on ``test_videos``, NaN without them).
    """
    from featbank.experiments.fit import minibatches

    backbone = backbone.eval()
    spec = backbone.spec

    def feats_of(vids):
        clips = torch.stack([_clip_tensor(v, clip_len, size, spec.mean, spec.std) for v in vids])
        x = torch.cat([_pooled_layer4(backbone, clips), _pooled_layer4(backbone, clips.flip(2))])
        y = torch.cat([torch.zeros(len(clips), dtype=torch.long), torch.ones(len(clips), dtype=torch.long)])
        return x, y

    x, y = feats_of(videos)
    scale = x.norm(dim=1).mean().clamp_min(1e-6)  # one scalar: keeps the head bias-free and the CAM linear
    seed_everything(seed)
    head = TemporalCueHead(x.shape[1], 2)

    def step(batch):
        xb, yb = batch
        return {"loss": head.loss(head(xb / scale), yb)["ce"]}

    fit(head, step, lambda e, g: minibatches((x, y), 32, g),
        OptimConfig(optimizer="adam", lr=1e-2, weight_decay=0.0, epochs=epochs, batch_size=32), seed=seed)
    with torch.no_grad():
        head.fc.weight.div_(scale)  # fold the scale into the weights: logits = W x
        acc = {"train_acc": float((head(x).logits.argmax(1) == y).float().mean()), "test_acc": float("nan")}
        if len(test_videos):
            xt, yt = feats_of(test_videos)
            acc["test_acc"] = float((head(xt).logits.argmax(1) == yt).float().mean())
    return head.eval(), acc


@torch.no_grad()
def render_temporal_cam(backbone, head: TemporalCueHead, video: torch.Tensor, out_dir: str | Path, name: str, *,
                        clip_len: int = 16, size: int = 112, frames: Sequence[int] | None = None) -> list[Path]:
    """Overlay the temporal-cue CAM on a clip and on its reversed copy; write PNGs.

    The class map of the clip's own class (0 for the clip, 1 for the reversed copy) at every
    ``(t, h, w)`` of the layer4 map is upsampled (trilinear) to the clip, min-max scaled per
    frame and blended 50/50 with the frame (jet colours), as the release's visualisation.
    One PNG per clip: the chosen frames side by side, forward on top, reversed below.

    Returns:
        The written paths.
    """
    from matplotlib import colormaps
    from PIL import Image

    spec = backbone.spec
    clip = _clip_tensor(video, clip_len, size, spec.mean, spec.std)[None]  # (1, C, L, S, S)
    pair = torch.cat([clip, clip.flip(2)])  # forward, reversed
    maps = backbone.forward_features(pair, endpoint="layer4")  # (2, D, T', h, w)
    cam = head.cam(maps)  # (2, 2, T', h, w)
    cam = torch.stack([cam[0, 0], cam[1, 1]])[:, None]  # each clip's own class
    cam = F.interpolate(cam, size=pair.shape[2:], mode="trilinear", align_corners=False)[:, 0]  # (2, L, S, S)
    img = pair * torch.tensor(spec.std).view(1, 3, 1, 1, 1) + torch.tensor(spec.mean).view(1, 3, 1, 1, 1)
    img = img.clamp(0, 1).permute(0, 2, 3, 4, 1).numpy()  # (2, L, S, S, 3)
    frames = list(frames) if frames is not None else list(range(0, clip_len, max(1, clip_len // 4)))
    jet = colormaps["jet"]
    rows = []
    for r in range(2):
        tiles = []
        for t in frames:
            m = cam[r, t].numpy()
            m = (m - m.min()) / max(float(m.max() - m.min()), 1e-8)
            tiles.append(0.5 * img[r, t] + 0.5 * jet(m)[..., :3])
        rows.append(np.concatenate(tiles, 1))
    pic = (np.concatenate(rows, 0) * 255).round().astype(np.uint8)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    Image.fromarray(pic).resize((pic.shape[1] * 2, pic.shape[0] * 2), Image.NEAREST).save(path)
    return [path]


def temporal_cue_from_sets(store_path: str | Path, forward_set: str, reversed_set: str, *, train_split: str = "train",
                           test_split: str = "test", epochs: int = 100, seed: int = 0) -> tuple[TemporalCueHead, dict[str, float]]:
    """The temporal-cue probe on cached features: clip rows of ``forward_set`` (class 0) against the
    rows of ``reversed_set`` (class 1, extracted with the job's ``reverse`` option, same windows).

    Returns:
        ``(head, {"train_acc", "test_acc", "n_train", "n_test"})``; the head's weights apply to the
        unpooled layer4 maps as they are (:meth:`TemporalCueHead.cam`).
    """
    from featbank.experiments.fit import minibatches
    from featbank.store import open_store
    from featbank.store.dataset import load_rows

    store = open_store(str(store_path), "r")
    try:
        def pair(split):
            f, r = load_rows(store, forward_set, split=split), load_rows(store, reversed_set, split=split)
            if list(f.video_ids) != list(r.video_ids) or f.feats.shape != r.feats.shape:
                raise ConfigError(f"temporal cue: {forward_set!r} and {reversed_set!r} hold different videos or rows "
                                  f"in split {split!r}; extract both with the same windows (reverse=true for the second)")
            x = torch.cat([f.feats.float(), r.feats.float()])
            y = torch.cat([torch.zeros(len(f.feats), dtype=torch.long), torch.ones(len(r.feats), dtype=torch.long)])
            return x, y

        x, y = pair(train_split)
        xt, yt = pair(test_split)
    finally:
        store.close()
    scale = x.norm(dim=1).mean().clamp_min(1e-6)
    seed_everything(seed)
    head = TemporalCueHead(x.shape[1], 2)
    fit(head, lambda b: {"loss": head.loss(head(b[0] / scale), b[1])["ce"]}, lambda e, g: minibatches((x, y), 64, g),
        OptimConfig(optimizer="adam", lr=1e-2, weight_decay=0.0, epochs=epochs, batch_size=64), seed=seed)
    with torch.no_grad():
        head.fc.weight.div_(scale)
        acc = {"train_acc": float((head(x).logits.argmax(1) == y).float().mean()),
               "test_acc": float((head(xt).logits.argmax(1) == yt).float().mean()),
               "n_train": int(len(x)), "n_test": int(len(xt))}
    return head.eval(), acc
