"""Metrics over logits and features: accuracy, weighted kNN, retrieval recall, neighbour recall.

Pure torch, so heads stay independent of the index library: no faiss import. Where a nearest-neighbour search is needed the
functions run an exact, batched ``torch.topk`` search, or take a ``search`` callable
``(queries, k) -> (D, I)`` (e.g. ``FaissBank.search`` over the same gallery) so an index
can be plugged in from outside ``heads``. The callable receives the raw query features
(it applies its own metric, e.g. a cosine bank normalises them); ``D`` must be
*similarities* (higher is closer, as a cosine / inner-product bank returns) and ``I`` row
indices into the gallery that was indexed, ``-1`` for a missing neighbour.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

SearchFn = Callable[[torch.Tensor, int], tuple]


def _as_tensor(x, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    t = t.detach().cpu()
    return t.to(dtype) if dtype is not None else t


def _as_labels(x) -> torch.Tensor:
    return _as_tensor(x).to(torch.int64).reshape(-1)


def _predictions(logits_or_preds) -> torch.Tensor:
    """``(N, C)`` logits/scores -> ``(N,)`` argmax; ``(N,)`` predictions pass through."""
    t = _as_tensor(logits_or_preds)
    if t.ndim == 2:
        return t.argmax(dim=1)  # (N, C) -> (N,)
    if t.ndim == 1:
        return t.to(torch.int64)
    raise ValueError(f"expected (N, C) logits or (N,) predictions, got shape {tuple(t.shape)}")


def _check_same_len(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{what}: {len(a)} predictions but {len(b)} labels")


def top1_accuracy(logits_or_preds, labels) -> float:
    """Fraction of items whose prediction equals the label.

    Args:
        logits_or_preds: ``(N, C)`` logits (argmax is taken) or ``(N,)`` class predictions.
        labels: ``(N,)`` integer labels.

    Returns:
        Accuracy in ``[0, 1]``; ``nan`` for an empty input.
    """
    preds, y = _predictions(logits_or_preds), _as_labels(labels)
    _check_same_len(preds, y, "top1_accuracy")
    if len(y) == 0:
        return float("nan")
    return float((preds == y).double().mean())


def topk_accuracy(logits, labels, k: int = 5) -> float:
    """Fraction of items whose label is among the ``k`` highest logits.

    Args:
        logits: ``(N, C)`` scores.
        labels: ``(N,)`` integer labels.
        k: number of top classes counted (clipped to ``C``).

    Returns:
        Top-k accuracy in ``[0, 1]``; ``nan`` for an empty input.
    """
    t, y = _as_tensor(logits), _as_labels(labels)
    if t.ndim != 2:
        raise ValueError(f"topk_accuracy needs (N, C) logits, got shape {tuple(t.shape)}")
    _check_same_len(t, y, "topk_accuracy")
    if len(y) == 0:
        return float("nan")
    top = t.topk(min(k, t.shape[1]), dim=1).indices  # (N, C) -> (N, k)
    return float((top == y[:, None]).any(dim=1).double().mean())


def mean_class_accuracy(preds, labels, num_classes: int | None = None) -> float:
    """Mean over classes of per-class recall (balanced accuracy).

    Only classes that occur in ``labels`` are averaged (a class with no test item has no
    recall); ``num_classes`` bounds the valid label range.

    Args:
        preds: ``(N, C)`` logits or ``(N,)`` predictions.
        labels: ``(N,)`` integer labels.
        num_classes: number of classes; labels must lie in ``[0, num_classes)``.

    Returns:
        Mean class accuracy in ``[0, 1]``; ``nan`` for an empty input.
    """
    p, y = _predictions(preds), _as_labels(labels)
    _check_same_len(p, y, "mean_class_accuracy")
    if len(y) == 0:
        return float("nan")
    if num_classes is not None and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"mean_class_accuracy: labels outside [0, {num_classes})")
    n = int(num_classes if num_classes is not None else int(y.max()) + 1)
    total = torch.bincount(y, minlength=n).double()
    correct = torch.bincount(y[p == y], minlength=n).double()
    present = total > 0
    return float((correct[present] / total[present]).mean())


# ---- nearest-neighbour evaluation -------------------------------------------------------------


def exact_search(
    gallery, queries, k: int, *, metric: str = "cosine", batch_size: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k-nearest neighbours with ``torch.topk``, batched over queries.

    Args:
        gallery: ``(N, D)`` vectors.
        queries: ``(Q, D)`` vectors.
        k: neighbours per query (clipped to ``N``).
        metric: ``"cosine"`` (vectors are L2-normalised, scores are cosine similarities),
            ``"ip"`` (raw inner product) or ``"l2"`` (scores are squared L2 distances,
            smallest first).
        batch_size: queries per matrix product.

    Returns:
        ``(D (Q, k) float32, I (Q, k) int64)``: scores and gallery row indices, best first.
    """
    g, q = _as_tensor(gallery, torch.float32), _as_tensor(queries, torch.float32)
    if g.ndim != 2 or q.ndim != 2 or g.shape[1] != q.shape[1]:
        raise ValueError(f"exact_search: gallery {tuple(g.shape)} and queries {tuple(q.shape)} must be (N, D), (Q, D)")
    if metric not in ("cosine", "ip", "l2"):
        raise ValueError(f"exact_search: metric {metric!r} not in ('cosine', 'ip', 'l2')")
    if metric == "cosine":
        g, q = F.normalize(g, dim=1), F.normalize(q, dim=1)
    k = min(k, len(g))
    g_sq = (g * g).sum(1) if metric == "l2" else None
    ds, idx = [], []
    for s in range(0, len(q), batch_size):
        qb = q[s : s + batch_size]
        sim = qb @ g.T  # (B, D) x (D, N) -> (B, N)
        if metric == "l2":
            dist = (qb * qb).sum(1, keepdim=True) - 2 * sim + g_sq[None, :]
            d, i = (-dist).topk(k, dim=1)
            ds.append(-d)
        else:
            d, i = sim.topk(k, dim=1)
            ds.append(d)
        idx.append(i)
    if not ds:
        return torch.zeros(0, k), torch.zeros(0, k, dtype=torch.int64)
    return torch.cat(ds), torch.cat(idx)


