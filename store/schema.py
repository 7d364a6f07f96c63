"""Records the store persists: backbone spec, feature-set provenance, video metadata, rows.

These are the types that cross the store boundary, so they are strict: frozen
dataclasses with ``to_dict`` / ``from_dict`` that round-trip through JSON.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

import numpy as np

SCHEMA_VERSION = 1
DTYPES = ("float16", "float32", "bfloat16")
LEVELS = ("clip", "frame")


def _featbank_version() -> str:
    try:
        from importlib.metadata import version

        return version("featbank")
    except Exception:  # not installed (running from a source tree)
        return "0+unknown"


@dataclass(frozen=True)
class BackboneSpec:
    """Preprocessing and time grid of a backbone; written into every feature set it produces.

    Attributes:
        name: registry name of the backbone, e.g. ``"i3d-rgb-k400"``.
        clip_len: frames per clip window fed to the model (1 for image models).
        frame_stride: step between sampled frames inside a clip, in frames at ``target_fps``.
        target_fps: frames are resampled to this rate before windowing (None keeps the source rate).
        resize: short side in pixels that frames are resized to before cropping.
        crop: side of the square input crop in pixels.
        mean: per-channel mean subtracted after scaling to [0, 1].
        std: per-channel std divided after subtracting the mean.
        feature_dim: channels of the pooled feature (``num_features``).
        weights_id: sha256 of the weights (``"random"`` for an uninitialised model).
        in_channels: 3 for RGB, 2 for optical flow.
    """

    name: str
    clip_len: int
    frame_stride: int
    target_fps: float | None
    resize: int
    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    feature_dim: int
    weights_id: str
    in_channels: int = 3

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BackboneSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"BackboneSpec: unknown keys {sorted(unknown)}")
        kw = dict(d)
        kw["mean"], kw["std"] = tuple(kw["mean"]), tuple(kw["std"])
        return cls(**kw)

    def replace(self, **kw: Any) -> "BackboneSpec":
        return dataclasses.replace(self, **kw)


@dataclass(frozen=True)
class FeatureSetInfo:
    """Schema and provenance of one feature set.

    Attributes:
        name: feature-set name, e.g. ``"i3d-rgb-k400/Mixed_5c/c64s32"`` (slashes allowed).
        row_shape: shape of one row: ``(D,)``, ``(V, D)`` for views, ``(C, H, W)`` for maps.
        dtype: one of ``float16`` (default), ``float32``, ``bfloat16``.
        level: ``"clip"`` (one row per clip window) or ``"frame"`` (one row per time step).
        backbone: registry name of the producing backbone ("" for imported features).
        weights_id: sha256 of the producing weights ("" for imported features).
        endpoint: backbone endpoint the features were taken from.
        spec: ``BackboneSpec.to_dict()`` of the producer (empty for imported features).
        sampling: how rows were sampled (window, stride, fps policy, views, decoder, transforms).
        featbank_version: version that created the set.
        created: ISO-8601 UTC creation time.
        extra: free-form JSON-serialisable provenance.
    """

    name: str
    row_shape: tuple[int, ...]
    dtype: str = "float16"
    level: Literal["clip", "frame"] = "clip"
    backbone: str = ""
    weights_id: str = ""
    endpoint: str = ""
    spec: Mapping[str, Any] = field(default_factory=dict)
    sampling: Mapping[str, Any] = field(default_factory=dict)
    featbank_version: str = field(default_factory=_featbank_version)
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat())
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or self.name.startswith("/") or self.name.endswith("/") or "//" in self.name:
            raise ValueError(f"invalid feature-set name {self.name!r}: use non-empty parts joined by '/'")
        if self.dtype not in DTYPES:
            raise ValueError(f"feature set {self.name!r}: dtype {self.dtype!r} not in {DTYPES}")
        if self.level not in LEVELS:
            raise ValueError(f"feature set {self.name!r}: level {self.level!r} not in {LEVELS}")
        shape = tuple(int(s) for s in self.row_shape)
        if not shape or any(s <= 0 for s in shape):
            raise ValueError(f"feature set {self.name!r}: row_shape {self.row_shape!r} must be positive ints")
        object.__setattr__(self, "row_shape", shape)

    @property
    def dim(self) -> int:
        """Size of the last axis (the feature dimension)."""
        return self.row_shape[-1]

    def compatible_with(self, other: "FeatureSetInfo") -> bool:
        """True when ``other`` describes the same data layout and producer (times ignored)."""
        keys = ("name", "row_shape", "dtype", "level", "backbone", "weights_id", "endpoint")
        return all(getattr(self, k) == getattr(other, k) for k in keys)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["row_shape"] = list(self.row_shape)
        d["spec"], d["sampling"], d["extra"] = dict(self.spec), dict(self.sampling), dict(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FeatureSetInfo":
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["row_shape"] = tuple(kw["row_shape"])
        return cls(**kw)


@dataclass(frozen=True)
class VideoMeta:
    """Per-video metadata row. ``labels`` holds class indices (several for multi-label sets)."""

    video_id: str
    source: str = ""
    labels: tuple[int, ...] = ()
    split: str = ""
    domain: str = ""
    fps: float = math.nan
    n_frames: int = -1
    duration: float = math.nan

    def __post_init__(self) -> None:
        if not isinstance(self.video_id, str) or not self.video_id:
            raise ValueError(f"video_id must be a non-empty string, got {self.video_id!r}")
        object.__setattr__(self, "labels", tuple(int(x) for x in self.labels))

    @property
    def label(self) -> int:
        """First label, or -1 when unlabelled."""
        return self.labels[0] if self.labels else -1

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["labels"] = list(self.labels)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VideoMeta":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True, eq=False)
class VideoRows:
    """The rows of one video (or a slice of them).

    Attributes:
        feats: ``(N, *row_shape)`` features.
        starts: ``(N,)`` float64 start time of each row in seconds.
        ends: ``(N,)`` float64 end time of each row in seconds.
        frame_idx: ``(N, 2)`` int64 first and last source-frame index behind each row
            (``-1`` where unknown).
    """

    feats: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    frame_idx: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.feats)
        object.__setattr__(self, "starts", np.asarray(self.starts, dtype=np.float64).reshape(-1))
        object.__setattr__(self, "ends", np.asarray(self.ends, dtype=np.float64).reshape(-1))
        fi = self.frame_idx
        fi = np.full((n, 2), -1, np.int64) if fi is None else np.asarray(fi, dtype=np.int64).reshape(-1, 2)
        object.__setattr__(self, "frame_idx", fi)
        for name in ("starts", "ends", "frame_idx"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"VideoRows: {name} has {len(getattr(self, name))} rows, feats has {n}")

    def __len__(self) -> int:
        return len(self.feats)

    def slice(self, sl: slice) -> "VideoRows":
        return VideoRows(self.feats[sl], self.starts[sl], self.ends[sl], self.frame_idx[sl])

    def window(self, t0: float, t1: float) -> "VideoRows":
        """Rows whose time span overlaps ``[t0, t1)``."""
        keep = (self.ends > t0) & (self.starts < t1)
        idx = np.flatnonzero(keep)
        return self.slice(slice(idx[0], idx[-1] + 1) if len(idx) else slice(0, 0))

    def equals(self, other: "VideoRows") -> bool:
        """Exact equality of every array (NaN-safe), used for idempotent re-writes."""
        return (
            self.feats.shape == other.feats.shape
            and np.array_equal(np.asarray(self.feats), np.asarray(other.feats), equal_nan=True)
            and np.array_equal(self.starts, other.starts, equal_nan=True)
            and np.array_equal(self.ends, other.ends, equal_nan=True)
            and np.array_equal(self.frame_idx, other.frame_idx)
        )
