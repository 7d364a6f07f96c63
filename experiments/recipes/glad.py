"""GLAD on cached view features (global-local view alignment, TOL, background debiasing).

The recipe reads like the paper's algorithm box::

    data = load_features(cfg)                     # (N, V, D) views per video: 8 local clips + global
    for seed in cfg.seeds:
        adapter0 = tol_pretrain(data, cfg.tol)    # temporal order of 3 clips, source + target, no labels
        for variant in cfg.variants:              # source-only, DANN, G+L+X, +BgAug, +TOL, GLAD, oracle
            head = train_variant(data, variant, adapter0 if variant.tol else None)
                #   CE(source; views local 4,5 + global; BgAug copy with prob p)
                #   + L_local + L_global + L_cross   (GRL coeff 1; BCE source = 1, target = 0)
            metrics = evaluate(head, data.test)   # released test views (local 5 + global) = headline;
                                                  # also the mean of all views
    table over seeds (mean ± 95% CI), confusion matrices

Every fit goes through ``featbank.experiments.fit.fit`` (SGD as released: lr 8.75e-4, momentum
0.9, weight decay 1e-4, grad-norm clip 40, biases 2x lr without decay, the last linear layer 5x
lr on weights and 10x on bias). Metrics are the final epoch's: nothing is selected on the target
test split. The run folder holds ``config.yaml``, ``metrics.json``, ``table.txt``,
``<variant>/seed<k>/metrics.jsonl`` (per-epoch losses and discriminator accuracies),
``confusion_<variant>.csv/.png``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from featbank.experiments.config import load_config, save_config, to_dict
from featbank.experiments.fit import OptimConfig, fit, minibatches, seed_everything
from featbank.experiments.stats import format_rows, summarize
from featbank.heads.glad import (
    GLOBAL_VIEW,
    NUM_LOCAL,
    TEST_LOCAL_VIEWS,
    TRAIN_LOCAL_VIEWS,
    GladAlignmentLoss,
    GladHead,
    TOLHead,
    ViewDiscriminator,
    domain_bce,
    select_views,
)
from featbank.heads.metrics import mean_class_accuracy, top1_accuracy

# ---- config ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeaturesConfig:
    """Feature sets of ``sampler: glad`` rows (one row ``(V, D)`` per video).

    Attributes:
        store: store path.
        source / source_val / target / test: labelled source train, held-out labelled source,
            unlabelled target train (labels used by the oracle only), labelled target test.
        source_bg: sets of BackgroundBlend copies of ``source`` (same video ids), one per copy.
        classes: class names for the confusion matrices (default: the class indices).
    """

    store: str = ""
    source: str = "glad/source_train"
    source_val: str = "glad/source_val"
    target: str = "glad/target_train"
    test: str = "glad/target_test"
    source_bg: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser of the GLAD stage (released values unless the config says otherwise)."""

    lr: float = 8.75e-4
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float = 40.0
    epochs: int = 3
    batch_size: int = 8
    bias_lr_mult: float = 2.0
    last_weight_lr_mult: float = 5.0
    last_bias_lr_mult: float = 10.0


