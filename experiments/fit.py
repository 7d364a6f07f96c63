"""The one training loop every recipe uses (small on purpose: no framework).

A recipe gives :func:`fit` three things:

* ``model``: the ``nn.Module`` whose parameters are optimised (or explicit param groups);
* ``batches(epoch, gen)``: an iterable of batches for one epoch, drawn with the seeded
  ``torch.Generator`` it is handed (so a rerun with the same seed draws the same batches);
* ``step(batch) -> dict[str, Tensor]``: the losses of one batch; ``"loss"`` is the total that
  is back-propagated, other entries are logged.

and optionally ``evaluate(epoch) -> dict[str, float]`` (run after each epoch, or every
``eval_every`` epochs and always after the last). Each epoch appends one JSON line with the
mean losses, the learning rate and the evaluation to ``out_dir/metrics.jsonl``. The result
is the *final* epoch's metrics: nothing is selected on any split here (a recipe that selects
does it on a held-out split of its own, and says so).

Reproducibility: :func:`seed_everything` seeds python, numpy and torch, and
:func:`deterministic` turns on torch's deterministic algorithms with a fixed thread count, so
the same config and seed give bit-identical metrics on CPU.

Example:
    >>> cfg = OptimConfig(optimizer="sgd", lr=0.1, epochs=3, batch_size=16)
    >>> head = torch.nn.Linear(8, 2)
    >>> x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
    >>> res = fit(head, lambda b: {"loss": F.cross_entropy(head(b[0]), b[1])},
    ...           lambda epoch, gen: minibatches((x, y), 16, gen), cfg)
    >>> len(res.history)
    3
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F  # noqa: F401  (used in the docstring example)
from torch import nn

Batch = Any


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser, schedule and epochs of one training stage.

    Attributes:
        optimizer: ``sgd``, ``adam`` or ``adamw``.
        lr: base learning rate (> 0).
        momentum: SGD momentum in [0, 1).
        weight_decay: L2 / decoupled weight decay (>= 0).
        nesterov: Nesterov momentum (SGD).
        epochs: number of passes (>= 1).
        batch_size: examples per step (>= 1); read by the recipe's ``batches``.
        schedule: ``constant``, ``cosine`` (to 0 over all epochs), ``multistep`` or ``inv`` (the
            DANN annealing ``lr * (1 + 10 p) ** -0.75``, ``p`` = epoch / epochs, set per epoch).
        milestones: epochs at which ``multistep`` multiplies the lr by ``gamma``.
        gamma: multistep factor in (0, 1].
        warmup_epochs: linear warm-up epochs before the schedule.
        grad_clip: clip the global gradient norm to this value (0: off).
        grad_clamp: clamp every gradient value to [-v, v] (0: off).
    """

    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False
    epochs: int = 10
    batch_size: int = 32
    schedule: Literal["constant", "cosine", "multistep", "inv"] = "constant"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_epochs: int = 0
    grad_clip: float = 0.0
    grad_clamp: float = 0.0

    def __post_init__(self) -> None:
        checks = [
            (self.lr > 0 and math.isfinite(self.lr), f"lr must be a positive number, got {self.lr}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (0 < self.gamma <= 1, f"gamma must be in (0, 1], got {self.gamma}"),
            (self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}"),
            (self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip}"),
            (self.grad_clamp >= 0, f"grad_clamp must be >= 0, got {self.grad_clamp}"),
            (all(m >= 1 for m in self.milestones), f"milestones must be epochs >= 1, got {list(self.milestones)}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        history: one dict per epoch (``epoch``, ``lr``, mean losses, evaluation metrics).
        final: the last epoch's dict (the reported result).
    """

    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; returns a fresh ``torch.Generator`` seeded with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


@contextlib.contextmanager
def deterministic(threads: int | None = None) -> Iterator[None]:
    """Deterministic torch algorithms and a fixed CPU thread count inside the block.

    Args:
        threads: torch intra-op threads (default: keep the current count, fixed for the block).
    """
    before_threads = torch.get_num_threads()
    before_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(int(threads or before_threads))
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before_det)
        torch.set_num_threads(before_threads)


def make_optimizer(params: Iterable[torch.Tensor] | Sequence[Mapping[str, Any]], cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser of ``cfg`` over parameters or param groups (groups may set their own ``lr``)."""
    params = list(params)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov and cfg.momentum > 0, foreach=False)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=False)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=False)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose sgd, adam or adamw")


def lr_factor(cfg: OptimConfig, epoch: int) -> float:
    """Multiplier of every group's base lr during ``epoch`` (0-based)."""
    if epoch < cfg.warmup_epochs:
        return (epoch + 1) / (cfg.warmup_epochs + 1)
    e = epoch - cfg.warmup_epochs
    if cfg.schedule == "cosine":
        total = max(1, cfg.epochs - cfg.warmup_epochs)
        return 0.5 * (1 + math.cos(math.pi * e / total))
    if cfg.schedule == "multistep":
        return cfg.gamma ** sum(1 for m in cfg.milestones if epoch >= m)
    if cfg.schedule == "inv":  # Ganin & Lempitsky (2015): mu_p = mu_0 / (1 + 10 p) ** 0.75
        return (1.0 + 10.0 * e / max(1, cfg.epochs - cfg.warmup_epochs)) ** -0.75
    return 1.0


