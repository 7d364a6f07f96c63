"""Summary reports of a feature store (``featbank store info``), as pure functions.

``store_report(store)`` returns a JSON-serialisable dict; ``format_report(report)``
renders it as text. Both work on any ``FeatureStore`` backend.

Example:
    >>> from featbank.store import open_store  # doctest: +SKIP
    >>> from featbank.store.info import store_report
    >>> with open_store("feats.zarr") as store:  # doctest: +SKIP
    ...     print(store_report(store)["feature_sets"][0]["n_rows"])
"""

from __future__ import annotations

import collections
import json
import math
import os
from typing import Any

import numpy as np

from .base import FeatureSet, FeatureStore
from .errors import StoreError
from .schema import VideoRows

_ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4}


def disk_usage(path: str) -> tuple[int, int] | None:
    """``(bytes, files)`` under a store path (local folder or fsspec URL); None when not a folder.

    Local folders count allocated blocks: shard files are laid out sparse and filled in
    place, so their apparent size overstates what they take on disk. URLs report sizes.
    """
    import fsspec

    local = path[len("file://"):] if path.startswith("file://") else path
    if "://" not in local:
        if not os.path.isdir(local):
            return None
        total = count = 0
        for dirpath, _, fnames in os.walk(local):
            for f in fnames:
                try:
                    total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
                except OSError:
                    continue
                count += 1
        return total, count
    try:
        fs, root = fsspec.core.url_to_fs(path)
        if not fs.isdir(root):
            return None
        sizes = fs.du(root, total=False)
    except (OSError, ValueError):
        return None
    files = [s for p, s in sizes.items() if not fs.isdir(p)]
    return int(sum(files)), len(files)


