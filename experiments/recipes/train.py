"""Quick head experiments on a cached feature set (``featbank train``, ``recipe: train``).

One call trains a head (linear / MLP probe on pooled video features, attention pooling or a
temporal convolution over the row sequence) on the ``train`` split of a feature set and
reports top-1 and mean-class accuracy on the ``test`` split, over several seeds with 95%
confidence intervals. Features are read once through ``featbank.store.dataset`` and trained
with the shared fit loop; the reported numbers are the final epoch's (nothing is selected
on the test split). Same config and seed give bit-identical numbers on CPU.

Example:
    >>> res = train_heads(TrainConfig(store="feats.zarr", set="i3d/Mixed_5c", head="linear", seeds=5))  # doctest: +SKIP
    >>> res["top1_mean"], res["top1_ci95"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from featbank.experiments.config import ConfigError, load_config, save_config
from featbank.experiments.fit import OptimConfig, config_dict, deterministic, fit, minibatches, seed_everything
from featbank.experiments.stats import mean_ci95

HEAD_KINDS = ("linear", "mlp", "attn", "tcn")


@dataclass(frozen=True)
class TrainConfig:
    """A quick head experiment.

    Attributes:
        recipe: ``train`` (the key ``featbank run`` dispatches on).
        name: run name (default output folder ``runs/NAME``).
        store: feature store path.
        set: feature-set name.
        head: ``linear`` / ``mlp`` (pooled video features) or ``attn`` / ``tcn`` (row sequences).
        label: what to predict: ``label`` (each video's first label) or ``domain``.
        train_split: split the head is trained on.
        test_split: split it is evaluated on.
        seeds: number of training seeds (``seed``, ``seed+1``, ...).
        seed: first seed.
        max_len: longest row sequence for ``attn`` / ``tcn`` (longer videos are subsampled uniformly).
        normalize: ``standardize`` (train mean / std), ``l2`` (unit rows) or ``none``.
        threads: torch CPU threads (0: keep the current count).
        optim: optimiser, schedule, epochs and batch size.
    """

    recipe: str = "train"
    name: str = "train"
    store: str = ""
    set: str = ""
    head: Literal["linear", "mlp", "attn", "tcn"] = "linear"
    label: Literal["label", "domain"] = "label"
    train_split: str = "train"
    test_split: str = "test"
    seeds: int = 1
    seed: int = 0
    max_len: int = 64
    normalize: Literal["standardize", "l2", "none"] = "standardize"
    threads: int = 0
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        optimizer="adamw", lr=1e-2, weight_decay=1e-4, epochs=100, batch_size=64, schedule="cosine"))

    def __post_init__(self) -> None:
        if self.recipe != "train":
            raise ValueError(f"recipe must be 'train', got {self.recipe!r}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if self.max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {self.max_len}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")


@dataclass(frozen=True, eq=False)
class _Split:
    feats: torch.Tensor  # (V, D) pooled or (V, T, D) sequences
    mask: torch.Tensor | None  # (V, T) for sequences
    labels: torch.Tensor  # (V,)


def _targets(rows: Any, key: str, classes: list[str] | None) -> tuple[np.ndarray, list[str] | None]:
    if key == "label":
        return rows.labels, None
    values = [str(getattr(m, key)) for m in rows.metas]
    if classes is None:
        classes = sorted(set(values))
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index.get(v, -1) for v in values], np.int64), classes


def load_splits(cfg: TrainConfig) -> tuple[_Split, _Split, int, dict[str, Any]]:
    """Read the train and test splits of ``cfg.set`` as head inputs (pooled or padded), normalised."""
    from featbank.store import open_store
    from featbank.store.dataset import load_rows, pad_sequences

    if not cfg.store or not cfg.set:
        raise ConfigError("train: give the feature store and set (--store PATH --set NAME, or store=/set= in YAML)")
    store = open_store(cfg.store, "r")
    try:
        train = load_rows(store, cfg.set, split=cfg.train_split, require_labels=cfg.label == "label")
        test = load_rows(store, cfg.set, split=cfg.test_split)
    finally:
        store.close()
    y_tr, classes = _targets(train, cfg.label, None)
    y_te, _ = _targets(test, cfg.label, classes)
    num_classes = int(max(y_tr.max(initial=-1), y_te.max(initial=-1))) + 1
    if num_classes < 2:
        raise ConfigError(f"train: set {cfg.set!r} has fewer than two classes in {cfg.label!r}")
    sequence = cfg.head in ("attn", "tcn")
    splits = []
    for rows in (train, test):
        if sequence:
            p = pad_sequences(rows, cfg.max_len)
            x = p.feats.float().reshape(*p.feats.shape[:2], -1, rows.dim).mean(2)  # views / maps -> (V, T, D)
            splits.append((x, p.mask))
        else:
            splits.append((rows.pooled(), None))
    (x_tr, m_tr), (x_te, m_te) = splits
    if cfg.normalize == "standardize":
        flat = x_tr[m_tr] if m_tr is not None else x_tr  # statistics of the train rows only
        mu, sd = flat.mean(0), flat.std(0).clamp_min(1e-6)
        x_tr, x_te = (x_tr - mu) / sd, (x_te - mu) / sd
    elif cfg.normalize == "l2":
        x_tr, x_te = torch.nn.functional.normalize(x_tr, dim=-1), torch.nn.functional.normalize(x_te, dim=-1)
    info = {"n_train": len(train.video_ids), "n_test": len(test.video_ids), "dim": train.dim,
            "num_classes": num_classes, "classes": classes, "backbone": getattr(train.info, "backbone", "")}
    return (_Split(x_tr, m_tr, torch.from_numpy(y_tr)), _Split(x_te, m_te, torch.from_numpy(y_te)),
            num_classes, info)


def _accuracies(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    from featbank.heads.metrics import mean_class_accuracy, top1_accuracy

    known = labels >= 0
    if not bool(known.any()):
        return {"top1": float("nan"), "mca": float("nan")}
    preds = logits.argmax(1)
    return {"top1": top1_accuracy(preds[known], labels[known]),
            "mca": mean_class_accuracy(preds[known], labels[known], num_classes)}


def train_one_seed(cfg: TrainConfig, train: _Split, test: _Split, num_classes: int, seed: int,
                   out_dir: Path | None = None, progress: bool = False) -> dict[str, Any]:
    """Train one head with one seed; returns its final-epoch metrics."""
    from featbank.heads.probes import PROBES

    t0 = time.perf_counter()
    seed_everything(seed)
    head = PROBES[cfg.head](int(train.feats.shape[-1]), num_classes)
    tensors = (train.feats, train.labels) if train.mask is None else (train.feats, train.mask, train.labels)

    def step(batch):
        *x, y = batch
        out = head(x[0], x[1] if len(x) > 1 else None)
        losses = head.loss(out, y)
        return {"loss": sum(losses.values()), **losses}

    def evaluate(epoch: int) -> dict[str, float]:
        out = head(test.feats, test.mask)
        return _accuracies(out.logits, test.labels, num_classes)

    res = fit(head, step, lambda epoch, gen: minibatches(tensors, cfg.optim.batch_size, gen), cfg.optim,
              evaluate=evaluate, eval_every=cfg.optim.epochs, seed=seed, out_dir=out_dir,
              progress=progress, desc=f"{cfg.head} seed {seed}")
    final = res.final
    return {"seed": seed, "top1": final["top1"], "mca": final["mca"], "train_loss": final["loss"],
            "seconds": time.perf_counter() - t0}


def train_heads(cfg: TrainConfig, out: str | Path | None = None, *, progress: bool = False) -> dict[str, Any]:
    """Train ``cfg.head`` over ``cfg.seeds`` seeds; returns (and writes to ``out``) the summary.

    Returns:
        ``{head, set, seeds, top1_mean, top1_ci95, mca_mean, mca_ci95, per_seed: [...], ...}``.
    """
    t0 = time.perf_counter()
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        if out_dir.exists() and not out_dir.is_dir():
            raise ConfigError(f"train: --out {out_dir} is a file; give a folder")
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.jsonl").unlink(missing_ok=True)  # one run per folder: the log restarts
        save_config(cfg, out_dir / "config.yaml")
    with deterministic(cfg.threads or None):
        t_load = time.perf_counter()
        train, test, num_classes, info = load_splits(cfg)
        load_s = time.perf_counter() - t_load
        per_seed = [train_one_seed(cfg, train, test, num_classes, cfg.seed + i, out_dir, progress)
                    for i in range(cfg.seeds)]
    top1, top1_ci = mean_ci95([r["top1"] for r in per_seed])
    mca, mca_ci = mean_ci95([r["mca"] for r in per_seed])
    res = {"head": cfg.head, "set": cfg.set, "label": cfg.label, "seeds": cfg.seeds,
           "top1_mean": top1, "top1_ci95": top1_ci, "mca_mean": mca, "mca_ci95": mca_ci,
           "per_seed": per_seed, **{k: v for k, v in info.items() if k != "classes"},
           "chance": 1.0 / num_classes, "optim": config_dict(cfg.optim),
           "load_seconds": load_s, "seconds": time.perf_counter() - t0}
    if out_dir is not None:
        (out_dir / "results.json").write_text(json.dumps(res, indent=2, default=float) + "\n")
    return res


def load_train_config(path: str | Path | None, overrides: tuple[str, ...] | list[str] = ()) -> TrainConfig:
    """A ``TrainConfig`` from YAML (or defaults) plus ``key=value`` overrides."""
    return load_config(TrainConfig, path, overrides)


def format_result(res: dict[str, Any]) -> str:
    """One human line per metric: ``top-1 0.912 ± 0.010 (5 seeds)``."""
    from featbank.experiments.stats import fmt_ci

    return (f"{res['head']} on {res['set']} ({res['n_train']} train / {res['n_test']} test videos, "
            f"{res['num_classes']} classes, chance {res['chance']:.3f})\n"
            f"  top-1              {fmt_ci(res['top1_mean'], res['top1_ci95'])}  ({res['seeds']} seeds)\n"
            f"  mean-class acc     {fmt_ci(res['mca_mean'], res['mca_ci95'])}\n"
            f"  {res['seconds']:.1f} s (reading {res['load_seconds']:.2f} s)")


def with_cli(cfg: TrainConfig, **kw: Any) -> TrainConfig:
    """``cfg`` with the non-None keyword values replaced (CLI flags over YAML)."""
    return replace(cfg, **{k: v for k, v in kw.items() if v is not None})
