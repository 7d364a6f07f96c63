"""Temporal activity detection on cached per-time-step features (Coarse-Fine, PDAN-style, SSDet).

The recipe, as an algorithm box:

1. read the train / test sequences of a feature set (``load_rows`` + ``pad_sequences``) and
   their per-step multi-hot targets from a Charades CSV (``targets_for``);
2. **selection, on a held-out part of TRAIN only**: for each head, each learning rate of
   ``select_lrs`` is trained on the other train videos and scored (per-frame mAP) on the
   held-out ones; the best is kept. The test split is never looked at before step 4;
3. for every seed and head, optionally an **SSDet pretext** (video labels replicated on every
   step, Freeze / MixUp / CutMix on the feature sequences, ``C + 1`` outputs with the
   background last), then training on the detection targets (SGD momentum 0.9, weight decay
   1e-5, MultiStep, as released), loss ``1/2 [BCE(max_t z, max_t y) + per-step BCE]``;
4. evaluation on test: the Charades_v1_localize protocol (25 frames per video, AP per class
   over all frames, mAP) through the official submission file written and read back, and the
   per-frame mAP over all steps.

Everything runs through the shared fit loop (``featbank.experiments.fit``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from featbank.experiments.config import ConfigError
from featbank.experiments.fit import OptimConfig, config_dict, fit, minibatches, seed_everything

HEAD_NAMES = ("fine", "pdan", "coarse-fine")
ROW_NAMES = {"fine": "fine-only", "pdan": "PDAN-style", "coarse-fine": "coarse-fine"}


@dataclass(frozen=True)
class DetectFeatures:
    """Where the features and annotations are.

    Attributes:
        store: feature store path.
        set: feature set (one row per time step: ``keep_time`` extraction).
        train_split / test_split: split names in the store's metadata.
        train_csv / test_csv: Charades CSVs of the two splits.
        classes: ``classes.txt`` (``cNNN name`` lines) or empty (then ``num_classes``).
        num_classes: number of classes when no class file is given.
        max_len: cap on steps per video (longer videos are uniformly subsampled).
        levels: extra feature sets on the same time grid (e.g. X3D ``res2..res5`` per step) that
            the Coarse-Fine head aligns to its coarse steps as fine levels (other heads ignore them).
    """

    store: str = ""
    set: str = ""
    train_split: str = "train"
    test_split: str = "test"
    train_csv: str = ""
    test_csv: str = ""
    classes: str = ""
    num_classes: int = 0
    max_len: int = 512
    levels: tuple[str, ...] = ()


@dataclass(frozen=True)
class SSDetConfig:
    """The SSDet pretext stage (pseudo labels from video labels, volume augmentations)."""

    epochs: int = 10
    lr: float = 0.0  # 0: the head's selected lr
    p_freeze: float = 0.5
    p_mixup: float = 0.5
    p_cutmix: float = 0.5


@dataclass(frozen=True)
class DetectConfig:
    """A detection run (``configs/experiments/coarse_fine_synth.yaml``).

    Attributes:
        recipe: ``detect``.
        name: run name.
        features: inputs.
        heads: which heads (``fine``, ``pdan``, ``coarse-fine``).
        ssdet: also run every head with the SSDet pretext ("with" rows).
        plain: run every head without the pretext (the "without" rows); ``plain: false`` with
            ``ssdet: true`` runs only the SSDet rows (to split a table over processes).
        seeds: training seeds.
        optim: the detection stage's optimiser (the lr is replaced by the selected one).
        select_lrs: learning rates tried on the held-out train split.
        holdout: fraction of train videos held out for the selection.
        pretext: the SSDet pretext stage.
        hidden: hidden width of the fine-only and Coarse-Fine heads.
        pdan_hidden: width of the PDAN-style head (512 as released; the demo config uses 256 to fit
            its time budget on 2 CPU cores).
        threads: torch CPU threads.
    """

    recipe: str = "detect"
    name: str = "detect"
    features: DetectFeatures = field(default_factory=DetectFeatures)
    heads: tuple[str, ...] = HEAD_NAMES
    ssdet: bool = True
    plain: bool = True
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-5, epochs=30, batch_size=8,
        schedule="multistep", milestones=(20,), gamma=0.1))
    select_lrs: tuple[float, ...] = (0.01, 0.03, 0.1)
    holdout: float = 0.25
    pretext: SSDetConfig = field(default_factory=SSDetConfig)
    hidden: int = 256
    pdan_hidden: int = 512
    threads: int = 2

    def __post_init__(self) -> None:
        bad = [h for h in self.heads if h not in HEAD_NAMES]
        if bad:
            raise ValueError(f"unknown head(s) {bad}; choose from {list(HEAD_NAMES)}")
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        if not 0 < self.holdout < 1:
            raise ValueError(f"holdout must be in (0, 1), got {self.holdout}")


def load_detect_config(path: str | Path | None, overrides: Sequence[str] = ()) -> DetectConfig:
    """Load a YAML config (unknown keys raise with their path) with ``key=value`` overrides."""
    from featbank.experiments.config import load_config

    return load_config(DetectConfig, path, overrides)


# ---- data ------------------------------------------------------------------------------------


@dataclass
class Split:
    """Padded sequences of one split with their targets."""

    feats: torch.Tensor  # (V, T, D)
    mask: torch.Tensor  # (V, T)
    targets: torch.Tensor  # (V, T, C)
    starts: np.ndarray  # (V, T)
    ends: np.ndarray
    video_ids: tuple[str, ...]
    lengths: np.ndarray  # (V,) annotated video lengths (seconds)
    segments: list  # per video [(s, e, c)]
    levels: list = field(default_factory=list)  # extra fine levels, each (V, T, D_l)

    def subset(self, idx: np.ndarray) -> "Split":
        t = torch.from_numpy(np.asarray(idx, np.int64))
        return Split(self.feats[t], self.mask[t], self.targets[t], self.starts[idx], self.ends[idx],
                     tuple(self.video_ids[i] for i in idx), self.lengths[idx], [self.segments[i] for i in idx],
                     [lv[t] for lv in self.levels])


def read_class_names(path: str | Path) -> list[str]:
    lines = [ln.split(maxsplit=1) for ln in Path(path).read_text().splitlines() if ln.strip()]
    return [p[1] if len(p) > 1 else p[0] for p in lines]


def load_split(store, fcfg: DetectFeatures, split: str, csv: str, num_classes: int, *,
               stats: tuple[torch.Tensor, torch.Tensor] | None = None) -> Split:
    from featbank.experiments.data.annotations import read_charades_csv, targets_for
    from featbank.store.dataset import load_rows, pad_sequences

    anns = read_charades_csv(csv, num_classes=num_classes)
    rows = load_rows(store, fcfg.set, split=split, dtype=torch.float32)
    if rows.feats.ndim != 2:
        raise ConfigError(f"feature set {fcfg.set!r}: rows are {tuple(rows.feats.shape[1:])}; the detection heads "
                          "need one vector per time step (extract with keep_time and pool avg)")
    padded = pad_sequences(rows, fcfg.max_len)
    targets = targets_for(padded.starts, padded.ends, padded.video_ids, anns, num_classes)
    lengths = np.array([anns[v].duration for v in padded.video_ids])
    segs = [list(anns[v].segments) for v in padded.video_ids]
    levels = []
    for name in fcfg.levels:
        lv = load_rows(store, name, video_ids=list(padded.video_ids), dtype=torch.float32)
        if lv.feats.ndim != 2 or not np.array_equal(lv.n_rows, rows.n_rows):
            raise ConfigError(f"level {name!r}: needs one vector per step on the time grid of {fcfg.set!r} "
                              f"(rows per video {lv.n_rows[:4].tolist()}... vs {rows.n_rows[:4].tolist()}...)")
        levels.append(pad_sequences(lv, fcfg.max_len).feats)
    return Split(padded.feats, padded.mask, torch.from_numpy(targets), padded.starts, padded.ends,
                 padded.video_ids, lengths, segs, levels)


def standardise(train: Split, *others: Split) -> None:
    """Per-dimension standardisation with the TRAIN statistics (in place, padding stays 0)."""
    m = train.mask

    def stats(x):
        return x[m].mean(0), x[m].std(0).clamp(min=1e-4)

    mu, sd = stats(train.feats)
    lv_stats = [stats(lv) for lv in train.levels]
    for s in (train, *others):
        s.feats = ((s.feats - mu) / sd) * s.mask[..., None]
        s.levels = [((lv - a) / b) * s.mask[..., None] for lv, (a, b) in zip(s.levels, lv_stats)]


# ---- heads, training, evaluation --------------------------------------------------------------


def build_head(name: str, dim: int, num_classes: int, hidden: int, pdan_hidden: int = 512,
               level_dims: Sequence[int] = ()):
    from featbank.heads.detect import CoarseFineHead, FineOnlyHead, PDANHead

    if name == "fine":
        return FineOnlyHead(dim, num_classes, hidden=hidden)
    if name == "pdan":
        return PDANHead(dim, num_classes, hidden=pdan_hidden)
    if name == "coarse-fine":
        return CoarseFineHead(dim, num_classes, hidden=hidden, level_dims=tuple(level_dims))
    raise ConfigError(f"unknown head {name!r}; choose from {list(HEAD_NAMES)}")


def _train(head, data: Split, targets: torch.Tensor, cfg: OptimConfig, seed: int, *, augment=None,
           out_dir: Path | None = None, desc: str = "detect") -> list[dict]:
    dims = [int(data.feats.shape[-1])] + [int(lv.shape[-1]) for lv in data.levels]
    cat = torch.cat([data.feats, *data.levels], -1) if data.levels else data.feats  # (V, T, sum D)

    def batches(epoch: int, gen: torch.Generator):
        return minibatches((cat, data.mask, targets), cfg.batch_size, gen)

    aug_gen = torch.Generator().manual_seed(seed + 7919)

    def step(batch):
        x, m, y = batch
        if augment is not None:  # one time transform for the main set and every level
            x, y = augment(x, y, aug_gen, m)
        x, *levels = torch.split(x, dims, -1)
        out = _forward(head, x, m, levels)
        losses = head.loss(out, y, m)
        losses["loss"] = sum(losses.values())
        return losses

    return fit(head, step, batches, cfg, seed=seed, out_dir=out_dir, desc=desc).history


def _forward(head, x, m, levels):
    from featbank.heads.detect import CoarseFineHead

    return head(x, m, levels) if isinstance(head, CoarseFineHead) and levels else head(x, m)


@torch.no_grad()
def predict(head, data: Split, batch: int = 16) -> list[np.ndarray]:
    """Per-video ``(T_i, C)`` probabilities on the real steps."""
    head.eval()
    out = []
    for i in range(0, len(data.feats), batch):
        lv = [x[i:i + batch] for x in data.levels]
        p = torch.sigmoid(_forward(head, data.feats[i:i + batch], data.mask[i:i + batch], lv).step_logits)
        for j in range(len(p)):
            out.append(p[j][data.mask[i + j]].numpy())
    return out


def evaluate(probs: list[np.ndarray], data: Split, num_classes: int, submission: Path | None = None) -> dict[str, Any]:
    """Charades-protocol mAP (via the submission file when a path is given) and per-frame mAP."""
    from featbank.heads.detection_metrics import (charades_localize, per_frame_map, read_submission,
                                                  sample_step_scores, write_submission)

    per_video = {}
    for i, vid in enumerate(data.video_ids):
        m = data.mask[i].numpy()
        per_video[vid] = sample_step_scores(probs[i], data.starts[i][m], data.ends[i][m], data.lengths[i])
    gt = {vid: (data.lengths[i], data.segments[i]) for i, vid in enumerate(data.video_ids)}
    if submission is not None:
        write_submission(submission, per_video)
        res = charades_localize(read_submission(submission, num_classes), gt, num_classes)
    else:
        res = charades_localize({(v, j + 1): s[j] for v, s in per_video.items() for j in range(len(s))}, gt,
                                num_classes)
    labels = [data.targets[i][data.mask[i]].numpy() for i in range(len(probs))]
    frame = per_frame_map(probs, labels)
    return {"map": res["map"], "frame_map": frame["map"], "ap": res["ap"],
            "classes_without_positives": res["classes_without_positives"], "missing_frames": res["missing_frames"]}


def _ssdet_augment(cfg: SSDetConfig):
    from featbank.heads.augment import ssdet_augment

    def aug(x, y, gen, m):
        x, y = ssdet_augment(x, y, gen, p_freeze=cfg.p_freeze, p_mixup=cfg.p_mixup, p_cutmix=cfg.p_cutmix,
                             time_dim=1, lengths=m.sum(1))
        return x, y

    return aug


def coarse_grid_ceiling(data: Split, num_classes: int, ratio: int = 4) -> dict[str, float]:
    """What a head predicting on ``ceil(T / ratio) + 1`` uniform coarse steps can reach at best.

    The *true* targets are read at the coarse knots and linearly interpolated back to every
    step (a Grid Pool with equal confidences, then Grid Unpool), and scored like a prediction.
    A ceiling below 1 is detail the coarse grid cannot represent, whatever it is trained on.
    """
    t = int(data.feats.shape[1])
    k = max(1, -(-t // ratio))
    probs = []
    for i in range(len(data.video_ids)):
        y = data.targets[i][data.mask[i]].numpy()  # (L, C)
        n = len(y)
        knots = np.linspace(0, n - 1, k + 1)
        steps = np.arange(n)
        yk = np.stack([np.interp(knots, steps, y[:, c]) for c in range(y.shape[1])], 1)  # (K+1, C)
        probs.append(np.stack([np.interp(steps, knots, yk[:, c]) for c in range(y.shape[1])], 1))
    res = evaluate(probs, data, num_classes)
    return {"ratio": ratio, "coarse_steps": k + 1, "map": res["map"], "frame_map": res["frame_map"]}


def video_pseudo_targets(data: Split) -> torch.Tensor:
    """SSDet pseudo labels: each video's labels on every real step, plus a zero background channel."""
    from featbank.heads.augment import with_background

    video = data.targets.amax(1, keepdim=True)  # (V, 1, C)
    y = video.expand_as(data.targets) * data.mask[..., None]
    return with_background(y.contiguous())


