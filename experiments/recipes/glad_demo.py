"""``featbank demo --recipe glad``: the video->video benchmark end to end on real files and weights.

1. generate the synth-v2v benchmark (mp4 videos, manifests);
2. write the median frame of every source training video;
3. extract GLAD views (``sampler: glad``: 8 local clips + the global clip per video) with the
   Kinetics-400 I3D through the extraction job, plus ``K`` BackgroundBlend copies of the source
   views (the job's ``blend_dir`` option, p = 1 per copy, seeded by the copy index);
4. run the GLAD recipe (every table row over every training seed) on the cached features;
5. print the table and write ``OUT/results.json`` (the shared demo layout) and the run folder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featbank.experiments.data.synth_v2v import MOTIONS, SPLITS, SynthV2VConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "experiments" / "glad_synth.yaml"
DOMAINS = {"source_train": ("train", "source"), "source_val": ("val", "source"),
           "target_train": ("train", "target"), "target_test": ("test", "target")}


@dataclass(frozen=True)
class GladDemoConfig:
    """What the demo generates and how it extracts.

    Attributes:
        data: benchmark size and seed.
        backbone: registry name (the K400 I3D Inception; the paper uses an I3D-R50).
        weights: ``default`` (the backbone's published weights), ``random`` or a file.
        resize / crop: frame size fed to the backbone (the benchmark is 112 px).
        bg_copies: BackgroundBlend copies of the source views.
        threads: torch CPU threads for extraction.
        config: GLAD recipe config (default ``configs/experiments/glad_synth.yaml``).
        overrides: ``key=value`` overrides of the recipe config.
    """

    data: SynthV2VConfig = field(default_factory=SynthV2VConfig)
    backbone: str = "i3d-rgb-k400"
    weights: str = "default"
    resize: int = 112
    crop: int = 112
    bg_copies: int = 2
    threads: int = 2
    config: str = ""
    overrides: tuple[str, ...] = ()


def view_set(split: str, copy: int | None = None) -> str:
    """Feature-set name of a split's GLAD views (``copy``: a BackgroundBlend copy of it)."""
    return f"glad/{split}" + (f"_bg{copy}" if copy is not None else "")


def extract_views(data_dir: Path, store_path: Path, cfg: GladDemoConfig, *, progress: bool = True) -> dict[str, float]:
    """Median frames, then the view sets of the four splits and the BgAug copies, through the job."""
    from featbank.extract.background import write_median_frames
    from featbank.extract.job import ExtractConfig, run_extraction
    from featbank.store import open_store

    times: dict[str, float] = {}
    t0 = time.perf_counter()
    med = write_median_frames(data_dir / "source_train.txt", data_dir / "median", progress=progress)
    if med["failures"]:
        raise RuntimeError(f"median frames failed: {med['failures'][:3]}")
    times["median"] = time.perf_counter() - t0
    base = ExtractConfig(manifest_format="path_label", store=str(store_path), backbone=cfg.backbone, weights=cfg.weights,
                         sampler="glad", clip_len=8, frame_stride=2, num_segments=8, fps="source",
                         resize=cfg.resize, crop=cfg.crop, workers=0, batch_size=18, timeout=0,
                         threads=cfg.threads, dtype="float32")
    jobs = [(split, None) for split in SPLITS] + [("source_train", k) for k in range(cfg.bg_copies)]
    store = open_store(str(store_path), "a")
    try:
        for split, copy in jobs:
            t1 = time.perf_counter()
            sp, dom = DOMAINS[split]
            ecfg = base.replace(manifest=str(data_dir / f"{split}.txt"), feature_set=view_set(split, copy),
                                split=sp, domain=dom)
            if copy is not None:
                ecfg = ecfg.replace(blend_dir=str(data_dir / "median"), blend_p=1.0, blend_seed=copy)
            summary = run_extraction(ecfg, progress=progress, store=store)
            if summary.failures:
                raise RuntimeError(f"extraction of {split} failed for {len(summary.failures)} videos: "
                                   f"{summary.failures[:3]}")
            times[view_set(split, copy)] = time.perf_counter() - t1
    finally:
        store.close()
    times["total"] = time.perf_counter() - t0
    return times


def run_glad_demo(out: str | Path, cfg: GladDemoConfig = GladDemoConfig(), *, progress: bool = True) -> dict[str, Any]:
    """Run the whole demo into ``out``; returns (and writes) ``out/results.json``."""
    from featbank.experiments.data.synth_v2v import generate
    from featbank.experiments.recipes.glad import FULL_ROW, SOURCE_ONLY_ROW, format_table, load_glad_config, run_glad
    from featbank.experiments.stats import write_demo_results

    t_start = time.perf_counter()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data_dir, store_path, run_dir = out / "data", out / "store.zarr", out / "glad"
    timings: dict[str, float] = {}
    print(f"[1/4] generating the video->video benchmark into {data_dir}", flush=True)
    t0 = time.perf_counter()
    generate(data_dir, cfg.data, progress=progress)
    timings["generate"] = time.perf_counter() - t0
    print(f"[2/4] median frames + {cfg.backbone} GLAD views (+{cfg.bg_copies} BackgroundBlend copies) "
          f"into {store_path}", flush=True)
    timings.update({f"extract:{k}": v for k, v in extract_views(data_dir, store_path, cfg, progress=progress).items()})
    print("[3/4] GLAD table on the cached features", flush=True)
    t0 = time.perf_counter()
    path = cfg.config or str(DEFAULT_CONFIG)
    bg = "[" + ",".join(view_set("source_train", k) for k in range(cfg.bg_copies)) + "]"
    gcfg = load_glad_config(path, [f"features.store={store_path}", f"features.source_bg={bg}", *cfg.overrides])
    result = run_glad(gcfg, run_dir, progress=progress)
    timings["train"] = time.perf_counter() - t0
    print("[4/4] results", flush=True)
    table = format_table(result)
    print(table)
    extra = {
        "table": table,
        "headline_views": result["headline_views"],
        "selection": result["selection"],
        "tol": result["tol"],
        "benchmark": {"name": "synth-v2v", "seed": cfg.data.seed, "classes": list(MOTIONS),
                      "counts": {s: cfg.data.counts(s) for s in SPLITS}, "frames": cfg.data.frames,
                      "size": cfg.data.size},
        "extraction": {"backbone": cfg.backbone, "note": "Kinetics-400 I3D Inception (the paper: I3D-R50)",
                       "resize": cfg.resize, "crop": cfg.crop, "bg_copies": cfg.bg_copies,
                       "views": "8 local clips (8 frames @2) + global (frame 3 of each clip)"},
        "run_dir": str(run_dir),
        "confusion": {"csv": str(run_dir / "confusion_glad.csv"), "png": str(run_dir / "confusion_glad.png")},
        "timings": timings,
    }
    res = write_demo_results(out, recipe="glad", metric="mean_class_acc", rows=result["rows"],
                             source_only=SOURCE_ONLY_ROW, final=FULL_ROW, seeds=result["seeds"],
                             seconds=time.perf_counter() - t_start, extra=extra)
    print(f"source-only {res['source_only_acc']:.3f} -> GLAD {res['final_acc']:.3f} mean-class accuracy "
          f"({res['seconds']:.0f} s; {out / 'results.json'})")
    return res
