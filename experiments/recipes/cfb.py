"""CFB (ACM MM 2024): image -> video adaptation with a category-aware flow memory bank and
video-pace prediction, on cached per-time-step I3D features (RGB and optical flow).

The algorithm box, as released (``train_with_rgbflow_rpflow_random_videopace.py``):

1. source stills become short videos with a small camera motion (``featbank data still2video``);
   RGB and flow features of those videos (source) and of the target videos are cached;
2. per epoch, over labelled source videos: two streams, each ``BCE(time-mean logits, one-hot)
   + per-step BCE``, summed (no target classification loss); from epoch ``pre`` every source
   flow feature is replaced by a random bank entry of the sample's class;
   plus the pace loss ``pace_weight * CE(pace(target RGB at frame step r), r - 1)``;
3. after every epoch, an evaluation pass over the target adaptation videos: pseudo label
   ``argmax time-mean(softmax(z_rgb) + softmax(z_flow))`` and its score as confidence; the bank
   is refilled with the ``bank_cap`` (60) most confident target flow features per class, and
   saved (``bank/epoch_NNN/{cls}.npy``);
4. report the final epoch's ``Acc`` and ``AccSf`` on the adaptation videos (transductive, as
   published) and on a held-out target test split; means over seeds with 95% CIs.

Ablation rows (``ABLATIONS``): RGB only, RGB+flow, + flow bank, + pace head, full.

Frame indices: the released evaluation sampler uses ``np.linspace(..., dtype=np.int8)``,
which wraps for videos longer than 127 frames; :func:`released_eval_frame_indices`
reproduces it, :func:`eval_frame_indices` is ours (int64).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from featbank.experiments.config import ConfigError, load_config, save_config, to_dict
from featbank.experiments.fit import OptimConfig
from featbank.experiments.stats import to_jsonable

# name -> (use_flow, use_bank, use_pace)
ABLATIONS: dict[str, tuple[bool, bool, bool]] = {
    "RGB only": (False, False, False),
    "RGB+flow": (True, False, False),
    "+ flow bank": (True, True, False),
    "+ pace head": (True, False, True),
    "full": (True, True, True),
}


def eval_frame_indices(n_frames: int, num: int) -> np.ndarray:
    """``num`` frame indices spread uniformly over ``n_frames`` (first and last included), int64."""
    if n_frames < 1 or num < 1:
        raise ValueError(f"eval_frame_indices: n_frames and num must be >= 1, got {n_frames}, {num}")
    return np.linspace(0, n_frames - 1, num).astype(np.int64)


def released_eval_frame_indices(n_frames: int, num: int) -> np.ndarray:
    """What the released CFB sampler computes: the same linspace cast to int8 (wraps past 127)."""
    return np.linspace(0, n_frames - 1, num, dtype=np.int8)


@dataclass(frozen=True)
class CfbFeatures:
    """Feature sets of one run (all per-time-step rows, ``keep_time``).

    Attributes:
        store: the feature store.
        source_rgb / source_flow: the generated source videos (labelled).
        target_rgb / target_flow: the target adaptation videos (labels only for reports).
        test_rgb / test_flow: the held-out target test split.
        pace_sets: target RGB at frame steps 1..5 (in pace order); empty: no pace data.
        max_len: time steps kept per video (longer videos are subsampled uniformly).
        motion_pairs: class-index pairs to report per-class accuracy for (e.g. the
            benchmark's motion-only pairs); empty: none.
    """

    store: str = ""
    source_rgb: str = "source/rgb"
    source_flow: str = "source/flow"
    target_rgb: str = "target_train/rgb"
    target_flow: str = "target_train/flow"
    test_rgb: str = "target_test/rgb"
    test_flow: str = "target_test/flow"
    pace_sets: tuple[str, ...] = ("target_train/pace1", "target_train/pace2", "target_train/pace3",
                                  "target_train/pace4", "target_train/pace5")
    max_len: int = 8
    motion_pairs: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class CfbConfig:
    """A CFB run (``configs/experiments/cfb_synth.yaml``).

    Attributes:
        recipe: ``cfb``.
        name: run name (default output folder ``runs/NAME``).
        seeds: training seeds; each ablation row runs every seed.
        rows: ablation rows to run (keys of ``ABLATIONS``).
        features: feature sets.
        hidden: trainable trunk width per stream (0: linear heads on the frozen features).
        dropout: head dropout (0.5 as released).
        bank_cap: bank entries per class (60 as released).
        pre: first epoch (0-based) whose source flow is replaced from the bank (10 as released).
        pace_weight: weight of the pace loss (0.2 as released for E->H).
        pace_batch: target pace clips per step.
        holdout_source: fraction of source videos per class held out (never trained on) to
            report ``source_holdout_acc_sf`` - the only split hyper-parameters were adjusted on.
        save_bank_seeds: the first N seeds of each bank row save the bank every epoch.
        threads: torch CPU threads.
        optim: optimiser (SGD, momentum 0.9, wd 1e-4, multistep 0.1, grad clamp 1 as released).
    """

    recipe: str = "cfb"
    name: str = "cfb"
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    rows: tuple[str, ...] = tuple(ABLATIONS)
    features: CfbFeatures = field(default_factory=CfbFeatures)
    hidden: int = 256
    dropout: float = 0.5
    bank_cap: int = 60
    pre: int = 10
    pace_weight: float = 0.2
    pace_batch: int = 32
    holdout_source: float = 0.0
    save_bank_seeds: int = 1
    threads: int = 1
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4, epochs=30, batch_size=16,
        schedule="multistep", milestones=(20,), gamma=0.1, grad_clamp=1.0))

    def __post_init__(self) -> None:
        if self.recipe != "cfb":
            raise ValueError(f"recipe must be 'cfb', got {self.recipe!r}")
        bad = [r for r in self.rows if r not in ABLATIONS]
        if bad:
            raise ValueError(f"unknown ablation rows {bad}; known: {list(ABLATIONS)}")
        if not self.seeds:
            raise ValueError("seeds: at least one seed")
        if self.bank_cap < 1 or self.pre < 0 or self.pace_weight < 0 or not 0 <= self.holdout_source < 1:
            raise ValueError("need bank_cap >= 1, pre >= 0, pace_weight >= 0, 0 <= holdout_source < 1")


def load_cfb_config(path: str | Path | None, overrides: Sequence[str] = ()) -> CfbConfig:
    """Load a CFB config (YAML + ``key=value`` overrides)."""
    return load_config(CfbConfig, path, overrides)


# ---- data ---------------------------------------------------------------------------------


@dataclass
class Streams:
    """Padded RGB and flow step features of one split, aligned by video id."""

    rgb: Any  # torch (V, T, D)
    rgb_mask: Any  # (V, T)
    flow: Any  # (V, T', D')
    flow_mask: Any
    labels: Any  # torch (V,) int64
    video_ids: tuple[str, ...]


def _pair(store, rgb_name: str, flow_name: str, max_len: int, require_labels: bool) -> Streams:
    import torch

    from featbank.store.dataset import load_rows, pad_sequences

    r = load_rows(store, rgb_name, require_labels=require_labels, dtype=torch.float32)
    f = load_rows(store, flow_name, video_ids=list(r.video_ids), require_labels=require_labels, dtype=torch.float32)
    if tuple(f.video_ids) != tuple(r.video_ids):
        missing = sorted(set(r.video_ids) - set(f.video_ids))[:5]
        raise ConfigError(f"{flow_name}: flow features missing for videos of {rgb_name}: {missing}")
    pr, pf = pad_sequences(r, max_len), pad_sequences(f, max_len)
    (rf, rm), (ff, fm) = _pad_to(pr.feats, pr.mask, max_len), _pad_to(pf.feats, pf.mask, max_len)
    return Streams(rf, rm, ff, fm, torch.from_numpy(r.labels.copy()), r.video_ids)


def _pad_to(feats, mask, length: int):
    """Zero-pad ``(V, T, D)`` / ``(V, T)`` to ``T = length`` so every split shares one time axis
    (a bank entry of a target video then fits in place of a source video's flow)."""
    import torch

    extra = length - feats.shape[1]
    if extra <= 0:
        return feats, mask
    return (torch.cat([feats, feats.new_zeros(feats.shape[0], extra, *feats.shape[2:])], 1),
            torch.cat([mask, mask.new_zeros(mask.shape[0], extra)], 1))


@dataclass
class CfbData:
    """Everything a run trains and evaluates on (read once, shared by every row and seed)."""

    source: Streams
    target: Streams
    test: Streams | None
    pace: list[tuple[Any, Any]]  # per pace r: (feats (V, T, D), mask)
    num_classes: int
    weights_ids: dict[str, str]


def load_cfb_data(cfg: CfbConfig) -> CfbData:
    """Read the configured feature sets from the store."""
    import torch

    from featbank.store import open_store
    from featbank.store.dataset import load_rows, pad_sequences

    fc = cfg.features
    if not fc.store:
        raise ConfigError("features.store is not set (features.store=PATH)")
    if not Path(fc.store).exists():
        raise ConfigError(f"features.store {fc.store} does not exist")
    store = open_store(fc.store, "r")
    try:
        names = set(store.feature_sets())
        need = [fc.source_rgb, fc.source_flow, fc.target_rgb, fc.target_flow, *fc.pace_sets]
        if names is not None:
            missing = [n for n in need if n not in names]
            if missing:
                raise ConfigError(f"{fc.store}: feature sets {missing} not found (present: {sorted(names)})")
        source = _pair(store, fc.source_rgb, fc.source_flow, fc.max_len, True)
        target = _pair(store, fc.target_rgb, fc.target_flow, fc.max_len, False)
        test = None
        if fc.test_rgb and (names is None or fc.test_rgb in names):
            test = _pair(store, fc.test_rgb, fc.test_flow, fc.max_len, True)
        pace = []
        for name in fc.pace_sets:
            p = pad_sequences(load_rows(store, name, video_ids=list(target.video_ids), dtype=torch.float32), fc.max_len)
            pace.append(_pad_to(p.feats, p.mask, fc.max_len))
        wids = {}
        for n in (fc.source_rgb, fc.source_flow):
            info = store.open_set(n).info
            wids[n] = getattr(getattr(info, "spec", None), "weights_id", "")
    finally:
        store.close()
    num_classes = int(max(source.labels.max(), target.labels.max(), test.labels.max() if test else 0)) + 1
    return CfbData(source, target, test, pace, num_classes, wids)


# ---- one training run ---------------------------------------------------------------------


def _holdout_split(labels, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified ``(train_idx, holdout_idx)`` of the source videos."""
    y = np.asarray(labels)
    if fraction <= 0:
        return np.arange(len(y)), np.zeros(0, np.int64)
    rng = np.random.default_rng(10_000 + seed)
    train, hold = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(fraction * len(idx)))
        hold.extend(idx[:k].tolist())
        train.extend(idx[k:].tolist())
    return np.sort(np.array(train, np.int64)), np.sort(np.array(hold, np.int64))


def _per_class(pred, labels, num_classes: int) -> list[float | None]:
    pred, labels = np.asarray(pred), np.asarray(labels)
    return [float((pred[labels == c] == c).mean()) if (labels == c).any() else None for c in range(num_classes)]


def train_row(data: CfbData, cfg: CfbConfig, row: str, seed: int, out: Path | None = None,
              progress: bool = False) -> dict[str, Any]:
    """Train one ablation row with one seed; returns the final epoch's metrics.

    Metrics: ``acc_sf``/``acc`` on the adaptation videos (transductive), ``test_acc_sf`` /
    ``test_acc`` on the test split, ``pl_acc`` of the last bank's pseudo labels, the bank size,
    per-class test accuracy (``test_per_class_sf``), and ``source_holdout_acc_sf`` when a source
    hold-out is configured.
    """
    import torch

    from featbank.experiments.fit import fit, seed_everything
    from featbank.heads.cfb import CfbModel
    from featbank.heads.memory import CategoryBank
    from featbank.heads.metrics import two_stream_scores

    use_flow, use_bank, use_pace = ABLATIONS[row]
    use_pace = use_pace and bool(data.pace)
    gen = seed_everything(seed)
    src, tgt = data.source, data.target
    train_idx, hold_idx = _holdout_split(src.labels.numpy(), cfg.holdout_source, seed)
    model = CfbModel(src.rgb.shape[-1], src.flow.shape[-1], data.num_classes, hidden=cfg.hidden,
                     dropout=cfg.dropout, use_flow=use_flow, use_pace=use_pace)
    bank = CategoryBank(data.num_classes, cap=cfg.bank_cap, weights_id=data.weights_ids.get(cfg.features.source_flow, ""))
    tgt_mask_by_id = {v: tgt.flow_mask[i] for i, v in enumerate(tgt.video_ids)}
    state = {"epoch": 0, "replaced": 0, "seen": 0}
    draw_gen = torch.Generator().manual_seed(seed + 7)
    pace_gen = torch.Generator().manual_seed(seed + 11)
    n_tr = len(train_idx)

    def batches(epoch: int, g: torch.Generator):
        state["epoch"] = epoch
        order = torch.from_numpy(train_idx)[torch.randperm(n_tr, generator=g)]
        for i in range(0, n_tr, cfg.optim.batch_size):
            yield order[i:i + cfg.optim.batch_size]

    def step(idx):
        y = src.labels[idx]
        flow, fmask = src.flow[idx], src.flow_mask[idx]
        if use_flow and use_bank and state["epoch"] >= cfg.pre and len(bank):
            feats, found, ids = bank.draw(y, generator=draw_gen)
            if bool(found.any()):
                flow, fmask = flow.clone(), fmask.clone()
                flow[found] = feats[found].to(flow.dtype)
                fmask[found] = torch.stack([tgt_mask_by_id[i] for i, ok in zip(ids, found.tolist()) if ok])
            state["replaced"] += int(found.sum())
        state["seen"] += len(idx)
        out = model(src.rgb[idx], flow if use_flow else None, src.rgb_mask[idx], fmask)
        losses = model.loss(out, y)
        if use_pace:
            pv = torch.randint(0, len(tgt.video_ids), (cfg.pace_batch,), generator=pace_gen)
            pr = torch.randint(0, len(data.pace), (cfg.pace_batch,), generator=pace_gen)
            feats = torch.stack([data.pace[r][0][v] for v, r in zip(pv.tolist(), pr.tolist())])
            mask = torch.stack([data.pace[r][1][v] for v, r in zip(pv.tolist(), pr.tolist())])
            losses["pace_ce"] = model.pace.loss(model.forward_pace(feats, mask), pr)["pace_ce"]
            total = sum(v for k, v in losses.items() if k != "pace_ce") + cfg.pace_weight * losses["pace_ce"]
        else:
            total = sum(losses.values())
        return {"loss": total, **losses}

    def scores(s: Streams, idx=None):
        sel = slice(None) if idx is None else torch.as_tensor(idx)
        o = model(s.rgb[sel], s.flow[sel] if use_flow else None, s.rgb_mask[sel], s.flow_mask[sel])
        return two_stream_scores(o.rgb.steps, o.flow.steps if o.flow is not None else None, o.rgb.mask,
                                 o.flow.mask if o.flow is not None else None)

    last: dict[str, Any] = {}

    def evaluate(epoch: int) -> dict[str, Any]:
        m: dict[str, Any] = {}
        st = scores(tgt)
        y = tgt.labels
        known = y >= 0
        m["acc"] = float((st.pred_logits[known] == y[known]).double().mean()) if known.any() else None
        m["acc_sf"] = float((st.pred_softmax[known] == y[known]).double().mean()) if known.any() else None
        if use_flow and use_bank:  # explicit bank update after the evaluation pass, never in forward
            bank.refill(tgt.flow, st.pred_softmax, st.conf_softmax, list(tgt.video_ids))
            kept = [i for c in range(data.num_classes) for _, i, _ in bank.entries(c)]
            pos = {v: k for k, v in enumerate(tgt.video_ids)}
            kept_idx = torch.tensor([pos[i] for i in kept], dtype=torch.long)
            ok = known[kept_idx]
            m["bank_size"] = len(bank)
            m["bank_acc"] = float((st.pred_softmax[kept_idx][ok] == y[kept_idx][ok]).double().mean()) if ok.any() else None
            if out is not None and seed in cfg.seeds[:cfg.save_bank_seeds]:
                bank.save_class_stacks(out / "bank" / f"epoch_{epoch:03d}")
        if data.test is not None:
            ss = scores(data.test)
            yt = data.test.labels
            m["test_acc"] = float((ss.pred_logits == yt).double().mean())
            m["test_acc_sf"] = float((ss.pred_softmax == yt).double().mean())
            last["test_pred_sf"] = ss.pred_softmax.tolist()
        if len(hold_idx):
            sh = scores(src, hold_idx)
            m["source_holdout_acc_sf"] = float((sh.pred_softmax == src.labels[hold_idx]).double().mean())
        last["target_pred_sf"] = st.pred_softmax.tolist()
        return m

    t0 = time.perf_counter()
    res = fit(model, step, batches, cfg.optim, evaluate=evaluate, seed=seed, out_dir=out,
              progress=progress, desc=f"cfb[{row}] seed {seed}")
    final = {k: v for k, v in res.final.items() if k not in ("stage", "lr", "steps")}
    final["seconds"] = time.perf_counter() - t0
    final["replaced_fraction"] = state["replaced"] / max(1, state["seen"])
    if data.test is not None:
        final["test_per_class_sf"] = _per_class(last["test_pred_sf"], data.test.labels.numpy(), data.num_classes)
    final["target_per_class_sf"] = _per_class(last["target_pred_sf"], tgt.labels.numpy(), data.num_classes)
    final["seed"] = seed
    return final


# ---- the whole table ----------------------------------------------------------------------

HEADLINE = "acc_sf"
TABLE_METRICS = ("acc_sf", "acc", "test_acc_sf", "test_acc")


def run_cfb(cfg: CfbConfig, out: str | Path, *, progress: bool = False, data: CfbData | None = None,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every configured ablation row over every seed; writes ``out/metrics.json`` and the config.

    Returns:
        ``{"rows": [summary rows], "per_class": ..., "config": ..., "seconds": ...}``.
    """
    import torch

    from featbank.experiments.fit import deterministic
    from featbank.experiments.stats import summarize

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    t0 = time.perf_counter()
    data = data or load_cfb_data(cfg)
    rows = []
    with deterministic(cfg.threads):
        for row in cfg.rows:
            per_seed = []
            for seed in cfg.seeds:
                run_dir = out / row.replace(" ", "_").replace("+", "plus") / f"seed{seed}"
                per_seed.append(train_row(data, cfg, row, seed, run_dir, progress=progress))
            keys = [k for k in per_seed[0] if isinstance(per_seed[0][k], (int, float)) and k != "seed"
                    and all(d.get(k) is not None for d in per_seed)]
            summary = summarize(row, per_seed, keys)
            # per-class means (over seeds) of the test split, for the motion-only pairs report
            for split in ("test_per_class_sf", "target_per_class_sf"):
                if split in per_seed[0]:
                    arr = np.array([[np.nan if v is None else v for v in d[split]] for d in per_seed], float)
                    summary[split] = [None if np.isnan(v) else float(v) for v in np.nanmean(arr, 0)] \
                        if arr.size else []
            rows.append(summary)
            log(f"  {row:<12} AccSf {summary['acc_sf']:.3f}  Acc {summary['acc']:.3f}  "
                + (f"test AccSf {summary['test_acc_sf']:.3f}" if "test_acc_sf" in summary else ""))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    result = {"rows": rows, "config": to_dict(cfg), "num_classes": data.num_classes,
              "motion_pairs": [list(p) for p in cfg.features.motion_pairs],
              "seconds": time.perf_counter() - t0}
    result["motion_pair_acc"] = motion_pair_table(rows, cfg.features.motion_pairs)
    (out / "metrics.json").write_text(json.dumps(to_jsonable(result), indent=1) + "\n")
    return result


def motion_pair_table(rows: Sequence[Mapping[str, Any]], pairs: Sequence[Sequence[int]]) -> list[dict[str, Any]]:
    """Per-class test AccSf of the classes in ``pairs``, one entry per row and class."""
    table = []
    for r in rows:
        pc = r.get("test_per_class_sf") or r.get("target_per_class_sf") or []
        for a, b in pairs:
            table.append({"row": r["name"], "pair": [int(a), int(b)],
                          "acc_sf": [pc[a] if a < len(pc) else None, pc[b] if b < len(pc) else None]})
    return table


def format_table(result: Mapping[str, Any]) -> str:
    """The ablation table (mean ± 95% CI over seeds)."""
    from featbank.experiments.stats import format_rows

    rows = result["rows"]
    metrics = [m for m in TABLE_METRICS if m in rows[0]]
    return format_rows(rows, metrics)


__all__ = ["ABLATIONS", "CfbConfig", "CfbFeatures", "CfbData", "load_cfb_config", "load_cfb_data", "train_row",
           "run_cfb", "format_table", "eval_frame_indices", "released_eval_frame_indices"]


def motion_pair_separability(data: CfbData, pairs: Sequence[Sequence[int]], folds: int = 4) -> list[dict[str, Any]]:
    """Diagnostic (an oracle, not a method): can each stream's features tell a motion pair apart
    at all? Cross-validated logistic regression on the time-pooled target-test features of the
    pair's two classes, with their true labels, per stream. Nothing here feeds any result row.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.preprocessing import StandardScaler
    from sklearn.pipeline import make_pipeline

    split = data.test if data.test is not None else data.target
    out = []
    for a, b in pairs:
        sel = ((split.labels == a) | (split.labels == b)).numpy()
        y = split.labels.numpy()[sel]
        row: dict[str, Any] = {"pair": [int(a), int(b)], "videos": int(sel.sum())}
        for name, feats, mask in (("rgb", split.rgb, split.rgb_mask), ("flow", split.flow, split.flow_mask)):
            m = mask[sel].float()[..., None]
            x = ((feats[sel] * m).sum(1) / m.sum(1).clamp_min(1)).numpy()  # (N, T, D) -> (N, D)
            k = int(min(folds, np.bincount(y).max() if len(y) else 2, np.bincount(y)[np.bincount(y) > 0].min()))
            if k < 2:
                row[name] = None
                continue
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
            cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=0)
            row[name] = float(cross_val_score(clf, x, y, cv=cv).mean())
        out.append(row)
    return out
