"""``featbank classify VIDEO...``: Kinetics-400 top-5 per video (the whole-video protocol of the reference I3D outputs)."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub, groups) -> None:
    """Add the ``classify`` command."""
    p = sub.add_parser(
        "classify",
        help="Kinetics-400 top-5 of whole videos with I3D",
        description="Classify whole videos: decode all frames, resample to the backbone's fps, resize "
        "the short side, centre-crop, run the whole clip through the network and average the logits "
        "over time. A video that cannot be decoded is reported on stderr and the others go on "
        "(exit code 2 if any failed).",
        epilog="examples:\n"
        "  featbank classify ../shared/data/clips/clip_a.mp4\n"
        "  featbank classify clips/*.mp4 --json --top 3 --threads 2\n"
        "  featbank classify clip.mp4 --backbone x3d-m --weights x3d_m.pyth\n"
        "  featbank classify clip.mp4 --backbone x3d-xs --weights random   (random init: labels are meaningless)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files, frame folders or images")
    p.add_argument("--backbone", default="i3d-rgb-k400", help="registered backbone with a 400-class head")
    p.add_argument("--weights", default="default",
                   help="'default' (the backbone's published weights), 'random' or a checkpoint file")
    p.add_argument("--json", action="store_true", help='print [{"video", "top5": [{"label", "logit", "prob"}]}]')
    p.add_argument("--top", type=int, default=5, metavar="K", help="classes per video (default 5)")
    p.add_argument("--backend", default="auto", choices=("auto", "decord", "pyav", "folder", "image"),
                   help="decoder (default auto)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.set_defaults(func=run_classify)


def _table(pred) -> str:
    lines = [f"{pred.video}  ({pred.n_frames} frames)"]
    lines += [f"  {i + 1}. {s.label:<36} logit {s.logit:7.2f}  prob {s.prob:.4f}" for i, s in enumerate(pred.top)]
    return "\n".join(lines)


def run_classify(args: argparse.Namespace) -> int:
    """Classify ``args.videos``; exit code 0, or 2 when any video failed."""
    import torch

    from featbank.extract.backbones import create_backbone
    from featbank.extract.classify import check_classifier, classify_video
    from featbank.extract.errors import ExtractError

    from featbank.extract.backbones import BACKBONES, VARIANTS

    if args.backbone not in BACKBONES:
        raise ExtractError(f"unknown backbone {args.backbone!r}; valid backbones: {', '.join(BACKBONES)}")
    if args.weights == "default" and VARIANTS[args.backbone].default_weights is None:
        raise ExtractError(
            f"backbone {args.backbone!r} has no published weights here, so its labels would come from random "
            "weights; pass --weights FILE, or --weights random to classify with random weights anyway"
        )
    if args.weights.lower() in ("none", "null"):
        raise ExtractError(f"--weights {args.weights!r}: random weights are spelled 'random'")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model = create_backbone(args.backbone, weights=None if args.weights == "random" else args.weights)
    check_classifier(model)  # a wrong head fails once, before any video
    preds, failed = [], 0
    for video in args.videos:
        try:
            pred = classify_video(video, model, k=args.top, backend=args.backend)
        except ExtractError as e:
            failed += 1
            print(f"featbank classify: error: {e}", file=sys.stderr)
            continue
        preds.append(pred)
        if not args.json:
            print(_table(pred), flush=True)
    if args.json:
        print(json.dumps([p.to_dict() for p in preds], indent=1))
    if failed:
        print(f"featbank classify: {failed} of {len(args.videos)} videos failed", file=sys.stderr)
    return 2 if failed else 0
