"""Semantics of the torch memory banks: heap/FIFO, persistence, pos/neg sampling, no update in forward."""

from __future__ import annotations

import pytest
import torch

from featbank.heads.memory import (
    BankStateError,
    CategoryBank,
    MomentumQueue,
    MovingAverageBank,
    SourceMemoryBank,
)


def _feats_for(ids, dim=4):
    # feature encodes the id so that we can check which entry came back
    return torch.tensor([[float(i)] * dim for i in ids])


def test_heap_keeps_top_confidence_per_class_with_cap():
    g = torch.Generator().manual_seed(0)
    bank = CategoryBank(num_classes=3, cap=5)
    n = 200
    ids = list(range(n))
    labels = torch.tensor([i % 3 for i in ids])
    conf = torch.rand(n, generator=g)
    for s in range(0, n, 17):  # several batches, last one partial
        bank.push(_feats_for(ids[s : s + 17]), labels[s : s + 17], conf[s : s + 17], ids[s : s + 17])
    assert bank.counts() == [5, 5, 5] and len(bank) == 15
    for c in range(3):
        members = [i for i in ids if i % 3 == c]
        want = sorted(members, key=lambda i: -conf[i].item())[:5]
        got = bank.entries(c)
        assert [i for _, i, _ in got] == want
        assert all(torch.equal(f, _feats_for([i])[0]) for _, i, f in got)


def test_sample_only_from_the_right_class():
    bank = CategoryBank(num_classes=4, cap=10)
    ids = list(range(40))
    bank.push(_feats_for(ids), [i % 4 for i in ids], torch.ones(40), ids)
    s = bank.sample(3, classes=[1, 3], generator=torch.Generator().manual_seed(1))
    assert s.labels.tolist().count(1) == 3 and s.labels.tolist().count(3) == 3 and len(s.ids) == 6
    for lab, i, f in zip(s.labels.tolist(), s.ids, s.feats):
        assert i % 4 == lab and f[0].item() == i
    assert len(set(s.ids)) == 6  # without replacement
    assert len(bank.sample(50).ids) == 40  # all of each class when fewer than k
    bank.clear()
    assert len(bank) == 0 and bank.sample(2).feats.shape[0] == 0


def test_repushed_id_replaces_its_entry_and_rebuild_keeps_content():
    bank = CategoryBank(num_classes=2, cap=3)
    bank.push(_feats_for([1, 2, 3]), [0, 0, 0], [0.9, 0.8, 0.7], [1, 2, 3])
    bank.push(_feats_for([1]) * 0 + 42, [1], [0.5], [1])  # id 1 moves to class 1
    assert [i for _, i, _ in bank.entries(0)] == [2, 3]
    assert [(p, i) for p, i, _ in bank.entries(1)] == [(0.5, 1)]
    bank.push(_feats_for([4, 5]), [0, 0], [0.1, 0.95], [4, 5])
    assert [i for _, i, _ in bank.entries(0)] == [5, 2, 3]  # 0.1 was not kept when full
    before = [(p, i) for c in range(2) for p, i, _ in bank.entries(c)]
    bank.rebuild()
    assert [(p, i) for c in range(2) for p, i, _ in bank.entries(c)] == before


def test_fifo_mode_drops_oldest():
    bank = CategoryBank(num_classes=2, cap=3, mode="fifo")
    for step in range(5):
        ids = [10 * step, 10 * step + 1]
        bank.push(_feats_for(ids), [0, 1], [0.0, 1.0], ids)  # confidence is ignored in fifo mode
    assert [i for _, i, _ in bank.entries(0)] == [40, 30, 20]
    assert [i for _, i, _ in bank.entries(1)] == [41, 31, 21]
    bank.push(_feats_for(range(100, 107)), [0] * 7, torch.zeros(7), list(range(100, 107)))
    assert [i for _, i, _ in bank.entries(0)] == [106, 105, 104]


