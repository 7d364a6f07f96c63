"""The ``featbank`` command line.

Each area owns one module with ``register(sub, groups)``: ``sub`` is the top-level
subparser set, ``groups`` maps a command group (``store``, ``bank``, ``data``) to its
subparser set. A registered parser sets ``func(args) -> int`` (the exit code).
Command modules keep heavy imports (torch, zarr, faiss) inside their functions so that
``featbank --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# Command groups: name -> help line.
GROUPS = {
    "store": "inspect, validate, import/export, compact and explain feature stores",
    "bank": "build, query and evaluate nearest-neighbour memory banks over a feature set",
    "data": "generate benchmark data sets",
    "eval": "score predictions with official evaluation protocols",
    "viz": "visualise what a model looks at (temporal-cue class activation maps)",
}

# Modules that register commands (a literal tuple: importing a module never registers anything by itself).
CLI_MODULES: tuple[str, ...] = (
    "featbank.experiments.cli.store",
    "featbank.experiments.cli.extract",
    "featbank.experiments.cli.bank",
    "featbank.experiments.cli.run",
    "featbank.experiments.cli.classify",
    "featbank.experiments.cli.detect",
    "featbank.experiments.cli.glad",
    "featbank.experiments.cli.train",
    "featbank.experiments.cli.cfb",
    "featbank.experiments.cli.ssl",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="featbank",
        description="featbank: run video backbones once into a Zarr feature store, then train "
        "heads, query memory banks and run published recipes on the cached features.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--traceback", action="store_true",
                        help="show the Python traceback of a user error (accepted anywhere on the line)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups = {}
    for name, help_line in GROUPS.items():
        gp = sub.add_parser(name, help=help_line, description=help_line)
        groups[name] = gp.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    for module in CLI_MODULES:
        importlib.import_module(module).register(sub, groups)
    return parser


def _version() -> str:
    from featbank import __version__

    return f"featbank {__version__}"


_EPILOG = """examples:
  featbank extract configs/extract/i3d_rgb_k400.yaml --manifest videos.txt --store feats.zarr
  featbank store info feats.zarr
  featbank store validate feats.zarr
  featbank store export npy feats.zarr --set i3d/rgb feats_npy/
  featbank demo --out demo_out
run `featbank COMMAND --help` for the examples of each command"""


def _split_traceback(argv: Sequence[str]) -> tuple[list[str], bool]:
    """Take ``--traceback`` out of the command line wherever it stands (before a ``--``), so that
    every command accepts it without declaring it."""
    argv = list(argv)
    stop = argv.index("--") if "--" in argv else len(argv)
    found = "--traceback" in argv[:stop]
    return [a for i, a in enumerate(argv) if i >= stop or a != "--traceback"], found


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv, traceback = _split_traceback(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.traceback = traceback or getattr(args, "traceback", False)
    func = getattr(args, "func", None)
    if func is None:  # `featbank` alone, or a group without its subcommand: usage, exit 2
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `featbank store info PATH --json | head`
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as e:  # user-facing errors: one clear line, no traceback
        from featbank.experiments.errors import is_user_error

        if is_user_error(e) and not getattr(args, "traceback", False):
            print(f"featbank {args.command}: error: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    raise SystemExit(main())
