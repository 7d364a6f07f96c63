"""Memory banks in torch: explicit updates only, never inside ``forward`` (a forward pass stays a pure function).

* ``CategoryBank``: per class, the most confident entries (CFB's category-aware feature
  bank): a capped min-heap per class (default cap 60), or a first-in-first-out capacity mode.
* ``SourceMemoryBank``: the detached projected feature of every source item by index
  (CycDA stage 3), sampled as one positive and one negative per query by class.
* ``MomentumQueue``: a ring-buffer queue of negatives (MoCo-style enqueue / dequeue).
* ``MovingAverageBank``: per-item features updated by momentum (instance discrimination).

No faiss here: a ``heads`` bank gets tensors; nearest-neighbour search over stored features
is ``featbank.store.bank.FaissBank``.
"""

from __future__ import annotations

import heapq
import itertools
import os
from collections import deque
from typing import Any, NamedTuple, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

BANK_STATE_VERSION = 1


class BankStateError(ValueError):
    """A memory bank cannot be loaded or sampled as asked (names what is wrong and what to do)."""


def _ids_list(ids, n: int) -> list:
    if ids is None:
        raise BankStateError("CategoryBank.push needs ids (one per feature) to identify entries")
    out = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    if len(out) != n:
        raise BankStateError(f"CategoryBank.push: {len(out)} ids for {n} features")
    return out


class BankSample(NamedTuple):
    """Entries drawn from a ``CategoryBank``."""

    feats: torch.Tensor  # (N, D)
    labels: torch.Tensor  # (N,)
    ids: list  # N entry ids
    conf: torch.Tensor  # (N,)


