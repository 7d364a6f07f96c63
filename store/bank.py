"""Faiss nearest-neighbour memory banks over a feature set (GUIDE rule 9).

A ``FaissBank`` indexes the vectors of one feature set, per row (clip level) or per video
(mean of the rows), and maps every index id back to ``(video id, row, label)``. The mapping
is by video id and row number, never by physical position in the store, so it survives
``store.compact()`` and re-chunking.

Index choice (``index="auto"``), for ``N`` vectors of dimension ``D``:

* ``N <= flat_max`` (default 50,000): exact ``Flat``.
* otherwise ``IVF{nlist},Flat`` when the float32 vectors fit ``memory_budget``, else
  ``IVF{nlist},SQfp16``, else ``IVF{nlist},SQ8``; ``nlist`` is the power of two closest to
  ``2 * sqrt(N)``; the coarse quantizer is trained on ``40 * nlist`` sampled vectors.
  ``nprobe`` is tuned on a sample of the data so that true-neighbour recall@10 against exact
  search reaches ``recall_target``.
* When even 8-bit codes do not fit the budget, ``auto`` refuses with ``BankError``: IVF-PQ
  alone collapses true-neighbour recall (measured ~0.1 at recall@10 with PQ64 on 512-d
  features), and exact re-ranking (``IVF…,PQ64,RFlat``) holds the float32 vectors again.
  Pass such a factory string explicitly when that trade-off is wanted; ``k_factor`` of the
  re-ranking stage is then tuned like ``nprobe``.

Any faiss factory string is accepted (``"HNSW32"``, ``"IVF4096,SQ8"``, ...); ``efSearch``
(HNSW) and ``nprobe`` (IVF) are tuned the same way. The training sample size, tuned
parameters and the measured recall are recorded in ``BankInfo``.

Banks live outside the Zarr hierarchy, next to the store: ``<store>.banks/<quoted set
name>/<bank name>/`` (``default_bank_dir``) holding ``index.faiss``, ``ids.npz`` and
``bank.json``. A bank records the backbone and weights id of its feature set; when the
set becomes stale (``store.set_backbone_weights``) the bank refuses to answer with
``StaleBankError`` until rebuilt, unless ``allow_stale=True``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from .base import FeatureSet, FeatureStore
from .errors import StaleFeaturesError, StoreError
from .select import select_videos as _select

BANK_FORMAT = 1
AUTO_MIN_SPEEDUP = 2.0  # `auto` keeps an approximate index only when it beats exact search by this factor
METRICS = ("cosine", "l2")
LEVELS = ("row", "video")


class BankError(StoreError, ValueError):
    """A bank cannot be built, loaded or queried as asked (names the culprit)."""


class StaleBankError(StaleFeaturesError):
    """The bank's feature set was produced by backbone weights that are no longer current."""


class _NotFasterThanExact(Exception):
    """Tuning stopped: the index is already too slow to beat exact search (``auto`` falls back)."""

    def __init__(self, name: str, value: int, recall: float, seconds: float) -> None:
        super().__init__(name)
        self.name, self.value, self.recall, self.seconds = name, value, recall, seconds


class Neighbour(NamedTuple):
    """One search result mapped back to the store."""

    video: str
    row: int  # -1 for video-level banks
    label: int  # -1 when unlabelled
    score: float  # cosine similarity (higher is closer) or squared L2 distance (lower is closer)


@dataclass(frozen=True)
class BankInfo:
    """What a bank was built from and how (persisted as ``bank.json``).

    Attributes:
        set_name: feature set the vectors came from ("" for array-built banks).
        backbone: backbone of that set ("" when unknown).
        weights_id: weights id of that set when the bank was built.
        metric: ``"cosine"`` (L2-normalised inner product) or ``"l2"`` (squared distances).
        level: ``"row"`` (one vector per row) or ``"video"`` (mean of a video's rows).
        index: faiss factory string actually built.
        requested_index: what was asked (``"auto"`` or a factory string).
        dim: vector dimension.
        filters: split/domain/label filters applied at build time.
        train_size: vectors used to train the index (0 for indexes without training).
        nprobe: tuned IVF ``nprobe`` (0 when not IVF).
        ef_search: tuned HNSW ``efSearch`` (0 when not HNSW).
        k_factor: tuned re-ranking shortlist factor (0 without a refine stage).
        recall_target: target of the tuning.
        recall_at_10: true-neighbour recall@10 against exact search measured on the tuning
            sample (1.0 for exact indexes).
        tune_queries: number of tuning queries.
        build_seconds: wall time of the build (train + add + tune).
        gpu: whether searches ran on a GPU when built.
        created: ISO-8601 creation time.
        auto_reason: why ``auto`` fell back to exact search (the tuned index was not faster).
    """

    set_name: str = ""
    backbone: str = ""
    weights_id: str = ""
    metric: str = "cosine"
    level: str = "row"
    index: str = "Flat"
    requested_index: str = "auto"
    dim: int = 0
    filters: Mapping[str, Any] = field(default_factory=dict)
    train_size: int = 0
    nprobe: int = 0
    ef_search: int = 0
    k_factor: int = 0
    recall_target: float = 0.95
    recall_at_10: float = 1.0
    tune_queries: int = 0
    build_seconds: float = 0.0
    gpu: bool = False
    created: str = ""
    auto_reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["filters"] = dict(self.filters)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BankInfo":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# ---- small helpers -----------------------------------------------------------------------------


