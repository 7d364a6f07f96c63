"""SIGKILL at random moments: the store always opens and validates; the resumed job completes exactly."""

from __future__ import annotations

import os
import random
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from featbank.store import open_store

JOB = '''
import sys
import numpy as np
from featbank.store import FeatureSetInfo, VideoMeta, VideoRows, open_store

SET = "job/feats"


def rows_for(i):
    rng = np.random.default_rng(i)
    n = i % 13  # 0..12 rows, empty videos included
    feats = rng.standard_normal((n, 32)).astype(np.float32)
    starts = np.arange(n) * 0.5 + i
    return VideoRows(feats, starts, starts + 1.0)


def main(path, n_videos, action):
    store = open_store(path, mode="a")
    fs = store.create_set(FeatureSetInfo(SET, (32,), "float16", backbone="bb", weights_id="w1"))
    print("ready", flush=True)
    if action in ("write", "write+compact"):
        for i in range(n_videos):
            vid = f"v{i:05d}"
            if vid in fs:  # resume: skip what a previous run committed
                continue
            fs.write_video(rows_for(i), VideoMeta(vid, labels=(i % 7,), fps=25.0))
    if action in ("compact", "write+compact"):
        print("compacting", flush=True)
        store.compact()
    store.close()
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
'''


@pytest.fixture()
def job(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(JOB)
    return script, runpy.run_path(str(script), run_name="job_module")["rows_for"]


def _start(script: Path, store: Path, n: int, action: str, wait_for: str = "ready") -> subprocess.Popen:
    """Start the job and return once it printed ``wait_for`` (``ready`` or ``compacting``)."""
    proc = subprocess.Popen([sys.executable, str(script), str(store), str(n), action],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while True:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        if line.strip() == wait_for:
            return proc


def _kill_after(proc: subprocess.Popen, seconds: float) -> bool:
    """SIGKILL the child after ``seconds``; False when it had already finished."""
    time.sleep(seconds)
    finished = proc.poll() is not None
    if not finished:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    return not finished


def _check(store_path: Path, rows_for, n: int, complete: bool) -> int:
    """The store opens, validates, and every committed video holds exactly what was written."""
    with open_store(store_path, mode="r") as st:
        assert st.validate() == []
        fs = st.open_set("job/feats")
        ids = fs.video_ids()
        assert len(ids) == len(set(ids))
        # committed in job order, a prefix of it
        assert ids == [f"v{i:05d}" for i in range(len(ids))]
        for vid, got in zip(ids, fs.read_many(ids)):
            want = rows_for(int(vid[1:]))
            np.testing.assert_array_equal(got.feats, want.feats.astype(np.float16))
            np.testing.assert_array_equal(got.starts, want.starts)
        if complete:
            assert len(ids) == n
            feats, offsets, _ = fs.read_all()
            assert offsets[-1] == sum(i % 13 for i in range(n)) == len(feats)
        return len(ids)


def test_sigkill_during_writes_then_resume(job, tmp_path):
    script, rows_for = job
    store, n = tmp_path / "store.zarr", 2000
    rng = random.Random(1234)
    committed, kills = 0, 0
    for _ in range(5):
        proc = _start(script, store, n, "write+compact")
        kills += _kill_after(proc, rng.uniform(0.01, 0.3))
        now = _check(store, rows_for, n, complete=False)
        assert now >= committed  # nothing committed is ever lost
        committed = now
    assert kills >= 3, "the child finished before most kills: make the job longer"
    proc = _start(script, store, n, "write+compact")
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    _check(store, rows_for, n, complete=True)
    segs = [s for s in os.listdir(store / "job" / "feats" / "segments") if s != "zarr.json"]
    assert len(segs) == 1 and segs[0].startswith("c-")  # the finished job left the compacted layout


def test_sigkill_during_compaction(job, tmp_path):
    script, rows_for = job
    store, n = tmp_path / "store.zarr", 1500
    job_module = runpy.run_path(str(script), run_name="job_module")
    for k in range(3):  # three writer segments (one per run) to consolidate
        job_module["main"](str(store), (k + 1) * n // 3, "write")
    rng = random.Random(7)
    kills = 0
    for _ in range(3):
        proc = _start(script, store, n, "compact", wait_for="compacting")
        kills += _kill_after(proc, rng.uniform(0.0, 0.08))
        _check(store, rows_for, n, complete=True)
    assert kills >= 1, "compaction finished before every kill: make the store larger"
    proc = _start(script, store, n, "compact")
    assert proc.wait(timeout=120) == 0
    proc.stdout.close()
    proc.stderr.close()
    _check(store, rows_for, n, complete=True)
