"""The in-memory row index (video -> segment, first row, row count, metadata) and commit records.

A commit record is one line ``JSON \\t CRC32 \\n`` appended to a writer's log after the
video's rows are written. Each writer appends whole lines, so after a crash only the last
piece of a log can be incomplete: a *torn tail* (bytes after the last newline that do not
form a record) is expected and ignored. A complete line (one ending in a newline) whose
checksum or JSON does not match is *damage*: readers refuse the log and ``validate`` names
the line (``scan_log``). A record carries the checksums of its video's rows (``"c"``:
crc32c of the stored feature bytes, crc32c of the per-row ``start, end, first, last``
words), so damage to the rows is found too.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import google_crc32c
import numpy as np

from .schema import VideoMeta

_META_FIELDS = ("source", "labels", "split", "domain", "fps", "n_frames", "duration")
_VID = re.compile(rb'"v":"((?:[^"\\]|\\.)*)"')


def encode_record(rec: dict[str, Any]) -> bytes:
    """One commit-log line for ``rec``."""
    body = json.dumps(rec, separators=(",", ":")).encode()
    return body + b"\t" + f"{zlib.crc32(body):08x}".encode() + b"\n"


def _decode_line(line: bytes) -> dict[str, Any] | None:
    """The record of one line (without its newline), or None when checksum or JSON do not match."""
    body, tab, crc = line.rpartition(b"\t")
    if not tab or len(crc) != 8:
        return None
    try:
        if int(crc, 16) != zlib.crc32(body):
            return None
        rec = json.loads(body)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


@dataclass
class Damage:
    """A damaged complete line of a log: where it is and, when still legible, whose record it was."""

    line: int  # 1-based line number counted from the scan's start offset
    offset: int  # byte offset of the line in the file
    length: int
    video_id: str | None  # parsed from the damaged bytes when legible (not trusted, only reported)


@dataclass
class LogScan:
    """What ``scan_log`` found: the intact records, the damaged lines, and the torn tail."""

    records: list[dict[str, Any]] = field(default_factory=list)
    end: int = 0  # bytes up to and including the last record (where the next scan would start)
    damage: list[Damage] = field(default_factory=list)
    torn: int = 0  # bytes of an incomplete last line (a writer killed mid-append)
    first_bad_record: int = -1  # index in ``records`` of the first record after the first damage


def scan_log(data: bytes, start: int = 0) -> LogScan:
    """Every intact record of a log (``data`` read from byte ``start`` of the file), and its damage.

    The last piece without a newline is a torn tail and ignored, unless it is a whole record
    that only lost its newline (then it is read: its checksum proves it).
    """
    out = LogScan(end=start)
    pieces = data.split(b"\n")
    pos = 0
    for no, line in enumerate(pieces[:-1], 1):
        rec = _decode_line(line)
        if rec is None:
            m = _VID.search(line)
            vid = None
            if m:
                try:
                    vid = json.loads(b'"' + m.group(1) + b'"')
                except ValueError:
                    vid = None
            if out.first_bad_record < 0:
                out.first_bad_record = len(out.records)
            out.damage.append(Damage(no, start + pos, len(line) + 1, vid))
        else:
            out.records.append(rec)
            out.end = start + pos + len(line) + 1
        pos += len(line) + 1
    tail = pieces[-1]
    if tail:
        rec = _decode_line(tail) or _decode_line(tail[:-1])
        if rec is not None:
            out.records.append(rec)
            out.end = start + len(data)
        else:
            out.torn = len(tail)
    return out


def parse_log(data: bytes) -> tuple[list[dict[str, Any]], int]:
    """Intact records of a log and the bytes up to the last of them (damaged lines skipped).

    Lenient reading for logs whose loss is not data loss (the failure log); commit logs are
    read with ``scan_log``, which reports damage.
    """
    scan = scan_log(data)
    return scan.records, scan.end


def rows_checksum(stored: np.ndarray, times: np.ndarray, frames: np.ndarray, crc: tuple[int, int] = (0, 0)) -> tuple[int, int]:
    """Checksums of a video's rows: crc32c of the stored feature bytes, crc32c of the row times.

    The second covers, row by row, the four little-endian 8-byte words ``start, end, first,
    last``. ``crc`` continues the checksums of earlier rows, so a video may be fed in pieces.
    """
    fb = np.ascontiguousarray(stored)
    if fb.dtype.byteorder == ">":
        fb = fb.astype(fb.dtype.newbyteorder("<"))
    words = np.empty((len(times), 4), "<u8")  # (n, 2) + (n, 2) -> (n, 4)
    words[:, :2] = np.ascontiguousarray(times, dtype="<f8").view("<u8")
    words[:, 2:] = np.ascontiguousarray(frames, dtype="<i8").view("<u8")
    flat = fb.reshape(-1).view(np.uint8)  # a read-only view: crc32c takes read-only buffers, no copy
    flat.flags.writeable = False
    return google_crc32c.extend(crc[0], flat), google_crc32c.extend(crc[1], words.tobytes())


def meta_record(meta: VideoMeta) -> dict[str, Any]:
    """``VideoMeta`` as the compact dict stored in commit records (video id kept apart)."""
    return {
        "source": meta.source, "labels": list(meta.labels), "split": meta.split, "domain": meta.domain,
        "fps": meta.fps, "n_frames": meta.n_frames, "duration": meta.duration,
    }


def _crc_of(rec: dict[str, Any]) -> tuple[int, int] | None:
    c = rec.get("c")
    return (int(c[0]), int(c[1])) if c is not None else None


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
        self.crc: list[tuple[int, int] | None] = []  # rows checksums (None: written before checksums)
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
            self.crc.append(_crc_of(rec))
            for k in _META_FIELDS:
                cols[k].append(m[k])
        else:
            self.seg[i], self.row[i], self.n[i] = s, int(rec["r"]), int(rec["n"])
            self.nonfinite[i] = bool(rec.get("nf", False))
            self.crc[i] = _crc_of(rec)
            for k in _META_FIELDS:
                cols[k][i] = m[k]

    def apply_all(self, records: Iterable[dict[str, Any]]) -> None:
        """``apply`` each record in order (a fast path for the common case: new videos)."""
        records = list(records)
        if not records:  # nothing new: a compacted index keeps its metadata columns unloaded
            return
        self._arrays = None
        cols = self.cols
        pos, ids, seg, row, n, nonfinite, crc = self.pos, self.ids, self.seg, self.row, self.n, self.nonfinite, self.crc
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
            crc.append(_crc_of(rec))
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
            "crc": np.array([c if c is not None else (-1, -1) for c in self.crc], dtype=np.int64).reshape(-1, 2),
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
        if "crc" in arrays:  # stores compacted before checksums have none
            idx.crc = [None if c[0] < 0 else (c[0], c[1]) for c in arrays["crc"].tolist()]
        else:
            idx.crc = [None] * len(idx.ids)
        idx.pos = dict(zip(idx.ids, range(len(idx.ids))))
        idx._cols, idx._load_cols = None, load_cols
        return idx

    def subset(self, keep: list[int]) -> "VideoIndex":
        """A copy holding only the videos at positions ``keep`` (in their order)."""
        out = VideoIndex()
        out.segments = list(self.segments)
        out._seg_pos = dict(self._seg_pos)
        out.ids = [self.ids[i] for i in keep]
        out.pos = {v: j for j, v in enumerate(out.ids)}
        out.seg = [self.seg[i] for i in keep]
        out.row = [self.row[i] for i in keep]
        out.n = [self.n[i] for i in keep]
        out.nonfinite = [self.nonfinite[i] for i in keep]
        out.crc = [self.crc[i] for i in keep]
        cols = self.cols
        out._cols = {k: [cols[k][i] for i in keep] for k in _META_FIELDS}
        return out

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