def _faiss():
    import faiss  # imported lazily: `featbank --help` and store users need no faiss

    return faiss


def _as_matrix(x, what: str = "queries") -> np.ndarray:
    """Tensors or arrays at the edge -> C-contiguous float32 ``(N, D)``."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().float().numpy()
    a = np.asarray(x, dtype=np.float32)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise BankError(f"{what}: expected a (N, D) matrix, got shape {a.shape}")
    return np.ascontiguousarray(a)


def _pool_rows(feats: np.ndarray, set_name: str) -> np.ndarray:
    """Rows ``(N, D)`` pass; view rows ``(N, V, D)`` are averaged over views."""
    if feats.ndim == 2:
        return feats
    if feats.ndim == 3:
        return feats.mean(axis=1)  # (N, V, D) -> (N, D)
    raise BankError(
        f"feature set {set_name!r}: rows of shape {feats.shape[1:]} cannot be indexed; a bank needs "
        "(D,) or (V, D) rows (pool feature maps into a new set first)"
    )


def default_bank_dir(store_path: str | os.PathLike, set_name: str, name: str = "default") -> Path:
    """Where a bank of ``set_name`` lives: ``<store>.banks/<quoted set name>/<name>/``.

    The folder is a sibling of the store so that nothing inside the Zarr hierarchy changes
    (``compact`` may rewrite the store directory).
    """
    path = os.fspath(store_path)
    if path.startswith("file://"):
        path = path[len("file://") :]
    if not path or "://" in path:
        raise BankError(f"store {path!r} is not a local folder: pass an explicit bank directory (--dir)")
    root = Path(path.rstrip("/\\") + ".banks")
    if not name or "/" in name or name.startswith("."):
        raise BankError(f"bank name {name!r}: use a plain folder name")
    return root / urllib.parse.quote(set_name, safe="") / name


def _ivf_of(index):
    faiss = _faiss()
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _hnsw_of(index):
    faiss = _faiss()
    idx = faiss.downcast_index(index)
    return idx if hasattr(idx, "hnsw") else None


def _refine_of(index):
    faiss = _faiss()
    idx = faiss.downcast_index(index)
    return idx if isinstance(idx, faiss.IndexRefine) else None


def _auto_nlist(n: int) -> int:
    nlist = 2 ** int(round(math.log2(max(2.0 * math.sqrt(n), 1.0))))
    return int(min(max(nlist, 16), 65536, max(16, n // 39)))


def _memory_budget() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def choose_index(n: int, dim: int, *, flat_max: int = 50_000, memory_budget: int | None = None) -> str:
    """The factory string ``index="auto"`` builds for ``n`` vectors of dimension ``dim``.

    Raises:
        BankError: when even 8-bit IVF codes exceed ``memory_budget`` bytes.
    """
    budget = _memory_budget() if memory_budget is None else int(memory_budget)
    if n <= flat_max:
        if n * dim * 4 > budget:
            raise BankError(f"{n} x {dim} float32 vectors exceed the memory budget of {budget} bytes")
        return "Flat"
    nlist = _auto_nlist(n)
    for codec, bytes_per_dim in (("Flat", 4), ("SQfp16", 2), ("SQ8", 1)):
        if n * dim * bytes_per_dim <= budget:
            return f"IVF{nlist},{codec}"
    raise BankError(
        f"{n} x {dim} vectors need {n * dim} bytes even as 8-bit codes, over the memory budget of "
        f"{budget} bytes; pass an explicit factory (e.g. 'IVF{nlist},PQ64,RFlat' re-ranks exactly but "
        "holds float32 vectors; PQ alone drops true-neighbour recall@10 to ~0.1) or raise memory_budget"
    )


def _exact_neighbours(data: np.ndarray, queries: np.ndarray, k: int, metric_type: int) -> np.ndarray:
    return _faiss().knn(queries, data, k, metric=metric_type)[1]  # brute force, no copy of data


def _recall_excluding_self(approx: np.ndarray, exact: np.ndarray, self_ids: np.ndarray, k: int) -> float:
    """Recall@k of ``approx`` vs ``exact`` after dropping each query's own id from both."""
    hits = 0
    total = 0
    for a, e, s in zip(approx, exact, self_ids):
        e = [x for x in e if x != s and x >= 0][:k]
        a = set([x for x in a if x != s and x >= 0][:k])
        hits += len(a.intersection(e))
        total += len(e)
    return hits / max(total, 1)


# ---- the bank ----------------------------------------------------------------------------------