def minibatches(tensors: Sequence[torch.Tensor], batch_size: int, gen: torch.Generator | None = None, *,
                shuffle: bool = True, drop_last: bool = False,
                weights: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
    """Minibatches of equal-length tensors (indexing dim 0), in a seeded random order.

    Args:
        tensors: tensors sharing their first dimension ``N``.
        batch_size: rows per batch.
        gen: generator for the order (``None``: unseeded global RNG).
        shuffle: random order (else 0..N-1).
        drop_last: drop a last batch smaller than ``batch_size``.
        weights: ``(N,)`` sampling weights: draw ``N`` indices with replacement in proportion
            (e.g. inverse class frequency for class-balanced sampling).
    """
    n = int(tensors[0].shape[0])
    if any(int(t.shape[0]) != n for t in tensors):
        raise ValueError(f"minibatches: tensors differ in length: {[int(t.shape[0]) for t in tensors]}")
    if weights is not None:
        order = torch.multinomial(weights.double(), n, replacement=True, generator=gen)
    elif shuffle:
        order = torch.randperm(n, generator=gen)
    else:
        order = torch.arange(n)
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size]
        if drop_last and len(idx) < batch_size:
            break
        yield tuple(t[idx] for t in tensors)


def balanced_weights(labels: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``(N,)`` sampling weights proportional to 1 / class frequency (labels < 0 get weight 0)."""
    lab = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    w = torch.zeros(len(lab), dtype=torch.float64)
    known = lab >= 0
    if known.any():
        counts = torch.bincount(lab[known])
        w[known] = 1.0 / counts[lab[known]].double()
    return w


def _jsonable(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.detach().item() if v.numel() == 1 else v.detach().tolist()
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def fit(
    model: nn.Module,
    step: Callable[[Batch], Mapping[str, torch.Tensor]],
    batches: Callable[[int, torch.Generator], Iterable[Batch]],
    cfg: OptimConfig,
    *,
    params: Iterable[torch.Tensor] | Sequence[Mapping[str, Any]] | None = None,
    evaluate: Callable[[int], Mapping[str, Any]] | None = None,
    eval_every: int = 1,
    on_epoch_end: Callable[[int], None] | None = None,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    log_name: str = "metrics.jsonl",
    progress: bool = False,
    desc: str = "fit",
) -> FitResult:
    """Train ``model`` for ``cfg.epochs`` epochs; returns every epoch's losses and metrics.

    Args:
        model: the module to train (set to ``train()`` during steps and ``eval()`` around ``evaluate``).
        step: losses of one batch; ``"loss"`` is back-propagated.
        batches: ``batches(epoch, gen)`` yields the epoch's batches using the seeded ``gen``.
        cfg: optimiser, schedule and epochs.
        params: parameters or param groups (default: ``model.parameters()`` that require grad).
            A group's ``lr`` is its base lr (e.g. 10x for a last layer); the schedule scales it.
        evaluate: ``evaluate(epoch) -> metrics`` after an epoch (called under ``torch.no_grad``).
        eval_every: evaluate every k epochs (the last epoch is always evaluated).
        on_epoch_end: called after each epoch's evaluation (e.g. to rebuild a memory bank).
        seed: seed of the batch-order generator.
        out_dir: folder for ``log_name`` (one JSON line per epoch, appended); ``None``: no log.
        progress: tqdm bar over epochs.
        desc: progress-bar label, also written into each log line as ``stage``.
    """
    if eval_every < 1:
        raise ValueError(f"eval_every must be >= 1, got {eval_every}")
    groups = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
    if not groups:
        raise ValueError(f"{desc}: nothing to train (no parameters require grad)")
    opt = make_optimizer(groups, cfg)
    base_lrs = [g["lr"] for g in opt.param_groups]
    gen = torch.Generator()
    gen.manual_seed(seed)
    log_path = Path(out_dir) / log_name if out_dir is not None else None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
    trainable = [p for g in opt.param_groups for p in g["params"]]
    result = FitResult()
    epochs: Iterable[int] = range(cfg.epochs)
    if progress:
        from tqdm.auto import tqdm

        epochs = tqdm(epochs, desc=desc, leave=False, dynamic_ncols=True)
    for epoch in epochs:
        factor = lr_factor(cfg, epoch)
        for g, base in zip(opt.param_groups, base_lrs):
            g["lr"] = base * factor
        model.train()
        sums: dict[str, float] = {}
        n_steps = 0
        for batch in batches(epoch, gen):
            losses = step(batch)
            if "loss" not in losses:
                raise KeyError(f"{desc}: step() must return a dict with the total under 'loss', got {sorted(losses)}")
            total = losses["loss"]
            if not torch.isfinite(total):
                raise FloatingPointError(f"{desc}: loss became {total.item()} at epoch {epoch}; lower the lr "
                                         f"(now {opt.param_groups[0]['lr']:.3g}) or check the inputs")
            opt.zero_grad(set_to_none=True)
            total.backward()
            if cfg.grad_clamp > 0:
                for p in trainable:
                    if p.grad is not None:
                        p.grad.clamp_(-cfg.grad_clamp, cfg.grad_clamp)
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            opt.step()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            n_steps += 1
        record: dict[str, Any] = {"stage": desc, "epoch": epoch, "lr": opt.param_groups[0]["lr"], "steps": n_steps}
        record.update({k: v / max(1, n_steps) for k, v in sums.items()})
        if evaluate is not None and ((epoch + 1) % eval_every == 0 or epoch == cfg.epochs - 1):
            model.eval()
            with torch.no_grad():
                record.update(evaluate(epoch))
        if on_epoch_end is not None:
            on_epoch_end(epoch)
        record = {k: _jsonable(v) for k, v in record.items()}
        result.history.append(record)
        if log_path is not None:
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if progress and hasattr(epochs, "set_postfix"):
            epochs.set_postfix({k: f"{v:.3f}" for k, v in record.items() if isinstance(v, float)
                                and k not in ("lr",)}, refresh=False)
    model.eval()
    return result


def config_dict(cfg: OptimConfig) -> dict[str, Any]:
    """``cfg`` as a plain dict (for results files)."""
    d = asdict(cfg)
    d["milestones"] = list(cfg.milestones)
    return d
