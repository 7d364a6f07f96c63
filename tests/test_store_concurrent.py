"""Several processes write different videos into one store at once; compaction keeps every value."""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys

import numpy as np

from featbank.store import FeatureSetInfo, VideoMeta, VideoRows, open_store

TIMEOUT = 600  # a failure timeout only: generous, so that a loaded machine never trips it

WRITER = '''
import sys
import numpy as np
from featbank.store import FeatureSetInfo, VideoMeta, VideoRows, open_store

path, rank, world, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
store = open_store(path, mode="a")
fs = store.create_set(FeatureSetInfo("shared/feats", (48,), "float32"))
# start barrier: tell the test this rank has created/opened the set, then wait for its "go",
# which it sends once every rank is ready (an event, not a deadline: a loaded machine only
# makes the wait longer; EOF means the test is gone)
print("ready", flush=True)
if sys.stdin.readline().strip() != "go":
    sys.exit(f"rank {rank}: no go signal from the test")
for i in range(rank, n, world):
    rng = np.random.default_rng(i)
    k = 1 + i % 9
    feats = rng.standard_normal((k, 48)).astype(np.float32)
    fs.write_video(VideoRows(feats, np.arange(k) * 1.0, np.arange(k) + 1.0), VideoMeta(f"v{i:04d}", labels=(rank,)))
store.record_failure("shared/feats", f"broken-{rank}", "decode_crash", f"rank {rank} could not decode")
store.close()
'''


def expected(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.standard_normal((1 + i % 9, 48)).astype(np.float32)


def _check_all(path, n: int, world: int) -> None:
    with open_store(path, mode="r") as st:
        assert st.validate() == []
        fs = st.open_set("shared/feats")
        assert sorted(fs.video_ids()) == [f"v{i:04d}" for i in range(n)]
        for vid, got in zip(fs.video_ids(), fs.read_many(fs.video_ids())):
            i = int(vid[1:])
            np.testing.assert_array_equal(got.feats, expected(i))
            assert fs.meta(vid).labels == (i % world,)
        assert sorted(f["video_id"] for f in st.failures()) == [f"broken-{r}" for r in range(world)]


def test_two_processes_write_one_store_then_compact(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    path, n, world = tmp_path / "store.zarr", 400, 2
    # the store exists before its writers start, as the extraction job's rank 0 makes sure: two processes
    # creating the same new store at once race on its folder (concurrent *writing* is what is tested)
    open_store(path, mode="w").close()
    procs = [subprocess.Popen([sys.executable, str(script), str(path), str(r), str(world), str(n)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(world)]
    for p in procs:  # barrier: every rank reports ready (a dead rank fails the test at once)
        line = p.stdout.readline()
        if line.strip() != "ready":
            p.wait(timeout=TIMEOUT)
            raise AssertionError(f"a writer died before the barrier: {p.stderr.read()}")
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        _, err = p.communicate(timeout=TIMEOUT)
        assert p.returncode == 0, err
    _check_all(path, n, world)
    with open_store(path) as st:
        fs = st.open_set("shared/feats")
        assert len(fs.index.segments) == world  # one segment per writer, never shared
        st.compact()
    _check_all(path, n, world)


def _forked_writer(store, rank: int) -> None:
    fs = store.open_set("shared/feats")
    for i in range(rank, 60, 3):
        k = 1 + i % 9
        fs.write_video(VideoRows(expected(i), np.arange(k) * 1.0, np.arange(k) + 1.0),
                       VideoMeta(f"v{i:04d}", labels=(i % 3,)))
    store.record_failure("shared/feats", f"broken-{rank}", "decode_crash", "x")


def test_forked_children_get_their_own_segments(tmp_path):
    """A store handle that already wrote, inherited through fork, never shares its segment."""
    path = tmp_path / "store.zarr"
    store = open_store(path, mode="w")
    store.create_set(FeatureSetInfo("shared/feats", (48,), "float32"))
    _forked_writer(store, 0)  # the parent writes first: it owns a writer segment before forking
    ctx = mp.get_context("fork")
    children = [ctx.Process(target=_forked_writer, args=(store, r)) for r in (1, 2)]
    for c in children:
        c.start()
    for c in children:
        c.join(TIMEOUT)
        assert c.exitcode == 0
    store.close()
    _check_all(path, 60, 3)
    with open_store(path) as st:
        assert len(st.open_set("shared/feats").index.segments) == 3
        st.compact()
    _check_all(path, 60, 3)
