"""``featbank demo --recipe cfb``: CFB end to end on the image -> video benchmark.

1. generate the image -> video benchmark (``featbank data synth-i2v``: labelled stills,
   unlabelled target videos, a labelled target test split);
2. turn every source still into a 16-frame video with a small camera motion (still2video);
3. extract per-time-step I3D features with the extraction job: RGB with the Kinetics-400
   weights; flow computed in memory by the job (DIS, ``flow: dis``, recorded in each set's
   provenance) through the I3D flow architecture whose weights are the Kinetics-400 RGB weights
   with the first conv averaged over colour channels to 2 inputs (no flow weights exist here;
   see docs/cfb.md for plugging in ``flow_imagenet.pt``); target RGB at paces 1..5 (7-frame
   clips at frame steps 1..5);
4. run the CFB ablation rows over seeds (``configs/experiments/cfb_synth.yaml``), print the table
   and write ``OUT/results.json`` (the shared demo layout, headline ``acc_sf``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featbank.experiments.data.still2video import Still2VideoConfig
from featbank.experiments.data.synth_i2v import SynthI2VConfig
from featbank.extract.flow import FlowConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "experiments" / "cfb_synth.yaml"
PACES = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class CfbDemoConfig:
    """What the demo generates and extracts.

    Attributes:
        data: benchmark size and seed.
        still: still -> video generation.
        flow: optical flow algorithm and parameters.
        resize: short side frames are resized to before the centre crop.
        crop: centre crop side.
        clip_len: frames per clip of the RGB/flow features (2 I3D time steps per 16 frames).
        pace_clip_len: frames per pace clip (7 frames at step 5 span 31 of the 32 frames).
        threads: torch CPU threads.
        config: CFB recipe config (default ``configs/experiments/cfb_synth.yaml``).
        overrides: ``key=value`` overrides of the recipe config.
    """

    data: SynthI2VConfig = field(default_factory=SynthI2VConfig)  # the v2 design (motion-only pairs)
    still: Still2VideoConfig = field(default_factory=lambda: Still2VideoConfig(frames=16, output="frames"))
    flow: FlowConfig = field(default_factory=lambda: FlowConfig("dis", dis_preset="medium"))
    resize: int = 64
    crop: int = 64
    clip_len: int = 16
    pace_clip_len: int = 7
    threads: int = 2
    config: str = ""
    overrides: tuple[str, ...] = ()


def _manifest(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def extract_all(data_dir: Path, store_path: Path, cfg: CfbDemoConfig, *, progress: bool = True) -> dict[str, float]:
    """Every feature set the recipe reads, through the extraction job; returns seconds per set."""
    from featbank.extract.flow import write_flow_weights_from_k400
    from featbank.extract.job import ExtractConfig, run_extraction

    flow_weights = write_flow_weights_from_k400(store_path.parent / "weights" / "i3d_flow_from_k400_rgb.pt")
    common = dict(store=str(store_path), sampler="sliding", keep_time=True, resize=cfg.resize, crop=cfg.crop,
                  fps="source", workers=0, batch_size=8, timeout=0, threads=cfg.threads, manifest_format="path_label",
                  last="pad")
    rgb = dict(backbone="i3d-rgb-k400", weights="default", modality="rgb")
    if cfg.flow != FlowConfig(cfg.flow.algorithm, bound=cfg.flow.bound):
        raise ValueError("the extraction job computes flow with the algorithm's default parameters; "
                         f"got {cfg.flow}")
    flow = dict(backbone="i3d-flow", weights=str(flow_weights), modality="flow", flow=cfg.flow.algorithm,
                flow_bound=cfg.flow.bound)
    jobs: list[tuple[str, dict[str, Any]]] = [
        ("source/rgb", dict(manifest=str(data_dir / "source_video" / "videos.txt"), decoder="folder", split="train",
                            domain="source", clip_len=cfg.clip_len, stride=cfg.clip_len, **rgb)),
        ("source/flow", dict(manifest=str(data_dir / "source_video" / "videos.txt"), decoder="folder",
                             split="train", domain="source",
                             clip_len=cfg.clip_len, stride=cfg.clip_len, **flow)),
        ("target_train/rgb", dict(manifest=str(data_dir / "target_train.txt"), split="train", domain="target",
                                  clip_len=cfg.clip_len, stride=cfg.clip_len, **rgb)),
        ("target_train/flow", dict(manifest=str(data_dir / "target_train.txt"), split="train", domain="target",
                                   clip_len=cfg.clip_len, stride=cfg.clip_len, **flow)),
        ("target_test/rgb", dict(manifest=str(data_dir / "target_test.txt"), split="test", domain="target",
                                 clip_len=cfg.clip_len, stride=cfg.clip_len, **rgb)),
        ("target_test/flow", dict(manifest=str(data_dir / "target_test.txt"), split="test", domain="target",
                                  clip_len=cfg.clip_len, stride=cfg.clip_len, **flow)),
    ]
    for r in PACES:  # one clip per video at frame step r (stride past the end: a single window)
        jobs.append((f"target_train/pace{r}", dict(manifest=str(data_dir / "target_train.txt"), split="train",
                                                   domain="target", clip_len=cfg.pace_clip_len, frame_stride=r,
                                                   stride=10_000, **rgb)))
    times = {}
    for name, kw in jobs:
        t0 = time.perf_counter()
        summary = run_extraction(ExtractConfig(feature_set=name, **common, **kw), progress=progress)
        if summary.failures:
            raise RuntimeError(f"extraction of {name} failed for {len(summary.failures)} videos: {summary.failures[:3]}")
        times[name] = time.perf_counter() - t0
    return times


def int8_overflow_example(n_frames: int = 300, num: int = 16) -> dict[str, Any]:
    """The released evaluation sampler's int8 indices vs ours on one ``n_frames`` video."""
    from featbank.experiments.recipes.cfb import eval_frame_indices, released_eval_frame_indices

    return {"n_frames": n_frames, "num": num, "released_int8": released_eval_frame_indices(n_frames, num).tolist(),
            "ours_int64": eval_frame_indices(n_frames, num).tolist()}