class FaissBank:
    """A faiss index plus the mapping from index ids to ``(video id, row, label)``.

    Build with ``FaissBank.build(store, set_name, ...)`` or ``FaissBank.from_arrays(...)``;
    reopen with ``FaissBank.load(dir, store=...)`` or ``FaissBank.open(store, set_name)``.
    Index id ``i`` is the ``i``-th vector added: ``video_ids[i]``, ``rows[i]``, ``labels[i]``.
    """

    def __init__(
        self,
        index,
        info: BankInfo,
        video_ids: Sequence[str],
        rows: np.ndarray,
        labels: np.ndarray,
        *,
        store: FeatureStore | None = None,
        allow_stale: bool = False,
        gpu: bool | None = None,
    ) -> None:
        self.index = index
        self.info = info
        self.video_ids = np.asarray(list(video_ids), dtype=object)
        self.rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if not (len(self.video_ids) == len(self.rows) == len(self.labels) == index.ntotal):
            raise BankError(
                f"bank id mapping has {len(self.video_ids)} ids / {len(self.rows)} rows / "
                f"{len(self.labels)} labels for an index of {index.ntotal} vectors"
            )
        self.store = store
        self.allow_stale = allow_stale
        self._key_to_id = {(v, int(r)): i for i, (v, r) in enumerate(zip(self.video_ids, self.rows))}
        self._search_index = self._to_device(index, gpu)
        self._apply_params()

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_arrays(
        cls,
        feats,
        *,
        ids: Sequence[str] | Sequence[tuple[str, int]] | None = None,
        labels=None,
        index: str = "auto",
        metric: str = "cosine",
        level: str = "row",
        recall_target: float = 0.95,
        tune_queries: int = 500,
        train_size: int | None = None,
        flat_max: int = 50_000,
        memory_budget: int | None = None,
        gpu: bool | None = None,
        seed: int = 0,
        info_fields: Mapping[str, Any] | None = None,
    ) -> "FaissBank":
        """Build a bank from vectors.

        Args:
            feats: ``(N, D)`` vectors (array or tensor).
            ids: per vector a video id (row -1) or a ``(video id, row)`` pair; default
                ``("0", -1), ("1", -1), ...``.
            labels: ``(N,)`` integer labels (default -1).
            index: ``"auto"`` or a faiss factory string.
            metric: ``"cosine"`` or ``"l2"``.
            level: recorded level (``"row"`` or ``"video"``).
            recall_target: true-neighbour recall@10 the tuning aims for.
            tune_queries: tuning sample size (queries drawn from the data).
            train_size: vectors used to train the index (default ``40 * nlist``, capped at N).
            flat_max: ``auto`` builds exact ``Flat`` up to this many vectors.
            memory_budget: bytes ``auto`` may use for codes (default half the RAM).
            gpu: search on GPU (default: when faiss sees one).
            seed: seed of the training and tuning samples.
            info_fields: extra ``BankInfo`` fields (set name, backbone, weights id, filters).

        Returns:
            The bank.
        """
        faiss = _faiss()
        t0 = time.perf_counter()
        if metric not in METRICS:
            raise BankError(f"metric {metric!r} not in {METRICS}")
        if level not in LEVELS:
            raise BankError(f"level {level!r} not in {LEVELS}")
        x = _as_matrix(feats, "feats")
        n, dim = x.shape
        if n == 0:
            raise BankError("no vectors to index (check the split/domain/label filters)")
        if not np.isfinite(x).all():
            raise BankError("feats contain NaN or Inf; a bank needs finite vectors")
        video_ids, rows = _split_ids(ids, n)
        y = np.full(n, -1, np.int64) if labels is None else np.asarray(labels, np.int64).reshape(-1)
        if len(y) != n:
            raise BankError(f"{len(y)} labels for {n} vectors")
        if metric == "cosine":
            x = x.copy()
            faiss.normalize_L2(x)
        factory = choose_index(n, dim, flat_max=flat_max, memory_budget=memory_budget) if index == "auto" else index
        metric_type = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
        try:
            idx = faiss.index_factory(dim, factory, metric_type)
        except RuntimeError as e:
            raise BankError(f"faiss cannot build index {factory!r} for dim {dim}: {str(e).splitlines()[0]}") from None
        rng = np.random.default_rng(seed)
        n_train = 0
        if not idx.is_trained:
            ivf = _ivf_of(idx)
            default_train = 40 * ivf.nlist if ivf is not None else 100_000
            n_train = int(min(n, train_size or default_train))
            if ivf is not None and n_train < ivf.nlist:
                raise BankError(f"index {factory!r} needs at least {ivf.nlist} training vectors, the set has {n}")
            sample = x[np.sort(rng.choice(n, n_train, replace=False))] if n_train < n else x
            idx.train(sample)
        idx.add(x)
        fields = dict(info_fields or {})
        info = BankInfo(
            metric=metric,
            level=level,
            index=factory,
            requested_index=index,
            dim=dim,
            train_size=n_train,
            recall_target=float(recall_target),
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **fields,
        )
        bank = cls(idx, info, video_ids, rows, y, gpu=gpu)
        budget = _memory_budget() if memory_budget is None else int(memory_budget)
        may_fall_back = index == "auto" and factory != "Flat" and n * dim * 4 <= budget
        t_exact, t_approx = bank._tune(x, recall_target, tune_queries, rng, stop_when_slow=may_fall_back)
        if may_fall_back and t_approx * AUTO_MIN_SPEEDUP > t_exact:
            # the tuned index is not worth it on this data: exact search
            reason = (f"{factory} at nprobe={bank.info.nprobe} (recall@10 {bank.info.recall_at_10:.3f}, target "
                      f"{recall_target}) was only {t_exact / max(t_approx, 1e-9):.1f}x faster than exact search "
                      f"(< {AUTO_MIN_SPEEDUP}x)")
            flat = faiss.index_factory(dim, "Flat", metric_type)
            flat.add(x)
            info = dataclasses.replace(info, index="Flat", train_size=0, auto_reason=reason)
            bank = cls(flat, info, video_ids, rows, y, gpu=gpu)
            bank._tune(x, recall_target, tune_queries, rng)
        bank.info = dataclasses.replace(
            bank.info, build_seconds=round(time.perf_counter() - t0, 3), gpu=bank._search_index is not bank.index
        )
        return bank

    @classmethod
    def build(
        cls,
        store: FeatureStore,
        set_name: str,
        *,
        index: str = "auto",
        metric: str = "cosine",
        level: str = "row",
        split: str | Sequence[str] | None = None,
        domain: str | Sequence[str] | None = None,
        labels: Iterable[int] | None = None,
        recall_target: float = 0.95,
        allow_stale: bool = False,
        **kw: Any,
    ) -> "FaissBank":
        """Build a bank over a feature set of ``store``.

        Args:
            store: the feature store.
            set_name: feature set to index.
            index: ``"auto"`` or a faiss factory string.
            metric: ``"cosine"`` or ``"l2"``.
            level: ``"row"`` (a vector per row) or ``"video"`` (mean of a video's rows).
            split: keep only videos of this split (or these splits).
            domain: keep only videos of this domain (or these domains).
            labels: keep only videos whose label is in this collection.
            recall_target: true-neighbour recall@10 the tuning aims for.
            allow_stale: index a stale set anyway (the bank then answers only with
                ``allow_stale=True`` too).
            **kw: passed to ``from_arrays`` (``tune_queries``, ``train_size``, ``flat_max``,
                ``memory_budget``, ``gpu``, ``seed``).

        Returns:
            The bank, attached to ``store`` (staleness is checked on every query).
        """
        if level not in LEVELS:
            raise BankError(f"level {level!r} not in {LEVELS}")
        fs = store.open_set(set_name, allow_stale=allow_stale)
        filters = _filters(split, domain, labels)
        keep = select_videos(fs, **filters)
        feats, ids, y = set_vectors(fs, keep, level)
        info_fields = {
            "set_name": set_name,
            "backbone": fs.info.backbone,
            "weights_id": fs.info.weights_id,
            "filters": filters,
        }
        bank = cls.from_arrays(
            feats, ids=ids, labels=y, index=index, metric=metric, level=level,
            recall_target=recall_target, info_fields=info_fields, **kw,
        )
        bank.store = store
        bank.allow_stale = allow_stale
        return bank

    # ---- tuning ------------------------------------------------------------------------------
    def _param_space(self):
        faiss = _faiss()
        if self._search_index is not self.index and hasattr(faiss, "GpuParameterSpace"):
            return faiss.GpuParameterSpace()
        return faiss.ParameterSpace()

    def _apply_params(self) -> None:
        ps = self._param_space()
        for name, value in (("nprobe", self.info.nprobe), ("efSearch", self.info.ef_search), ("k_factor", self.info.k_factor)):
            if value:
                ps.set_index_parameter(self._search_index, name, int(value))

    def _tune(
        self, x: np.ndarray, target: float, n_queries: int, rng: np.random.Generator, k: int = 10,
        stop_when_slow: bool = False,
    ) -> tuple[float, float]:
        """Pick the smallest nprobe / efSearch / k_factor reaching ``target`` recall@k.

        With ``stop_when_slow`` the search stops as soon as a setting short of the target is
        already less than ``AUTO_MIN_SPEEDUP`` times faster than exact search.

        Returns:
            ``(exact_seconds, approx_seconds)``: batch times of exact search and of the tuned
            index on the tuning queries (``(0, 0)`` for exact indexes).
        """
        faiss = _faiss()
        n = len(x)
        ivf, hnsw, refine = _ivf_of(self.index), _hnsw_of(self.index), _refine_of(self.index)
        if isinstance(faiss.downcast_index(self.index), faiss.IndexFlat):  # exact: nothing to measure
            self.info = dataclasses.replace(self.info, recall_at_10=1.0, tune_queries=0)
            return 0.0, 0.0
        nq = int(min(n_queries, n))
        qid = np.sort(rng.choice(n, nq, replace=False))
        q = x[qid]
        kk = min(k + 1, n)
        metric_type = faiss.METRIC_INNER_PRODUCT if self.info.metric == "cosine" else faiss.METRIC_L2
        t0 = time.perf_counter()
        exact = _exact_neighbours(x, q, kk, metric_type)
        t_exact = time.perf_counter() - t0
        ps = self._param_space()

        def recall_with(name: str, value: int) -> float:
            ps.set_index_parameter(self._search_index, name, int(value))
            ts = time.perf_counter()
            approx = self._search_index.search(q, kk)[1]
            elapsed = time.perf_counter() - ts
            rec = _recall_excluding_self(approx, exact, qid, k)
            if stop_when_slow and rec < target and elapsed * AUTO_MIN_SPEEDUP > t_exact:
                raise _NotFasterThanExact(name, value, rec, elapsed)
            return rec

        try:
            chosen, rec = self._search_params(recall_with, target, ivf, hnsw, refine, q, kk, exact, qid, k, ps)
        except _NotFasterThanExact as e:
            key = {"nprobe": "nprobe", "efSearch": "ef_search", "k_factor": "k_factor"}[e.name]
            self.info = dataclasses.replace(self.info, **{key: int(e.value)}, recall_at_10=round(e.recall, 4), tune_queries=nq)
            return t_exact, e.seconds
        self.info = dataclasses.replace(
            self.info,
            nprobe=chosen.get("nprobe", 0),
            ef_search=chosen.get("efSearch", 0),
            k_factor=chosen.get("k_factor", 0),
            recall_at_10=round(float(rec), 4),
            tune_queries=nq,
        )
        self._apply_params()
        t0 = time.perf_counter()
        self._search_index.search(q, kk)
        return t_exact, time.perf_counter() - t0

    def _search_params(self, recall_with, target, ivf, hnsw, refine, q, kk, exact, qid, k, ps):
        """The tuning loop proper: returns ``({param: value}, recall)``."""
        chosen: dict[str, int] = {}
        if refine is not None:
            chosen["k_factor"] = 4
            ps.set_index_parameter(self._search_index, "k_factor", 4)
        if ivf is not None:
            chosen["nprobe"], rec = _smallest_reaching(lambda v: recall_with("nprobe", v), 1, ivf.nlist, target)
        elif hnsw is not None:
            chosen["efSearch"], rec = _smallest_reaching(lambda v: recall_with("efSearch", v), 16, 4096, target)
        else:  # no search-time parameter (e.g. flat PQ codes): measure only
            approx = self._search_index.search(q, kk)[1]
            rec = _recall_excluding_self(approx, exact, qid, k)
        if refine is not None and rec < target:
            chosen["k_factor"], rec = _smallest_reaching(lambda v: recall_with("k_factor", v), 4, 256, target)
        return chosen, rec

    # ---- device ------------------------------------------------------------------------------
    @staticmethod
    def _to_device(index, gpu: bool | None):
        faiss = _faiss()
        n_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        if gpu is False or n_gpus == 0 or _hnsw_of(index) is not None:
            if gpu and n_gpus == 0:
                raise BankError("gpu=True but faiss sees no GPU (install faiss-gpu or pass gpu=None)")
            return index
        try:
            return faiss.index_cpu_to_all_gpus(index)
        except (RuntimeError, AttributeError):
            if gpu:
                raise
            return index  # this index type has no GPU implementation: search on CPU

    # ---- staleness ---------------------------------------------------------------------------
    def is_stale(self) -> bool:
        """True when the attached store says the bank's vectors come from outdated weights."""
        if self.store is None or not self.info.set_name:
            return False
        current = self.store.backbone_weights().get(self.info.backbone)
        if self.info.backbone and current is not None and current != self.info.weights_id:
            return True
        if self.info.set_name not in self.store.feature_sets():
            raise BankError(f"the bank's feature set {self.info.set_name!r} no longer exists in store {self.store.path!r}")
        fs = self.store.open_set(self.info.set_name, allow_stale=True)
        return fs.info.weights_id != self.info.weights_id

    def _check_fresh(self, allow_stale: bool | None) -> None:
        if (self.allow_stale if allow_stale is None else allow_stale) or not self.is_stale():
            return
        current = self.store.backbone_weights().get(self.info.backbone) if self.store is not None else None
        raise StaleBankError(
            f"bank over feature set {self.info.set_name!r} was built from {self.info.backbone} weights "
            f"{self.info.weights_id[:12] or '?'} but the store's current weights are "
            f"{(current or '?')[:12]}: re-extract the set and rebuild the bank "
            "(`featbank bank build`), or pass allow_stale=True"
        )

    # ---- queries -----------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def __len__(self) -> int:
        return self.ntotal

    def search(self, queries, k: int = 10, *, allow_stale: bool | None = None, batch_size: int = 16384):
        """Nearest neighbours of query vectors.

        Args:
            queries: ``(Q, D)`` or ``(D,)`` vectors, numpy or torch (cosine banks normalise them).
            k: neighbours per query.
            allow_stale: override the bank's stale-set refusal for this call.
            batch_size: queries per faiss call.

        Returns:
            ``(D (Q, k), I (Q, k))``: scores (cosine similarity, or squared L2 distance) and
            bank ids (``-1`` when fewer than ``k`` exist), best first; torch tensors when
            ``queries`` is a tensor, numpy arrays otherwise.
        """
        self._check_fresh(allow_stale)
        as_torch = hasattr(queries, "detach")
        q = _as_matrix(queries)
        if q.shape[1] != self.info.dim:
            raise BankError(f"queries have dim {q.shape[1]}, bank over {self.info.set_name!r} has dim {self.info.dim}")
        if self.info.metric == "cosine":
            q = q.copy()
            _faiss().normalize_L2(q)
        d_out, i_out = [], []
        for s in range(0, len(q), batch_size):
            d, i = self._search_index.search(q[s : s + batch_size], int(k))
            d_out.append(d)
            i_out.append(i)
        d = np.concatenate(d_out) if d_out else np.zeros((0, k), np.float32)
        i = np.concatenate(i_out) if i_out else np.zeros((0, k), np.int64)
        if as_torch:
            import torch

            return torch.from_numpy(d), torch.from_numpy(i)
        return d, i

    def vectors_of(self, video_id: str, row: int | None = None) -> np.ndarray:
        """Query vectors of a stored video at the bank's level: ``(n_rows, D)`` or ``(1, D)``.

        Read from the attached store when there is one, else reconstructed from the index.
        """
        if self.store is not None and self.info.set_name:
            fs = self.store.open_set(self.info.set_name, allow_stale=True)
            if video_id not in fs:
                raise BankError(f"video {video_id!r} is not in feature set {self.info.set_name!r}")
            if row is not None:
                n = fs.n_rows(video_id)
                if not 0 <= row < n:
                    raise BankError(f"video {video_id!r} has {n} rows; row {row} does not exist")
                return _pool_rows(fs.read(video_id, rows=slice(row, row + 1)).feats.astype(np.float32), fs.name)
            feats = _pool_rows(fs.read(video_id).feats.astype(np.float32), fs.name)
            if len(feats) == 0:
                raise BankError(f"video {video_id!r} has no rows to query with")
            return feats.mean(0, keepdims=True) if self.info.level == "video" else feats
        ids = [self._key_to_id[(video_id, row)]] if row is not None and (video_id, row) in self._key_to_id else np.flatnonzero(self.video_ids == video_id)
        if len(ids) == 0:
            raise BankError(f"video {video_id!r} (row {row}) is not in this bank and no store is attached")
        return self._reconstruct(np.asarray(ids, dtype=np.int64))

    def _reconstruct(self, ids: np.ndarray) -> np.ndarray:
        ivf = _ivf_of(self.index)
        if ivf is not None:
            ivf.make_direct_map()
        try:
            return self.index.reconstruct_batch(ids)
        except RuntimeError as e:
            raise BankError(f"index {self.info.index!r} cannot return stored vectors: attach the store") from e

    def search_video(self, video_id: str, k: int = 10, *, exclude_self: bool = False, allow_stale: bool | None = None):
        """Neighbours of a stored video: one query (video level) or one per row (row level).

        Args:
            video_id: a video of the bank's feature set.
            k: neighbours per query.
            exclude_self: drop results belonging to ``video_id`` itself.
            allow_stale: override the stale-set refusal.

        Returns:
            ``(D, I)`` numpy arrays of shape ``(n_queries, k)``.
        """
        self._check_fresh(allow_stale)
        q = self.vectors_of(video_id)
        return self._search_excluding(q, k, video_id if exclude_self else None, allow_stale)

    def search_row(self, video_id: str, row: int, k: int = 10, *, exclude_self: bool = False, allow_stale: bool | None = None):
        """Neighbours of one stored row (row-level banks).

        Returns:
            ``(D, I)`` numpy arrays of shape ``(1, k)``.
        """
        if self.info.level != "row":
            raise BankError("search_row needs a row-level bank; this bank holds one vector per video (use search_video)")
        self._check_fresh(allow_stale)
        q = self.vectors_of(video_id, int(row))
        return self._search_excluding(q, k, video_id if exclude_self else None, allow_stale)

    def _search_excluding(self, q: np.ndarray, k: int, exclude: str | None, allow_stale):
        if exclude is None:
            return self.search(q, k, allow_stale=allow_stale)
        extra = int((self.video_ids == exclude).sum())
        d, i = self.search(q, k + extra, allow_stale=allow_stale)
        keep = (i >= 0) & (self.video_ids[np.maximum(i, 0)] != exclude)
        fill_d = -np.inf if self.info.metric == "cosine" else np.inf
        out_d = np.full((len(q), k), fill_d, np.float32)
        out_i = np.full((len(q), k), -1, np.int64)
        for r in range(len(q)):
            sel = np.flatnonzero(keep[r])[:k]
            out_d[r, : len(sel)], out_i[r, : len(sel)] = d[r, sel], i[r, sel]
        return out_d, out_i

    def neighbours(self, D, I) -> list[list[Neighbour]]:
        """Map ``search`` results to ``Neighbour(video, row, label, score)`` lists (one per query)."""
        D, I = np.asarray(D), np.asarray(I)
        return [
            [Neighbour(str(self.video_ids[j]), int(self.rows[j]), int(self.labels[j]), float(s)) for s, j in zip(ds, js) if j >= 0]
            for ds, js in zip(D, I)
        ]

    def id_of(self, video_id: str, row: int = -1) -> int:
        """Bank id of a ``(video id, row)`` (row -1 for video-level banks)."""
        try:
            return self._key_to_id[(video_id, int(row))]
        except KeyError:
            raise BankError(f"({video_id!r}, row {row}) is not in this bank") from None

    # ---- incremental add ---------------------------------------------------------------------
    def add(self, ids: Sequence[str] | Sequence[tuple[str, int]], feats, labels=None) -> np.ndarray:
        """Add vectors without rebuilding (the trained quantizer is kept).

        Args:
            ids: per vector a video id (row -1) or a ``(video id, row)`` pair, not yet in the bank.
            feats: ``(N, D)`` vectors (array or tensor).
            labels: ``(N,)`` labels (default -1).

        Returns:
            The new bank ids.
        """
        x = _as_matrix(feats, "feats")
        if x.shape[1] != self.info.dim:
            raise BankError(f"feats have dim {x.shape[1]}, the bank has dim {self.info.dim}")
        if not np.isfinite(x).all():
            raise BankError("feats contain NaN or Inf; a bank needs finite vectors")
        vids, rows = _split_ids(ids, len(x))
        y = np.full(len(x), -1, np.int64) if labels is None else np.asarray(labels, np.int64).reshape(-1)
        if len(y) != len(x):
            raise BankError(f"{len(y)} labels for {len(x)} vectors")
        keys = list(zip(vids, rows.tolist()))
        dup = [key for key in keys if key in self._key_to_id]
        if dup or len(set(keys)) != len(keys):
            raise BankError(f"ids already in the bank or repeated: {(dup or keys)[:3]} (rebuild to replace vectors)")
        if self.info.metric == "cosine":
            x = x.copy()
            _faiss().normalize_L2(x)
        start = self.ntotal
        self.index.add(x)
        if self._search_index is not self.index:
            self._search_index.add(x)
        new = np.arange(start, start + len(x), dtype=np.int64)
        self.video_ids = np.concatenate([self.video_ids, np.asarray(vids, dtype=object)])
        self.rows = np.concatenate([self.rows, rows])
        self.labels = np.concatenate([self.labels, y])
        self._key_to_id.update({key: int(i) for key, i in zip(keys, new)})
        return new

    def add_new_videos(self) -> list[str]:
        """Add the set's committed videos that match the bank's filters and are not yet indexed.

        Returns:
            The video ids added.
        """
        if self.store is None or not self.info.set_name:
            raise BankError("add_new_videos needs a bank attached to its store")
        self._check_fresh(None)
        fs = self.store.open_set(self.info.set_name, allow_stale=self.allow_stale)
        known = set(self.video_ids.tolist())
        new = [v for v in select_videos(fs, **self.info.filters) if v not in known]
        if not new:
            return []
        feats, ids, y = set_vectors(fs, new, self.info.level)
        if len(feats):
            self.add(ids, feats, y)
        return new

    # ---- persistence -------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``index.faiss``, ``ids.npz`` and ``bank.json`` into ``directory`` (replaced atomically per file)."""
        faiss = _faiss()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / "index.faiss.tmp"
        faiss.write_index(self.index, str(tmp))
        os.replace(tmp, d / "index.faiss")
        with open(d / "ids.npz.tmp", "wb") as f:
            np.savez(f, video_ids=self.video_ids.astype(str), rows=self.rows, labels=self.labels)
        os.replace(d / "ids.npz.tmp", d / "ids.npz")
        meta = {"format": BANK_FORMAT, "ntotal": self.ntotal, "info": self.info.to_dict()}
        (d / "bank.json.tmp").write_text(json.dumps(meta, indent=2))
        os.replace(d / "bank.json.tmp", d / "bank.json")
        return d

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        *,
        store: FeatureStore | None = None,
        allow_stale: bool = False,
        gpu: bool | None = None,
    ) -> "FaissBank":
        """Load a saved bank; attach ``store`` to check staleness and query by video id.

        Raises:
            BankError: the folder is missing or incomplete.
        """
        faiss = _faiss()
        d = Path(directory)
        missing = [n for n in ("index.faiss", "ids.npz", "bank.json") if not (d / n).is_file()]
        if missing:
            raise BankError(f"{d} is not a saved bank (missing {', '.join(missing)}); build it with `featbank bank build`")
        meta = json.loads((d / "bank.json").read_text())
        if meta.get("format", 0) > BANK_FORMAT:
            raise BankError(f"{d}: bank format {meta.get('format')} is newer than this featbank ({BANK_FORMAT})")
        info = BankInfo.from_dict(meta["info"])
        index = faiss.read_index(str(d / "index.faiss"))
        with np.load(d / "ids.npz", allow_pickle=False) as z:
            vids, rows, labels = z["video_ids"].astype(object), z["rows"], z["labels"]
        if store is not None and info.set_name and info.set_name not in store.feature_sets():
            raise BankError(f"{d}: the bank's feature set {info.set_name!r} is not in store {store.path!r}")
        return cls(index, info, vids, rows, labels, store=store, allow_stale=allow_stale, gpu=gpu)

    @classmethod
    def open(cls, store: FeatureStore, set_name: str, name: str = "default", **kw: Any) -> "FaissBank":
        """Load the bank saved at ``default_bank_dir(store.path, set_name, name)``."""
        from .memory import MemoryStore

        if isinstance(store, MemoryStore):
            raise BankError("an in-memory store has no folder to keep banks next to: use FaissBank.load(dir, store=store)")
        return cls.load(default_bank_dir(store.path, set_name, name), store=store, **kw)

    def __repr__(self) -> str:
        i = self.info
        return (
            f"FaissBank(set={i.set_name!r}, index={i.index!r}, n={self.ntotal}, dim={i.dim}, metric={i.metric}, "
            f"level={i.level}, nprobe={i.nprobe}, efSearch={i.ef_search}, recall@10={i.recall_at_10})"
        )


