"""``featbank extract`` and ``featbank store verify``.

``featbank extract [CONFIG.yaml] [key=value ...] [--flags]``: the config file (defaults when
omitted), then ``key=value`` overrides, then flags, each layer over the previous one.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

EXTRACT_EXAMPLES = """examples:
  featbank extract --manifest clips.txt --store feats.zarr
      I3D Kinetics-400 (default), 64-frame windows, runtime and precision chosen for this machine
  featbank extract configs/extract/i3d_rgb_k400.yaml --manifest clips.txt --store feats.zarr --verify 2
  featbank extract --manifest clips.txt --store feats.zarr --backbone x3d-m --weights x3d_m.pyth \\
      --runtime openvino --precision fp32 --workers 2
  featbank extract --manifest stills.txt --store feats.zarr --sampler static --clip-len 8
      every still (or frame) repeated into an 8-frame clip, one row per frame
  featbank extract --manifest clips.txt --store feats.zarr --print-config   (resolved config, no run)
"""

# flag dest -> ExtractConfig key
_FLAG_KEYS = {
    "manifest": "manifest",
    "manifest_format": "manifest_format",
    "root": "root",
    "store": "store",
    "set": "feature_set",
    "backbone": "backbone",
    "weights": "weights",
    "endpoint": "endpoint",
    "clip_len": "clip_len",
    "stride": "stride",
    "frame_stride": "frame_stride",
    "fps": "fps",
    "sampler": "sampler",
    "num_segments": "num_segments",
    "views": "views",
    "device": "device",
    "runtime": "runtime",
    "precision": "precision",
    "resize": "resize",
    "crop": "crop",
    "dtype": "dtype",
    "workers": "workers",
    "batch_size": "batch_size",
    "shard": "shard",
    "timeout": "timeout",
    "limit": "limit",
    "verify": "verify",
    "split": "split",
    "domain": "domain",
}


def _fps(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _add_extract_arguments(p: argparse.ArgumentParser, items_nargs: Any) -> None:
    p.add_argument("items", nargs=items_nargs, metavar="CONFIG.yaml|key=value",
                   help="an extraction config (configs/extract/*.yaml) and key=value overrides")
    p.add_argument("--manifest", help="manifest file or CLASS/VIDEO directory tree")
    p.add_argument("--manifest-format", choices=("auto", "path_label", "csv", "mmaction", "tree"))
    p.add_argument("--root", help="folder the manifest paths are relative to")
    p.add_argument("--store", help="feature store path (created when missing)")
    p.add_argument("--set", help="feature-set name (default BACKBONE/ENDPOINT/cLsS)")
    p.add_argument("--backbone", help="backbone registry name, e.g. i3d-rgb-k400, x3d-m, resnet50")
    p.add_argument("--weights", help="'default' (the backbone's published weights), 'random' or a weights file")
    p.add_argument("--endpoint", help="backbone endpoint (default: the last one)")
    p.add_argument("--clip-len", type=int, help="frames per window")
    p.add_argument("--stride", type=int, help="frames between window starts")
    p.add_argument("--frame-stride", type=int, help="frames between sampled frames in a window")
    p.add_argument("--fps", type=_fps, help="target fps: a number, 'spec' or 'source'")
    p.add_argument("--sampler", choices=("sliding", "tsn", "dense", "whole", "static"),
                   help="static: single frames (a still is one) repeated into clips of --clip-len")
    p.add_argument("--num-segments", type=int, help="segments of tsn; frames per video of static")
    p.add_argument("--views", choices=("center", "3crop", "flip", "3crop+flip"))
    p.add_argument("--resize", type=int, help="short side frames are resized to (default: the backbone's)")
    p.add_argument("--crop", type=int, help="square centre-crop side (default: the backbone's)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--runtime", choices=("auto", "torch", "openvino"),
                   help="auto: OpenVINO on CPU when installed, torch on CUDA")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"),
                   help="auto: bf16 where native and a probe clip agrees with fp32 (cosine >= 0.999), else fp32")
    p.add_argument("--dtype", choices=("float16", "float32", "bfloat16"), help="stored dtype")
    p.add_argument("--workers", type=int, help="decoding worker processes (0: decode in the job process)")
    p.add_argument("--batch-size", type=int,
                   help="windows per model call (default 0: 1 for OpenVINO on the CPU, 8 for torch)")
    p.add_argument("--shard", help="I/N: this task's shard (default from SLURM_ARRAY_TASK_ID/COUNT)")
    p.add_argument("--timeout", type=float, help="per-video decode timeout in seconds (0: off)")
    p.add_argument("--limit", type=int, help="only the first N manifest entries")
    p.add_argument("--verify", type=int, help="after the run, re-extract N random videos and compare")
    p.add_argument("--split", help="split name written into the video metadata")
    p.add_argument("--domain", help="domain name written into the video metadata")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--traceback", action="store_true", help="show tracebacks of user errors")


def register(sub, groups) -> None:
    p = sub.add_parser(
        "extract",
        help="run a backbone over a manifest of videos into a feature store",
        description="Extract features of every video in a manifest into one feature set of a store "
        "(resumable; failures are logged in the store; exit code 2 when any video failed). "
        "Flags and key=value overrides may be mixed in any order after the config.",
        epilog=EXTRACT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Everything after the first positional is re-parsed with parse_intermixed_args, so that
    # flags and key=value overrides can be mixed freely.
    _add_extract_arguments(p, argparse.REMAINDER)
    p.set_defaults(func=cmd_extract)

    v = groups["store"].add_parser(
        "verify",
        help="re-extract N random committed videos and compare with the stored rows",
        description="Re-extract N random committed videos of a feature set with the config recorded "
        "in its provenance and report the max abs difference (exit 1 above the dtype's tolerance).",
        epilog="example:\n  featbank store verify feats.zarr --set i3d-rgb-k400/Mixed_5c/c64s64 -n 3 -o workers=0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    v.add_argument("store", metavar="PATH", help="store folder or fsspec URL")
    v.add_argument("--set", required=True, metavar="NAME", help="feature set to verify")
    v.add_argument("-n", type=int, default=3, help="videos to re-extract (default 3)")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("-o", "--override", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override of the recorded config, e.g. -o device=cpu -o workers=0 (repeatable)")
    v.add_argument("--traceback", action="store_true")
    v.set_defaults(func=cmd_verify)


def _merge_remainder(args: argparse.Namespace) -> argparse.Namespace:
    """Parse the items after the config (flags and key=value mixed) over the leading flags."""
    inner = argparse.ArgumentParser(prog="featbank extract", add_help=False)
    _add_extract_arguments(inner, "*")
    later = inner.parse_intermixed_args(list(args.items))
    merged = argparse.Namespace(**vars(args))
    for key, value in vars(later).items():
        if key == "items":
            merged.items = list(value)
        elif value is not None and value is not False:  # 0 is a real value (--workers 0)
            setattr(merged, key, value)
    return merged


def resolve_config(args: argparse.Namespace) -> Any:
    """The ``ExtractConfig`` of a parsed ``featbank extract`` command line."""
    from featbank.experiments.config import ConfigError, from_dict, load_config, to_dict
    from featbank.extract.job import ExtractConfig

    args = _merge_remainder(args)

    files = [i for i in args.items if "=" not in i]
    overrides = [i for i in args.items if "=" in i]
    if len(files) > 1:
        raise ConfigError(f"expected at most one config file, got {files}")
    cfg = load_config(ExtractConfig, files[0] if files else None, overrides)
    flags = {key: getattr(args, dest) for dest, key in _FLAG_KEYS.items() if getattr(args, dest) is not None}
    if flags:
        try:
            cfg = from_dict(ExtractConfig, {**to_dict(cfg), **flags})
        except ConfigError as e:
            raise ConfigError(f"command-line flags: {e}") from None
    return cfg


def cmd_extract(args: argparse.Namespace) -> int:
    if not getattr(args, "print_config", False) and getattr(args, "workers", None) != 0:
        from featbank.extract.worker_server import start_worker_server

        start_worker_server()  # the workers' server imports torch on another core while this process does
    import yaml

    from featbank.experiments.config import ConfigError, to_dict
    from featbank.extract.job import run_extraction

    cfg = resolve_config(args)
    args = _merge_remainder(args)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    if not cfg.store:
        raise ConfigError("no store given: set store in the config or pass --store")
    summary = run_extraction(cfg, progress=not args.no_progress)
    print(summary.format())
    return summary.exit_code


def cmd_verify(args: argparse.Namespace) -> int:
    from featbank.experiments.cli.store import _open
    from featbank.experiments.config import from_dict
    from featbank.extract.job import ExtractConfig, verify_extraction
    from featbank.store import StoreError

    if args.n < 1:
        from featbank.experiments.config import ConfigError

        raise ConfigError(f"store verify: -n must be >= 1 (videos to re-extract), got {args.n}")
    with _open(args.store, "r") as store:
        fs = store.open_set(args.set, allow_stale=True)
        recorded = dict(fs.info.sampling.get("config", {}))
        if not recorded:  # e.g. a set imported from npy/HDF5: nothing says how to re-extract it
            raise StoreError(
                f"set {args.set!r} of {args.store} records no extraction config (it was not written by "
                "`featbank extract`, e.g. imported), so its videos cannot be re-extracted to verify them; "
                f"`featbank store validate {args.store}` checks its stored values instead"
            )
        cfg = from_dict(ExtractConfig, recorded, args.overrides) if recorded else None
        report = verify_extraction(store, args.set, args.n, seed=args.seed, cfg=cfg)
    print(report.format())
    sys.stdout.flush()
    return 0 if report.ok else 1
