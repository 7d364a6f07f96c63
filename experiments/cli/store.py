"""``featbank store ...`` commands: info, validate, import, export, compact, explain.

Heavy imports (zarr, h5py, torch) stay inside the command functions so that
``featbank --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import math
import contextlib
import sys
from pathlib import Path
from typing import Any, Iterator

_FMT = argparse.RawDescriptionHelpFormatter


def _open(path: str, mode: str, salvage: bool = False):
    """Open a store; a missing one is named with the commands that create one."""
    from featbank.store import NotAStoreError, open_store

    try:
        return open_store(path, mode=mode, salvage=salvage)
    except NotAStoreError as e:
        if "no featbank store at" in str(e):
            raise NotAStoreError(
                f"{path}: no such store (create one with `featbank extract ... --store {path}` or "
                f"`featbank store import npy|hdf5 SRC {path} --set NAME`)"
            ) from None
        raise


def _report_salvage(store: Any, names: list[str] | None = None) -> None:
    """Open every set (salvaging) and print on stderr what the reading left out."""
    import sys

    for name in names if names is not None else store.feature_sets():
        store.open_set(name, allow_stale=True).video_ids()
    lost = store.salvage_report()
    print(f"salvage: only what is provably intact is read; {len(lost)} finding(s)" + (":" if lost else ""),
          file=sys.stderr)
    for line in lost:
        print(f"  - {line}", file=sys.stderr)


# ---- info ---------------------------------------------------------------------------
def cmd_info(args: argparse.Namespace) -> int:
    from featbank.store.info import format_report, store_report

    with _open(args.path, "r", salvage=args.salvage) as store:
        if args.salvage:
            _report_salvage(store)
        report = store_report(store)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(format_report(report))
    return 0


# ---- validate -----------------------------------------------------------------------
def cmd_validate(args: argparse.Namespace) -> int:
    with _open(args.path, "r") as store:
        problems, notes = store.check(quick=args.quick)
        sets = store.feature_sets()
        n_videos = 0
        if not problems:
            n_videos = sum(len(store.open_set(s, allow_stale=True)) for s in sets)
    what = "metadata" if args.quick else "metadata and values"
    for note in notes:
        print(f"note: {note}")
    if problems:
        print(f"{args.path}: {len(problems)} problem(s):")
        for p in problems:
            print(f"  - {p}")
        ok = True
        try:
            with _open(args.path, "r", salvage=True) as store:
                _report_salvage(store)
        except Exception as e:  # damage salvage cannot read past (e.g. a set's attributes)
            ok = False
            print(f"salvage: cannot read past it ({e})", file=sys.stderr)
        if ok:
            print(f"read what is intact with: featbank store export npy {args.path} --set NAME OUT --salvage")
        return 1
    print(f"{args.path}: sound ({len(sets)} feature set(s), {n_videos} video(s), {what} checked)")
    return 0


# ---- import / export ----------------------------------------------------------------
def _read_labels(path: str | None) -> dict[str, Any] | None:
    """``{video_id: label(s)}`` from a JSON object or a text file of ``VIDEO_ID LABEL[,LABEL...]`` lines."""
    if path is None:
        return None
    from featbank.store.errors import ImportFormatError

    text = Path(path).read_text()
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ImportFormatError(f"{path}: invalid JSON ({e})") from e
        if not isinstance(data, dict):
            raise ImportFormatError(f"{path}: expected a JSON object {{video_id: label}}")
        return data
    labels: dict[str, Any] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        try:
            labels[parts[0]] = [int(x) for x in parts[1].split(",")]
        except (IndexError, ValueError) as e:
            raise ImportFormatError(f"{path}:{lineno}: expected 'VIDEO_ID LABEL[,LABEL...]', got {line!r}") from e
    return labels


def cmd_import(args: argparse.Namespace) -> int:
    from featbank.store.errors import ImportFormatError
    from featbank.store.interop import import_hdf5, import_npy

    src = Path(args.src)
    if args.format == "npy" and not src.is_dir():
        raise ImportFormatError(f"npy source {src} is not a folder" + ("" if src.exists() else " (it does not exist)"))
    if args.format == "hdf5" and not src.is_file():
        raise ImportFormatError(f"HDF5 source {src} is not a file" + ("" if src.exists() else " (it does not exist)"))
    dim = args.dim_check
    kwargs = dict(
        expect_dim=dim if isinstance(dim, int) and not isinstance(dim, bool) else None,
        require_existing=dim is True,
        allow_nonfinite=args.allow_nonfinite,
        overwrite=args.overwrite,
        allow_stale=args.allow_stale,
        row_seconds=args.row_seconds,
        dtype=args.dtype,
        level=args.level,
        labels=_read_labels(args.labels),
        split=args.split,
        domain=args.domain,
        fps=args.fps,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    if args.format == "hdf5":
        importer, kwargs["key"] = import_hdf5, args.key
    else:
        if args.key is not None:
            from featbank.store.errors import ImportFormatError

            raise ImportFormatError("--key applies to hdf5 sources only (an npy folder has one array per file)")
        importer = import_npy
    with _new_store_removed_on_failure(args.path):
        with _open(args.path, "a") as store:
            rep = importer(store, args.src, args.set, **kwargs)
    how = "with featbank provenance (exact)" if rep.exact else "as plain arrays (timestamps from row index)"
    print(
        f"imported {args.src} into {args.path} set {rep.set_name!r} {how}: {rep.written} video(s) written, "
        f"{rep.unchanged} unchanged, {rep.n_rows} rows of {tuple(rep.row_shape)} {rep.dtype}"
    )
    return 0


@contextlib.contextmanager
def _new_store_removed_on_failure(path: str) -> Iterator[None]:
    """A command that fails leaves nothing new: a store it created is removed again."""
    import shutil

    local = "://" not in path or path.startswith("file://")
    folder = Path(path[len("file://"):] if path.startswith("file://") else path)
    fresh = local and (not folder.exists() or (folder.is_dir() and not any(folder.iterdir())))
    existed = folder.exists()
    try:
        yield
    except BaseException:
        if fresh and folder.is_dir():
            shutil.rmtree(folder)
            if existed:
                folder.mkdir()
        raise


def cmd_export(args: argparse.Namespace) -> int:
    from featbank.store.interop import export_hdf5, export_npy

    exporter = export_npy if args.format == "npy" else export_hdf5
    with _open(args.path, "r", salvage=args.salvage) as store:
        if args.salvage:
            _report_salvage(store, [args.set])
        fs = store.open_set(args.set, allow_stale=args.allow_stale)
        rep = exporter(fs, args.out, overwrite=args.overwrite)
    print(f"exported set {args.set!r} of {args.path} to {rep.path}: {rep.n_videos} video(s), {rep.n_rows} rows")
    return 0


# ---- compact ------------------------------------------------------------------------
def cmd_compact(args: argparse.Namespace) -> int:
    from featbank.store.info import disk_usage

    _open(args.path, "r").close()  # a missing or foreign path is an error, not a new store
    before = disk_usage(args.path)
    with _open(args.path, "a") as store:
        store.compact()
    after = disk_usage(args.path)
    if before and after:
        print(f"compacted {args.path}: {before[1]} -> {after[1]} files, {_human(before[0])} -> {_human(after[0])} "
              "on disk (allocated blocks)")
    else:
        print(f"compacted {args.path}")
    return 0


def _human(n: int) -> str:
    from featbank.store.info import human_bytes

    return human_bytes(n)


# ---- explain ------------------------------------------------------------------------
def cmd_explain(args: argparse.Namespace) -> int:
    from featbank.store.info import explain_row, format_explain

    with _open(args.store, "r") as store:
        fs = store.open_set(args.set, allow_stale=True)
        e = explain_row(fs, args.video, args.row)
        e["stale"] = store.is_stale(args.set)
    if args.json:
        print(json.dumps(e, indent=2))
    else:
        print(format_explain(e) + ("\n  note      : this set is STALE (its weights are no longer current)" if e["stale"] else ""))
    return 0


# ---- registration -------------------------------------------------------------------
def _dim_check(value: str) -> int:
    try:
        d = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--dim-check takes a feature dimension (an int), got {value!r}") from None
    if d <= 0:
        raise argparse.ArgumentTypeError(f"--dim-check dimension must be positive, got {d}")
    return d


def register(sub: Any, groups: dict[str, Any]) -> None:
    """Add ``info``, ``validate``, ``import``, ``export``, ``compact``, ``explain`` to ``featbank store``."""
    g = groups["store"]

    p = g.add_parser(
        "info",
        help="feature sets, counts, dims, dtype, bytes on disk, provenance, stale flags, failure log",
        description="Summarise a feature store: every feature set with its video and row counts, row shape, "
        "dtype, bytes, provenance (backbone, weights id, spec, sampling) and stale flag, plus the failure log.",
        epilog="example:\n  featbank store info feats.zarr\n  featbank store info feats.zarr --json | jq '.feature_sets[].n_rows'",
        formatter_class=_FMT,
    )
    p.add_argument("path", metavar="PATH", help="store folder or fsspec URL")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--salvage", action="store_true", help="damaged store: report what is provably intact and say "
                   "on stderr what was left out")
    p.set_defaults(func=cmd_info)

    p = g.add_parser(
        "validate",
        help="check every committed video; exit 0 when sound, 1 with a report of each problem",
        description="Check every feature set: commit logs (a damaged line that is not the torn last line of a "
        "killed writer), the compacted index and its pointer, set attributes and every chunk file under a "
        "committed row; then every video's rows against the checksum recorded at commit, shapes, finite values "
        "and times. Exit code 0 when the store is sound, 1 with one line per problem (and what a --salvage "
        "reading would leave out) otherwise. Stores written before checksums get a note instead.",
        epilog="examples:\n  featbank store validate feats.zarr && echo sound\n"
        "  featbank store validate feats.zarr --quick      # metadata, logs and chunk files only (seconds)",
        formatter_class=_FMT,
    )
    p.add_argument("path", metavar="PATH", help="store folder or fsspec URL")
    p.add_argument("--quick", action="store_true", help="check the metadata only (logs, index, attributes, chunk "
                   "files present); no values are read")
    p.set_defaults(func=cmd_validate)

    p = g.add_parser(
        "import",
        help="import an npy folder or an HDF5 file into a feature set",
        description="Import VIDEO_ID.npy files (a folder, ids with '/' from subfolders) or an HDF5 file (one "
        "dataset per video) into feature set NAME of the store at PATH (created when missing). Files written "
        "by 'featbank store export' restore provenance, metadata and timestamps exactly; plain files get "
        "timestamps from the row index (--row-seconds per row). Everything is checked before anything is "
        "written: mixed dims, non-numeric or non-finite data fail with the files named, and nothing is committed.",
        epilog="examples:\n"
        "  featbank store import npy video_features_out/ feats.zarr --set i3d/rgb --row-seconds 0.64 --labels labels.txt\n"
        "  featbank store import hdf5 feats.h5 feats.zarr --set i3d/rgb --dim-check      # append to an existing set\n"
        "  featbank store import npy feats_npy/ feats.zarr --set c3d --dim-check 4096   # require dim 4096",
        formatter_class=_FMT,
    )
    p.add_argument("format", choices=("npy", "hdf5"), help="source format")
    p.add_argument("src", metavar="SRC", help="npy folder or HDF5 file")
    p.add_argument("path", metavar="PATH", help="target store (created when missing)")
    p.add_argument("--set", required=True, metavar="NAME", help="target feature set")
    p.add_argument(
        "--dim-check", nargs="?", const=True, default=None, type=_dim_check, metavar="D",
        help="without D: the set must already exist and every file must have its row shape; with D: every "
        "file's feature dim must be D (checked before writing)",
    )
    p.add_argument("--allow-nonfinite", action="store_true", help="accept NaN/Inf rows (rejected by default)")
    p.add_argument("--overwrite", action="store_true", help="replace committed videos whose content differs")
    p.add_argument("--allow-stale", action="store_true", help="write into a stale existing set")
    p.add_argument("--row-seconds", type=float, default=1.0, help="plain inputs: seconds per row (default 1.0: time in rows)")
    p.add_argument("--dtype", choices=("float16", "float32", "bfloat16"), help="plain inputs, new set: storage dtype "
                   "(default float16 if every file is float16, else float32)")
    p.add_argument("--level", choices=("clip", "frame"), default="clip", help="plain inputs, new set: row level")
    p.add_argument("--labels", metavar="FILE", help="plain inputs: JSON {video_id: label} or lines 'VIDEO_ID LABEL[,LABEL]'")
    p.add_argument("--split", default="", help="plain inputs: split of every video")
    p.add_argument("--domain", default="", help="plain inputs: domain of every video")
    p.add_argument("--fps", type=float, default=math.nan, help="plain inputs: source fps of every video")
    p.add_argument("--key", metavar="DATASET", help="plain hdf5: read /VIDEO_ID/DATASET only, the group being the video "
                   "(e.g. c3d_features for the ActivityNet release)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (shown only when stderr is a terminal)")
    p.set_defaults(func=cmd_import)

    p = g.add_parser(
        "export",
        help="export a feature set to an npy folder or an HDF5 file (exact round trip)",
        description="Export feature set NAME to OUT: an npy folder (VIDEO_ID.npy per video plus _featbank.json "
        "with provenance, metadata and timestamps) or an HDF5 file (one dataset per video, metadata as "
        "attributes, timestamps under /_featbank). Importing the result gives back equal values and attributes.",
        epilog="examples:\n  featbank store export npy feats.zarr --set i3d/rgb feats_npy/\n"
        "  featbank store export hdf5 feats.zarr --set i3d/rgb feats.h5\n"
        "  featbank store export npy damaged.zarr --set i3d/rgb rescued_npy/ --salvage",
        formatter_class=_FMT,
    )
    p.add_argument("format", choices=("npy", "hdf5"), help="target format")
    p.add_argument("path", metavar="PATH", help="source store")
    p.add_argument("--set", required=True, metavar="NAME", help="feature set to export")
    p.add_argument("out", metavar="OUT", help="npy folder or .h5 file to create")
    p.add_argument("--overwrite", action="store_true", help="replace OUT when it holds an earlier featbank export "
                   "(never a store, never other files)")
    p.add_argument("--allow-stale", action="store_true", help="export a stale set")
    p.add_argument("--salvage", action="store_true", help="damaged store: export the videos that are provably intact "
                   "and say on stderr what was left out")
    p.set_defaults(func=cmd_export)

    p = g.add_parser(
        "compact",
        help="consolidate written segments into the read-optimised layout (values unchanged)",
        description="Consolidate the segments written by (possibly concurrent) writers into the read-optimised "
        "layout. No value changes; run it after an extraction job, with no writer active.",
        epilog="example:\n  featbank store compact feats.zarr && featbank store validate feats.zarr",
        formatter_class=_FMT,
    )
    p.add_argument("path", metavar="PATH", help="store folder or fsspec URL")
    p.set_defaults(func=cmd_compact)

    p = g.add_parser(
        "explain",
        help="the time span and source frames behind one row, plus the set's sampling provenance",
        description="Show where row ROW of video VIDEO comes from: its start/end time in seconds, the first and "
        "last source-frame index, the video's fps and source, and the set's backbone spec and sampling.",
        epilog="example:\n  featbank store explain feats.zarr --set i3d/rgb v_ApplyEyeMakeup_g01_c01 3",
        formatter_class=_FMT,
    )
    p.add_argument("store", metavar="PATH", help="store folder or fsspec URL")
    p.add_argument("--set", required=True, metavar="NAME", help="feature set")
    p.add_argument("video", metavar="VIDEO", help="video id")
    p.add_argument("row", metavar="ROW", type=int, help="row index within the video (negative: from the end)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_explain)

