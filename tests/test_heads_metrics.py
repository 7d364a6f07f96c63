"""Oracle tests of heads.metrics on constructed cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from featbank.heads.metrics import (
    exact_search,
    knn_classify,
    mean_class_accuracy,
    neighbour_recall,
    retrieval_recall,
    top1_accuracy,
    topk_accuracy,
)


def test_top1_from_logits_and_preds():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 1.0], [5.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 0, 0])
    assert top1_accuracy(logits, labels) == pytest.approx(0.75)
    assert top1_accuracy(np.array([0, 1, 2, 0]), [0, 1, 0, 0]) == pytest.approx(0.75)
    assert math.isnan(top1_accuracy(torch.zeros(0, 3), torch.zeros(0)))
    with pytest.raises(ValueError):
        top1_accuracy(logits, labels[:2])


def test_topk_accuracy():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    labels = torch.tensor([2, 0])
    assert topk_accuracy(logits, labels, k=1) == 0.0
    assert topk_accuracy(logits, labels, k=3) == pytest.approx(0.5)
    assert topk_accuracy(logits, labels, k=4) == 1.0
    assert topk_accuracy(logits, labels, k=10) == 1.0  # clipped to C


def test_mean_class_accuracy_is_balanced():
    # class 0: 4 items, all right; class 1: 1 item, wrong -> mean = (1 + 0) / 2
    preds = torch.tensor([0, 0, 0, 0, 0])
    labels = torch.tensor([0, 0, 0, 0, 1])
    assert mean_class_accuracy(preds, labels) == pytest.approx(0.5)
    assert top1_accuracy(preds, labels) == pytest.approx(0.8)
    # a class absent from the labels is not averaged in
    assert mean_class_accuracy(preds, labels, num_classes=5) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        mean_class_accuracy(preds, labels, num_classes=1)


def test_exact_search_metrics():
    g = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    q = torch.tensor([[1.0, 0.1]])
    d, i = exact_search(g, q, 3, metric="cosine")
    assert i.tolist() == [[0, 2, 1]]
    d, i = exact_search(g, q, 3, metric="ip")
    assert i.tolist() == [[2, 0, 1]]
    d, i = exact_search(g, q, 3, metric="l2")
    assert i.tolist() == [[0, 1, 2]]
    assert d[0, 0].item() == pytest.approx(0.01, abs=1e-6)


def _two_cluster_data():
    # class 0 near +x, class 1 near +y; one mislabelled-looking query sits near +y.
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.95, 0.05], [0.0, 1.0], [0.1, 0.9]])
    y_train = torch.tensor([0, 0, 0, 1, 1])
    test = torch.tensor([[1.0, 0.02], [0.02, 1.0], [0.05, 1.0]])
    y_test = torch.tensor([0, 1, 0])
    return train, y_train, test, y_test


def test_knn_classify_known_answer():
    train, y_train, test, y_test = _two_cluster_data()
    res = knn_classify(train, y_train, test, k=2, temperature=0.1, test_labels=y_test)
    assert res.preds.tolist() == [0, 1, 1]
    assert res.top1_acc == pytest.approx(2 / 3)
    assert res.top5_acc == 1.0  # only 2 classes
    assert res.scores.shape == (3, 2)
    # the vote weights follow exp(sim / T): hand-computed for the first query
    sims = torch.nn.functional.normalize(train, dim=1) @ torch.nn.functional.normalize(test[:1], dim=1).T
    top2 = sims[:, 0].topk(2).values
    assert res.scores[0, 0].item() == pytest.approx(float((top2 / 0.1).exp().sum()), rel=1e-5)


def test_knn_with_search_callable_matches_exact():
    g = torch.randn(300, 16)
    y = torch.randint(0, 4, (300,))
    q = torch.randn(37, 16)
    calls = []

    def search(queries, k):
        calls.append(len(queries))
        return exact_search(g, queries, k)

    a = knn_classify(g, y, q, k=20, num_classes=4, batch_size=10)
    b = knn_classify(g, y, q, k=20, num_classes=4, search=search, batch_size=10)
    assert torch.equal(a.preds, b.preds)
    assert calls == [10, 10, 10, 7]  # last partial batch is searched


def test_retrieval_recall_known_answer_and_last_batch():
    train, y_train, test, y_test = _two_cluster_data()
    r = retrieval_recall(train, y_train, test, y_test, ks=(1, 2, 5), batch_size=2)
    # query 2 (label 0, near +y): top1 = class 1, top2 = class 1, top5 contains class 0
    assert r == {1: pytest.approx(2 / 3), 2: pytest.approx(2 / 3), 5: 1.0}


def test_retrieval_counts_every_query_with_partial_batches():
    g = torch.eye(4)
    y_g = torch.tensor([0, 1, 2, 3])
    q = torch.eye(4).repeat(3, 1)[:11]  # 11 queries: last batch of size 1 with batch_size=5
    y_q = torch.tensor([0, 1, 2, 3] * 3)[:11]
    y_q[-1] = 0  # query 10 is e_2 but labelled 0: a miss at k=1
    r = retrieval_recall(g, y_g, q, y_q, ks=(1,), batch_size=5)
    assert r[1] == pytest.approx(10 / 11)  # dropping the partial batch would give 1.0


def test_neighbour_recall():
    exact = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    assert neighbour_recall(exact, exact, k=4) == 1.0
    approx = torch.tensor([[3, 2, 9, 9], [-1, -1, -1, -1]])
    assert neighbour_recall(approx, exact, k=4) == pytest.approx((2 / 4 + 0) / 2)
    assert neighbour_recall(torch.tensor([[1, 0]]), torch.tensor([[0, 1]]), k=2) == 1.0
