"""CLI of the GLAD recipe: ``featbank data synth-v2v OUT``, ``featbank data median-frames MANIFEST OUT``,
and the ``glad`` entries of ``featbank run`` / ``featbank demo``.

Heavy imports stay inside the command functions so ``featbank --help`` stays fast.
"""

from __future__ import annotations

import argparse


def register(sub, groups) -> None:
    """Add ``data synth-v2v`` and ``data median-frames``."""
    s = groups["data"].add_parser(
        "synth-v2v", help="generate the synthetic video->video benchmark with background bias",
        description="Write mp4 videos whose classes are motion patterns: a labelled source domain with "
        "class-correlated backgrounds, a target domain with class-independent backgrounds, another colour "
        "and camera model and imbalanced classes; `path label` manifests source_train/source_val/"
        "target_train/target_test, meta.csv and info.json into OUT.",
        epilog="example: featbank data synth-v2v v2v_data --seed 0")
    s.add_argument("out", help="output folder")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--source-train-per-class", type=int, default=10)
    s.add_argument("--source-val-per-class", type=int, default=4)
    s.add_argument("--target-train-max", type=int, default=12, help="target adaptation videos of the largest class")
    s.add_argument("--target-test-max", type=int, default=10, help="target test videos of the largest class")
    s.add_argument("--frames", type=int, default=32)
    s.add_argument("--size", type=int, default=112)
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--traceback", action="store_true")
    s.set_defaults(func=cmd_synth_v2v)

    m = groups["data"].add_parser(
        "median-frames", help="write each video's temporal median frame (GLAD background debiasing)",
        description="For every entry of a manifest, decode all frames, take the per-pixel median over time "
        "(numpy median, rounded to uint8) and save OUT/<video_id>.jpg. These backgrounds feed the "
        "BackgroundBlend option of the extraction job (blend_dir=OUT). Existing files are skipped.",
        epilog="example: featbank data median-frames v2v_data/source_train.txt v2v_data/median")
    m.add_argument("manifest", help="manifest file (path_label, csv, mmaction or a CLASS/VIDEO tree)")
    m.add_argument("out", help="output folder of <video_id>.jpg")
    m.add_argument("--root", default=None, help="folder the manifest paths are relative to")
    m.add_argument("--manifest-format", default="auto", choices=("auto", "path_label", "csv", "mmaction", "tree"))
    m.add_argument("--decoder", default="auto")
    m.add_argument("--no-progress", action="store_true")
    m.add_argument("--traceback", action="store_true")
    m.set_defaults(func=cmd_median_frames)


def cmd_synth_v2v(args: argparse.Namespace) -> int:
    from featbank.experiments.data.synth_v2v import SPLITS, SynthV2VConfig, generate

    try:
        cfg = SynthV2VConfig(seed=args.seed, source_train_per_class=args.source_train_per_class,
                             source_val_per_class=args.source_val_per_class, target_train_max=args.target_train_max,
                             target_test_max=args.target_test_max, frames=args.frames, size=args.size)
    except ValueError as e:
        from featbank.experiments.config import ConfigError

        raise ConfigError(f"synth-v2v: {e}") from None
    paths = generate(args.out, cfg, progress=not args.no_progress)
    for k in ("classes", *SPLITS, "meta"):
        print(f"{k:<13} {paths[k]}")
    return 0


def run_glad_config(args: argparse.Namespace) -> int:
    """``featbank run configs/experiments/glad_*.yaml [key=value ...]`` (the RECIPES entry)."""
    from pathlib import Path

    from featbank.experiments.recipes.glad import format_table, load_glad_config, run_glad

    cfg = load_glad_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    result = run_glad(cfg, out, progress=True)
    print(format_table(result))
    print(f"headline: {result['headline_views']}; wrote {out / 'metrics.json'}")
    return 0


def demo_glad(args: argparse.Namespace) -> int:
    """``featbank demo --recipe glad`` (the DEMOS entry): benchmark, views, BgAug copies, table."""
    import dataclasses

    from featbank.experiments.recipes.glad_demo import GladDemoConfig, run_glad_demo

    base = GladDemoConfig()
    cfg = dataclasses.replace(base, data=dataclasses.replace(base.data, seed=args.seed), threads=args.threads,
                              overrides=tuple(args.overrides))
    run_glad_demo(args.out, cfg, progress=not args.no_progress)
    return 0


def cmd_median_frames(args: argparse.Namespace) -> int:
    from featbank.extract.background import write_median_frames

    res = write_median_frames(args.manifest, args.out, root=args.root, fmt=args.manifest_format,
                              decoder=args.decoder, progress=not args.no_progress)
    print(f"median frames in {args.out}: {res['written']} written, {res['skipped']} already there, "
          f"{len(res['failures'])} failed")
    for vid, msg in res["failures"]:
        print(f"  FAILED {vid}: {msg}")
    return 2 if res["failures"] else 0
