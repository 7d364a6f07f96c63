"""In-memory backend: the reference implementation of the store contract (tests, quick experiments)."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterable

import numpy as np

from ._rows import check_video, decode, differences, meta_equal, prepare_rows, read_dtype, slice_rows
from .base import FAILURE_KEYS, FeatureSet, FeatureStore
from .errors import (
    FeatureSetConflictError,
    StaleFeaturesError,
    StoreError,
    UnknownFeatureSetError,
    UnknownVideoError,
    VideoConflictError,
)
from .schema import FeatureSetInfo, VideoMeta, VideoRows


def stale_error(info: FeatureSetInfo, current: str) -> StaleFeaturesError:
    """The error ``open_set`` raises for a stale set (shared by backends)."""
    return StaleFeaturesError(
        f"feature set {info.name!r} was produced by {info.backbone!r} weights {info.weights_id!r}, "
        f"but the current weights of {info.backbone!r} are {current!r}; "
        "pass allow_stale=True or re-extract"
    )


def conflict_error(existing: FeatureSetInfo, wanted: FeatureSetInfo) -> FeatureSetConflictError:
    """The error ``create_set`` raises when a set exists with another layout or producer."""
    keys = ("row_shape", "dtype", "level", "backbone", "weights_id", "endpoint")
    diffs = [f"{k}: {getattr(existing, k)!r} (stored) vs {getattr(wanted, k)!r}" for k in keys
             if getattr(existing, k) != getattr(wanted, k)]
    return FeatureSetConflictError(
        f"feature set {existing.name!r} already exists with a different {', '.join(diffs)}; "
        "choose another name or delete_set() it first"
    )


def latest_failures(
    records: Iterable[dict[str, Any]], set_name: str | None, committed: Callable[[str, str], bool]
) -> list[dict[str, Any]]:
    """Latest record per (set, video), dropping videos committed since; sorted by time."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in sorted(records, key=lambda r: r["time"]):
        if set_name is not None and rec["set"] != set_name:
            continue
        latest[(rec["set"], rec["video_id"])] = {k: rec[k] for k in FAILURE_KEYS}
    return [r for (s, v), r in latest.items() if not committed(s, v)]


