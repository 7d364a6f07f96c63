"""``featbank demo --recipe ssl``: multi-level pretraining on the motion benchmark, end to end.

1. Generate ``synth-v2v`` at low resolution (classes are motions; the target domain's
   backgrounds are independent of the class, so only motion tells the classes apart).
2. Pretrain R3D-18 (width factor ``width``, views of ``size`` px) with the multi-level objective
   on the unlabelled source-train and target-train videos, from random init.
3. Extract pooled ``layer4`` clip features of the target train / test videos with the random
   init (the very weights pretraining started from), with the pretrained weights, and with the
   supervised Kinetics-400 I3D (the one supervised video model featbank ships weights for).
4. Linear probe (``featbank train --head linear``, ``seeds`` seeds) and retrieval R@1/5/10/20
   (test videos query the train videos through a faiss bank) for each; the temporal-cue probe
   (clip vs its time-reversed copy) for the two R3D models, and CAM pictures of a few test clips.
5. ``OUT/results.json`` (``recipe: ssl``, metric ``top1``, baseline ``random init``, final
   ``pretrained``) and ``OUT/table.txt``.

Nothing is selected on the test split: every number is the last epoch's.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from featbank.experiments.fit import OptimConfig


@dataclass(frozen=True)
class SSLDemoConfig:
    """Sizes of the demo (the defaults are the measured run of docs/ssl.md).

    Attributes:
        seed: benchmark, pretraining and first probe seed.
        size: video side generated (>= 64, the benchmark's minimum).
        view_size: crop side of the pretraining views and of extraction.
        width: R3D-18 channel width factor (0.25: 16..128 channels).
        epochs: pretraining epochs.
        batch_size: videos per pretraining step.
        prototypes, queue: SwAV prototypes and queue length (scaled down with the data).
        target_train_max, target_test_max: benchmark sizes (largest target class).
        source_train_per_class: unlabelled source videos added to the pretraining set.
        seeds: probe seeds.
        probe_epochs: linear-probe epochs.
        supervised: also evaluate the Kinetics-400 I3D features.
        cam_clips: test clips drawn as CAM pictures.
        threads: torch CPU threads.
    """

    seed: int = 0
    size: int = 64
    view_size: int = 32
    width: float = 0.25
    epochs: int = 3
    batch_size: int = 8
    prototypes: int = 30
    queue: int = 128
    target_train_max: int = 16
    target_test_max: int = 14
    source_train_per_class: int = 3
    seeds: int = 5
    probe_epochs: int = 100
    supervised: bool = True
    cam_clips: int = 3
    threads: int = 2


def _csv_manifest(data: Path, splits: list[str], out: Path) -> Path:
    """``path,n_frames,label`` rows (the paper's list format) of several ``path label`` manifests."""
    info = json.loads((data / "info.json").read_text())
    frames = int(info.get("frames", info.get("config", {}).get("frames", 32)))
    lines = ["path,n_frames,label"]
    for s in splits:
        for line in (data / f"{s}.txt").read_text().split("\n"):
            if line.strip():
                path, label = line.rsplit(" ", 1)
                lines.append(f"{path},{frames},{label}")
    out.write_text("\n".join(lines) + "\n")
    return out


def _extract(data: Path, store: Path, backbone: str, weights: str | None, cfg: SSLDemoConfig, *,
             crop: int, clip_len: int, progress: bool) -> str:
    from featbank.extract.job import ExtractConfig, run_extraction

    name = f"{backbone}/pooled/c{clip_len}"
    for split, manifest in (("train", "target_train"), ("test", "target_test")):
        ecfg = ExtractConfig(
            manifest=str(data / f"{manifest}.txt"), manifest_format="path_label", store=str(store),
            feature_set=name, backbone=backbone, weights=weights, sampler="sliding", clip_len=clip_len,
            stride=clip_len, frame_stride=1, resize=int(round(crop * 8 / 7)), crop=crop, fps="source", workers=0,
            batch_size=8, timeout=0, split=split, domain="target", threads=cfg.threads, seed=cfg.seed,
        )
        summary = run_extraction(ecfg, progress=progress)
        if summary.failures:
            raise RuntimeError(f"extraction of {manifest} failed: {summary.failures[:3]}")
    return name


def run_ssl_demo(out: str | Path, cfg: SSLDemoConfig = SSLDemoConfig(), *, progress: bool = True) -> dict[str, Any]:
    """Run the demo into ``out``; returns the ``results.json`` dict."""
    from featbank.experiments.data.synth_v2v import SynthV2VConfig, generate
    from featbank.experiments.recipes.ssl import (
        SSLConfig, evaluate_set, fit_temporal_cue, load_videos, pretrain_pixels, render_temporal_cam,
    )
    from featbank.experiments.stats import format_rows, summarize, write_demo_results
    from featbank.extract.backbones import create_backbone

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    times: dict[str, float] = {}
    data = out / "data"
    if not (data / "info.json").exists():
        generate(data, SynthV2VConfig(seed=cfg.seed, size=cfg.size, frames=32, source_train_per_class=cfg.source_train_per_class,
                                      source_val_per_class=2, target_train_max=cfg.target_train_max,
                                      target_test_max=cfg.target_test_max), progress=progress)
    times["generate"] = time.perf_counter() - t0

    # 2. pretraining on pixels (labels never read)
    t1 = time.perf_counter()
    manifest = _csv_manifest(data, ["source_train", "target_train"], out / "pretrain.csv")
    e = cfg.epochs
    pcfg = SSLConfig(
        name="ssl_demo", manifest=str(manifest), root=str(data), width=cfg.width, size=cfg.view_size,
        prototypes=cfg.prototypes, queue=cfg.queue, seed=cfg.seed, threads=cfg.threads, device="cpu",
        queue_start_epoch=max(1, e // 10), graph_start_epoch=max(1, e // 5), freeze_prototypes_epochs=1,
        optim=OptimConfig(optimizer="adam", lr=1e-3, weight_decay=1e-5, epochs=e, batch_size=cfg.batch_size),
    )
    pre = pretrain_pixels(pcfg, out / "pretrain", progress=progress)
    times["pretrain"] = time.perf_counter() - t1

    # 3. features
    t2 = time.perf_counter()
    models = {"random init": pre["init_backbone"], "pretrained": pre["backbone"]}
    stores: dict[str, tuple[Path, str]] = {}
    for key, weights in models.items():
        store = out / f"{key.replace(' ', '_')}.zarr"
        stores[key] = (store, _extract(data, store, "r3d-18", weights, cfg, crop=cfg.view_size, clip_len=16,
                                       progress=progress))
    if cfg.supervised:
        store = out / "supervised_i3d.zarr"
        stores["supervised (K400 I3D)"] = (store, _extract(data, store, "i3d-rgb-k400", "default", cfg,
                                                           crop=cfg.size, clip_len=16, progress=progress))
    times["extract"] = time.perf_counter() - t2

    # 4. probe + retrieval
    t3 = time.perf_counter()
    rows, evals = [], {}
    for key, (store, set_name) in stores.items():
        ev = evaluate_set(store, set_name, seeds=cfg.seeds, seed=cfg.seed, epochs=cfg.probe_epochs, threads=cfg.threads)
        evals[key] = ev
        rows.append(summarize(key, ev["per_seed"], keys=["top1", "mca", "R@1", "R@5", "R@10", "R@20"]))
    times["evaluate"] = time.perf_counter() - t3

    # 5. temporal cue + CAM
    t4 = time.perf_counter()
    resize = int(round(cfg.view_size * 8 / 7))
    tr, _, _ = load_videos(str(data / "target_train.txt"), resize=resize, min_frames=16)
    te, te_ids, _ = load_videos(str(data / "target_test.txt"), resize=resize, min_frames=16)
    cue: dict[str, dict[str, float]] = {}
    for key, weights in models.items():
        backbone = create_backbone("r3d-18", weights=weights)
        head, acc = fit_temporal_cue(backbone, tr, size=cfg.view_size, seed=cfg.seed, test_videos=te)
        cue[key] = acc
        if key == "pretrained":
            step = max(1, len(te) // max(1, cfg.cam_clips))
            for i in range(0, len(te), step)[: cfg.cam_clips]:
                render_temporal_cam(backbone, head, te[i], out / "cam", te_ids[i].replace("/", "__"), size=cfg.view_size)
    for r in rows:
        if r["name"] in cue:
            r["cue_test_acc"] = cue[r["name"]]["test_acc"]
    times["cam"] = time.perf_counter() - t4
    seconds = time.perf_counter() - t0
    table = format_rows(rows, ["top1", "mca", "R@1", "R@5", "R@10", "R@20"])
    (out / "table.txt").write_text(table + "\n")
    extra = {
        "benchmark": {"name": "synth-v2v (target domain: motion classes, class-independent backgrounds)",
                      "size": cfg.size, "view_size": cfg.view_size,
                      "n_train": evals["pretrained"]["probe"]["n_train"], "n_test": evals["pretrained"]["probe"]["n_test"],
                      "pretrain_videos": pre["videos"]},
        "pretrain": {"epochs": cfg.epochs, "width": cfg.width, "first_epoch": pre["history"][0],
                     "last_epoch": pre["history"][-1]},
        "temporal_cue": cue, "cam": sorted(str(p.relative_to(out)) for p in (out / "cam").glob("*.png")),
        "times": times, "config": dataclasses.asdict(cfg),
    }
    res = write_demo_results(out, recipe="ssl", metric="top1", rows=rows, source_only="random init",
                             final="pretrained", seeds=[cfg.seed + i for i in range(cfg.seeds)], seconds=seconds,
                             extra=extra)
    if progress:
        print(table)
        print("temporal cue (test acc): " + ", ".join(f"{k} {v['test_acc']:.3f}" for k, v in cue.items()))
        print(f"wrote {out / 'results.json'} in {seconds:.0f} s")
    return res