@dataclass(frozen=True)
class TolConfig:
    """Temporal-order pretraining of the adapter (released TOL: SGD lr 0.002, momentum 0.9, wd 1e-4)."""

    lr: float = 2e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float = 40.0
    epochs: int = 30
    batch_size: int = 16
    pair_hidden: int = 512


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the trainable parts."""

    adapter_hidden: int = 256
    disc_hidden: int = 2048
    disc_layers: int = 4
    dropout: float = 0.5
    grl_coeff: float = 1.0


@dataclass(frozen=True)
class BgAugConfig:
    """BackgroundBlend at training time: a source video is replaced by one of its blended copies with prob ``p``."""

    p: float = 0.25


@dataclass(frozen=True)
class GladConfig:
    """A GLAD run (``configs/experiments/glad_synth.yaml``)."""

    recipe: Literal["glad"] = "glad"
    name: str = "glad"
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    threads: int = 1
    variants: tuple[str, ...] = ("source-only", "DANN", "GLAD w/o TOL/BgAug", "+ BgAug", "+ TOL", "GLAD",
                                 "supervised target (oracle)")
    headline_views: Literal["released", "all"] = "released"
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tol: TolConfig = field(default_factory=TolConfig)
    bgaug: BgAugConfig = field(default_factory=BgAugConfig)
    plot: bool = True

    def __post_init__(self) -> None:
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad:
            raise ValueError(f"unknown variants {bad}; known: {list(VARIANTS)}")
        if not self.seeds:
            raise ValueError("seeds must not be empty")


def load_glad_config(path: str | Path | None, overrides: tuple[str, ...] | list[str] = ()) -> GladConfig:
    """Load a :class:`GladConfig` from YAML plus ``key=value`` overrides."""
    return load_config(GladConfig, path, overrides)


@dataclass(frozen=True)
class Variant:
    """One row of the table: which alignment terms, TOL init, BgAug, or the supervised oracle."""

    align: tuple[str, ...] = ()          # "local" / "global" / "cross", or "mean" for DANN
    tol: bool = False
    bgaug: bool = False
    oracle: bool = False


VARIANTS = {
    "source-only": Variant(),
    "DANN": Variant(align=("mean",)),
    "GLAD w/o TOL/BgAug": Variant(align=("local", "global", "cross")),
    "+ BgAug": Variant(align=("local", "global", "cross"), bgaug=True),
    "+ TOL": Variant(align=("local", "global", "cross"), tol=True),
    "GLAD": Variant(align=("local", "global", "cross"), tol=True, bgaug=True),
    "supervised target (oracle)": Variant(oracle=True),
}
SOURCE_ONLY_ROW = "source-only"
FULL_ROW = "GLAD"

# ---- data -----------------------------------------------------------------------------------


@dataclass
class GladData:
    """View features in memory: ``(N, V, D)`` float32 tensors and ``(N,)`` int64 labels."""

    source: torch.Tensor
    source_labels: torch.Tensor
    source_val: torch.Tensor
    source_val_labels: torch.Tensor
    target: torch.Tensor
    target_labels: torch.Tensor          # oracle and reports only
    test: torch.Tensor
    test_labels: torch.Tensor
    source_bg: torch.Tensor | None       # (K, N, V, D) blended copies aligned with ``source``
    num_classes: int
    class_names: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.source.shape[-1])


def _views(rows, name: str) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """One ``(V, D)`` row per video -> ``(N, V, D)``; refuses sets that are not GLAD view rows."""
    from featbank.experiments.config import ConfigError

    if rows.feats.ndim != 3 or rows.feats.shape[1] <= GLOBAL_VIEW:
        raise ConfigError(f"feature set {name!r} has rows of shape {tuple(rows.feats.shape[1:])}; GLAD needs "
                          f"(V>={GLOBAL_VIEW + 1}, D) view rows (extract with sampler: glad)")
    if (rows.n_rows != 1).any():
        raise ConfigError(f"feature set {name!r}: expected one view row per video, got {sorted(set(rows.n_rows))}")
    return rows.feats.float(), torch.as_tensor(rows.labels), rows.video_ids


def load_features(cfg: GladConfig, store=None) -> GladData:
    """Read the four view sets (and the BgAug copies) of ``cfg.features`` from the store."""
    from featbank.store import open_store
    from featbank.store.dataset import load_rows

    own = store is None
    if own:
        from featbank.experiments.config import ConfigError

        if not cfg.features.store:
            raise ConfigError("features.store is not set (features.store=PATH)")
        store = open_store(cfg.features.store, "r")
    try:
        f = cfg.features
        src, y_src, ids = _views(load_rows(store, f.source, require_labels=True), f.source)
        val, y_val, _ = _views(load_rows(store, f.source_val, require_labels=True), f.source_val)
        tgt, y_tgt, _ = _views(load_rows(store, f.target), f.target)
        test, y_test, _ = _views(load_rows(store, f.test, require_labels=True), f.test)
        copies = []
        for name in f.source_bg:
            bg, _, bg_ids = _views(load_rows(store, name, video_ids=list(ids)), name)
            copies.append(bg)
        info = {"sets": to_dict(f), "backbone": store.open_set(f.source).info.backbone,
                "views": int(src.shape[1]), "dim": int(src.shape[2])}
    finally:
        if own:
            store.close()
    n_cls = int(max(y_src.max(), y_test.max()) + 1)
    return GladData(src, y_src, val, y_val, tgt, y_tgt, test, y_test,
                    torch.stack(copies) if copies else None, n_cls,
                    list(f.classes) if f.classes else [str(c) for c in range(n_cls)], info)


# ---- optimiser groups as released (TSMOptimizerConstructor, fc_lr5) -------------------------


def param_groups(modules: list[nn.Module], last: nn.Linear | None, cfg: TrainConfig | TolConfig) -> list[dict[str, Any]]:
    """Weights at lr with decay, biases at ``bias_lr_mult`` x lr without decay, the last linear
    layer's weight at 5x and bias at 10x lr (released ``fc_lr5``)."""
    last_ids = {id(p) for p in last.parameters()} if last is not None else set()
    weights, biases = [], []
    for m in modules:
        for p in m.parameters():
            if id(p) in last_ids or not p.requires_grad:
                continue
            (weights if p.ndim > 1 else biases).append(p)
    bias_mult = getattr(cfg, "bias_lr_mult", 2.0)
    groups = [{"params": weights, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
              {"params": biases, "lr": cfg.lr * bias_mult, "weight_decay": 0.0}]
    if last is not None:
        groups += [{"params": [last.weight], "lr": cfg.lr * getattr(cfg, "last_weight_lr_mult", 5.0),
                    "weight_decay": cfg.weight_decay},
                   {"params": [last.bias], "lr": cfg.lr * getattr(cfg, "last_bias_lr_mult", 10.0),
                    "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _optim(cfg: TrainConfig | TolConfig) -> OptimConfig:
    return OptimConfig(optimizer="sgd", lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                       epochs=cfg.epochs, batch_size=cfg.batch_size, grad_clip=cfg.grad_clip)


# ---- stage: TOL pretraining -------------------------------------------------------------------

# Three clips in temporal order: one local clip from each third of the 8 (released TOL samples
# num_clips=3 segment-based clips).
TOL_SEGMENTS = ((0, 1, 2), (3, 4, 5), (6, 7))


def tol_clips(views: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``(B, V, D)`` -> ``(B, 3, D)``: one random local clip per segment, in temporal order."""
    picks = [torch.tensor(seg)[torch.randint(len(seg), (views.shape[0],), generator=gen)] for seg in TOL_SEGMENTS]
    idx = torch.stack(picks, 1)  # (B, 3)
    return torch.take_along_dim(views, idx[:, :, None], dim=1)


def tol_pretrain(data: GladData, cfg: GladConfig, seed: int, out_dir: Path | None = None) -> tuple[dict[str, Any], dict[str, float]]:
    """Train a fresh adapter with the TOL head on source + target videos (no labels).

    Returns:
        (adapter state_dict, metrics: final TOL loss and order accuracy on held-out source videos).
    """
    seed_everything(seed)
    head = GladHead(data.dim, data.num_classes, cfg.model.adapter_hidden, cfg.model.dropout)
    tol = TOLHead(data.dim, cfg.tol.pair_hidden, cfg.model.dropout)
    model = nn.ModuleDict({"adapter": head.adapter, "tol": tol})
    pool = torch.cat([data.source, data.target])  # (N_s + N_t, V, D)
    step_gen = torch.Generator().manual_seed(seed + 7)

    def batches(epoch: int, gen: torch.Generator):
        return minibatches((pool,), cfg.tol.batch_size, gen)

    def step(batch) -> dict[str, torch.Tensor]:
        clips = tol_clips(head.adapter(batch[0]), step_gen)
        out = tol(clips, generator=step_gen)
        losses = TOLHead.loss(out)
        return {"loss": losses["tol"], "tol_acc": (out.logits.argmax(1) == out.labels).float().mean()}

    def evaluate(epoch: int) -> dict[str, float]:
        g = torch.Generator().manual_seed(12345)
        clips = tol_clips(head.adapter(data.source_val), g)
        out = tol(clips, generator=g)
        return {"tol_val_acc": float((out.logits.argmax(1) == out.labels).float().mean())}

    res = fit(model, step, batches, _optim(cfg.tol), params=param_groups([model], tol.out, cfg.tol),
              evaluate=evaluate, seed=seed, out_dir=out_dir, desc="tol")
    return {k: v.clone() for k, v in head.adapter.state_dict().items()}, {
        "tol_loss": res.final.get("loss"), "tol_train_acc": res.final.get("tol_acc"),
        "tol_val_acc": res.final.get("tol_val_acc")}


# ---- stage: GLAD training ---------------------------------------------------------------------


def _source_batch(data: GladData, idx: torch.Tensor, use_bg: bool, p: float, gen: torch.Generator) -> torch.Tensor:
    """Source views of ``idx``; with BgAug each video is its blended copy with probability ``p``."""
    x = data.source[idx]
    if use_bg and data.source_bg is not None and p > 0:
        k = data.source_bg.shape[0]
        swap = torch.rand(len(idx), generator=gen) < p
        which = torch.randint(k, (len(idx),), generator=gen)
        if swap.any():
            x = x.clone()
            x[swap] = data.source_bg[which[swap], idx[swap]]
    return x


def train_variant(data: GladData, cfg: GladConfig, variant: Variant, seed: int,
                  adapter_init: dict[str, Any] | None = None, out_dir: Path | None = None) -> tuple[GladHead, dict[str, float]]:
    """Train one table row: CE on labelled views + the variant's alignment losses.

    Returns:
        (trained head, final-epoch losses and discriminator accuracies).
    """
    seed_everything(seed)
    m = cfg.model
    head = GladHead(data.dim, data.num_classes, m.adapter_hidden, m.dropout)
    if adapter_init is not None:
        head.adapter.load_state_dict(adapter_init)
    terms = tuple(t for t in variant.align if t != "mean")
    align = GladAlignmentLoss(data.dim, m.disc_hidden, m.disc_layers, m.dropout, terms) if terms else None
    dann = ViewDiscriminator(data.dim, m.disc_hidden, m.disc_layers, m.dropout) if "mean" in variant.align else None
    model = nn.ModuleDict({"head": head, **({"align": align} if align else {}), **({"dann": dann} if dann else {})})
    labelled, labels = (data.target, data.target_labels) if variant.oracle else (data.source, data.source_labels)
    if variant.oracle and (labels < 0).any():
        from featbank.experiments.config import ConfigError

        raise ConfigError("the supervised-target oracle needs labelled target train videos")
    aug_gen = torch.Generator().manual_seed(seed + 11)
    adapt = align is not None or dann is not None

    def batches(epoch: int, gen: torch.Generator):
        order = torch.arange(len(labelled))
        for (i,) in minibatches((order,), cfg.train.batch_size, gen):
            j = torch.randint(len(data.target), (len(i),), generator=gen) if adapt else None
            yield i, j

    def step(batch) -> dict[str, torch.Tensor]:
        i, j = batch
        x = labelled[i] if variant.oracle else _source_batch(data, i, variant.bgaug, cfg.bgaug.p, aug_gen)
        out = head(x, local=TRAIN_LOCAL_VIEWS)  # classifier on mean(local 4, local 5, global)
        losses = head.loss(out, labels[i])
        total = losses["cls"]
        logs: dict[str, torch.Tensor] = {"cls": losses["cls"].detach()}
        if j is not None:
            emb_t = head.adapter(data.target[j])  # (B, V, D)
            if align is not None:
                d = align(out.embed, emb_t, m.grl_coeff)
                for t in terms:
                    total = total + d[f"dom_{t}"]
                    logs[f"dom_{t}"], logs[f"acc_{t}"] = d[f"dom_{t}"].detach(), d[f"acc_{t}"]
            if dann is not None:
                r = domain_bce(dann, select_views(out.embed, TRAIN_LOCAL_VIEWS),
                               select_views(emb_t, TRAIN_LOCAL_VIEWS), m.grl_coeff)
                total = total + r.loss
                logs["dom_mean"], logs["acc_mean"] = r.loss.detach(), r.acc
        return {"loss": total, **logs}

    res = fit(model, step, batches, _optim(cfg.train), params=param_groups([model], head.classifier.fc, cfg.train),
              seed=seed, out_dir=out_dir, desc="glad")
    return head, {k: v for k, v in res.final.items() if isinstance(v, float)}


# ---- stage: evaluation ------------------------------------------------------------------------


@torch.no_grad()
def predict(head: GladHead, views: torch.Tensor, which: Literal["released", "all"]) -> torch.Tensor:
    """Class probabilities: released test views (local 5 + global) or the mean of all views."""
    head.eval()
    local = TEST_LOCAL_VIEWS if which == "released" else None
    v = views if which == "released" else views[:, : NUM_LOCAL + 1]
    return head(v, local=local).logits.softmax(1)


def confusion(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``(C, C)`` counts, rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm


def evaluate(head: GladHead, views: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """Mean-class accuracy and top-1 with the released test views (headline) and all views."""
    out: dict[str, Any] = {}
    for which, suffix in (("released", ""), ("all", "_allviews")):
        p = predict(head, views, which)
        out[f"mean_class_acc{suffix}"] = mean_class_accuracy(p, labels, num_classes)
        out[f"top1{suffix}"] = top1_accuracy(p, labels)
        if which == "released":
            out["_preds"] = p.argmax(1).numpy()
    return out


# ---- the run -----------------------------------------------------------------------------------


def run_glad(cfg: GladConfig, out_dir: str | Path, *, store=None, data: GladData | None = None,
             progress: bool = False) -> dict[str, Any]:
    """Every variant over every seed; writes the run folder and returns its ``metrics.json`` dict."""
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    threads_before = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    try:
        with torch.random.fork_rng():  # no global RNG state leaks out of the run
            data = load_features(cfg, store) if data is None else data
            return _run(cfg, out, data, progress, t_start)
    finally:
        torch.set_num_threads(threads_before)


def _run(cfg: GladConfig, out: Path, data: GladData, progress: bool, t_start: float) -> dict[str, Any]:
    from featbank.experiments.stats import write_demo_results  # noqa: F401  (re-exported for callers)

    per_variant: dict[str, list[dict[str, Any]]] = {v: [] for v in cfg.variants}
    cms = {v: np.zeros((data.num_classes, data.num_classes), np.int64) for v in cfg.variants}
    tol_metrics = []
    y_test = data.test_labels.numpy()
    needs_tol = any(VARIANTS[v].tol for v in cfg.variants)
    if any(VARIANTS[v].bgaug for v in cfg.variants) and data.source_bg is None:
        from featbank.experiments.config import ConfigError

        raise ConfigError("a BgAug variant needs BackgroundBlend copies: set features.source_bg")
    for seed in cfg.seeds:
        t0 = time.perf_counter()
        adapter0 = None
        if needs_tol:
            adapter0, tm = tol_pretrain(data, cfg, seed * 1000 + 1, out / "tol" / f"seed{seed}")
            tol_metrics.append({"seed": seed, **tm})
            if progress:
                print(f"  seed {seed}: TOL pretraining, held-out source order accuracy "
                      f"{tm['tol_val_acc']:.3f} (chance 0.167)", flush=True)
        for name in cfg.variants:
            v = VARIANTS[name]
            t1 = time.perf_counter()
            d = out / _slug(name) / f"seed{seed}"
            head, losses = train_variant(data, cfg, v, seed * 1000 + 2, adapter0 if v.tol else None, d)
            ev = evaluate(head, data.test, data.test_labels, data.num_classes)
            cms[name] += confusion(ev.pop("_preds"), y_test, data.num_classes)
            val = evaluate(head, data.source_val, data.source_val_labels, data.num_classes)
            val.pop("_preds")
            rec = {"seed": seed, **ev, "source_val_mean_class_acc": val["mean_class_acc"],
                   "seconds": time.perf_counter() - t1,
                   **{f"final_{k}": x for k, x in losses.items() if k.startswith(("acc_", "dom_", "cls"))}}
            per_variant[name].append(rec)
            if progress:
                print(f"  seed {seed}: {name:<28} mean-class {ev['mean_class_acc']:.3f}  top-1 {ev['top1']:.3f}  "
                      f"(all views {ev['mean_class_acc_allviews']:.3f})  source val {val['mean_class_acc']:.3f}",
                      flush=True)
        if progress:
            print(f"  seed {seed} done in {time.perf_counter() - t0:.1f}s", flush=True)
    keys = ["mean_class_acc", "top1", "mean_class_acc_allviews", "top1_allviews", "source_val_mean_class_acc"]
    rows = [summarize(n, per_variant[n], keys) for n in cfg.variants]
    for n, cm in cms.items():
        _write_confusion(cm, data.class_names, out / f"confusion_{_slug(n)}.csv",
                         out / f"confusion_{_slug(n)}.png" if cfg.plot else None, n)
    table = format_rows(rows, ["mean_class_acc", "top1", "mean_class_acc_allviews"])
    (out / "table.txt").write_text(table + "\n")
    result = {
        "name": cfg.name,
        "metric": "mean_class_acc",
        "headline_views": "released test views: local clip 5 + global view (mean_class_acc); "
                          "mean of all views reported as mean_class_acc_allviews",
        "selection": "final epoch of every fit; nothing selected on the target test split",
        "rows": rows,
        "tol": tol_metrics,
        "seeds": list(cfg.seeds),
        "data": {**data.info, "n_source": len(data.source), "n_source_val": len(data.source_val),
                 "n_target": len(data.target), "n_test": len(data.test), "num_classes": data.num_classes,
                 "bg_copies": 0 if data.source_bg is None else int(data.source_bg.shape[0])},
        "seconds": time.perf_counter() - t_start,
        "out_dir": str(out),
    }
    import json

    from featbank.experiments.stats import to_jsonable

    (out / "metrics.json").write_text(json.dumps(to_jsonable(result), indent=2) + "\n")
    return result


def _slug(name: str) -> str:
    s = "".join(ch if ch.isalnum() else "_" for ch in name.lower())
    return "_".join(p for p in s.split("_") if p)


def _write_confusion(cm: np.ndarray, classes: list[str], csv_path: Path, png_path: Path | None, title: str) -> None:
    """Confusion matrix (summed over seeds) as CSV (rows = true class) and PNG."""
    lines = ["true\\pred," + ",".join(classes)]
    lines += [f"{classes[i]}," + ",".join(str(int(v)) for v in cm[i]) for i in range(len(classes))]
    csv_path.write_text("\n".join(lines) + "\n")
    if png_path is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rec = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(classes), 0.8 + 0.7 * len(classes)))
    ax.imshow(rec, vmin=0, vmax=1, cmap="Blues")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7,
                    color="white" if rec[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=40, ha="right", fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title} (target test, all seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


def format_table(result: dict[str, Any]) -> str:
    """The table of a run: mean ± 95% CI over seeds."""
    return format_rows(result["rows"], ["mean_class_acc", "top1", "mean_class_acc_allviews"])


def with_store(cfg: GladConfig, store: str) -> GladConfig:
    """``cfg`` reading from ``store``."""
    return replace(cfg, features=replace(cfg.features, store=store))


def write_view_set(store, name: str, feats: np.ndarray, labels: np.ndarray, video_ids: list[str], *, split: str,
                   domain: str, backbone: str = "synthetic", weights_id: str = "synthetic-v1",
                   dtype: str = "float32") -> None:
    """Write ``(N, V, D)`` view features as a set of one ``(V, D)`` row per video (tests, imports)."""
    from featbank.store.schema import FeatureSetInfo, VideoMeta, VideoRows

    feats = np.asarray(feats, np.float32)
    fs = store.create_set(FeatureSetInfo(name, tuple(feats.shape[1:]), dtype=dtype, level="clip", backbone=backbone,
                                         weights_id=weights_id, endpoint="views",
                                         sampling={"sampler": "glad", "note": "imported view rows"}))
    store.set_backbone_weights(backbone, weights_id)
    for vid, f, y in zip(video_ids, feats, labels):
        lab = (int(y),) if int(y) >= 0 else ()
        fs.write_video(VideoRows(f[None], np.zeros(1), np.ones(1)),
                       VideoMeta(vid, labels=lab, split=split, domain=domain))


def write_synthetic_view_sets(store, *, num_classes: int = 3, n_source: int = 24, n_target: int = 18,
                              n_test: int = 15, dim: int = 16, views: int = 9, bg_copies: int = 1,
                              shift: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """Tiny GLAD view sets with class structure and a source/target shift (tests).

    Returns:
        ``key=value`` overrides naming the sets (``features.*``).
    """
    rng = np.random.default_rng(seed)
    proto = rng.standard_normal((num_classes, dim)).astype(np.float32) * 2.0
    offset = rng.standard_normal(dim).astype(np.float32) * shift

    def make(n: int, dom_shift: float) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % num_classes
        x = proto[y][:, None, :] + rng.standard_normal((n, views, dim)).astype(np.float32) + dom_shift * offset
        return x, y

    out = {}
    for key, name, n, sh, split, dom in (("source", "v/source", n_source, 0.0, "train", "source"),
                                         ("source_val", "v/source_val", max(num_classes, n_source // 3), 0.0, "val",
                                          "source"),
                                         ("target", "v/target", n_target, 1.0, "train", "target"),
                                         ("test", "v/test", n_test, 1.0, "test", "target")):
        x, y = make(n, sh)
        ids = [f"{key}_{i:04d}" for i in range(n)]
        write_view_set(store, name, x, y, ids, split=split, domain=dom)
        out[f"features.{key}"] = name
        if key == "source":
            names = []
            for k in range(bg_copies):
                write_view_set(store, f"v/source_bg{k}", x + 0.3 * rng.standard_normal(x.shape).astype(np.float32),
                               y, ids, split=split, domain=dom)
                names.append(f"v/source_bg{k}")
            out["features.source_bg"] = "[" + ",".join(names) + "]"
    return out


def source_val_grid(data: GladData, cfg: GladConfig, lrs: tuple[float, ...], epochs: tuple[int, ...],
                    seeds: tuple[int, ...] = (0, 1, 2)) -> list[dict[str, Any]]:
    """Source-only mean-class accuracy on the held-out labelled SOURCE split for each (lr, epochs).

    This is the only selection the recipe's small-benchmark settings went through: no target
    data (labelled or not) is read. Returns one dict per setting, best first.
    """
    out = []
    for lr in lrs:
        for ep in epochs:
            c = replace(cfg, train=replace(cfg.train, lr=lr, epochs=ep))
            accs = []
            for s in seeds:
                head, _ = train_variant(data, c, VARIANTS[SOURCE_ONLY_ROW], s * 1000 + 2)
                ev = evaluate(head, data.source_val, data.source_val_labels, data.num_classes)
                accs.append(ev["mean_class_acc"])
            out.append({"lr": lr, "epochs": ep, "source_val_mean_class_acc": float(np.mean(accs)),
                        "per_seed": accs})
    return sorted(out, key=lambda r: (-r["source_val_mean_class_acc"], r["lr"], r["epochs"]))
