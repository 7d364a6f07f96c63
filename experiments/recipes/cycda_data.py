"""Load the feature sets of a CycDA run from a store into in-memory tensors.

The recipe trains on cached features only; everything it needs fits in memory (at
UCF101 scale: 1.8 M frame rows x 512 in float16 = 1.8 GB). Dims, row counts and labels
come from the store; names of the sets come from the config. Sets are opened without
``allow_stale``, so features produced by outdated backbone weights are refused with
``StaleFeaturesError``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from featbank.store.base import FeatureStore
from featbank.store.errors import StoreError


class CycdaDataError(StoreError):
    """The feature sets of a CycDA run are inconsistent (dims, labels, missing videos)."""


@dataclass(frozen=True, eq=False)
class RowSet:
    """Ragged rows of a set of videos.

    Attributes:
        feats: ``(R, D)`` features (float16 or float32; cast per batch).
        offsets: ``(V+1,)`` int64; rows of video ``i`` are ``offsets[i]:offsets[i+1]``.
        video_ids: the ``V`` video ids.
        labels: ``(V,)`` int64 ground-truth labels (``-1`` unknown).
        set_name: the feature set the rows came from.
    """

    feats: torch.Tensor
    offsets: np.ndarray
    video_ids: tuple[str, ...]
    labels: np.ndarray
    set_name: str

    @property
    def dim(self) -> int:
        return int(self.feats.shape[1])

    @property
    def n_rows(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def row_labels(self) -> np.ndarray:
        """``(R,)`` label of every row (its video's label)."""
        return np.repeat(self.labels, self.n_rows)


@dataclass(frozen=True, eq=False)
class PaddedClips:
    """Clip features of videos padded to a fixed number of clips.

    Attributes:
        feats: ``(V, T, D)`` clip features (zero padded).
        mask: ``(V, T)`` bool, real clips.
        video_ids: the ``V`` video ids.
        labels: ``(V,)`` ground truth (``-1`` unknown).
        set_name: the feature set the clips came from.
    """

    feats: torch.Tensor
    mask: torch.Tensor
    video_ids: tuple[str, ...]
    labels: np.ndarray
    set_name: str

    @property
    def dim(self) -> int:
        return int(self.feats.shape[2])


@dataclass(frozen=True, eq=False)
class CycdaData:
    """All inputs of a CycDA run.

    Attributes:
        source: labelled source image rows (one row per still, or several views).
        target_frames: frame rows of the unlabelled target train videos.
        target_clips: clip features of the target train videos (video model input).
        test_frames: frame rows of the target test videos (image-model evaluation).
        test_clips: clip features of the target test videos (video-model evaluation).
        num_classes: number of classes (from the source labels).
    """

    source: RowSet
    target_frames: RowSet
    target_clips: PaddedClips
    test_frames: RowSet
    test_clips: PaddedClips
    num_classes: int


def _feats_tensor(feats: np.ndarray) -> torch.Tensor:
    arr = np.asarray(feats)
    if arr.ndim != 2:  # (R, V, D) views or maps: average everything but the feature axis
        arr = arr.reshape(len(arr), -1, arr.shape[-1]).mean(axis=1)
    if arr.dtype not in (np.float16, np.float32):
        arr = arr.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr))


def load_rows(store: FeatureStore, name: str, *, require_labels: bool = False) -> RowSet:
    """Read a whole feature set as a :class:`RowSet` (refuses stale sets).

    Args:
        store: the feature store.
        name: feature-set name.
        require_labels: raise ``CycdaDataError`` if any video has no label.
    """
    fs = store.open_set(name)  # StaleFeaturesError for outdated weights
    feats, offsets, ids = fs.read_all()
    labels = np.array([fs.meta(v).label for v in ids], dtype=np.int64)
    if require_labels and len(labels) and labels.min() < 0:
        bad = ids[int(np.flatnonzero(labels < 0)[0])]
        raise CycdaDataError(f"feature set {name!r}: video {bad!r} has no label; the source domain must be labelled")
    if len(ids) == 0:
        raise CycdaDataError(f"feature set {name!r} holds no videos; extract it first")
    return RowSet(_feats_tensor(feats), np.asarray(offsets, np.int64), tuple(ids), labels, name)


