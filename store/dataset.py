"""torch Datasets over a feature set, and a chunk-aware shuffling sampler.

* ``VideoSequenceDataset``: one item per video, ``feats (N, *row_shape)``; batch with
  ``collate_padded`` (pads to the longest video, returns a bool ``mask (B, T)``).
* ``RowDataset``: one item per row (clip or frame) with its video's label.
* ``load_rows`` / ``RowSet``: a whole (filtered) set in memory as tensors with offsets,
  timestamps and metadata; ``pad_sequences`` pads per-video sequences with a mask;
  ``step_targets`` puts time-segment annotations on a video's row time grid; these are
  what every recipe reads its features through.
* ``ChunkShuffleSampler``: shuffles blocks of consecutive indices (rows that sit next
  to each other on disk), then shuffles inside a buffer of a few blocks, so a set
  larger than RAM is still read mostly sequentially.

Worker safety: a dataset holds *how to open* the store (a path, or a picklable
``store_factory``), never an open handle across processes. The store is opened on
first use in each process (and again after a fork), so DataLoader workers work under
both ``fork`` and ``spawn``. A ``MemoryStore`` instance can be passed directly; it is
shared with forked workers but cannot be sent to ``spawn`` workers.

Example:
    >>> ds = VideoSequenceDataset("feats.zarr", "i3d/Mixed_5c", split="train")  # doctest: +SKIP
    >>> loader = DataLoader(ds, batch_size=8, collate_fn=collate_padded, num_workers=2)  # doctest: +SKIP
    >>> batch = next(iter(loader)); batch["feats"].shape, batch["mask"].shape  # doctest: +SKIP
    (torch.Size([8, T, 1024]), torch.Size([8, T]))
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass
from typing import Any, Callable, Collection, Iterator, Sequence, Sized, Union

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .base import FeatureSet, FeatureStore
from .errors import StoreError
from .schema import VideoMeta, VideoRows
from .select import select_videos

StoreSource = Union[str, os.PathLike, FeatureStore, Callable[[], FeatureStore]]


class LazyFeatureSet:
    """Opens a feature set on first use in each process; pickles as "how to open" only.

    Args:
        store: a store path (opened read-only with ``featbank.store.open_store``), a
            picklable zero-argument ``store_factory`` returning a ``FeatureStore``, or an
            open ``FeatureStore``. An open Zarr-backed store is reopened from its path in
            every other process; a ``MemoryStore`` is used as is (forked workers inherit
            it) and refuses to be pickled for ``spawn`` workers.
        set_name: the feature set.
        allow_stale: open a stale set anyway.
    """

    def __init__(self, store: StoreSource, set_name: str, *, allow_stale: bool = False) -> None:
        self.set_name = set_name
        self.allow_stale = allow_stale
        self._instance: FeatureStore | None = None
        self._factory: Callable[[], FeatureStore] | None = None
        self._path: str | None = None
        if isinstance(store, FeatureStore):
            self._instance = store
            self._path = None if _in_process_only(store) else str(store.path)
        elif isinstance(store, (str, os.PathLike)):
            self._path = os.fspath(store)
        elif callable(store):
            self._factory = store
        else:
            raise TypeError(f"store must be a path, a FeatureStore or a store factory, got {type(store).__name__}")
        self._owner_pid = os.getpid()
        self._store: FeatureStore | None = None
        self._fs: FeatureSet | None = None
        self._fs_pid: int | None = None

    def get(self) -> FeatureSet:
        """The open feature set of this process (opened on first call)."""
        pid = os.getpid()
        if self._fs is None or self._fs_pid != pid:
            self._store = self._open_store(pid)
            self._fs = self._store.open_set(self.set_name, allow_stale=self.allow_stale)
            self._fs_pid = pid
        return self._fs

    def _open_store(self, pid: int) -> FeatureStore:
        if self._instance is not None and (pid == self._owner_pid or self._path is None):
            return self._instance
        if self._factory is not None:
            return self._factory()
        from . import open_store

        return open_store(self._path, mode="r")

    def release(self) -> None:
        """Drop this process's handle (closing it when this object opened it)."""
        if self._store is not None and self._store is not self._instance:
            self._store.close()
        self._store = self._fs = self._fs_pid = None

    def __getstate__(self) -> dict[str, Any]:
        if self._instance is not None and self._path is None:
            raise StoreError(
                f"feature set {self.set_name!r} lives in an in-memory store that cannot be sent to another "
                "process; use num_workers=0, the 'fork' start method, or pass a store path / store_factory"
            )
        state = dict(self.__dict__)
        state.update(_instance=None, _store=None, _fs=None, _fs_pid=None)
        return state


