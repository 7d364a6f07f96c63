"""Temporal activity detection metrics: per-class AP, the Charades_v1_localize protocol, per-frame mAP.

The Charades localisation protocol (``Charades_v1_localize.m``, the official evaluation):

* every test video is scored at ``n = 25`` frames, frame ``j = 1..25`` (1-indexed) sits at
  time ``(j - 1) / 25 * length`` seconds;
* a frame is positive for a class when ``start <= time <= end`` for one of the video's
  segments of that class (both ends inclusive, as the official loader);
* AP is computed per class over all ``25 x videos`` frames together (not per video), and
  the mAP is the mean over classes. A frame missing from the submission scores ``-inf``.

Differences from the official script, on purpose and reported in the result:

* a class with no positive frame has an undefined AP (the script divides 0 by 0 and its
  mean becomes NaN). Here its AP is ``None``, it is listed in ``classes_without_positives``,
  and ``map`` is the mean over the classes that have positives (``n_classes_scored`` says
  how many), so such a class is never silently dropped nor silently poisons the mean;
* ties: the script's AP depends on the sort order of tied scores; here AP is
  ``sklearn.metrics.average_precision_score`` (tied scores form one threshold), which
  equals the script's value whenever the scores of a class have no ties.

Pure numpy (no sklearn import at runtime; the tests compare with it).

Example:
    >>> import numpy as np
    >>> average_precision(np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 0, 1, 0]))
    0.8333333333333333
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

FRAMES_PER_VIDEO = 25  # Charades_v1_localize.m: frames_per_video = 25

Segment = tuple  # (start_s, end_s, class_index)


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """AP of one class: ``sum_n (R_n - R_{n-1}) P_n`` over distinct score thresholds.

    Equal to ``sklearn.metrics.average_precision_score(labels, scores)``.

    Args:
        scores: ``(N,)`` scores (higher = more confident; ``-inf`` allowed).
        labels: ``(N,)`` 0/1 ground truth.

    Returns:
        AP in ``[0, 1]``, or ``None`` when there is no positive (AP undefined).
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1) > 0
    if len(s) != len(y):
        raise ValueError(f"average_precision: {len(s)} scores but {len(y)} labels")
    npos = int(y.sum())
    if npos == 0:
        return None
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    # last index of each run of equal scores: one threshold per distinct score
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
    tp_at, n_at = tp[last].astype(np.float64), (last + 1).astype(np.float64)
    precision = tp_at / n_at
    recall = tp_at / npos
    d_recall = np.diff(np.r_[0.0, recall])
    return float(np.sum(d_recall * precision))


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> dict:
    """Per-class AP over rows and their mean over classes with at least one positive.

    Args:
        scores: ``(N, C)`` scores.
        labels: ``(N, C)`` 0/1 targets.

    Returns:
        dict with ``map`` (float, NaN when no class has a positive), ``ap`` (list of C
        floats or ``None``), ``classes_without_positives`` (list of class indices),
        ``n_classes_scored`` and ``n`` (rows).
    """
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if s.ndim != 2 or s.shape != y.shape:
        raise ValueError(f"mean_average_precision: scores {s.shape} and labels {y.shape} must both be (N, C)")
    ap = [average_precision(s[:, c], y[:, c]) for c in range(s.shape[1])]
    scored = [a for a in ap if a is not None]
    return {
        "map": float(np.mean(scored)) if scored else float("nan"),
        "ap": ap,
        "classes_without_positives": [c for c, a in enumerate(ap) if a is None],
        "n_classes_scored": len(scored),
        "n": int(s.shape[0]),
    }


def charades_timepoints(length: float, n: int = FRAMES_PER_VIDEO) -> np.ndarray:
    """``(n,)`` seconds of the evaluated frames ``j = 1..n``: ``(j - 1) / n * length``."""
    return np.arange(n, dtype=np.float64) / n * float(length)


def charades_frame_labels(length: float, segments: Iterable[Segment], num_classes: int,
                          n: int = FRAMES_PER_VIDEO) -> np.ndarray:
    """``(n, C)`` 0/1 ground truth of one video's evaluated frames (segment ends inclusive)."""
    t = charades_timepoints(length, n)
    out = np.zeros((n, num_classes), np.int8)
    for s, e, c in segments:
        if not 0 <= int(c) < num_classes:
            raise ValueError(f"class {c} outside [0, {num_classes})")
        out[(float(s) <= t) & (t <= float(e)), int(c)] = 1
    return out


def sample_step_scores(scores: np.ndarray, starts: np.ndarray, ends: np.ndarray, length: float,
                       n: int = FRAMES_PER_VIDEO) -> np.ndarray:
    """Per-time-step scores of one video at the ``n`` evaluated Charades frames.

    Frame ``j`` takes the row whose ``[start, end)`` contains its time; a time outside
    every row (before the first or after the last) takes the row with the nearest centre.

    Args:
        scores: ``(T, C)`` scores on the video's row grid (real rows only, no padding).
        starts: ``(T,)`` row start seconds.
        ends: ``(T,)`` row end seconds.
        length: video length in seconds.
        n: evaluated frames per video.

    Returns:
        ``(n, C)`` scores.
    """
    scores = np.asarray(scores)
    starts, ends = np.asarray(starts, np.float64), np.asarray(ends, np.float64)
    if len(scores) == 0:
        raise ValueError("sample_step_scores: the video has no rows")
    t = charades_timepoints(length, n)[:, None]  # (n, 1)
    inside = (starts[None, :] <= t) & (t < ends[None, :])  # (n, T)
    centre = (starts + ends) / 2
    nearest = np.abs(t - centre[None, :]).argmin(1)  # (n,)
    # among containing rows, the one whose centre is nearest (overlapping windows)
    dist = np.where(inside, np.abs(t - centre[None, :]), np.inf)
    idx = np.where(inside.any(1), dist.argmin(1), nearest)
    return scores[idx]


