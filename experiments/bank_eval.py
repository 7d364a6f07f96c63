"""Evaluate a feature set through a faiss bank: kNN classification or retrieval Recall@k.

Glue between ``store`` (vectors, splits), ``store.bank`` (the index) and ``heads.metrics``
(the math). The gallery is the ``train_split`` videos, the queries the ``test_split``
videos, both at ``level`` (``"video"``: a video's mean row, the self-supervised video
protocol; ``"row"``: every row is an item with its video's label). Unlabelled items
(label -1) are left out and counted.

A report always holds both numbers: class-level metrics through the bank *and* through
exact search, and the true-neighbour recall@10 of the bank's index against exact search
(class-level R@k alone hides a collapsed index).

When the gallery and query splits are the same, every query would find itself first (top-1
1.0 for free): each query's own video is then left out of its neighbours (leave-one-video-
out, for the bank and for exact search alike) and the report says so (``self_excluded``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from featbank.heads.metrics import exact_search, knn_classify, neighbour_recall, retrieval_recall
from featbank.store.bank import BankError, FaissBank, select_videos, set_vectors
from featbank.store.base import FeatureStore

MODES = ("knn", "retrieval")


def _labelled(feats: np.ndarray, ids: list, labels: np.ndarray) -> tuple[np.ndarray, list, np.ndarray, int]:
    keep = labels >= 0
    return feats[keep], [i for i, k in zip(ids, keep) if k], labels[keep], int((~keep).sum())


def _as_similarity(search, metric: str):
    """A ``(queries, k) -> (D, I)`` with similarities (negated squared distances for L2)."""

    def fn(queries, k):
        d, i = search(queries, k)
        d = torch.as_tensor(np.asarray(d)) if not isinstance(d, torch.Tensor) else d
        return (d if metric == "cosine" else -d), i

    return fn


def _excluding_own_video(search, query_videos: np.ndarray, gallery_videos: np.ndarray, extra: int):
    """A ``search`` over all queries at once that drops each query's own video from its neighbours."""

    def fn(queries, k):
        if len(queries) != len(query_videos):
            raise ValueError("leave-one-video-out search expects all queries in one call")
        d, i = search(queries, k + extra)
        d, i = np.asarray(d), np.asarray(i)
        own = (i >= 0) & (gallery_videos[np.maximum(i, 0)] == query_videos[:, None])
        keep = ~own & (i >= 0)
        out_d = np.full((len(i), k), -np.inf, np.float32)
        out_i = np.full((len(i), k), -1, np.int64)
        for r in range(len(i)):
            sel = np.flatnonzero(keep[r])[:k]
            out_d[r, : len(sel)], out_i[r, : len(sel)] = d[r, sel], i[r, sel]
        return torch.from_numpy(out_d), torch.from_numpy(out_i)

    return fn