def _neighbours(train_feats, test_feats, k: int, search: SearchFn | None, batch_size: int):
    """Cosine neighbours of every test item in the training gallery: ``(sims, idx)``."""
    if search is None:
        return exact_search(train_feats, test_feats, k, metric="cosine", batch_size=batch_size)
    q = _as_tensor(test_feats, torch.float32)  # the search callable owns its metric (and normalisation)
    ds, idx = [], []
    for s in range(0, len(q), batch_size):  # every query, the last partial batch included
        d, i = search(q[s : s + batch_size], k)
        ds.append(_as_tensor(d, torch.float32))
        idx.append(_as_tensor(i, torch.int64))
    return torch.cat(ds), torch.cat(idx)


class KnnResult(NamedTuple):
    """Weighted-kNN output.

    Attributes:
        scores: ``(Q, C)`` summed neighbour weights per class.
        preds: ``(Q,)`` top-1 class.
        top5: ``(Q, min(5, C))`` the five best classes.
        top1_acc: top-1 accuracy (``nan`` without ``test_labels``).
        top5_acc: top-5 accuracy (``nan`` without ``test_labels``).
    """

    scores: torch.Tensor
    preds: torch.Tensor
    top5: torch.Tensor
    top1_acc: float
    top5_acc: float


def knn_classify(
    train_feats,
    train_labels,
    test_feats,
    k: int = 200,
    temperature: float = 0.07,
    num_classes: int | None = None,
    search: SearchFn | None = None,
    *,
    test_labels=None,
    batch_size: int = 1024,
) -> KnnResult:
    """Weighted kNN classifier of the instance-discrimination literature (Wu et al., 2018).

    Each of the ``k`` cosine-nearest training items votes for its class with weight
    ``exp(sim / temperature)``; the class scores are the summed votes.

    Args:
        train_feats: ``(N, D)`` gallery features.
        train_labels: ``(N,)`` gallery labels.
        test_feats: ``(Q, D)`` query features.
        k: neighbours per query (clipped to ``N``).
        temperature: softness of the vote weights.
        num_classes: number of classes (default: ``max label + 1``).
        search: optional ``(queries, k) -> (D, I)`` over the *same* gallery order, returning
            cosine similarities; exact ``torch.topk`` search when None.
        test_labels: ``(Q,)`` labels; when given, top-1/top-5 accuracies are filled in.
        batch_size: queries per search call.

    Returns:
        ``KnnResult``.
    """
    y_train = _as_labels(train_labels)
    n_train = len(y_train)
    if n_train == 0:
        raise ValueError("knn_classify: empty training gallery")
    c = int(num_classes if num_classes is not None else int(y_train.max()) + 1)
    if y_train.min() < 0 or y_train.max() >= c:
        raise ValueError(f"knn_classify: training labels outside [0, {c}) (unlabelled items must be filtered out)")
    sims, idx = _neighbours(train_feats, test_feats, min(k, n_train), search, batch_size)
    valid = idx >= 0
    weights = (sims / temperature).exp() * valid  # (Q, k)
    neigh_labels = y_train[idx.clamp(min=0)]  # (Q, k)
    scores = torch.zeros(len(idx), c, dtype=torch.float64)
    scores.scatter_add_(1, neigh_labels, weights.double())  # (Q, k) -> (Q, C)
    top5 = scores.topk(min(5, c), dim=1).indices
    preds = top5[:, 0] if len(top5) else torch.zeros(0, dtype=torch.int64)
    top1_acc = top5_acc = float("nan")
    if test_labels is not None:
        y_test = _as_labels(test_labels)
        _check_same_len(preds, y_test, "knn_classify")
        top1_acc = top1_accuracy(preds, y_test)
        top5_acc = float((top5 == y_test[:, None]).any(1).double().mean()) if len(y_test) else float("nan")
    return KnnResult(scores.float(), preds, top5, top1_acc, top5_acc)