def run_one(name: str, ssdet: bool, train: Split, test: Split | None, num_classes: int, cfg: DetectConfig,
            lr: float, seed: int, out_dir: Path | None = None) -> tuple[Any, dict]:
    """Train one head (optionally after the SSDet pretext); returns the head and its test metrics."""
    seed_everything(seed)
    dim = int(train.feats.shape[-1])
    level_dims = [int(lv.shape[-1]) for lv in train.levels]
    optim = replace(cfg.optim, lr=lr)
    if ssdet:
        head = build_head(name, dim, num_classes + 1, cfg.hidden, cfg.pdan_hidden, level_dims)  # background last
        pre = replace(optim, epochs=cfg.pretext.epochs, lr=cfg.pretext.lr or lr,
                      milestones=tuple(m for m in optim.milestones if m < cfg.pretext.epochs))
        _train(head, train, video_pseudo_targets(train), pre, seed, augment=_ssdet_augment(cfg.pretext),
               out_dir=out_dir, desc=f"{name}-pretext")
        head.replace_classifier(num_classes)
    else:
        head = build_head(name, dim, num_classes, cfg.hidden, cfg.pdan_hidden, level_dims)
    _train(head, train, train.targets, optim, seed, out_dir=out_dir, desc=name)
    if test is None:
        return head, {}
    sub = out_dir / "submission.txt" if out_dir is not None else None
    return head, evaluate(predict(head, test), test, num_classes, sub)


