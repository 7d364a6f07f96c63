"""CLI of the CFB recipe: ``featbank flow``, ``featbank data still2video``, and the ``run`` / ``demo`` entries.

* ``featbank flow SRC OUT [FLOW.yaml] [key=value ...]``: dense optical flow frame folders
  (``x_/y_`` or ``{u,v}/%06d.jpg``) for a video, a frame folder, or every entry of a manifest;
* ``featbank data still2video SRC OUT``: still images -> short videos with camera motion;
* ``featbank run configs/experiments/cfb_synth.yaml`` (``recipe: cfb``) and
  ``featbank demo --recipe cfb`` dispatch here through ``RECIPES`` / ``DEMOS`` in ``run.py``.

Heavy imports stay inside the functions.
"""

from __future__ import annotations

import argparse
from pathlib import Path

FLOW_JOB_KEYS = ("layout", "ext", "quality", "fps", "workers")


def register(sub, groups) -> None:
    """Add ``flow`` and ``data still2video``."""
    f = sub.add_parser("flow", help="dense optical flow (OpenCV DIS/Farneback/TV-L1) into flow frame folders",
                       description="Compute dense optical flow for a video, a frame folder or every entry of a "
                       "manifest, clipped to +-bound px and scaled to [-1, 1] (uint8, 128 = still), and write "
                       "x_%%05d.jpg/y_%%05d.jpg (layout xy) or u/%%06d.jpg, v/%%06d.jpg (layout uv) folders under "
                       "OUT/VIDEO_ID. Finished folders are skipped (resume); failures go to OUT/failures.jsonl.",
                       epilog="example: featbank flow data/target_train.txt flow/ configs/extract/flow_dis.yaml "
                       "layout=uv")
    f.add_argument("src", help="a video file, a frame folder, or a manifest (path_label, csv, mmaction, tree)")
    f.add_argument("out", help="output root (one folder per video)")
    f.add_argument("items", nargs="*", metavar="FLOW.yaml|key=value",
                   help="a flow config (configs/extract/flow_*.yaml) and key=value overrides: algorithm, bound, "
                   "dis_preset, fb_*, tvl1_*, resize, layout, ext, quality, fps, workers")
    f.add_argument("--shard", default=None, help="I/N: do every N-th entry starting at I")
    f.add_argument("--no-progress", action="store_true")
    f.add_argument("--traceback", action="store_true")
    f.set_defaults(func=cmd_flow)

    s = groups["data"].add_parser(
        "still2video", help="turn still images into short videos with a small random camera motion (CFB)",
        description="For each still (an image, a folder of images, or a `path label` manifest), write a video "
        "of --frames frames seen by a slowly moving camera: per step a rotation of --rot-deg degrees and a "
        "translation of --trans-frac of the frame side, chained; planar homography, or depth-aware with "
        "--depth-dir; holes filled by Telea inpainting; deterministic per --seed. Writes OUT/videos.txt "
        "(`path label`) and OUT/motion.jsonl.",
        epilog="example: featbank data still2video data/source.txt data/source_video --seed 0")
    s.add_argument("src", help="an image, a folder of images, or a `path label` manifest")
    s.add_argument("out", help="output folder")
    s.add_argument("--frames", type=int, default=16)
    s.add_argument("--rot-deg", type=float, nargs=2, default=(1.0, 2.0), metavar=("LO", "HI"))
    s.add_argument("--trans-frac", type=float, nargs=2, default=(0.01, 0.02), metavar=("LO", "HI"))
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--output", choices=("frames", "mp4"), default="frames")
    s.add_argument("--fps", type=int, default=8)
    s.add_argument("--size", type=int, default=0, help="resize stills to this short side first (0: keep)")
    s.add_argument("--depth-dir", default="", help="folder of depth maps STEM.png / STEM.npy (larger = farther)")
    s.add_argument("--flow", default=None, metavar="OUT_FLOW",
                   help="also write the generated videos' flow folders (DIS, layout xy) into OUT_FLOW")
    s.add_argument("--traceback", action="store_true")
    s.set_defaults(func=cmd_still2video)


