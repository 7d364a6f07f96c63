"""Index sampling of the CycDA recipe: TSN frame draws, source positives/negatives, class weights.

All draws use an explicit ``torch.Generator`` (the fit loop's seeded one), so a rerun with the
same seed draws the same rows.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def tsn_rows(offsets: np.ndarray, k: int, gen: torch.Generator) -> np.ndarray:
    """One random row in each of ``k`` equal segments of every video's rows (TSN training sampling).

    Args:
        offsets: ``(V+1,)`` row offsets; video ``i`` owns rows ``offsets[i]:offsets[i+1]``.
        k: segments per video; ``0`` returns every row.
        gen: generator of the draw (a new draw every epoch resamples the frames).

    Returns:
        ``(V * k,)`` int64 row indices, video by video (videos with fewer than ``k`` rows repeat rows;
        videos without rows are skipped).
    """
    offsets = np.asarray(offsets, np.int64)
    if k <= 0:
        return np.arange(int(offsets[-1]), dtype=np.int64)
    n = np.diff(offsets)  # (V,)
    has = n > 0
    n, start = n[has], offsets[:-1][has]
    j = np.arange(k)[None, :]  # (1, k)
    lo = np.floor(j * n[:, None] / k)  # (V, k) segment starts
    hi = np.maximum(np.floor((j + 1) * n[:, None] / k), lo + 1)  # (V, k) segment ends (>= lo + 1)
    u = torch.rand(lo.shape, generator=gen, dtype=torch.float64).numpy()
    pos = np.minimum(lo + np.floor(u * (hi - lo)), n[:, None] - 1).astype(np.int64)
    return (start[:, None] + pos).reshape(-1)


def cycling_batches(n: int, batch_size: int, steps: int, gen: torch.Generator) -> torch.Tensor:
    """``(steps, batch_size)`` indices: concatenated random permutations of ``range(n)``."""
    need = steps * batch_size
    perms = [torch.randperm(n, generator=gen) for _ in range(math.ceil(need / max(1, n)))]
    return torch.cat(perms)[:need].view(steps, batch_size)


def inverse_frequency_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """``(C,)`` CE class weights ``N / (C_present * n_c)`` over the labelled entries (0 for absent classes)."""
    lab = np.asarray(labels)
    lab = lab[lab >= 0]
    counts = np.bincount(lab, minlength=num_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(num_classes)
    if present.any():
        w[present] = len(lab) / (present.sum() * counts[present])
    return torch.from_numpy(w).float()


class PosNegSampler:
    """For each label, one source row of that class and one of another class (vectorised, O(B)).

    Args:
        labels: ``(N_s,)`` source row labels.
        num_classes: ``C``.
        gen: the generator of the draws.
    """

    def __init__(self, labels: torch.Tensor, num_classes: int, gen: torch.Generator) -> None:
        self.sorted_rows = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels, minlength=num_classes)
        self.starts = torch.cumsum(counts, 0) - counts
        self.counts = counts
        self.n = len(labels)
        self.gen = gen

    def sample(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B,)`` labels (``-1`` allowed) -> ``(B,)`` positive and negative source row indices."""
        lab = labels.clamp_min(0)
        cnt = self.counts[lab].clamp_min(1)
        r = torch.rand(len(lab), generator=self.gen)
        pos = self.sorted_rows[self.starts[lab] + (r * cnt).long().clamp_max(cnt - 1)]
        # negative: a uniform row among the rows of other classes (skip over the positive class block)
        n_other = (self.n - self.counts[lab]).clamp_min(1)
        k = (torch.rand(len(lab), generator=self.gen) * n_other).long().clamp_max(n_other - 1)
        k = torch.where(k >= self.starts[lab], k + self.counts[lab], k)
        neg = self.sorted_rows[k.clamp_max(self.n - 1)]
        return pos, neg
