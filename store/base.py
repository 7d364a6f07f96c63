"""The store contract: two small ABCs every backend implements.

``FeatureStore`` is a container of named feature sets plus store-wide state (current
backbone weights, failure log). ``FeatureSet`` holds, per video, a ragged sequence of
rows and a metadata record. Backends: ``ZarrStore`` (store/zarr_store.py) and
``MemoryStore`` (store/memory.py); both pass ``featbank.store.testing``.

Semantics every backend guarantees:

* ``write_video`` is atomic per video: the video is visible to readers only after all
  its rows and its metadata are durable. Re-writing a committed video with equal
  content is a no-op returning ``False``; different content raises
  ``VideoConflictError`` unless ``overwrite=True``.
* Rows are validated before anything is written: row shape (``DimensionMismatchError``)
  and finiteness (``NonFiniteError`` unless ``allow_nonfinite=True``).
* A feature set is *stale* when the store's current weights id for its backbone
  (``set_backbone_weights``) differs from the weights id it was produced with.
  ``open_set`` refuses a stale set with ``StaleFeaturesError`` unless ``allow_stale=True``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Iterable, Sequence

import numpy as np

from .errors import UnknownVideoError
from .schema import FeatureSetInfo, VideoMeta, VideoRows

# Metadata table columns, in order (``FeatureSet.metadata()``).
META_COLUMNS = ("video_id", "source", "label", "split", "domain", "fps", "n_frames", "duration", "n_rows")

# Failure-log record keys (``FeatureStore.failures()``).
FAILURE_KEYS = ("set", "video_id", "kind", "message", "time")


class FeatureSet(ABC):
    """One named feature set: ragged rows per video plus per-video metadata."""

    info: FeatureSetInfo

    # ---- membership -------------------------------------------------------------
    @abstractmethod
    def video_ids(self) -> list[str]:
        """Committed video ids, in commit order."""

    @abstractmethod
    def n_rows(self, video_id: str) -> int:
        """Number of rows of a committed video (``UnknownVideoError`` otherwise)."""

    @abstractmethod
    def meta(self, video_id: str) -> VideoMeta:
        """Metadata of a committed video (``UnknownVideoError`` otherwise)."""

    def __contains__(self, video_id: object) -> bool:
        try:
            self.n_rows(video_id)  # type: ignore[arg-type]
        except UnknownVideoError:
            return False
        return True

    def __len__(self) -> int:
        return len(self.video_ids())

    @property
    def name(self) -> str:
        return self.info.name

    # ---- writes -----------------------------------------------------------------
    @abstractmethod
    def write_video(
        self,
        rows: VideoRows,
        meta: VideoMeta,
        *,
        overwrite: bool = False,
        allow_nonfinite: bool = False,
    ) -> bool:
        """Commit all rows of one video atomically.

        Args:
            rows: the video's rows, ``feats`` of shape ``(N, *info.row_shape)`` (any float
                dtype; cast to ``info.dtype``). ``N`` may be 0.
            meta: the video's metadata; ``meta.video_id`` is the key.
            overwrite: replace a committed video with different content.
            allow_nonfinite: accept NaN/Inf rows.

        Returns:
            True when written, False when an identical committed video made it a no-op.
        """

    # ---- reads ------------------------------------------------------------------
    @abstractmethod
    def read(
        self,
        video_id: str,
        rows: slice | None = None,
        time: tuple[float, float] | None = None,
    ) -> VideoRows:
        """Rows of one video: all, a row range, or those overlapping a time window (seconds).

        ``feats`` come back in the set's dtype (``float32`` for bfloat16 sets, since
        numpy has no bfloat16).
        """

    def read_many(self, video_ids: Sequence[str]) -> list[VideoRows]:
        """Rows of several videos, in the order asked; backends coalesce by location."""
        return [self.read(v) for v in video_ids]

    @abstractmethod
    def read_all(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """The whole set in memory.

        Returns:
            ``(feats (R, *row_shape), offsets (V+1,) int64, video_ids)``: rows of video
            ``i`` are ``feats[offsets[i]:offsets[i+1]]``.
        """

    def metadata(self) -> dict[str, np.ndarray]:
        """Columnar metadata table (keys ``META_COLUMNS``), one entry per committed video."""
        ids = self.video_ids()
        metas = [self.meta(v) for v in ids]
        return {
            "video_id": np.array(ids, dtype=object),
            "source": np.array([m.source for m in metas], dtype=object),
            "label": np.array([m.label for m in metas], dtype=np.int64),
            "split": np.array([m.split for m in metas], dtype=object),
            "domain": np.array([m.domain for m in metas], dtype=object),
            "fps": np.array([m.fps for m in metas], dtype=np.float64),
            "n_frames": np.array([m.n_frames for m in metas], dtype=np.int64),
            "duration": np.array([m.duration for m in metas], dtype=np.float64),
            "n_rows": np.array([self.n_rows(v) for v in ids], dtype=np.int64),
        }

    # ---- lifecycle (writers) -----------------------------------------------------
    def compact(self) -> bool:
        """Consolidate this set's writer segments into the read-optimised layout.

        Returns True when anything was rewritten; backends without segments have nothing to do.
        """
        return False

    def close(self) -> None:
        """Release this process's writer handles; the set stays readable through its store."""


