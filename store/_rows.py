"""Row validation, dtype casting (incl. bfloat16 bits) and per-video checks shared by backends."""

from __future__ import annotations

import json

import numpy as np

from .errors import DimensionMismatchError, NonFiniteError
from .schema import FeatureSetInfo, VideoMeta, VideoRows


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float values to bfloat16 (nearest, ties to even) and return the raw bits as uint16.

    NaN stays NaN (quiet, sign kept); +-Inf stays +-Inf.
    """
    f32 = np.ascontiguousarray(x, dtype=np.float32)
    bits = f32.view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    out = rounded.astype(np.uint16)
    nan = np.isnan(f32)
    if nan.any():
        out[nan] = ((bits[nan] >> 16).astype(np.uint16) & 0x8000) | 0x7FC0
    return out


def from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    """Widen raw bfloat16 bits (uint16) to float32 exactly."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def storage_dtype(info: FeatureSetInfo) -> np.dtype:
    """numpy dtype the rows are stored in (uint16 bits for bfloat16)."""
    return np.dtype(np.uint16) if info.dtype == "bfloat16" else np.dtype(info.dtype)


def read_dtype(info: FeatureSetInfo) -> np.dtype:
    """numpy dtype rows are returned in (float32 for bfloat16)."""
    return np.dtype(np.float32) if info.dtype == "bfloat16" else np.dtype(info.dtype)


def decode(info: FeatureSetInfo, stored: np.ndarray) -> np.ndarray:
    """Stored rows -> rows as returned to readers."""
    return from_bf16_bits(stored) if info.dtype == "bfloat16" else stored


def prepare_rows(
    info: FeatureSetInfo, rows: VideoRows, meta: VideoMeta, allow_nonfinite: bool
) -> tuple[np.ndarray, VideoRows]:
    """Validate one video's rows and cast them to the set's storage dtype.

    Returns:
        ``(stored, as_read)``: rows in the storage dtype, and the ``VideoRows`` a reader
        will get back (same times, feats decoded from ``stored``).

    Raises:
        DimensionMismatchError: rows do not have shape ``(N, *info.row_shape)``.
        NonFiniteError: NaN/Inf present after the cast (unless ``allow_nonfinite``).
        ValueError: times have ends before starts.
        TypeError: non-numeric feats.
    """
    vid = meta.video_id
    feats = np.asarray(rows.feats)
    if feats.dtype.kind not in "fiub":
        raise TypeError(f"set {info.name!r}, video {vid!r}: feats must be numeric, got dtype {feats.dtype}")
    if feats.ndim != 1 + len(info.row_shape) or tuple(feats.shape[1:]) != info.row_shape:
        raise DimensionMismatchError(
            f"set {info.name!r}, video {vid!r}: rows have shape {tuple(feats.shape)}, expected "
            f"(N, {', '.join(map(str, info.row_shape))}) (feature dim {info.dim}); "
            "write to a set created with this row shape"
        )
    if info.dtype == "bfloat16":
        stored = to_bf16_bits(feats)
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            stored = np.ascontiguousarray(feats, dtype=info.dtype)
    as_read = decode(info, stored)
    if not allow_nonfinite and as_read.size and not np.isfinite(as_read).all():
        bad = np.flatnonzero(~np.isfinite(as_read.reshape(len(as_read), -1)).all(axis=1))
        raise NonFiniteError(
            f"set {info.name!r}, video {vid!r}: {len(bad)} row(s) contain NaN/Inf after casting to "
            f"{info.dtype} (first bad row {int(bad[0])}); fix the input or pass allow_nonfinite=True"
        )
    bad_t = rows.ends < rows.starts
    if bad_t.any():
        raise ValueError(
            f"set {info.name!r}, video {vid!r}: row {int(np.flatnonzero(bad_t)[0])} ends before it starts"
        )
    return stored, VideoRows(as_read, rows.starts.copy(), rows.ends.copy(), rows.frame_idx.copy())


def check_video(
    info: FeatureSetInfo, vid: str, rows: VideoRows, meta: VideoMeta, n_rows: int, nonfinite_ok: bool
) -> list[str]:
    """Problems of one committed video (empty when sound)."""
    problems = []
    where = f"set {info.name!r}, video {vid!r}"
    if meta.video_id != vid:
        problems.append(f"{where}: metadata names video {meta.video_id!r}")
    if len(rows) != n_rows:
        problems.append(f"{where}: index says {n_rows} rows, data has {len(rows)}")
    if tuple(rows.feats.shape[1:]) != info.row_shape:
        problems.append(f"{where}: row shape {tuple(rows.feats.shape[1:])} != {info.row_shape}")
    if not nonfinite_ok and rows.feats.size and not np.isfinite(rows.feats).all():
        problems.append(f"{where}: NaN/Inf values in the stored rows")
    if (rows.ends < rows.starts).any():
        problems.append(f"{where}: a row ends before it starts")
    if (rows.frame_idx[:, 1] < rows.frame_idx[:, 0]).any():
        problems.append(f"{where}: a row's last frame index precedes its first")
    return problems


def meta_equal(a: VideoMeta, b: VideoMeta) -> bool:
    """Field-wise equality of two metadata records, treating NaN as equal to NaN."""
    return json.dumps(a.to_dict(), sort_keys=True) == json.dumps(b.to_dict(), sort_keys=True)


def differences(old_rows: VideoRows, old_meta: VideoMeta, new_rows: VideoRows, new_meta: VideoMeta) -> str:
    """What differs between a committed video and a new version, e.g. ``"source ('/a/x.npy' -> '/b/x.npy')"``."""
    out = []
    if old_rows.feats.shape != new_rows.feats.shape:
        out.append(f"rows ({len(old_rows)} -> {len(new_rows)})")
    elif not np.array_equal(np.asarray(old_rows.feats), np.asarray(new_rows.feats), equal_nan=True):
        out.append("feature values")
    elif not (np.array_equal(old_rows.starts, new_rows.starts, equal_nan=True)
              and np.array_equal(old_rows.ends, new_rows.ends, equal_nan=True)):
        out.append("row times")
    elif not np.array_equal(old_rows.frame_idx, new_rows.frame_idx):
        out.append("row frame indices")
    a, b = old_meta.to_dict(), new_meta.to_dict()
    for k in a:
        if json.dumps(a[k]) != json.dumps(b[k]):
            out.append(f"{k} ({a[k]!r} -> {b[k]!r})")
    return ", ".join(out) or "content"


def slice_rows(rows: VideoRows, sl: slice | None, time: tuple[float, float] | None) -> VideoRows:
    """Apply an optional row slice, then an optional time window."""
    if sl is not None:
        rows = rows.slice(sl)
    if time is not None:
        rows = rows.window(float(time[0]), float(time[1]))
    return rows