def retrieval_recall(
    train_feats,
    train_labels,
    test_feats,
    test_labels,
    ks: Sequence[int] = (1, 5, 10, 20),
    search: SearchFn | None = None,
    *,
    batch_size: int = 1024,
) -> dict[int, float]:
    """Video retrieval Recall@k with the protocol of self-supervised video papers.

    Every test item queries the training gallery by cosine similarity; a query is a hit at
    ``k`` when a training item of the same class is among its ``k`` nearest neighbours.
    Every test item counts, the last partial batch included.

    Args:
        train_feats: ``(N, D)`` gallery features.
        train_labels: ``(N,)`` gallery labels.
        test_feats: ``(Q, D)`` query features.
        test_labels: ``(Q,)`` query labels.
        ks: cut-offs.
        search: optional ``(queries, k) -> (D, I)`` over the same gallery order.
        batch_size: queries per search call.

    Returns:
        ``{k: recall}`` with recall in ``[0, 1]``.
    """
    y_train, y_test = _as_labels(train_labels), _as_labels(test_labels)
    if len(y_train) == 0:
        raise ValueError("retrieval_recall: empty training gallery")
    if len(y_test) != len(_as_tensor(test_feats)):
        raise ValueError(f"retrieval_recall: {len(_as_tensor(test_feats))} test features but {len(y_test)} labels")
    kmax = min(max(ks), len(y_train))
    _, idx = _neighbours(train_feats, test_feats, kmax, search, batch_size)
    same = (y_train[idx.clamp(min=0)] == y_test[:, None]) & (idx >= 0)  # (Q, kmax)
    hit_at = same.cumsum(1) > 0  # (Q, kmax): a hit within the first j+1
    out = {}
    for k in ks:
        col = min(k, kmax) - 1
        out[int(k)] = float(hit_at[:, col].double().mean()) if len(y_test) else float("nan")
    return out