def _json_float(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def set_report(store: FeatureStore, name: str) -> dict[str, Any]:
    """Summary of one feature set: counts, layout, bytes, staleness, provenance, failures.

    ``bytes`` is the size of the values (rows x row size x itemsize); ``bytes_on_disk``
    and ``files`` measure the set's group folder (``PATH/NAME``, a Zarr v3 group) and
    are None when the store is not a folder (e.g. ``MemoryStore``).
    """
    fs = store.open_set(name, allow_stale=True)
    info = fs.info
    table = fs.metadata()
    n_rows = table["n_rows"].astype(np.int64)
    current = store.backbone_weights().get(info.backbone) if info.backbone else None
    provenance = info.to_dict()
    for key in ("name", "row_shape", "dtype", "level"):
        provenance.pop(key)
    usage = disk_usage(f"{str(store.path).rstrip('/')}/{name}")
    return {
        "name": name,
        "n_videos": int(len(n_rows)),
        "n_rows": int(n_rows.sum()),
        "rows_per_video": {
            "min": int(n_rows.min()) if len(n_rows) else 0,
            "mean": float(n_rows.mean()) if len(n_rows) else 0.0,
            "max": int(n_rows.max()) if len(n_rows) else 0,
        },
        "row_shape": list(info.row_shape),
        "dim": info.dim,
        "dtype": info.dtype,
        "level": info.level,
        "bytes": int(n_rows.sum()) * int(np.prod(info.row_shape)) * _ITEMSIZE[info.dtype],
        "bytes_on_disk": usage[0] if usage else None,
        "files": usage[1] if usage else None,
        "stale": bool(current is not None and current != info.weights_id),
        "current_weights_id": current,
        "splits": dict(collections.Counter(str(s) for s in table["split"])),
        "domains": dict(collections.Counter(str(d) for d in table["domain"])),
        "n_labels": int(len({int(x) for x in table["label"] if x >= 0})),
        "provenance": provenance,
        "n_failures": len(store.failures(name)),
    }


def store_report(store: FeatureStore, *, with_failures: bool = True) -> dict[str, Any]:
    """Summary of a whole store (what ``featbank store info --json`` prints).

    Args:
        store: an open store.
        with_failures: include the failure log records (latest per video).

    Returns:
        dict with ``path``, ``backend``, ``bytes_on_disk`` and ``files`` (None when the
        store is not a folder), ``backbone_weights``, ``feature_sets`` (one
        ``set_report`` each), ``n_failures`` and ``failures``.
    """
    usage = disk_usage(str(store.path))
    failures = store.failures()
    report: dict[str, Any] = {
        "path": str(store.path),
        "backend": type(store).__name__,
        "bytes_on_disk": usage[0] if usage else None,
        "files": usage[1] if usage else None,
        "backbone_weights": dict(store.backbone_weights()),
        "feature_sets": [set_report(store, name) for name in store.feature_sets()],
        "n_failures": len(failures),
    }
    if with_failures:
        report["failures"] = failures
    return report


def human_bytes(n: int | None) -> str:
    """``1536`` -> ``"1.5 KiB"``; None -> ``"n/a"``."""
    return _human_bytes(n)


def _human_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _when(t: Any) -> str:
    """A failure-log time (epoch seconds or ISO string) as ISO-8601 UTC."""
    import datetime as dt

    if isinstance(t, (int, float)):
        return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")
    return str(t)


def _short(weights_id: str | None) -> str:
    return "-" if not weights_id else (weights_id[:12] + "..." if len(weights_id) > 15 else weights_id)


def format_report(report: dict[str, Any]) -> str:
    """Human-readable text of a ``store_report``."""
    lines = [
        f"store {report['path']} ({report['backend']})",
        f"  on disk: {_human_bytes(report['bytes_on_disk'])} in {report['files'] if report['files'] is not None else 'n/a'} files",
    ]
    if report["backbone_weights"]:
        lines.append("  current backbone weights:")
        lines += [f"    {b}: {_short(w)}" for b, w in sorted(report["backbone_weights"].items())]
    lines.append(f"  feature sets: {len(report['feature_sets'])}")
    for s in report["feature_sets"]:
        p = s["provenance"]
        rpv = s["rows_per_video"]
        lines += [
            f"  - {s['name']}{'  [STALE: weights ' + _short(p['weights_id']) + ' != current ' + _short(s['current_weights_id']) + ']' if s['stale'] else ''}",
            f"      videos {s['n_videos']}, rows {s['n_rows']} (per video min {rpv['min']} / mean {rpv['mean']:.1f} / max {rpv['max']})",
            f"      rows {tuple(s['row_shape'])} {s['dtype']}, {s['level']} level, {_human_bytes(s['bytes'])} of values, "
            f"{_human_bytes(s['bytes_on_disk'])} on disk in {s['files'] if s['files'] is not None else 'n/a'} files",
            f"      backbone {p['backbone'] or '-'} endpoint {p['endpoint'] or '-'} weights {_short(p['weights_id'])}",
            f"      created {p['created']} by featbank {p['featbank_version']}",
        ]
        if p.get("spec"):
            lines += format_mapping({"spec": p["spec"]}, 6)
        if p.get("sampling"):
            lines += format_mapping({"sampling": p["sampling"]}, 6)
        if s["splits"] and set(s["splits"]) != {""}:
            lines.append("      splits: " + ", ".join(f"{k or '-'}={v}" for k, v in sorted(s["splits"].items())))
        if s["domains"] and set(s["domains"]) != {""}:
            lines.append("      domains: " + ", ".join(f"{k or '-'}={v}" for k, v in sorted(s["domains"].items())))
        if s["n_failures"]:
            lines.append(f"      failures: {s['n_failures']}")
    lines.append(f"  failure log: {report['n_failures']} video(s)")
    for f in report.get("failures", []):
        lines.append(f"    {f['set']} / {f['video_id']}: {f['kind']}: {f['message']} ({_when(f['time'])})")
    return "\n".join(lines)


def format_mapping(d: dict[str, Any], indent: int = 0, width: int = 100) -> list[str]:
    """A nested mapping as indented ``key: value`` lines (YAML-like), one per key.

    A nested mapping gets its own indented block; a value whose text would run past
    ``width`` columns is cut with ``...`` (``--json`` prints everything).
    """
    lines = []
    pad = " " * indent
    for k, v in d.items():
        if isinstance(v, dict) and v:
            lines.append(f"{pad}{k}:")
            lines += format_mapping(v, indent + 2, width)
            continue
        text = json.dumps(v, default=str) if isinstance(v, (list, tuple, dict)) else str(v)
        line = f"{pad}{k}: {text}"
        lines.append(line if len(line) <= width else line[: width - 3] + "...")
    return lines


def explain_row(fs: FeatureSet, video_id: str, row: int) -> dict[str, Any]:
    """Where one row comes from: its time span, source frames, the video and the set's sampling.

    Args:
        fs: the feature set.
        video_id: a committed video.
        row: row index within the video (negative counts from the end).

    Returns:
        JSON-serialisable dict: ``set``, ``video_id``, ``row``, ``n_rows``, ``start``,
        ``end``, ``duration`` (seconds), ``frames`` (``[first, last]`` source frame
        index or None when unknown), ``frames_time`` (the frames' span in seconds at
        the video's fps, or None), ``video`` (metadata), ``sampling``, ``spec`` and the
        producing ``backbone`` / ``endpoint`` / ``weights_id``.

    Raises:
        StoreError: ``row`` is outside the video.
        UnknownVideoError: the video is not committed.
    """

    n = fs.n_rows(video_id)
    r = row + n if row < 0 else row
    if not 0 <= r < n:
        raise StoreError(f"video {video_id!r} of feature set {fs.name!r} has {n} rows; row {row} is out of range")
    rows: VideoRows = fs.read(video_id, rows=slice(r, r + 1))
    meta = fs.meta(video_id)
    first, last = (int(x) for x in rows.frame_idx[0])
    known = first >= 0 and last >= 0
    frames_time = None
    if known and not math.isnan(meta.fps) and meta.fps > 0:
        frames_time = [first / meta.fps, (last + 1) / meta.fps]
    info = fs.info
    return {
        "set": fs.name,
        "video_id": video_id,
        "row": r,
        "n_rows": n,
        "level": info.level,
        "start": float(rows.starts[0]),
        "end": float(rows.ends[0]),
        "duration": float(rows.ends[0] - rows.starts[0]),
        "frames": [first, last] if known else None,
        "frames_time": frames_time,
        "video": {
            "source": meta.source,
            "labels": list(meta.labels),
            "split": meta.split,
            "domain": meta.domain,
            "fps": _json_float(meta.fps),
            "n_frames": meta.n_frames,
            "duration": _json_float(meta.duration),
        },
        "backbone": info.backbone,
        "endpoint": info.endpoint,
        "weights_id": info.weights_id,
        "spec": dict(info.spec),
        "sampling": dict(info.sampling),
    }


def format_explain(e: dict[str, Any]) -> str:
    """Human-readable text of ``explain_row``."""
    v = e["video"]
    lines = [
        f"{e['set']} / {e['video_id']}  row {e['row']} of {e['n_rows']} ({e['level']} level)",
        f"  time span : {e['start']:.3f} s .. {e['end']:.3f} s  ({e['duration']:.3f} s)",
    ]
    if e["frames"] is not None:
        f0, f1 = e["frames"]
        span = f" = {e['frames_time'][0]:.3f} s .. {e['frames_time'][1]:.3f} s at {v['fps']:g} fps" if e["frames_time"] else ""
        lines.append(f"  frames    : {f0} .. {f1} of the source ({f1 - f0 + 1} frames{span})")
    else:
        lines.append("  frames    : unknown (not recorded for this set)")
    fps = f"{v['fps']:g} fps" if v["fps"] is not None else "fps unknown"
    dur = f"{v['duration']:.2f} s" if v["duration"] is not None else "duration unknown"
    lines.append(f"  video     : {v['source'] or '-'} ({fps}, {v['n_frames']} frames, {dur}), labels {v['labels']}")
    lines.append(f"  backbone  : {e['backbone'] or '-'} endpoint {e['endpoint'] or '-'} weights {_short(e['weights_id'])}")
    if e["spec"]:
        keys = ("clip_len", "frame_stride", "target_fps", "resize", "crop")
        lines.append("  spec      : " + ", ".join(f"{k}={e['spec'][k]}" for k in keys if k in e["spec"]))
    if e["sampling"]:
        lines += format_mapping({"sampling": e["sampling"]}, 2)
    return "\n".join(lines)