def pad_clips(rows: RowSet, max_clips: int) -> PaddedClips:
    """Pad (or uniformly subsample to ``max_clips``) the clips of every video: ``(R, D) -> (V, T, D)``."""
    counts = rows.n_rows
    t = int(min(max_clips, max(1, counts.max(initial=1))))
    v = len(rows.video_ids)
    feats = torch.zeros(v, t, rows.dim, dtype=rows.feats.dtype)
    mask = torch.zeros(v, t, dtype=torch.bool)
    # row index of slot j of video i: uniform positions when the video has more clips than slots
    n = np.minimum(counts, t)  # (V,)
    slot = np.arange(t)[None, :]  # (1, T)
    valid = slot < n[:, None]  # (V, T)
    pos = np.where(counts[:, None] > t, np.floor(slot * counts[:, None] / t), slot).astype(np.int64)
    src = rows.offsets[:-1, None] + pos  # (V, T)
    vi, sj = np.nonzero(valid)
    feats[torch.from_numpy(vi), torch.from_numpy(sj)] = rows.feats[torch.from_numpy(src[vi, sj])]
    mask[torch.from_numpy(vi), torch.from_numpy(sj)] = True
    return PaddedClips(feats, mask, rows.video_ids, rows.labels, rows.set_name)


def load_cycda_data(store: FeatureStore, *, source_images: str, target_frames: str, target_clips: str,
                    test_frames: str, test_clips: str, max_clips: int = 32) -> CycdaData:
    """Read the five feature sets of a run and check that they fit together.

    Raises:
        StaleFeaturesError: a set was produced by backbone weights that are no longer current.
        UnknownFeatureSetError: a set name does not exist (the error lists the existing ones).
        CycdaDataError: unlabelled source, mismatched dims between image sets or between clip
            sets, or test labels outside the source classes.
    """
    src = load_rows(store, source_images, require_labels=True)
    tf = load_rows(store, target_frames)
    tc = load_rows(store, target_clips)
    ef = load_rows(store, test_frames, require_labels=True)
    ec = load_rows(store, test_clips, require_labels=True)
    for other in (tf, ef):
        if other.dim != src.dim:
            raise CycdaDataError(
                f"feature set {other.set_name!r} has dim {other.dim} but the source images {src.set_name!r} have "
                f"dim {src.dim}; the image model needs one feature space for stills and frames"
            )
    if ec.dim != tc.dim:
        raise CycdaDataError(f"clip sets {tc.set_name!r} (dim {tc.dim}) and {ec.set_name!r} (dim {ec.dim}) differ")
    num_classes = int(src.labels.max()) + 1
    for rs in (ef, ec):
        if rs.labels.max(initial=-1) >= num_classes:
            raise CycdaDataError(
                f"feature set {rs.set_name!r} has label {int(rs.labels.max())} but the source has only "
                f"{num_classes} classes"
            )
    return CycdaData(src, tf, pad_clips(tc, max_clips), ef, pad_clips(ec, max_clips), num_classes)


