"""CLI of temporal activity detection.

* ``featbank data synth-detect OUT --seed S``: the detection benchmark (long videos, Charades CSVs).
* ``featbank eval charades-localize PRED GT [--json]``: score a submission file (``video_id
  frame_index score...``, 25 frames per video) with the Charades_v1_localize protocol.
* ``featbank store import-layout coarse-fine|npy-seq SRC STORE``: import per-time-step features
  from Coarse-Fine's ``{layer}/{video_id}`` tensors or ``(T, D)`` npy files.

Heavy imports stay inside the command functions.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(sub, groups) -> None:
    s = groups["data"].add_parser(
        "synth-detect", help="generate the temporal detection benchmark (real clips + generated actions)",
        description="Write long videos composed of real-clip and generated action instances, static gaps and "
        "overlaps, with Charades CSV annotations (train.csv, test.csv), manifests and classes.txt into OUT.",
        epilog="example: featbank data synth-detect /tmp/det --seed 0")
    s.add_argument("out", help="output folder")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--train-videos", type=int, default=24)
    s.add_argument("--test-videos", type=int, default=12)
    s.add_argument("--fps", type=int, default=8)
    s.add_argument("--size", type=int, default=96, help="frame side in pixels")
    s.add_argument("--shared", default="", help="folder with clips/ and rawframes/ (default ../shared/data)")
    s.add_argument("--no-real", action="store_true", help="generated action classes only")
    s.add_argument("--traceback", action="store_true")
    s.set_defaults(func=cmd_synth_detect)

    e = groups["eval"].add_parser(
        "charades-localize", help="score a Charades localisation submission (per-frame mAP, 25 frames per video)",
        description="Charades_v1_localize protocol: 25 frames per video at (j-1)/25*length, frames 1-indexed, "
        "per-class AP over all frames of all videos, mAP over the classes with a positive (the others are listed). "
        "PRED lines: `video_id frame_index score_1 ... score_C`; GT: a Charades CSV (id, actions, length).",
        epilog="example: featbank eval charades-localize submission.txt Charades_v1_test.csv --json")
    e.add_argument("pred", help="submission file")
    e.add_argument("gt", help="Charades CSV of the evaluated videos")
    e.add_argument("--classes", type=int, default=None,
                   help="number of classes (default: 157, or the submission's column count when it is not 157/158)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--traceback", action="store_true")
    e.set_defaults(func=cmd_charades_localize)

    i = groups["store"].add_parser(
        "import-layout", help="import per-time-step features: Coarse-Fine {layer}/{video_id} tensors or (T, D) npy",
        description="coarse-fine: SRC has layer1..layer4, conv5 folders of torch.save'd (1, C, T, H, W) tensors, one "
        "file per video; each layer becomes feature set PREFIX/LAYER. npy-seq: SRC holds VIDEO_ID.npy files of (T, D).",
        epilog="example: featbank store import-layout coarse-fine fine_spatial7x7 feats.zarr --set x3d-cf --pool avg")
    i.add_argument("layout", choices=("coarse-fine", "npy-seq"))
    i.add_argument("src", help="source folder")
    i.add_argument("store", help="target store (created when missing)")
    i.add_argument("--set", required=True, help="feature set (coarse-fine: the prefix of PREFIX/LAYER)")
    i.add_argument("--layers", default=",".join(("layer1", "layer2", "layer3", "layer4", "conv5")))
    i.add_argument("--pool", choices=("none", "avg"), default="none", help="coarse-fine: keep maps or average them")
    i.add_argument("--row-seconds", type=float, default=None,
                   help="seconds per time step (default: 10/24 for coarse-fine, 1.0 for npy-seq)")
    i.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    i.add_argument("--traceback", action="store_true")
    i.set_defaults(func=cmd_import_layout)


def cmd_synth_detect(args: argparse.Namespace) -> int:
    from featbank.experiments.config import ConfigError
    from featbank.experiments.data.synth_detect import SynthDetectConfig, generate

    try:
        cfg = SynthDetectConfig(seed=args.seed, train_videos=args.train_videos, test_videos=args.test_videos,
                                fps=args.fps, size=args.size, shared=args.shared, real_clips=not args.no_real)
    except ValueError as e:
        raise ConfigError(f"synth-detect: {e}") from None
    res = generate(args.out, cfg, progress=True)
    print(f"classes      {res['num_classes']} ({res['classes']})")
    for k in ("train", "test", "train_manifest", "test_manifest"):
        print(f"{k:<12} {res[k]}")
    print(f"total        {res['info']['total_seconds']:.0f} s of video")
    return 0


def cmd_charades_localize(args: argparse.Namespace) -> int:
    from featbank.experiments.config import ConfigError
    from featbank.experiments.data.annotations import read_charades_csv
    from featbank.heads.detection_metrics import charades_localize, read_submission

    try:
        sub = read_submission(args.pred)
        width = sub.scores.shape[1]
        n = args.classes or (157 if width in (157, 158) else width)
        if width not in (n, n + 1):
            raise ValueError(f"{args.pred}: {width} scores per line for {n} classes")
        sub = read_submission(args.pred, n)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    anns = read_charades_csv(args.gt, num_classes=n)
    gt = {v: (a.duration, a.segments) for v, a in anns.items()}
    res = charades_localize(sub, gt, n)
    if args.json:
        print(json.dumps({k: res[k] for k in ("map", "ap", "classes_without_positives", "n_classes_scored",
                                               "n_videos", "n_frames", "missing_frames", "extra_predictions")}))
        return 0
    print(f"Per-Frame mAP {res['map']:.4f} over {res['n_classes_scored']} classes with positives "
          f"({res['n_videos']} videos, {res['n_frames']} frames)")
    if res["classes_without_positives"]:
        print(f"classes without a positive frame (AP undefined, not in the mean): {res['classes_without_positives']}")
    if res["missing_frames"]:
        print(f"warning: {res['missing_frames']} frames missing from the submission (scored -inf)", file=sys.stderr)
    return 0


def cmd_import_layout(args: argparse.Namespace) -> int:
    from featbank.store import open_store
    from featbank.store.import_layouts import import_coarse_fine, import_npy_sequences

    with open_store(args.store, "a") as store:
        if args.layout == "coarse-fine":
            res = import_coarse_fine(store, args.src, args.set, layers=[x for x in args.layers.split(",") if x],
                                     row_seconds=args.row_seconds or 10 / 24, pool=args.pool, dtype=args.dtype)
        else:
            res = {args.set: import_npy_sequences(store, args.src, args.set, row_seconds=args.row_seconds or 1.0,
                                                  dtype=args.dtype)}
    for name, n in res.items():
        print(f"{name}: {n} videos")
    return 0


def run_detect_config(args: argparse.Namespace) -> int:
    """``featbank run configs/experiments/coarse_fine_synth.yaml key=value ...``."""
    from pathlib import Path

    from featbank.experiments.recipes.detect import format_table, load_detect_config, run_detect

    cfg = load_detect_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    result = run_detect(cfg, out, progress=True)
    print(format_table(result))
    print(f"wrote {out / 'metrics.json'}")
    return 0


def demo_detect(args: argparse.Namespace) -> int:
    """``featbank demo --recipe detect``: benchmark -> K400 I3D per-step features -> six rows over 5 seeds."""
    from featbank.experiments.recipes.detect import run_demo

    run_demo(args.out, seed=args.seed, threads=args.threads, overrides=tuple(args.overrides),
             progress=not args.no_progress)
    return 0