class FeatureStore(ABC):
    """A container of feature sets with store-wide provenance and a failure log."""

    path: str

    # ---- feature sets ------------------------------------------------------------
    @abstractmethod
    def feature_sets(self) -> list[str]:
        """Names of all feature sets, sorted."""

    @abstractmethod
    def create_set(self, info: FeatureSetInfo, *, exist_ok: bool = True) -> FeatureSet:
        """Create a feature set, or return the existing one when ``info`` is compatible.

        Raises ``FeatureSetConflictError`` when a set of that name exists with a different
        backbone, weights id, endpoint, row shape, dtype or level.
        """

    @abstractmethod
    def open_set(self, name: str, *, allow_stale: bool = False) -> FeatureSet:
        """Open a feature set for reading and writing.

        Raises ``UnknownFeatureSetError`` (listing the existing names) or
        ``StaleFeaturesError`` (naming the old and current weights ids) unless
        ``allow_stale``.
        """

    @abstractmethod
    def delete_set(self, name: str) -> None:
        """Remove a feature set and its data."""

    # ---- provenance / staleness --------------------------------------------------
    @abstractmethod
    def backbone_weights(self) -> dict[str, str]:
        """Current weights id per backbone name, as last set by ``set_backbone_weights``."""

    @abstractmethod
    def set_backbone_weights(self, backbone: str, weights_id: str) -> list[str]:
        """Declare the current weights of a backbone; returns the names of sets now stale."""

    def is_stale(self, name: str) -> bool:
        info = self.open_set(name, allow_stale=True).info
        current = self.backbone_weights().get(info.backbone)
        return bool(info.backbone) and current is not None and current != info.weights_id

    # ---- failure log -------------------------------------------------------------
    @abstractmethod
    def record_failure(self, set_name: str, video_id: str, kind: str, message: str) -> None:
        """Append a failure (e.g. ``decode_timeout``, ``decode_crash``, ``corrupt``) to the log."""

    @abstractmethod
    def failures(self, set_name: str | None = None) -> list[dict[str, Any]]:
        """Failure records (keys ``FAILURE_KEYS``), latest record per (set, video) only,
        excluding videos that have since been committed."""

    # ---- maintenance -------------------------------------------------------------
    @abstractmethod
    def validate(self) -> list[str]:
        """Check every committed video (rows, offsets, timestamps, metadata, finite values).

        Returns a list of human-readable problems; empty when the store is sound.
        """

    def compact(self) -> None:
        """Consolidate into the read-optimised layout without changing any value."""

    def close(self) -> None:
        """Release handles; further use is an error."""

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def iter_rows_of(fs: FeatureSet, video_ids: Iterable[str] | None = None) -> Iterable[tuple[str, VideoRows]]:
    """Yield ``(video_id, rows)`` over a set (all committed videos by default)."""
    ids = fs.video_ids() if video_ids is None else list(video_ids)
    for vid, rows in zip(ids, fs.read_many(ids)):
        yield vid, rows
