"""torch Datasets, padding collate and ChunkShuffleSampler of store/dataset.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from featbank.store import FeatureSetInfo, MemoryStore, StoreError, VideoMeta, VideoRows
from featbank.store.dataset import (
    ChunkShuffleSampler,
    LazyFeatureSet,
    RowDataset,
    VideoSequenceDataset,
    collate_padded,
    select_videos,
)

SET = "synthetic/feats"
LENGTHS = [5, 0, 3, 8, 1, 6, 2, 4]


def _video(i: int) -> tuple[VideoRows, VideoMeta]:
    """Video ``i``: row r of video i holds the value ``100 * i + r`` in every channel."""
    n = LENGTHS[i]
    feats = (100 * i + np.arange(n, dtype=np.float32))[:, None].repeat(4, axis=1)
    starts = np.arange(n) * 0.5
    meta = VideoMeta(
        f"v{i}", labels=(i % 3,), split="train" if i < 6 else "val", domain="src" if i % 2 == 0 else "tgt"
    )
    return VideoRows(feats, starts, starts + 1.0), meta


def make_store() -> MemoryStore:
    """A deterministic store; module level so ``spawn`` workers can rebuild it (a store_factory)."""
    store = MemoryStore()
    fs = store.create_set(FeatureSetInfo(name=SET, row_shape=(4,), dtype="float32"))
    for i in range(len(LENGTHS)):
        fs.write_video(*_video(i))
    return store


def test_select_videos_filters():
    fs = make_store().open_set(SET)
    ids, table = select_videos(fs, split="train")
    assert ids == [f"v{i}" for i in range(6)]
    ids, _ = select_videos(fs, split="train", domain="tgt")
    assert ids == ["v1", "v3", "v5"]
    ids, table = select_videos(fs, labels=[0, 2])
    assert ids == ["v0", "v2", "v3", "v5", "v6"] and list(table["label"]) == [0, 2, 0, 2, 0]
    ids, _ = select_videos(fs, video_ids=["v7", "v0"], split="val")
    assert ids == ["v7"]
    with pytest.raises(StoreError, match="nope"):
        select_videos(fs, video_ids=["nope"])
    assert select_videos(fs, split="nosuch")[0] == []  # no match is an empty selection by default
    with pytest.raises(StoreError, match=r"no video has split in \['nosuch'\] \(present: \['train', 'val'\]\)"):
        select_videos(fs, split="nosuch", require_match=True)


def test_video_sequence_padding_and_mask():
    ds = VideoSequenceDataset(make_store(), SET)
    assert len(ds) == 7  # the empty video is dropped
    assert len(VideoSequenceDataset(make_store(), SET, drop_empty=False)) == 8
    batch = collate_padded([ds[0], ds[1], ds[3]])  # v0 (5 rows), v2 (3), v4 (1)
    assert batch["feats"].shape == (3, 5, 4) and batch["feats"].dtype == torch.float32
    assert batch["mask"].dtype == torch.bool
    assert batch["mask"].tolist() == [[True] * 5, [True] * 3 + [False] * 2, [True] + [False] * 4]
    assert batch["lengths"].tolist() == [5, 3, 1]
    assert batch["video_id"] == ["v0", "v2", "v4"]
    assert batch["label"].tolist() == [0, 2, 1]
    for b, i in enumerate([0, 2, 4]):
        n = LENGTHS[i]
        expected = torch.from_numpy(_video(i)[0].feats)
        torch.testing.assert_close(batch["feats"][b, :n], expected)
        assert (batch["feats"][b, n:] == 0).all()
        torch.testing.assert_close(batch["starts"][b, :n], torch.arange(n, dtype=torch.float64) * 0.5)
    # masked mean pooling recovers the per-video means
    pooled = (batch["feats"] * batch["mask"][..., None]).sum(1) / batch["lengths"][:, None]  # (B, T, D) -> (B, D)
    torch.testing.assert_close(pooled[:, 0], torch.tensor([2.0, 201.0, 400.0]))


def test_video_sequence_filters_and_dtype():
    ds = VideoSequenceDataset(make_store(), SET, domain="tgt", dtype=torch.float16)
    assert ds.video_ids == ["v3", "v5", "v7"]  # v1 is empty
    item = ds[0]
    assert item["feats"].dtype == torch.float16 and item["feats"].shape == (8, 4)
    assert item["domain"] == "tgt" and item["labels"] == (0,)


def test_row_dataset_labels_and_rows():
    ds = RowDataset(make_store(), SET, split="train")
    assert len(ds) == sum(LENGTHS[:6])
    np.testing.assert_array_equal(ds.row_labels(), np.repeat([i % 3 for i in range(6)], LENGTHS[:6]))
    for idx in range(len(ds)):
        item = ds[idx]
        i = int(item["video_id"][1:])
        assert item["label"] == i % 3
        assert item["feats"].tolist() == [100.0 * i + item["row"]] * 4
        assert item["start"] == item["row"] * 0.5 and item["end"] == item["start"] + 1.0
    with pytest.raises(IndexError):
        ds[len(ds)]
    loader = DataLoader(ds, batch_size=5, sampler=ChunkShuffleSampler(ds, block_size=4, buffer_blocks=2))
    seen = torch.cat([b["feats"][:, 0] for b in loader])
    assert sorted(seen.tolist()) == sorted(float(100 * i + r) for i in range(6) for r in range(LENGTHS[i]))


@pytest.mark.parametrize("n,block,buf", [(1000, 64, 4), (97, 10, 3), (5, 8, 2), (0, 4, 2)])
def test_sampler_covers_every_index_once_and_is_chunk_local(n, block, buf):
    s = ChunkShuffleSampler(n, block_size=block, buffer_blocks=buf, seed=3)
    orders = [list(s) for _ in range(2)]
    for order in orders:
        assert sorted(order) == list(range(n)) and len(s) == n
        blocks = [i // block for i in order]
        # the draws come in buffers; each buffer holds whole blocks, at most `buf` of them
        pos, groups = 0, []
        while pos < n:
            first = set()
            while pos < n and (len(first) < buf or blocks[pos] in first):
                first.add(blocks[pos])
                pos += 1
            groups.append(first)
        assert all(len(g) <= buf for g in groups)
        assert sum(len(g) for g in groups) == -(-n // block)  # no block split over two buffers
    if n > block * buf:
        assert orders[0] != orders[1]  # a new permutation each epoch
        assert orders[0] != list(range(n))
    s.set_epoch(7)
    assert list(s) == list(s)
    assert list(ChunkShuffleSampler(n, shuffle=False)) == list(range(n))


def test_memory_store_refuses_spawn_pickling():
    ds = VideoSequenceDataset(make_store(), SET)
    import pickle

    with pytest.raises(StoreError, match="in-memory store"):
        pickle.dumps(ds)


def test_lazy_set_opens_per_process_and_rejects_bad_source():
    calls = []

    def factory():
        calls.append(1)
        return make_store()

    lazy = LazyFeatureSet(factory, SET)
    assert lazy.get() is lazy.get() and len(calls) == 1
    lazy.release()
    lazy.get()
    assert len(calls) == 2
    with pytest.raises(TypeError):
        LazyFeatureSet(3, SET)  # type: ignore[arg-type]


def _epoch_ids(loader) -> list[str]:
    return sorted(v for batch in loader for v in batch["video_id"])


@pytest.mark.parametrize("ctx", ["fork", pytest.param("spawn", marks=pytest.mark.slow)])
def test_workers_with_store_factory(ctx):
    ds = VideoSequenceDataset(make_store, SET)
    loader = DataLoader(ds, batch_size=3, collate_fn=collate_padded, num_workers=2, multiprocessing_context=ctx)
    assert _epoch_ids(loader) == sorted(f"v{i}" for i, n in enumerate(LENGTHS) if n)
    rows = RowDataset(make_store, SET)
    loader = DataLoader(rows, batch_size=7, num_workers=2, multiprocessing_context=ctx,
                        sampler=ChunkShuffleSampler(rows, block_size=5, buffer_blocks=2))
    got = sorted(torch.cat([b["feats"][:, 0] for b in loader]).tolist())
    assert got == sorted(float(100 * i + r) for i, n in enumerate(LENGTHS) for r in range(n))


@pytest.fixture()
def zarr_path(tmp_path):
    from featbank.store import open_store

    path = tmp_path / "feats.zarr"
    with open_store(path, mode="w") as store:
        src = make_store().open_set(SET)
        fs = store.create_set(src.info)
        for vid in src.video_ids():
            fs.write_video(src.read(vid), src.meta(vid))
    return path


@pytest.mark.parametrize("ctx", ["fork", "spawn"])
def test_workers_with_zarr_path(zarr_path, ctx):
    ds = VideoSequenceDataset(str(zarr_path), SET, split="train")
    ds[0]  # the parent has used the store before the workers start
    loader = DataLoader(ds, batch_size=2, collate_fn=collate_padded, num_workers=2, multiprocessing_context=ctx)
    batches = list(loader)
    assert sorted(v for b in batches for v in b["video_id"]) == ["v0", "v2", "v3", "v4", "v5"]
    for b in batches:
        for k, vid in enumerate(b["video_id"]):
            i = int(vid[1:])
            torch.testing.assert_close(b["feats"][k, : LENGTHS[i]], torch.from_numpy(_video(i)[0].feats))
            assert b["mask"][k].sum() == LENGTHS[i]
    if ctx == "spawn":
        return  # spawn workers start slowly (each imports torch); the row dataset runs under fork only
    rows = RowDataset(zarr_path, SET)
    loader = DataLoader(rows, batch_size=6, num_workers=2, multiprocessing_context=ctx,
                        sampler=ChunkShuffleSampler(rows, block_size=4, buffer_blocks=2, seed=1))
    got = sorted(torch.cat([b["feats"][:, 0] for b in loader]).tolist())
    assert got == sorted(float(100 * i + r) for i, n in enumerate(LENGTHS) for r in range(n))


def _many_videos_store() -> MemoryStore:
    store = MemoryStore()
    fs = store.create_set(FeatureSetInfo(name=SET, row_shape=(2,), dtype="float32"))
    rng = np.random.default_rng(0)
    for i in range(40):
        n = int(rng.integers(1, 11))
        fs.write_video(VideoRows(np.full((n, 2), i, np.float32), np.arange(n), np.arange(n) + 1.0), VideoMeta(f"v{i}"))
    return store


def test_sampler_blocks_hold_whole_videos():
    ds = RowDataset(_many_videos_store(), SET)
    s = ChunkShuffleSampler(ds, block_size=16, buffer_blocks=2, seed=0)
    edges = s.block_starts
    assert edges[0] == 0 and edges[-1] == len(ds) and set(edges) <= set(ds.offsets.tolist())
    assert all(b - a >= 16 for a, b in zip(edges[:-2], edges[1:-1]))  # all but the last block reach block_size
    order = list(s)
    assert sorted(order) == list(range(len(ds)))
    with pytest.raises(ValueError):
        ChunkShuffleSampler(10, boundaries=[0, 5])


def test_row_dataset_reads_each_video_once_per_epoch_with_cache():
    def reads_per_epoch(cache_rows: int) -> tuple[int, list[float]]:
        ds = RowDataset(_many_videos_store(), SET, cache_rows=cache_rows)
        fs = ds.lazy.get()
        calls = []
        read = fs.read
        fs.read = lambda vid, *a, **k: calls.append(vid) or read(vid, *a, **k)
        sampler = ChunkShuffleSampler(ds, block_size=16, buffer_blocks=2, seed=5)
        values = [ds[i]["feats"][0].item() for i in sampler]
        return len(calls), values

    store = _many_videos_store()
    n_rows = sum(store.open_set(SET).n_rows(v) for v in store.open_set(SET).video_ids())
    cache_rows = 2 * (16 + 10)  # buffer_blocks * (block_size + longest video)
    assert cache_rows < n_rows / 2
    n_reads, values = reads_per_epoch(cache_rows)
    assert n_reads == 40
    assert sorted(values) == sorted(float(i) for i in range(40) for _ in range(store.open_set(SET).n_rows(f"v{i}")))
    n_reads_small, values_small = reads_per_epoch(cache_rows=0)  # keeps one video: re-reads as the draws hop
    assert values_small == values and n_reads_small > 40


def test_open_zarr_store_instance_is_reopened_in_forked_workers(zarr_path):
    from featbank.store import open_store

    with open_store(zarr_path, mode="r") as store:
        ds = VideoSequenceDataset(store, SET, domain="src")
        state = ds.lazy.__getstate__()
        assert state["_instance"] is None and state["_path"] == str(zarr_path)  # pickles as a path only
        loader = DataLoader(ds, batch_size=2, collate_fn=collate_padded, num_workers=2, multiprocessing_context="fork")
        got = {v: b["feats"][k, : b["lengths"][k]] for b in loader for k, v in enumerate(b["video_id"])}
    assert sorted(got) == ["v0", "v2", "v4", "v6"]
    for vid, feats in got.items():
        torch.testing.assert_close(feats, torch.from_numpy(_video(int(vid[1:]))[0].feats))
