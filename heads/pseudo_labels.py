"""Frame -> video pseudo labels (CycDA), their published file formats and a quality report.

All rules work on *ragged* frame predictions: ``probs (R, C)`` softmax rows of all
frames of all videos, plus ``offsets (V+1,)`` so that frames of video ``i`` are rows
``offsets[i]:offsets[i+1]``. Reductions are vectorised segment ops (``np.*.reduceat``),
so pseudo-labelling 1.8 M frames takes a second, not a Python loop per video.

Softmax is applied exactly once: build :class:`FramePredictions` with ``from_logits``
(applies it) or ``from_probs`` (checks that rows already sum to 1 and refuses logits).

Rules:

* ``frame_v2``: per video take its highest frame confidence; choose the threshold tau so
  that a fraction ``p`` of videos keep at least one frame (tau = the ``int(p * V)``-th
  largest per-video maximum, the released rounding; ``rounding="ceil"`` gives the
  ``ceil(p * V)`` variant); keep frames with confidence >= tau; the video label is the
  argmax of the mean softmax over its kept frames; videos with no kept frame are dropped.
* ``vid``: mean softmax over all frames of a video; every video is kept.
* ``frame_v2_balanced``: ``frame_v2`` with one threshold per class (the class of a video is
  the prediction of its most confident frame; a frame is tested against the threshold of
  its own predicted class), so that a fraction ``p`` of the videos of *each* class survive.
  A safeguard beyond the released code: a class the image model predicts is never dropped.
* :func:`class_balanced_top` (video stages): per predicted class, the ``ceil(p * n_c)`` most
  confident videos; every predicted class keeps at least one video (also a safeguard beyond
  the released code, which hands all video-model labels on).

Published files (interoperate with the original CycDA code; load with
``np.load(path, allow_pickle=True).item()``):

* ``*_frame_ps.npy``: dict video -> ``[gt (n,), pred (n,), maxconf (n,), softmax (n, C)]``.
* ``*_vid_ps.npy``: dict video -> ``(gt, pred, maxconf, softmax (C,), n_frames)`` for the
  videos that received a pseudo label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

PROB_ATOL = 1e-3
DEFAULT_PERCENTILES = (100, 80, 60, 40, 20)


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float32 (``(R, C) -> (R, C)``)."""
    x = np.asarray(logits, dtype=np.float32)
    x = x - x.max(axis=axis, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=axis, keepdims=True)
    return x


def check_probs(probs: np.ndarray, what: str = "probs", atol: float = PROB_ATOL) -> None:
    """Raise ``ValueError`` unless ``probs`` rows are non-negative and sum to 1.

    Guards against passing logits where probabilities are expected, and against applying
    softmax twice (a twice-softmaxed row still sums to 1, but logits never do).
    """
    p = np.asarray(probs)
    if p.ndim != 2:
        raise ValueError(f"{what}: expected (R, C) probabilities, got shape {p.shape}")
    if len(p) == 0:
        return
    if float(p.min()) < -atol:
        raise ValueError(f"{what}: negative entries; pass logits to FramePredictions.from_logits instead")
    sums = p.sum(axis=1, dtype=np.float64)
    bad = np.flatnonzero(np.abs(sums - 1.0) > atol)
    if len(bad):
        raise ValueError(
            f"{what}: row {int(bad[0])} sums to {sums[bad[0]]:.4f}, not 1 ({len(bad)} such rows); "
            "pass logits to FramePredictions.from_logits instead"
        )


def _segment_ids(offsets: np.ndarray) -> np.ndarray:
    """``(V+1,)`` offsets -> ``(R,)`` video index of every row."""
    counts = np.diff(offsets)
    return np.repeat(np.arange(len(counts), dtype=np.int64), counts)


def segment_max(values: np.ndarray, offsets: np.ndarray, empty: float = -np.inf) -> np.ndarray:
    """Per-segment maximum of ``values (R,)``; ``empty`` for segments without rows."""
    counts = np.diff(offsets)
    out = np.full(len(counts), empty, dtype=np.float64)
    nz = counts > 0
    if nz.any():
        out[nz] = np.maximum.reduceat(values, offsets[:-1][nz])
    return out