@dataclass(frozen=True)
class Submission:
    """A Charades localisation submission: ``video_id frame_index score_1 .. score_C`` per line.

    Attributes:
        video_ids: ``(N,)`` video id of each line.
        frames: ``(N,)`` int 1-indexed frame numbers (1..25).
        scores: ``(N, C)`` float scores.
    """

    video_ids: tuple[str, ...]
    frames: np.ndarray
    scores: np.ndarray

    def as_dict(self) -> dict[tuple[str, int], np.ndarray]:
        return {(v, int(f)): self.scores[i] for i, (v, f) in enumerate(zip(self.video_ids, self.frames))}


def write_submission(path: str | Path, per_video: Mapping[str, np.ndarray], *, digits: int = 6) -> Path:
    """Write the official submission file: for each video its 25 lines ``ID J s_1 .. s_C`` (J = 1..25).

    Args:
        path: output file.
        per_video: ``video_id -> (25, C)`` scores at the evaluated frames.
        digits: significant digits of each score.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for vid, sc in per_video.items():
            sc = np.asarray(sc, dtype=np.float64)
            if " " in vid or not vid:
                raise ValueError(f"video id {vid!r} cannot be written to a submission (empty or has spaces)")
            for j, row in enumerate(sc, start=1):
                f.write(f"{vid} {j} " + " ".join(f"{x:.{digits}g}" for x in row) + "\n")
    return path


def read_submission(path: str | Path, num_classes: int | None = None) -> Submission:
    """Read a submission file (whitespace separated; 0-indexed frames are shifted to 1 as the official script does).

    Raises:
        ValueError: a malformed line (named by its number) or inconsistent score counts.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"submission file {path} does not exist")
    ids: list[str] = []
    frames: list[int] = []
    rows: list[list[float]] = []
    width = None
    with open(path) as f:
        for ln, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            try:
                frame = int(parts[1])
                vals = [float(x) for x in parts[2:]]
            except (IndexError, ValueError):
                raise ValueError(f"{path}:{ln}: expected `video_id frame_index score...`, got {line.strip()[:80]!r}") from None
            width = width if width is not None else len(vals)
            if len(vals) != width or width == 0:
                raise ValueError(f"{path}:{ln}: {len(vals)} scores, but earlier lines have {width}")
            ids.append(parts[0])
            frames.append(frame)
            rows.append(vals)
    if not rows:
        raise ValueError(f"{path}: no predictions")
    scores = np.asarray(rows, dtype=np.float64)
    # the official script accepts C or C + 1 columns (a trailing extra column is ignored)
    if num_classes is not None:
        if scores.shape[1] == num_classes + 1:
            scores = scores[:, :num_classes]
        elif scores.shape[1] != num_classes:
            raise ValueError(f"{path}: {scores.shape[1]} scores per line, expected {num_classes} classes")
    fr = np.asarray(frames, dtype=np.int64)
    if fr.min() == 0:  # as Charades_v1_localize.m: "frames should be 1 indexed", adds 1
        fr = fr + 1
    return Submission(tuple(ids), fr, scores)


def charades_localize(submission: Submission | Mapping[tuple[str, int], np.ndarray],
                      ground_truth: Mapping[str, tuple[float, Sequence[Segment]]], num_classes: int,
                      n: int = FRAMES_PER_VIDEO) -> dict:
    """Score a submission with the Charades_v1_localize protocol.

    Args:
        submission: a :class:`Submission` or ``(video_id, frame 1..n) -> (C,) scores``.
        ground_truth: ``video_id -> (length_s, [(start, end, class), ...])`` of every test video.
        num_classes: ``C``.
        n: frames per video (25).

    Returns:
        dict with ``map`` (0-1, mean over classes with a positive), ``ap`` (per class, ``None``
        where a class has no positive), ``classes_without_positives``, ``n_classes_scored``,
        ``n_frames`` (``n x videos``), ``missing_frames`` (scored ``-inf`` as the official
        script does) and ``extra_predictions`` (lines for videos / frames not in the ground truth).
    """
    preds = submission.as_dict() if isinstance(submission, Submission) else dict(submission)
    vids = list(ground_truth)
    labels = np.zeros((n * len(vids), num_classes), np.int8)
    scores = np.full((n * len(vids), num_classes), -np.inf)
    missing = 0
    for i, vid in enumerate(vids):
        length, segs = ground_truth[vid]
        labels[i * n:(i + 1) * n] = charades_frame_labels(length, segs, num_classes, n)
        for j in range(n):
            p = preds.get((vid, j + 1))
            if p is None:
                missing += 1
                continue
            p = np.asarray(p, dtype=np.float64)
            if p.shape[0] < num_classes:
                raise ValueError(f"prediction for {vid} frame {j + 1} has {p.shape[0]} scores, expected {num_classes}")
            scores[i * n + j] = p[:num_classes]
    wanted = {(v, j) for v in vids for j in range(1, n + 1)}
    extra = sum(1 for k in preds if k not in wanted)
    res = mean_average_precision(scores, labels)
    res.update(n_frames=int(len(labels)), missing_frames=missing, extra_predictions=extra, n_videos=len(vids))
    return res


def per_frame_map(scores: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> dict:
    """mAP over *all* time steps of all videos (the second number; one row per step).

    Args:
        scores: per video ``(T_i, C)`` scores.
        labels: per video ``(T_i, C)`` 0/1 targets.
    """
    s = np.concatenate([np.asarray(x, np.float64) for x in scores])
    y = np.concatenate([np.asarray(x) for x in labels])
    return mean_average_precision(s, y)