def select_lr(name: str, train: Split, num_classes: int, cfg: DetectConfig, seed: int = 0) -> dict[str, Any]:
    """The lr of ``select_lrs`` with the best per-frame mAP on a held-out part of TRAIN."""
    rng = np.random.default_rng(seed + 1000)
    order = rng.permutation(len(train.video_ids))
    n_hold = max(1, int(round(cfg.holdout * len(order))))
    hold, rest = train.subset(np.sort(order[:n_hold])), train.subset(np.sort(order[n_hold:]))
    scores = {}
    from featbank.heads.detection_metrics import per_frame_map

    labels = [hold.targets[i][hold.mask[i]].numpy() for i in range(len(hold.video_ids))]
    for lr in cfg.select_lrs:
        try:
            head, _ = run_one(name, False, rest, None, num_classes, cfg, lr, seed)
        except FloatingPointError:  # this lr diverges: it cannot be selected
            scores[lr] = float("nan")
            continue
        scores[lr] = per_frame_map(predict(head, hold), labels)["map"]
    best = max(scores, key=lambda k: (np.nan_to_num(scores[k], nan=-1), -k))
    return {"lr": best, "holdout_frame_map": {str(k): v for k, v in scores.items()}, "holdout_videos": n_hold}


def run_detect(cfg: DetectConfig, out: str | Path, *, progress: bool = False) -> dict[str, Any]:
    """The whole recipe (see the module docstring); writes ``out/metrics.json`` and returns it."""
    from featbank.experiments.stats import summarize
    from featbank.store import open_store

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fc = cfg.features
    for k in ("store", "set", "train_csv", "test_csv"):
        if not getattr(fc, k):
            raise ConfigError(f"features.{k} is required")
    names = read_class_names(fc.classes) if fc.classes else None
    num_classes = len(names) if names else fc.num_classes
    if num_classes < 1:
        raise ConfigError("give features.classes (a classes.txt) or features.num_classes")
    torch.set_num_threads(cfg.threads)
    store = open_store(fc.store, "r")
    try:
        train = load_split(store, fc, fc.train_split, fc.train_csv, num_classes)
        test = load_split(store, fc, fc.test_split, fc.test_csv, num_classes)
    finally:
        store.close()
    standardise(train, test)
    selection = {}
    for name in cfg.heads:
        selection[name] = select_lr(name, train, num_classes, cfg)
        if progress:
            print(f"  selected lr {selection[name]['lr']} for {name} on the held-out train videos "
                  f"({selection[name]['holdout_frame_map']})", flush=True)
    rows = []
    variants = ([(n, False) for n in cfg.heads] if cfg.plain else []) + \
        ([(n, True) for n in cfg.heads] if cfg.ssdet else [])
    per_class: dict[str, list] = {}
    for name, ssdet in variants:
        row_name = ROW_NAMES[name] + (" + SSDet" if ssdet else "")
        per_seed = []
        for seed in cfg.seeds:
            run_dir = out / row_name.replace(" ", "").replace("+", "_") / f"seed{seed}"
            if run_dir.exists():
                for f in run_dir.glob("*.jsonl"):
                    f.unlink()
            _, res = run_one(name, ssdet, train, test, num_classes, cfg, selection[name]["lr"], seed, run_dir)
            per_seed.append({"seed": seed, "map": res["map"], "frame_map": res["frame_map"]})
            per_class.setdefault(row_name, []).append(res["ap"])
        row = summarize(row_name, per_seed, keys=("map", "frame_map"))
        if progress:
            print(f"  {row_name:<24} Charades mAP {row['map']:.3f} ± {row['map_ci95'] or 0:.3f}   "
                  f"per-frame mAP {row['frame_map']:.3f} ± {row['frame_map_ci95'] or 0:.3f}", flush=True)
        rows.append(row)
    diagnostics = {f"coarse_grid_ceiling_r{r}": coarse_grid_ceiling(test, num_classes, r) for r in (2, 4)}
    if progress:
        for k, v in diagnostics.items():
            print(f"  {k}: Charades mAP {v['map']:.3f}, per-frame mAP {v['frame_map']:.3f} "
                  f"({v['coarse_steps']} coarse steps for {int(test.feats.shape[1])} rows)", flush=True)
    ap_mean = {r: [float(np.mean([a[c] for a in aps])) if aps[0][c] is not None else None
                   for c in range(num_classes)] for r, aps in per_class.items()}
    result = {
        "name": cfg.name, "rows": rows, "selection": selection, "diagnostics": diagnostics, "num_classes": num_classes,
        "classes": names, "per_class_ap": ap_mean, "train_videos": len(train.video_ids),
        "test_videos": len(test.video_ids), "steps_per_video_mean": float(train.mask.sum(1).float().mean()),
        "optim": config_dict(cfg.optim), "seconds": time.perf_counter() - t0,
    }
    from featbank.experiments.stats import to_jsonable

    (out / "metrics.json").write_text(json.dumps(to_jsonable(result), indent=2) + "\n")
    from featbank.experiments.config import save_config

    save_config(cfg, out / "config.yaml")
    return result


