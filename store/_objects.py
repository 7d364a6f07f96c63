"""Feature sets on object stores (S3 and other fsspec object stores): immutable objects only.

Object stores have no append, no rename and no in-place write, so a writer there never
touches an object twice. It gathers videos in memory and commits them in *batches*: when
``BatchPolicy.videos`` videos, ``seconds`` or ``bytes`` is reached (checked as videos are
written) and when the set is closed, refreshed or compacted, it writes

1. a new segment ``SET/segments/w-<writer>-<n>`` holding exactly the batch's rows, every
   shard and chunk object written once and whole (plain Zarr v3 arrays, so zarr-python
   reads them), then
2. the batch's commit object ``SET/_commits/w-<writer>-<n>.jsonl``: the same checksummed
   records as a local commit log (per-video crc32c of the rows and times), plus a last
   record ``{"batch": NAME, "k": COUNT}``, written with ``If-None-Match: *``.

Readers list ``_commits/`` and read every commit object (in parallel); one whose checksums,
JSON or record count do not verify (a torn or partial upload, which S3's atomic PUTs never
make themselves) is ignored as a whole: its videos are not visible, a rerun writes them
again, and ``validate`` names it. A killed writer loses at most its uncommitted batch.

``compact`` writes a new generation (a ``c-*`` segment, whole shards, and its index files
under new names), then switches ``_index/CURRENT`` with a conditional PUT: ``If-Match`` the
ETag it read before loading the index (``If-None-Match: *`` when there was none), so two
compactions racing cannot both switch. Other object stores (no conditional PUT through
fsspec) rely on the single-compactor rule of docs/store.md.

Reads fetch byte ranges: a shard's index once (a suffix range, crc32c verified), then one
ranged GET per run of back-to-back chunks, all requests of a call in parallel
(``cat_ranges``). ``cache_dir`` keeps whole segment objects (immutable: a segment name is
never reused) in a local folder for repeated epochs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import google_crc32c
import numpy as np
import zarr

from ._index import encode_record, scan_log
from ._segments import _EMPTY, _INDEX_CRC_BYTES, CorruptDataError, Segment, _decoder
from .errors import StoreError

if TYPE_CHECKING:
    from ._files import Files
    from .zarr_store import ZarrFeatureSet


@dataclass(frozen=True)
class BatchPolicy:
    """When a writer commits its batch: whichever limit is reached first (and on close)."""

    videos: int = 64
    seconds: float = 60.0
    bytes: int = 256 << 20


def batch_records(scan: Any, name: str) -> list[dict[str, Any]] | None:
    """The video records of a commit object, or None when it is torn, damaged or incomplete."""
    recs = scan.records
    if scan.damage or scan.torn or not recs:
        return None
    last = recs[-1]
    if last.get("batch") != name or last.get("k") != len(recs) - 1:
        return None
    return recs[:-1]


def _is_precondition(e: BaseException) -> bool:
    text = f"{type(e).__name__} {e}"
    return any(s in text for s in ("PreconditionFailed", "412", "pre-condition")) or isinstance(e, FileExistsError)


class Objects:
    """Object-store access of one ``ZarrStore`` (``store.objects``)."""

    def __init__(self, files: "Files", policy: BatchPolicy, cache_dir: str | None) -> None:
        self.files, self.fs, self.policy = files, files.fs, policy
        self.conditional = "s3" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        cache_dir = cache_dir or os.environ.get("FEATBANK_CACHE_DIR") or None
        self.cache = None
        self.whole: OrderedDict[str, bytes] | None = None  # while compacting: whole segment objects, LRU
        if cache_dir:  # one folder per store root (the root names no credentials)
            self.cache = os.path.join(os.path.abspath(cache_dir), hashlib.sha1(files.root.encode()).hexdigest()[:16])

    # ---- small objects ----------------------------------------------------------------
    def read_blobs(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Whole objects, fetched in parallel; missing ones are left out."""
        if not keys:
            return {}
        paths = {self.files.path(k): k for k in keys}
        got = self.fs.cat(list(paths), on_error="omit")
        return {paths[p]: v for p, v in got.items() if isinstance(v, bytes)}

    def put_new(self, key: str, data: bytes) -> None:
        """Write an object that must not exist yet (``If-None-Match: *`` on S3)."""
        path = self.files.path(key)
        if not self.conditional:
            self.fs.pipe_file(path, data)
            return
        try:
            self.fs.pipe_file(path, data, mode="create")
        except Exception as e:
            if _is_precondition(e):
                raise StoreError(f"object {key} already exists; objects of a store are written once") from None
            raise

    def etag(self, key: str) -> str | None:
        """ETag of an object now (None when it does not exist)."""
        path = self.files.path(key)
        try:
            self.fs.invalidate_cache(path)
            info = self.fs.info(path)
        except FileNotFoundError:
            return None
        return info.get("ETag") or info.get("etag")

    def switch_pointer(self, key: str, data: bytes, etag: str | None) -> None:
        """Replace the pointer object only if it is still the one read as ``etag``."""
        path = self.files.path(key)
        if not self.conditional:  # single-compactor rule (docs/store.md)
            self.fs.pipe_file(path, data)
            return
        try:
            if etag is None:
                self.fs.pipe_file(path, data, mode="create")
            else:
                self.fs.pipe_file(path, data, IfMatch=etag)
        except Exception as e:
            if _is_precondition(e):
                raise StoreError(f"{key} was switched by another compaction meanwhile; nothing of this one was "
                                 "kept: run `featbank store compact` again") from None
            raise

    # ---- writes -----------------------------------------------------------------------
    def batch_writer(self, fset: "ZarrFeatureSet", writer_id: str, number: int) -> "BatchWriter":
        return BatchWriter(self, fset, f"{writer_id}-{number:06d}")

    # ---- reads ------------------------------------------------------------------------
    def _cached(self, path: str) -> str:
        """Local copy of an immutable segment object (fetched whole on first use)."""
        assert self.cache is not None
        rel = path[len(self.files.root):].lstrip("/")
        local = os.path.join(self.cache, *rel.split("/"))
        if not os.path.exists(local):
            data = self.fs.cat_file(path)
            os.makedirs(os.path.dirname(local), exist_ok=True)
            tmp = f"{local}.{uuid.uuid4().hex}.partial"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, local)
        return local

    @contextlib.contextmanager
    def compacting(self, budget: int = 512 << 20) -> Iterator[None]:
        """Compaction reads every row in commit order: fetch each segment object whole, once, and
        keep the most recent ones in memory (up to ``budget`` bytes), instead of one GET per video."""
        self.whole = OrderedDict()
        self._whole_budget = budget
        try:
            yield
        finally:
            self.whole = None

    def _fetch_whole(self, paths: list[str], starts: list[int], ends: list[int | None]) -> list[bytes]:
        assert self.whole is not None
        missing = sorted({p for p in paths if p not in self.whole})
        if missing:
            got = self.fs.cat(missing, on_error="return")
            for p in missing:
                g = got.get(p)
                if not isinstance(g, bytes):
                    raise CorruptDataError(f"object {p[len(self.files.root):].lstrip('/')} is missing or unreadable")
                self.whole[p] = g
        out = []
        for p, s, e in zip(paths, starts, ends):
            self.whole.move_to_end(p)
            data = self.whole[p]
            out.append(data[s:] if s < 0 else data[s:e])
        total = sum(len(v) for v in self.whole.values())
        while len(self.whole) > 1 and total > self._whole_budget:
            total -= len(self.whole.popitem(last=False)[1])
        return out

    def fetch(self, paths: list[str], starts: list[int], ends: list[int | None]) -> list[bytes]:
        """Byte ranges ``[start, end)`` of objects (negative start: a suffix), all in parallel."""
        if not paths:
            return []
        if self.whole is not None:
            return self._fetch_whole(paths, starts, ends)
        if self.cache is not None:
            out = []
            for p, s, e in zip(paths, starts, ends):
                with open(self._cached(p), "rb") as f:
                    if s < 0:
                        f.seek(s, os.SEEK_END)
                        out.append(f.read())
                    else:
                        f.seek(s)
                        out.append(f.read((e - s) if e is not None else -1))
            return out
        got = self.fs.cat_ranges(paths, starts, ends, on_error="return")
        for p, g in zip(paths, got):
            if isinstance(g, FileNotFoundError):
                raise CorruptDataError(f"object {p[len(self.files.root):].lstrip('/')} is missing") from None
            if isinstance(g, BaseException):
                raise g
        return got

    def read_rows(self, requests: list[tuple[Segment, int, int, np.ndarray]]) -> None:
        """Fill each ``out`` with stored rows ``[a, b)`` of its segment, all ranged GETs in parallel."""
        readers = [seg.remote for seg, _, _, _ in requests]
        need = {(r, k) for r, (seg, a, b, _) in zip(readers, requests) if b > a
                for k in range(a // seg.rows_per_shard, (b - 1) // seg.rows_per_shard + 1) if k not in r.index}
        if need:
            need_l = sorted(need, key=lambda x: (id(x[0]), x[1]))
            raws = self.fetch([r.shard_path(k) for r, k in need_l], [-r.index_bytes for r, _ in need_l],
                              [None] * len(need_l))
            for (r, k), raw in zip(need_l, raws):
                r.set_index(k, raw)
        paths, starts, ends, sinks = [], [], [], []
        for r, (seg, a, b, out) in zip(readers, requests):
            for path, s, e, sink in r.plan(a, b, out):
                paths.append(path)
                starts.append(s)
                ends.append(e)
                sinks.append(sink)
        for data, sink in zip(self.fetch(paths, starts, ends), sinks):
            sink(data)


class RemoteShards:
    """Ranged reads of one segment's ``feats`` shards on an object store (``Segment.remote``)."""

    def __init__(self, objects: Objects, seg: Segment) -> None:
        self.objects, self.seg = objects, seg
        self.n_chunks = seg.rows_per_shard // seg.layout.rows_per_chunk
        self.index_bytes = self.n_chunks * 16 + _INDEX_CRC_BYTES
        self.index: dict[int, tuple[list[int], list[int]]] = {}  # shard -> (offsets, nbytes); -1: empty
        self.decoder = _decoder(seg.layout.compression) if seg.layout.compression != "none" else None

    def shard_path(self, k: int) -> str:
        return self.objects.files.path("/".join([self.seg.key, "feats", "c", str(k)] + ["0"] * len(self.seg.row_shape)))

    def set_index(self, k: int, raw: bytes) -> None:
        if len(raw) != self.index_bytes or google_crc32c.value(raw[:-_INDEX_CRC_BYTES]) != int.from_bytes(
                raw[-_INDEX_CRC_BYTES:], "little"):
            raise CorruptDataError(f"segment {self.seg.key}: the index of shard {k} does not match its checksum")
        index = np.frombuffer(raw[:-_INDEX_CRC_BYTES], dtype="<u8").reshape(-1, 2)
        present = index[:, 0] != _EMPTY
        offs = np.where(present, index[:, 0], 0).astype(np.int64)
        offs[~present] = -1
        nb = np.where(present, index[:, 1], 0).astype(np.int64)
        if self.decoder is None and (present & (nb != self.seg.chunk_bytes)).any():
            raise CorruptDataError(f"segment {self.seg.key}: shard {k} holds a chunk of the wrong size")
        self.index[k] = (offs.tolist(), nb.tolist())

    def plan(self, a: int, b: int, out: np.ndarray) -> list[tuple[str, int, int, Any]]:
        """``(path, start, end, sink)`` per ranged GET that fills rows ``[a, b)`` of ``out``."""
        seg = self.seg
        c, s, rb = seg.layout.rows_per_chunk, seg.rows_per_shard, seg.row_bytes
        flat = out.reshape(-1).view(np.uint8)
        plans: list[tuple[str, int, int, Any]] = []
        pos = a
        while pos < b:
            k, r = divmod(pos, s)
            offs, nbytes = self.index[k]
            stop = min(b, (k + 1) * s)
            ci = r // c
            if offs[ci] < 0:  # never written: the fill value
                take = min(stop - pos, (ci + 1) * c - r)
                flat[(pos - a) * rb:(pos - a + take) * rb] = 0
            elif self.decoder is not None:  # one compressed chunk
                take = min(stop - pos, (ci + 1) * c - r)
                dst, lo = out[pos - a:pos - a + take], r - ci * c

                def sink(data: bytes, dst: np.ndarray = dst, lo: int = lo) -> None:
                    chunk = np.frombuffer(self.decoder.decode(data), dtype=seg.dtype.newbyteorder("<"))
                    dst[...] = chunk.reshape(c, *seg.row_shape)[lo:lo + len(dst)]

                plans.append((self.shard_path(k), offs[ci], offs[ci] + nbytes[ci], sink))
            else:  # one GET across the chunks stored back to back from here
                cj = ci
                while cj + 1 < len(offs) and (cj + 1) * c < stop - k * s and offs[cj + 1] == offs[cj] + seg.chunk_bytes:
                    cj += 1
                take = min(stop - pos, (cj + 1) * c - r)
                src0 = offs[ci] + (r - ci * c) * rb
                dst_b = flat[(pos - a) * rb:(pos - a + take) * rb]

                def sink(data: bytes, dst_b: np.ndarray = dst_b) -> None:
                    if len(data) != len(dst_b):
                        raise CorruptDataError(f"segment {seg.key}: a shard object ends early")
                    dst_b[:] = np.frombuffer(data, np.uint8)

                plans.append((self.shard_path(k), src0, src0 + take * rb, sink))
            pos += take
        return plans

    def read_into(self, a: int, b: int, out: np.ndarray) -> None:
        if not out.flags.c_contiguous:
            tmp = np.empty(out.shape, self.seg.dtype)
            self.read_into(a, b, tmp)
            out[...] = tmp
            return
        self.objects.read_rows([(self.seg, a, b, out)])


class _BatchRows:
    """The rows of an open batch, kept in memory until it is committed (``_Writer.seg``)."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.nbytes = 0
        self.known_rows = 0

    def write(self, row0: int, stored: np.ndarray, times: np.ndarray, frames: np.ndarray) -> None:
        self.parts.append((np.array(stored), np.array(times, np.float64), np.array(frames, np.int64)))
        self.nbytes += stored.nbytes


class BatchWriter:
    """One commit batch of a writer: ``_Writer``'s ``seg`` buffers rows, ``log`` buffers records.

    ``log.append`` commits the batch when the policy says so; ``close`` commits what is left.
    """

    def __init__(self, objects: Objects, fset: "ZarrFeatureSet", name: str) -> None:
        self.objects, self.fset, self.name = objects, fset, name
        self.seg = _BatchRows()
        self.lines: list[bytes] = []
        self.started = time.monotonic()
        self.done = False

    @property
    def log(self) -> "BatchWriter":
        return self

    def append(self, data: bytes, fsync: bool = False) -> None:
        self.lines.append(data)
        p = self.objects.policy
        if (len(self.lines) >= p.videos or self.seg.nbytes >= p.bytes
                or time.monotonic() - self.started >= p.seconds):
            self.flush()

    def flush(self) -> None:
        """Write the batch's segment (every object whole, once), then its commit object."""
        if self.done:
            return
        self.done = True
        if self.fset._writer is not None and self.fset._writer.log is self:
            self.fset._writer = None  # the next write opens the next batch
        if not self.lines:
            return
        fset, parts = self.fset, self.seg.parts
        stored = np.concatenate([p[0] for p in parts])
        times = np.concatenate([p[1] for p in parts])
        frames = np.concatenate([p[2] for p in parts])
        total, c = len(stored), fset.layout.rows_per_chunk
        rows_per_shard = min(fset.layout.read_rows_per_shard, max(c, -(-total // c) * c))
        key = f"{fset._key}/segments/{self.name}"
        # encoded in memory by zarr-python, then every object uploaded whole, in parallel, once
        encoded: dict[str, Any] = {}
        seg = Segment.create(zarr.storage.MemoryStore(store_dict=encoded), key, fset.info.row_shape, fset._sdtype,
                             fset.layout, None, total, rows_per_shard)
        seg.write(0, stored, times, frames)
        seg.close()
        mine = {self.objects.files.path(k): v.to_bytes() for k, v in encoded.items() if k.startswith(key + "/")}
        self.objects.fs.pipe(mine)  # (zarr also wrote parent groups in memory: those exist already)
        self.seg.parts = []
        self._commit(b"".join(self.lines) + encode_record({"batch": self.name, "k": len(self.lines)}))

    def _commit(self, body: bytes) -> None:
        """Write the commit object (after the batch's data: the moment the batch becomes visible)."""
        self.objects.put_new(f"{self.fset._key}/_commits/{self.name}.jsonl", body)

    def close(self) -> None:
        self.flush()


def read_commit_objects(objects: Objects, key: str, names: list[str]) -> dict[str, Any]:
    """``scan_log`` of each commit object ``_commits/NAME``, fetched in parallel (missing: left out)."""
    blobs = objects.read_blobs([f"{key}/_commits/{n}" for n in names])
    return {k.rsplit("/", 1)[1]: scan_log(v) for k, v in blobs.items()}