def _in_process_only(store: FeatureStore) -> bool:
    from .memory import MemoryStore

    return isinstance(store, MemoryStore)


class _FeatureSetDataset(Dataset):
    """Shared base: lazy feature set, filtered video table, one-video read cache."""

    def __init__(
        self,
        store: StoreSource,
        set_name: str,
        *,
        split: str | Collection[str] | None,
        domain: str | Collection[str] | None,
        labels: int | Collection[int] | None,
        video_ids: Sequence[str] | None,
        allow_stale: bool,
        dtype: torch.dtype,
    ) -> None:
        self.lazy = LazyFeatureSet(store, set_name, allow_stale=allow_stale)
        fs = self.lazy.get()
        self.info = fs.info
        self.video_ids, table = select_videos(fs, split=split, domain=domain, labels=labels, video_ids=video_ids)
        self.labels = table["label"].astype(np.int64)
        self.domains = [str(d) for d in table["domain"]]
        self.n_rows = table["n_rows"].astype(np.int64)
        self.dtype = dtype
        self.lazy.release()  # no open handle is inherited by forked workers
        self.cache_rows = 0
        self._cache: collections.OrderedDict[str, VideoRows] = collections.OrderedDict()
        self._cached_rows = 0
        self._cache_pid: int | None = None

    def _read(self, video_id: str) -> VideoRows:
        """All rows of a video, through an LRU cache of whole videos holding up to ``cache_rows`` rows."""
        if self._cache_pid != os.getpid():  # a new worker starts with an empty cache
            self._cache, self._cached_rows, self._cache_pid = collections.OrderedDict(), 0, os.getpid()
        rows = self._cache.get(video_id)
        if rows is not None:
            self._cache.move_to_end(video_id)
            return rows
        rows = self.lazy.get().read(video_id)
        self._cache[video_id] = rows
        self._cached_rows += len(rows)
        while self._cached_rows > self.cache_rows and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached_rows -= len(old)
        return rows

    def _tensor(self, feats: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(feats)).to(self.dtype)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_cache=collections.OrderedDict(), _cached_rows=0, _cache_pid=None)
        return state


