"""Import and export of feature sets: npy folders and HDF5 files.

These are interchange formats, not backends (crash safety and checksums live in the store): a feature set is exported
to, or imported from, the layouts that extraction toolkits (video_features) and
temporal-detection repos read and write.

npy folder (``export_npy`` / ``import_npy``)::

    OUT/
      VIDEO_ID.npy           (N, *row_shape) features of one video, in the set's dtype
      sub/dir/VIDEO_ID.npy   video ids containing "/" map to subfolders
      _featbank.json         sidecar: feature-set provenance, per-video metadata and the
                             starts / ends / frame_idx of every row (exact round trip)

HDF5 file (``export_hdf5`` / ``import_hdf5``)::

    /VIDEO_ID                dataset (N, *row_shape); attributes video_id, source, labels,
                             split, domain, fps, n_frames, duration
    /_featbank/video_ids     commit order of the videos (variable-length strings)
    /_featbank/rows/VIDEO_ID compound dataset (start, end, first_frame, last_frame) per row
    file attributes          featbank_format, featbank_format_version, feature_set_info (JSON)

Exporting then importing gives back equal arrays, dtypes, metadata, timestamps and
feature-set provenance (bfloat16 sets travel as float32 values that are exactly
representable in bfloat16, and are cast back on import).

Plain inputs (an npy folder without the sidecar, an HDF5 file written by another
tool) import too. Every numeric array is one video: ``(N, *row_shape)``, or ``(D,)``
taken as a single row. Its video id is the path relative to the folder without
``.npy`` (the dataset path inside an HDF5 file). Timestamps are then derived from the
row index: row ``i`` spans ``[i * row_seconds, (i + 1) * row_seconds)`` with
``row_seconds=1.0`` by default (so time is in rows) and source frame indices are
unknown (``-1``); the choice is recorded in the set's ``sampling`` provenance.

Every import checks all of its input before writing anything: row shapes agree across
files (and with an existing target set), values are numeric and finite (after the cast
to the set's dtype), and videos already committed with different content are named.
Bad input raises ``ImportFormatError`` naming the file(s); nothing is committed. A
set created by a failed import is removed again.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from ._rows import differences, from_bf16_bits, meta_equal, to_bf16_bits
from .base import FeatureSet, FeatureStore
from .errors import ImportFormatError, StoreError, VideoConflictError
from .schema import FeatureSetInfo, VideoMeta, VideoRows

SIDECAR = "_featbank.json"
NPY_FORMAT = "featbank-npy"
HDF5_FORMAT = "featbank-hdf5"
FORMAT_VERSION = 1
H5_META_GROUP = "_featbank"
_ROW_TIMES_DTYPE = np.dtype([("start", "<f8"), ("end", "<f8"), ("first_frame", "<i8"), ("last_frame", "<i8")])
_READ_BATCH = 64  # videos per read_many call while exporting
_SHOW = 3  # file names listed per group in error messages


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote.

    Attributes:
        path: the npy folder or HDF5 file written.
        n_videos: videos exported.
        n_rows: rows exported over all videos.
    """

    path: str
    n_videos: int
    n_rows: int


@dataclass(frozen=True)
class ImportReport:
    """What an import committed.

    Attributes:
        set_name: the feature set written into.
        written: videos newly committed (or overwritten).
        unchanged: videos already committed with identical content (no-ops).
        n_rows: rows over all imported videos.
        row_shape: row shape of the set.
        dtype: dtype of the set.
        exact: True when the input carried featbank provenance (sidecar / file
            attributes), so metadata and timestamps were restored exactly.
    """

    set_name: str
    written: int
    unchanged: int
    n_rows: int
    row_shape: tuple[int, ...]
    dtype: str
    exact: bool


# ---------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------
def _check_video_id_path(video_id: str, fmt: str) -> list[str]:
    """Split a video id into path parts, refusing ids that are not safe relative paths."""
    parts = video_id.split("/")
    if any(p in ("", ".", "..") for p in parts) or "\\" in video_id or "\x00" in video_id:
        raise StoreError(
            f"video id {video_id!r} cannot be exported to {fmt}: ids map to relative paths, "
            "so empty parts, '.', '..', backslashes and NUL are not allowed"
        )
    return parts


def _read_batches(fs: FeatureSet, ids: Sequence[str]) -> Iterator[tuple[str, VideoRows]]:
    for i in range(0, len(ids), _READ_BATCH):
        batch = list(ids[i : i + _READ_BATCH])
        yield from zip(batch, fs.read_many(batch))