def format_table(result: dict[str, Any]) -> str:
    from featbank.experiments.stats import format_rows

    return format_rows(result["rows"], ("map", "frame_map"))


# ---- the demo: benchmark -> I3D per-step features -> table --------------------------------------

DEMO_SET = "i3d-rgb-k400/Mixed_5c/c32s32t"


def extract_benchmark(data_dir: str | Path, store_path: str | Path, *, size: int = 96, fps: int = 8,
                      clip_len: int = 32, threads: int = 2, progress: bool = False,
                      backbone: str = "i3d-rgb-k400", weights: str = "default") -> dict[str, float]:
    """Per-time-step K400 I3D features (``keep_time``: one row per 8 frames) of both splits.

    The extraction job does the work (sliding windows of ``clip_len`` frames at ``fps``,
    ``keep_time``); returns seconds per split.
    """
    from featbank.extract.job import ExtractConfig, run_extraction
    from featbank.store import open_store

    data_dir = Path(data_dir).resolve()
    times = {}
    store = open_store(str(store_path), "a")
    try:
        for split in ("train", "test"):
            t1 = time.perf_counter()
            ecfg = ExtractConfig(
                manifest=str(data_dir / f"{split}.txt"), manifest_format="csv", store=str(store_path),
                feature_set=DEMO_SET, backbone=backbone, weights=weights, sampler="sliding", clip_len=clip_len,
                stride=clip_len, resize=size, crop=size, fps=float(fps), keep_time=True, workers=0, batch_size=4,
                timeout=0, split=split, threads=threads, device="cpu",
            )
            summary = run_extraction(ecfg, progress=progress, store=store)
            if summary.failures:
                raise RuntimeError(f"extraction of {split} failed for {len(summary.failures)} videos: "
                                   f"{summary.failures[:3]}")
            times[split] = time.perf_counter() - t1
    finally:
        store.close()
    return times


DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "experiments" / "coarse_fine_synth.yaml"


def run_demo(out: str | Path, *, seed: int = 0, threads: int = 2, overrides: Sequence[str] = (),
             progress: bool = True, bench: Any = None) -> dict[str, Any]:
    """The detection demo: generate synth-detect, extract I3D per-step features, run the recipe, write results.json.

    ``bench`` replaces the benchmark's ``SynthDetectConfig`` (its seed is then ``bench.seed``).
    """
    from featbank.experiments.data.synth_detect import SynthDetectConfig, generate
    from featbank.experiments.stats import format_rows, write_demo_results

    t_start = time.perf_counter()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data_dir, store_path, run_dir = out / "data", out / "store.zarr", out / "detect"
    timings: dict[str, float] = {}
    torch.set_num_threads(threads)
    bench = bench if bench is not None else SynthDetectConfig(seed=seed)
    seed = bench.seed
    print(f"[1/4] generating the synth-detect benchmark (seed {seed}) into {data_dir}", flush=True)
    t0 = time.perf_counter()
    gen = generate(data_dir, bench, progress=progress)
    timings["generate"] = time.perf_counter() - t0
    print(f"[2/4] extracting K400 I3D per-time-step features ({DEMO_SET}) into {store_path}", flush=True)
    t0 = time.perf_counter()
    timings.update({f"extract_{k}": v for k, v in extract_benchmark(
        data_dir, store_path, size=bench.size, fps=bench.fps, threads=threads, progress=progress).items()})
    timings["extract"] = time.perf_counter() - t0
    print("[3/4] training fine-only, PDAN-style and Coarse-Fine heads, with and without the SSDet pretext", flush=True)
    t0 = time.perf_counter()
    cfg = load_detect_config(DEFAULT_CONFIG, [
        f"features.store={store_path}", f"features.set={DEMO_SET}", f"features.train_csv={data_dir / 'train.csv'}",
        f"features.test_csv={data_dir / 'test.csv'}", f"features.classes={data_dir / 'classes.txt'}",
        f"threads={threads}", *overrides])
    result = run_detect(cfg, run_dir, progress=True)
    timings["train_eval"] = time.perf_counter() - t0
    print("[4/4] results (test split; mean ± 95% CI over seeds)", flush=True)
    print(format_rows(result["rows"], ("map", "frame_map")))
    extra = {
        "benchmark": {"seed": seed, "classes": gen["info"]["classes"], "train_videos": bench.train_videos,
                      "test_videos": bench.test_videos, "fps": bench.fps, "size": bench.size,
                      "total_seconds": gen["info"]["total_seconds"], "skipped": gen["skipped"]},
        "features": {"backbone": "i3d-rgb-k400 (Kinetics-400 weights)", "set": DEMO_SET, "keep_time": True,
                     "row_seconds": 32 / bench.fps / 4},
        "metrics": {"map": "Charades_v1_localize mAP (25 frames per video, via the submission file)",
                    "frame_map": "per-frame mAP over all time steps"},
        "selection": result["selection"], "diagnostics": result["diagnostics"],
        "per_class_ap": result["per_class_ap"], "timings": timings,
    }
    res = write_demo_results(out, recipe="detect", metric="map", rows=result["rows"], source_only="fine-only",
                             final="coarse-fine + SSDet", seeds=list(cfg.seeds),
                             seconds=time.perf_counter() - t_start, extra=extra)
    print(f"fine-only {res['source_only_acc']:.3f} -> coarse-fine + SSDet {res['final_acc']:.3f} Charades mAP   "
          f"({res['seconds']:.0f} s; {out / 'results.json'})", flush=True)
    return res


