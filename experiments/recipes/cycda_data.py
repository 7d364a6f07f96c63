"""The inputs of a CycDA run, read through the one store -> heads path (``featbank.store.dataset``).

Five feature sets (names from the config; dims, row counts, labels and splits from the
store): labelled source stills, frames and clips of the unlabelled target train videos,
frames and clips of the labelled target test videos. Whole sets are held in memory as
:class:`~featbank.store.dataset.RowSet` (ragged rows) and clip sets padded per video with
:func:`~featbank.store.dataset.pad_sequences`. Sets are opened without ``allow_stale``, so
features of outdated backbone weights are refused with ``StaleFeaturesError``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from featbank.experiments.data.synth_features import write_synthetic_cycda_sets  # noqa: F401  (tests, bench)
from featbank.store.base import FeatureStore
from featbank.store.dataset import PaddedSequences, RowSet, load_rows, pad_sequences
from featbank.store.errors import StoreError

__all__ = ["CycdaData", "CycdaDataError", "load_cycda_data", "write_synthetic_cycda_sets", "RowSet",
           "PaddedSequences"]


class CycdaDataError(StoreError):
    """The feature sets of a CycDA run are inconsistent (dims, labels, missing videos)."""


@dataclass(frozen=True, eq=False)
class CycdaData:
    """All inputs of a CycDA run.

    Attributes:
        source: labelled source image rows ``(R_s, D)``.
        target_frames: frame rows ``(R_t, D)`` of the unlabelled target train videos.
        target_clips: clip features ``(V_t, T, D')`` of the target train videos (video model input).
        test_frames: frame rows of the target test videos (image-model evaluation).
        test_clips: clip features of the target test videos (video-model evaluation).
        num_classes: number of classes (from the source labels).
        val_mask: ``(V_t,)`` bool, target train videos of the held-out labelled validation
            list (their labels are read only for the ``val_acc`` metric).
    """

    source: RowSet
    target_frames: RowSet
    target_clips: PaddedSequences
    test_frames: RowSet
    test_clips: PaddedSequences
    num_classes: int
    val_mask: np.ndarray | None = None


def _flat(rows: RowSet) -> RowSet:
    """Rows of shape ``(R, *S, D)`` (views, maps) averaged to ``(R, D)``."""
    if rows.feats.ndim == 2:
        return rows
    x = rows.feats.float().reshape(len(rows.feats), -1, rows.dim).mean(1)  # (R, *S, D) -> (R, D)
    return dataclasses.replace(rows, feats=x)


def _load(store: FeatureStore, name: str, require_labels: bool, video_ids: tuple[str, ...] | None = None) -> RowSet:
    try:
        return _flat(load_rows(store, name, require_labels=require_labels,
                               video_ids=list(video_ids) if video_ids is not None else None))
    except StoreError as e:
        if require_labels and "no label" in str(e):
            raise CycdaDataError(f"{e}; the source domain and the test split must be labelled") from None
        raise


def load_cycda_data(store: FeatureStore, *, source_images: str, target_frames: str, target_clips: str,
                    test_frames: str, test_clips: str, max_clips: int = 32,
                    val_videos: tuple[str, ...] | list[str] = ()) -> CycdaData:
    """Read the five feature sets of a run and check that they fit together.

    Args:
        store: an open store.
        source_images / target_frames / target_clips / test_frames / test_clips: set names.
        max_clips: clips per video for the video model (longer videos are subsampled uniformly).
        val_videos: ids of target train videos whose labels form the validation split.

    Raises:
        StaleFeaturesError: a set was produced by backbone weights that are no longer current.
        UnknownFeatureSetError: a set name does not exist (the error lists the existing ones).
        CycdaDataError: unlabelled source, mismatched dims or video lists, or test labels outside
            the source classes.
    """
    src = _load(store, source_images, True)
    tf = _load(store, target_frames, False)
    ef = _load(store, test_frames, True)
    tc = _load(store, target_clips, False, tf.video_ids)  # clips in the frames' video order
    ec = _load(store, test_clips, True, ef.video_ids)
    for other in (tf, ef):
        if other.dim != src.dim:
            raise CycdaDataError(
                f"feature set {other.set_name!r} has dim {other.dim} but the source images {src.set_name!r} have "
                f"dim {src.dim}; the image model needs one feature space for stills and frames")
    if ec.dim != tc.dim:
        raise CycdaDataError(f"clip sets {tc.set_name!r} (dim {tc.dim}) and {ec.set_name!r} (dim {ec.dim}) differ")
    for f, c in ((tf, tc), (ef, ec)):
        if f.video_ids != c.video_ids:
            missing = sorted(set(f.video_ids) ^ set(c.video_ids))[:3]
            raise CycdaDataError(f"feature sets {f.set_name!r} and {c.set_name!r} hold different videos "
                                 f"(e.g. {missing}); extract both from the same manifest")
    num_classes = int(src.labels.max()) + 1
    for rs in (ef, ec):
        if rs.labels.max(initial=-1) >= num_classes:
            raise CycdaDataError(f"feature set {rs.set_name!r} has label {int(rs.labels.max())} but the source has "
                                 f"only {num_classes} classes")
    val_mask = None
    if val_videos:
        want = set(val_videos)
        val_mask = np.array([v in want for v in tf.video_ids])
        if not val_mask.any():
            raise CycdaDataError(f"none of the {len(want)} validation videos (e.g. {sorted(want)[:2]}) is in "
                                 f"{tf.set_name!r}")
    return CycdaData(src, tf, pad_sequences(tc, max_clips), ef, pad_sequences(ec, max_clips), num_classes, val_mask)