def test_category_bank_persistence_and_weights_check(tmp_path):
    bank = CategoryBank(num_classes=3, cap=4, weights_id="sha-A")
    ids = [f"vid{i}" for i in range(12)]
    bank.push(torch.randn(12, 8), [i % 3 for i in range(12)], torch.rand(12), ids)
    bank.save(tmp_path / "cfb.pt")
    loaded = CategoryBank.load(tmp_path / "cfb.pt", weights_id="sha-A")
    assert loaded.weights_id == "sha-A" and loaded.cap == 4
    for c in range(3):
        a, b = bank.entries(c), loaded.entries(c)
        assert [(p, i) for p, i, _ in a] == [(p, i) for p, i, _ in b]
        assert all(torch.equal(x, y) for (_, _, x), (_, _, y) in zip(a, b))
    with pytest.raises(BankStateError, match="sha-B"):
        CategoryBank.load(tmp_path / "cfb.pt", weights_id="sha-B")
    assert len(CategoryBank.load(tmp_path / "cfb.pt", weights_id="sha-B", allow_mismatch=True)) == 12
    fresh = CategoryBank(num_classes=3, weights_id="sha-B")
    with pytest.raises(BankStateError):
        fresh.load_state_dict(bank.state_dict())


def test_source_bank_pos_neg_classes_and_detached():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    bank = SourceMemoryBank(num_items=8, dim=3, labels=labels)
    proj = torch.nn.Linear(3, 3)
    x = torch.randn(8, 3)
    feats = proj(x)  # requires grad
    bank.update(torch.arange(6), feats[:6])  # items 6, 7 not filled
    assert not bank.feats.requires_grad
    g = torch.Generator().manual_seed(0)
    queries = torch.tensor([0, 1, 2, 0, 1, 2] * 20)
    pos, neg = bank.sample_pos_neg(queries, generator=g)
    assert not pos.requires_grad and pos.shape == (120, 3)
    row_of = {tuple(bank.feats[i].tolist()): i for i in range(6)}
    for q, p, n in zip(queries.tolist(), pos, neg):
        ip, ineg = row_of[tuple(p.tolist())], row_of[tuple(n.tolist())]
        assert labels[ip] == q and labels[ineg] != q and ip < 6 and ineg < 6
    # overwrite on revisit
    bank.update(torch.tensor([0]), torch.zeros(1, 3))
    assert torch.equal(bank(torch.tensor([0])), torch.zeros(1, 3))
    empty = SourceMemoryBank(num_items=4, dim=3, labels=torch.tensor([0, 0, 1, 1]))
    empty.update(torch.tensor([0]), torch.ones(1, 3))
    with pytest.raises(BankStateError, match="negative"):
        empty.sample_pos_neg(torch.tensor([0]))
    with pytest.raises(BankStateError, match="positive"):
        empty.sample_pos_neg(torch.tensor([1]))


def test_momentum_queue_fifo_order():
    q = MomentumQueue(dim=2, size=5)
    q.enqueue(torch.tensor([[1.0, 1], [2, 2], [3, 3]]))
    q.enqueue(torch.tensor([[4.0, 4], [5, 5], [6, 6]]))  # 1 falls out
    assert q.negatives()[:, 0].tolist() == [2, 3, 4, 5, 6]
    assert q.dequeue(2)[:, 0].tolist() == [2, 3] and len(q) == 3
    q.enqueue(torch.arange(10, 18, dtype=torch.float32)[:, None].repeat(1, 2))  # larger than capacity
    assert q.negatives()[:, 0].tolist() == [13, 14, 15, 16, 17]
    sd = q.state_dict()
    q2 = MomentumQueue(dim=2, size=5)
    q2.load_state_dict(sd)
    assert torch.equal(q2.negatives(), q.negatives())