def write_synthetic_cycda_sets(store: FeatureStore, *, num_classes: int = 5, source_per_class: int = 20,
                               train_per_class: int = 10, test_per_class: int = 5, frames_per_video: int = 8,
                               clips_per_video: int = 4, dim: int = 32, clip_dim: int | None = None,
                               domain_shift: float = 1.0, noise: float = 1.0, seed: int = 0,
                               backbone: str = "synthetic", weights_id: str = "synthetic-v1",
                               dtype: str = "float16", prefix: str = "", n_train: int | None = None,
                               n_test: int | None = None, length_jitter: float = 0.0,
                               test_frames_per_video: int | None = None) -> dict[str, str]:
    """Write the five feature sets of a CycDA run with synthetic class structure (tests, benchmarks).

    Each class has an image prototype and a clip prototype. Source rows are prototype plus
    noise; target frames add a domain shift (a shared offset and a per-class distortion) and
    a quarter of uninformative frames; clip rows are their own prototype plus noise.

    Args:
        n_train / n_test: total target train / test videos (classes assigned round-robin);
            default ``num_classes * train_per_class`` / ``num_classes * test_per_class``.
        length_jitter: frames (and clips) per video drawn uniformly within ``+-`` this fraction.
        test_frames_per_video: frames per test video (default ``frames_per_video``).

    Returns:
        Keyword arguments for :func:`load_cycda_data` / ``FeatureSetsConfig`` (set names).
    """
    from featbank.store.schema import FeatureSetInfo, VideoMeta, VideoRows

    rng = np.random.default_rng(seed)
    clip_dim = dim if clip_dim is None else clip_dim
    proto = rng.standard_normal((num_classes, dim)).astype(np.float32) * 1.5
    clip_proto = rng.standard_normal((num_classes, clip_dim)).astype(np.float32) * 1.5
    offset = rng.standard_normal(dim).astype(np.float32) * domain_shift
    distort = rng.standard_normal((num_classes, dim)).astype(np.float32) * 0.5 * domain_shift
    names = {k: f"{prefix}{v}" for k, v in (("source_images", "source/image"), ("target_frames", "target_train/frame"),
                                             ("target_clips", "target_train/clip"), ("test_frames", "target_test/frame"),
                                             ("test_clips", "target_test/clip"))}
    sets = {}
    for key, name in names.items():
        level = "clip" if key.endswith("clips") else "frame"
        d = clip_dim if key.endswith("clips") else dim
        sets[key] = store.create_set(FeatureSetInfo(name, (d,), dtype=dtype, level=level, backbone=backbone,
                                                    weights_id=weights_id, endpoint="synthetic"))
    store.set_backbone_weights(backbone, weights_id)

    def rows(feats: np.ndarray) -> VideoRows:
        t = np.arange(len(feats), dtype=np.float64)
        return VideoRows(feats, t, t + 1.0)

    def noisy(n: int, d: int) -> np.ndarray:
        return noise * rng.standard_normal((n, d), dtype=np.float32)

    def length(base: int) -> int:
        if length_jitter <= 0:
            return base
        return max(1, int(rng.integers(round(base * (1 - length_jitter)), round(base * (1 + length_jitter)) + 1)))

    for c in range(num_classes):
        f = proto[c] + noisy(source_per_class, dim)
        for i in range(source_per_class):
            sets["source_images"].write_video(rows(f[i:i + 1]), VideoMeta(f"src_c{c}_{i:05d}", labels=(c,),
                                                                          split="train", domain="source"))
    totals = {"train": num_classes * train_per_class if n_train is None else n_train,
              "test": num_classes * test_per_class if n_test is None else n_test}
    for split, total in totals.items():
        fkey, ckey = ("target_frames", "target_clips") if split == "train" else ("test_frames", "test_clips")
        base = frames_per_video if split == "train" or test_frames_per_video is None else test_frames_per_video
        for i in range(total):
            c = i % num_classes
            vid = f"{split}_c{c}_{i // num_classes:05d}"
            n_f, n_c = length(base), length(clips_per_video)
            f = proto[c] + offset + distort[c] + noisy(n_f, dim)
            junk = rng.random(n_f) < 0.25  # frames that show nothing of the class
            f[junk] = offset + noisy(int(junk.sum()), dim)
            g = clip_proto[c] + noisy(n_c, clip_dim)
            meta = VideoMeta(vid, labels=(c,), split=split, domain="target", fps=25.0, n_frames=n_f)
            sets[fkey].write_video(rows(f), meta)
            sets[ckey].write_video(rows(g), meta)
    return names
