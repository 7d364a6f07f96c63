"""On-disk IVF banks: built by streaming a set chunk by chunk, answering like an in-memory bank."""

from __future__ import annotations

import numpy as np
import pytest

from featbank.experiments.cli import main
from featbank.heads.metrics import exact_search, neighbour_recall
from featbank.store import FeatureSetInfo, MemoryStore, VideoMeta, VideoRows, open_store
from featbank.store.bank import BankError, FaissBank
from featbank.store.bank_ondisk import build_on_disk

SET = "enc/clips"
DIM = 16


@pytest.fixture(autouse=True)
def one_faiss_thread():
    """One OpenMP thread: deterministic faiss, and no spinning threads on a loaded machine."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def _fill(store, n_videos: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, DIM)).astype(np.float32)
    fs = store.create_set(FeatureSetInfo(name=SET, row_shape=(DIM,), dtype="float32", backbone="bb", weights_id="w1"))
    for v in range(n_videos):
        n = 2 + v % 5
        f = centres[v % 20] + 0.5 * rng.normal(size=(n, DIM)).astype(np.float32)
        t = np.arange(n, dtype=np.float64)
        fs.write_video(VideoRows(f, t, t + 1), VideoMeta(f"v{v:03d}", labels=(v % 7,), split="train"))
    return fs


def test_on_disk_answers_like_in_memory(tmp_path):
    store = MemoryStore()
    fs = _fill(store)
    mem = FaissBank.build(store, SET, index="IVF16,Flat", tune_queries=100)
    disk = build_on_disk(store, SET, tmp_path / "bank", index="IVF16,Flat", videos_per_chunk=37, shard_rows=300,
                         tune_queries=100)
    assert disk.info.on_disk and (tmp_path / "bank" / "index.ivfdata").stat().st_size > 0
    assert not (tmp_path / "bank" / "shards.tmp").exists()
    assert "shard(s)" in disk.info.auto_reason and int(disk.info.auto_reason.split(": ")[1].split()[0]) >= 3
    assert disk.ntotal == mem.ntotal == sum(fs.n_rows(v) for v in fs.video_ids())
    # same id mapping, same stored vectors
    assert list(disk.video_ids) == list(mem.video_ids) and np.array_equal(disk.rows, mem.rows)
    assert np.array_equal(disk.labels, mem.labels)
    x = np.concatenate([fs.read(v).feats for v in fs.video_ids()]).astype(np.float32)
    q = x[::7] + 0.05 * np.random.default_rng(1).normal(size=x[::7].shape).astype(np.float32)
    # exhaustive probing: both return the exact neighbours, so both answer alike
    for b in (mem, disk):
        b.index.nprobe = 16
    dm, im = mem.search(q, 10)
    dd, idd = disk.search(q, 10)
    np.testing.assert_allclose(dm, dd, rtol=1e-5, atol=1e-6)
    # equal up to the order of near-ties (scores equal to float rounding)
    assert all(set(a) == set(b) for a, b in zip(im[:, :9], idd[:, :9])) and (im == idd).mean() > 0.99
    same = im[:, 0] == idd[:, 0]
    assert [n[0] for n in disk.neighbours(dd[same], idd[same])] == [n[0] for n in mem.neighbours(dm[same], im[same])]
    # at the tuned nprobe, the on-disk bank meets its target on fresh queries
    disk = FaissBank.load(tmp_path / "bank", store=store)
    _, i = disk.search(q, 10)
    _, ei = exact_search(x, q, 10)
    assert disk.info.nprobe < 16 and neighbour_recall(i, ei, 10) >= 0.93
    assert disk.info.recall_at_10 >= 0.95 and disk.info.heldout_queries > 0
    # the folder moves as a whole (the lists file is found next to index.faiss)
    moved = tmp_path / "moved"
    (tmp_path / "bank").rename(moved)
    np.testing.assert_array_equal(FaissBank.load(moved).search(q, 10)[1], i)
    with pytest.raises(BankError, match="cannot grow in place"):
        disk.add([("new", 0)], np.ones((1, DIM), np.float32))


def test_on_disk_from_cli(tmp_path, capsys):
    path = tmp_path / "feats.zarr"
    with open_store(path, mode="w") as store:
        _fill(store, n_videos=120)
    code = main(["bank", "build", str(path), "--set", SET, "--on-disk", "--index", "IVF8,Flat", "--chunk-videos", "25"])
    out = capsys.readouterr().out
    assert code == 0 and "on-disk IVF" in out and "held-out" in out
    code = main(["bank", "query", str(path), "--set", SET, "--video", "v007", "--row", "1", "-k", "3", "--json"])
    rec = capsys.readouterr().out
    assert code == 0 and '"video": "v007", "row": 1, "label": 0' in rec
    code = main(["bank", "build", str(path), "--set", SET, "--on-disk", "--index", "HNSW32"])
    assert code == 1 and "IVF" in capsys.readouterr().err