class CategoryBank:
    """Per-class bank of the most confident features (CFB), or per-class FIFO.

    ``mode="heap"``: each class keeps at most ``cap`` entries with the highest confidence
    (a min-heap: a new entry replaces the least confident one when it is more confident).
    Pushing an id already in the bank replaces its old entry. ``mode="fifo"``: each class
    keeps its ``cap`` most recent entries; the oldest are dropped in O(batch).

    Features are stored detached, on CPU, as float32.

    Args:
        num_classes: number of classes (labels lie in ``[0, num_classes)``).
        cap: entries kept per class.
        mode: ``"heap"`` (most confident) or ``"fifo"`` (most recent).
        weights_id: the backbone weights the features come from (recorded when saved).
    """

    def __init__(self, num_classes: int, cap: int = 60, mode: str = "heap", weights_id: str = "") -> None:
        if mode not in ("heap", "fifo"):
            raise BankStateError(f"CategoryBank mode {mode!r} not in ('heap', 'fifo')")
        if cap <= 0 or num_classes <= 0:
            raise BankStateError(f"CategoryBank needs cap > 0 and num_classes > 0, got {cap}, {num_classes}")
        self.num_classes, self.cap, self.mode, self.weights_id = int(num_classes), int(cap), mode, weights_id
        self._seq = itertools.count()
        self.clear()

    def clear(self) -> None:
        """Remove every entry."""
        # heap mode: per class a min-heap of (conf, seq, id); fifo mode: per class a deque of (seq, id).
        # Replaced entries stay in their heap/deque until skipped lazily or compacted by rebuild().
        self._heaps: list[list[tuple[float, int, Any]]] = [[] for _ in range(self.num_classes)]
        self._fifo: list[deque] = [deque() for _ in range(self.num_classes)]
        self._entries: dict[Any, tuple[int, float, int, torch.Tensor]] = {}  # id -> (class, conf, seq, feat)
        self._count = [0] * self.num_classes  # live entries per class

    def __len__(self) -> int:
        return len(self._entries)

    def counts(self) -> list[int]:
        """Entries per class."""
        return list(self._count)

    def push(self, feats: torch.Tensor, labels, conf, ids) -> None:
        """Offer a batch of entries.

        Args:
            feats: ``(B, D)`` features (stored detached).
            labels: ``(B,)`` class of each entry (pseudo label for target data).
            conf: ``(B,)`` confidence of each entry (heap mode keeps the highest).
            ids: ``B`` hashable ids (video ids, item indices). An id already present loses its
                old entry; the new one then competes like any other.
        """
        feats = feats.detach().to("cpu", torch.float32)
        labels = torch.as_tensor(labels).reshape(-1).tolist()
        conf = torch.as_tensor(conf, dtype=torch.float64).reshape(-1).tolist()
        ids = _ids_list(ids, len(feats))
        if not (len(labels) == len(conf) == len(feats)):
            raise BankStateError(f"CategoryBank.push: {len(feats)} feats, {len(labels)} labels, {len(conf)} conf")
        bad = [c for c in labels if not 0 <= int(c) < self.num_classes]
        if bad:
            raise BankStateError(f"CategoryBank.push: labels {bad[:5]} outside [0, {self.num_classes})")
        for f, c, p, i in zip(feats, labels, conf, ids):
            self._push_one(f.clone(), int(c), float(p), i)

    def _remove(self, i: Any) -> None:
        c = self._entries.pop(i)[0]
        self._count[c] -= 1

    def _insert(self, feat: torch.Tensor, c: int, p: float, seq: int, i: Any) -> None:
        self._entries[i] = (c, p, seq, feat)
        self._count[c] += 1

    def _push_one(self, feat: torch.Tensor, c: int, p: float, i: Any) -> None:
        if i in self._entries:
            self._remove(i)  # its heap/deque slot becomes stale
        seq = next(self._seq)
        if self.mode == "fifo":
            q = self._fifo[c]
            q.append((seq, i))
            self._insert(feat, c, p, seq, i)
            while self._count[c] > self.cap:  # drop the oldest live entries: O(1) amortised each
                old_seq, old_id = q.popleft()
                if self._is_live(old_id, old_seq):
                    self._remove(old_id)
        else:
            heap = self._heaps[c]
            self._drop_stale_top(c)
            if self._count[c] < self.cap:
                heapq.heappush(heap, (p, seq, i))
                self._insert(feat, c, p, seq, i)
            elif p > heap[0][0]:  # more confident than the least confident kept entry
                _, _, old_id = heapq.heapreplace(heap, (p, seq, i))
                self._remove(old_id)
                self._insert(feat, c, p, seq, i)
                self._drop_stale_top(c)
        if len(self._heaps[c]) + len(self._fifo[c]) > 2 * self.cap + 8:
            self._rebuild_class(c)

    def _is_live(self, i: Any, seq: int) -> bool:
        e = self._entries.get(i)
        return e is not None and e[2] == seq

    def _drop_stale_top(self, c: int) -> None:
        heap = self._heaps[c]
        while heap and not self._is_live(heap[0][2], heap[0][1]):
            heapq.heappop(heap)

    def _rebuild_class(self, c: int) -> None:
        self._heaps[c] = [(p, s, i) for p, s, i in self._heaps[c] if self._is_live(i, s)]
        heapq.heapify(self._heaps[c])
        self._fifo[c] = deque((s, i) for s, i in self._fifo[c] if self._is_live(i, s))

    def rebuild(self) -> None:
        """Compact every class (drop replaced entries); the kept entries are unchanged."""
        for c in range(self.num_classes):
            self._rebuild_class(c)

    def _by_class(self) -> list[list[tuple[float, int, Any, torch.Tensor]]]:
        groups: list[list] = [[] for _ in range(self.num_classes)]
        for i, (c, p, s, f) in self._entries.items():
            groups[c].append((p, s, i, f))
        key = (lambda e: (-e[0], e[1])) if self.mode == "heap" else (lambda e: -e[1])
        return [sorted(g, key=key) for g in groups]

    def entries(self, c: int) -> list[tuple[float, Any, torch.Tensor]]:
        """``(confidence, id, feature)`` of class ``c``: most confident first (heap), newest first (fifo)."""
        return [(p, i, f) for p, s, i, f in self._by_class()[c]]

    def sample(
        self, k_per_class: int, classes: Sequence[int] | None = None, generator: torch.Generator | None = None
    ) -> BankSample:
        """Draw up to ``k_per_class`` entries (without replacement) from each class.

        Args:
            k_per_class: entries per class (all of a class when it holds fewer).
            classes: classes to draw from (default: all).
            generator: random generator for reproducible draws.

        Returns:
            ``BankSample(feats (N, D), labels (N,), ids, conf (N,))``; empty classes add nothing.
        """
        chosen = range(self.num_classes) if classes is None else [int(c) for c in classes]
        groups = self._by_class()
        feats, labels, ids, conf = [], [], [], []
        for c in chosen:
            if not 0 <= c < self.num_classes:
                raise BankStateError(f"CategoryBank.sample: class {c} outside [0, {self.num_classes})")
            ent = groups[c]
            if not ent:
                continue
            pick = torch.randperm(len(ent), generator=generator)[: min(k_per_class, len(ent))].tolist()
            for j in pick:
                p, _, i, f = ent[j]
                feats.append(f)
                labels.append(c)
                ids.append(i)
                conf.append(p)
        dim = next(iter(self._entries.values()))[3].shape[-1] if self._entries else 0
        return BankSample(
            torch.stack(feats) if feats else torch.zeros(0, dim),
            torch.tensor(labels, dtype=torch.int64),
            ids,
            torch.tensor(conf, dtype=torch.float32),
        )

    def refill(self, feats: torch.Tensor, labels, conf, ids) -> None:
        """Empty the bank, then push a whole set (CFB rebuilds its bank at every evaluation pass).

        An explicit update: ``feats`` ``(N, ...)`` (per-time-step entries ``(N, T, D)`` are fine),
        ``labels``/``conf`` ``(N,)``, ``ids`` N hashable ids. In heap mode each class ends with
        exactly ``min(cap, members)`` entries, the most confident ones.
        """
        self.clear()
        self.push(feats, labels, conf, ids)

    def draw(self, labels, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, list]:
        """One uniformly random entry of each query's own class (with replacement across queries).

        Args:
            labels: ``(B,)`` classes of the queries (e.g. the labels of source samples).
            generator: random generator for reproducible draws.

        Returns:
            ``(feats (B, ...), found (B,) bool, ids)``: rows whose class holds no entry have
            ``found == False``, a zero feature and id ``None`` (the caller keeps its own feature).
        """
        lab = torch.as_tensor(labels).reshape(-1).tolist()
        groups = self._by_class()
        shape = next(iter(self._entries.values()))[3].shape if self._entries else torch.Size([0])
        feats = torch.zeros((len(lab), *shape))
        found = torch.zeros(len(lab), dtype=torch.bool)
        ids: list = [None] * len(lab)
        picks = torch.rand(len(lab), generator=generator).tolist()
        for b, (c, u) in enumerate(zip(lab, picks)):
            if not 0 <= int(c) < self.num_classes:
                raise BankStateError(f"CategoryBank.draw: class {c} outside [0, {self.num_classes})")
            ent = groups[int(c)]
            if ent:
                _, _, i, f = ent[min(int(u * len(ent)), len(ent) - 1)]
                feats[b], found[b], ids[b] = f, True, i
        return feats, found, ids

    def save_class_stacks(self, folder: str | os.PathLike) -> list[str]:
        """Write one ``{cls}.npy`` stack per non-empty class (CFB's released bank files) plus
        ``bank.json`` (ids and confidences per class, most confident first); returns the file names."""
        import json

        import numpy as np

        folder = os.fspath(folder)
        os.makedirs(folder, exist_ok=True)
        names, meta = [], {}
        for c, ent in enumerate(self._by_class()):
            if not ent:
                continue
            np.save(os.path.join(folder, f"{c}.npy"), torch.stack([e[3] for e in ent]).numpy())
            names.append(f"{c}.npy")
            meta[str(c)] = {"ids": [str(e[2]) for e in ent], "conf": [round(float(e[0]), 6) for e in ent]}
        with open(os.path.join(folder, "bank.json"), "w") as f:
            json.dump({"cap": self.cap, "mode": self.mode, "weights_id": self.weights_id, "classes": meta}, f)
        return names

    # ---- persistence -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain-data state (``torch.save``-able) including the weights id."""
        order = sorted(self._entries.items(), key=lambda kv: kv[1][2])  # by insertion sequence
        return {
            "version": BANK_STATE_VERSION,
            "kind": "CategoryBank",
            "num_classes": self.num_classes,
            "cap": self.cap,
            "mode": self.mode,
            "weights_id": self.weights_id,
            "ids": [i for i, _ in order],
            "labels": torch.tensor([e[0] for _, e in order], dtype=torch.int64),
            "conf": torch.tensor([e[1] for _, e in order], dtype=torch.float64),
            "feats": torch.stack([e[3] for _, e in order]) if order else torch.zeros(0, 0),
        }

    def load_state_dict(self, state: dict[str, Any], *, weights_id: str | None = None, allow_mismatch: bool = False) -> None:
        """Restore a state; refuse one built from other backbone weights.

        Args:
            state: from ``state_dict()``.
            weights_id: the weights the caller's features come from (default: this bank's).
            allow_mismatch: load even when the weights ids differ.

        Raises:
            BankStateError: other weights, other kind, or a newer state version.
        """
        if state.get("kind") != "CategoryBank" or state.get("version", 0) > BANK_STATE_VERSION:
            raise BankStateError(f"not a CategoryBank state (kind {state.get('kind')!r}, version {state.get('version')})")
        expected = self.weights_id if weights_id is None else weights_id
        if expected and state["weights_id"] != expected and not allow_mismatch:
            raise BankStateError(
                f"CategoryBank was built from weights {state['weights_id'][:12]!r}, current features come from "
                f"{expected[:12]!r}: rebuild the bank from current features or pass allow_mismatch=True"
            )
        self.num_classes, self.cap, self.mode = int(state["num_classes"]), int(state["cap"]), state["mode"]
        self.weights_id = state["weights_id"]
        self.clear()
        for i, c, p, f in zip(state["ids"], state["labels"].tolist(), state["conf"].tolist(), state["feats"]):
            self._push_one(f.clone(), int(c), float(p), i)

    def save(self, path: str | os.PathLike) -> None:
        """``torch.save`` the state to ``path``."""
        torch.save(self.state_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, weights_id: str | None = None, allow_mismatch: bool = False) -> "CategoryBank":
        """Load a saved bank; refuses one built from weights other than ``weights_id`` (when given)."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        bank = cls(state["num_classes"], state["cap"], state["mode"], state["weights_id"])
        bank.load_state_dict(state, weights_id=weights_id if weights_id is not None else "", allow_mismatch=allow_mismatch)
        return bank


# ---- tensor banks (nn.Modules with buffers; forward only reads) --------------------------------


class SourceMemoryBank(nn.Module):
    """Detached projected features of every source item, by item index (CycDA stage 3).

    Args:
        num_items: number of source items.
        dim: feature dimension.
        labels: ``(num_items,)`` class of each item (or pass labels to ``update``).
    """

    def __init__(self, num_items: int, dim: int, labels: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("feats", torch.zeros(num_items, dim))
        lab = torch.full((num_items,), -1, dtype=torch.int64) if labels is None else torch.as_tensor(labels, dtype=torch.int64).clone()
        if lab.shape != (num_items,):
            raise BankStateError(f"SourceMemoryBank: labels of shape {tuple(lab.shape)}, expected ({num_items},)")
        self.register_buffer("labels", lab)
        self.register_buffer("filled", torch.zeros(num_items, dtype=torch.bool))

    @torch.no_grad()
    def update(self, indices: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Store (overwrite) the features of items ``indices``: ``(B,)``, ``(B, D)``."""
        idx = torch.as_tensor(indices, dtype=torch.int64, device=self.feats.device).reshape(-1)
        if len(idx) != len(feats) or feats.shape[-1] != self.feats.shape[1]:
            raise BankStateError(f"SourceMemoryBank.update: {len(idx)} indices, feats {tuple(feats.shape)}, dim {self.feats.shape[1]}")
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self.feats)):
            raise BankStateError(f"SourceMemoryBank.update: indices outside [0, {len(self.feats)})")
        self.feats[idx] = feats.detach().to(self.feats)
        if labels is not None:
            self.labels[idx] = torch.as_tensor(labels, dtype=torch.int64, device=self.labels.device).reshape(-1)
        self.filled[idx] = True

    @torch.no_grad()
    def sample_pos_neg(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One positive (same class) and one negative (other class) per query, from filled entries.

        Args:
            labels: ``(B,)`` query classes.
            generator: random generator (on the bank's device) for reproducible draws.

        Returns:
            ``(pos (B, D), neg (B, D))``, detached.

        Raises:
            BankStateError: a query class has no filled positive or no filled negative yet.
        """
        y = torch.as_tensor(labels, dtype=torch.int64, device=self.feats.device).reshape(-1)
        ok = self.filled & (self.labels >= 0)
        same = (self.labels[None, :] == y[:, None]) & ok[None, :]  # (B, N)
        other = (self.labels[None, :] != y[:, None]) & ok[None, :]  # (B, N)
        for mask, what in ((same, "positive"), (other, "negative")):
            missing = ~mask.any(1)
            if missing.any():
                raise BankStateError(
                    f"SourceMemoryBank: no filled {what} for classes {sorted(set(y[missing].tolist()))[:10]}; "
                    "update the bank with source items of more classes first"
                )
        r = torch.rand(same.shape, generator=generator, device=self.feats.device)
        pos_idx = torch.where(same, r, -1.0).argmax(1)  # (B, N) -> (B,)
        neg_idx = torch.where(other, r, -1.0).argmax(1)
        return self.feats[pos_idx].clone(), self.feats[neg_idx].clone()

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        """Read the stored features of ``indices`` (never updates)."""
        return self.feats[torch.as_tensor(indices, dtype=torch.int64, device=self.feats.device)].detach()


class MomentumQueue(nn.Module):
    """A fixed-size queue of negatives: ``enqueue`` appends and drops the oldest when full.

    Args:
        dim: feature dimension.
        size: capacity.
    """

    def __init__(self, dim: int, size: int = 4096) -> None:
        super().__init__()
        if size <= 0:
            raise BankStateError(f"MomentumQueue size must be positive, got {size}")
        self.register_buffer("queue", torch.zeros(size, dim))
        self.register_buffer("head", torch.zeros((), dtype=torch.int64))  # position of the oldest entry
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))

    @property
    def size(self) -> int:
        return self.queue.shape[0]

    def __len__(self) -> int:
        return int(self.count)

    @torch.no_grad()
    def enqueue(self, feats: torch.Tensor) -> None:
        """Append ``(B, D)`` detached features, dropping the oldest beyond capacity."""
        feats = feats.detach().to(self.queue)[-self.size :]  # only the newest `size` can survive
        b = len(feats)
        if b == 0:
            return
        tail = (self.head + self.count) % self.size
        pos = (tail + torch.arange(b, device=self.queue.device)) % self.size
        self.queue[pos] = feats
        overflow = max(0, int(self.count) + b - self.size)
        self.head.copy_((self.head + overflow) % self.size)
        self.count.copy_(torch.clamp(self.count + b, max=self.size))

    @torch.no_grad()
    def dequeue(self, n: int) -> torch.Tensor:
        """Remove and return the ``n`` oldest entries ``(min(n, len), D)``, oldest first."""
        n = min(int(n), int(self.count))
        pos = (self.head + torch.arange(n, device=self.queue.device)) % self.size
        out = self.queue[pos].clone()
        self.head.copy_((self.head + n) % self.size)
        self.count.sub_(n)
        return out

    def negatives(self) -> torch.Tensor:
        """The queued features ``(len, D)``, oldest first (detached)."""
        pos = (self.head + torch.arange(int(self.count), device=self.queue.device)) % self.size
        return self.queue[pos].detach()

    def forward(self) -> torch.Tensor:
        """Read the queue (never updates)."""
        return self.negatives()


class MovingAverageBank(nn.Module):
    """Per-item features updated by momentum: ``m * old + (1 - m) * new`` (instance discrimination).

    The first update of an item copies the feature. With ``normalize`` the entries are kept
    on the unit sphere.

    Args:
        num_items: number of items.
        dim: feature dimension.
        momentum: weight of the old entry.
        normalize: L2-normalise entries after each update.
    """

    def __init__(self, num_items: int, dim: int, momentum: float = 0.5, normalize: bool = True) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise BankStateError(f"MovingAverageBank momentum must be in [0, 1), got {momentum}")
        self.momentum, self.normalize = float(momentum), normalize
        self.register_buffer("feats", torch.zeros(num_items, dim))
        self.register_buffer("filled", torch.zeros(num_items, dtype=torch.bool))

    @torch.no_grad()
    def update(self, indices: torch.Tensor, feats: torch.Tensor) -> None:
        """Momentum-update items ``indices`` ``(B,)`` with ``feats`` ``(B, D)`` (unique indices)."""
        idx = torch.as_tensor(indices, dtype=torch.int64, device=self.feats.device).reshape(-1)
        if len(idx) != len(feats):
            raise BankStateError(f"MovingAverageBank.update: {len(idx)} indices for {len(feats)} feats")
        if len(torch.unique(idx)) != len(idx):
            raise BankStateError("MovingAverageBank.update: repeated indices in one batch")
        new = feats.detach().to(self.feats)
        old = self.feats[idx]
        m = torch.where(self.filled[idx], self.momentum, 0.0)[:, None]  # (B, 1)
        mixed = m * old + (1 - m) * new
        self.feats[idx] = F.normalize(mixed, dim=1) if self.normalize else mixed
        self.filled[idx] = True

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        """Read the entries of ``indices`` (never updates)."""
        return self.feats[torch.as_tensor(indices, dtype=torch.int64, device=self.feats.device)].detach()
