"""Temporal annotation readers and per-time-step targets on a store's row grid.

Three formats people have:

* **Charades CSV** (``Charades_v1_train.csv`` / ``_test.csv``): a header with at least ``id``,
  ``actions`` and ``length``; ``actions`` is ``c092 11.90 21.20;c147 0.00 12.60`` (class code
  ``cNNN``, start and end seconds), empty for a video without actions; ``length`` is the
  video's length in seconds.
* **MultiTHUMOS-style segment lists**: whitespace-separated lines ``video start end class``
  (``class`` an index or a name resolved with a class list).
* **plain segments CSV**: header ``video_id,start,end,label`` (``label`` index or name).

Every reader returns ``{video_id: VideoAnnotation}``; :func:`targets_for` puts them on the
row time grid of a ``RowSet`` / ``PaddedSequences`` with
``featbank.store.dataset.step_targets`` (a row is positive when its centre lies in a segment).
Bad input raises ``ConfigError`` naming the file, the line and the culprit.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from featbank.experiments.config import ConfigError

CHARADES_CLASSES = 157
_CODE = re.compile(r"^c(\d+)$")


@dataclass(frozen=True)
class VideoAnnotation:
    """The segments of one video.

    Attributes:
        video_id: the id.
        length: video length in seconds (``None`` when the format has none: then the last end).
        segments: ``(start_s, end_s, class_index)`` tuples.
        extra: other CSV columns (Charades ``subject``, ``scene``, ...), as strings.
    """

    video_id: str
    length: float | None
    segments: tuple[tuple[float, float, int], ...]
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def classes(self) -> tuple[int, ...]:
        """Sorted distinct classes of the video (its video-level labels)."""
        return tuple(sorted({c for _, _, c in self.segments}))

    @property
    def duration(self) -> float:
        """``length``, or the last segment end when the length is unknown."""
        if self.length is not None:
            return float(self.length)
        return max((e for _, e, _ in self.segments), default=0.0)


def parse_charades_actions(text: str, *, where: str = "actions") -> tuple[tuple[float, float, int], ...]:
    """``"c092 11.90 21.20;c147 0.00 12.60"`` -> ``((11.9, 21.2, 92), (0.0, 12.6, 147))`` (empty -> ``()``)."""
    text = (text or "").strip()
    if not text:
        return ()
    out = []
    for item in text.split(";"):
        parts = item.split()
        if len(parts) != 3 or not _CODE.match(parts[0]):
            raise ConfigError(f"{where}: action {item.strip()!r} is not `cNNN start end`")
        try:
            s, e = float(parts[1]), float(parts[2])
        except ValueError:
            raise ConfigError(f"{where}: action {item.strip()!r} has a non-numeric time") from None
        if e < s:
            raise ConfigError(f"{where}: action {item.strip()!r} ends before it starts")
        out.append((s, e, int(_CODE.match(parts[0]).group(1))))
    return tuple(out)


def format_charades_actions(segments: Sequence[tuple[float, float, int]]) -> str:
    return ";".join(f"c{int(c):03d} {s:.2f} {e:.2f}" for s, e, c in segments)


def read_charades_csv(path: str | Path, *, num_classes: int = CHARADES_CLASSES) -> dict[str, VideoAnnotation]:
    """Read a Charades CSV (``id``, ``actions``, ``length`` columns; others kept in ``extra``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"annotation file {path} does not exist")
    out: dict[str, VideoAnnotation] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"id", "actions", "length"} - set(reader.fieldnames or ())
        if missing:
            raise ConfigError(f"{path}: not a Charades CSV, missing column(s) {sorted(missing)} "
                              f"(columns: {reader.fieldnames})")
        for ln, row in enumerate(reader, start=2):
            where = f"{path}:{ln}"
            vid = (row["id"] or "").strip()
            if not vid:
                raise ConfigError(f"{where}: empty id")
            try:
                length = float(row["length"])
            except (TypeError, ValueError):
                raise ConfigError(f"{where}: length {row['length']!r} is not a number") from None
            segs = parse_charades_actions(row["actions"], where=where)
            bad = [c for _, _, c in segs if not 0 <= c < num_classes]
            if bad:
                raise ConfigError(f"{where}: class c{bad[0]:03d} outside the {num_classes} classes")
            if vid in out:
                raise ConfigError(f"{where}: video {vid!r} listed twice")
            extra = {k: v for k, v in row.items() if k not in ("id", "actions", "length") and k is not None}
            out[vid] = VideoAnnotation(vid, length, segs, extra)
    return out