# ---- store glue ----------------------------------------------------------------------------------


def _as_tuple(v) -> tuple | None:
    if v is None:
        return None
    if isinstance(v, (str, int, np.integer)):
        return (v,)
    return tuple(v)


def _filters(split, domain, labels) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, v in (("split", split), ("domain", domain)):
        t = _as_tuple(v)
        if t is not None:
            out[key] = [str(s) for s in t]
    t = _as_tuple(labels)
    if t is not None:
        out["labels"] = [int(x) for x in t]
    return out


def select_videos(
    fs: FeatureSet,
    split: str | Sequence[str] | None = None,
    domain: str | Sequence[str] | None = None,
    labels: Iterable[int] | None = None,
) -> list[str]:
    """Committed video ids of ``fs`` whose metadata matches every given filter, in commit order.

    Raises:
        BankError: a filter matches no video (the message lists the values present).
    """
    try:
        ids, _ = _select(fs, split=split, domain=domain, labels=labels, require_match=True)
    except StoreError as e:
        raise BankError(str(e)) from None
    return ids


def set_vectors(fs: FeatureSet, video_ids: Sequence[str], level: str) -> tuple[np.ndarray, list[tuple[str, int]], np.ndarray]:
    """Vectors of the given videos at ``level`` (``"row"`` or ``"video"``).

    Returns:
        ``(feats (N, D) float32, ids [(video id, row)] (row -1 at video level), labels (N,))``;
        videos without rows are skipped.
    """
    feats_out, ids, labels = [], [], []
    for vid, rows in zip(video_ids, fs.read_many(list(video_ids))):
        f = _pool_rows(np.asarray(rows.feats, dtype=np.float32), fs.name)
        if len(f) == 0:
            continue
        label = fs.meta(vid).label
        if level == "video":
            feats_out.append(f.mean(0, keepdims=True))  # (N, D) -> (1, D)
            ids.append((vid, -1))
            labels.append(label)
        else:
            feats_out.append(f)
            ids.extend((vid, r) for r in range(len(f)))
            labels.extend([label] * len(f))
    dim = fs.info.dim
    x = np.concatenate(feats_out) if feats_out else np.zeros((0, dim), np.float32)
    return x, ids, np.asarray(labels, np.int64)