def _export_array(feats: np.ndarray) -> np.ndarray:
    """Array written to disk: the set's dtype (bfloat16 comes back from reads as float32)."""
    arr = np.asarray(feats)
    if arr.dtype not in (np.float16, np.float32):
        arr = arr.astype(np.float32)
    return np.ascontiguousarray(arr)


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _is_featbank_npy_export(path: Path) -> bool:
    """True when ``path`` is a folder written by ``export_npy``: its sidecar lists every file in it."""
    side = path / SIDECAR
    try:
        sidecar = json.loads(side.read_text())
        listed = {str(e["file"]) for e in sidecar["videos"]}
        ok = isinstance(sidecar, dict) and sidecar.get("format") == NPY_FORMAT
    except (OSError, ValueError, KeyError, TypeError):
        return False
    present = {p.relative_to(path).as_posix() for p in path.rglob("*") if not p.is_dir()}
    return ok and present <= listed | {SIDECAR}


def _is_featbank_hdf5_export(path: Path) -> bool:
    """True when ``path`` is a file written by ``export_hdf5`` (its format attribute says so)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return _h5_attr_str(f.attrs.get("featbank_format", "")) == HDF5_FORMAT
    except OSError:
        return False


def _inside_a_store(path: Path) -> Path | None:
    """The featbank store at or above ``path`` (exporting there would write into or over it)."""
    for p in [path, *path.parents]:
        try:
            meta = json.loads((p / "zarr.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and "featbank" in meta.get("attributes", {}):
            return p
    return None


def _clear_target(path: Path, overwrite: bool, what: str) -> None:
    """Refuse an export target that holds anything but a previous export of the same kind.

    ``overwrite`` only ever replaces what an export of featbank wrote (an npy folder whose
    sidecar lists every file in it, an HDF5 file with the featbank format attribute): never
    a store, never a folder or file of anything else.
    """
    path = path.absolute()
    store = _inside_a_store(path)
    if store is not None:
        raise StoreError(f"{what} {path} would be written {'over' if store == path else 'inside'} the featbank store "
                         f"{store}; choose a path outside it")
    if not path.exists() and not path.is_symlink():
        return
    if what == "HDF5 file":
        if path.is_dir():
            raise StoreError(f"{what} {path} is a folder; an HDF5 export never replaces a folder: choose a file path")
        recognised = _is_featbank_hdf5_export(path)
    else:
        if not path.is_dir() or path.is_symlink():
            raise StoreError(f"{what} {path} exists and is not a folder; choose a new path")
        if not any(path.iterdir()):
            return
        recognised = _is_featbank_npy_export(path)
    if not recognised:
        raise StoreError(
            f"{what} {path} exists and was not written by a featbank export "
            f"({'no featbank format attribute' if what == 'HDF5 file' else 'no sidecar listing every file in it'}); "
            "refusing to replace it, even with overwrite: choose a new path"
        )
    if not overwrite:
        raise StoreError(f"{what} {path} already exists (an earlier featbank export); choose a new path or pass "
                         "overwrite=True (--overwrite) to replace it")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _np_dtype_of_set(dtype: str) -> np.dtype:
    return np.dtype(np.float16) if dtype == "float16" else np.dtype(np.float32)


def _as_stored(arr: np.ndarray, dtype: str) -> np.ndarray:
    """The values a store of ``dtype`` holds after writing ``arr`` (bfloat16 rounded, as float32)."""
    if dtype == "bfloat16":
        return from_bf16_bits(to_bf16_bits(arr))
    with np.errstate(over="ignore"):  # overflow shows up as Inf and is reported by the caller
        return np.asarray(arr).astype(_np_dtype_of_set(dtype), copy=False)


def _plain_dtype(dtypes: Sequence[np.dtype]) -> str:
    """Set dtype for plain files: float16 when every file is float16, else float32."""
    return "float16" if dtypes and all(d == np.float16 for d in dtypes) else "float32"


def _times_from_rows(n: int, row_seconds: float) -> tuple[np.ndarray, np.ndarray, None]:
    idx = np.arange(n, dtype=np.float64)
    return idx * row_seconds, (idx + 1.0) * row_seconds, None


def _labels_for(labels: Mapping[str, int | Sequence[int]] | None, video_id: str) -> tuple[int, ...]:
    if labels is None or video_id not in labels:
        return ()
    lab = labels[video_id]
    return (int(lab),) if np.isscalar(lab) else tuple(int(x) for x in lab)


def _group_by_shape(items: Sequence["_SourceVideo"]) -> dict[tuple[int, ...], list[str]]:
    groups: dict[tuple[int, ...], list[str]] = {}
    for it in items:
        groups.setdefault(it.row_shape, []).append(it.where)
    return groups


def _describe_groups(groups: Mapping[tuple[int, ...], list[str]]) -> str:
    parts = []
    for shape, files in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        shown = ", ".join(files[:_SHOW]) + (f", ... (+{len(files) - _SHOW} more)" if len(files) > _SHOW else "")
        parts.append(f"{shape} in {len(files)} file(s): {shown}")
    return "; ".join(parts)


@dataclass
class _SourceVideo:
    """One video of an import source, loaded lazily."""

    video_id: str
    where: str  # file (and dataset) named in error messages
    shape: tuple[int, ...]  # on-disk shape
    dtype: np.dtype
    load: Callable[[], np.ndarray]
    meta: VideoMeta
    times: tuple[Any, Any, Any] | None  # (starts, ends, frame_idx) or None -> derived from row index

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self.shape[1:] if len(self.shape) >= 2 else self.shape

    def rows(self, row_seconds: float) -> tuple[np.ndarray, VideoRows]:
        arr = np.asarray(self.load())
        if arr.ndim == 1:  # (D,) -> (1, D): a single row
            arr = arr[None]
        starts, ends, frame_idx = self.times if self.times is not None else _times_from_rows(len(arr), row_seconds)
        return arr, VideoRows(arr, starts, ends, frame_idx)


def _check_numeric(src: _SourceVideo) -> None:
    if src.dtype.kind not in "fiu" or src.dtype.fields is not None:
        raise ImportFormatError(
            f"{src.where}: dtype {src.dtype} is not numeric; only float/int arrays can be imported as features"
        )
    if len(src.shape) == 0:
        raise ImportFormatError(f"{src.where}: a scalar is not a feature array; expected (N, D) or (D,)")


def _validate_sources(
    sources: Sequence[_SourceVideo],
    *,
    src_name: str,
    fs: FeatureSet | None,
    info: FeatureSetInfo,
    expect_dim: int | None,
    allow_nonfinite: bool,
    overwrite: bool,
    row_seconds: float,
) -> None:
    """Check every source video against ``info`` (and ``fs``) before anything is written."""
    seen: dict[str, str] = {}
    for s in sources:
        if s.video_id in seen:
            raise ImportFormatError(f"{src_name}: video id {s.video_id!r} appears twice ({seen[s.video_id]}, {s.where})")
        seen[s.video_id] = s.where
        _check_numeric(s)
    groups = _group_by_shape(sources)
    if len(groups) > 1:
        raise ImportFormatError(
            f"{src_name} has mixed row shapes: {_describe_groups(groups)}; every video must have the same row shape"
        )
    if expect_dim is not None:
        wrong = [s for s in sources if s.row_shape[-1] != expect_dim]
        if wrong:
            raise ImportFormatError(
                f"dim check failed: expected feature dim {expect_dim}, but {_describe_groups(_group_by_shape(wrong))}"
            )
    bad = [s for s in sources if s.row_shape != info.row_shape]
    if bad:
        what = f"feature set {info.name!r}" if fs is not None else f"the provenance in {src_name}"
        raise ImportFormatError(
            f"dim check failed: {what} has row shape {info.row_shape}, but {_describe_groups(_group_by_shape(bad))}"
        )
    for s in sources:
        arr, rows = s.rows(row_seconds)
        stored = _as_stored(arr, info.dtype)
        if not allow_nonfinite:
            finite = np.isfinite(stored).all(axis=tuple(range(1, stored.ndim)))  # (N, *row_shape) -> (N,)
            if not finite.all():
                bad_rows = np.flatnonzero(~finite)
                cause = "NaN/Inf" if not np.isfinite(arr).all() else f"values that overflow {info.dtype}"
                raise ImportFormatError(
                    f"{s.where}: {len(bad_rows)} row(s) with {cause} (first: row {bad_rows[0]}); "
                    "fix the file or pass allow_nonfinite=True (--allow-nonfinite)"
                )
        if fs is not None and not overwrite and s.video_id in fs:
            old = fs.read(s.video_id)
            new = VideoRows(stored, rows.starts, rows.ends, rows.frame_idx)
            old_meta = fs.meta(s.video_id)
            if not old.equals(new) or not meta_equal(old_meta, s.meta):
                raise VideoConflictError(
                    f"video {s.video_id!r} from {s.where} differs from the one committed in feature set "
                    f"{info.name!r} in its {differences(old, old_meta, new, s.meta)}; pass overwrite=True "
                    "(--overwrite) to replace it, or import into another set"
                )


def _import_sources(
    store: FeatureStore,
    name: str,
    sources: Sequence[_SourceVideo],
    *,
    src_name: str,
    carried_info: FeatureSetInfo | None,
    plain_info: Callable[[tuple[int, ...], str], FeatureSetInfo],
    expect_dim: int | None,
    require_existing: bool,
    allow_nonfinite: bool,
    overwrite: bool,
    row_seconds: float,
    allow_stale: bool,
    progress: bool = False,
) -> ImportReport:
    exists = name in store.feature_sets()
    if require_existing and not exists:
        raise ImportFormatError(
            f"dim check: feature set {name!r} does not exist in {store.path}, so there is no dimension to check "
            f"against (existing sets: {store.feature_sets()}); drop --dim-check to create it"
        )
    fs = store.open_set(name, allow_stale=allow_stale) if exists else None
    if carried_info is not None:
        info = carried_info
        if fs is not None and not fs.info.compatible_with(info):
            # let the backend name the conflicting field
            store.create_set(info, exist_ok=True)
    elif fs is not None:
        info = fs.info
    else:
        if not sources:
            raise ImportFormatError(f"{src_name} holds no feature arrays; nothing to import")
        _check_numeric(sources[0])
        try:
            info = plain_info(sources[0].row_shape, _plain_dtype([s.dtype for s in sources]))
        except ValueError as e:
            raise ImportFormatError(f"{sources[0].where}: cannot make a feature set from it ({e})") from e
    _validate_sources(
        sources,
        src_name=src_name,
        fs=fs,
        info=fs.info if fs is not None else info,
        expect_dim=expect_dim,
        allow_nonfinite=allow_nonfinite,
        overwrite=overwrite,
        row_seconds=row_seconds,
    )
    created = fs is None
    if fs is None:
        fs = store.create_set(info, exist_ok=False)
    written = unchanged = n_rows = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(sources), desc=f"import {name}", unit="video", leave=False)
    try:
        for s in sources:
            if bar is not None:
                bar.update(1)
            _, rows = s.rows(row_seconds)
            if fs.write_video(rows, s.meta, overwrite=overwrite, allow_nonfinite=allow_nonfinite):
                written += 1
            else:
                unchanged += 1
            n_rows += len(rows)
    except BaseException:
        if created:
            store.delete_set(name)
        raise
    finally:
        if bar is not None:
            bar.close()
    return ImportReport(
        set_name=name,
        written=written,
        unchanged=unchanged,
        n_rows=n_rows,
        row_shape=fs.info.row_shape,
        dtype=fs.info.dtype,
        exact=carried_info is not None,
    )


def _plain_info_factory(
    name: str, src: str, fmt: str, *, dtype: str | None, level: str, row_seconds: float
) -> Callable[[tuple[int, ...], str], FeatureSetInfo]:
    def make(row_shape: tuple[int, ...], guessed_dtype: str) -> FeatureSetInfo:
        return FeatureSetInfo(
            name=name,
            row_shape=row_shape,
            dtype=dtype or guessed_dtype,
            level=level,  # type: ignore[arg-type]
            sampling={
                "imported_from": fmt,
                "row_seconds": row_seconds,
                "timestamps": "derived from the row index: start = row * row_seconds, end = start + row_seconds",
                "frame_idx": "unknown (-1)",
            },
            extra={"source": src},
        )

    return make


def _info_with_name(d: Mapping[str, Any], name: str, where: str) -> FeatureSetInfo:
    try:
        return FeatureSetInfo.from_dict({**d, "name": name})
    except (KeyError, TypeError, ValueError) as e:
        raise ImportFormatError(f"{where}: invalid feature-set provenance ({e})") from e


# ---------------------------------------------------------------------------------
# npy folders
# ---------------------------------------------------------------------------------
def export_npy(fs: FeatureSet, out_dir: str | os.PathLike, *, overwrite: bool = False) -> ExportReport:
    """Export a feature set to a folder of ``VIDEO_ID.npy`` files plus the ``_featbank.json`` sidecar.

    The folder is written next to ``out_dir`` under a temporary name and renamed when
    complete, so a crashed export leaves no half-written folder behind.

    Args:
        fs: the feature set (``store.open_set(name)``).
        out_dir: folder to create; must not exist or be empty unless ``overwrite``.
        overwrite: replace an existing folder.

    Returns:
        An ``ExportReport``.

    Example:
        >>> export_npy(store.open_set("i3d/Mixed_5c"), "feats_npy")  # doctest: +SKIP
    """
    out = Path(out_dir)
    _clear_target(out, overwrite, "npy folder")
    ids = fs.video_ids()
    paths = {vid: _check_video_id_path(vid, "npy") for vid in ids}
    tmp = _tmp_sibling(out)
    _remove(tmp)
    tmp.mkdir(parents=True)
    videos, n_rows = [], 0
    try:
        for vid, rows in _read_batches(fs, ids):
            rel = Path(*paths[vid][:-1], paths[vid][-1] + ".npy")
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            np.save(tmp / rel, _export_array(rows.feats))
            videos.append(
                {
                    "video_id": vid,
                    "file": rel.as_posix(),
                    "meta": fs.meta(vid).to_dict(),
                    "starts": rows.starts.tolist(),
                    "ends": rows.ends.tolist(),
                    "frame_idx": rows.frame_idx.tolist(),
                }
            )
            n_rows += len(rows)
        sidecar = {"format": NPY_FORMAT, "format_version": FORMAT_VERSION, "info": fs.info.to_dict(), "videos": videos}
        (tmp / SIDECAR).write_text(json.dumps(sidecar))
        _remove(out)
        os.replace(tmp, out)
    except BaseException:
        _remove(tmp)
        raise
    return ExportReport(str(out), len(ids), n_rows)


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:  # object arrays, bad headers
        raise ImportFormatError(f"{path}: not a numeric .npy array ({e})") from e
    except OSError as e:
        raise ImportFormatError(f"{path}: cannot read .npy file ({e})") from e
    return tuple(arr.shape), arr.dtype


def _npy_loader(path: Path) -> Callable[[], np.ndarray]:
    return lambda: np.load(path, allow_pickle=False)


def _npy_sources_with_sidecar(src: Path, sidecar: Mapping[str, Any]) -> list[_SourceVideo]:
    where = src / SIDECAR
    try:
        entries = list(sidecar["videos"])
    except (KeyError, TypeError) as e:
        raise ImportFormatError(f"{where}: missing 'videos' list") from e
    listed = set()
    sources = []
    for e in entries:
        try:
            vid, rel = e["video_id"], e["file"]
            meta = VideoMeta.from_dict(e["meta"])
            times = (
                np.asarray(e["starts"], dtype=np.float64),
                np.asarray(e["ends"], dtype=np.float64),
                np.asarray(e["frame_idx"], dtype=np.int64).reshape(-1, 2),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ImportFormatError(f"{where}: malformed video entry {e.get('video_id', e)!r} ({err})") from err
        path = src / rel
        if not path.is_file():
            raise ImportFormatError(f"{where} lists {rel} for video {vid!r}, but that file is missing")
        listed.add(path.resolve())
        shape, dtype = _npy_header(path)
        if len(times[0]) != (shape[0] if len(shape) >= 2 else 1):
            raise ImportFormatError(f"{path}: {shape[0]} rows but {where} has {len(times[0])} timestamps")
        sources.append(_SourceVideo(vid, str(path), shape, dtype, _npy_loader(path), meta, times))
    extra = sorted(str(p) for p in src.rglob("*.npy") if p.resolve() not in listed)
    if extra:
        raise ImportFormatError(
            f"{where} does not list {len(extra)} .npy file(s) in the folder ({', '.join(extra[:_SHOW])}"
            f"{', ...' if len(extra) > _SHOW else ''}); remove them, or remove the sidecar to import a plain folder"
        )
    return sources


def _npy_sources_plain(
    src: Path, *, labels: Mapping[str, Any] | None, split: str, domain: str, fps: float
) -> list[_SourceVideo]:
    sources = []
    for path in sorted(src.rglob("*.npy")):
        vid = path.relative_to(src).as_posix()[: -len(".npy")]
        shape, dtype = _npy_header(path)
        meta = VideoMeta(vid, source=str(path), labels=_labels_for(labels, vid), split=split, domain=domain, fps=fps)
        sources.append(_SourceVideo(vid, str(path), shape, dtype, _npy_loader(path), meta, None))
    return sources


def import_npy(
    store: FeatureStore,
    src_dir: str | os.PathLike,
    name: str,
    *,
    expect_dim: int | None = None,
    require_existing: bool = False,
    allow_nonfinite: bool = False,
    overwrite: bool = False,
    allow_stale: bool = False,
    row_seconds: float = 1.0,
    dtype: str | None = None,
    level: str = "clip",
    labels: Mapping[str, int | Sequence[int]] | None = None,
    split: str = "",
    domain: str = "",
    fps: float = math.nan,
    progress: bool = False,
) -> ImportReport:
    """Import a folder of ``VIDEO_ID.npy`` files into feature set ``name``.

    With a ``_featbank.json`` sidecar (written by ``export_npy``) provenance, metadata
    and timestamps are restored exactly. Without it every ``*.npy`` below ``src_dir``
    is a video (id = relative path without ``.npy``), timestamps come from the row
    index (``row_seconds`` per row) and the keyword metadata below applies.

    Args:
        store: the target store (opened for writing).
        src_dir: the npy folder.
        name: target feature set; created when missing.
        expect_dim: when given, every file's feature dim (last axis) must equal it.
        require_existing: the set must already exist; its row shape is the reference
            every file is checked against (the CLI's ``--dim-check``).
        allow_nonfinite: accept NaN/Inf rows.
        overwrite: replace committed videos that differ.
        allow_stale: allow writing into a stale existing set.
        row_seconds: seconds per row for plain folders (timestamps ``i * row_seconds``).
        dtype: set dtype for plain folders (default: float16 when every file is
            float16, else float32).
        level: ``"clip"`` or ``"frame"`` for plain folders.
        labels: ``{video_id: label or labels}`` for plain folders.
        split: split of every video of a plain folder.
        domain: domain of every video of a plain folder.
        fps: source fps of every video of a plain folder.
        progress: show a progress bar (tqdm, on stderr) while writing.

    Returns:
        An ``ImportReport``.

    Raises:
        ImportFormatError: mixed row shapes (naming the files of each shape), wrong
            dimension, non-numeric or non-finite arrays, a malformed sidecar.
        VideoConflictError: a committed video differs and ``overwrite`` is False.
    """
    src = Path(src_dir)
    if not src.is_dir():
        raise ImportFormatError(f"npy source {src} is not a folder")
    side_path = src / SIDECAR
    carried = None
    if side_path.is_file():
        try:
            sidecar = json.loads(side_path.read_text())
        except (OSError, ValueError) as e:
            raise ImportFormatError(f"{side_path}: cannot read sidecar JSON ({e})") from e
        if not isinstance(sidecar, dict) or sidecar.get("format") != NPY_FORMAT:
            raise ImportFormatError(f"{side_path}: not a featbank sidecar (format {sidecar.get('format')!r})")
        if int(sidecar.get("format_version", 0)) > FORMAT_VERSION:
            raise ImportFormatError(
                f"{side_path}: format version {sidecar['format_version']} is newer than {FORMAT_VERSION}; upgrade featbank"
            )
        carried = _info_with_name(sidecar.get("info", {}), name, str(side_path))
        sources = _npy_sources_with_sidecar(src, sidecar)
    else:
        sources = _npy_sources_plain(src, labels=labels, split=split, domain=domain, fps=fps)
    plain = _plain_info_factory(name, str(src), "npy", dtype=dtype, level=level, row_seconds=row_seconds)
    return _import_sources(
        store,
        name,
        sources,
        src_name=f"npy folder {src}",
        carried_info=carried,
        plain_info=plain,
        expect_dim=expect_dim,
        require_existing=require_existing,
        allow_nonfinite=allow_nonfinite,
        overwrite=overwrite,
        row_seconds=row_seconds,
        allow_stale=allow_stale,
        progress=progress,
    )


# ---------------------------------------------------------------------------------
# HDF5 files
# ---------------------------------------------------------------------------------
_META_ATTRS = ("source", "labels", "split", "domain", "fps", "n_frames", "duration")


def export_hdf5(fs: FeatureSet, out_path: str | os.PathLike, *, overwrite: bool = False) -> ExportReport:
    """Export a feature set to one HDF5 file: one dataset per video, attributes carried.

    The file is written under a temporary name and renamed when complete.

    Args:
        fs: the feature set.
        out_path: the ``.h5`` file to create; must not exist unless ``overwrite``.
        overwrite: replace an existing file.

    Returns:
        An ``ExportReport``.

    Example:
        >>> export_hdf5(store.open_set("i3d/Mixed_5c"), "feats.h5")  # doctest: +SKIP
    """
    import h5py

    out = Path(out_path)
    _clear_target(out, overwrite, "HDF5 file")
    ids = fs.video_ids()
    for vid in ids:
        parts = _check_video_id_path(vid, "HDF5")
        if parts[0] == H5_META_GROUP:
            raise StoreError(f"video id {vid!r} cannot be exported to HDF5: {H5_META_GROUP!r} is reserved")
    tmp = _tmp_sibling(out)
    _remove(tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    n_rows = 0
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["featbank_format"] = HDF5_FORMAT
            f.attrs["featbank_format_version"] = FORMAT_VERSION
            f.attrs["feature_set_info"] = json.dumps(fs.info.to_dict())
            meta_group = f.create_group(H5_META_GROUP)
            meta_group.create_dataset("video_ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
            for vid, rows in _read_batches(fs, ids):
                try:
                    ds = f.create_dataset(vid, data=_export_array(rows.feats))
                except (ValueError, TypeError) as e:  # e.g. ids "a" and "a/b" both present
                    raise StoreError(f"video id {vid!r} cannot be stored as an HDF5 dataset ({e})") from e
                ds.attrs["video_id"] = vid
                meta = fs.meta(vid)
                for key in _META_ATTRS:
                    value = getattr(meta, key)
                    ds.attrs[key] = np.asarray(value, dtype=np.int64) if key == "labels" else value
                times = np.empty(len(rows), dtype=_ROW_TIMES_DTYPE)
                times["start"], times["end"] = rows.starts, rows.ends
                times["first_frame"], times["last_frame"] = rows.frame_idx[:, 0], rows.frame_idx[:, 1]
                meta_group.create_dataset(f"rows/{vid}", data=times)
                n_rows += len(rows)
        _remove(out)
        os.replace(tmp, out)
    except BaseException:
        _remove(tmp)
        raise
    return ExportReport(str(out), len(ids), n_rows)


def _h5_attr_str(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _h5_float(v: Any) -> float:
    """A float attribute; NaN as the ``math.nan`` singleton so metadata compares equal on re-import."""
    x = float(v)
    return math.nan if math.isnan(x) else x


def _h5_meta(ds: Any, vid: str) -> VideoMeta:
    a = ds.attrs
    return VideoMeta(
        video_id=vid,
        source=_h5_attr_str(a.get("source", "")),
        labels=tuple(int(x) for x in np.atleast_1d(a.get("labels", np.zeros(0, np.int64)))),
        split=_h5_attr_str(a.get("split", "")),
        domain=_h5_attr_str(a.get("domain", "")),
        fps=_h5_float(a.get("fps", math.nan)),
        n_frames=int(a.get("n_frames", -1)),
        duration=_h5_float(a.get("duration", math.nan)),
    )


def _h5_loader(ds: Any) -> Callable[[], np.ndarray]:
    return lambda: ds[()]


def _h5_sources_featbank(f: Any, where: str) -> list[_SourceVideo]:
    try:
        ids = [str(x) for x in f[f"{H5_META_GROUP}/video_ids"].asstr()[()]]
    except KeyError as e:
        raise ImportFormatError(f"{where}: featbank file without /{H5_META_GROUP}/video_ids") from e
    sources = []
    for vid in ids:
        if vid not in f:
            raise ImportFormatError(f"{where}: /{H5_META_GROUP}/video_ids lists {vid!r} but the dataset is missing")
        ds = f[vid]
        times_key = f"{H5_META_GROUP}/rows/{vid}"
        if times_key not in f:
            raise ImportFormatError(f"{where}: missing /{times_key} (row timestamps of {vid!r})")
        t = f[times_key][()]
        times = (t["start"], t["end"], np.stack([t["first_frame"], t["last_frame"]], axis=1))
        n = ds.shape[0] if len(ds.shape) >= 2 else 1
        if len(t) != n:
            raise ImportFormatError(f"{where}:/{vid}: {n} rows but /{times_key} has {len(t)}")
        sources.append(_SourceVideo(vid, f"{where}:/{vid}", tuple(ds.shape), ds.dtype, _h5_loader(ds), _h5_meta(ds, vid), times))
    return sources


def _h5_sources_plain(
    f: Any, where: str, *, key: str | None, labels: Mapping[str, Any] | None, split: str, domain: str, fps: float
) -> list[_SourceVideo]:
    import h5py

    datasets: list[tuple[str, Any]] = []
    f.visititems(lambda n, obj: datasets.append((n, obj)) if isinstance(obj, h5py.Dataset) else None)
    if key is not None:  # ActivityNet-style /VIDEO_ID/KEY: the group is the video
        datasets = [(n.rsplit("/", 1)[0], ds) for n, ds in datasets if "/" in n and n.rsplit("/", 1)[1] == key]
        if not datasets:
            raise ImportFormatError(f"{where}: no dataset named {key!r} inside a group (expected /VIDEO_ID/{key})")
    sources = []
    for name, ds in datasets:
        meta = VideoMeta(name, source=f"{where}:/{name}", labels=_labels_for(labels, name), split=split, domain=domain, fps=fps)
        s = _SourceVideo(name, f"{where}:{ds.name}", tuple(ds.shape), ds.dtype, _h5_loader(ds), meta, None)
        _check_numeric(s)  # names the first non-numeric dataset
        sources.append(s)
    return sources


def import_hdf5(
    store: FeatureStore,
    src: str | os.PathLike,
    name: str,
    *,
    expect_dim: int | None = None,
    require_existing: bool = False,
    allow_nonfinite: bool = False,
    overwrite: bool = False,
    allow_stale: bool = False,
    row_seconds: float = 1.0,
    dtype: str | None = None,
    level: str = "clip",
    labels: Mapping[str, int | Sequence[int]] | None = None,
    split: str = "",
    domain: str = "",
    fps: float = math.nan,
    key: str | None = None,
    progress: bool = False,
) -> ImportReport:
    """Import an HDF5 file (one dataset per video) into feature set ``name``.

    A file written by ``export_hdf5`` restores provenance, metadata and timestamps
    exactly. Any other file is read as plain: every dataset (at any depth) is a video
    whose id is its path, timestamps come from the row index. With ``key`` (e.g.
    ``"c3d_features"`` for the ActivityNet release) only datasets ``/VIDEO_ID/KEY`` are
    read and the group path is the video id. The other keyword arguments mean the same
    as in ``import_npy``.

    Raises:
        ImportFormatError: non-numeric datasets (named), mixed row shapes, wrong
            dimension, non-finite rows, a file that is not HDF5.
        VideoConflictError: a committed video differs and ``overwrite`` is False.
    """
    import h5py

    path = Path(src)
    if not path.is_file():
        raise ImportFormatError(f"HDF5 source {path} is not a file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ImportFormatError(f"{path}: not a readable HDF5 file ({e})") from e
    with f:
        fmt = _h5_attr_str(f.attrs.get("featbank_format", ""))
        carried = None
        if fmt == HDF5_FORMAT:
            version = int(f.attrs.get("featbank_format_version", 0))
            if version > FORMAT_VERSION:
                raise ImportFormatError(f"{path}: format version {version} is newer than {FORMAT_VERSION}; upgrade featbank")
            try:
                info_dict = json.loads(_h5_attr_str(f.attrs["feature_set_info"]))
            except (KeyError, ValueError) as e:
                raise ImportFormatError(f"{path}: unreadable feature_set_info attribute ({e})") from e
            carried = _info_with_name(info_dict, name, str(path))
            sources = _h5_sources_featbank(f, str(path))
        else:
            sources = _h5_sources_plain(f, str(path), key=key, labels=labels, split=split, domain=domain, fps=fps)
        plain = _plain_info_factory(name, str(path), "hdf5", dtype=dtype, level=level, row_seconds=row_seconds)
        return _import_sources(
            store,
            name,
            sources,
            src_name=f"HDF5 file {path}",
            carried_info=carried,
            plain_info=plain,
            expect_dim=expect_dim,
            require_existing=require_existing,
            allow_nonfinite=allow_nonfinite,
            overwrite=overwrite,
            row_seconds=row_seconds,
            allow_stale=allow_stale,
            progress=progress,
        )