class VideoSequenceDataset(_FeatureSetDataset):
    """One item per video: all its rows.

    Items are dicts: ``feats`` (N, *row_shape) tensor, ``starts`` / ``ends`` (N,)
    float64 tensors, ``label`` int (first label, -1 unlabelled), ``labels`` tuple,
    ``domain`` str, ``video_id`` str, ``index`` int (position in this dataset).

    Args:
        store: store path, ``store_factory`` or open store (see ``LazyFeatureSet``).
        set_name: the feature set.
        split: keep only this split (or these splits).
        domain: keep only this domain (or these).
        labels: keep only videos whose first label is this one (or one of these).
        video_ids: keep only these videos, in this order.
        drop_empty: leave out videos with no rows (their mask would be all False).
        allow_stale: read a stale set anyway.
        dtype: dtype of ``feats`` (float16/bfloat16 sets are widened to it).
    """

    def __init__(
        self,
        store: StoreSource,
        set_name: str,
        *,
        split: str | Collection[str] | None = None,
        domain: str | Collection[str] | None = None,
        labels: int | Collection[int] | None = None,
        video_ids: Sequence[str] | None = None,
        drop_empty: bool = True,
        allow_stale: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(
            store, set_name, split=split, domain=domain, labels=labels, video_ids=video_ids,
            allow_stale=allow_stale, dtype=dtype,
        )
        if drop_empty:
            keep = np.flatnonzero(self.n_rows > 0)
            self.video_ids = [self.video_ids[i] for i in keep]
            self.labels, self.n_rows = self.labels[keep], self.n_rows[keep]
            self.domains = [self.domains[i] for i in keep]

    def __len__(self) -> int:
        return len(self.video_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        vid = self.video_ids[index]
        fs = self.lazy.get()
        rows = fs.read(vid)
        return {
            "feats": self._tensor(rows.feats),  # (N, *row_shape)
            "starts": torch.from_numpy(rows.starts),
            "ends": torch.from_numpy(rows.ends),
            "label": int(self.labels[index]),
            "labels": fs.meta(vid).labels,
            "domain": self.domains[index],
            "video_id": vid,
            "index": int(index),
        }


def collate_padded(batch: Sequence[dict[str, Any]], pad_value: float = 0.0) -> dict[str, Any]:
    """Batch ``VideoSequenceDataset`` items, padding every video to the longest one.

    Args:
        batch: items of ``VideoSequenceDataset``.
        pad_value: value of padded feature rows.

    Returns:
        dict with ``feats`` (B, T, *row_shape), ``mask`` (B, T) bool (True on real rows),
        ``lengths`` (B,) int64, ``starts`` / ``ends`` (B, T) float64 (0 where padded),
        ``label`` (B,) int64, ``index`` (B,) int64, and lists ``labels``, ``domain``,
        ``video_id``.
    """
    lengths = torch.tensor([len(item["feats"]) for item in batch], dtype=torch.int64)
    b, t = len(batch), int(lengths.max()) if len(batch) else 0
    row_shape = tuple(batch[0]["feats"].shape[1:]) if batch else ()
    feats = torch.full((b, t, *row_shape), pad_value, dtype=batch[0]["feats"].dtype if batch else torch.float32)
    starts = torch.zeros((b, t), dtype=torch.float64)
    ends = torch.zeros((b, t), dtype=torch.float64)
    for i, item in enumerate(batch):
        n = len(item["feats"])
        feats[i, :n] = item["feats"]  # (N, *row_shape) -> rows of (T, *row_shape)
        starts[i, :n], ends[i, :n] = item["starts"], item["ends"]
    mask = torch.arange(t)[None, :] < lengths[:, None]  # (B, T)
    return {
        "feats": feats,
        "mask": mask,
        "lengths": lengths,
        "starts": starts,
        "ends": ends,
        "label": torch.tensor([item["label"] for item in batch], dtype=torch.int64),
        "index": torch.tensor([item["index"] for item in batch], dtype=torch.int64),
        "labels": [item["labels"] for item in batch],
        "domain": [item["domain"] for item in batch],
        "video_id": [item["video_id"] for item in batch],
    }


class RowDataset(_FeatureSetDataset):
    """One item per row (clip or frame) of the selected videos, with its video's label.

    Index ``i`` runs over the rows of the selected videos in order (video by video,
    row by row), so consecutive indices are rows stored next to each other; pair it
    with ``ChunkShuffleSampler`` for large sets. Whole videos are kept in a per-worker
    LRU cache of ``cache_rows`` rows: with ``cache_rows >= block_size * buffer_blocks``
    of the sampler, every video is read from the store once per epoch.

    Items are dicts: ``feats`` (*row_shape) tensor, ``label`` int, ``domain`` str,
    ``video_id`` str, ``video_index`` int, ``row`` int (row within its video),
    ``start`` / ``end`` float seconds.

    Args: as ``VideoSequenceDataset`` (without ``drop_empty``: empty videos add no rows),
        plus ``cache_rows``: rows of whole videos kept in memory per worker (at least the
        largest video is always kept).
    """

    def __init__(
        self,
        store: StoreSource,
        set_name: str,
        *,
        split: str | Collection[str] | None = None,
        domain: str | Collection[str] | None = None,
        labels: int | Collection[int] | None = None,
        video_ids: Sequence[str] | None = None,
        allow_stale: bool = False,
        dtype: torch.dtype = torch.float32,
        cache_rows: int = 8192,
    ) -> None:
        super().__init__(
            store, set_name, split=split, domain=domain, labels=labels, video_ids=video_ids,
            allow_stale=allow_stale, dtype=dtype,
        )
        self.cache_rows = int(cache_rows)
        self.offsets = np.zeros(len(self.video_ids) + 1, dtype=np.int64)
        np.cumsum(self.n_rows, out=self.offsets[1:])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """``(video_index, row)`` of global row ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} out of range for {len(self)} rows")
        v = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return v, int(index - self.offsets[v])

    def row_labels(self) -> np.ndarray:
        """(R,) int64 label of every row, for class-balanced samplers."""
        return np.repeat(self.labels, self.n_rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        v, r = self.locate(int(index))
        vid = self.video_ids[v]
        rows = self._read(vid)
        return {
            "feats": self._tensor(rows.feats[r]),  # (*row_shape)
            "label": int(self.labels[v]),
            "domain": self.domains[v],
            "video_id": vid,
            "video_index": v,
            "row": r,
            "start": float(rows.starts[r]),
            "end": float(rows.ends[r]),
        }


class ChunkShuffleSampler(Sampler[int]):
    """Shuffle blocks of consecutive indices, then shuffle inside a buffer of blocks.

    Each epoch visits every index exactly once. The block order is a fresh
    permutation; ``buffer_blocks`` blocks at a time are merged and shuffled, so the
    draws of one buffer touch only ``buffer_blocks`` blocks of on-disk-contiguous rows
    (read mostly sequentially, one buffer in RAM).

    When the data source has video boundaries (``RowDataset.offsets``, or
    ``boundaries``), blocks are cut only between videos: a block is the run of whole
    videos reaching ``block_size`` rows, so each video lies in exactly one buffer and a
    ``RowDataset`` with ``cache_rows >= buffer_blocks * (block_size + longest video)``
    reads every video once per epoch.

    Args:
        data_source: the dataset (its ``len``, and its ``offsets`` when it has them) or
            the number of indices.
        block_size: indices per block (at least; whole videos are kept together); match
            it to the store's chunk for best locality.
        buffer_blocks: blocks merged and shuffled together (the shuffle's reach).
        seed: base seed; epoch ``e`` uses ``seed + e``.
        shuffle: False yields ``0..n-1`` in order (for evaluation).
        boundaries: ``(V+1,)`` increasing offsets from 0 to ``n`` where blocks may be
            cut; default ``data_source.offsets`` when present, else anywhere.

    Example:
        >>> s = ChunkShuffleSampler(10, block_size=4, buffer_blocks=2, seed=0)
        >>> sorted(s) == list(range(10))
        True
    """

    def __init__(
        self,
        data_source: Sized | int,
        *,
        block_size: int = 1024,
        buffer_blocks: int = 8,
        seed: int = 0,
        shuffle: bool = True,
        boundaries: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        if block_size < 1 or buffer_blocks < 1:
            raise ValueError(f"block_size ({block_size}) and buffer_blocks ({buffer_blocks}) must be >= 1")
        self.n = int(data_source) if isinstance(data_source, (int, np.integer)) else len(data_source)
        self.block_size, self.buffer_blocks = int(block_size), int(buffer_blocks)
        self.seed, self.shuffle = int(seed), shuffle
        if boundaries is None:
            boundaries = getattr(data_source, "offsets", None)
        self.block_starts = self._cut_blocks(boundaries)  # (n_blocks + 1,) block edges
        self.epoch = 0
        self._epoch_set = False

    def _cut_blocks(self, boundaries: Sequence[int] | np.ndarray | None) -> np.ndarray:
        if boundaries is None:
            return np.append(np.arange(0, self.n, self.block_size), self.n).astype(np.int64)
        cuts = np.unique(np.asarray(boundaries, dtype=np.int64))
        if len(cuts) == 0 or cuts[0] != 0 or cuts[-1] != self.n:
            raise ValueError(f"boundaries must run from 0 to {self.n} (the number of indices)")
        edges = [0]
        for c in cuts[1:]:
            if c - edges[-1] >= self.block_size or c == self.n:
                edges.append(int(c))
        return np.asarray(edges if self.n else [0], dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        """Fix the epoch (its permutation); otherwise each iteration advances it by one."""
        self.epoch, self._epoch_set = int(epoch), True

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            yield from range(self.n)
            return
        rng = np.random.default_rng(self.seed + self.epoch)
        if not self._epoch_set:
            self.epoch += 1
        edges = self.block_starts
        blocks = rng.permutation(len(edges) - 1)
        for g in range(0, len(blocks), self.buffer_blocks):
            idx = np.concatenate([np.arange(edges[b], edges[b + 1]) for b in blocks[g : g + self.buffer_blocks]])
            rng.shuffle(idx)
            yield from idx.tolist()


# --------------------------------------------------------------------------------------------
# Whole feature sets as tensors: the one path from a store to the heads of every recipe.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RowSet:
    """The ragged rows of a selection of videos, in memory.

    Attributes:
        feats: ``(R, *row_shape)`` features (float16 / float32 as stored; bfloat16 is widened).
        offsets: ``(V+1,)`` int64; rows of video ``i`` are ``offsets[i]:offsets[i+1]``.
        starts: ``(R,)`` float64 start time of each row (seconds).
        ends: ``(R,)`` float64 end time of each row (seconds).
        video_ids: the ``V`` video ids.
        labels: ``(V,)`` int64 first label of each video (``-1`` unlabelled).
        metas: the ``V`` ``VideoMeta`` records (all labels, split, domain, fps, duration).
        set_name: the feature set the rows came from.
        info: the set's ``FeatureSetInfo`` (backbone, spec, sampling, row shape).
    """

    feats: torch.Tensor
    offsets: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    video_ids: tuple[str, ...]
    labels: np.ndarray
    metas: tuple[VideoMeta, ...]
    set_name: str
    info: Any = None

    @property
    def dim(self) -> int:
        """Size of the last (feature) axis."""
        return int(self.feats.shape[-1])

    @property
    def row_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.feats.shape[1:])

    @property
    def n_rows(self) -> np.ndarray:
        """``(V,)`` rows per video."""
        return np.diff(self.offsets)

    @property
    def row_video(self) -> np.ndarray:
        """``(R,)`` index of each row's video."""
        return np.repeat(np.arange(len(self.video_ids)), self.n_rows)

    @property
    def row_labels(self) -> np.ndarray:
        """``(R,)`` label of every row (its video's label)."""
        return np.repeat(self.labels, self.n_rows)

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(m.domain for m in self.metas)

    @property
    def num_classes(self) -> int:
        """``max label + 1`` over all labels of all videos (0 when unlabelled)."""
        return max((max(m.labels) + 1 for m in self.metas if m.labels), default=0)

    def video(self, i: int) -> torch.Tensor:
        """``(N_i, *row_shape)`` rows of video ``i``."""
        return self.feats[int(self.offsets[i]):int(self.offsets[i + 1])]

    def pooled(self) -> torch.Tensor:
        """``(V, D)`` mean of each video's rows (views / maps averaged too), float32."""
        x = self.feats.numpy().astype(np.float32, copy=False)
        if x.ndim > 2:
            x = x.reshape(len(x), -1, self.dim).mean(1)  # (R, *S, D) -> (R, D)
        out = np.zeros((len(self.video_ids), self.dim), np.float32)
        for i, (a, b) in enumerate(zip(self.offsets[:-1], self.offsets[1:])):
            if b > a:  # videos without rows stay zero
                out[i] = x[a:b].mean(0)
        return torch.from_numpy(out)

    def subset(self, index: Sequence[int] | np.ndarray) -> "RowSet":
        """The videos at ``index`` (in that order), as a new ``RowSet``."""
        index = np.asarray(index, dtype=np.int64)
        rows = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in index]) if len(index) \
            else np.zeros(0, np.int64)
        offsets = np.concatenate([[0], np.cumsum(self.n_rows[index])]).astype(np.int64)
        return RowSet(self.feats[torch.from_numpy(rows)], offsets, self.starts[rows], self.ends[rows],
                      tuple(self.video_ids[i] for i in index), self.labels[index],
                      tuple(self.metas[i] for i in index), self.set_name, self.info)


@dataclass(frozen=True, eq=False)
class PaddedSequences:
    """Per-video row sequences padded (or uniformly subsampled) to one length.

    Attributes:
        feats: ``(V, T, *row_shape)`` rows, zero padded.
        mask: ``(V, T)`` bool, real rows.
        starts: ``(V, T)`` float64 row start times (NaN on padding).
        ends: ``(V, T)`` float64 row end times (NaN on padding).
        video_ids: the ``V`` ids.
        labels: ``(V,)`` first labels (``-1`` unlabelled).
        set_name: the feature set.
    """

    feats: torch.Tensor
    mask: torch.Tensor
    starts: np.ndarray
    ends: np.ndarray
    video_ids: tuple[str, ...]
    labels: np.ndarray
    set_name: str

    @property
    def dim(self) -> int:
        return int(self.feats.shape[-1])


def _as_tensor(feats: np.ndarray, dtype: torch.dtype | None) -> torch.Tensor:
    arr = np.asarray(feats)
    if arr.dtype not in (np.float16, np.float32, np.float64):  # bfloat16 (ml_dtypes), ints
        arr = arr.astype(np.float32)
    t = torch.from_numpy(np.ascontiguousarray(arr))
    return t.to(dtype) if dtype is not None else t


def load_rows(
    store: FeatureStore,
    name: str,
    *,
    split: str | Collection[str] | None = None,
    domain: str | Collection[str] | None = None,
    labels: int | Collection[int] | None = None,
    video_ids: Sequence[str] | None = None,
    require_labels: bool = False,
    allow_stale: bool = False,
    dtype: torch.dtype | None = None,
    max_bytes: int = 8 << 30,
) -> RowSet:
    """Read the rows of a feature set's videos (optionally filtered) into a :class:`RowSet`.

    The whole selection is read at once (reads coalesced by location); sets larger than
    ``max_bytes`` are refused with the advice to stream them (``RowDataset`` with
    ``ChunkShuffleSampler``, or :func:`iter_row_chunks`).

    Args:
        store: an open store.
        name: the feature set (stale sets raise ``StaleFeaturesError`` unless ``allow_stale``).
        split / domain / labels / video_ids: metadata filters (see ``select_videos``).
        require_labels: raise when a selected video has no label.
        dtype: cast the features (default: keep float16 / float32 as stored).
        max_bytes: refuse selections larger than this in memory.

    Raises:
        StoreError: no video selected, an unlabelled video with ``require_labels``, or too large.
    """
    fs = store.open_set(name, allow_stale=allow_stale)
    ids, table = select_videos(fs, split=split, domain=domain, labels=labels, video_ids=video_ids,
                               require_match=True)
    if not ids:
        raise StoreError(f"feature set {name!r}: no videos selected (split={split!r}, domain={domain!r}); "
                         "check `featbank store info` for what it holds")
    n_rows = table["n_rows"].astype(np.int64)
    row_bytes = int(np.prod(fs.info.row_shape)) * np.dtype(fs.info.dtype if fs.info.dtype != "bfloat16"
                                                           else "float32").itemsize
    need = int(n_rows.sum()) * row_bytes
    if need > max_bytes:
        raise StoreError(f"feature set {name!r}: the selection needs {need / 2**30:.1f} GiB in memory "
                         f"(limit {max_bytes / 2**30:.1f} GiB); stream it with RowDataset + ChunkShuffleSampler "
                         "or iter_row_chunks, or raise max_bytes")
    metas = tuple(fs.meta(v) for v in ids)
    lab = np.array([m.label for m in metas], dtype=np.int64)
    if require_labels and (lab < 0).any():
        bad = ids[int(np.flatnonzero(lab < 0)[0])]
        raise StoreError(f"feature set {name!r}: video {bad!r} has no label, but labels are required here")
    parts = fs.read_many(ids)
    feats = np.concatenate([p.feats for p in parts]) if parts else np.zeros((0, *fs.info.row_shape))
    starts = np.concatenate([p.starts for p in parts]).astype(np.float64)
    ends = np.concatenate([p.ends for p in parts]).astype(np.float64)
    offsets = np.concatenate([[0], np.cumsum([len(p.feats) for p in parts])]).astype(np.int64)
    return RowSet(_as_tensor(feats, dtype), offsets, starts, ends, tuple(ids), lab, metas, name, fs.info)


def iter_row_chunks(store: FeatureStore, name: str, *, videos_per_chunk: int = 256,
                    allow_stale: bool = False, **filters: Any) -> Iterator[RowSet]:
    """Stream a (large) feature set as consecutive :class:`RowSet` chunks of whole videos."""
    fs = store.open_set(name, allow_stale=allow_stale)
    ids, _ = select_videos(fs, **filters)
    for i in range(0, len(ids), videos_per_chunk):
        yield load_rows(store, name, video_ids=ids[i:i + videos_per_chunk], allow_stale=allow_stale)


def pad_sequences(rows: RowSet, max_len: int | None = None) -> PaddedSequences:
    """Pad every video's rows to one length: ``(R, *S) -> (V, T, *S)`` with a mask.

    ``T`` is the longest video, capped at ``max_len``; a longer video is subsampled at
    uniform positions ``floor(j * n / T)`` (its whole span stays covered).
    """
    counts = rows.n_rows
    longest = int(max(1, counts.max(initial=1)))
    t = longest if max_len is None else int(min(max_len, longest))
    if t < 1:
        raise ValueError(f"pad_sequences: max_len must be >= 1, got {max_len}")
    v = len(rows.video_ids)
    feats = torch.zeros((v, t, *rows.row_shape), dtype=rows.feats.dtype)
    mask = torch.zeros(v, t, dtype=torch.bool)
    starts = np.full((v, t), np.nan)
    ends = np.full((v, t), np.nan)
    n = np.minimum(counts, t)  # (V,)
    slot = np.arange(t)[None, :]  # (1, T)
    valid = slot < n[:, None]  # (V, T)
    pos = np.where(counts[:, None] > t, np.floor(slot * counts[:, None] / t), slot).astype(np.int64)
    src = rows.offsets[:-1, None] + pos  # (V, T) row index of slot j of video i
    vi, sj = np.nonzero(valid)
    src_rows = src[vi, sj]
    feats[torch.from_numpy(vi), torch.from_numpy(sj)] = rows.feats[torch.from_numpy(src_rows)]
    mask[torch.from_numpy(vi), torch.from_numpy(sj)] = True
    starts[vi, sj] = rows.starts[src_rows]
    ends[vi, sj] = rows.ends[src_rows]
    return PaddedSequences(feats, mask, starts, ends, rows.video_ids, rows.labels, rows.set_name)


def step_targets(starts: np.ndarray, ends: np.ndarray, segments: Sequence[tuple[float, float, int]],
                 num_classes: int) -> np.ndarray:
    """Multi-hot targets of one video on its row time grid.

    A row is positive for a class when the row's centre ``(start + end) / 2`` lies in
    ``[seg_start, seg_end)`` of a segment of that class. NaN rows (padding) stay 0.

    Args:
        starts: ``(T,)`` row start times (seconds).
        ends: ``(T,)`` row end times.
        segments: ``(start_s, end_s, class)`` annotations of the video.
        num_classes: number of classes ``C``.

    Returns:
        ``(T, C)`` float32 0/1 targets.
    """
    centre = (np.asarray(starts, np.float64) + np.asarray(ends, np.float64)) / 2  # (T,)
    out = np.zeros((len(centre), num_classes), np.float32)
    for s, e, c in segments:
        if not 0 <= int(c) < num_classes:
            raise ValueError(f"step_targets: class {c} outside [0, {num_classes})")
        with np.errstate(invalid="ignore"):
            out[(centre >= s) & (centre < e), int(c)] = 1.0
    return out
