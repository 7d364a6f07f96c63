"""Segments: the concatenated row arrays of a feature set, written by zarr-python, read fast.

A segment is a Zarr v3 group with three arrays that share their row axis:

* ``feats``     ``(R, *row_shape)`` in the storage dtype, sharded: inner chunks of
  ``rows_per_chunk`` rows inside shards of ``rows_per_shard`` rows;
* ``times``     ``(R, 2)`` float64 start/end seconds;
* ``frame_idx`` ``(R, 2)`` int64 first/last source frame.

On local folders with uncompressed inner chunks (the default) both directions skip
zarr-python. A shard file is created complete (temp file + rename): a sparse file whose
chunks sit back to back at fixed offsets, with its final index and checksum already at the
end, so it is a valid Zarr v3 shard from the moment it appears. Rows are then written in
place with ``pwrite`` (committed rows are never touched again) and read with one ``preadv``
per run of back-to-back chunks straight into the caller's array (scans copy from a memory
map instead), after decoding the shard index once (``ShardMap``). The small ``times`` / ``frame_idx`` chunk files are laid out and
filled the same way.

Compressed local sets write through zarr-python (whose local store replaces a shard file
atomically) and are read directly, each chunk decoded with numcodecs. fsspec URLs write and
read through zarr-python. Each writer owns its segment, so no shard is ever
read-modify-written by two processes.
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
TIME_CHUNK_ROWS = 1 << 16
_MMAP_MIN_BYTES = 1 << 20  # reads at least this large copy from a memory map instead of preadv  # rows per chunk of the small times / frame_idx arrays


def _pwrite_all(fd: int, arr: np.ndarray, offset: int) -> None:
    """Write all bytes of ``arr`` at ``offset``."""
    view = memoryview(arr.reshape(-1).view(np.uint8))
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _decoder(compression: str) -> Any:
    """numcodecs codec that decodes one stored inner chunk (the same formats zarr-python writes)."""
    from numcodecs import GZip, Zstd
    from numcodecs.blosc import Blosc

    return {"lz4": Blosc(), "blosc-zstd": Blosc(), "zstd": Zstd(), "gzip": GZip()}[compression]


def _fsync_path(path: str) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    """Direct reads of one shard file: the index decoded once, bytes read with ``pread``."""

    def __init__(self, path: str, n_chunks: int, chunk_bytes: int | None) -> None:
        """``chunk_bytes``: size of every stored chunk (uncompressed), None when chunks are compressed."""
        self.path = path
        self.buf: np.ndarray | None = None  # memory map, created on the first large read
        self.fd = os.open(path, os.O_RDONLY)
        try:
            st = os.fstat(self.fd)
            size, self.inode = st.st_size, (st.st_ino, st.st_mtime_ns)
            index_bytes = n_chunks * 16 + _INDEX_CRC_BYTES
            if size < index_bytes:
                raise CorruptDataError(f"shard {path}: {size} bytes, shorter than its {index_bytes}-byte index")
            raw = os.pread(self.fd, index_bytes, size - index_bytes)
            if google_crc32c.value(raw[:-_INDEX_CRC_BYTES]) != int.from_bytes(raw[-_INDEX_CRC_BYTES:], "little"):
                raise CorruptDataError(f"shard {path}: its index does not match its checksum")
            index = np.frombuffer(raw[:-_INDEX_CRC_BYTES], dtype="<u8").reshape(-1, 2)
            present = index[:, 0] != _EMPTY
            self.offsets = np.where(present, index[:, 0], 0).astype(np.int64)
            self.nbytes = nbytes = np.where(present, index[:, 1], 0).astype(np.int64)
            bad = present & (self.offsets + nbytes > size - index_bytes)
            if chunk_bytes is not None:
                bad |= present & (nbytes != chunk_bytes)
            if bad.any():
                raise CorruptDataError(
                    f"shard {path}: chunk {int(np.flatnonzero(bad)[0])} lies outside the file or has the wrong size"
                )
        except BaseException:
            os.close(self.fd)
            raise
        self.offsets[~present] = -1  # -1: chunk never written (all fill value)
        self.offsets_list = self.offsets.tolist()
        # run_end[ci]: last chunk of the run of chunks stored back to back starting at ci
        n = len(self.offsets)
        step = chunk_bytes if chunk_bytes is not None else -1
        joined = present[:-1] & present[1:] & (self.offsets[1:] == self.offsets[:-1] + step)
        breaks = np.append(np.flatnonzero(~joined), n - 1)
        self.run_end = breaks[np.searchsorted(breaks, np.arange(n))].tolist()

    def read_into(self, dst: memoryview, offset: int) -> None:
        """Fill ``dst`` with the file's bytes from ``offset`` (a short read means a truncated file).

        Small reads use one ``preadv``; large ones (scans) copy from a read-only memory map,
        which is several times faster than ``preadv`` into freshly allocated memory.
        """
        if len(dst) >= _MMAP_MIN_BYTES:
            if self.buf is None:
                self.mm = mmap.mmap(self.fd, 0, access=mmap.ACCESS_READ)
                self.buf = np.frombuffer(self.mm, dtype=np.uint8)
            if offset + len(dst) > len(self.buf):
                raise CorruptDataError(f"shard {self.path}: file ends before byte {offset + len(dst)}")
            np.frombuffer(dst, dtype=np.uint8)[:] = self.buf[offset:offset + len(dst)]
            return
        got = os.preadv(self.fd, [dst], offset)
        while got < len(dst):
            more = os.preadv(self.fd, [dst[got:]], offset + got)
            if more == 0:
                raise CorruptDataError(f"shard {self.path}: file ends before byte {offset + len(dst)}")
            got += more

    def close(self) -> None:
        if self.buf is not None:
            self.buf = None
            try:
                self.mm.close()
            except BufferError:  # a view is still alive; the map closes when it is dropped
                pass
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Segment:
    """One segment of a feature set (see module docstring)."""

    ARRAYS = ("feats", "times", "frame_idx")

    def __init__(self, zstore: Any, key: str, row_shape: tuple[int, ...], dtype: np.dtype,
                 layout: Layout, local_root: str | None, rows_per_shard: int) -> None:
        self.zstore, self.key, self.row_shape, self.dtype = zstore, key, row_shape, np.dtype(dtype)
        self.layout, self.rows_per_shard = layout, rows_per_shard
        self.row_bytes = int(np.prod(row_shape)) * self.dtype.itemsize
        self.chunk_bytes = layout.rows_per_chunk * self.row_bytes
        self.fast = local_root is not None and layout.compression == "none"  # direct writes and reads
        # compressed local chunks are read directly too, decoded with numcodecs
        self.decoder = _decoder(layout.compression) if local_root is not None and not self.fast else None
        self._decoded: tuple[tuple[int, int], np.ndarray] | None = None  # last decoded chunk
        self.dir = os.path.join(local_root, *key.split("/")) if local_root is not None else None
        self._arrays: dict[str, Any] = {}
        self._shards: dict[int, ShardMap] = {}
        self._fds: dict[str, int] = {}  # open write handles of the files being appended to
        self._times = np.zeros((0, 2), np.float64)
        self._frames = np.zeros((0, 2), np.int64)
        self.known_rows = 0  # rows committed per the index this process has loaded
        self.durable = False  # fsync data files before the caller commits (``open_store(fsync=True)``)
        self.remote: Any = None  # object stores: ranged reads of the shard objects (``_objects.RemoteShards``)

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

    @property
    def time_chunk_rows(self) -> int:
        """Rows per chunk file of the ``times`` and ``frame_idx`` arrays."""
        return min(self.rows_per_shard, TIME_CHUNK_ROWS)

    def array(self, name: str, rows: int = 0) -> Any:
        """The zarr array ``name``, reopened when another writer has grown it past our copy's shape.

        Chunks are written even when they hold only the fill value, so that a chunk file
        missing under committed rows always means damage.
        """
        a = self._arrays.get(name)
        if a is None or a.shape[0] < rows:
            try:
                a = zarr.open_array(
                    store=self.zstore, path=f"{self.key}/{name}", mode="r" if self.zstore.read_only else "r+"
                ).with_config({"write_empty_chunks": True})
            except FileNotFoundError:
                raise CorruptDataError(f"segment {self.key}: array {name} is missing") from None
            except (ValueError, TypeError, KeyError) as e:  # damaged zarr.json
                raise CorruptDataError(f"segment {self.key}: the metadata of array {name} is damaged ({e})") from None
            self._arrays[name] = a
        return a

    def _check_time_chunks(self, a: int, b: int) -> None:
        """Refuse to read rows whose times / frame_idx chunk file is missing (it would read as zeros)."""
        if self.dir is None or b <= a:
            return
        tc = self.time_chunk_rows
        for j in range(a // tc, (b - 1) // tc + 1):
            for name in ("times", "frame_idx"):
                if not os.path.exists(self._chunk_path(name, j, 1)):
                    raise CorruptDataError(f"segment {self.key}: chunk {name}/c/{j} is missing")

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
        s = self.rows_per_shard
        tc = min(s, TIME_CHUNK_ROWS)
        shards = range(row0 // s, (end - 1) // s + 1)
        time_chunks = range(row0 // tc, (end - 1) // tc + 1)
        if not self.fast:
            feats[row0:end] = stored
            self.array("times")[row0:end] = times
            self.array("frame_idx")[row0:end] = frames
            if self.durable and self.dir is not None:  # local store written by zarr-python
                paths = [self._chunk_path("feats", k, len(self.row_shape)) for k in shards]
                paths += [self._chunk_path(n, j, 1) for n in ("times", "frame_idx") for j in time_chunks]
                for path in paths:
                    _fsync_path(path)
            return
        # Each file is fsynced right after its write: ``_file`` keeps only a few handles open and
        # closes older ones, so a handle must not be kept for a later flush.
        for k in shards:
            a, b = max(row0, k * s), min(end, (k + 1) * s)
            fd = self._file(self._chunk_path("feats", k, len(self.row_shape)), self._empty_shard)
            _pwrite_all(fd, np.ascontiguousarray(stored[a - row0:b - row0]), (a - k * s) * self.row_bytes)
            if self.durable:
                os.fsync(fd)
        for j in time_chunks:
            a, b = max(row0, j * tc), min(end, (j + 1) * tc)
            for name, vals, dt in (("times", times, "<f8"), ("frame_idx", frames, "<i8")):
                fd = self._file(self._chunk_path(name, j, 1), lambda f, n=tc: f.truncate(n * 16))
                _pwrite_all(fd, np.ascontiguousarray(vals[a - row0:b - row0], dtype=dt), (a - j * tc) * 16)
                if self.durable:
                    os.fsync(fd)

    def _chunk_path(self, name: str, k: int, ndim_rest: int) -> str:
        return os.path.join(self.dir, name, "c", str(k), *(["0"] * ndim_rest))

    def _empty_shard(self, f: Any) -> None:
        """Lay out a shard whose chunks sit back to back at fixed places, index already final.

        The file is sparse and reads as zeros until rows are written in place; it is a
        valid Zarr v3 shard from the moment it appears, so writes never rewrite a file.
        """
        n_chunks = self.rows_per_shard // self.layout.rows_per_chunk
        index = np.empty((n_chunks, 2), dtype="<u8")
        index[:, 0] = np.arange(n_chunks, dtype=np.uint64) * np.uint64(self.chunk_bytes)
        index[:, 1] = self.chunk_bytes
        raw = index.tobytes()
        f.truncate(n_chunks * self.chunk_bytes)
        f.seek(n_chunks * self.chunk_bytes)
        f.write(raw + np.array([google_crc32c.value(raw)], dtype="<u4").tobytes())

    def _file(self, path: str, init: Any) -> int:
        """A write handle on a fixed-size chunk file, created complete (temp file + rename) when new."""
        fd = self._fds.get(path)
        if fd is None:
            if not os.path.exists(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                tmp = f"{path}.{uuid.uuid4().hex}.partial"
                with open(tmp, "wb") as f:
                    init(f)
                    if self.durable:
                        f.flush()
                        os.fsync(f.fileno())
                os.replace(tmp, path)
                if self.durable:
                    _fsync_path(os.path.dirname(path))
            if len(self._fds) >= 8:  # rows are appended: earlier files are done
                for old in list(self._fds)[:4]:
                    os.close(self._fds.pop(old))
            fd = self._fds[path] = os.open(path, os.O_WRONLY)
        return fd

    # ---- reads ------------------------------------------------------------------------
    def _shard(self, k: int) -> ShardMap:
        """Shard ``k`` with its decoded index (rows written later in place are read from the same file)."""
        sm = self._shards.get(k)
        path = os.path.join(self.dir, "feats", "c", str(k), *(["0"] * len(self.row_shape)))
        if sm is not None:
            if self.fast:
                return sm
            st = os.stat(path)  # zarr-python replaces compressed shards on write: remap a new file
            if (st.st_ino, st.st_mtime_ns) == sm.inode:
                return sm
            sm.close()
        try:
            sm = ShardMap(path, self.rows_per_shard // self.layout.rows_per_chunk,
                          self.chunk_bytes if self.fast else None)
        except FileNotFoundError:
            raise CorruptDataError(f"segment {self.key}: shard file {path} is missing") from None
        if len(self._shards) >= 256:  # bound open file handles: drop the oldest
            oldest = next(iter(self._shards))
            self._shards.pop(oldest).close()
        self._shards[k] = sm
        self._decoded = None
        return sm

    @property
    def direct(self) -> bool:
        """True when reads bypass zarr-python (local store, or ranged GETs on an object store)."""
        return self.fast or self.decoder is not None or self.remote is not None

    def read_into(self, a: int, b: int, out: np.ndarray) -> None:
        """Copy stored rows ``[a, b)`` into ``out`` (shape ``(b - a, *row_shape)``, storage dtype)."""
        if b <= a:
            return
        if self.remote is not None:
            self.remote.read_into(a, b, out)
            return
        if not self.direct:
            out[...] = self.array("feats", b)[a:b]
            return
        if not self.fast:
            self._read_compressed(a, b, out)
            return
        if not out.flags.c_contiguous:
            tmp = np.empty(out.shape, self.dtype)
            self.read_into(a, b, tmp)
            out[...] = tmp
            return
        flat = memoryview(out.reshape(-1).view(np.uint8))
        c, s, rb = self.layout.rows_per_chunk, self.rows_per_shard, self.row_bytes
        pos = a
        while pos < b:
            k, r = divmod(pos, s)
            sm = self._shards.get(k) or self._shard(k)
            stop = min(b, (k + 1) * s)
            ci = r // c
            off = sm.offsets_list[ci]
            if off < 0:  # never written: fill value
                take = min(stop - pos, (ci + 1) * c - r)
                out.reshape(-1).view(np.uint8)[(pos - a) * rb:(pos - a + take) * rb] = 0
            else:  # one copy across the chunks stored back to back from here
                take = min(stop - pos, (sm.run_end[ci] + 1) * c - r)
                src0 = off + (r - ci * c) * rb
                sm.read_into(flat[(pos - a) * rb:(pos - a + take) * rb], src0)
            pos += take

    def _read_compressed(self, a: int, b: int, out: np.ndarray) -> None:
        """Rows ``[a, b)`` of compressed chunks: each chunk is decoded once (the last one is kept)."""
        c, s = self.layout.rows_per_chunk, self.rows_per_shard
        pos = a
        while pos < b:
            k, r = divmod(pos, s)
            ci = r // c
            take = min(b - pos, (ci + 1) * c - r)
            sm = self._shard(k)
            if self._decoded is not None and self._decoded[0] == (k, ci):
                chunk = self._decoded[1]
            elif sm.offsets[ci] < 0:
                chunk = np.zeros((c, *self.row_shape), self.dtype)
            else:
                off, nb = int(sm.offsets[ci]), int(sm.nbytes[ci])
                buf = bytearray(nb)
                sm.read_into(memoryview(buf), off)
                raw = self.decoder.decode(buf)
                chunk = np.frombuffer(raw, dtype=self.dtype.newbyteorder("<")).reshape(c, *self.row_shape)
                self._decoded = ((k, ci), chunk)
            out[pos - a:pos - a + take] = chunk[r - ci * c:r - ci * c + take]
            pos += take

    def read(self, a: int, b: int) -> np.ndarray:
        """Stored rows ``[a, b)`` as a new array."""
        out = np.empty((max(0, b - a), *self.row_shape), self.dtype)
        self.read_into(a, b, out)
        return out

    def read_zarr(self, a: int, b: int) -> np.ndarray:
        """Stored rows ``[a, b)`` read by zarr-python (the reference path)."""
        return np.asarray(self.array("feats", b)[a:b])

    def times(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """``(times (n, 2), frame_idx (n, 2))`` of rows ``[a, b)``, from an in-memory copy."""
        have = len(self._times)
        if b > have:
            end = max(b, self.known_rows)
            self._check_time_chunks(have, end)
            t = np.asarray(self.array("times", end)[have:end])
            f = np.asarray(self.array("frame_idx", end)[have:end])
            self._times = np.concatenate([self._times, t]) if have else t
            self._frames = np.concatenate([self._frames, f]) if have else f
        return self._times[a:b], self._frames[a:b]

    def times_zarr(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        self._check_time_chunks(a, b)
        return np.asarray(self.array("times", b)[a:b]), np.asarray(self.array("frame_idx", b)[a:b])

    def close(self) -> None:
        for sm in self._shards.values():
            sm.close()
        self._shards.clear()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._arrays.clear()
