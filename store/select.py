"""Selecting the videos of a feature set by their metadata (split, domain, label, ids).

One filter for every reader of the store: the torch datasets (``store/dataset.py``) and
the faiss banks (``store/bank.py``) both select their videos here.
"""

from __future__ import annotations

from typing import Collection, Sequence

import numpy as np

from .base import FeatureSet
from .errors import StoreError


def select_videos(
    fs: FeatureSet,
    *,
    split: str | Collection[str] | None = None,
    domain: str | Collection[str] | None = None,
    labels: int | Collection[int] | None = None,
    video_ids: Sequence[str] | None = None,
    require_match: bool = False,
) -> tuple[list[str], dict[str, np.ndarray]]:
    """Video ids of ``fs`` passing every given filter, and the metadata table restricted to them.

    Args:
        fs: the feature set.
        split: keep videos whose split is this one (or one of these).
        domain: keep videos whose domain is this one (or one of these).
        labels: keep videos whose first label is this one (or one of these).
        video_ids: keep only these ids (in this order); unknown ids raise.
        require_match: raise when a filter matches no video at all, naming the values present.

    Returns:
        ``(ids, table)``: ids in commit order (or ``video_ids`` order) and the
        ``FeatureSet.metadata()`` columns for those ids.

    Raises:
        StoreError: an id of ``video_ids`` is not committed, or (``require_match``) a filter
            matches no video.
    """
    table = fs.metadata()
    keep = np.ones(len(table["video_id"]), dtype=bool)
    for col, want in (("split", split), ("domain", domain), ("label", labels)):
        if want is None:
            continue
        wanted = [want] if isinstance(want, (str, int, np.integer)) else list(want)
        mask = np.isin(table[col], np.array(wanted, dtype=table[col].dtype))
        if require_match and not mask.any():
            present = sorted({str(v) for v in table[col].tolist()})[:20]
            raise StoreError(f"feature set {fs.name!r}: no video has {col} in {wanted} (present: {present})")
        keep &= mask
    order = np.flatnonzero(keep)
    if video_ids is not None:
        pos = {v: i for i, v in enumerate(table["video_id"])}
        missing = [v for v in video_ids if v not in pos]
        if missing:
            raise StoreError(f"feature set {fs.name!r} has no committed video(s) {missing[:5]}")
        order = np.array([pos[v] for v in video_ids if keep[pos[v]]], dtype=np.int64)
    selected = {k: v[order] for k, v in table.items()}
    return [str(v) for v in selected["video_id"]], selected
