"""Configuration of a CycDA run (frozen dataclasses; YAML + ``key=value`` overrides).

Defaults are the released settings (``wlin-at/CycDA``) where this recipe has them:
image model heads initialised normal(0, 0.01), no activation/dropout before the classifier,
SGD lr 1e-3 momentum 0.9 without weight decay, stage 1 20 epochs, stage 3 30 epochs, batches
of 32 source + 32 target, ``frame_v2`` with ``p = 0.8`` and the released ``int(p * V)``
rounding, a fresh image model in stage 3. The safeguards beyond the released code are named
fields (``pseudo.rule=frame_v2_balanced``, ``stage2.selection=balanced``,
``stage2.class_balance``); ``safeguards=false`` switches all of them to the released behaviour.
Every value is checked when the config is built (one line naming the key and the accepted
range), before any stage runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from featbank.experiments.config import load_config
from featbank.experiments.fit import OptimConfig
from featbank.experiments.recipes.refresh import RefreshConfig


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(msg)


@dataclass(frozen=True)
class FeatureSetsConfig:
    """Where the features come from: a store, five feature-set names, a validation list.

    Attributes:
        store: path of the Zarr store (unused when ``run_cycle`` is given a store object).
        source_images: labelled source stills (one or more rows per image).
        target_frames: frame-level rows of the unlabelled target train videos.
        target_clips: clip-level rows of the target train videos (video model input).
        test_frames: frame-level rows of the labelled target test videos.
        test_clips: clip-level rows of the target test videos.
        max_clips: clips per video fed to the video model (longer videos are subsampled uniformly).
        val_manifest: optional ``path label`` manifest of target *train* videos whose labels
            are held out for choosing settings (reported as ``val_acc``; never trained on).
    """

    store: str = ""
    source_images: str = "source/image"
    target_frames: str = "target_train/frame"
    target_clips: str = "target_train/clip"
    test_frames: str = "target_test/frame"
    test_clips: str = "target_test/clip"
    max_clips: int = 32
    val_manifest: str = ""

    def __post_init__(self) -> None:
        _check(isinstance(self.max_clips, int) and self.max_clips >= 1,
               f"max_clips must be an integer >= 1, got {self.max_clips}")


@dataclass(frozen=True)
class ImageStageConfig:
    """Training of the image model (stages 1 and 3, and the source-only baseline).

    Attributes:
        epochs: passes over the larger of the two domains (>= 1).
        batch_size: rows per domain per step (>= 1).
        optimizer: ``sgd`` (released: lr 1e-3, momentum 0.9, no weight decay), ``adam`` or ``adamw``.
        lr: learning rate (> 0).
        momentum: SGD momentum in [0, 1).
        weight_decay: L2 penalty (>= 0).
        adv_weight: weight of the domain-adversarial loss (stage 1).
        contrastive_weight: weight of the class-aware contrastive loss (stage 3).
        temperature: temperature of the contrastive loss (0.05 released).
        embed_dim: embedding width (128 released).
        hidden: classifier MLP width (128 released).
        dropout: dropout before the classifier (only with ``pre_activation``).
        pre_activation: ReLU + dropout between embedding and classifier (not released).
        init_std: std of the normal weight init (0.01 released; 0: PyTorch's default).
        frames_per_video: target frames drawn per video and epoch, one at a random position in
            each of this many equal segments of the video's cached frames (TSN sampling,
            resampled every epoch); 0 uses every cached frame every epoch.
        fresh: stage 3 starts from a new image model (released); false continues from stage 1's.
        bottleneck: the embedding in front of classifier and discriminator: ``linear`` (the
            released ``Linear(D, 128)``) or ``bn`` (``Linear -> BatchNorm1d -> ReLU``, the
            Transfer-Learning-Library DANN bottleneck; not released).
        disc_batch_norm: the TLlib discriminator (two hidden layers with BatchNorm) instead of
            the released ``128 -> 128 -> 2`` MLP.
        schedule: ``constant`` (released) or ``inv`` (DANN annealing ``lr (1 + 10 p)^-0.75``, TLlib).
        grad_clip: clip the global gradient norm to this value (0: off, released).
    """

    epochs: int = 20
    batch_size: int = 32
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    adv_weight: float = 1.0
    contrastive_weight: float = 1.0
    temperature: float = 0.05
    embed_dim: int = 128
    hidden: int = 128
    dropout: float = 0.0
    pre_activation: bool = False
    init_std: float = 0.01
    frames_per_video: int = 3
    fresh: bool = True
    bottleneck: Literal["linear", "bn"] = "linear"
    disc_batch_norm: bool = False
    schedule: Literal["constant", "inv"] = "constant"
    grad_clip: float = 0.0

    def __post_init__(self) -> None:
        self.optim()  # lr, momentum, weight decay, epochs, batch size, schedule, grad_clip
        _check(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        _check(self.adv_weight >= 0 and self.contrastive_weight >= 0,
               f"adv_weight and contrastive_weight must be >= 0, got {self.adv_weight}, {self.contrastive_weight}")
        _check(self.embed_dim >= 1 and self.hidden >= 1, f"embed_dim and hidden must be >= 1")
        _check(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")
        _check(self.init_std >= 0, f"init_std must be >= 0 (0: PyTorch default), got {self.init_std}")
        _check(self.frames_per_video >= 0, f"frames_per_video must be >= 0 (0: all), got {self.frames_per_video}")
        _check(self.bottleneck in ("linear", "bn"), f"bottleneck must be linear or bn, got {self.bottleneck!r}")
        _check(self.schedule in ("constant", "inv"), f"schedule must be constant or inv, got {self.schedule!r}")

    def optim(self) -> OptimConfig:
        """The shared fit loop's optimiser config."""
        return OptimConfig(optimizer=self.optimizer, lr=self.lr, momentum=self.momentum,
                           weight_decay=self.weight_decay, epochs=self.epochs, batch_size=self.batch_size,
                           schedule=self.schedule, grad_clip=self.grad_clip)


