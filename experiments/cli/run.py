"""CLI: ``featbank run CONFIG.yaml [key=value ...]``, ``featbank data synth-i2v OUT``, ``featbank demo [--recipe NAME]``.

Heavy imports (torch, zarr, faiss) stay inside the command functions.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# Recipes ``featbank run`` dispatches to, by the config's top-level ``recipe`` key (literal dict).
RECIPES = {
    "cycda": "featbank.experiments.cli.run:_run_cycda",
    "detect": "featbank.experiments.cli.detect:run_detect_config",
    "train": "featbank.experiments.cli.train:run_from_config",
    "cfb": "featbank.experiments.cli.cfb:_run_cfb",
    "glad": "featbank.experiments.cli.glad:run_glad_config",
    "ssl": "featbank.experiments.cli.ssl:run_ssl_config",
}

# End-to-end demos of ``featbank demo --recipe NAME`` (literal dict). Each entry is
# ``module:function`` with ``function(args) -> int``; ``args`` carries ``out``, ``seed``,
# ``threads``, ``no_progress`` and ``overrides``. Every demo writes ``OUT/results.json`` with
# ``recipe``, ``metric``, ``source_only_acc``, ``final_acc`` (means over seeds),
# ``source_only_ci95``, ``final_ci95``, ``seeds``, ``seconds`` and ``rows`` (the whole table).
DEMOS = {
    "cycda": "featbank.experiments.cli.run:_demo_cycda",
    "detect": "featbank.experiments.cli.detect:demo_detect",
    "cfb": "featbank.experiments.cli.cfb:_demo_cfb",
    "glad": "featbank.experiments.cli.glad:demo_glad",
    "ssl": "featbank.experiments.cli.ssl:demo_ssl",
}


class _RunParser(argparse.ArgumentParser):
    """Parser of ``featbank run``: ``key=value`` words after ``--out DIR`` are overrides too."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        ns, extra = super().parse_known_args(args, namespace)
        more = [a for a in extra if "=" in a and not a.startswith("-")]
        if more:
            ns.overrides = [*(getattr(ns, "overrides", None) or []), *more]
        return ns, [a for a in extra if a not in more]


def register(sub, groups) -> None:
    """Add ``run``, ``demo`` and ``data synth-i2v``."""
    parser_class = sub._parser_class  # `run` collects key=value overrides on both sides of --out
    sub._parser_class = _RunParser
    try:
        p = sub.add_parser("run", help="run a recipe from a YAML config (dispatch on its `recipe:` key)",
                           description="Run a recipe: `featbank run CONFIG.yaml [key=value ...] [--out DIR] "
                           "[key=value ...]`. The config's top-level `recipe` key picks the recipe "
                           f"({', '.join(sorted(RECIPES))}). Every value is checked before anything runs; a "
                           "failed run leaves no new output folder.",
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog="examples:\n"
                           "  featbank run configs/experiments/cycda_synth.yaml features.store=demo_out/store.zarr\n"
                           "  featbank run configs/experiments/cycda_synth.yaml --out runs/c2 "
                           "features.store=demo_out/store.zarr cycles=2 seed=1\n"
                           "  featbank run configs/experiments/cycda_synth.yaml features.store=S.zarr safeguards=false"
                           "   # released behaviour")
    finally:
        sub._parser_class = parser_class
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="key=value overrides (dotted keys), e.g. cycles=2 stage1.epochs=5")
    p.add_argument("--out", default=None, help="output folder (default: runs/<config name>); not a file")
    p.add_argument("--traceback", action="store_true", help="show tracebacks of user errors")
    p.set_defaults(func=cmd_run)

    d = sub.add_parser("demo", help="run a recipe end to end: generate its benchmark, extract with K400 I3D, train",
                       description="The end-to-end demo of a recipe on a generated benchmark: real files, real "
                       "Kinetics-400 I3D weights, features cached in a Zarr store, heads trained over several "
                       "seeds; prints a table and writes OUT/results.json. Each fits 10 minutes on 2 CPU cores.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  featbank demo                                # cycda: benchmark v2, "
                       "I3D features once, the cycle over 10 training seeds\n"
                       "  featbank demo --out demo_out --seed 1         # another benchmark seed (training seeds 1..10)\n"
                       "  featbank demo --out demo_out safeguards=false # the released CycDA behaviour on the "
                       "same store\n  featbank demo --recipe cfb --out demo_cfb")
    d.add_argument("--recipe", default="cycda", choices=sorted(DEMOS), help="which recipe (default: cycda)")
    d.add_argument("--out", default=None, help="output folder (default: demo_out for cycda, demo_out_RECIPE otherwise)")
    d.add_argument("--seed", type=int, default=0, help="benchmark and training seed")
    d.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    d.add_argument("--train-seeds", type=int, default=None,
                   help="cycda: training seeds of the cycle, SEED .. SEED+N-1 (default 10)")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.add_argument("overrides", nargs="*", help="key=value overrides of the CycDA config")
    d.add_argument("--traceback", action="store_true")
    d.set_defaults(func=cmd_demo)

    s = groups["data"].add_parser("synth-i2v", help="generate the synthetic image->video benchmark (v2)",
                                  description="Write jpg stills (labelled source), mp4 videos (unlabelled target "
                                  "train, labelled target test) and `path label` manifests into OUT. Version 2: "
                                  "8 classes, two pairs of which share their appearance and differ only in motion "
                                  "(info.json: motion_pairs). Deterministic per seed (same decoded frames).",
                                  formatter_class=argparse.RawDescriptionHelpFormatter,
                                  epilog="examples:\n  featbank data synth-i2v /tmp/i2v --seed 0\n"
                                  "  featbank data synth-i2v /tmp/tiny --classes 4 --train-per-class 2 "
                                  "--test-per-class 2 --size 48")
    s.add_argument("out", help="output folder")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--classes", type=int, default=8, help="first N classes of the design (2..8)")
    s.add_argument("--source-per-class", type=int, default=16)
    s.add_argument("--train-per-class", type=int, default=16, help="unlabelled adaptation videos per class")
    s.add_argument("--test-per-class", type=int, default=12)
    s.add_argument("--frames", type=int, default=32, help="frames per video")
    s.add_argument("--fps", type=int, default=16)
    s.add_argument("--size", type=int, default=64, help="image / video side in pixels (even)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar (none is drawn into a pipe anyway)")
    s.add_argument("--traceback", action="store_true")
    s.set_defaults(func=cmd_synth_i2v)