def neighbour_recall(approx_I, exact_I, k: int = 10) -> float:
    """True-neighbour recall@k: mean fraction of the exact top-k found in the approximate top-k.

    Args:
        approx_I: ``(Q, >=k)`` neighbour ids from the index under test (``-1`` = missing).
        exact_I: ``(Q, >=k)`` neighbour ids from exact search, best first.
        k: cut-off.

    Returns:
        Recall in ``[0, 1]``; 1.0 means the index returns the exact neighbours.
    """
    a, e = _as_tensor(approx_I, torch.int64), _as_tensor(exact_I, torch.int64)
    if a.ndim != 2 or e.ndim != 2 or len(a) != len(e):
        raise ValueError(f"neighbour_recall: shapes {tuple(a.shape)} and {tuple(e.shape)} must be (Q, k) with equal Q")
    k = min(k, e.shape[1])
    if len(a) == 0 or k == 0:
        return float("nan")
    a, e = a[:, :k], e[:, :k]
    found = (a[:, :, None] == e[:, None, :]) & (e[:, None, :] >= 0)  # (Q, k, k)
    n_true = (e >= 0).sum(1).clamp(min=1)
    return float((found.any(1).sum(1).double() / n_true).mean())


class TwoStreamScores(NamedTuple):
    """Fused predictions of a two-stream (RGB + flow) per-time-step classifier."""

    pred_logits: torch.Tensor  # (N,) argmax of time-mean(z_rgb + z_flow)           -> Acc
    pred_softmax: torch.Tensor  # (N,) argmax of time-mean(softmax(z_rgb) + softmax(z_flow)) -> AccSf
    conf_softmax: torch.Tensor  # (N,) that fused softmax score of the argmax class, in [0, 2]


def two_stream_scores(rgb_steps, flow_steps=None, rgb_mask=None, flow_mask=None) -> TwoStreamScores:
    """CFB's two fusions of per-time-step logits ``(N, T, C)`` (flow may be absent: one stream).

    Masks ``(N, T)`` (True = real step) restrict the time means. ``Acc`` fuses raw logits, ``AccSf``
    (the published headline) sums the per-step softmaxes; the ``AccSf`` score is also the
    confidence CFB ranks target videos by for its flow bank.
    """

    def tmean(x, m):
        x = _as_tensor(x, torch.float64)
        m = torch.ones(x.shape[:2], dtype=torch.bool) if m is None else _as_tensor(m, torch.bool)
        w = m.to(x.dtype)[..., None]  # (N, T, 1)
        return (x * w).sum(1) / w.sum(1).clamp_min(1.0)  # (N, T, C) -> (N, C)

    logits = tmean(rgb_steps, rgb_mask)
    soft = tmean(torch.softmax(_as_tensor(rgb_steps, torch.float64), -1), rgb_mask)
    if flow_steps is not None:
        logits = logits + tmean(flow_steps, flow_mask)
        soft = soft + tmean(torch.softmax(_as_tensor(flow_steps, torch.float64), -1), flow_mask)
    conf, pred_sf = soft.max(1)
    return TwoStreamScores(logits.argmax(1), pred_sf, conf)


def acc_and_acc_sf(rgb_steps, flow_steps, labels, rgb_mask=None, flow_mask=None) -> dict[str, float]:
    """``{"acc": ..., "acc_sf": ...}``: top-1 of the logit fusion and of the softmax fusion."""
    s = two_stream_scores(rgb_steps, flow_steps, rgb_mask, flow_mask)
    y = _as_labels(labels)
    return {"acc": top1_accuracy(s.pred_logits, y), "acc_sf": top1_accuracy(s.pred_softmax, y)}