# ---- multi-level X3D features (Coarse-Fine's fine levels) ---------------------------------------

# Coarse-Fine's level names -> this project's X3D endpoints (pytorchvideo stage names).
X3D_LEVELS = {"layer1": "res2", "layer2": "res3", "layer3": "res4", "layer4": "res5", "conv5": "conv5"}


def extract_levels(ecfg, levels: Sequence[str] = tuple(X3D_LEVELS), *, progress: bool = False,
                   store: Any = None) -> dict[str, str]:
    """Extract several endpoints per time step, one feature set per level, with the extraction job.

    Each level is one run of the job with ``endpoint`` set (the job is the only loop that turns
    pixels into rows: decoding, windows, chunked writing, failure log and resume are its). With
    ``keep_time`` and ``pool: avg`` every set holds one vector per time step on the same time
    grid, so they line up row for row (``DetectFeatures.levels``). ``ecfg.feature_set`` is
    used as a prefix: level ``L`` goes to ``PREFIX/L``.

    Returns:
        ``{level: feature set name}``.
    """
    from featbank.extract.job import run_extraction

    if not ecfg.keep_time:
        raise ConfigError("extract_levels: set keep_time (one row per time step) so the levels share a time grid")
    prefix = ecfg.feature_set or f"{ecfg.backbone}/levels"
    out = {}
    for level in levels:
        endpoint = X3D_LEVELS.get(level, level)
        name = f"{prefix}/{level}"
        summary = run_extraction(ecfg.replace(endpoint=endpoint, feature_set=name), progress=progress, store=store)
        if summary.failures:
            raise RuntimeError(f"level {level}: extraction failed for {len(summary.failures)} videos: "
                               f"{summary.failures[:3]}")
        out[level] = name
    return out
