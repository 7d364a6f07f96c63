"""The Zarr v3 backend: feature sets as groups of large sharded row arrays plus an in-memory index.

Layout of a store (every ``zarr.json`` is plain Zarr v3; other Zarr tools read the arrays)::

    ROOT/zarr.json                              group; attributes "featbank" (schema version) and
                                                "featbank_backbone_weights" (backbone -> weights id)
    ROOT/_featbank/failures/WRITER.jsonl        failure log, one file per writer (append-only)
    ROOT/SET/zarr.json                          group; attributes "featbank_set" (FeatureSetInfo) and
                                                "featbank_layout" (compression, chunk and shard rows)
    ROOT/SET/segments/SEG/{feats,times,frame_idx}   the rows of many videos, concatenated
    ROOT/SET/_commits/SEG.jsonl                 commit log of writer segment SEG (one line per video)
    ROOT/SET/_index/GEN.json, _index/CURRENT    compacted index and the pointer to it

Writers (``w-*`` segments) each own their segment and its log: a write puts the rows into
the segment through zarr-python (the local store replaces a shard file atomically), then
appends one checksummed commit line. Readers load the compacted index plus every commit
log (torn tail lines ignored), so a video is visible only after its rows are on disk.
``compact()`` copies every live video into one ``c-*`` segment with large shards, writes a
new index, switches ``_index/CURRENT`` atomically, then deletes what it superseded.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Sequence

import google_crc32c
import numpy as np
import zarr
from zarr.errors import ContainsGroupError

from ._files import Appender, Files
from ._index import _META_FIELDS, VideoIndex, encode_record, meta_record, parse_log, rows_checksum, scan_log
from ._objects import BatchPolicy, Objects, RemoteShards, batch_records, read_commit_objects
from ._rows import check_video, decode, differences, meta_equal, prepare_rows, storage_dtype
from ._segments import COMPRESSIONS, CorruptDataError, Layout, Segment
from .base import FeatureSet, FeatureStore
from .errors import (
    FeatureSetConflictError,
    NotAStoreError,
    SchemaVersionError,
    StoreError,
    UnknownFeatureSetError,
    UnknownVideoError,
    VideoConflictError,
)
from .memory import conflict_error, latest_failures, stale_error
from .schema import SCHEMA_VERSION, FeatureSetInfo, VideoMeta, VideoRows

MODES = ("r", "a", "w")
_LIVE = "featbank_live"  # marker file in a compacted segment, written once the index points to it
_FAILURES = "_featbank/failures"
# Checksums of the attributes that decide how a store and its sets are read (crc32c of their
# canonical JSON): damage to a weights id, a row shape or a chunk size is refused, not read.
_ROOT_CRC, _ROOT_KEYS = "featbank_root_crc32c", ("featbank", "featbank_backbone_weights")
_SET_CRC, _SET_KEYS = "featbank_set_crc32c", ("featbank_set", "featbank_layout")


def _attrs_crc(attrs: dict[str, Any]) -> int:
    canonical = json.dumps(json.loads(json.dumps(attrs)), sort_keys=True, separators=(",", ":"))
    return google_crc32c.value(canonical.encode())


def _new_id(prefix: str) -> str:
    return f"{prefix}-{time.time_ns():x}-{uuid.uuid4().hex[:8]}"


class _Writer:
    """This process's segment of one feature set: rows go to ``seg``, commit lines to ``log``."""

    def __init__(self, name: str, seg: Segment, log: Appender) -> None:
        self.name, self.seg, self.log = name, seg, log
        self.next_row = 0
        self.pid = os.getpid()


@dataclass
class _IndexState:
    """A set's index as read from disk, with the damage found on the way."""

    index: VideoIndex = field(default_factory=VideoIndex)
    sizes: dict[str, int] = field(default_factory=dict)  # bytes of each commit log that were read
    pending: list[dict[str, Any]] = field(default_factory=list)  # records read from the logs
    segments: list[str] = field(default_factory=list)  # segment folders present
    problems: list[str] = field(default_factory=list)  # damage: readers refuse, validate reports
    notes: list[str] = field(default_factory=list)  # not damage (e.g. checksums absent in old stores)
    lost: list[str] = field(default_factory=list)  # what a salvaging reader leaves out
    ignored: list[str] = field(default_factory=list)  # torn commit objects (object stores): readers skip them