def test_moving_average_bank_momentum():
    bank = MovingAverageBank(num_items=3, dim=2, momentum=0.5, normalize=False)
    bank.update(torch.tensor([0, 2]), torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    bank.update(torch.tensor([0]), torch.tensor([[3.0, 0.0]]))
    assert bank.feats.tolist() == [[2.0, 0.0], [0.0, 0.0], [0.0, 2.0]]
    assert bank.filled.tolist() == [True, False, True]
    nb = MovingAverageBank(num_items=2, dim=2, momentum=0.9)
    nb.update(torch.tensor([0]), torch.tensor([[3.0, 4.0]]))
    assert torch.allclose(nb.feats[0].norm(), torch.tensor(1.0))
    with pytest.raises(BankStateError):
        bank.update(torch.tensor([1, 1]), torch.ones(2, 2))


def test_no_update_inside_forward():
    src = SourceMemoryBank(4, 3, labels=torch.tensor([0, 1, 0, 1]))
    src.update(torch.arange(4), torch.randn(4, 3))
    queue = MomentumQueue(3, 4)
    queue.enqueue(torch.randn(2, 3))
    avg = MovingAverageBank(4, 3)
    avg.update(torch.arange(4), torch.randn(4, 3))
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in (src, queue, avg)]
    idx = torch.tensor([0, 2])
    src(idx), queue(), avg(idx)
    for m, b in zip((src, queue, avg), before):
        for k, v in m.state_dict().items():
            assert torch.equal(v, b[k]), k


def test_cfb_bank_keeps_exactly_the_60_most_confident_per_class():
    """CFB: per class the 60 most confident target entries (per-time-step (T, D) features)."""
    g = torch.Generator().manual_seed(3)
    n, num_classes, cap = 500, 4, 60
    labels = torch.randint(0, num_classes, (n,), generator=g)
    labels[:10] = 3  # class 3 gets 10 + its random share; class sizes all exceed 60
    conf = torch.rand(n, generator=g)
    ids = [f"v{i}" for i in range(n)]
    feats = torch.arange(n, dtype=torch.float32)[:, None, None].expand(n, 2, 3).clone()  # entry i holds i
    bank = CategoryBank(num_classes, cap=cap)
    bank.push(torch.zeros(3, 2, 3), [0, 1, 2], [2.0, 2.0, 2.0], ["old0", "old1", "old2"])
    bank.refill(feats, labels, conf, ids)  # explicit rebuild: the old entries are gone
    assert bank.counts() == [cap] * num_classes and len(bank) == cap * num_classes
    for c in range(num_classes):
        members = [i for i in range(n) if labels[i] == c]
        want = sorted(members, key=lambda i: -conf[i].item())[:cap]
        got = bank.entries(c)
        assert [int(i[1:]) for _, i, _ in got] == want
        assert all(f.shape == (2, 3) and f[0, 0].item() == int(i[1:]) for _, i, f in got)
        assert min(p for p, _, _ in got) >= max(conf[i].item() for i in members if i not in want)


def test_cfb_bank_draw_only_from_the_query_class_and_persists_stacks(tmp_path):
    import numpy as np

    bank = CategoryBank(3, cap=60)
    ids = list(range(30))
    bank.refill(_feats_for(ids), [i % 2 for i in ids], torch.rand(30), ids)  # class 2 stays empty
    queries = torch.tensor([0, 1, 1, 0, 2, 1] * 20)
    feats, found, got_ids = bank.draw(queries, generator=torch.Generator().manual_seed(0))
    assert found.tolist() == [c != 2 for c in queries.tolist()]
    for c, f, i, ok in zip(queries.tolist(), feats, got_ids, found.tolist()):
        if ok:
            assert i % 2 == c and f[0].item() == i  # an entry of the query's own class
        else:
            assert i is None and f.abs().sum() == 0
    assert len({i for i, ok in zip(got_ids, found.tolist()) if ok}) > 10  # random, not one entry
    a = bank.draw(queries, generator=torch.Generator().manual_seed(5))[2]
    assert a == bank.draw(queries, generator=torch.Generator().manual_seed(5))[2]  # reproducible
    names = bank.save_class_stacks(tmp_path / "epoch_000")
    assert names == ["0.npy", "1.npy"]
    s0 = np.load(tmp_path / "epoch_000" / "0.npy")
    assert s0.shape == (15, 4) and sorted(s0[:, 0].astype(int).tolist()) == list(range(0, 30, 2))
