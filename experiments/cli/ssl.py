"""CLI of the multi-level self-supervised recipe: ``featbank viz temporal-cam``, plus the
``featbank run`` (``recipe: ssl``) and ``featbank demo --recipe ssl`` entry points.

Heavy imports stay inside the command functions so ``featbank --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EXAMPLE = """examples:
  featbank viz temporal-cam --weights runs/mlo_pretrain/backbone.pt --train-manifest train.csv \\
      --manifest test.csv --out cam/ --clips 4 --size 112
  featbank run configs/experiments/mlo_pretrain.yaml manifest=kinetics.csv --out runs/mlo   # pretraining
  featbank demo --recipe ssl --out demo_out_ssl
"""


def register(sub, groups) -> None:
    """Add ``viz temporal-cam``."""
    p = groups["viz"].add_parser(
        "temporal-cam", help="class activation maps of a forward-vs-reversed probe on R3D-18 layer4",
        description="Train the bias-free Linear(512, 2) temporal-cue probe on frozen pooled layer4 features "
        "(each training video's first clip = class 0, the same clip reversed in time = class 1), report its "
        "accuracy on the clips of --manifest, and write one PNG per clip: the probe applied at every (t, h, w) "
        "of the layer4 map, upsampled and overlaid on the frames (top: the clip, bottom: its reversed copy).",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=None, help="R3D-18 state_dict (torchvision or `featbank run` output); "
                   "default: random init")
    p.add_argument("--train-manifest", required=True, help="videos the probe is trained on")
    p.add_argument("--manifest", required=True, help="videos drawn (and the probe tested on)")
    p.add_argument("--out", required=True, help="output folder for the PNGs and cam.json")
    p.add_argument("--clips", type=int, default=4, help="how many clips of --manifest to draw")
    p.add_argument("--size", type=int, default=112, help="crop side in pixels")
    p.add_argument("--clip-len", type=int, default=16)
    p.add_argument("--epochs", type=int, default=100, help="probe epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--traceback", action="store_true")
    p.set_defaults(func=cmd_temporal_cam)


def cmd_temporal_cam(args: argparse.Namespace) -> int:
    from featbank.experiments.config import ConfigError
    from featbank.experiments.recipes.ssl import fit_temporal_cue, load_videos, render_temporal_cam
    from featbank.extract.backbones import create_backbone

    if args.clips < 1 or args.size < 16:
        raise ConfigError("viz temporal-cam: --clips must be >= 1 and --size >= 16")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    resize = int(round(args.size * 8 / 7))
    train, _, _ = load_videos(args.train_manifest, resize=resize, min_frames=args.clip_len)
    test, ids, _ = load_videos(args.manifest, resize=resize, min_frames=args.clip_len)
    backbone = create_backbone("r3d-18", weights=args.weights)
    head, acc = fit_temporal_cue(backbone, train, clip_len=args.clip_len, size=args.size, epochs=args.epochs,
                                 seed=args.seed, test_videos=test)
    step = max(1, len(test) // args.clips)
    paths = []
    for i in list(range(0, len(test), step))[: args.clips]:
        paths += render_temporal_cam(backbone, head, test[i], args.out, ids[i].replace("/", "__"),
                                     clip_len=args.clip_len, size=args.size)
    report = {"weights": args.weights, "weights_id": backbone.spec.weights_id, **acc, "pngs": [str(p) for p in paths]}
    Path(args.out, "cam.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"temporal cue: train acc {acc['train_acc']:.3f}, test acc {acc['test_acc']:.3f} "
          f"({len(test)} clips + reversed); wrote {len(paths)} PNGs to {args.out}")
    return 0


def run_ssl_config(args: argparse.Namespace) -> int:
    """``featbank run CONFIG.yaml`` for ``recipe: ssl``."""
    from featbank.experiments.recipes.ssl import load_ssl_config, run_ssl

    cfg = load_ssl_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    res = run_ssl(cfg, out, progress=True)
    last = res["history"][-1] if res.get("history") else {}
    print(f"{cfg.mode}: {res.get('videos')} videos, final loss {last.get('loss', float('nan')):.3f}; wrote {out}")
    return 0


def demo_ssl(args: argparse.Namespace) -> int:
    """``featbank demo --recipe ssl``."""
    import dataclasses

    from featbank.experiments.config import from_dict
    from featbank.experiments.recipes.ssl_demo import SSLDemoConfig, run_ssl_demo

    base = dataclasses.asdict(SSLDemoConfig())
    base.update(seed=args.seed, threads=args.threads)
    cfg = from_dict(SSLDemoConfig, base, list(args.overrides))
    run_ssl_demo(args.out, cfg, progress=not args.no_progress)
    return 0