def write_charades_csv(path: str | Path, annotations: Mapping[str, VideoAnnotation]) -> Path:
    """Write ``id,actions,length`` (plus the ``extra`` columns of the first video) in the Charades layout."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra_cols = list(next(iter(annotations.values())).extra) if annotations else []
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", *extra_cols, "actions", "length"])
        for vid, a in annotations.items():
            w.writerow([vid, *(a.extra.get(k, "") for k in extra_cols), format_charades_actions(a.segments),
                        f"{a.duration:.2f}"])
    return path


def _class_index(token: str, classes: Sequence[str] | None, where: str) -> int:
    if classes is not None and token in classes:
        return list(classes).index(token)
    try:
        return int(token)
    except ValueError:
        known = f"; known names: {list(classes)[:8]}..." if classes else " (pass the class list to map names)"
        raise ConfigError(f"{where}: class {token!r} is neither an index nor a known class name{known}") from None


def _group(rows: list[tuple[str, float, float, int]], lengths: Mapping[str, float] | None) -> dict[str, VideoAnnotation]:
    by: dict[str, list[tuple[float, float, int]]] = {}
    for vid, s, e, c in rows:
        by.setdefault(vid, []).append((s, e, c))
    return {v: VideoAnnotation(v, (lengths or {}).get(v), tuple(sorted(segs))) for v, segs in by.items()}


def read_segment_list(path: str | Path, *, classes: Sequence[str] | None = None,
                      lengths: Mapping[str, float] | None = None) -> dict[str, VideoAnnotation]:
    """MultiTHUMOS-style ``video start end class`` lines (``#`` comments and blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"annotation file {path} does not exist")
    rows = []
    for ln, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        where = f"{path}:{ln}"
        if len(parts) != 4:
            raise ConfigError(f"{where}: expected `video start end class`, got {line.strip()!r}")
        try:
            s, e = float(parts[1]), float(parts[2])
        except ValueError:
            raise ConfigError(f"{where}: start/end {parts[1]!r} {parts[2]!r} are not numbers") from None
        if e < s:
            raise ConfigError(f"{where}: segment ends ({e}) before it starts ({s})")
        rows.append((parts[0], s, e, _class_index(parts[3], classes, where)))
    return _group(rows, lengths)


def read_segments_csv(path: str | Path, *, classes: Sequence[str] | None = None,
                      lengths: Mapping[str, float] | None = None) -> dict[str, VideoAnnotation]:
    """Plain CSV with header ``video_id,start,end,label``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"annotation file {path} does not exist")
    rows = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"video_id", "start", "end", "label"} - set(reader.fieldnames or ())
        if missing:
            raise ConfigError(f"{path}: missing column(s) {sorted(missing)} (columns: {reader.fieldnames})")
        for ln, row in enumerate(reader, start=2):
            where = f"{path}:{ln}"
            try:
                s, e = float(row["start"]), float(row["end"])
            except (TypeError, ValueError):
                raise ConfigError(f"{where}: start/end are not numbers") from None
            if e < s:
                raise ConfigError(f"{where}: segment ends ({e}) before it starts ({s})")
            rows.append((row["video_id"], s, e, _class_index(row["label"].strip(), classes, where)))
    return _group(rows, lengths)


def read_annotations(path: str | Path, *, fmt: str = "auto", classes: Sequence[str] | None = None,
                     num_classes: int = CHARADES_CLASSES) -> dict[str, VideoAnnotation]:
    """Read any of the three formats (``auto``: a CSV with an ``actions`` column is Charades,
    a CSV with ``video_id`` is plain segments, anything else is a segment list)."""
    path = Path(path)
    if fmt == "auto":
        if not path.is_file():
            raise ConfigError(f"annotation file {path} does not exist")
        head = path.open().readline()
        cols = [c.strip() for c in head.split(",")]
        fmt = "charades" if "actions" in cols else "segments_csv" if "video_id" in cols else "segment_list"
    if fmt == "charades":
        return read_charades_csv(path, num_classes=num_classes)
    if fmt == "segments_csv":
        return read_segments_csv(path, classes=classes)
    if fmt == "segment_list":
        return read_segment_list(path, classes=classes)
    raise ConfigError(f"unknown annotation format {fmt!r}; choose auto, charades, segments_csv or segment_list")


def targets_for(starts: np.ndarray, ends: np.ndarray, video_ids: Sequence[str],
                annotations: Mapping[str, VideoAnnotation], num_classes: int, *,
                require: bool = True) -> np.ndarray:
    """Per-time-step multi-hot targets of padded sequences: ``(V, T)`` times -> ``(V, T, C)``.

    Args:
        starts: ``(V, T)`` row start seconds (NaN on padding, as ``pad_sequences`` writes).
        ends: ``(V, T)`` row end seconds.
        video_ids: the ``V`` ids.
        annotations: ``video_id -> VideoAnnotation``.
        num_classes: ``C``.
        require: raise when a video has no annotation entry (else all-zero targets).
    """
    from featbank.store.dataset import step_targets

    starts, ends = np.asarray(starts), np.asarray(ends)
    out = np.zeros((*starts.shape, num_classes), np.float32)
    for i, vid in enumerate(video_ids):
        ann = annotations.get(vid)
        if ann is None:
            if require:
                raise ConfigError(f"video {vid!r} has no annotation (annotated: {len(annotations)} videos, "
                                  f"e.g. {list(annotations)[:3]})")
            continue
        out[i] = step_targets(starts[i], ends[i], ann.segments, num_classes)
    return out