def segment_sum(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per-segment sum of ``values (R, ...)`` -> ``(V, ...)``; zeros for empty segments."""
    counts = np.diff(offsets)
    out = np.zeros((len(counts),) + values.shape[1:], dtype=np.float64 if values.ndim == 1 else values.dtype)
    nz = counts > 0
    if nz.any():
        out[nz] = np.add.reduceat(values, offsets[:-1][nz], axis=0)
    return out


@dataclass(frozen=True, eq=False)
class FramePredictions:
    """Softmax predictions of all frames of a set of videos.

    Attributes:
        probs: ``(R, C)`` float32 softmax rows (each sums to 1).
        offsets: ``(V+1,)`` int64; frames of video ``i`` are rows ``offsets[i]:offsets[i+1]``.
        video_ids: the ``V`` video ids.
        labels: ``(V,)`` int64 ground-truth labels, ``-1`` where unknown (only for reports).
    """

    probs: np.ndarray
    offsets: np.ndarray
    video_ids: tuple[str, ...]
    labels: np.ndarray

    def __post_init__(self) -> None:
        off = np.asarray(self.offsets, dtype=np.int64)
        object.__setattr__(self, "offsets", off)
        object.__setattr__(self, "video_ids", tuple(self.video_ids))
        object.__setattr__(self, "labels", np.asarray(self.labels, dtype=np.int64).reshape(-1))
        if off.ndim != 1 or len(off) != len(self.video_ids) + 1 or off[0] != 0 or np.any(np.diff(off) < 0):
            raise ValueError("offsets must be (V+1,) non-decreasing, start at 0, V = len(video_ids)")
        if off[-1] != len(self.probs):
            raise ValueError(f"offsets end at {off[-1]} but there are {len(self.probs)} probability rows")
        if len(self.labels) != len(self.video_ids):
            raise ValueError(f"{len(self.labels)} labels for {len(self.video_ids)} videos")

    @classmethod
    def from_logits(cls, logits: np.ndarray, offsets: np.ndarray, video_ids: Sequence[str],
                    labels: np.ndarray | None = None) -> "FramePredictions":
        """Apply softmax once to ``logits (R, C)``."""
        labels = np.full(len(video_ids), -1) if labels is None else labels
        return cls(softmax(logits), offsets, tuple(video_ids), labels)

    @classmethod
    def from_probs(cls, probs: np.ndarray, offsets: np.ndarray, video_ids: Sequence[str],
                   labels: np.ndarray | None = None) -> "FramePredictions":
        """Take probabilities as given, after checking that every row sums to 1."""
        check_probs(probs, "frame probabilities")
        labels = np.full(len(video_ids), -1) if labels is None else labels
        return cls(np.asarray(probs, dtype=np.float32), offsets, tuple(video_ids), labels)

    @property
    def num_videos(self) -> int:
        return len(self.video_ids)

    @property
    def num_classes(self) -> int:
        return int(self.probs.shape[1])

    @property
    def n_frames(self) -> np.ndarray:
        """``(V,)`` frames per video."""
        return np.diff(self.offsets)

    @property
    def conf(self) -> np.ndarray:
        """``(R,)`` max softmax of each frame."""
        return self.probs.max(axis=1)

    @property
    def pred(self) -> np.ndarray:
        """``(R,)`` argmax class of each frame."""
        return self.probs.argmax(axis=1).astype(np.int64)

    @property
    def frame_labels(self) -> np.ndarray:
        """``(R,)`` ground truth of each frame (its video's label)."""
        return np.repeat(self.labels, self.n_frames)


@dataclass(frozen=True, eq=False)
class VideoPseudoLabels:
    """Video-level pseudo labels.

    Attributes:
        video_ids: the ``V`` video ids (all videos, kept or not).
        labels: ``(V,)`` int64 pseudo label, ``-1`` for dropped videos.
        conf: ``(V,)`` confidence of the pseudo label (max of the aggregated softmax; 0 when dropped).
        probs: ``(V, C)`` aggregated softmax (zeros when dropped).
        n_frames: ``(V,)`` frames that voted (kept frames).
        gt: ``(V,)`` ground truth, ``-1`` where unknown (reports only).
        frame_mask: ``(R,)`` bool, the frames kept by the rule.
        threshold: the threshold(s) used (scalar, or ``(C,)`` per class; NaN for ``vid``).
        rule: name of the rule.
    """

    video_ids: tuple[str, ...]
    labels: np.ndarray
    conf: np.ndarray
    probs: np.ndarray
    n_frames: np.ndarray
    gt: np.ndarray
    frame_mask: np.ndarray
    threshold: np.ndarray
    rule: str

    @property
    def keep(self) -> np.ndarray:
        """``(V,)`` bool, videos that received a pseudo label."""
        return self.labels >= 0

    @property
    def coverage(self) -> float:
        """Fraction of videos that received a pseudo label."""
        return float(self.keep.mean()) if len(self.labels) else 0.0

    @property
    def accuracy(self) -> float:
        """Accuracy of the kept pseudo labels against the known ground truth (NaN if none)."""
        m = self.keep & (self.gt >= 0)
        return float((self.labels[m] == self.gt[m]).mean()) if m.any() else math.nan

    @property
    def classes_present(self) -> int:
        """Number of distinct classes among the kept pseudo labels."""
        return int(len(np.unique(self.labels[self.keep])))

    def confusion(self, num_classes: int | None = None) -> np.ndarray:
        """``(C, C)`` counts of kept videos: rows = ground truth, columns = pseudo label."""
        c = int(num_classes or self.probs.shape[1])
        m = self.keep & (self.gt >= 0)
        out = np.zeros((c, c), dtype=np.int64)
        np.add.at(out, (self.gt[m], self.labels[m]), 1)
        return out


def _aggregate(fp: FramePredictions, frame_mask: np.ndarray, threshold: np.ndarray, rule: str) -> VideoPseudoLabels:
    """Mean softmax over the kept frames of each video -> video pseudo labels."""
    m = frame_mask.astype(np.float32)
    counts = segment_sum(frame_mask.astype(np.int64), fp.offsets).astype(np.int64)  # (V,)
    sums = segment_sum(fp.probs * m[:, None], fp.offsets)  # (R, C) -> (V, C)
    keep = counts > 0
    probs = np.zeros_like(sums, dtype=np.float32)
    probs[keep] = sums[keep] / counts[keep, None]
    labels = np.where(keep, probs.argmax(axis=1), -1).astype(np.int64)
    conf = np.where(keep, probs.max(axis=1), 0.0).astype(np.float32)
    return VideoPseudoLabels(fp.video_ids, labels, conf, probs, counts, fp.labels.copy(), frame_mask,
                             np.asarray(threshold, dtype=np.float64), rule)


ROUNDINGS = ("floor", "ceil")


def keep_count(fraction: float, n: int, rounding: str = "ceil") -> int:
    """How many of ``n`` items a fraction keeps: ``int(fraction * n)`` (``floor``, the released
    ``frame_v2``) or ``ceil(fraction * n)``; at least 1 and at most ``n`` (0 when ``n`` is 0)."""
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    if n <= 0:
        return 0
    k = int(fraction * n) if rounding == "floor" else math.ceil(fraction * n - 1e-9)
    return min(n, max(1, k))


def _kth_largest_threshold(values: np.ndarray, fraction: float, rounding: str = "ceil") -> float:
    """Threshold keeping the ``keep_count(fraction, n)`` largest of ``values`` (``inf`` when empty: keeps none)."""
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return math.inf
    k = keep_count(fraction, len(finite), rounding)
    return float(np.partition(finite, len(finite) - k)[len(finite) - k])


def _check_fraction(keep_fraction: float) -> None:
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")


def frame_v2(fp: FramePredictions, keep_fraction: float = 0.8, rounding: str = "floor") -> VideoPseudoLabels:
    """The published ``frame_v2`` rule (see module docstring).

    Args:
        fp: frame predictions.
        keep_fraction: fraction ``p`` of videos that keep at least one frame.
        rounding: ``floor`` keeps ``int(p * V)`` videos (released), ``ceil`` keeps ``ceil(p * V)``.

    Returns:
        Video pseudo labels; ``threshold`` is the scalar tau.
    """
    _check_fraction(keep_fraction)
    conf = fp.conf  # (R,)
    vmax = segment_max(conf, fp.offsets)  # (V,)
    tau = _kth_largest_threshold(vmax, keep_fraction, rounding)
    return _aggregate(fp, conf >= tau, np.asarray(tau), "frame_v2")


def frame_v2_balanced(fp: FramePredictions, keep_fraction: float = 0.8) -> VideoPseudoLabels:
    """Class-balanced ``frame_v2``: one threshold per class, a fraction ``p`` of each class kept.

    Args:
        fp: frame predictions.
        keep_fraction: fraction of the videos of each (predicted) class that keep a frame.

    Returns:
        Video pseudo labels; ``threshold`` is ``(C,)`` (``inf`` for classes no video predicts).
    """
    _check_fraction(keep_fraction)
    conf, pred = fp.conf, fp.pred
    vmax = segment_max(conf, fp.offsets)  # (V,)
    # class of each video = prediction of its most confident frame
    nz = fp.n_frames > 0
    order = np.lexsort((-conf, _segment_ids(fp.offsets)))  # rows by video, most confident first
    best_row = np.zeros(fp.num_videos, dtype=np.int64)
    best_row[nz] = order[fp.offsets[:-1][nz]]
    vclass = np.where(nz, pred[best_row] if len(pred) else -1, -1)  # (V,)
    tau = np.full(fp.num_classes, math.inf)
    for c in np.unique(vclass[vclass >= 0]):
        tau[c] = _kth_largest_threshold(vmax[vclass == c], keep_fraction)
    mask = conf >= tau[pred] if len(pred) else np.zeros(0, bool)
    return _aggregate(fp, mask, tau, "frame_v2_balanced")


def vid_rule(fp: FramePredictions) -> VideoPseudoLabels:
    """The ``vid`` rule: mean softmax over all frames of each video; every video with frames is kept."""
    return _aggregate(fp, np.ones(len(fp.probs), dtype=bool), np.asarray(math.nan), "vid")


def video_pseudo_labels_from_probs(probs: np.ndarray, video_ids: Sequence[str], gt: np.ndarray | None = None,
                                   keep_fraction: float = 1.0, balanced: bool = False) -> VideoPseudoLabels:
    """Pseudo labels from one softmax row per video (the video model's output, stages 2/4).

    Keeps the ``ceil(keep_fraction * V)`` most confident videos, or with ``balanced`` the
    ``ceil(keep_fraction * n_c)`` most confident of each predicted class (:func:`class_balanced_top`).
    """
    check_probs(probs, "video probabilities")
    fp = FramePredictions(np.asarray(probs, np.float32), np.arange(len(video_ids) + 1), tuple(video_ids),
                          np.full(len(video_ids), -1) if gt is None else gt)
    if balanced:
        return class_balanced_top(fp, keep_fraction)
    return frame_v2(fp, keep_fraction, rounding="ceil") if keep_fraction < 1.0 else vid_rule(fp)


def class_balanced_top(fp: FramePredictions, keep_fraction: float = 0.5) -> VideoPseudoLabels:
    """Per predicted class, keep the ``ceil(keep_fraction * n_c)`` videos of highest confidence.

    The label of a video is the argmax of the mean softmax over its frames (one row per video
    for a video model). Every class that is predicted for at least one video keeps at least
    one video, so selection never removes a class (the global threshold of ``frame_v2`` can).

    Args:
        fp: predictions (frames or one row per video).
        keep_fraction: fraction of each predicted class's videos to keep, in (0, 1].

    Returns:
        Video pseudo labels (rule ``class_balanced_top``); ``threshold`` is ``(C,)`` per class.
    """
    _check_fraction(keep_fraction)
    agg = vid_rule(fp)  # mean softmax per video
    keep = np.zeros(fp.num_videos, dtype=bool)
    tau = np.full(fp.num_classes, math.inf)
    for c in np.unique(agg.labels[agg.labels >= 0]):
        idx = np.flatnonzero(agg.labels == c)
        k = keep_count(keep_fraction, len(idx), "ceil")
        top = idx[np.argsort(-agg.conf[idx], kind="stable")[:k]]
        keep[top] = True
        tau[c] = float(agg.conf[top].min())
    labels = np.where(keep, agg.labels, -1).astype(np.int64)
    frame_mask = np.repeat(keep, fp.n_frames)
    return VideoPseudoLabels(fp.video_ids, labels, np.where(keep, agg.conf, 0.0).astype(np.float32),
                             np.where(keep[:, None], agg.probs, 0.0).astype(np.float32),
                             np.where(keep, agg.n_frames, 0), fp.labels.copy(), frame_mask, tau,
                             "class_balanced_top")


RULES: dict[str, Callable[..., VideoPseudoLabels]] = {
    "frame_v2": frame_v2,
    "frame_v2_ceil": lambda fp, keep_fraction=0.8: frame_v2(fp, keep_fraction, rounding="ceil"),
    "frame_v2_balanced": frame_v2_balanced,
    "class_balanced_top": class_balanced_top,
    "vid": lambda fp, keep_fraction=1.0: vid_rule(fp),
}


def apply_rule(rule: str, fp: FramePredictions, keep_fraction: float = 0.8) -> VideoPseudoLabels:
    """Apply a rule of :data:`RULES` by name (``ValueError`` listing the names otherwise)."""
    if rule not in RULES:
        raise ValueError(f"unknown pseudo-label rule {rule!r}; choose one of {sorted(RULES)}")
    return RULES[rule](fp, keep_fraction=keep_fraction)


# ---- published file formats --------------------------------------------------------------

def write_frame_ps(path: str | Path, fp: FramePredictions) -> Path:
    """Write ``*_frame_ps.npy``: dict video -> ``[gt (n,), pred (n,), maxconf (n,), softmax (n, C)]``."""
    conf, pred, gt = fp.conf, fp.pred, fp.frame_labels
    out: dict[str, list[np.ndarray]] = {}
    for i, vid in enumerate(fp.video_ids):
        a, b = fp.offsets[i], fp.offsets[i + 1]
        out[vid] = [gt[a:b].copy(), pred[a:b].copy(), conf[a:b].copy(), fp.probs[a:b].copy()]
    return _save_dict(path, out)


def read_frame_ps(path: str | Path) -> FramePredictions:
    """Read ``*_frame_ps.npy`` back into :class:`FramePredictions` (probabilities are checked)."""
    d = _load_dict(path)
    ids = list(d)
    soft = [np.asarray(d[v][3], dtype=np.float32).reshape(len(d[v][0]), -1) for v in ids]
    counts = np.array([len(s) for s in soft], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    probs = np.concatenate(soft) if soft else np.zeros((0, 0), np.float32)
    labels = np.array([int(d[v][0][0]) if len(d[v][0]) else -1 for v in ids], dtype=np.int64)
    return FramePredictions.from_probs(probs, offsets, ids, labels)


def write_vid_ps(path: str | Path, vpl: VideoPseudoLabels) -> Path:
    """Write ``*_vid_ps.npy``: dict video -> ``(gt, pred, maxconf, softmax (C,), n_frames)``, kept videos only."""
    out: dict[str, tuple[Any, ...]] = {}
    for i in np.flatnonzero(vpl.keep):
        out[vpl.video_ids[i]] = (int(vpl.gt[i]), int(vpl.labels[i]), float(vpl.conf[i]),
                                 vpl.probs[i].astype(np.float32), int(vpl.n_frames[i]))
    return _save_dict(path, out)


def read_vid_ps(path: str | Path) -> dict[str, tuple[int, int, float, np.ndarray, int]]:
    """Read ``*_vid_ps.npy``: dict video -> ``(gt, pred, maxconf, softmax (C,), n_frames)``."""
    d = _load_dict(path)
    return {v: (int(t[0]), int(t[1]), float(t[2]), np.asarray(t[3]), int(t[4])) for v, t in d.items()}


def _save_dict(path: str | Path, d: dict) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "wb") as f:  # np.save(str) would append .npy to names without it
        np.save(f, np.array(d, dtype=object), allow_pickle=True)
    return p


def _load_dict(path: str | Path) -> dict:
    obj = np.load(path, allow_pickle=True)
    if obj.shape != () or not isinstance(obj.item(), dict):
        raise ValueError(f"{path}: expected a pickled dict (np.save of a dict), got array of shape {obj.shape}")
    return obj.item()


# ---- quality report -----------------------------------------------------------------------

def _acc_at_percentiles(conf: np.ndarray, correct: np.ndarray, percentiles: Sequence[float]) -> list[dict[str, float]]:
    """Accuracy of the top-``q``% most confident items for each ``q`` in ``percentiles``."""
    order = np.argsort(-conf, kind="stable")
    rows = []
    for q in percentiles:
        k = int(math.ceil(len(conf) * q / 100.0)) if len(conf) else 0
        sel = order[:k]
        rows.append({
            "percentile": float(q),
            "threshold": float(conf[sel[-1]]) if k else math.nan,
            "coverage": k / len(conf) if len(conf) else 0.0,
            "accuracy": float(correct[sel].mean()) if k else math.nan,
        })
    return rows


def quality_report(fp: FramePredictions, vpl: VideoPseudoLabels | None = None,
                   percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> dict[str, Any]:
    """Frame- and video-level pseudo-label accuracy and coverage at several confidence percentiles.

    Only videos with a known ground truth (``labels >= 0``) are scored.

    Args:
        fp: frame predictions with ground truth.
        vpl: the video pseudo labels of a rule (adds a ``rule`` section: its accuracy/coverage).
        percentiles: keep the top ``q``% most confident frames / videos.

    Returns:
        ``{"frame": [...], "video": [...], "rule": {...}}`` (lists of
        ``{percentile, threshold, coverage, accuracy}``).
    """
    known_v = fp.labels >= 0
    frame_gt = fp.frame_labels
    known_f = frame_gt >= 0
    frame_rows = _acc_at_percentiles(fp.conf[known_f], (fp.pred == frame_gt)[known_f], percentiles)
    vv = vid_rule(fp)
    video_rows = _acc_at_percentiles(vv.conf[known_v], (vv.labels == fp.labels)[known_v], percentiles)
    report: dict[str, Any] = {"frame": frame_rows, "video_mean_softmax": video_rows,
                              "frame_accuracy": float((fp.pred == frame_gt)[known_f].mean()) if known_f.any() else math.nan,
                              "video_accuracy": float((vv.labels == fp.labels)[known_v].mean()) if known_v.any() else math.nan}
    if vpl is not None:
        report["rule"] = {"name": vpl.rule, "threshold": np.asarray(vpl.threshold).tolist(),
                          "coverage": vpl.coverage, "accuracy": vpl.accuracy,
                          "kept_frames": int(vpl.frame_mask.sum()), "frames": int(len(vpl.frame_mask))}
    return report


def pseudo_label_arrays(vpl: VideoPseudoLabels, order: Sequence[str] | Mapping[str, int]) -> np.ndarray:
    """Pseudo labels aligned to another video order (``-1`` for unknown / dropped videos)."""
    lut = {v: int(l) for v, l in zip(vpl.video_ids, vpl.labels)}
    return np.array([lut.get(v, -1) for v in order], dtype=np.int64)