def _split_ids(ids, n: int) -> tuple[list[str], np.ndarray]:
    if ids is None:
        return [str(i) for i in range(n)], np.full(n, -1, np.int64)
    ids = list(ids)
    if len(ids) != n:
        raise BankError(f"{len(ids)} ids for {n} vectors")
    vids, rows = [], []
    for item in ids:
        if isinstance(item, str):
            vids.append(item)
            rows.append(-1)
        else:
            v, r = item
            vids.append(str(v))
            rows.append(int(r))
    return vids, np.asarray(rows, np.int64)


def _smallest_reaching(recall_at, lo: int, hi: int, target: float) -> tuple[int, float]:
    """Smallest parameter in ``[lo, hi]`` with ``recall_at(v) >= target`` (doubling, then bisection).

    Returns ``(value, recall)``; ``(hi, recall_at(hi))`` when the target is never reached.
    """
    prev, v = None, lo
    while True:
        r = recall_at(v)
        if r >= target:
            break
        if v >= hi:
            return v, r
        prev, v = v, min(2 * v, hi)
    best, best_r = v, r
    if prev is not None:
        a, b = prev, v  # recall(a) < target <= recall(b)
        while b - a > 1:
            m = (a + b) // 2
            rm = recall_at(m)
            if rm >= target:
                b, best, best_r = m, m, rm
            else:
                a = m
    return best, best_r