class ZarrFeatureSet(FeatureSet):
    """A feature set of a ``ZarrStore`` (obtain it with ``create_set`` / ``open_set``)."""

    def __init__(self, store: "ZarrStore", info: FeatureSetInfo, layout: Layout) -> None:
        self.info, self.layout, self._store = info, layout, store
        self._key = info.name
        self._sdtype = storage_dtype(info)
        self._segments: dict[str, Segment] = {}
        self._index: VideoIndex | None = None
        self._log_sizes: dict[str, int] = {}
        self._writer: _Writer | None = None
        self._batches = (0, "", 0)  # object stores: (pid, writer id, batches opened) of this process
        self._ends: dict[str, int] = {}  # committed row count per segment (as far as known)
        self._lock = threading.RLock()
        self.lost: list[str] = []  # salvage only: what the reading left out, one line each

    # ---- index ------------------------------------------------------------------------
    @property
    def index(self) -> VideoIndex:
        if self._index is None:
            self.refresh()
        return self._index  # type: ignore[return-value]

    def refresh(self) -> None:
        """Reload the index from disk (sees videos committed by other writers since opening).

        Raises:
            CorruptDataError: a commit log has a damaged line (not a torn last line), the
                compacted index or its pointer ``_index/CURRENT`` is missing or damaged. With
                ``open_store(..., salvage=True)`` what is provably intact is read instead and
                ``salvage_report()`` says what was left out.
        """
        if self._store.objects is not None and self._writer is not None and self._writer.pid == os.getpid():
            self._close_writer()  # commit this process's open batch first: it becomes visible to all
        for attempt in range(3):
            try:
                return self._load_index(final=attempt == 2)
            except FileNotFoundError:  # a compaction switched generations under us: read the new one
                if attempt == 2:
                    raise

    def _load_index(self, final: bool = True) -> None:
        salvage = self._store.salvage
        with self._lock:
            state = self._read_state(salvage=salvage, final=final)
            if state.problems and not salvage:
                more = f" (and {len(state.problems) - 1} more problem(s))" if len(state.problems) > 1 else ""
                raise CorruptDataError(
                    f"store {self._store.path!r}: {state.problems[0]}{more}; the set is refused rather than read "
                    "with videos silently missing: `featbank store validate PATH` lists the damage, "
                    "`--salvage` (open_store(..., salvage=True)) reads what is provably intact"
                )
            self._install(state)
            if salvage:
                self._salvage_rows(state)
                self._install(state)
            self.lost = state.lost

    def _install(self, state: "_IndexState") -> None:
        index = state.index
        self._index, self._log_sizes = index, state.sizes
        seg_a, row_a, n_a = index.arrays()
        end_a = np.zeros(len(index.segments), np.int64)
        np.maximum.at(end_a, seg_a, row_a + n_a)
        ends = dict(zip(index.segments, end_a.tolist()))
        for r in state.pending:  # overwritten rows count too: they stay on disk
            ends[r["s"]] = max(ends.get(r["s"], 0), r["r"] + r["n"])
        for name, seg_obj in self._segments.items():
            seg_obj.known_rows = max(seg_obj.known_rows, ends.get(name, 0))
        self._ends = ends

    def _read_state(self, *, salvage: bool, final: bool = True) -> "_IndexState":
        """The index as the files say, with every damage found (``problems``) and, when
        salvaging, what could not be kept (``lost``); nothing is raised for damage."""
        files, key, name = self._store.files, self._key, self.name
        state = _IndexState()
        where = f"set {name!r}"
        index_files = [f for f in files.listdir(f"{key}/_index") if f != "CURRENT" and not f.endswith(".partial")]
        gens = sorted({f[: -len(".json")] for f in index_files if f.endswith(".json") and not f.endswith(".meta.json")},
                      reverse=True)
        segments = [s for s in files.listdir(f"{key}/segments") if s != "zarr.json"]
        consumed: dict[str, int] = {}
        index: VideoIndex | None = None
        gen, doc_crc = None, None
        if files.exists(f"{key}/_index/CURRENT"):
            try:
                cur = json.loads(files.read(f"{key}/_index/CURRENT"))
                gen, doc_crc = cur["gen"], cur.get("crc")
                if not isinstance(gen, str) or "/" in gen:
                    raise ValueError(gen)
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                state.problems.append(f"{where}: the index pointer _index/CURRENT is damaged")
                gen = None
        else:
            # Without the pointer, was the set compacted (damage), or was a compaction interrupted
            # before its switch (harmless leftovers)? A compaction marks its segment live after the
            # switch, and a switched generation's consumed commit logs are gone.
            live = [s for s in segments if s.startswith("c-") and files.exists(f"{key}/segments/{s}/{_LIVE}")]
            for g in gens:
                try:
                    logs = json.loads(files.read(f"{key}/_index/{g}.json"))["consumed"]
                    switched = any(not files.exists(f"{key}/_commits/{seg}.jsonl") for seg in logs)
                except (ValueError, KeyError, TypeError, UnicodeDecodeError, FileNotFoundError):
                    switched = True
                if switched and g not in live:
                    live.append(g)
            if live and files.exists(f"{key}/_index/CURRENT"):
                raise FileNotFoundError("a compaction switched generations while the index was read")  # retried
            if live:
                state.problems.append(
                    f"{where}: the index pointer _index/CURRENT is missing, but the set was compacted "
                    f"(into {', '.join(live)}); its compacted videos cannot be located"
                )
        candidates = [gen] if gen is not None else (gens if salvage and state.problems else [])
        for g in candidates:
            try:
                index, consumed = self._load_generation(g, doc_crc if g == gen else None, final)
                if salvage:
                    index.cols  # metadata loads lazily; a salvaging reader must know it is intact now
                if g != gen:
                    state.lost.append(f"{where}: _index/CURRENT is unusable; read the compacted index {g} "
                                      "(its own checksums verify)")
                break
            except CorruptDataError as e:
                index, consumed = None, {}
                if g == gen:
                    state.problems.append(f"{where}: {e}")
        if index is None:
            index = VideoIndex()
            if state.problems:
                state.lost.append(f"{where}: no usable compacted index: every video committed before the last "
                                  "compaction is lost to this reading")
        if gen is not None and doc_crc is None:
            state.notes.append(f"{where}: the compacted index carries no checksums (written by an older featbank)")
        pending: list[dict[str, Any]] = []
        sizes = dict(consumed)
        damaged_ids: set[str] = set()
        objects, names = self._store.objects, files.listdir(f"{key}/_commits")
        scans = read_commit_objects(objects, key, [f for f in names if f.endswith(".jsonl") and f[:-6] not in consumed]
                                    ) if objects is not None else {}
        for fname in names:
            if not fname.endswith(".jsonl"):
                continue
            seg = fname[: -len(".jsonl")]
            start = consumed.get(seg, 0)
            try:
                if objects is not None:  # immutable commit objects: one the index consumed is done
                    if seg in consumed:
                        continue
                    if fname not in scans:  # deleted by a compaction since the listing
                        raise FileNotFoundError(fname)
                    scan = scans[fname]
                else:
                    scan = scan_log(files.read(f"{key}/_commits/{fname}", offset=start), start)
            except FileNotFoundError:
                if not final:
                    raise
                continue
            if objects is not None:
                records = batch_records(scan, seg)
                if records is None:
                    state.ignored.append(f"{where}: commit object _commits/{fname} is torn or damaged; readers ignore "
                                         "it (its videos are not visible: rerun the job to write them again, then "
                                         "delete the object)")
                    continue
                scan.records = records
            sizes[seg] = scan.end
            for d in scan.damage:
                line = f"line {d.line}" if start == 0 else f"line {d.line} after byte {start}"
                whose = f" (the record of video {d.video_id!r})" if d.video_id is not None else ""
                state.problems.append(f"{where}: commit log _commits/{fname} is damaged at {line}, byte {d.offset}{whose}")
                if d.video_id is not None:
                    damaged_ids.add(d.video_id)
                    state.lost.append(f"{where}: video {d.video_id!r}: its commit record in _commits/{fname} "
                                      "is damaged (left out)")
                else:
                    state.lost.append(
                        f"{where}: an illegible commit record in _commits/{fname} at byte {d.offset} (left out; "
                        "if it replaced an earlier version of a video, that earlier version is what is read)"
                    )
            pending += scan.records
        if damaged_ids:
            pending = [r for r in pending if r["v"] not in damaged_ids]
            keep = [i for i, v in enumerate(index.ids) if v not in damaged_ids]
            if len(keep) < len(index.ids):
                index = index.subset(keep)
        pending.sort(key=itemgetter("t"))  # stable: each log keeps its own order on ties
        index.apply_all(pending)
        state.index, state.sizes, state.pending, state.segments = index, sizes, pending, segments
        return state

    def _load_generation(self, gen: str, doc_crc: int | None, final: bool) -> tuple[VideoIndex, dict[str, int]]:
        """A compacted index generation, every checksum it carries verified."""
        files, key = self._store.files, self._key

        def read(fname: str) -> bytes:
            try:
                return files.read(f"{key}/_index/{fname}")
            except FileNotFoundError:
                if not final:
                    raise
                raise CorruptDataError(f"the compacted index file _index/{fname} is missing") from None

        raw = read(f"{gen}.json")
        if doc_crc is not None and google_crc32c.value(raw) != doc_crc:
            raise CorruptDataError(f"the compacted index _index/{gen}.json does not match its checksum")
        try:
            doc = json.loads(raw)
            segments, consumed = list(doc["segments"]), {k: int(v) for k, v in doc["consumed"].items()}
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
            raise CorruptDataError(f"the compacted index _index/{gen}.json is damaged (not valid JSON)") from None
        npz = read(f"{gen}.npz")
        if "npz_crc" in doc and google_crc32c.value(npz) != doc["npz_crc"]:
            raise CorruptDataError(f"the compacted index _index/{gen}.npz does not match its checksum")
        try:
            with np.load(io.BytesIO(npz), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            n = len(arrays["ids"])
            if any(len(arrays[k]) != n for k in ("seg", "row", "n", "nonfinite")) or (
                n and not 0 <= int(arrays["seg"].min()) <= int(arrays["seg"].max()) < len(segments)
            ):
                raise ValueError("columns disagree")
        except Exception:  # a damaged zip or npy member can fail in many ways
            raise CorruptDataError(f"the compacted index _index/{gen}.npz is damaged (cannot be read)") from None
        meta_crc = doc.get("meta_crc")

        def load_cols() -> dict[str, list[Any]]:
            try:
                data = files.read(f"{key}/_index/{gen}.meta.json")
            except FileNotFoundError:
                raise CorruptDataError(
                    f"store {self._store.path!r}, set {self.name!r}: the compacted metadata _index/{gen}.meta.json "
                    "is missing") from None
            bad = meta_crc is not None and google_crc32c.value(data) != meta_crc
            try:
                cols = None if bad else json.loads(data)
                if cols is not None and any(len(cols[k]) != n for k in _META_FIELDS):
                    cols = None
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                cols = None
            if cols is None:
                raise CorruptDataError(
                    f"store {self._store.path!r}, set {self.name!r}: the compacted metadata _index/{gen}.meta.json "
                    "is damaged; `featbank store validate PATH` reports it")
            return cols

        return VideoIndex.from_arrays(segments, arrays, load_cols), consumed

    def _salvage_rows(self, state: "_IndexState") -> None:
        """Salvage: keep only videos whose rows can be read and match their checksums."""
        idx = state.index
        keep = []
        for i, vid in enumerate(idx.ids):
            why = self._rows_problem(i)
            if why is None:
                keep.append(i)
            else:
                state.lost.append(f"set {self.name!r}: video {vid!r}: {why} (left out)")
        if len(keep) < len(idx.ids):
            state.index = idx.subset(keep)

    def _rows_problem(self, i: int, idx: VideoIndex | None = None) -> str | None:
        """Why video ``i``'s rows are not provably intact (None when they are, or carry no checksum)."""
        idx = idx or self.index
        try:
            seg = self._segment(idx.segments[idx.seg[i]])
            r0, n = idx.row[i], idx.n[i]
            stored = seg.read_zarr(r0, r0 + n) if not seg.direct else seg.read(r0, r0 + n)
            t, f = seg.times_zarr(r0, r0 + n) if not seg.direct else seg.times(r0, r0 + n)
        except Exception as e:  # damaged files fail in many ways; each is reported, not raised
            return f"its rows cannot be read ({e})"
        if len(stored) != n or len(t) != n:
            return "its rows lie beyond the end of their segment"
        if idx.crc[i] is not None and rows_checksum(stored, t, f) != idx.crc[i]:
            return "its rows do not match their checksum"
        return None

    def _segment(self, name: str) -> Segment:
        seg = self._segments.get(name)
        w = self._writer
        if seg is None and w is not None and w.name == name and self._store.objects is not None:
            self._close_writer()  # rows of this process's open batch: commit it, then read it back
        if seg is None:
            key = f"{self._key}/segments/{name}"
            try:
                meta = json.loads(self._store.files.read(f"{key}/feats/zarr.json"))
                shard_rows = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
                if shard_rows <= 0 or shard_rows % self.layout.rows_per_chunk:
                    raise ValueError(shard_rows)
            except FileNotFoundError:
                raise CorruptDataError(f"set {self.name!r}: segment {name} is missing its feats array") from None
            except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError):
                raise CorruptDataError(
                    f"set {self.name!r}: segment {name}: feats/zarr.json is damaged (no valid shard shape)") from None
            seg = Segment(self._store.zstore, key, self.info.row_shape, self._sdtype, self.layout,
                          self._store.local_root, shard_rows)
            seg.known_rows = self._ends.get(name, 0) if self._index is not None else 0
            seg.durable = self._store.fsync
            if self._store.objects is not None:
                seg.remote = RemoteShards(self._store.objects, seg)
            self._segments[name] = seg
        return seg

    def _pos(self, video_id: str) -> int:
        i = self.index.pos.get(video_id)
        if i is None:
            raise UnknownVideoError(f"video {video_id!r} is not committed in feature set {self.name!r}")
        return i

    # ---- membership -------------------------------------------------------------------
    def video_ids(self) -> list[str]:
        return list(self.index.ids)

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, video_id: object) -> bool:
        return video_id in self.index.pos

    def n_rows(self, video_id: str) -> int:
        return self.index.n[self._pos(video_id)]

    def meta(self, video_id: str) -> VideoMeta:
        return self.index.meta(self._pos(video_id))

    def metadata(self) -> dict[str, np.ndarray]:
        idx = self.index
        c = idx.cols
        return {
            "video_id": np.array(idx.ids, dtype=object),
            "source": np.array(c["source"], dtype=object),
            "label": np.array([lab[0] if lab else -1 for lab in c["labels"]], dtype=np.int64),
            "split": np.array(c["split"], dtype=object),
            "domain": np.array(c["domain"], dtype=object),
            "fps": np.array([np.nan if v is None else v for v in c["fps"]], dtype=np.float64),
            "n_frames": np.array(c["n_frames"], dtype=np.int64),
            "duration": np.array([np.nan if v is None else v for v in c["duration"]], dtype=np.float64),
            "n_rows": np.array(idx.n, dtype=np.int64),
        }

    # ---- writes -----------------------------------------------------------------------
    def _writer_segment(self) -> _Writer:
        w = self._writer
        if w is not None and w.pid == os.getpid():
            return w
        if self._store.objects is not None:  # object stores: one immutable segment per commit batch
            pid, writer_id, count = self._batches
            if pid != os.getpid():
                pid, writer_id, count = os.getpid(), _new_id("w"), 0
            batch = self._store.objects.batch_writer(self, writer_id, count)
            self._batches = (pid, writer_id, count + 1)
            self._writer = _Writer(batch.name, batch.seg, batch)  # type: ignore[arg-type]
            return self._writer
        # first write of this process (or a forked child): a fresh segment nobody else touches
        name = _new_id("w")
        log = self._store.files.open_append(f"{self._key}/_commits/{name}.jsonl")
        seg = Segment.create(self._store.zstore, f"{self._key}/segments/{name}", self.info.row_shape,
                             self._sdtype, self.layout, self._store.local_root, 0, self.layout.write_rows_per_shard)
        seg.durable = self._store.fsync
        self._segments[name] = seg
        self._writer = _Writer(name, seg, log)
        return self._writer

    def write_video(
        self, rows: VideoRows, meta: VideoMeta, *, overwrite: bool = False, allow_nonfinite: bool = False
    ) -> bool:
        self._store._check_writable()
        stored, as_read = prepare_rows(self.info, rows, meta, allow_nonfinite)
        vid = meta.video_id
        with self._lock:
            i = self.index.pos.get(vid)
            if i is not None:
                if meta_equal(self.index.meta(i), meta) and self._read_pos(i).equals(as_read):
                    return False
                if not overwrite:
                    what = differences(self._read_pos(i), self.index.meta(i), as_read, meta)
                    raise VideoConflictError(
                        f"video {vid!r} is already committed in feature set {self.name!r} with a different {what}; "
                        "pass overwrite=True to replace it"
                    )
            w = self._writer_segment()
            row0, n = w.next_row, len(stored)
            times = np.stack([as_read.starts, as_read.ends], axis=1)  # (N, 2)
            w.seg.write(row0, stored, times, as_read.frame_idx)
            rec = {"v": vid, "s": w.name, "r": row0, "n": n, "m": meta_record(meta),
                   "nf": bool(allow_nonfinite), "t": time.time_ns(),
                   "c": list(rows_checksum(stored, times, as_read.frame_idx))}
            w.log.append(encode_record(rec), fsync=self._store.fsync)
            w.next_row += n
            w.seg.known_rows = w.next_row
            self._ends[w.name] = w.next_row
            self.index.apply(rec)
            return True

    # ---- reads ------------------------------------------------------------------------
    def _read_pos(self, i: int, a: int = 0, b: int | None = None) -> VideoRows:
        idx = self.index
        seg = self._segment(idx.segments[idx.seg[i]])
        r0, n = idx.row[i], idx.n[i]
        b = n if b is None else b
        feats = decode(self.info, seg.read(r0 + a, r0 + b))
        t, f = seg.times(r0 + a, r0 + b)
        t = t.copy()
        return VideoRows(feats, t[:, 0], t[:, 1], f.copy())

    def read(self, video_id: str, rows: slice | None = None, time: tuple[float, float] | None = None) -> VideoRows:
        i = self._pos(video_id)
        n = self.index.n[i]
        a, b = 0, n
        if rows is not None:
            a, b, step = rows.indices(n)
            if step != 1:
                return self._read_pos(i).slice(rows) if time is None else self._read_pos(i).slice(rows).window(*time)
            b = max(a, b)
        if time is not None:
            idx = self.index
            seg = self._segment(idx.segments[idx.seg[i]])
            t, _ = seg.times(idx.row[i] + a, idx.row[i] + b)
            keep = np.flatnonzero((t[:, 1] > float(time[0])) & (t[:, 0] < float(time[1])))
            a, b = (a + int(keep[0]), a + int(keep[-1]) + 1) if len(keep) else (a, a)
        return self._read_pos(i, a, b)

    def read_many(self, video_ids: Sequence[str]) -> list[VideoRows]:
        """Rows of several videos in the order asked; reads are sorted and coalesced by location."""
        pos = [self._pos(v) for v in video_ids]
        if not pos:
            return []
        seg_a, row_a, n_a = self.index.arrays()
        runs = self._runs(pos)
        # object stores: every run's rows in one batch of parallel ranged GETs
        remote = [(seg, lo, hi, np.empty((hi - lo, *seg.row_shape), seg.dtype))
                  for seg, lo, hi, _ in runs if seg.remote is not None]
        if remote:
            self._store.objects.read_rows(remote)
        fetched = iter(buf for *_, buf in remote)
        done: dict[int, VideoRows] = {}
        for seg, lo, hi, members in runs:
            if seg.remote is None and seg.direct:  # one pread per video, in location order, into its own array
                for j in members:
                    done[j] = self._read_pos(j)
                continue
            buf = next(fetched) if seg.remote is not None else seg.read(lo, hi)
            t, f = seg.times(lo, hi)
            for j in members:
                a, b = int(row_a[j] - lo), int(row_a[j] + n_a[j] - lo)
                tj = t[a:b].copy()
                done[j] = VideoRows(decode(self.info, buf[a:b].copy()), tj[:, 0], tj[:, 1], f[a:b].copy())
        out, seen = [], set()
        for p in pos:  # a repeated id gets its own copy
            out.append(_copy_rows(done[p]) if p in seen else done[p])
            seen.add(p)
        return out

    def _runs(self, pos: Sequence[int]) -> list[tuple[Segment, int, int, list[int]]]:
        """Videos ``pos`` sorted by location and grouped into runs ``(segment, first row, end row,
        members)`` of nearby rows (gaps up to one chunk) that one read covers: at most a shard's rows,
        and on object stores within one shard object."""
        seg_a, row_a, n_a = self.index.arrays()
        uniq = np.unique(np.asarray(pos, dtype=np.int64))
        order = uniq[np.lexsort((row_a[uniq], seg_a[uniq]))]
        gap = self.layout.rows_per_chunk
        runs = []
        start = 0
        while start < len(order):
            s = seg_a[order[start]]
            lo = int(row_a[order[start]])
            hi = lo + int(n_a[order[start]])
            seg = self._segment(self.index.segments[s])
            rps = seg.rows_per_shard
            stop = start + 1
            while stop < len(order):
                j = order[stop]
                end = int(row_a[j] + n_a[j])
                beyond = (end - 1) // rps != lo // rps if seg.remote is not None else end - lo > rps
                if seg_a[j] != s or row_a[j] > hi + gap or beyond:
                    break
                hi = max(hi, end)
                stop += 1
            runs.append((seg, lo, hi, [int(j) for j in order[start:stop]]))
            start = stop
        return runs

    def read_all(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        seg_a, row_a, n_a = self.index.arrays()
        offsets = np.zeros(len(n_a) + 1, dtype=np.int64)
        np.cumsum(n_a, out=offsets[1:])
        out = np.empty((int(offsets[-1]), *self.info.row_shape), self._sdtype)
        i = 0
        while i < len(n_a):
            # videos stored back to back in one segment, in index order: one copy
            j = i + 1
            while j < len(n_a) and seg_a[j] == seg_a[i] and row_a[j] == row_a[j - 1] + n_a[j - 1]:
                j += 1
            seg = self._segment(self.index.segments[seg_a[i]])
            seg.read_into(int(row_a[i]), int(row_a[j - 1] + n_a[j - 1]), out[offsets[i]:offsets[j]])
            i = j
        return decode(self.info, out), offsets, list(self.index.ids)

    # ---- maintenance ------------------------------------------------------------------
    def validate(self, quick: bool = False) -> list[str]:
        """Problems of this set (see ``check``)."""
        return self.check(quick=quick)[0]

    def check(self, quick: bool = False) -> tuple[list[str], list[str]]:
        """Problems and notes of this set.

        Always: the commit logs (a damaged line that is not the torn last line), the
        compacted index and its pointer with their checksums, the set's attributes, rows
        shared by two videos, and a chunk file of any array (feats, times, frame_idx) missing
        under a committed row. Unless ``quick``: every video's rows are read (by zarr-python
        and by the fast reader, which must agree) and compared with the checksum recorded at
        commit, then checked for shape, finite values and ordered times.

        Returns:
            ``(problems, notes)``; notes are not damage (e.g. checksums absent in a store
            written by an older featbank).
        """
        with self._lock:
            state = self._read_state(salvage=False)
        idx = state.index
        problems, notes = list(state.problems) + state.ignored, list(state.notes)
        try:
            idx.cols  # the compacted metadata, checksum verified
        except CorruptDataError as e:
            problems.append(str(e))
            return problems, notes
        seg_a, row_a, n_a = idx.arrays()
        order = np.lexsort((row_a, seg_a))
        for k in range(1, len(order)):  # live videos must not share rows
            p, q = order[k - 1], order[k]
            if seg_a[p] == seg_a[q] and row_a[q] < row_a[p] + n_a[p]:
                problems.append(f"set {self.name!r}: videos {idx.ids[p]!r} and {idx.ids[q]!r} share rows")
        problems += self._missing_chunks(idx)
        no_crc = sum(c is None for c in idx.crc)
        if no_crc:
            notes.append(f"set {self.name!r}: {no_crc} of {len(idx)} video(s) carry no checksum (committed by an older "
                         "featbank); their values are checked for shape, finite values and times only")
        live = set(idx.segments) | {s for s in state.sizes}
        for seg in state.segments if not problems else []:  # with damage, "unreferenced" may be what was lost
            if seg not in live:
                notes.append(f"set {self.name!r}: segment {seg} is not referenced (left by an interrupted compaction "
                             "or import); `featbank store compact` removes it")
        if quick:
            return problems, notes
        start = 0
        while start < len(order):
            s = seg_a[order[start]]
            stop = start
            lo = row_a[order[start]]
            try:
                seg = self._segment(idx.segments[s])
                limit = seg.rows_per_shard
            except (StoreError, OSError, ValueError, KeyError) as e:
                seg, limit = None, 0
                err = e
            while stop < len(order) and seg_a[order[stop]] == s and (
                stop == start or row_a[order[stop]] + n_a[order[stop]] - lo <= limit
            ):
                stop += 1
            block = order[start:stop]
            start = stop
            if seg is None:
                problems += [f"set {self.name!r}, video {idx.ids[j]!r}: {err}" for j in block]
                continue
            hi = int(max(row_a[j] + n_a[j] for j in block))
            try:
                ref = seg.read_zarr(int(lo), hi)
                t, f = seg.times_zarr(int(lo), hi)
                fast = seg.read(int(lo), hi) if seg.direct else ref
            except Exception as e:  # any decode failure is reported against the videos it hides
                problems += [f"set {self.name!r}, video {idx.ids[j]!r}: cannot read rows ({e})" for j in block]
                continue
            for j in block:
                a, b = int(row_a[j] - lo), int(row_a[j] + n_a[j] - lo)
                vid = idx.ids[j]
                if len(ref) < b or len(t) < b:
                    problems.append(f"set {self.name!r}, video {vid!r}: rows beyond the end of segment {seg.key}")
                    continue
                if not np.array_equal(ref[a:b].view(np.uint8), fast[a:b].view(np.uint8)):
                    problems.append(f"set {self.name!r}, video {vid!r}: shard bytes disagree with the zarr reading")
                if idx.crc[j] is not None and rows_checksum(ref[a:b], t[a:b], f[a:b]) != idx.crc[j]:
                    problems.append(f"set {self.name!r}, video {vid!r}: its rows do not match their checksum "
                                    "(feature or time values changed on disk)")
                rows = VideoRows(decode(self.info, ref[a:b]), t[a:b, 0], t[a:b, 1], f[a:b])
                problems += check_video(self.info, vid, rows, idx.meta(j), idx.n[j], idx.nonfinite[j])
        return problems, notes

    def _missing_chunks(self, idx: VideoIndex) -> list[str]:
        """A chunk file of feats, times or frame_idx missing under a committed row (local stores)."""
        problems: list[str] = []
        by_seg: dict[int, list[int]] = {}
        for i in range(len(idx)):
            if idx.n[i]:
                by_seg.setdefault(idx.seg[i], []).append(i)
        for s, members in by_seg.items():
            name = idx.segments[s]
            try:
                seg = self._segment(name)
            except StoreError as e:
                problems.append(f"set {self.name!r}: {e}")
                continue
            for array, rows_per_file, ndim_rest in (("feats", seg.rows_per_shard, len(self.info.row_shape)),
                                                    ("times", seg.time_chunk_rows, 1),
                                                    ("frame_idx", seg.time_chunk_rows, 1)):
                need: dict[int, str] = {}
                for i in members:
                    for k in range(idx.row[i] // rows_per_file, (idx.row[i] + idx.n[i] - 1) // rows_per_file + 1):
                        need.setdefault(k, idx.ids[i])
                for k, vid in sorted(need.items()):
                    rel = "/".join([seg.key, array, "c", str(k)] + ["0"] * ndim_rest)
                    if not self._store.files.exists(rel):
                        problems.append(f"set {self.name!r}, video {vid!r}: chunk {array}/c/{k} of segment {name} "
                                        "is missing (its rows would read as zeros)")
        return problems

    def compact(self) -> bool:
        """Copy every live video into one read-optimised segment; returns False when already compact.

        Every video's rows are checked against their checksum on the way (a damaged set is
        refused, not copied). Until the pointer switches to the new index nothing old is
        touched, and a failure removes what the compaction had written; segments left by an
        earlier interrupted compaction are removed first.
        """
        self._store._check_writable()
        files, key = self._store.files, self._key
        with self._lock:
            self._close_writer()
            if self._store.objects is not None:  # the pointer as it was before this compaction read the index
                self._pointer_etag = self._store.objects.etag(f"{key}/_index/CURRENT")
            self.refresh()
            idx = self.index
            current = [s for s in files.listdir(f"{key}/segments") if s != "zarr.json"]
            logs = {f[: -len(".jsonl")] for f in files.listdir(f"{key}/_commits") if f.endswith(".jsonl")}
            for orphan in [s for s in current if s not in idx.segments and s not in logs]:
                self._segments.pop(orphan, None)
                files.rm(f"{key}/segments/{orphan}")
                current.remove(orphan)
            if len(current) == 1 and current[0].startswith("c-") and not logs:
                return False
            name = _new_id("c")
            try:
                with self._store.objects.compacting() if self._store.objects is not None else contextlib.nullcontext():
                    self._compact_into(name, idx)
            except BaseException:
                seg_obj = self._segments.pop(name, None)
                if seg_obj is not None:
                    seg_obj.close()
                files.rm(f"{key}/segments/{name}")
                for fname in files.listdir(f"{key}/_index"):
                    if fname.startswith(name + "."):
                        files.rm(f"{key}/_index/{fname}")
                raise
            # the switch is done: drop what the new index superseded
            for seg_obj in self._segments.values():
                seg_obj.close()
            self._segments.clear()
            for old in current:
                log = f"{key}/_commits/{old}.jsonl"
                grown = files.exists(log) and files.size(log) > self._log_sizes.get(old, 0)
                if old != name and not grown:
                    files.rm(f"{key}/segments/{old}")
                    files.rm(log)
            for fname in files.listdir(f"{key}/_index"):
                if fname != "CURRENT" and not fname.startswith(name + "."):
                    files.rm(f"{key}/_index/{fname}")
            for fname in files.listdir(f"{key}/_commits"):  # logs of segments that never got rows
                seg_name = fname[: -len(".jsonl")]
                if seg_name not in current and files.size(f"{key}/_commits/{fname}") <= self._log_sizes.get(seg_name, 0):
                    files.rm(f"{key}/_commits/{fname}")
            self._index = None
            self.refresh()
            return True

    def _compact_into(self, name: str, idx: VideoIndex) -> None:
        """Write segment ``name`` and its index generation, then switch ``_index/CURRENT`` to it."""
        files, key = self._store.files, self._key
        seg_a, row_a, n_a = idx.arrays()
        total = int(n_a.sum())
        c = self.layout.rows_per_chunk
        rows_per_shard = min(self.layout.read_rows_per_shard, max(c, -(-total // c) * c))
        new = Segment.create(self._store.zstore, f"{key}/segments/{name}", self.info.row_shape, self._sdtype,
                             self.layout, self._store.local_root, total, rows_per_shard)
        self._segments[name] = new
        new.durable = True  # the new generation must be on disk before the pointer switches to it
        new_index = VideoIndex()
        new_index.segment_id(name)
        block = np.empty((min(total, rows_per_shard), *self.info.row_shape), self._sdtype)
        tblock = np.empty((len(block), 2), np.float64)
        fblock = np.empty((len(block), 2), np.int64)
        filled, written = 0, 0
        cols = idx.cols
        for i in range(len(idx)):
            seg = self._segment(idx.segments[seg_a[i]])
            r, n = int(row_a[i]), int(n_a[i])
            done = 0
            crc = (0, 0)
            while done < n:
                take = min(n - done, len(block) - filled)
                seg.read_into(r + done, r + done + take, block[filled:filled + take])
                t, f = seg.times(r + done, r + done + take)
                tblock[filled:filled + take], fblock[filled:filled + take] = t, f
                crc = rows_checksum(block[filled:filled + take], t, f, crc)
                filled += take
                done += take
                if filled == len(block):
                    new.write(written, block, tblock, fblock)
                    written += filled
                    filled = 0
            if idx.crc[i] is not None and crc != idx.crc[i]:
                raise CorruptDataError(
                    f"set {self.name!r}, video {idx.ids[i]!r}: its rows do not match their checksum; compaction "
                    "refused (it would carry the damage over): run `featbank store validate`")
            new_index.apply({"v": idx.ids[i], "s": name, "r": written + filled - n, "n": n,
                             "m": {k: cols[k][i] for k in _META_FIELDS}, "nf": idx.nonfinite[i],
                             "c": idx.crc[i]})
        if filled:
            new.write(written, block[:filled], tblock[:filled], fblock[:filled])
        npz = io.BytesIO()
        np.savez(npz, **new_index.to_arrays())
        meta = json.dumps(new_index.cols).encode()
        doc = json.dumps({"segments": new_index.segments, "consumed": self._log_sizes,
                          "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
                          "npz_crc": google_crc32c.value(npz.getvalue()),
                          "meta_crc": google_crc32c.value(meta)}).encode()
        files.write_atomic(f"{key}/_index/{name}.npz", npz.getvalue())
        files.write_atomic(f"{key}/_index/{name}.meta.json", meta)
        files.write_atomic(f"{key}/_index/{name}.json", doc)
        pointer = json.dumps({"gen": name, "crc": google_crc32c.value(doc)}).encode()
        if self._store.objects is not None:  # conditional PUT: a racing compaction cannot switch too
            self._store.objects.switch_pointer(f"{key}/_index/CURRENT", pointer, self._pointer_etag)
        else:
            files.write_atomic(f"{key}/_index/CURRENT", pointer)
        files.write_atomic(f"{key}/segments/{name}/{_LIVE}", name.encode())  # switched: this segment is live

    def _close_writer(self) -> None:
        if self._writer is not None and self._writer.pid == os.getpid():
            self._writer.log.close()
        self._writer = None

    def close(self) -> None:
        self._close_writer()
        for seg in self._segments.values():
            seg.close()
        self._segments.clear()


def _copy_rows(r: VideoRows) -> VideoRows:
    return VideoRows(r.feats.copy(), r.starts.copy(), r.ends.copy(), r.frame_idx.copy())


class ZarrStore(FeatureStore):
    """A feature store in a Zarr v3 group (local folder or fsspec URL); see the module docstring.

    Args:
        path: local folder, ``file://`` or any fsspec URL (``memory://``, ``s3://`` ...).
        mode: ``"r"`` (must exist), ``"a"`` (create when missing), ``"w"`` (create fresh; an
            existing store is wiped, a non-store path refused).
        fsync: also ``fsync`` every commit line (survives power loss, slower; a killed
            process never loses a committed video either way).
        salvage: read a damaged store as far as it is provably intact (mode ``"r"`` only):
            damaged commit records, an unusable compacted index and videos whose rows fail
            their checksum are left out, and ``salvage_report()`` lists each. Without it a
            damaged set is refused with ``CorruptDataError``.
        cache_dir: object stores (``s3://`` ...): a local folder that keeps every segment object
            read (read-through cache for repeated epochs; default ``$FEATBANK_CACHE_DIR``, unset: none).
        batch: object stores: when a writer commits its batch of videos (``BatchPolicy``).
        **storage_options: passed to fsspec for URLs (credentials are best left to the
            standard environment: ``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ...).

    Raises:
        NotAStoreError: the path is not a featbank store (or missing in mode ``"r"``).
        SchemaVersionError: the store was written by a newer schema.
        CorruptDataError: the store's root attributes do not match their checksum.
    """

    def __init__(self, path: str | os.PathLike, mode: str = "a", *, fsync: bool = False, salvage: bool = False,
                 cache_dir: str | os.PathLike | None = None, batch: BatchPolicy | None = None,
                 **storage_options: Any):
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} not in {MODES}")
        if salvage and mode != "r":
            raise ValueError("salvage=True reads a damaged store; open it with mode='r' (nothing is written)")
        self.path, self.mode, self.fsync, self.salvage = os.fspath(path), mode, fsync, salvage
        self.files = Files(self.path, **storage_options)
        self.local_root = self.files.root if self.files.local else None
        # object stores (s3:// ...): immutable objects only, batch commits (see store/_objects.py)
        self.objects = Objects(self.files, batch or BatchPolicy(), os.fspath(cache_dir) if cache_dir else None
                               ) if self.files.objects else None
        self._sets: dict[str, ZarrFeatureSet] = {}
        self._closed = False
        self._failure_log: Appender | None = None
        self._failure_pid = 0
        root_meta = self._first_read()
        if root_meta is None or mode == "w":
            if mode == "r":
                what = "is an empty folder" if self.files.exists("") else "does not exist"
                raise NotAStoreError(f"no featbank store at {self.path!r} (the path {what})")
            if root_meta is None and not self._empty_or_missing():
                raise NotAStoreError(
                    f"{self.path!r} exists and is not a featbank store; refusing to write into it (choose a new path)"
                )
            if root_meta is not None:
                self._check_version(root_meta)
                self.files.rm("")
        else:
            self._check_version(root_meta)
        self.zstore = self._zarr_store(self.files.storage_options, read_only=mode == "r")
        if root_meta is None or mode == "w":
            g = zarr.open_group(store=self.zstore, mode="w", zarr_format=3)
            root = {"featbank": {"schema_version": SCHEMA_VERSION, "format": "featbank-store"},
                    "featbank_backbone_weights": {}}
            g.attrs.update({**root, _ROOT_CRC: _attrs_crc(root)})

    # ---- plumbing ---------------------------------------------------------------------
    def _zarr_store(self, storage_options: dict[str, Any], read_only: bool) -> Any:
        if self.files.local:
            return zarr.storage.LocalStore(self.files.root, read_only=read_only)
        return zarr.storage.FsspecStore.from_url(self.path, storage_options=storage_options or None,
                                                 read_only=read_only)

    def _first_read(self) -> dict[str, Any] | None:
        """``_root_meta``; on an object store a failure to reach it (credentials, endpoint, bucket
        permissions) becomes one ``StoreError`` saying what to set."""
        if self.objects is None:
            return self._root_meta()
        try:
            return self._root_meta()
        except StoreError:
            raise
        except Exception as e:
            raise StoreError(
                f"cannot read the object store at {self.path!r}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                "; credentials come from the standard environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or "
                "AWS_PROFILE; AWS_ENDPOINT_URL for a server other than AWS, e.g. MinIO)") from e

    def _root_meta(self) -> dict[str, Any] | None:
        try:
            meta = json.loads(self.files.read("zarr.json"))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except ValueError:
            raise NotAStoreError(f"{self.path!r}: zarr.json is not valid JSON; not a featbank store") from None
        attrs = meta.get("attributes", {}) if isinstance(meta, dict) else {}
        if not isinstance(attrs, dict) or "featbank" not in attrs:
            raise NotAStoreError(f"{self.path!r} is a Zarr group but not a featbank store (no 'featbank' attribute)")
        self._check_version(meta)  # a newer schema may checksum differently: say so first
        if _ROOT_CRC in attrs and _attrs_crc({k: attrs.get(k) for k in _ROOT_KEYS}) != attrs[_ROOT_CRC]:
            raise CorruptDataError(
                f"store {self.path!r}: its root attributes (zarr.json: schema version, current backbone weights) "
                "do not match their checksum; the file is damaged")
        return meta

    def _empty_or_missing(self) -> bool:
        if not self.files.exists(""):
            return True
        return self.files.isdir("") and not self.files.listdir("")

    def _check_version(self, meta: dict[str, Any]) -> None:
        version = meta["attributes"]["featbank"].get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"store {self.path!r} has schema version {version!r}; this featbank reads up to "
                f"{SCHEMA_VERSION}: upgrade featbank"
            )

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"store {self.path!r} is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self.mode == "r":
            raise StoreError(f"store {self.path!r} was opened read-only (mode='r'); reopen with mode='a' to write")

    def _set_meta(self, name: str) -> dict[str, Any] | None:
        try:
            raw = self.files.read(f"{name}/zarr.json")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        try:
            attrs = json.loads(raw).get("attributes", {})
        except (ValueError, AttributeError, UnicodeDecodeError):
            if self.files.exists(f"{name}/segments") or self.files.exists(f"{name}/_commits"):
                raise CorruptDataError(f"store {self.path!r}: set {name!r}: its zarr.json is damaged") from None
            return None
        if not isinstance(attrs, dict) or "featbank_set" not in attrs:
            return None
        if _SET_CRC in attrs and _attrs_crc({k: attrs.get(k) for k in _SET_KEYS}) != attrs[_SET_CRC]:
            raise CorruptDataError(
                f"store {self.path!r}: set {name!r}: its attributes (zarr.json: provenance and layout) do not match "
                "their checksum; the file is damaged")
        return attrs

    # ---- feature sets -----------------------------------------------------------------
    def feature_sets(self) -> list[str]:
        self._check_open()
        found: list[str] = []

        def walk(prefix: str) -> None:
            for child in self.files.listdir(prefix):
                if child.startswith("_") or child == "zarr.json":
                    continue
                key = f"{prefix}/{child}" if prefix else child
                try:
                    attrs = json.loads(self.files.read(f"{key}/zarr.json")).get("attributes", {})
                except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                    continue
                except (ValueError, AttributeError, UnicodeDecodeError):
                    self._set_meta(key)  # raises when the damaged group holds a set's data
                    walk(key)  # a damaged parent group: the sets below it are still there
                    continue
                if isinstance(attrs, dict) and "featbank_set" in attrs:
                    found.append(key)
                else:
                    walk(key)

        walk("")
        return sorted(found)

    def create_set(
        self,
        info: FeatureSetInfo,
        *,
        exist_ok: bool = True,
        compression: str = "default",
        rows_per_chunk: int | None = None,
    ) -> ZarrFeatureSet:
        """Create a feature set (or return the compatible existing one).

        Args:
            info: schema and provenance of the set.
            exist_ok: return an existing compatible set instead of raising.
            compression: inner-chunk codec, one of ``"default"`` (= ``"none"``, see docs/store.md)
                and ``COMPRESSIONS``. Fast direct reads need ``"none"``.
            rows_per_chunk: rows per inner chunk (default: about 128 KiB per chunk).
        """
        self._check_writable()
        parts = info.name.split("/")
        if any(p.startswith("_") or p == "segments" for p in parts):
            raise ValueError(f"feature-set name {info.name!r}: parts may not start with '_' or be 'segments'")
        existing = self._set_meta(info.name)
        if existing is not None:
            old = FeatureSetInfo.from_dict(existing["featbank_set"])
            if not old.compatible_with(info):
                raise conflict_error(old, info)
            if not exist_ok:
                raise FeatureSetConflictError(f"feature set {info.name!r} already exists (exist_ok=False)")
            return self.open_set(info.name, allow_stale=True)
        for k in range(1, len(parts)):
            if self._set_meta("/".join(parts[:k])) is not None:
                raise FeatureSetConflictError(
                    f"feature set {info.name!r} would nest inside set {'/'.join(parts[:k])!r}; choose another name"
                )
        if self.files.exists(info.name):
            raise FeatureSetConflictError(
                f"{info.name!r} already holds other feature sets below it; choose another name"
            )
        if compression == "default":
            compression = "none"
        row_bytes = int(np.prod(info.row_shape)) * storage_dtype(info).itemsize
        layout = Layout.default(row_bytes, compression, rows_per_chunk)
        for k in range(1, len(parts)):
            self._require_group("/".join(parts[:k]))
        try:  # one metadata write: other processes never see the set without its attributes
            attrs = {"featbank_set": info.to_dict(), "featbank_layout": layout.to_dict()}
            zarr.create_group(store=self.zstore, path=info.name, zarr_format=3, overwrite=False,
                              attributes={**attrs, _SET_CRC: _attrs_crc(attrs)})
        except ContainsGroupError:  # another rank created it meanwhile
            return self.create_set(info, exist_ok=True)
        self._require_group(f"{info.name}/segments")
        return self.open_set(info.name, allow_stale=True)

    def _require_group(self, path: str) -> None:
        """Create the group at ``path`` unless it exists; another writer creating it meanwhile is fine."""
        try:
            zarr.open_group(store=self.zstore, path=path, mode="a", zarr_format=3)
        except ContainsGroupError:  # created by another process between zarr's check and its write
            pass

    def open_set(self, name: str, *, allow_stale: bool = False) -> ZarrFeatureSet:
        self._check_open()
        fs = self._sets.get(name)
        if fs is None:
            attrs = self._set_meta(name)
            if attrs is None:
                raise UnknownFeatureSetError(
                    f"no feature set {name!r} in store {self.path!r}; existing sets: {self.feature_sets()}"
                )
            info = FeatureSetInfo.from_dict(attrs["featbank_set"])
            fs = self._sets[name] = ZarrFeatureSet(self, info, Layout(**attrs["featbank_layout"]))
        if not allow_stale and fs.info.backbone:
            current = self.backbone_weights().get(fs.info.backbone)
            if current is not None and current != fs.info.weights_id:
                raise stale_error(fs.info, current)
        return fs

    def delete_set(self, name: str) -> None:
        self._check_writable()
        fs = self.open_set(name, allow_stale=True)
        fs.close()
        del self._sets[name]
        self.files.rm(name)
        parts = name.split("/")
        for k in range(len(parts) - 1, 0, -1):  # parent groups create_set made, now empty
            parent = "/".join(parts[:k])
            if [c for c in self.files.listdir(parent) if c != "zarr.json"]:
                break
            self.files.rm(parent)

    # ---- provenance -------------------------------------------------------------------
    def backbone_weights(self) -> dict[str, str]:
        self._check_open()
        meta = json.loads(self.files.read("zarr.json"))
        return dict(meta["attributes"].get("featbank_backbone_weights", {}))

    def set_backbone_weights(self, backbone: str, weights_id: str) -> list[str]:
        self._check_writable()
        g = zarr.open_group(store=self.zstore, mode="r+", zarr_format=3)
        weights = dict(g.attrs.get("featbank_backbone_weights", {}))
        weights[backbone] = weights_id
        update: dict[str, Any] = {"featbank_backbone_weights": weights}
        if _ROOT_CRC in g.attrs:  # stores created before root checksums keep none
            update[_ROOT_CRC] = _attrs_crc({"featbank": dict(g.attrs["featbank"]), "featbank_backbone_weights": weights})
        g.attrs.update(update)
        return [n for n in self.feature_sets() if self.is_stale(n)]

    def is_stale(self, name: str) -> bool:
        attrs = self._set_meta(name)
        if attrs is None:
            raise UnknownFeatureSetError(f"no feature set {name!r} in store {self.path!r}")
        info = attrs["featbank_set"]
        current = self.backbone_weights().get(info["backbone"])
        return bool(info["backbone"]) and current is not None and current != info["weights_id"]

    # ---- failure log ------------------------------------------------------------------
    def record_failure(self, set_name: str, video_id: str, kind: str, message: str) -> None:
        self._check_writable()
        if self._failure_log is None or self._failure_pid != os.getpid():
            self._failure_log = self.files.open_append(f"{_FAILURES}/{_new_id('f')}.jsonl")
            self._failure_pid = os.getpid()
        rec = {"set": set_name, "video_id": video_id, "kind": kind, "message": message, "time": time.time()}
        self._failure_log.append(encode_record(rec), fsync=self.fsync)

    def failures(self, set_name: str | None = None) -> list[dict[str, Any]]:
        self._check_open()
        records = []
        for fname in self.files.listdir(_FAILURES):
            records += parse_log(self.files.read(f"{_FAILURES}/{fname}"))[0]
        sets = set(self.feature_sets())

        def committed(s: str, v: str) -> bool:
            if s not in sets:
                return False
            fs = self.open_set(s, allow_stale=True)
            fs.refresh()
            return v in fs

        return latest_failures(records, set_name, committed)

    # ---- maintenance ------------------------------------------------------------------
    def validate(self, quick: bool = False) -> list[str]:
        """Problems of every set (see ``ZarrFeatureSet.check``); empty when the store is sound."""
        return self.check(quick=quick)[0]

    def check(self, quick: bool = False) -> tuple[list[str], list[str]]:
        """``(problems, notes)`` of the whole store: every set (``ZarrFeatureSet.check``), groups
        that look like a feature set whose attributes are gone, and the failure log."""
        self._check_open()
        problems: list[str] = []
        notes: list[str] = []
        names: list[str] = []
        try:
            names = self.feature_sets()
        except StoreError as e:
            problems.append(str(e))
        for name in names:
            try:
                p, n = self.open_set(name, allow_stale=True).check(quick=quick)
            except (StoreError, OSError, ValueError, KeyError) as e:
                p, n = [f"set {name!r}: cannot be read ({e})"], []
            problems += p
            notes += n
        problems += [f"{key!r} holds feature-set data (segments/, _commits/) but its zarr.json names no feature set: "
                     "the set's attributes are damaged" for key in self._headless_sets()]
        for fname in self.files.listdir(_FAILURES):
            scan = scan_log(self.files.read(f"{_FAILURES}/{fname}"))
            problems += [f"failure log {_FAILURES}/{fname} is damaged at line {d.line}" for d in scan.damage]
        return problems, notes

    def _headless_sets(self) -> list[str]:
        """Groups with a set's data folders but without the set attributes."""
        found: list[str] = []

        def walk(prefix: str) -> None:
            for child in self.files.listdir(prefix):
                if child.startswith("_") or child == "zarr.json":
                    continue
                key = f"{prefix}/{child}" if prefix else child
                if not self.files.isdir(key):
                    continue
                try:
                    is_set = self._set_meta(key) is not None
                except StoreError:
                    continue  # reported by feature_sets / open_set
                if is_set:
                    continue
                if self.files.exists(f"{key}/segments") or self.files.exists(f"{key}/_commits"):
                    found.append(key)
                else:
                    walk(key)

        walk("")
        return found

    def salvage_report(self) -> list[str]:
        """What a ``salvage=True`` reading left out, one line each, over the sets opened so far
        (open each set first: ``for n in store.feature_sets(): store.open_set(n).video_ids()``)."""
        out: list[str] = []
        for name in sorted(self._sets):
            fs = self._sets[name]
            if fs._index is not None:
                out += fs.lost
        return out

    def compact(self) -> None:
        """Consolidate every set into one read-optimised segment (run it with no other writer active)."""
        for name in self.feature_sets():
            self.open_set(name, allow_stale=True).compact()

    def disk_usage(self) -> tuple[int, int]:
        """``(bytes, files)`` under the store root: local stores count allocated blocks (shard files
        are sparse until filled, so their apparent size overstates the disk used); URLs ask fsspec."""
        if self.files.local:
            total = count = 0
            for dirpath, _, fnames in os.walk(self.files.root):
                for f in fnames:
                    total += os.stat(os.path.join(dirpath, f)).st_blocks * 512
                    count += 1
            return total, count
        found = self.files.fs.find(self.files.root, detail=True)
        return sum(int(v.get("size", 0)) for v in found.values()), len(found)

    def close(self) -> None:
        if self._closed:
            return
        for fs in self._sets.values():
            fs.close()
        if self._failure_log is not None and self._failure_pid == os.getpid():
            self._failure_log.close()
        self._closed = True


def open_store(path: str | os.PathLike, mode: str = "a", **storage_options: Any) -> ZarrStore:
    """Open (or create) a featbank Zarr store.

    Args:
        path: local folder, ``file://`` or fsspec URL (``memory://...``; ``s3://bucket/x.zarr`` writes
            immutable objects in commit batches, see store/_objects.py).
        mode: ``"r"``, ``"a"`` (default) or ``"w"``; see ``ZarrStore``.
        **storage_options: ``fsync=True`` and fsspec options.

    Raises:
        NotAStoreError: not a featbank store (or missing in mode ``"r"``); names the path.
        SchemaVersionError: written by a newer schema.
    """
    return ZarrStore(path, mode, **storage_options)


__all__ = ["COMPRESSIONS", "ZarrFeatureSet", "ZarrStore", "open_store"]
