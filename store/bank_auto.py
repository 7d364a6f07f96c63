"""How ``FaissBank`` tunes an index and how ``index="auto"`` chooses one.

Everything here works on raw faiss indexes and numpy arrays; ``store.bank`` wraps it.

Held-out queries. Tuning queries are vectors of the data set that are *not* in the index
while it is tuned: a query that is already in an HNSW graph reaches its own node and then
finds its neighbours among that node's links, and an indexed vector sits in its own IVF
cell, so in-index queries overstate the recall that new queries get. ``HeldOut`` splits
such vectors in two halves: ``tune`` picks the search parameter, ``check`` (never used to
pick it) gives the recorded recall; while ``check``'s recall minus one standard error (over
its queries) misses the target the parameter is raised, so that new queries reach the target too,
not just these. The vectors are added to the index once tuning is done.

``auto`` candidates (all within the memory budget; the build-time budget skips a candidate
whose estimated build time would not fit what is left of it):

* ``IVF{nlist},Flat`` (``SQfp16`` / ``SQ8`` when float32 codes do not fit), nprobe tuned;
* ``IVF{nlist},PQ{D/2}x4fs,RFlat``: 4-bit fast-scan product codes (SIMD table lookups, about a
  sixteenth of the float32 bytes scanned) shortlist ``k_factor * k`` vectors in the probed lists,
  which are then re-ranked exactly against the float32 vectors the index keeps (so it needs the
  memory of exact search plus the codes); nprobe and ``k_factor`` tuned together. On data whose
  neighbourhoods cut across IVF cells (learned embeddings) many lists must be probed, and scanning
  them as fast-scan codes instead of float32 vectors is what keeps IVF ahead of exact search;
* ``HNSW{M},Flat`` with ``M`` in ``HNSW_MS``, efSearch tuned. Above ``2 * PILOT_N`` vectors
  the three ``M`` are compared on a pilot of ``PILOT_N`` vectors and only the fastest is
  built in full; the pilot's build time, scaled by ``N log N``, is the build-time estimate.

The fastest candidate whose ``check`` recall meets the target and that beats exact search
by ``min_speedup`` wins; when none does, exact ``Flat`` (when its float32 vectors fit the
memory budget), else the candidate with the best recall, marked as below its target.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

HNSW_MS = (16, 32, 64)
PILOT_N = 5_000
DEFAULT_BUILD_BUDGET = 600.0  # seconds
MIN_HOLDOUT = 20  # held-out vectors below which tuning falls back to the training vectors
K = 10
REFINE_FACTORS = (4, 8, 16, 32)  # re-ranking shortlist factors tried, each with its smallest nprobe


def _faiss():
    import faiss

    return faiss


@dataclass
class HeldOut:
    """Queries kept out of the index while it is tuned, with their exact neighbours.

    ``*_exact`` hold *index-internal* ids of the true ``K`` nearest indexed vectors.
    ``exact_seconds`` is the wall time of exact search for the ``tune`` batch.
    """

    tune: np.ndarray
    tune_exact: np.ndarray
    check: np.ndarray
    check_exact: np.ndarray
    exact_seconds: float
    k: int = K


@dataclass
class Tuned:
    """Result of tuning one index."""

    params: dict[str, int]
    recall_tune: float
    recall: float  # on the check half
    seconds: float  # batch time of the tune half at the chosen parameters
    below_target: bool
    slow: bool = False  # stopped early: short of the target and already slower than exact / min_speedup
    exact_seconds: float = float("nan")  # exact search of the same batch, timed next to ``seconds``


class _TooSlow(Exception):
    pass


def recall_at(approx: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Fraction of the exact top-``k`` ids found in the approximate top-``k`` (``-1`` ignored)."""
    a, e = approx[:, :k], exact[:, :k]
    valid = e >= 0
    hits = ((a[:, :, None] == e[:, None, :]) & valid[:, None, :]).any(1)  # (Q, k) exact id found
    return float(hits.sum() / max(int(valid.sum()), 1))


