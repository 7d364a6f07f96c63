"""Segments: the concatenated row arrays of a feature set, written by zarr-python, read fast.

A segment is a Zarr v3 group with three arrays that share their row axis:

* ``feats``     ``(R, *row_shape)`` in the storage dtype, sharded: inner chunks of
  ``rows_per_chunk`` rows inside shards of ``rows_per_shard`` rows;
* ``times``     ``(R, 2)`` float64 start/end seconds;
* ``frame_idx`` ``(R, 2)`` int64 first/last source frame.

Writes go through zarr-python (whose local store replaces a shard file atomically), so a
shard is always a valid Zarr shard. On local folders with uncompressed inner chunks, reads
skip zarr-python: each shard's index is decoded once and rows are copied straight out of a
read-only memory map of the shard file (``ShardMap``). Everything else reads with zarr-python.
"""

from __future__ import annotations

import mmap
import os
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import google_crc32c
import numpy as np
import zarr
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

from .errors import StoreError

COMPRESSIONS = ("none", "lz4", "zstd", "blosc-zstd", "gzip")
_EMPTY = np.uint64(2**64 - 1)
_INDEX_CRC_BYTES = 4
TIME_CHUNK_ROWS = 1 << 16  # rows per chunk of the small times / frame_idx arrays


def _replace_file(path: str, parts: tuple[Any, ...]) -> None:
    """Write ``parts`` to a temporary file, then rename it over ``path`` (atomic on POSIX)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex}.partial"
    with open(tmp, "wb") as f:
        for part in parts:
            f.write(part)
    os.replace(tmp, path)


class CorruptDataError(StoreError):
    """A shard file on disk is truncated or its index points outside the file."""


def compressors_for(compression: str) -> Any:
    """zarr ``compressors=`` argument for a compression name (see ``COMPRESSIONS``)."""
    if compression == "none":
        return None
    if compression == "lz4":
        return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
    if compression == "blosc-zstd":
        return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")
    if compression == "zstd":
        return ZstdCodec(level=3)
    if compression == "gzip":
        return GzipCodec(level=5)
    raise ValueError(f"unknown compression {compression!r}; choose one of {COMPRESSIONS}")


@dataclass(frozen=True)
class Layout:
    """How a feature set lays rows out on disk (stored in the set's attributes).

    Attributes:
        compression: one of ``COMPRESSIONS`` (inner-chunk codec).
        rows_per_chunk: rows per inner chunk.
        write_rows_per_shard: rows per shard in writer segments (small: each commit rewrites one).
        read_rows_per_shard: rows per shard in compacted segments (large: few files).
    """

    compression: str
    rows_per_chunk: int
    write_rows_per_shard: int
    read_rows_per_shard: int

    @classmethod
    def default(cls, row_bytes: int, compression: str = "none", rows_per_chunk: int | None = None) -> "Layout":
        """Inner chunks of about 128 KiB, writer shards of 16 chunks, compacted shards of about 64 MiB."""
        compressors_for(compression)  # validates the name
        if rows_per_chunk is None:
            rows_per_chunk = int(min(1024, max(1, 2 ** int(np.log2(max(1, (128 << 10) // row_bytes))))))
        if rows_per_chunk <= 0:
            raise ValueError(f"rows_per_chunk must be positive, got {rows_per_chunk}")
        chunk_bytes = rows_per_chunk * row_bytes
        per_read_shard = max(1, min(1 << 12, (64 << 20) // chunk_bytes))
        return cls(compression, rows_per_chunk, rows_per_chunk * 16, rows_per_chunk * per_read_shard)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ShardMap:
    """Direct reads of one shard file: the index decoded once, rows copied from a memory map."""

    def __init__(self, path: str, n_chunks: int, chunk_bytes: int) -> None:
        self.path = path
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            index_bytes = n_chunks * 16 + _INDEX_CRC_BYTES
            if size < index_bytes:
                raise CorruptDataError(f"shard {path}: {size} bytes, shorter than its {index_bytes}-byte index")
            self.mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        index = np.frombuffer(self.mm, dtype="<u8", count=n_chunks * 2, offset=size - index_bytes).reshape(-1, 2)
        present = index[:, 0] != _EMPTY
        self.offsets = np.where(present, index[:, 0], 0).astype(np.int64)
        nbytes = np.where(present, index[:, 1], 0).astype(np.int64)
        bad = present & ((nbytes != chunk_bytes) | (self.offsets + nbytes > size - index_bytes))
        self.offsets[~present] = -1  # -1: chunk never written (all fill value)
        if bad.any():
            raise CorruptDataError(
                f"shard {path}: chunk {int(np.flatnonzero(bad)[0])} lies outside the file or has the wrong size"
            )
        self.buf = np.frombuffer(self.mm, dtype=np.uint8)

    def close(self) -> None:
        self.buf = None  # type: ignore[assignment]
        try:
            self.mm.close()
        except BufferError:  # a caller still holds a view; the map closes when it is dropped
            pass


class Segment:
    """One segment of a feature set (see module docstring)."""

    ARRAYS = ("feats", "times", "frame_idx")

    def __init__(self, zstore: Any, key: str, row_shape: tuple[int, ...], dtype: np.dtype,
                 layout: Layout, local_root: str | None, rows_per_shard: int) -> None:
        self.zstore, self.key, self.row_shape, self.dtype = zstore, key, row_shape, np.dtype(dtype)
        self.layout, self.rows_per_shard = layout, rows_per_shard
        self.row_bytes = int(np.prod(row_shape)) * self.dtype.itemsize
        self.chunk_bytes = layout.rows_per_chunk * self.row_bytes
        self.fast = local_root is not None and layout.compression == "none"
        self.dir = os.path.join(local_root, *key.split("/")) if local_root is not None else None
        self._arrays: dict[str, Any] = {}
        self._shards: dict[int, tuple[int, ShardMap]] = {}
        self._wbuf: dict[int, list[Any]] = {}  # shard being appended to: [rows buffer, rows filled]
        self._tbuf: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # times / frame_idx chunk being appended to
        self._times = np.zeros((0, 2), np.float64)
        self._frames = np.zeros((0, 2), np.int64)
        self.known_rows = 0  # rows committed per the index this process has loaded

    # ---- creation ---------------------------------------------------------------------
    @classmethod
    def create(cls, zstore: Any, key: str, row_shape: tuple[int, ...], dtype: np.dtype, layout: Layout,
               local_root: str | None, rows: int, rows_per_shard: int) -> "Segment":
        """Create the segment group and its arrays with ``rows`` rows."""
        zarr.open_group(store=zstore, path=key, mode="w-", zarr_format=3)
        c, s = layout.rows_per_chunk, rows_per_shard
        zarr.create_array(store=zstore, name=f"{key}/feats", shape=(rows, *row_shape), dtype=dtype,
                          chunks=(c, *row_shape), shards=(s, *row_shape),
                          compressors=compressors_for(layout.compression), fill_value=0,
                          dimension_names=("row",) + tuple(f"d{i}" for i in range(len(row_shape))))
        for name, dt in (("times", "float64"), ("frame_idx", "int64")):
            zarr.create_array(store=zstore, name=f"{key}/{name}", shape=(rows, 2), dtype=dt,
                              chunks=(min(s, TIME_CHUNK_ROWS), 2),
                              compressors=None, fill_value=0, dimension_names=("row", "bound"))
        return cls(zstore, key, row_shape, dtype, layout, local_root, rows_per_shard)

    def array(self, name: str) -> Any:
        a = self._arrays.get(name)
        if a is None:
            a = self._arrays[name] = zarr.open_array(
                store=self.zstore, path=f"{self.key}/{name}", mode="r" if self.zstore.read_only else "r+"
            )
        return a

    # ---- writes -----------------------------------------------------------------------
    def write(self, row0: int, stored: np.ndarray, times: np.ndarray, frames: np.ndarray) -> None:
        """Write rows ``[row0, row0 + len(stored))``, growing the arrays (doubling) when needed."""
        end = row0 + len(stored)
        if end == row0:
            return
        feats = self.array("feats")
        if feats.shape[0] < end:
            cap = max(end, 2 * feats.shape[0], self.rows_per_shard)
            for name in self.ARRAYS:
                arr = self.array(name)
                arr.resize((cap, *arr.shape[1:]))
        if not self.fast:
            feats[row0:end] = stored
            self.array("times")[row0:end] = times
            self.array("frame_idx")[row0:end] = frames
            return
        s = self.rows_per_shard
        for k in range(row0 // s, (end - 1) // s + 1):
            a, b = max(row0, k * s), min(end, (k + 1) * s)
            self._write_shard(k, a, b, stored[a - row0:b - row0])
        tc = min(s, TIME_CHUNK_ROWS)
        for j in range(row0 // tc, (end - 1) // tc + 1):
            a, b = max(row0, j * tc), min(end, (j + 1) * tc)
            self._write_time_chunk(j, tc, a, b, times[a - row0:b - row0], frames[a - row0:b - row0])

    def _chunk_path(self, name: str, k: int, ndim_rest: int) -> str:
        return os.path.join(self.dir, name, "c", str(k), *(["0"] * ndim_rest))

    def _write_shard(self, k: int, a: int, b: int, rows: np.ndarray) -> None:
        """Direct write of rows ``[a, b)`` into shard ``k``: the whole shard file is rebuilt from an
        in-memory copy and replaces the old file atomically (a valid Zarr v3 shard either way)."""
        s, c = self.rows_per_shard, self.layout.rows_per_chunk
        buf = self._wbuf.get(k)
        if buf is None:
            buf = [np.zeros((s, *self.row_shape), self.dtype), 0]
            path = self._chunk_path("feats", k, len(self.row_shape))
            if os.path.exists(path):  # continue a shard written before (e.g. by an earlier failed call)
                sm = ShardMap(path, s // c, self.chunk_bytes)
                upto = min(s, self.known_rows - k * s) if self.known_rows > k * s else 0
                for ci in range(-(-upto // c)):
                    if sm.offsets[ci] >= 0:
                        raw = sm.buf[sm.offsets[ci]:sm.offsets[ci] + self.chunk_bytes]
                        buf[0][ci * c:(ci + 1) * c] = raw.view(self.dtype).reshape(c, *self.row_shape)
                buf[1] = upto
                sm.close()
            self._wbuf = {k: buf}  # rows are appended: older shards are never touched again
        buf[0][a - k * s:b - k * s] = rows
        buf[1] = max(buf[1], b - k * s)
        n_chunks = s // c
        used = -(-buf[1] // c)
        index = np.full((n_chunks, 2), _EMPTY, dtype="<u8")
        index[:used, 0] = np.arange(used, dtype=np.uint64) * np.uint64(self.chunk_bytes)
        index[:used, 1] = self.chunk_bytes
        index_bytes = index.tobytes()
        crc = np.array([google_crc32c.value(index_bytes)], dtype="<u4").tobytes()
        _replace_file(self._chunk_path("feats", k, len(self.row_shape)),
                      (memoryview(buf[0].reshape(-1).view(np.uint8))[: used * self.chunk_bytes], index_bytes, crc))
        self._shards.pop(k, None)

    def _write_time_chunk(self, j: int, tc: int, a: int, b: int, times: np.ndarray, frames: np.ndarray) -> None:
        buf = self._tbuf.get(j)
        if buf is None:
            buf = (np.zeros((tc, 2), "<f8"), np.zeros((tc, 2), "<i8"))
            path = self._chunk_path("times", j, 1)
            if os.path.exists(path):
                buf[0][:] = np.fromfile(path, "<f8").reshape(tc, 2)
                buf[1][:] = np.fromfile(self._chunk_path("frame_idx", j, 1), "<i8").reshape(tc, 2)
            self._tbuf = {j: buf}
        buf[0][a - j * tc:b - j * tc] = times
        buf[1][a - j * tc:b - j * tc] = frames
        _replace_file(self._chunk_path("times", j, 1), (buf[0].tobytes(),))
        _replace_file(self._chunk_path("frame_idx", j, 1), (buf[1].tobytes(),))

    # ---- reads ------------------------------------------------------------------------
    def _shard(self, k: int, end: int) -> ShardMap:
        """Shard ``k`` mapped so that it covers committed rows below ``end``."""
        hit = self._shards.get(k)
        if hit is not None and hit[0] >= end:
            return hit[1]
        if hit is not None:
            hit[1].close()
        path = os.path.join(self.dir, "feats", "c", str(k), *(["0"] * len(self.row_shape)))
        try:
            sm = ShardMap(path, self.rows_per_shard // self.layout.rows_per_chunk, self.chunk_bytes)
        except FileNotFoundError:
            raise CorruptDataError(f"segment {self.key}: shard file {path} is missing") from None
        self._shards[k] = (max(self.known_rows, end), sm)
        return sm

    def read_into(self, a: int, b: int, out: np.ndarray) -> None:
        """Copy stored rows ``[a, b)`` into ``out`` (shape ``(b - a, *row_shape)``, storage dtype)."""
        if b <= a:
            return
        if not self.fast:
            out[...] = self.array("feats")[a:b]
            return
        flat = out.reshape(b - a, -1).view(np.uint8).reshape(-1)
        c, s, rb = self.layout.rows_per_chunk, self.rows_per_shard, self.row_bytes
        pos = a
        while pos < b:
            k = pos // s
            stop = min(b, (k + 1) * s)
            sm = self._shard(k, stop)
            r = pos - k * s
            last = (stop - 1 - k * s) // c
            while pos < stop:
                ci = r // c
                off = int(sm.offsets[ci])
                if off < 0:
                    take = min(stop - pos, (ci + 1) * c - r)
                    flat[(pos - a) * rb:(pos - a + take) * rb] = 0
                else:
                    # one copy across the following chunks stored back to back in the file
                    want = off + self.chunk_bytes * np.arange(last - ci + 1, dtype=np.int64)
                    ok = sm.offsets[ci:last + 1] == want
                    run = len(ok) if ok.all() else int(ok.argmin())
                    take = min(stop - pos, (ci + run) * c - r)
                    src0 = off + (r - ci * c) * rb
                    flat[(pos - a) * rb:(pos - a + take) * rb] = sm.buf[src0:src0 + take * rb]
                pos += take
                r += take

    def read(self, a: int, b: int) -> np.ndarray:
        """Stored rows ``[a, b)`` as a new array."""
        out = np.empty((max(0, b - a), *self.row_shape), self.dtype)
        self.read_into(a, b, out)
        return out

    def read_zarr(self, a: int, b: int) -> np.ndarray:
        """Stored rows ``[a, b)`` read by zarr-python (the reference path)."""
        return np.asarray(self.array("feats")[a:b])

    def times(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """``(times (n, 2), frame_idx (n, 2))`` of rows ``[a, b)``, from an in-memory copy."""
        have = len(self._times)
        if b > have:
            end = max(b, self.known_rows)
            t = np.asarray(self.array("times")[have:end])
            f = np.asarray(self.array("frame_idx")[have:end])
            self._times = np.concatenate([self._times, t]) if have else t
            self._frames = np.concatenate([self._frames, f]) if have else f
        return self._times[a:b], self._frames[a:b]

    def times_zarr(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.array("times")[a:b]), np.asarray(self.array("frame_idx")[a:b])

    def close(self) -> None:
        for _, sm in self._shards.values():
            sm.close()
        self._shards.clear()
        self._arrays.clear()