def run_demo(out: str | Path, cfg: CfbDemoConfig = CfbDemoConfig(), *, seeds: tuple[int, ...] | None = None,
             progress: bool = True) -> dict[str, Any]:
    """The whole demo into ``out``; returns (and writes) ``out/results.json``."""
    import torch

    from featbank.experiments.data.still2video import generate as still2video
    from featbank.experiments.data.synth_i2v import generate
    from featbank.experiments.recipes.cfb import (format_table, load_cfb_config, load_cfb_data,
                                                  motion_pair_separability, run_cfb)
    from featbank.experiments.stats import write_demo_results

    t_start, cpu_start = time.perf_counter(), time.process_time()
    torch.set_num_threads(cfg.threads)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data_dir, store_path = out / "data", out / "store.zarr"
    timings: dict[str, float] = {}

    print(f"[1/4] generating the image->video benchmark into {data_dir}", flush=True)
    t0 = time.perf_counter()
    generate(data_dir, cfg.data, progress=progress)
    timings["generate"] = time.perf_counter() - t0

    print("[2/4] still -> video: 16 frames of small camera motion per source still", flush=True)
    t0 = time.perf_counter()
    still2video(data_dir / "source.txt", data_dir / "source_video",
                dataclasses.replace(cfg.still, seed=cfg.data.seed), progress=progress)
    timings["still2video"] = time.perf_counter() - t0

    print(f"[3/4] extracting per-time-step I3D RGB, flow ({cfg.flow.algorithm}, computed in memory) and pace "
          f"features into {store_path}", flush=True)
    t0 = time.perf_counter()
    timings.update({f"extract {k}": v for k, v in extract_all(data_dir, store_path, cfg, progress=progress).items()})
    timings["extract"] = time.perf_counter() - t0

    print("[4/4] CFB ablation rows over seeds", flush=True)
    t0 = time.perf_counter()
    info = json.loads((data_dir / "info.json").read_text())
    classes = (data_dir / "classes.txt").read_text().split()
    pairs = info.get("motion_pairs") or []
    overrides = [f"features.store={store_path}", *([f"features.motion_pairs={json.dumps(pairs)}"] if pairs else []),
                 *([f"seeds={list(seeds)}"] if seeds else []), *cfg.overrides]
    rcfg = load_cfb_config(cfg.config or DEFAULT_CONFIG, overrides)
    data = load_cfb_data(rcfg)
    result = run_cfb(rcfg, out / "cfb", progress=False, data=data)
    timings["train"] = time.perf_counter() - t0
    separability = motion_pair_separability(data, pairs)

    print(format_table(result))
    for e in result["motion_pair_acc"]:
        a, b = e["pair"]
        print(f"  {e['row']:<12} test AccSf {classes[a]} {_f(e['acc_sf'][0])}  {classes[b]} {_f(e['acc_sf'][1])}")
    for e in separability:
        a, b = e["pair"]
        print(f"  oracle probe (test labels, diagnostic) {classes[a]} vs {classes[b]}: rgb {_f(e['rgb'])} flow {_f(e['flow'])}")
    overflow = int8_overflow_example()
    print(f"int8 frame indices of a {overflow['n_frames']}-frame video: released {overflow['released_int8']}")
    print(f"                                          ours     {overflow['ours_int64']}")
    extra = {
        "acc_rows": {r["name"]: {k: r.get(k) for k in ("acc", "acc_ci95", "test_acc_sf", "test_acc_sf_ci95",
                                                       "test_acc", "test_acc_ci95")} for r in result["rows"]},
        "per_class_test_acc_sf": {r["name"]: dict(zip(classes, r.get("test_per_class_sf", []))) for r in result["rows"]},
        "motion_pairs": [[classes[a], classes[b]] for a, b in pairs],
        "motion_pair_acc": result["motion_pair_acc"],
        "motion_pair_oracle_probe": separability,
        "int8_overflow": overflow,
        "flow": cfg.flow.record(),
        "flow_weights": "Kinetics-400 RGB I3D with the first conv averaged over colour channels to 2 inputs "
                        "(no flow weights available here)",
        "benchmark": {**cfg.data.__dict__},
        "timings": timings,
        "cpu_seconds": time.process_time() - cpu_start,
    }
    res = write_demo_results(out, recipe="cfb", metric="acc_sf", rows=result["rows"], source_only="RGB only",
                             final="full", seeds=list(rcfg.seeds), seconds=time.perf_counter() - t_start, extra=extra)
    print(f"RGB only {res['source_only_acc']:.3f} -> full {res['final_acc']:.3f} AccSf  "
          f"({res['seconds']:.0f} s; {out / 'results.json'})")
    return res


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"
