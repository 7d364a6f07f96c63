"""``featbank demo``: the image -> video benchmark end to end on real files and real weights.

1. generate the synthetic image -> video benchmark v2 (jpg stills, mp4 videos, manifests;
   reused when ``OUT/data`` already holds the same benchmark);
2. extract features with the Kinetics-400 I3D into a Zarr store, once: stills and target
   frames as static clips (image domain), target videos as sliding clips (the extraction job;
   committed videos are skipped on a rerun);
3. run the complete CycDA cycle (source-only baseline, stages 1-4, an oracle) on the cached
   features for ``train_seeds`` training seeds;
4. build a faiss memory bank over the source stills and show one nearest-neighbour query;
5. print the table (means and 95% intervals over the seeds), save ``results.json`` and the plot.

Sizes are chosen so the whole demo fits in 10 minutes on 2 CPU cores (see docs/cycda.md).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featbank.experiments.data.synth_i2v import SynthI2VConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CYCLE_CONFIG = REPO_ROOT / "configs" / "experiments" / "cycda_synth.yaml"

# Feature-set names the demo writes (they match configs/experiments/cycda_synth.yaml).
SETS = {
    "source_images": "source/image",
    "target_frames": "target_train/frame",
    "target_clips": "target_train/clip",
    "test_frames": "target_test/frame",
    "test_clips": "target_test/clip",
}


@dataclass(frozen=True)
class DemoConfig:
    """What the demo generates and how it extracts.

    Attributes:
        data: benchmark size and seed.
        backbone: registry name of the backbone (real K400 weights by default).
        weights: ``default`` or a weights file.
        resize: short side frames are resized to.
        crop: centre crop side.
        static_clip_len: length of the static clip a still / frame is repeated to.
        frames_per_video: frames per target video for the image domain.
        clip_len: frames per window of the video features.
        threads: torch CPU threads of the extraction (the cycle runs with its config's ``threads``:
            1, the heads are so small that a second thread only adds synchronisation).
        cycle_config: CycDA config file (``configs/experiments/cycda_synth.yaml`` by default).
        cycle_overrides: ``key=value`` overrides on the cycle config.
        train_seeds: training seeds of the cycle (``S .. S + n - 1`` for benchmark seed ``S``).
    """

    data: SynthI2VConfig = field(default_factory=SynthI2VConfig)  # benchmark v2: 8 classes, 64 px
    backbone: str = "i3d-rgb-k400"
    weights: str = "default"
    resize: int = 64
    crop: int = 64
    static_clip_len: int = 4
    frames_per_video: int = 8
    clip_len: int = 16
    threads: int = 2
    cycle_config: str = ""
    cycle_overrides: tuple[str, ...] = ()
    train_seeds: int = 10


def extract_benchmark(data_dir: Path, store_path: Path, cfg: DemoConfig, *, progress: bool = True) -> dict[str, float]:
    """Extract the five feature sets of the benchmark into a Zarr store; returns seconds per part."""
    import torch

    from featbank.extract.job import ExtractConfig, run_extraction
    from featbank.store import open_store

    torch.set_num_threads(cfg.threads)
    times: dict[str, float] = {}
    store = open_store(str(store_path), "a")
    try:
        t0 = time.perf_counter()
        parts = (("source_images", "source", "train", "source", 1),
                 ("target_frames", "target_train", "train", "target", cfg.frames_per_video),
                 ("test_frames", "target_test", "test", "target", cfg.frames_per_video))
        for key, manifest, split, domain, k in parts:  # stills and frames: the job's static sampler
            t1 = time.perf_counter()
            ecfg = ExtractConfig(
                manifest=str(data_dir / f"{manifest}.txt"), manifest_format="path_label", store=str(store_path),
                feature_set=SETS[key], backbone=cfg.backbone, weights=cfg.weights, sampler="static",
                num_segments=k, clip_len=cfg.static_clip_len, resize=cfg.resize, crop=cfg.crop, fps="source",
                workers=0, batch_size=16, timeout=0, split=split, domain=domain, threads=cfg.threads,
            )
            summary = run_extraction(ecfg, progress=progress, store=store)
            if summary.failures:
                raise RuntimeError(f"extraction of {manifest} failed for {len(summary.failures)} items: "
                                   f"{summary.failures[:3]}")
            times[key] = time.perf_counter() - t1
        for key, manifest, split in (("target_clips", "target_train", "train"), ("test_clips", "target_test", "test")):
            t1 = time.perf_counter()
            ecfg = ExtractConfig(
                manifest=str(data_dir / f"{manifest}.txt"), manifest_format="path_label", store=str(store_path),
                feature_set=SETS[key], backbone=cfg.backbone, weights=cfg.weights, sampler="sliding",
                clip_len=cfg.clip_len, stride=cfg.clip_len, resize=cfg.resize, crop=cfg.crop, fps="source",
                workers=0, batch_size=8, timeout=0, split=split, domain="target", threads=cfg.threads,
            )
            summary = run_extraction(ecfg, progress=progress, store=store)
            if summary.failures:
                raise RuntimeError(f"extraction of {manifest} failed for {len(summary.failures)} videos: "
                                   f"{summary.failures[:3]}")
            times[key] = time.perf_counter() - t1
        times["total"] = time.perf_counter() - t0
    finally:
        store.close()
    return times


def nearest_neighbour_example(store_path: Path, data_dir: Path, k: int = 5) -> dict[str, Any]:
    """Build a faiss bank over the source stills and query it with one target test frame."""
    from featbank.store import open_store
    from featbank.store.bank import FaissBank

    classes = (data_dir / "classes.txt").read_text().split()
    store = open_store(str(store_path), "r")
    try:
        bank = FaissBank.build(store, SETS["source_images"], metric="cosine")
        test = store.open_set(SETS["test_frames"])
        vid = test.video_ids()[0]
        q = test.read(vid, rows=slice(0, 1)).feats
        D, I = bank.search(q, k)
        hits = bank.neighbours(D, I)[0]
        label = test.meta(vid).label
    finally:
        store.close()
    return {
        "query": f"{vid} (frame 0)",
        "query_class": classes[label] if label >= 0 else None,
        "neighbours": [{"video": h.video, "class": classes[h.label] if h.label >= 0 else None,
                        "score": round(h.score, 4)} for h in hits],
    }


def _same_benchmark(data_dir: Path, cfg: DemoConfig) -> bool:
    """True when ``data_dir`` already holds the benchmark of ``cfg.data`` (same version and parameters)."""
    from dataclasses import asdict

    from featbank.experiments.data.synth_i2v import VERSION

    info = data_dir / "info.json"
    if not info.is_file() or not all((data_dir / f"{m}.txt").is_file() for m in
                                     ("source", "target_train", "target_test", "target_val", "classes")):
        return False
    try:
        d = json.loads(info.read_text())
    except ValueError:
        return False
    return d.get("version") == VERSION and d.get("config") == asdict(cfg.data)


STAGE_KEYS = ("target_acc", "mean_class_acc", "transductive_acc", "val_acc", "pl_acc", "pl_coverage", "pl_classes")


def _row_name(stage: dict[str, Any]) -> str:
    return stage["name"] if stage["cycle"] <= 1 else f"{stage['name']}@cycle{stage['cycle']}"


def summarize_seeds(per_seed: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Table rows (means, 95% intervals over seeds) of every stage and oracle; and the stage list."""
    from featbank.experiments.stats import summarize

    rows, stages = [], []
    for i, st in enumerate(per_seed[0]["stages"]):
        name = _row_name(st)
        vals = [{k: r["stages"][i][k] for k in STAGE_KEYS} for r in per_seed]
        row = summarize(name, vals, keys=list(STAGE_KEYS))
        rows.append(row)
        stages.append({"name": st["name"], "cycle": st["cycle"], **{k: row[k] for k in STAGE_KEYS},
                       "target_acc_ci95": row["target_acc_ci95"], "mean_class_acc_ci95": row["mean_class_acc_ci95"],
                       "transductive_acc_ci95": row["transductive_acc_ci95"], "pl_acc_ci95": row["pl_acc_ci95"],
                       "pl_confusion_sum": np.sum([r["stages"][i]["pl_confusion"] for r in per_seed
                                                   if r["stages"][i]["pl_confusion"] is not None], axis=0).tolist()
                       if st["pl_confusion"] is not None else None})
    for j, o in enumerate(per_seed[0].get("oracle", [])):
        vals = [{k: r["oracle"][j][k] for k in ("target_acc", "mean_class_acc", "transductive_acc")} for r in per_seed]
        rows.append(summarize(o["name"], vals))
    return rows, stages


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (every thread)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_demo(out: str | Path, cfg: DemoConfig = DemoConfig(), *, progress: bool = True) -> dict[str, Any]:
    """Run the whole demo into ``out``; returns (and writes) ``out/results.json``."""
    import torch

    from featbank.experiments.data.synth_i2v import generate
    from featbank.experiments.recipes.cycda import load_cycda_config, load_data, run_cycle
    from featbank.experiments.stats import format_rows, write_demo_results

    t_start, cpu_start = time.perf_counter(), time.process_time()
    out = Path(out).resolve()  # extraction configs record absolute paths (a refresh re-reads them)
    out.mkdir(parents=True, exist_ok=True)
    data_dir, store_path, run_dir = out / "data", out / "store.zarr", out / "cycda"
    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}  # CPU seconds (user + sys, all threads) per phase: comparable under load

    t0, c0 = time.perf_counter(), _cpu_seconds()
    if _same_benchmark(data_dir, cfg):
        print(f"[1/5] the image->video benchmark v2 is already in {data_dir} (same seed and sizes): reused", flush=True)
    else:
        print(f"[1/5] generating the image->video benchmark v2 into {data_dir}", flush=True)
        generate(data_dir, cfg.data, progress=progress)
    timings["generate"], cpu["generate"] = time.perf_counter() - t0, _cpu_seconds() - c0

    print(f"[2/5] extracting {cfg.backbone} features into {store_path} (once; committed videos are skipped)", flush=True)
    c0 = _cpu_seconds()
    timings.update({f"extract_{k}": v for k, v in extract_benchmark(data_dir, store_path, cfg, progress=progress).items()})
    cpu["extract"] = _cpu_seconds() - c0

    seeds = [cfg.data.seed + i for i in range(cfg.train_seeds)]
    print(f"[3/5] the CycDA cycle on the cached features, training seeds {seeds}", flush=True)
    t0, c0 = time.perf_counter(), _cpu_seconds()
    cycle_path = cfg.cycle_config or (DEFAULT_CYCLE_CONFIG if DEFAULT_CYCLE_CONFIG.is_file() else None)
    base = [f"features.store={store_path}", f"features.val_manifest={data_dir / 'target_val.txt'}",
            *cfg.cycle_overrides]
    ccfg = load_cycda_config(cycle_path, base)
    data = load_data(ccfg)  # read once, shared by every seed
    per_seed = []
    for i, s in enumerate(seeds):
        scfg = load_cycda_config(cycle_path, [*base, f"seed={s}", f"plot={'true' if i == 0 else 'false'}"])
        per_seed.append(run_cycle(scfg, run_dir / f"seed{s}", data=data, progress=progress))
        st = per_seed[-1]["stages"]
        print(f"  seed {s}: source-only {st[0]['target_acc']:.3f} -> final {st[-1]['target_acc']:.3f}", flush=True)
    timings["cycle"], cpu["cycle"] = time.perf_counter() - t0, _cpu_seconds() - c0
    torch.set_num_threads(cfg.threads)

    print("[4/5] memory bank: nearest source stills of a target test frame", flush=True)
    t0, c0 = time.perf_counter(), _cpu_seconds()
    nn = nearest_neighbour_example(store_path, data_dir)
    timings["bank"], cpu["bank"] = time.perf_counter() - t0, _cpu_seconds() - c0
    print(f"  query {nn['query']} (class {nn['query_class']})")
    for h in nn["neighbours"]:
        print(f"    {h['score']:.3f}  {h['class']:<26} {h['video']}")

    print(f"[5/5] results: means and 95% intervals over {len(seeds)} training seeds "
          f"(test: {len(data.test_clips.video_ids)} held-out videos; transductive: "
          f"{len(data.target_clips.video_ids)} adaptation videos)", flush=True)
    rows, stages = summarize_seeds(per_seed)
    print(format_rows(rows, ["target_acc", "mean_class_acc", "transductive_acc", "pl_acc"]))
    info = json.loads((data_dir / "info.json").read_text())
    extra = {
        "stages": stages,
        "oracle": [r for r in rows if r["name"].startswith("oracle")],
        "selection": per_seed[0]["selection"],
        "config": str(cycle_path), "overrides": list(cfg.cycle_overrides),
        "nearest_neighbour": nn,
        "benchmark": {"version": info.get("version"), "classes": cfg.data.classes,
                      "motion_pairs": info.get("motion_pairs"),
                      "source_images": cfg.data.classes * cfg.data.source_per_class,
                      "target_train_videos": cfg.data.classes * cfg.data.train_per_class,
                      "target_test_videos": cfg.data.classes * cfg.data.test_per_class,
                      "frames": cfg.data.frames, "size": cfg.data.size, "seed": cfg.data.seed},
        "extraction": {"backbone": cfg.backbone, "resize": cfg.resize, "crop": cfg.crop,
                       "static_clip_len": cfg.static_clip_len, "frames_per_video": cfg.frames_per_video,
                       "clip_len": cfg.clip_len},
        "timings": timings,
        "cpu_timings": cpu,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "plot": str(run_dir / f"seed{seeds[0]}" / "accuracy.png"),
        "cpu_seconds": time.process_time() - cpu_start,
    }
    results = write_demo_results(out, recipe="cycda", metric="target_acc", rows=rows, source_only="source_only",
                                 final=rows[len(stages) - 1]["name"], seeds=seeds,
                                 seconds=time.perf_counter() - t_start, extra=extra)
    print(f"source-only {results['source_only_acc']:.3f} ± {results['source_only_ci95'] or 0:.3f} -> final "
          f"{results['final_acc']:.3f} ± {results['final_ci95'] or 0:.3f}   ({results['seconds']:.0f} s; "
          f"{out / 'results.json'})")
    return results
