"""CLI of the GLAD recipe: ``featbank data synth-v2v OUT`` and ``featbank extract median``.

Heavy imports stay inside the command functions so ``featbank --help`` stays fast.
"""

from __future__ import annotations

import argparse


def register(sub, groups) -> None:
    """Add ``data synth-v2v``."""
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