@dataclass(frozen=True)
class VideoStageConfig:
    """Training of the video model on target pseudo labels (stages 2 and 4).

    Attributes:
        epochs: passes over the pseudo-labelled videos (>= 1).
        batch_size: videos per step (>= 1).
        optimizer: ``sgd``, ``adam`` or ``adamw``.
        lr: learning rate (> 0).
        momentum: SGD momentum.
        weight_decay: L2 penalty.
        pooling: ``mean`` or ``attention`` over the clips of a video.
        hidden: clip embedding width.
        dropout: dropout on the pooled embedding.
        init_std: std of the normal weight init (0.01 released; 0: PyTorch's default).
        class_balance: ``weighted_ce`` (CE weighted by inverse pseudo-label frequency),
            ``sampling`` (class-balanced batches) or ``none`` (released).
        selection: which video-model labels are handed on (to stage 3 / the next cycle):
            ``balanced``: the ``keep_fraction`` most confident videos of *each* predicted
            class (every predicted class survives); ``global``: the ``keep_fraction`` most
            confident overall (released with ``keep_fraction=1``: all videos).
        keep_fraction: fraction of target videos whose prediction is handed on, in (0, 1].
    """

    epochs: int = 20
    batch_size: int = 32
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    pooling: Literal["mean", "attention"] = "mean"
    hidden: int = 256
    dropout: float = 0.5
    init_std: float = 0.01
    class_balance: Literal["weighted_ce", "sampling", "none"] = "weighted_ce"
    selection: Literal["balanced", "global"] = "balanced"
    keep_fraction: float = 0.8

    def __post_init__(self) -> None:
        self.optim()
        _check(0 < self.keep_fraction <= 1, f"keep_fraction must be in (0, 1], got {self.keep_fraction}")
        _check(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")
        _check(self.hidden >= 1, f"hidden must be >= 1, got {self.hidden}")
        _check(self.init_std >= 0, f"init_std must be >= 0 (0: PyTorch default), got {self.init_std}")

    def optim(self) -> OptimConfig:
        return OptimConfig(optimizer=self.optimizer, lr=self.lr, momentum=self.momentum,
                           weight_decay=self.weight_decay, epochs=self.epochs, batch_size=self.batch_size)


@dataclass(frozen=True)
class PseudoLabelConfig:
    """Frame -> video pseudo labels of the image model.

    Attributes:
        rule: ``frame_v2`` (released), ``frame_v2_balanced`` (per-class thresholds: a class the
            image model predicts is never dropped; safeguard), ``frame_v2_ceil`` or ``vid``.
        keep_fraction: fraction ``p`` of videos that keep at least one frame, in (0, 1].
        percentiles: confidence percentiles of the quality report.
    """

    rule: Literal["frame_v2", "frame_v2_balanced", "frame_v2_ceil", "vid"] = "frame_v2_balanced"
    keep_fraction: float = 0.8
    percentiles: tuple[float, ...] = (100.0, 80.0, 60.0, 40.0, 20.0)

    def __post_init__(self) -> None:
        _check(0 < self.keep_fraction <= 1, f"keep_fraction must be in (0, 1], got {self.keep_fraction}")
        _check(all(0 < q <= 100 for q in self.percentiles), f"percentiles must be in (0, 100], got {self.percentiles}")


@dataclass(frozen=True)
class CycdaConfig:
    """A complete CycDA run (``featbank run CONFIG.yaml`` with ``recipe: cycda``).

    Attributes:
        recipe: must be ``cycda``.
        name: run name (used in plots).
        seed: seed of every stage (each stage derives its own).
        cycles: number of 1->2->3->4 cycles (>= 1); stage 4's video pseudo labels feed the
            next cycle's stage 3.
        threads: torch CPU threads (0 leaves torch's default).
        safeguards: false switches every safeguard beyond the released code off
            (``pseudo.rule`` -> ``frame_v2``, video ``selection`` -> ``global`` with all videos,
            ``class_balance`` -> ``none``).
        oracle: also train the image and video heads on the target-train labels (the ceiling;
            reported, never used by the cycle).
        features: the store and feature sets.
        source_only: training of the source-only baseline (adv_weight ignored).
        stage1: class-agnostic spatial alignment.
        pseudo: frame -> video pseudo labels.
        stage2: first video model.
        stage3: class-aware spatial alignment.
        stage4: second video model.
        refresh: optional backbone refresh after stage 2 or 4 (fine-tune on pixels, re-extract).
        plot: write ``accuracy.png``.
    """

    recipe: Literal["cycda"] = "cycda"
    name: str = "cycda"
    seed: int = 0
    cycles: int = 1
    threads: int = 0
    safeguards: bool = True
    oracle: bool = False
    features: FeatureSetsConfig = field(default_factory=FeatureSetsConfig)
    source_only: ImageStageConfig = field(default_factory=ImageStageConfig)
    stage1: ImageStageConfig = field(default_factory=ImageStageConfig)
    pseudo: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    stage2: VideoStageConfig = field(default_factory=VideoStageConfig)
    stage3: ImageStageConfig = field(default_factory=lambda: ImageStageConfig(epochs=30, adv_weight=0.0))
    stage4: VideoStageConfig = field(default_factory=VideoStageConfig)
    refresh: RefreshConfig = field(default_factory=RefreshConfig)
    plot: bool = True

    def __post_init__(self) -> None:
        _check(isinstance(self.cycles, int) and self.cycles >= 1, f"cycles must be an integer >= 1, got {self.cycles}")
        _check(self.threads >= 0, f"threads must be >= 0 (0: torch default), got {self.threads}")


def load_cycda_config(path: str | Path | None, overrides: tuple[str, ...] | list[str] = ()) -> CycdaConfig:
    """Load a :class:`CycdaConfig` from YAML plus ``key=value`` overrides (``ConfigError`` on bad values)."""
    return load_config(CycdaConfig, path, overrides)


def effective(cfg: CycdaConfig) -> tuple[PseudoLabelConfig, VideoStageConfig, VideoStageConfig]:
    """``(pseudo, stage2, stage4)`` with the safeguards switched off when ``cfg.safeguards`` is false."""
    import dataclasses

    if cfg.safeguards:
        return cfg.pseudo, cfg.stage2, cfg.stage4
    released = dict(selection="global", keep_fraction=1.0, class_balance="none")
    return (dataclasses.replace(cfg.pseudo, rule="frame_v2"), dataclasses.replace(cfg.stage2, **released),
            dataclasses.replace(cfg.stage4, **released))
