"""CLI: ``featbank train``: a quick head on any feature set, over seeds, with confidence intervals."""

from __future__ import annotations

import argparse
import json
import sys

EXAMPLE = """examples:
  featbank train --store feats.zarr --set i3d-rgb-k400/Mixed_5c/c16s16 --head linear --seeds 5
  featbank train --store feats.zarr --set NAME --head attn --train-split train --test-split test --json
  featbank train --store feats.zarr --set NAME --head mlp optim.epochs=100 optim.lr=0.01 --out runs/probe
  featbank run configs/experiments/train_probe.yaml store=feats.zarr set=NAME     # the same from YAML
"""


def register(sub, groups) -> None:
    """Add ``featbank train``."""
    p = sub.add_parser(
        "train", help="train a quick head (linear/mlp probe, attention or TCN over rows) on a feature set",
        description="Train a head on the train split of a feature set and report top-1 and mean-class "
        "accuracy on the test split, as mean and 95%% confidence interval over seeds (final epoch; "
        "nothing is selected on the test split). linear/mlp take each video's mean feature; attn/tcn "
        "take the sequence of its rows.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default=None, help="feature store path")
    p.add_argument("--set", dest="set_name", default=None, help="feature-set name (see `featbank store info`)")
    p.add_argument("--head", default=None, choices=["linear", "mlp", "attn", "tcn"], help="head (default linear)")
    p.add_argument("--label", default=None, choices=["label", "domain"], help="what to predict (default label)")
    p.add_argument("--train-split", default=None, help="training split (default train)")
    p.add_argument("--test-split", default=None, help="evaluation split (default test)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default 1)")
    p.add_argument("--seed", type=int, default=None, help="first seed (default 0)")
    p.add_argument("--config", default=None, help="YAML config (recipe: train); flags override it")
    p.add_argument("--out", default=None, help="folder for config.yaml, metrics.jsonl, results.json")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--progress", action="store_true", help="progress bar per seed")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.epochs=100 optim.lr=0.01")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from featbank.experiments.config import ConfigError
    from featbank.experiments.recipes.train import format_result, load_train_config, train_heads, with_cli

    cfg = load_train_config(args.config, list(args.overrides))
    try:
        cfg = with_cli(cfg, store=args.store, set=args.set_name, head=args.head, label=args.label,
                       train_split=args.train_split, test_split=args.test_split, seeds=args.seeds, seed=args.seed)
    except ValueError as e:
        raise ConfigError(f"train: {e}") from None
    res = train_heads(cfg, args.out, progress=args.progress and sys.stderr.isatty())
    if args.json:
        keys = ("head", "set", "seeds", "top1_mean", "top1_ci95", "mca_mean", "mca_ci95", "per_seed",
                "num_classes", "n_train", "n_test", "seconds")
        print(json.dumps({k: res[k] for k in keys}))
    else:
        print(format_result(res))
    return 0


def run_from_config(args: argparse.Namespace) -> int:
    """``featbank run CONFIG`` for ``recipe: train``."""
    from featbank.experiments.recipes.train import format_result, load_train_config, train_heads

    cfg = load_train_config(args.config, list(args.overrides))
    out = args.out or f"runs/{cfg.name}"
    res = train_heads(cfg, out)
    print(format_result(res))
    print(f"wrote {out}/results.json")
    return 0
