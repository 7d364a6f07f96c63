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

import datetime as _dt
import io
import json
import os
import threading
import time
import uuid
from operator import itemgetter
from typing import Any, Sequence

import numpy as np
import zarr
from zarr.errors import ContainsGroupError

from ._files import Appender, Files
from ._index import VideoIndex, encode_record, meta_record, parse_log
from ._rows import check_video, decode, meta_equal, prepare_rows, storage_dtype
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
_FAILURES = "_featbank/failures"


def _new_id(prefix: str) -> str:
    return f"{prefix}-{time.time_ns():x}-{uuid.uuid4().hex[:8]}"


class _Writer:
    """This process's segment of one feature set: rows go to ``seg``, commit lines to ``log``."""

    def __init__(self, name: str, seg: Segment, log: Appender) -> None:
        self.name, self.seg, self.log = name, seg, log
        self.next_row = 0
        self.pid = os.getpid()


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
        self._ends: dict[str, int] = {}  # committed row count per segment (as far as known)
        self._lock = threading.RLock()

    # ---- index ------------------------------------------------------------------------
    @property
    def index(self) -> VideoIndex:
        if self._index is None:
            self.refresh()
        return self._index  # type: ignore[return-value]

    def refresh(self) -> None:
        """Reload the index from disk (sees videos committed by other writers since opening)."""
        for attempt in range(3):
            try:
                return self._load_index()
            except FileNotFoundError:  # a compaction switched generations under us: read the new one
                if attempt == 2:
                    raise

    def _load_index(self) -> None:
        files, key = self._store.files, self._key
        with self._lock:
            consumed: dict[str, int] = {}
            index = VideoIndex()
            if files.exists(f"{key}/_index/CURRENT"):
                gen = json.loads(files.read(f"{key}/_index/CURRENT"))["gen"]
                doc = json.loads(files.read(f"{key}/_index/{gen}.json"))
                with np.load(io.BytesIO(files.read(f"{key}/_index/{gen}.npz"))) as z:
                    arrays = {k: z[k] for k in z.files}

                def load_cols(gen: str = gen) -> dict[str, list[Any]]:
                    return json.loads(files.read(f"{key}/_index/{gen}.meta.json"))

                index = VideoIndex.from_arrays(doc["segments"], arrays, load_cols)
                consumed = {k: int(v) for k, v in doc["consumed"].items()}
            pending = []
            sizes = dict(consumed)
            for fname in files.listdir(f"{key}/_commits"):
                if not fname.endswith(".jsonl"):
                    continue
                seg = fname[: -len(".jsonl")]
                start = consumed.get(seg, 0)
                records, good = parse_log(files.read(f"{key}/_commits/{fname}", offset=start))
                sizes[seg] = start + good
                pending += records
            pending.sort(key=itemgetter("t"))  # stable: each log keeps its own order on ties
            index.apply_all(pending)
            self._index, self._log_sizes = index, sizes
            seg_a, row_a, n_a = index.arrays()
            end_a = np.zeros(len(index.segments), np.int64)
            np.maximum.at(end_a, seg_a, row_a + n_a)
            ends = dict(zip(index.segments, end_a.tolist()))
            for r in pending:  # overwritten rows count too: they stay on disk
                ends[r["s"]] = max(ends.get(r["s"], 0), r["r"] + r["n"])
            for name, seg_obj in self._segments.items():
                seg_obj.known_rows = max(seg_obj.known_rows, ends.get(name, 0))
            self._ends = ends

    def _segment(self, name: str) -> Segment:
        seg = self._segments.get(name)
        if seg is None:
            key = f"{self._key}/segments/{name}"
            try:
                meta = json.loads(self._store.files.read(f"{key}/feats/zarr.json"))
            except FileNotFoundError:
                raise CorruptDataError(f"set {self.name!r}: segment {name} is missing its feats array") from None
            shard_rows = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
            seg = Segment(self._store.zstore, key, self.info.row_shape, self._sdtype, self.layout,
                          self._store.local_root, shard_rows)
            seg.known_rows = self._ends.get(name, 0) if self._index is not None else 0
            seg.durable = self._store.fsync
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
                    raise VideoConflictError(
                        f"video {vid!r} is already committed in feature set {self.name!r} with different "
                        "content; pass overwrite=True to replace it"
                    )
            w = self._writer_segment()
            row0, n = w.next_row, len(stored)
            times = np.stack([as_read.starts, as_read.ends], axis=1)  # (N, 2)
            w.seg.write(row0, stored, times, as_read.frame_idx)
            rec = {"v": vid, "s": w.name, "r": row0, "n": n, "m": meta_record(meta),
                   "nf": bool(allow_nonfinite), "t": time.time_ns()}
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
        uniq = np.unique(np.asarray(pos, dtype=np.int64))
        order = uniq[np.lexsort((row_a[uniq], seg_a[uniq]))]
        done: dict[int, VideoRows] = {}
        gap = self.layout.rows_per_chunk
        start = 0
        while start < len(order):
            s = seg_a[order[start]]
            lo = row_a[order[start]]
            hi = lo + n_a[order[start]]
            stop = start + 1
            seg = self._segment(self.index.segments[s])
            max_rows = seg.rows_per_shard
            while stop < len(order):
                j = order[stop]
                if seg_a[j] != s or row_a[j] > hi + gap or row_a[j] + n_a[j] - lo > max_rows:
                    break
                hi = max(hi, row_a[j] + n_a[j])
                stop += 1
            if seg.direct:  # one pread per video, in location order, straight into its own array
                for j in order[start:stop]:
                    done[int(j)] = self._read_pos(int(j))
                start = stop
                continue
            buf = seg.read(int(lo), int(hi))
            t, f = seg.times(int(lo), int(hi))
            for j in order[start:stop]:
                a, b = int(row_a[j] - lo), int(row_a[j] + n_a[j] - lo)
                tj = t[a:b].copy()
                done[int(j)] = VideoRows(decode(self.info, buf[a:b].copy()), tj[:, 0], tj[:, 1], f[a:b].copy())
            start = stop
        out, seen = [], set()
        for p in pos:  # a repeated id gets its own copy
            out.append(_copy_rows(done[p]) if p in seen else done[p])
            seen.add(p)
        return out

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
    def validate(self) -> list[str]:
        """Problems of this set: index entries, shard files, rows, times, metadata, finite values."""
        self.refresh()
        idx = self.index
        problems: list[str] = []
        seg_a, row_a, n_a = idx.arrays()
        order = np.lexsort((row_a, seg_a))
        for k in range(1, len(order)):  # live videos must not share rows
            p, q = order[k - 1], order[k]
            if seg_a[p] == seg_a[q] and row_a[q] < row_a[p] + n_a[p]:
                problems.append(f"set {self.name!r}: videos {idx.ids[p]!r} and {idx.ids[q]!r} share rows")
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
                if len(ref) < b:
                    problems.append(f"set {self.name!r}, video {vid!r}: rows beyond the end of segment {seg.key}")
                    continue
                if not np.array_equal(ref[a:b].view(np.uint8), fast[a:b].view(np.uint8)):
                    problems.append(f"set {self.name!r}, video {vid!r}: shard bytes disagree with the zarr reading")
                rows = VideoRows(decode(self.info, ref[a:b]), t[a:b, 0], t[a:b, 1], f[a:b])
                problems += check_video(self.info, vid, rows, idx.meta(j), idx.n[j], idx.nonfinite[j])
        return problems

    def compact(self) -> bool:
        """Copy every live video into one read-optimised segment; returns False when already compact."""
        self._store._check_writable()
        files, key = self._store.files, self._key
        with self._lock:
            self._close_writer()
            self.refresh()
            idx = self.index
            current = [s for s in files.listdir(f"{key}/segments") if s != "zarr.json"]
            if len(current) == 1 and current[0].startswith("c-") and not files.listdir(f"{key}/_commits"):
                return False
            seg_a, row_a, n_a = idx.arrays()
            total = int(n_a.sum())
            name = _new_id("c")
            c = self.layout.rows_per_chunk
            rows_per_shard = min(self.layout.read_rows_per_shard, max(c, -(-total // c) * c))
            new = Segment.create(self._store.zstore, f"{key}/segments/{name}", self.info.row_shape, self._sdtype,
                                 self.layout, self._store.local_root, total, rows_per_shard)
            new.durable = True  # the new generation must be on disk before the pointer switches to it
            new_index = VideoIndex()
            new_index.segment_id(name)
            block = np.empty((min(total, rows_per_shard), *self.info.row_shape), self._sdtype)
            tblock = np.empty((len(block), 2), np.float64)
            fblock = np.empty((len(block), 2), np.int64)
            filled, written = 0, 0
            for i in range(len(idx)):
                seg = self._segment(idx.segments[seg_a[i]])
                r, n = int(row_a[i]), int(n_a[i])
                done = 0
                while done < n:
                    take = min(n - done, len(block) - filled)
                    seg.read_into(r + done, r + done + take, block[filled:filled + take])
                    t, f = seg.times(r + done, r + done + take)
                    tblock[filled:filled + take], fblock[filled:filled + take] = t, f
                    filled += take
                    done += take
                    if filled == len(block):
                        new.write(written, block, tblock, fblock)
                        written += filled
                        filled = 0
                new_index.apply({"v": idx.ids[i], "s": name, "r": written + filled - n, "n": n,
                                 "m": {k: idx.cols[k][i] for k in idx.cols}, "nf": idx.nonfinite[i]})
            if filled:
                new.write(written, block[:filled], tblock[:filled], fblock[:filled])
            doc = {"segments": new_index.segments, "consumed": self._log_sizes,
                   "created": _dt.datetime.now(_dt.timezone.utc).isoformat()}
            npz = io.BytesIO()
            np.savez(npz, **new_index.to_arrays())
            files.write_atomic(f"{key}/_index/{name}.npz", npz.getvalue())
            files.write_atomic(f"{key}/_index/{name}.meta.json", json.dumps(new_index.cols).encode())
            files.write_atomic(f"{key}/_index/{name}.json", json.dumps(doc).encode())
            files.write_atomic(f"{key}/_index/CURRENT", json.dumps({"gen": name}).encode())
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
        **storage_options: passed to fsspec for URLs.

    Raises:
        NotAStoreError: the path is not a featbank store (or missing in mode ``"r"``).
        SchemaVersionError: the store was written by a newer schema.
    """

    def __init__(self, path: str | os.PathLike, mode: str = "a", *, fsync: bool = False, **storage_options: Any):
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} not in {MODES}")
        self.path, self.mode, self.fsync = os.fspath(path), mode, fsync
        self.files = Files(self.path, **storage_options)
        self.local_root = self.files.root if self.files.local else None
        self._sets: dict[str, ZarrFeatureSet] = {}
        self._closed = False
        self._failure_log: Appender | None = None
        self._failure_pid = 0
        root_meta = self._root_meta()
        if root_meta is None or mode == "w":
            if mode == "r":
                raise NotAStoreError(f"{self.path!r} is not a featbank store (no such store; open with mode='a' to create)")
            if root_meta is None and not self._empty_or_missing():
                raise NotAStoreError(
                    f"{self.path!r} exists and is not a featbank store; refusing to write into it (choose a new path)"
                )
            if root_meta is not None:
                self._check_version(root_meta)
                self.files.rm("")
        else:
            self._check_version(root_meta)
        self.zstore = self._zarr_store(storage_options, read_only=mode == "r")
        if root_meta is None or mode == "w":
            g = zarr.open_group(store=self.zstore, mode="w", zarr_format=3)
            g.attrs.update({"featbank": {"schema_version": SCHEMA_VERSION, "format": "featbank-store"},
                            "featbank_backbone_weights": {}})

    # ---- plumbing ---------------------------------------------------------------------
    def _zarr_store(self, storage_options: dict[str, Any], read_only: bool) -> Any:
        if self.files.local:
            return zarr.storage.LocalStore(self.files.root, read_only=read_only)
        return zarr.storage.FsspecStore.from_url(self.path, storage_options=storage_options or None,
                                                 read_only=read_only)

    def _root_meta(self) -> dict[str, Any] | None:
        try:
            meta = json.loads(self.files.read("zarr.json"))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except ValueError:
            raise NotAStoreError(f"{self.path!r}: zarr.json is not valid JSON; not a featbank store") from None
        if "featbank" not in meta.get("attributes", {}):
            raise NotAStoreError(f"{self.path!r} is a Zarr group but not a featbank store (no 'featbank' attribute)")
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
            attrs = json.loads(self.files.read(f"{name}/zarr.json")).get("attributes", {})
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        return attrs if "featbank_set" in attrs else None

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
                except (FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError):
                    continue
                if "featbank_set" in attrs:
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
            zarr.open_group(store=self.zstore, path="/".join(parts[:k]), mode="a", zarr_format=3)
        try:  # one metadata write: other processes never see the set without its attributes
            zarr.create_group(store=self.zstore, path=info.name, zarr_format=3, overwrite=False,
                              attributes={"featbank_set": info.to_dict(), "featbank_layout": layout.to_dict()})
        except ContainsGroupError:  # another rank created it meanwhile
            return self.create_set(info, exist_ok=True)
        zarr.open_group(store=self.zstore, path=f"{info.name}/segments", mode="a", zarr_format=3)
        return self.open_set(info.name, allow_stale=True)

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
        g.attrs.update({"featbank_backbone_weights": weights})
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
    def validate(self) -> list[str]:
        self._check_open()
        problems = []
        for name in self.feature_sets():
            try:
                problems += self.open_set(name, allow_stale=True).validate()
            except (StoreError, OSError, ValueError, KeyError) as e:
                problems.append(f"set {name!r}: cannot load its index ({e})")
        return problems

    def compact(self) -> None:
        """Consolidate every set into one read-optimised segment (run it with no other writer active)."""
        for name in self.feature_sets():
            self.open_set(name, allow_stale=True).compact()

    def disk_usage(self) -> tuple[int, int]:
        """``(bytes, files)`` under the store root (local stores walk the folder; URLs ask fsspec)."""
        if self.files.local:
            total = count = 0
            for dirpath, _, fnames in os.walk(self.files.root):
                for f in fnames:
                    total += os.path.getsize(os.path.join(dirpath, f))
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
        path: local folder, ``file://`` or fsspec URL (``memory://...``).
        mode: ``"r"``, ``"a"`` (default) or ``"w"``; see ``ZarrStore``.
        **storage_options: ``fsync=True`` and fsspec options.

    Raises:
        NotAStoreError: not a featbank store (or missing in mode ``"r"``); names the path.
        SchemaVersionError: written by a newer schema.
    """
    return ZarrStore(path, mode, **storage_options)


__all__ = ["COMPRESSIONS", "ZarrFeatureSet", "ZarrStore", "open_store"]