def evaluate_bank(
    store: FeatureStore,
    set_name: str,
    *,
    mode: str = "retrieval",
    index: str = "auto",
    metric: str = "cosine",
    level: str = "video",
    train_split: str = "train",
    test_split: str = "test",
    ks: Sequence[int] = (1, 5, 10, 20),
    knn_k: int = 200,
    temperature: float = 0.07,
    recall_target: float = 0.95,
    allow_stale: bool = False,
    **bank_kw: Any,
) -> dict[str, Any]:
    """Build a bank over the training split and evaluate the test split against it.

    Args:
        store: the feature store.
        set_name: feature set to evaluate.
        mode: ``"knn"`` (weighted kNN top-1/top-5) or ``"retrieval"`` (Recall@k).
        index: ``"auto"`` or a faiss factory string for the gallery bank.
        metric: ``"cosine"`` or ``"l2"`` (L2 neighbours vote with ``exp(-d / T)``).
        level: ``"video"`` or ``"row"``.
        train_split: split forming the gallery.
        test_split: split forming the queries.
        ks: Recall@k cut-offs (retrieval).
        knn_k: neighbours voting (kNN).
        temperature: vote temperature (kNN).
        recall_target: neighbour-recall target of the bank's tuning.
        allow_stale: evaluate a stale set anyway.
        **bank_kw: passed to ``FaissBank.from_arrays``.

    Returns:
        A JSON-serialisable report (see ``docs/bank.md``).
    """
    if mode not in MODES:
        raise BankError(f"eval mode {mode!r} not in {MODES}")
    if int(knn_k) < 1 or any(int(k) < 1 for k in ks) or not ks:
        raise BankError(f"k and every Recall@k cut-off must be >= 1, got k={knn_k}, ks={tuple(ks)}")
    fs = store.open_set(set_name, allow_stale=allow_stale)
    train_ids = select_videos(fs, split=train_split)
    test_ids = select_videos(fs, split=test_split)
    g_feats, g_ids, g_labels, g_unlab = _labelled(*set_vectors(fs, train_ids, level))
    q_feats, _, q_labels, q_unlab = _labelled(*set_vectors(fs, test_ids, level))
    if len(g_feats) == 0 or len(q_feats) == 0:
        raise BankError(
            f"feature set {set_name!r}: no labelled {'gallery' if len(g_feats) == 0 else 'query'} items "
            f"(split {train_split!r} / {test_split!r}); label the videos or choose other splits"
        )
    bank = FaissBank.from_arrays(
        g_feats, ids=g_ids, labels=g_labels, index=index, metric=metric, level=level,
        recall_target=recall_target,
        info_fields={"set_name": set_name, "backbone": fs.info.backbone, "weights_id": fs.info.weights_id,
                     "filters": {"split": [train_split]}},
        **bank_kw,
    )
    exact_metric = "cosine" if metric == "cosine" else "l2"

    def exact(queries, k):
        return exact_search(g_feats, queries, k, metric=exact_metric)

    searches = {"bank": _as_similarity(bank.search, metric), "exact": _as_similarity(exact, metric)}
    batch = 1024
    self_excluded = ""
    if train_split == test_split:
        # the queries are the gallery: leave each query's own video out of its neighbours
        g_vids = np.asarray([v for v, _ in g_ids], dtype=object)
        extra = int(np.unique(g_vids, return_counts=True)[1].max())
        searches = {name: _excluding_own_video(fn, g_vids, g_vids, extra) for name, fn in searches.items()}
        batch = max(1, len(q_feats))
        self_excluded = (f"gallery and queries are both split {train_split!r}: each query's own video is left "
                         "out of its neighbours (leave-one-video-out)")
    num_classes = int(max(g_labels.max(), q_labels.max())) + 1
    class_metrics: dict[str, dict[str, float]] = {}
    for name, fn in searches.items():
        if mode == "knn":
            res = knn_classify(g_feats, g_labels, q_feats, k=knn_k, temperature=temperature,
                               num_classes=num_classes, search=fn, test_labels=q_labels, batch_size=batch)
            class_metrics[name] = {"top1": res.top1_acc, "top5": res.top5_acc}
        else:
            rec = retrieval_recall(g_feats, g_labels, q_feats, q_labels, ks=ks, search=fn, batch_size=batch)
            class_metrics[name] = {f"R@{k}": v for k, v in rec.items()}
    k_nr = min(10, len(g_feats))
    _, approx_i = searches["bank"](q_feats, k_nr)
    _, exact_i = searches["exact"](q_feats, k_nr)
    approx_i, exact_i = np.asarray(approx_i), np.asarray(exact_i)
    info = bank.info
    return {
        "set": set_name,
        "mode": mode,
        "level": level,
        "metric": metric,
        "train_split": train_split,
        "test_split": test_split,
        "n_gallery": int(len(g_feats)),
        "n_queries": int(len(q_feats)),
        "unlabelled_skipped": {"gallery": g_unlab, "queries": q_unlab},
        "index": info.index,
        "nprobe": info.nprobe,
        "ef_search": info.ef_search,
        "train_size": info.train_size,
        "tuned_recall_at_10": info.recall_at_10,
        "self_excluded": self_excluded,
        "class_metrics": class_metrics,
        "neighbour_recall_at_10": neighbour_recall(approx_i, exact_i, k=k_nr),
    }


def format_report(rep: dict[str, Any]) -> str:
    """Human-readable lines of an ``evaluate_bank`` report."""
    lines = [
        f"{rep['mode']} on {rep['set']!r} ({rep['level']} level, {rep['metric']}): "
        f"{rep['n_queries']} {rep['test_split']} queries vs {rep['n_gallery']} {rep['train_split']} gallery items",
        f"index {rep['index']} (nprobe {rep['nprobe']}, efSearch {rep['ef_search']}, trained on {rep['train_size']})",
    ]
    if rep.get("self_excluded"):
        lines.append(f"  {rep['self_excluded']}")
    for name, vals in rep["class_metrics"].items():
        lines.append(f"  {name:5s} " + "  ".join(f"{k} {v:.4f}" for k, v in vals.items()))
    lines.append(f"  true-neighbour recall@10 of the index vs exact search: {rep['neighbour_recall_at_10']:.4f}")
    skipped = rep["unlabelled_skipped"]
    if skipped["gallery"] or skipped["queries"]:
        lines.append(f"  skipped unlabelled items: {skipped['gallery']} gallery, {skipped['queries']} queries")
    return "\n".join(lines)