def _flow_job(items: list[str]):
    """(FlowConfig, job options) from an optional YAML file plus key=value overrides."""
    import dataclasses

    import yaml

    from featbank.experiments.config import ConfigError, from_dict, parse_overrides
    from featbank.extract.flow import FLOW_LAYOUTS, FlowConfig, FlowError

    data: dict = {}
    files = [i for i in items if "=" not in i]
    if len(files) > 1:
        raise ConfigError(f"featbank flow: one config file at most, got {files}")
    if files:
        p = Path(files[0])
        if not p.is_file():
            raise ConfigError(f"flow config {p} does not exist")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"flow config {p} must hold a mapping")
    data.update(parse_overrides([i for i in items if "=" in i]))
    job = {"layout": "xy", "ext": "jpg", "quality": 95, "fps": None, "workers": 0}
    for k in FLOW_JOB_KEYS:
        if k in data:
            job[k] = data.pop(k)
    known = {f.name for f in dataclasses.fields(FlowConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown flow config key {unknown[0]} (known: {', '.join(sorted(known | set(FLOW_JOB_KEYS)))})")
    if job["layout"] not in FLOW_LAYOUTS:
        raise ConfigError(f"layout {job['layout']!r} not in {FLOW_LAYOUTS}")
    if job["ext"] not in ("jpg", "png"):
        raise ConfigError(f"ext {job['ext']!r} not in ('jpg', 'png')")
    try:
        cfg = from_dict(FlowConfig, data)
    except FlowError as e:
        raise ConfigError(str(e)) from None
    return cfg, job


def _flow_items(src: str) -> list[tuple[str, str]]:
    import os

    from featbank.experiments.config import ConfigError
    from featbank.extract.manifest import MEDIA_EXTENSIONS, read_manifest

    p = Path(src)
    if not p.exists():
        raise ConfigError(f"flow source {p} does not exist")
    if p.is_dir() and not any(c.is_dir() for c in p.iterdir()):  # a frame folder
        return [(p.name, str(p))]
    if p.is_file() and p.suffix.lower() in MEDIA_EXTENSIONS:
        return [(p.stem, str(p))]
    return [(e.video_id, e.path) for e in read_manifest(os.fspath(p))]


def cmd_flow(args: argparse.Namespace) -> int:
    import sys

    from featbank.extract.flow import extract_flow_folders
    from featbank.extract.sharding import parse_shard

    cfg, job = _flow_job(args.items)
    items = _flow_items(args.src)
    shard = parse_shard(args.shard) if args.shard else (0, 1)
    s = extract_flow_folders(items, args.out, cfg, layout=job["layout"], ext=job["ext"], quality=int(job["quality"]),
                             fps=job["fps"], workers=int(job["workers"]), shard=shard,
                             progress=not args.no_progress and sys.stderr.isatty())
    print(f"flow ({cfg.algorithm}, bound {cfg.bound:g} px, layout {job['layout']}): {len(s.done)} written, "
          f"{len(s.skipped)} already done, {len(s.failures)} failed in {s.seconds:.1f} s -> {args.out}")
    for vid, err in s.failures[:10]:
        print(f"  FAILED {vid}: {err}")
    return s.exit_code


def cmd_still2video(args: argparse.Namespace) -> int:
    import sys

    from featbank.experiments.config import ConfigError
    from featbank.experiments.data.still2video import Still2VideoConfig, generate

    try:
        cfg = Still2VideoConfig(frames=args.frames, rot_deg=tuple(args.rot_deg), trans_frac=tuple(args.trans_frac),
                                seed=args.seed, fps=args.fps, output=args.output, size=args.size,
                                depth_dir=args.depth_dir)
    except ValueError as e:
        raise ConfigError(f"still2video: {e}") from None
    paths = generate(args.src, args.out, cfg, progress=sys.stderr.isatty())
    print(f"videos  {paths['videos']}\nmotion  {paths['motion']}")
    if args.flow:
        from featbank.experiments.data.synth_i2v import read_path_label
        from featbank.extract.flow import FlowConfig, extract_flow_folders

        rows = read_path_label(paths["videos"])
        items = [(str(Path(rel).with_suffix("")), str(Path(args.out) / rel)) for rel, _ in rows]
        s = extract_flow_folders(items, args.flow, FlowConfig(), progress=sys.stderr.isatty())
        print(f"flow    {args.flow} ({len(s.done)} written, {len(s.failures)} failed)")
        return s.exit_code
    return 0


def _run_cfb(args: argparse.Namespace) -> int:
    from featbank.experiments.recipes.cfb import format_table, load_cfb_config, run_cfb

    cfg = load_cfb_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    result = run_cfb(cfg, out, progress=True)
    print(format_table(result))
    print(f"wrote {out / 'metrics.json'}")
    return 0


def _demo_cfb(args: argparse.Namespace) -> int:
    import dataclasses

    from featbank.experiments.recipes.cfb_demo import CfbDemoConfig, run_demo

    base = CfbDemoConfig()
    cfg = dataclasses.replace(base, data=dataclasses.replace(base.data, seed=args.seed), threads=args.threads,
                              overrides=tuple(args.overrides))
    run_demo(args.out, cfg, progress=not args.no_progress)
    return 0
