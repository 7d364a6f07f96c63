"""``featbank demo``: the image -> video benchmark end to end on real files and real weights.

1. generate the synthetic image -> video benchmark (jpg stills, mp4 videos, manifests);
2. extract features with the Kinetics-400 I3D into a Zarr store: stills and target frames
   as static clips (image domain), target videos as sliding clips (the extraction job);
3. run the complete CycDA cycle (source-only baseline, stages 1-4) on the cached features;
4. build a faiss memory bank over the source stills and show one nearest-neighbour query;
5. print a table, save ``results.json`` and the plot.

Sizes are chosen so the whole demo fits in 10 minutes on 2 CPU cores (see docs/cycda.md).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
        threads: torch CPU threads.
        cycle_config: CycDA config file (``configs/experiments/cycda_synth.yaml`` by default).
        cycle_overrides: ``key=value`` overrides on the cycle config.
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


def run_demo(out: str | Path, cfg: DemoConfig = DemoConfig(), *, progress: bool = True) -> dict[str, Any]:
    """Run the whole demo into ``out``; returns (and writes) ``out/results.json``."""
    from featbank.experiments.recipes.cycda import format_table, load_cycda_config, run_cycle
    from featbank.experiments.data.synth_i2v import generate

    t_start, cpu_start = time.perf_counter(), time.process_time()
    out = Path(out).resolve()  # extraction configs record absolute paths (a refresh re-reads them)
    out.mkdir(parents=True, exist_ok=True)
    data_dir, store_path, run_dir = out / "data", out / "store.zarr", out / "cycda"
    timings: dict[str, float] = {}

    print(f"[1/5] generating the image->video benchmark into {data_dir}", flush=True)
    t0 = time.perf_counter()
    generate(data_dir, cfg.data, progress=progress)
    timings["generate"] = time.perf_counter() - t0

    print(f"[2/5] extracting {cfg.backbone} features into {store_path}", flush=True)
    timings.update({f"extract_{k}": v for k, v in extract_benchmark(data_dir, store_path, cfg, progress=progress).items()})

    print("[3/5] running the CycDA cycle on the cached features", flush=True)
    t0 = time.perf_counter()
    cycle_path = cfg.cycle_config or (DEFAULT_CYCLE_CONFIG if DEFAULT_CYCLE_CONFIG.is_file() else None)
    overrides = [f"features.store={store_path}", f"seed={cfg.data.seed}",
                 *cfg.cycle_overrides]
    ccfg = load_cycda_config(cycle_path, overrides)
    result = run_cycle(ccfg, run_dir, progress=True)
    timings["cycle"] = time.perf_counter() - t0

    print("[4/5] memory bank: nearest source stills of a target test frame", flush=True)
    t0 = time.perf_counter()
    nn = nearest_neighbour_example(store_path, data_dir)
    timings["bank"] = time.perf_counter() - t0
    print(f"  query {nn['query']} (class {nn['query_class']})")
    for h in nn["neighbours"]:
        print(f"    {h['score']:.3f}  {h['class']:<18} {h['video']}")

    print("[5/5] results", flush=True)
    print(format_table(result))
    results = {
        "source_only_acc": result["source_only_acc"],
        "final_acc": result["final_acc"],
        "source_only_mean_class_acc": result["source_only_mean_class_acc"],
        "final_mean_class_acc": result["final_mean_class_acc"],
        "stages": [{k: s[k] for k in ("name", "cycle", "target_acc", "mean_class_acc", "pl_acc", "pl_coverage")}
                   for s in result["stages"]],
        "selection": result["selection"],
        "nearest_neighbour": nn,
        "benchmark": {"classes": cfg.data.classes, "source_images": cfg.data.classes * cfg.data.source_per_class,
                      "target_train_videos": cfg.data.classes * cfg.data.train_per_class,
                      "target_test_videos": cfg.data.classes * cfg.data.test_per_class,
                      "frames": cfg.data.frames, "size": cfg.data.size, "seed": cfg.data.seed},
        "extraction": {"backbone": cfg.backbone, "resize": cfg.resize, "crop": cfg.crop,
                       "static_clip_len": cfg.static_clip_len, "frames_per_video": cfg.frames_per_video,
                       "clip_len": cfg.clip_len},
        "timings": timings,
        "plot": str(run_dir / "accuracy.png"),
        "seconds": time.perf_counter() - t_start,
        "cpu_seconds": time.process_time() - cpu_start,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"source-only {results['source_only_acc']:.3f} -> final {results['final_acc']:.3f}   "
          f"({results['seconds']:.0f} s; {out / 'results.json'}, {results['plot']})")
    return results