def _recipe_of(path: str) -> str:
    import yaml

    from featbank.experiments.config import ConfigError

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
    recipe = data.get("recipe") if isinstance(data, dict) else None
    if recipe not in RECIPES:
        raise ConfigError(f"{p}: top-level key `recipe` is {recipe!r}; known recipes: {sorted(RECIPES)}")
    return recipe


def _check_out(out: Path) -> None:
    from featbank.experiments.config import ConfigError

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder (it is created)")


def cmd_run(args: argparse.Namespace) -> int:
    recipe = _recipe_of(args.config)
    if args.out is not None:
        _check_out(Path(args.out))
    module, func = RECIPES[recipe].split(":")
    import importlib

    return getattr(importlib.import_module(module), func)(args)


def _run_cycda(args: argparse.Namespace) -> int:
    import shutil

    from featbank.experiments.recipes.cycda import format_table, load_cycda_config, run_cycle

    cfg = load_cycda_config(args.config, args.overrides)  # every value checked before any stage runs
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    _check_out(out)
    existed = out.exists()
    try:
        result = run_cycle(cfg, out, progress=True)
    except BaseException:
        if not existed and out.is_dir():
            shutil.rmtree(out)  # a failed run leaves no new output folder
        raise
    print(format_table(result))
    print(f"source-only {result['source_only_acc']:.3f} -> final {result['final_acc']:.3f}; "
          f"wrote {out / 'metrics.json'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import importlib

    if args.out is None:
        args.out = "demo_out" if args.recipe == "cycda" else f"demo_out_{args.recipe}"
    module, func = DEMOS[args.recipe].split(":")
    return int(getattr(importlib.import_module(module), func)(args) or 0)


def _demo_cycda(args: argparse.Namespace) -> int:
    import dataclasses

    from featbank.experiments.demo import DemoConfig, run_demo

    import sys

    from featbank.experiments.recipes.cycda import load_cycda_config

    from featbank.experiments.config import ConfigError

    base = DemoConfig()
    n_seeds = base.train_seeds if args.train_seeds is None else args.train_seeds
    if n_seeds < 2:
        raise ConfigError(f"--train-seeds must be >= 2 (an interval needs two seeds), got {n_seeds}")
    cfg = dataclasses.replace(base, data=dataclasses.replace(base.data, seed=args.seed), threads=args.threads,
                              cycle_overrides=tuple(args.overrides), train_seeds=n_seeds)
    load_cycda_config(cfg.cycle_config or None, list(cfg.cycle_overrides))  # bad overrides fail before any work
    run_demo(args.out, cfg, progress=not args.no_progress and sys.stderr.isatty())
    return 0


def cmd_synth_i2v(args: argparse.Namespace) -> int:
    from featbank.experiments.data.synth_i2v import SynthI2VConfig, generate

    try:
        cfg = SynthI2VConfig(seed=args.seed, classes=args.classes, source_per_class=args.source_per_class,
                             train_per_class=args.train_per_class, test_per_class=args.test_per_class,
                             frames=args.frames, fps=args.fps, size=args.size)
    except ValueError as e:
        from featbank.experiments.config import ConfigError

        raise ConfigError(f"synth-i2v: {e}") from None
    import sys

    paths = generate(args.out, cfg, progress=not args.no_progress and sys.stderr.isatty())
    for k in ("source", "target_train", "target_test", "classes"):
        print(f"{k:<13} {paths[k]}")
    return 0
