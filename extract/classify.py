"""Whole-video Kinetics-400 classification (the protocol the reference I3D outputs were computed with).

Decode every frame, resample to the backbone's fps by index stepping (25 fps for I3D),
resize the short side (256, bilinear, no antialias), centre-crop (224, floor offsets), normalise
(I3D: [0, 1] -> [-1, 1]), run the whole clip through the network in one pass and
average the logits over time. Probabilities are the softmax of the averaged logits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

from featbank.extract.errors import BackboneError, ExtractError
from featbank.extract.kinetics400_labels import KINETICS400_LABELS

_RESIZE_CHUNK = 64  # frames resized at a time (bounds the full-resolution float copy)


@dataclass(frozen=True)
class ClassScore:
    """One ranked class: name, averaged logit and softmax probability."""

    label: str
    logit: float
    prob: float


@dataclass(frozen=True)
class VideoPrediction:
    """Top-k classes of one video and the number of frames the network saw."""

    video: str
    top: tuple[ClassScore, ...]
    n_frames: int

    def to_dict(self) -> dict:
        """``{"video": path, "top5": [{"label", "logit", "prob"}, ...]}`` (JSON-ready)."""
        return {
            "video": self.video,
            "top5": [{"label": s.label, "logit": round(s.logit, 4), "prob": round(s.prob, 6)} for s in self.top],
        }


def whole_video_input(frames: np.ndarray, spec) -> torch.Tensor:
    """Decoded frames -> one normalised centre-crop clip for the whole video.

    The crop offset is ``(H - crop) // 2`` (floor), as in the reference protocol
    (``transforms.center_crop``).

    Args:
        frames: ``(T, H, W, C)`` uint8, already at the target fps.
        spec: the backbone's ``BackboneSpec`` (resize, crop, mean, std).

    Returns:
        ``(1, C, T, crop, crop)`` float32.
    """
    from featbank.extract.transforms import preprocess

    # preprocess (the job's own) works frame by frame, so chunking along T is exact and bounds
    # the full-resolution float copy
    chunks = [preprocess(frames[i : i + _RESIZE_CHUNK], spec)[0] for i in range(0, len(frames), _RESIZE_CHUNK)]
    return torch.cat(chunks, dim=1)[None].contiguous()  # V=1: (C, T, crop, crop) -> (1, C, T, crop, crop)


def top_k(logits: torch.Tensor, k: int = 5, labels: Sequence[str] = KINETICS400_LABELS) -> tuple[ClassScore, ...]:
    """Rank averaged logits ``(K,)`` -> top ``k`` (label, logit, softmax prob)."""
    probs = torch.softmax(logits.double(), dim=0)
    values, idx = logits.topk(min(k, logits.numel()))
    return tuple(ClassScore(labels[i], float(v), float(probs[i])) for v, i in zip(values.tolist(), idx.tolist()))


def classify_frames(model, frames: np.ndarray) -> torch.Tensor:
    """Whole-clip logits averaged over time: ``(T, H, W, C)`` uint8 -> ``(num_classes,)``."""
    x = whole_video_input(frames, model.spec)  # (1, C, T, crop, crop)
    with torch.inference_mode():
        return model(x)[0].float()  # (1, K) -> (K,)


def check_classifier(model, labels: Sequence[str] = KINETICS400_LABELS) -> None:
    """Raise BackboneError unless ``model`` has one logit per label."""
    if model.num_classes != len(labels):
        raise BackboneError(
            f"{model.spec.name} has {model.num_classes} classes but {len(labels)} labels are given; "
            "classify needs a Kinetics-400 classifier (e.g. --backbone i3d-rgb-k400)"
        )


def classify_video(
    path: str | os.PathLike[str], model, *, k: int = 5, labels: Sequence[str] = KINETICS400_LABELS,
    backend: str = "auto",
) -> VideoPrediction:
    """Classify one video with the whole-video protocol.

    Args:
        path: video file, frame folder or image.
        model: a backbone with a classifier (``model.spec`` gives fps/resize/crop/normalisation).
        k: number of classes to return.
        labels: class names in logit order.
        backend: decoder backend for ``decode_video``.

    Raises:
        DecodeError: the video cannot be decoded.
    """
    from featbank.extract.decode import decode_video

    check_classifier(model, labels)
    spec = model.spec
    frames = decode_video(path, backend=backend, fps=spec.target_fps).frames  # (T, H, W, C) uint8
    frames = frames[:: max(1, spec.frame_stride)]
    logits = classify_frames(model, frames)
    return VideoPrediction(video=os.fspath(path), top=top_k(logits, k, labels), n_frames=len(frames))


def classify_videos(
    paths: Iterable[str | os.PathLike[str]], model, *, k: int = 5, backend: str = "auto",
) -> tuple[list[VideoPrediction], list[tuple[str, ExtractError]]]:
    """Classify several videos; a video that fails is recorded and the others go on.

    Returns:
        (predictions, failures) where failures are ``(path, error)`` pairs.
    """
    preds, failures = [], []
    for path in paths:
        try:
            preds.append(classify_video(path, model, k=k, backend=backend))
        except ExtractError as e:
            failures.append((os.fspath(path), e))
    return preds, failures
