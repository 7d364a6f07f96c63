"""The in-memory row index (video -> segment, first row, row count, metadata) and commit records.

A commit record is one line ``JSON \\t CRC32 \\n`` appended to a writer's log after the
video's rows are written. A line whose checksum or JSON does not match (a record torn by
a killed writer) ends the log: it and anything after it are ignored.
"""

from __future__ import annotations

import json
import math
import zlib
from typing import Any, Callable, Iterable

import numpy as np

from .schema import VideoMeta

_META_FIELDS = ("source", "labels", "split", "domain", "fps", "n_frames", "duration")


def encode_record(rec: dict[str, Any]) -> bytes:
    """One commit-log line for ``rec``."""
    body = json.dumps(rec, separators=(",", ":")).encode()
    return body + b"\t" + f"{zlib.crc32(body):08x}".encode() + b"\n"


def parse_log(data: bytes) -> tuple[list[dict[str, Any]], int]:
    """Records of a commit log, and the number of bytes they span (the rest is torn)."""
    bodies, pos = [], 0
    for line in data.split(b"\n")[:-1]:  # the last piece has no newline: torn or empty
        body, _, crc = line.rpartition(b"\t")
        try:
            if int(crc, 16) != zlib.crc32(body):
                break
        except ValueError:
            break
        bodies.append(body)
        pos += len(line) + 1
    try:
        return json.loads(b"[" + b",".join(bodies) + b"]"), pos
    except ValueError:  # a checksummed line that is not JSON: parse one by one up to it
        records, pos = [], 0
        for body in bodies:
            try:
                records.append(json.loads(body))
            except ValueError:
                break
            pos = data.index(b"\n", pos) + 1
        return records, pos


def meta_record(meta: VideoMeta) -> dict[str, Any]:
    """``VideoMeta`` as the compact dict stored in commit records (video id kept apart)."""
    return {
        "source": meta.source, "labels": list(meta.labels), "split": meta.split, "domain": meta.domain,
        "fps": meta.fps, "n_frames": meta.n_frames, "duration": meta.duration,
    }


class VideoIndex:
    """Columnar index of the committed videos of one feature set, in first-commit order."""

    def __init__(self) -> None:
        self.segments: list[str] = []
        self._seg_pos: dict[str, int] = {}
        self.ids: list[str] = []
        self.pos: dict[str, int] = {}
        self.seg: list[int] = []
        self.row: list[int] = []
        self.n: list[int] = []
        self.nonfinite: list[bool] = []
        self._cols: dict[str, list[Any]] | None = {k: [] for k in _META_FIELDS}
        self._load_cols: Callable[[], dict[str, list[Any]]] | None = None
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def cols(self) -> dict[str, list[Any]]:
        """Metadata columns (``source``, ``labels``, ...), loaded on first use."""
        if self._cols is None:
            assert self._load_cols is not None
            self._cols = self._load_cols()
        return self._cols

    # ---- building -------------------------------------------------------------------
    def segment_id(self, name: str) -> int:
        i = self._seg_pos.get(name)
        if i is None:
            i = self._seg_pos[name] = len(self.segments)
            self.segments.append(name)
        return i

    def apply(self, rec: dict[str, Any]) -> None:
        """Add a committed video, or move an overwritten one to its new rows (keeping its place)."""
        self._arrays = None
        vid, m = rec["v"], rec["m"]
        cols = self.cols
        s = self.segment_id(rec["s"])
        i = self.pos.get(vid)
        if i is None:
            self.pos[vid] = len(self.ids)
            self.ids.append(vid)
            self.seg.append(s)
            self.row.append(int(rec["r"]))
            self.n.append(int(rec["n"]))
            self.nonfinite.append(bool(rec.get("nf", False)))
            for k in _META_FIELDS:
                cols[k].append(m[k])
        else:
            self.seg[i], self.row[i], self.n[i] = s, int(rec["r"]), int(rec["n"])
            self.nonfinite[i] = bool(rec.get("nf", False))
            for k in _META_FIELDS:
                cols[k][i] = m[k]

    def apply_all(self, records: Iterable[dict[str, Any]]) -> None:
        """``apply`` each record in order (a fast path for the common case: new videos)."""
        self._arrays = None
        cols = self.cols
        pos, ids, seg, row, n, nonfinite = self.pos, self.ids, self.seg, self.row, self.n, self.nonfinite
        appends = [cols[k].append for k in _META_FIELDS]
        seg_ids: dict[str, int] = {}
        for rec in records:
            vid = rec["v"]
            if vid in pos:
                self.apply(rec)
                continue
            s = seg_ids.get(rec["s"])
            if s is None:
                s = seg_ids[rec["s"]] = self.segment_id(rec["s"])
            pos[vid] = len(ids)
            ids.append(vid)
            seg.append(s)
            row.append(rec["r"])
            n.append(rec["n"])
            nonfinite.append(rec.get("nf", False))
            m = rec["m"]
            for k, app in zip(_META_FIELDS, appends):
                app(m[k])

    # ---- compacted form ---------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Columns needed to locate rows, as arrays (written by ``compact`` as ``.npz``)."""
        return {
            "ids": np.array(self.ids, dtype=str) if self.ids else np.zeros(0, "<U1"),
            "seg": np.asarray(self.seg, dtype=np.int32), "row": np.asarray(self.row, dtype=np.int64),
            "n": np.asarray(self.n, dtype=np.int64), "nonfinite": np.asarray(self.nonfinite, dtype=bool),
        }

    @classmethod
    def from_arrays(cls, segments: list[str], arrays: Any, load_cols: Callable[[], dict[str, list[Any]]]) -> "VideoIndex":
        """Inverse of ``to_arrays``; metadata columns come from ``load_cols`` when first needed."""
        idx = cls()
        idx.segments = list(segments)
        idx._seg_pos = {s: i for i, s in enumerate(idx.segments)}
        idx.ids = arrays["ids"].tolist()
        idx.seg, idx.row, idx.n = arrays["seg"].tolist(), arrays["row"].tolist(), arrays["n"].tolist()
        idx.nonfinite = arrays["nonfinite"].tolist()
        idx.pos = dict(zip(idx.ids, range(len(idx.ids))))
        idx._cols, idx._load_cols = None, load_cols
        return idx

    # ---- lookups ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def meta(self, i: int) -> VideoMeta:
        c = self.cols
        fps, dur = c["fps"][i], c["duration"][i]
        return VideoMeta(
            video_id=self.ids[i], source=c["source"][i], labels=tuple(c["labels"][i]), split=c["split"][i],
            domain=c["domain"][i], fps=math.nan if fps is None else fps, n_frames=c["n_frames"][i],
            duration=math.nan if dur is None else dur,
        )

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(seg, row, n)`` as int64 arrays (cached until the next change)."""
        if self._arrays is None:
            self._arrays = (
                np.asarray(self.seg, dtype=np.int64),
                np.asarray(self.row, dtype=np.int64),
                np.asarray(self.n, dtype=np.int64),
            )
        return self._arrays
