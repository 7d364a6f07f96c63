"""Sharding (duration-balanced, SLURM/torchrun env) and the cross-video window packer."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from featbank.extract._packer import ClipPacker
from featbank.extract._stream import ClipChunk, VideoEnd, chunk_windows
from featbank.extract.sharding import (
    balance_shards,
    distributed_rank,
    parse_shard,
    resolve_shard,
    select_shard,
    shard_loads,
)
from featbank.store.schema import VideoMeta


def test_balance_by_duration_not_count():
    # one long video and many short ones: count-balancing would put 5 videos on each shard
    weights = [100.0] + [10.0] * 9
    shards = balance_shards(weights, 2)
    loads = shard_loads(weights, shards)
    assert sorted(loads) == [90.0, 100.0]
    assert shards[0] == [0] or shards[1] == [0]  # the long video sits alone
    # round-robin by count would give loads 140/50
    rr = [list(range(0, 10, 2)), list(range(1, 10, 2))]
    assert max(shard_loads(weights, rr)) - min(shard_loads(weights, rr)) > max(loads) - min(loads)


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_shards_partition_and_are_near_balanced(count):
    rng = np.random.default_rng(count)
    weights = rng.exponential(30.0, size=50)
    shards = balance_shards(weights, count)
    flat = sorted(itertools.chain.from_iterable(shards))
    assert flat == list(range(50))  # disjoint and complete
    for s in shards:
        assert s == sorted(s)  # manifest order inside a shard
    loads = shard_loads(weights, shards)
    # LPT bound: the spread never exceeds the longest item
    assert max(loads) - min(loads) <= weights.max() + 1e-9
    assert balance_shards(weights, count) == shards  # deterministic across processes


def test_select_shard_single_is_identity():
    assert select_shard([3.0, 1.0, 2.0], 0, 1) == [0, 1, 2]


def test_parse_and_resolve_shard():
    assert parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "1", "-1/2", "a/b", "0/0"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)
    assert resolve_shard(None, {}) == (0, 1)
    assert resolve_shard(None, {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "5"}) == (3, 5)
    env = {"SLURM_ARRAY_TASK_ID": "11", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "10"}
    assert resolve_shard(None, env) == (1, 4)
    assert resolve_shard("0/2", env) == (0, 2)  # an explicit shard wins
    assert distributed_rank({"RANK": "1", "WORLD_SIZE": "2"}) == (1, 2)
    assert distributed_rank({}) == (0, 1)


def test_chunk_windows_respects_budget_and_covers_all():
    positions = np.arange(0, 100, 8)[:, None] + np.arange(16)[None]  # (W, 16), overlap 8
    positions = np.minimum(positions, 99)
    src = np.arange(100)
    groups = chunk_windows(positions, src, chunk_frames=40)
    assert groups[0][0] == 0 and groups[-1][1] == len(positions)
    assert all(a < b for a, b in groups) and all(g[1] == h[0] for g, h in zip(groups, groups[1:]))
    seen = -1
    for a, b in groups:
        fresh = np.unique(src[positions[a:b]])
        fresh = fresh[fresh > seen]
        assert len(fresh) <= 40 or b - a == 1
        seen = max(seen, positions[a:b].max())
    # a single window larger than the budget is its own group
    assert chunk_windows(positions[:2], src, chunk_frames=4) == [(0, 1), (1, 2)]
    assert groups[0] == (0, 1)  # the first window alone: the model starts early


def _end(key, n):
    pos = np.arange(n)[:, None]
    return VideoEnd(key, VideoMeta(video_id=f"v{key}"), n, 0, pos, np.arange(n) / 30, np.arange(n), 1 / 30)


def test_packer_fills_batches_across_videos_and_scatters_back():
    calls = []

    def run(clips):  # (B, V, C, L, h, w) -> (B, R=1, V, D=1): the clip's id value
        calls.append(len(clips))
        return clips[:, :, 0, 0, 0, 0].reshape(len(clips), 1, -1, 1).copy()

    done = {}
    packer = ClipPacker(run, batch_size=4, on_done=lambda end, out: done.__setitem__(end.key, out))
    lengths = {0: 3, 1: 1, 2: 6, 3: 0, 4: 2}  # short videos (fewer windows than a batch)
    for key, n in lengths.items():
        ids = np.arange(n, dtype=np.float32) + 100 * key
        clips = np.ascontiguousarray(np.broadcast_to(ids.reshape(n, 1, 1, 1, 1, 1), (n, 1, 1, 2, 1, 1)))
        for a in range(0, n, 2):  # chunks of 2 windows
            packer.add(ClipChunk(key, a, clips[a:a + 2]))
        packer.end(_end(key, n))
    packer.flush()
    assert calls[:-1] == [4] * (len(calls) - 1)  # full batches except the last one
    assert sum(calls) == sum(lengths.values())
    assert set(done) == set(lengths)
    assert done[3] is None
    lay = _end(2, 6).layout(1)
    np.testing.assert_array_equal(lay.frame_idx[:, 0], np.arange(6))
    for key, n in lengths.items():
        if n:
            assert done[key].shape == (n, 1, 1, 1)
            np.testing.assert_array_equal(done[key].flatten(), np.arange(n) + 100 * key)


def test_packer_drop_and_shape_change():
    outs = {}
    packer = ClipPacker(lambda c: c.mean(axis=(2, 3, 4, 5)).reshape(len(c), 1, -1, 1),
                        batch_size=8, on_done=lambda e, o: outs.__setitem__(e.key, o))
    packer.add(ClipChunk(0, 0, np.ones((3, 1, 1, 2, 1, 1), np.float32)))
    packer.add(ClipChunk(1, 0, np.ones((2, 1, 1, 2, 1, 1), np.float32)))
    packer.drop(0)  # failed part-way: its queued windows never reach the model
    packer.end(_end(1, 2))
    packer.add(ClipChunk(2, 0, np.full((1, 1, 1, 5, 1, 1), 2.0, np.float32)))  # another clip length
    packer.end(_end(2, 1))
    assert 1 in outs and 0 not in outs  # the shape change flushed video 1's partial batch
    packer.flush()
    assert outs[2].item() == 2.0
    assert packer.n_windows == 3


def test_model_side_runs_a_partial_batch_instead_of_idling_for_decoding():
    """With decoding workers, windows already decoded are computed while the next ones are still
    being decoded (no waiting for a full batch). The stream below only continues once the model
    has run, so waiting for a full batch of 4 would never finish (its wait times out and raises)."""
    import threading
    from types import SimpleNamespace

    from featbank.extract.features import Sampling
    from featbank.extract.job import ExtractConfig
    from featbank.extract.job.loop import consume

    ran = threading.Event()
    calls = []

    def engine(clips):  # (B, V, C, L, h, w) -> (B, R=1, V, D=3)
        calls.append(len(clips))
        ran.set()
        return np.repeat(clips.mean(axis=(2, 3, 4, 5))[:, None, :, None], 3, axis=3)

    def stream():
        yield ClipChunk(0, 0, np.ones((1, 1, 3, 2, 4, 4), np.float32))
        if not ran.wait(timeout=60):
            raise AssertionError("the model never ran the window that was already decoded")
        yield ClipChunk(0, 1, np.full((1, 1, 3, 2, 4, 4), 2.0, np.float32))
        yield VideoEnd(0, VideoMeta("v"), 2, 4, np.array([[0, 1], [2, 3]]), np.arange(4) / 25.0, np.arange(4), 0.04)

    pipe = SimpleNamespace(engine=engine, row_shape=(3,), rows_per_window=1, batch_size=4,
                           sampling=Sampling(clip_len=2, stride=2))
    rows = {}
    consume(ExtractConfig(batch_size=4, workers=1), pipe, [SimpleNamespace(key=0, video_id="v")], stream(),
            lambda task, r, meta: rows.setdefault(meta.video_id, r), lambda *a: pytest.fail(f"failure {a}"))
    assert calls == [1, 1] and rows["v"].feats[:, 0].tolist() == [1.0, 2.0]