def recall_with_bound(approx: np.ndarray, exact: np.ndarray, k: int) -> tuple[float, float]:
    """``(recall, recall - one standard error)``: the standard error over queries of their
    per-query recall (the neighbours of one query are not independent draws)."""
    a, e = approx[:, :k], exact[:, :k]
    valid = e >= 0
    hits = ((a[:, :, None] == e[:, None, :]) & valid[:, None, :]).any(1)  # (Q, k)
    total = float(hits.sum() / max(int(valid.sum()), 1))
    per_query = hits.sum(1) / np.maximum(valid.sum(1), 1)
    se = float(per_query.std(ddof=1) / math.sqrt(len(per_query))) if len(per_query) > 1 else 0.0
    return total, total - se


def exact_knn(queries: np.ndarray, data: np.ndarray, k: int, metric_type: int, repeats: int = 3) -> tuple[np.ndarray, float]:
    """Brute-force ``k`` nearest ids and the seconds it took (best of ``repeats``)."""
    faiss = _faiss()
    best, ids = float("inf"), None
    for _ in range(repeats):  # best of three: a shared machine preempts single runs
        t0 = time.perf_counter()
        ids = faiss.knn(queries, data, k, metric=metric_type)[1]
        best = min(best, time.perf_counter() - t0)
    return ids, best


def make_heldout(x: np.ndarray, n_hold: int, rng: np.random.Generator, metric_type: int, k: int = K):
    """Split ``n_hold`` random vectors of ``x`` off as held-out queries.

    Returns:
        ``(keep, hold, heldout)``: positions of the vectors to index (sorted), positions of
        the held-out ones (tune half first), and the ``HeldOut`` with exact neighbours over
        ``x[keep]`` (ids are positions in ``keep``, i.e. internal ids when ``x[keep]`` is
        added first).
    """
    n = len(x)
    hold = rng.choice(n, n_hold, replace=False)
    mask = np.ones(n, bool)
    mask[hold] = False
    keep = np.flatnonzero(mask)
    return keep, hold, heldout_against(x[hold], x[keep], metric_type, k)


def heldout_against(queries: np.ndarray, data: np.ndarray, metric_type: int, k: int = K) -> HeldOut:
    """``HeldOut`` of ``queries`` (first half tunes, second half checks) against ``data``."""
    h = len(queries) // 2
    kk = min(k, len(data))
    tune_exact, secs = exact_knn(queries[:h], data, kk, metric_type)
    check_exact, _ = exact_knn(queries[h:], data, kk, metric_type)
    return HeldOut(queries[:h], tune_exact, queries[h:], check_exact, secs, kk)


def time_search(index, q: np.ndarray, k: int, repeats: int = 3) -> tuple[float, np.ndarray]:
    best, ids = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        ids = index.search(q, k)[1]
        best = min(best, time.perf_counter() - t0)
    return best, ids


def ivf_of(index):
    try:
        return _faiss().extract_index_ivf(index)
    except RuntimeError:
        return None


def hnsw_of(index):
    idx = _faiss().downcast_index(index)
    return idx if hasattr(idx, "hnsw") else None


def refine_of(index):
    faiss = _faiss()
    idx = faiss.downcast_index(index)
    return idx if isinstance(idx, faiss.IndexRefine) else None


def set_search_param(ps, index, name: str, value: int) -> None:
    """Set ``nprobe`` / ``efSearch`` / ``k_factor`` on ``index`` through a faiss ``ParameterSpace``.

    faiss names the re-ranking factor of an ``IndexRefine`` ``k_factor_rf`` (plain ``k_factor``
    would be passed on to its base index, which has none).
    """
    if name == "k_factor" and refine_of(index) is not None:
        name = "k_factor_rf"
    ps.set_index_parameter(index, name, int(value))