class MemoryFeatureSet(FeatureSet):
    """A feature set held in Python dicts; values are stored in the set's dtype."""

    def __init__(self, info: FeatureSetInfo) -> None:
        self.info = info
        self._videos: dict[str, tuple[VideoRows, np.ndarray, VideoMeta, bool]] = {}
        self._lock = threading.Lock()

    def video_ids(self) -> list[str]:
        return list(self._videos)

    def _get(self, video_id: str) -> tuple[VideoRows, np.ndarray, VideoMeta, bool]:
        try:
            return self._videos[video_id]
        except KeyError:
            raise UnknownVideoError(f"video {video_id!r} is not committed in feature set {self.info.name!r}") from None

    def n_rows(self, video_id: str) -> int:
        return len(self._get(video_id)[0])

    def meta(self, video_id: str) -> VideoMeta:
        return self._get(video_id)[2]

    def write_video(
        self, rows: VideoRows, meta: VideoMeta, *, overwrite: bool = False, allow_nonfinite: bool = False
    ) -> bool:
        stored, as_read = prepare_rows(self.info, rows, meta, allow_nonfinite)
        vid = meta.video_id
        with self._lock:
            old = self._videos.get(vid)
            if old is not None and not overwrite:
                if old[0].equals(as_read) and meta_equal(old[2], meta):
                    return False
                raise VideoConflictError(
                    f"video {vid!r} is already committed in feature set {self.info.name!r} with a different "
                    f"{differences(old[0], old[2], as_read, meta)}; pass overwrite=True to replace it"
                )
            if old is not None and old[0].equals(as_read) and meta_equal(old[2], meta):
                return False
            self._videos[vid] = (as_read, stored.copy(), meta, allow_nonfinite)
            return True

    def read(self, video_id: str, rows: slice | None = None, time: tuple[float, float] | None = None) -> VideoRows:
        full = self._get(video_id)[0]
        out = slice_rows(full, rows, time)
        return VideoRows(out.feats.copy(), out.starts.copy(), out.ends.copy(), out.frame_idx.copy())

    def read_all(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        ids = self.video_ids()
        counts = np.array([len(self._videos[v][0]) for v in ids], dtype=np.int64)
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        if ids:
            feats = np.concatenate([self._videos[v][0].feats for v in ids], axis=0)
        else:
            feats = np.zeros((0, *self.info.row_shape), dtype=read_dtype(self.info))
        return feats, offsets, ids

    def validate(self) -> list[str]:
        problems = []
        for vid, (rows, stored, meta, nonfinite_ok) in self._videos.items():
            problems += check_video(self.info, vid, rows, meta, len(rows), nonfinite_ok)
            if not np.array_equal(decode(self.info, stored), rows.feats, equal_nan=True):
                problems.append(f"set {self.info.name!r}, video {vid!r}: stored bytes differ from the rows")
        return problems


class MemoryStore(FeatureStore):
    """A feature store living in this process only (nothing persisted).

    Args:
        path: a label for messages (``"memory"`` by default).
    """

    def __init__(self, path: str = "memory") -> None:
        self.path = path
        self._sets: dict[str, MemoryFeatureSet] = {}
        self._weights: dict[str, str] = {}
        self._failures: list[dict[str, Any]] = []
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"store {self.path!r} is closed")

    def feature_sets(self) -> list[str]:
        self._check_open()
        return sorted(self._sets)

    def create_set(self, info: FeatureSetInfo, *, exist_ok: bool = True, **_backend_kw: Any) -> FeatureSet:
        self._check_open()
        existing = self._sets.get(info.name)
        if existing is not None:
            if not existing.info.compatible_with(info):
                raise conflict_error(existing.info, info)
            if not exist_ok:
                raise FeatureSetConflictError(f"feature set {info.name!r} already exists (exist_ok=False)")
            return existing
        for other in self._sets:
            if other.startswith(info.name + "/") or info.name.startswith(other + "/"):
                raise FeatureSetConflictError(
                    f"feature set {info.name!r} would nest with existing set {other!r}; choose another name"
                )
        fs = MemoryFeatureSet(info)
        self._sets[info.name] = fs
        return fs

    def open_set(self, name: str, *, allow_stale: bool = False) -> FeatureSet:
        self._check_open()
        try:
            fs = self._sets[name]
        except KeyError:
            raise UnknownFeatureSetError(
                f"no feature set {name!r} in store {self.path!r}; existing sets: {sorted(self._sets)}"
            ) from None
        current = self._weights.get(fs.info.backbone)
        if not allow_stale and fs.info.backbone and current is not None and current != fs.info.weights_id:
            raise stale_error(fs.info, current)
        return fs

    def delete_set(self, name: str) -> None:
        self.open_set(name, allow_stale=True)
        del self._sets[name]

    def backbone_weights(self) -> dict[str, str]:
        self._check_open()
        return dict(self._weights)

    def set_backbone_weights(self, backbone: str, weights_id: str) -> list[str]:
        self._check_open()
        self._weights[backbone] = weights_id
        return [n for n in self.feature_sets() if self.is_stale(n)]

    def record_failure(self, set_name: str, video_id: str, kind: str, message: str) -> None:
        self._check_open()
        self._failures.append(
            {"set": set_name, "video_id": video_id, "kind": kind, "message": message, "time": time.time()}
        )

    def failures(self, set_name: str | None = None) -> list[dict[str, Any]]:
        self._check_open()

        def committed(s: str, v: str) -> bool:
            return s in self._sets and v in self._sets[s]

        return latest_failures(self._failures, set_name, committed)

    def validate(self) -> list[str]:
        self._check_open()
        return [p for n in self.feature_sets() for p in self._sets[n].validate()]

    def close(self) -> None:
        self._closed = True
