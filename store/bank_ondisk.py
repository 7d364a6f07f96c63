"""Banks larger than RAM: IVF with on-disk inverted lists, built by streaming a feature set.

``build_on_disk`` never holds the set's vectors in memory. It reads the set chunk by chunk
(``videos_per_chunk`` videos at a time, through the set's reader) twice:

1. a sampling pass keeps the training sample (``40 * nlist`` vectors) and the held-out
   queries (``2 * tune_queries``), both drawn uniformly at random positions;
2. after the coarse quantizer is trained, an adding pass appends every other vector to an
   in-memory IVF shard with its bank id (``add_with_ids``); a full shard
   (``shard_rows`` vectors) is written to disk and dropped. The same pass folds every chunk
   into the exact top-10 of the held-out queries (a running heap), so no brute-force pass
   over the data is needed.

The shards, plus one shard of the held-out vectors, are merged into one ``index.ivfdata``
file (faiss ``OnDiskInvertedLists``, memory-mapped at query time) and deleted; nprobe is tuned
on the held-out queries (first half picks, second half checks, as for in-memory banks) with
their own ids filtered out of the results, which for IVF is exactly the index without them.
Memory: the training sample, one shard, the centroids and the id mapping; the inverted lists
(``N * (4 * D + 8)`` bytes for ``Flat`` codes) live on disk.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from . import bank_auto as _auto
from .bank import (
    BankError,
    BankInfo,
    FaissBank,
    _faiss,
    _filters,
    _memory_budget,
    _source_digest,
    check_recall_target,
    select_videos,
    set_vectors,
)
from .base import FeatureStore


def _chunks(fs, video_ids: Sequence[str], level: str, videos_per_chunk: int):
    """``(feats (n, D) float32, ids [(video, row)], labels)`` per chunk of videos, in order."""
    for s in range(0, len(video_ids), videos_per_chunk):
        yield set_vectors(fs, video_ids[s : s + videos_per_chunk], level)


def build_on_disk(
    store: FeatureStore,
    set_name: str,
    directory: str | os.PathLike,
    *,
    index: str | None = None,
    metric: str = "cosine",
    level: str = "row",
    split: str | Sequence[str] | None = None,
    domain: str | Sequence[str] | None = None,
    labels: Iterable[int] | None = None,
    recall_target: float = 0.95,
    allow_stale: bool = False,
    videos_per_chunk: int = 256,
    shard_rows: int = 500_000,
    tune_queries: int = 500,
    train_size: int | None = None,
    memory_budget: int | None = None,
    seed: int = 0,
) -> FaissBank:
    """Build and save an IVF bank with on-disk inverted lists in ``directory``.

    Args:
        store: the feature store (read chunk by chunk).
        set_name: feature set to index.
        directory: bank folder; receives ``index.faiss``, ``index.ivfdata``, ``ids.npz``,
            ``bank.json``.
        index: ``"IVF{nlist},Flat"`` / ``",SQfp16"`` / ``",SQ8"`` (default ``IVF{auto nlist},Flat``).
        metric, level, split, domain, labels, recall_target, allow_stale: as ``FaissBank.build``.
        videos_per_chunk: videos read per chunk.
        shard_rows: vectors per in-memory shard before it is written out.
        tune_queries: held-out queries that pick nprobe (as many again check it).
        train_size: quantizer training sample (default ``40 * nlist``).
        memory_budget: bytes allowed for the training sample plus one shard (default half the RAM).
        seed: seed of the samples.

    Returns:
        The saved bank, loaded from ``directory`` (inverted lists memory-mapped).
    """
    faiss = _faiss()
    t0 = time.perf_counter()
    recall_target = check_recall_target(recall_target)
    if videos_per_chunk < 1 or shard_rows < 1:
        raise BankError(f"videos_per_chunk and shard_rows must be >= 1, got {videos_per_chunk}, {shard_rows}")
    fs = store.open_set(set_name, allow_stale=allow_stale)
    filters = _filters(split, domain, labels)
    vids = select_videos(fs, **filters)
    counts = np.array([fs.n_rows(v) for v in vids], np.int64)
    if level == "video":
        counts = (counts > 0).astype(np.int64)
    n, dim = int(counts.sum()), int(fs.info.dim)
    if n == 0:
        raise BankError(f"feature set {set_name!r}: no rows to index (check the filters)")
    nlist = _auto.auto_nlist(n)
    factory = index or f"IVF{nlist},Flat"
    if not factory.upper().startswith("IVF") or factory.split(",", 1)[-1] not in ("Flat", "SQfp16", "SQ8"):
        raise BankError(f"--on-disk builds IVF{{nlist}},Flat / SQfp16 / SQ8 indexes, not {factory!r}")
    metric_type = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    try:
        trained = faiss.index_factory(dim, factory, metric_type)
    except RuntimeError as e:
        raise BankError(f"faiss cannot build index {factory!r} for dim {dim}: {str(e).splitlines()[0]}") from None
    nlist = faiss.extract_index_ivf(trained).nlist
    n_train = int(min(n, train_size or 40 * nlist))
    n_hold = int(min(2 * tune_queries, max(2, n // 5)))
    budget = _memory_budget() if memory_budget is None else int(memory_budget)
    need = (n_train + n_hold + min(shard_rows, n)) * dim * 4
    if need > budget:
        raise BankError(f"training sample + one shard need {need} bytes, over the memory budget of {budget}; "
                        "lower shard_rows or train_size")
    rng = np.random.default_rng(seed)
    picks = rng.choice(n, n_train + n_hold, replace=False)
    train_pos, hold_pos = np.sort(picks[:n_train]), picks[n_train:]  # hold_pos: random order, tune half first
    is_hold = np.zeros(n, bool)
    is_hold[hold_pos] = True
    hold_rank = np.empty(n, np.int64)
    hold_rank[hold_pos] = np.arange(n_hold)

    # pass 1: training sample and held-out queries
    train_x = np.empty((n_train, dim), np.float32)
    hold_x = np.empty((n_hold, dim), np.float32)
    video_ids: list[str] = []
    rows_out, labels_out = np.empty(n, np.int64), np.empty(n, np.int64)
    start, ti = 0, 0
    for x, ids, y in _chunks(fs, vids, level, videos_per_chunk):
        if metric == "cosine":
            faiss.normalize_L2(x)
        m = len(x)
        pos = np.arange(start, start + m)
        sel = train_pos[(train_pos >= start) & (train_pos < start + m)] - start
        train_x[ti : ti + len(sel)] = x[sel]
        ti += len(sel)
        h = is_hold[pos]
        hold_x[hold_rank[pos[h]]] = x[h]
        video_ids.extend(v for v, _ in ids)
        rows_out[start : start + m] = [r for _, r in ids]
        labels_out[start : start + m] = y
        start += m
    if start != n or ti != n_train:
        raise BankError(f"feature set {set_name!r} changed while it was read ({start} of {n} vectors); retry")
    trained.train(train_x)
    del train_x

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    shard_dir = d / "shards.tmp"
    shutil.rmtree(shard_dir, ignore_errors=True)
    shard_dir.mkdir()
    k = min(_auto.K, n - n_hold)
    heap = faiss.ResultHeap(n_hold, k, keep_max=metric == "cosine")

    # pass 2: shards of the non-held-out vectors, and the exact top-k of the held-out queries
    shards: list[str] = []
    shard = faiss.clone_index(trained)
    start = 0
    for x, _, _ in _chunks(fs, vids, level, videos_per_chunk):
        if metric == "cosine":
            faiss.normalize_L2(x)
        m = len(x)
        pos = np.arange(start, start + m)
        keep = ~is_hold[pos]
        if keep.any():
            xk, idk = np.ascontiguousarray(x[keep]), pos[keep].astype(np.int64)
            shard.add_with_ids(xk, idk)
            kk = min(k, len(xk))
            dd, ii = faiss.knn(hold_x, xk, kk, metric=metric_type)
            if kk < k:
                fill = -np.inf if metric == "cosine" else np.inf
                dd = np.pad(dd, ((0, 0), (0, k - kk)), constant_values=fill)
                ii = np.pad(ii, ((0, 0), (0, k - kk)), constant_values=-1)
            heap.add_result(np.ascontiguousarray(dd, np.float32), np.where(ii >= 0, idk[np.maximum(ii, 0)], -1))
        if shard.ntotal >= shard_rows:
            shards.append(str(shard_dir / f"shard{len(shards):05d}.index"))
            faiss.write_index(shard, shards[-1])
            shard = faiss.clone_index(trained)
        start += m
    if shard.ntotal:
        shards.append(str(shard_dir / f"shard{len(shards):05d}.index"))
        faiss.write_index(shard, shards[-1])
    shard = faiss.clone_index(trained)  # the held-out vectors: merged with the rest, excluded while tuning
    shard.add_with_ids(hold_x, hold_pos.astype(np.int64))
    shards.append(str(shard_dir / f"shard{len(shards):05d}.index"))
    faiss.write_index(shard, shards[-1])
    del shard
    heap.finalize()

    from faiss.contrib.ondisk import merge_ondisk

    ivfdata = d / "index.ivfdata"
    if ivfdata.exists():
        ivfdata.unlink()
    merged = faiss.clone_index(trained)
    merge_ondisk(merged, shards, str(ivfdata))
    shutil.rmtree(shard_dir, ignore_errors=True)

    h = n_hold // 2
    ho = _auto.HeldOut(hold_x[:h], heap.I[:h], hold_x[h:], heap.I[h:], exact_seconds=0.0, k=k)
    # IVF lists are independent: filtering the held-out ids out answers exactly as an index without them
    tuned = _auto.tune(merged, ho, recall_target, exclude_ids=hold_pos)
    warning = ""
    if tuned.below_target:
        warning = (f"recall@10 {tuned.recall:.3f} on {len(ho.check)} held-out queries is below the target "
                   f"{recall_target} (nprobe {tuned.params.get('nprobe')})")
    info = BankInfo(
        set_name=set_name, backbone=fs.info.backbone, weights_id=fs.info.weights_id, metric=metric, level=level,
        index=factory, requested_index=index or "auto", dim=dim, filters=filters, train_size=n_train,
        nprobe=tuned.params.get("nprobe", 0), recall_target=recall_target, recall_at_10=round(tuned.recall, 4),
        tune_queries=h, heldout_queries=n_hold - h, tuned_ntotal=n, memory_budget=budget,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), warning=warning, on_disk=True,
        auto_reason=(f"on-disk IVF: {len(shards)} shard(s) of <= {shard_rows} vectors streamed in chunks of "
                     f"{videos_per_chunk} videos, merged into {ivfdata.name}"),
        source_digest=_source_digest(fs, vids, level=level, metric=metric, index=factory, on_disk=True,
                                     recall_target=recall_target, filters=filters),
    )
    bank = FaissBank(merged, info, video_ids, rows_out, labels_out, store=store, allow_stale=allow_stale, gpu=False)
    bank._dir = d
    bank.heldout_ids = hold_pos.astype(np.int64)
    bank.info = dataclasses.replace(bank.info, build_seconds=round(time.perf_counter() - t0, 3))
    bank.save(d)
    del bank, merged
    return FaissBank.load(d, store=store, allow_stale=allow_stale, gpu=False)