def param_range(index) -> tuple[str, int, int] | None:
    """The search-time knob of ``index``: ``(name, lowest, highest)``, or None."""
    ivf, hnsw = ivf_of(index), hnsw_of(index)
    if ivf is not None:
        return "nprobe", 1, int(ivf.nlist)
    if hnsw is not None:
        return "efSearch", 16, 4096
    return None


def smallest_reaching(recall_at_v: Callable[[int], float], lo: int, hi: int, target: float) -> tuple[int, float]:
    """Smallest parameter in ``[lo, hi]`` with ``recall_at_v(v) >= target`` (doubling, then bisection).

    Returns ``(value, recall)``; ``(hi, recall_at_v(hi))`` when the target is never reached.
    """
    prev, v = None, lo
    while True:
        r = recall_at_v(v)
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
            rm = recall_at_v(m)
            if rm >= target:
                b, best, best_r = m, m, rm
            else:
                a = m
    return best, best_r


def tune(index, ho: HeldOut, target: float, *, stop_when_slow: bool = False, min_speedup: float = 2.0,
         exclude_ids: np.ndarray | None = None, exact_timer: Callable[[], float] | None = None) -> Tuned:
    """Smallest nprobe / efSearch (and refine ``k_factor``) whose recall reaches ``target``.

    Chosen on ``ho.tune``; then ``ho.check`` is measured and the parameter raised (x1.1
    steps) while the check half's recall minus one standard error misses the target. With ``stop_when_slow`` tuning stops as
    soon as a setting short of the target is already slower than exact search divided by
    ``min_speedup`` (``Tuned.slow``; ``exact_timer()`` re-times exact search next to it).
    ``exclude_ids`` (IVF only) leaves those ids out of every
    search: an IVF index holding the held-out vectors then answers exactly as one without them.
    """
    faiss = _faiss()
    ps = faiss.ParameterSpace()
    k = ho.k
    state: dict[str, Any] = {"seconds": float("inf")}
    if exclude_ids is not None:
        ivf = ivf_of(index)
        sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.asarray(exclude_ids, np.int64)))

        class _Excluding:  # index.search with the held-out ids filtered out, at the current nprobe
            def search(self, q, kk):
                return index.search(q, kk, params=faiss.SearchParametersIVF(sel=sel, nprobe=ivf.nprobe))

        searcher = _Excluding()
    else:
        searcher = index

    def set_param(name: str, v: int) -> None:
        set_search_param(ps, index, name, v)

    def rec_tune(name: str, v: int) -> float:
        set_param(name, v)
        t0 = time.perf_counter()
        ids = searcher.search(ho.tune, k)[1]
        elapsed = time.perf_counter() - t0
        r = recall_at(ids, ho.tune_exact, k)
        if stop_when_slow and r < target and elapsed * min_speedup > ho.exact_seconds:
            # one run may have been preempted: best of three, interleaved with exact search when
            # it can be re-timed (the load of a shared machine drifts)
            t_ex = ho.exact_seconds
            elapsed = float("inf")
            for _ in range(3):
                elapsed = min(elapsed, time_search(searcher, ho.tune, k, repeats=1)[0])
                if exact_timer is not None:
                    t_ex = min(t_ex, exact_timer())
            if elapsed * min_speedup > t_ex:
                state.update(name=name, value=v, recall=r, seconds=elapsed)
                raise _TooSlow
        return r

    params: dict[str, int] = {}
    refine = refine_of(index)
    knob = param_range(index)
    try:
        rec = None
        if refine is not None and knob is not None:
            # a longer shortlist lets fewer lists be probed: each factor with its smallest nprobe,
            # the fastest pair that reaches the target on the tune half wins
            best = None  # (seconds, k_factor, nprobe, recall)
            name, lo, hi = knob
            for kf in REFINE_FACTORS:
                set_param("k_factor", kf)
                try:
                    v, r = smallest_reaching(lambda v: rec_tune(name, v), lo, hi, target)
                except _TooSlow:
                    state["k_factor"] = kf
                    continue
                if r >= target:
                    set_param(name, v)
                    secs = time_search(searcher, ho.tune, k)[0]
                    if best is None or secs < best[0]:
                        best = (secs, kf, v, r)
            if best is not None:
                _, params["k_factor"], params[name], rec = best
            elif "k_factor" in state:  # every factor became too slow before reaching the target
                raise _TooSlow
        if refine is not None and "k_factor" not in params:
            params["k_factor"] = REFINE_FACTORS[0]
            set_param("k_factor", REFINE_FACTORS[0])
        if knob is not None and knob[0] not in params:
            name, lo, hi = knob
            params[name], rec = smallest_reaching(lambda v: rec_tune(name, v), lo, hi, target)
        if refine is not None and (rec is None or rec < target):
            params["k_factor"], rec = smallest_reaching(lambda v: rec_tune("k_factor", v), 4, 256, target)
        if rec is None:
            rec = recall_at(searcher.search(ho.tune, k)[1], ho.tune_exact, k)
    except _TooSlow:
        if "k_factor" in state:
            params["k_factor"] = int(state["k_factor"])
            set_param("k_factor", state["k_factor"])
        params[state["name"]] = int(state["value"])
        set_param(state["name"], state["value"])
        r_check = recall_at(searcher.search(ho.check, k)[1], ho.check_exact, k)
        return Tuned(params, state["recall"], r_check, state["seconds"], True, slow=True, exact_seconds=ho.exact_seconds)
    for name, v in params.items():
        set_param(name, v)
    r_check, r_low = recall_with_bound(searcher.search(ho.check, k)[1], ho.check_exact, k)
    # the check half is never used to pick the parameter, only to confirm it: raise while its
    # recall minus one standard error is short of the target (a recall that only just reaches the
    # target on these queries would fall short on about half of all new query sets)
    bump = "k_factor" if refine is not None and "k_factor" in params and knob is None else (knob[0] if knob else None)
    hi = {"nprobe": knob[2] if knob else 0, "efSearch": 4096, "k_factor": 256}.get(bump or "", 0)
    while bump and r_low < target and params[bump] < hi:
        params[bump] = min(hi, int(math.ceil(params[bump] * 1.1)))
        set_param(bump, params[bump])
        r_check, r_low = recall_with_bound(searcher.search(ho.check, k)[1], ho.check_exact, k)
    seconds, _ = time_search(searcher, ho.tune, k)
    return Tuned(params, float(rec), float(r_check), seconds, r_check < target, exact_seconds=ho.exact_seconds)


# ---- candidates ----------------------------------------------------------------------------------


def auto_nlist(n: int, per_sqrt: float = 2.0) -> int:
    """IVF list count: ``per_sqrt * sqrt(n)`` rounded to a power of two, at least 39 training
    vectors per list."""
    nlist = 2 ** int(round(math.log2(max(per_sqrt * math.sqrt(n), 1.0))))
    return int(min(max(nlist, 16), 65536, max(16, n // 39)))


FASTSCAN_LISTS_PER_SQRT = 4.0  # faiss's guideline is 4-16 sqrt(N) lists; see fastscan_factory


def index_bytes(factory: str, n: int, dim: int) -> int:
    """Rough resident size of ``factory`` holding ``n`` vectors (codes + ids + graph links)."""
    import re

    f = factory.upper()
    per = 4 * dim
    pq = re.search(r"PQ(\d+)(?:X(\d+))?", f)
    if "SQFP16" in f:
        per = 2 * dim
    elif "SQ8" in f:
        per = dim
    elif pq:
        per = -(-int(pq.group(1)) * int(pq.group(2) or 8) // 8)  # M codes of nbits each
    if "RFLAT" in f:
        per += 4 * dim  # the float32 vectors kept for exact re-ranking
    extra = 0
    if f.startswith("IVF"):
        extra = 8 + (4 * dim * auto_nlist(n)) // max(n, 1)  # ids + centroids
    elif f.startswith("HNSW"):
        m = int("".join(ch for ch in f[4:].split(",")[0] if ch.isdigit()) or 32)
        extra = int(2 * m * 4 * 1.05) + 8  # level-0 links (2M ints) + upper levels + offsets
    return int(n * (per + extra))


def ivf_factory(n: int, dim: int, budget: int) -> str | None:
    nlist = auto_nlist(n)
    for codec in ("Flat", "SQfp16", "SQ8"):
        f = f"IVF{nlist},{codec}"
        if index_bytes(f, n, dim) <= budget:
            return f
    return None


def fastscan_factory(n: int, dim: int, budget: int) -> str | None:
    """``IVF{nlist},PQ{dim/2}x4fs,RFlat`` (2 dimensions per 4-bit code), or None when ``dim`` is
    odd or the float32 vectors it keeps for re-ranking do not fit ``budget``.

    ``nlist`` is ``4 sqrt(N)`` (the low end of faiss's 4-16 sqrt(N) guideline) rather than the
    ``2 sqrt(N)`` of the float32 IVF candidate: with codes this cheap to scan the probed lists can
    be finer. Measured on the bench's embedding-like data (200,000 x 512, one run, recall@10 about
    0.95): 2,048 lists 7.9x exact search, 1,024 lists 5.6x, 4,096 lists about 6x.
    """
    if dim % 2:
        return None
    f = f"IVF{auto_nlist(n, FASTSCAN_LISTS_PER_SQRT)},PQ{dim // 2}x4fs,RFlat"
    return f if index_bytes(f, n, dim) <= budget else None


def estimate_ivf_seconds(n: int, dim: int, nlist: int, n_train: int, flops_per_s: float) -> float:
    """k-means (25 iterations over the training sample) plus the assignment of every vector."""
    return (25 * n_train * nlist * dim + n * nlist * dim) * 2 / max(flops_per_s, 1.0)


def estimate_hnsw_seconds(pilot_seconds: float, pilot_n: int, n: int) -> float:
    """Graph insertion costs about ``log n`` distance batches per vector."""
    return pilot_seconds * (n / pilot_n) * (math.log(max(n, 2)) / math.log(max(pilot_n, 2)))


@dataclass
class Candidate:
    """One index ``auto`` considered (recorded in ``BankInfo.candidates``)."""

    index: str
    status: str  # chosen | meets target | below target | slower than exact | over memory budget | over build budget
    params: dict[str, int]
    recall_at_10: float = float("nan")
    ms_per_query: float = float("nan")
    build_seconds: float = 0.0
    est_bytes: int = 0
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index, "status": self.status, "params": dict(self.params),
            "recall_at_10": None if math.isnan(self.recall_at_10) else round(self.recall_at_10, 4),
            "ms_per_query": None if math.isnan(self.ms_per_query) else round(self.ms_per_query, 4),
            "build_seconds": round(self.build_seconds, 2), "est_bytes": int(self.est_bytes), "note": self.note,
        }


def describe(c: dict[str, Any]) -> str:
    """One line of a recorded candidate."""
    params = ", ".join(f"{k} {v}" for k, v in c.get("params", {}).items())
    parts = [f"{c['index']:<16s} {c['status']}"]
    if c.get("recall_at_10") is not None:
        parts.append(f"recall@10 {c['recall_at_10']:.3f}")
    if c.get("ms_per_query") is not None:
        parts.append(f"{c['ms_per_query']:.3f} ms/query")
    if params:
        parts.append(params)
    if c.get("build_seconds"):
        parts.append(f"built in {c['build_seconds']:.1f}s")
    if c.get("note"):
        parts.append(c["note"])
    return ", ".join(parts)
