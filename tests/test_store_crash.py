"""SIGKILL at chosen moments: the store always opens and validates; the resumed job completes exactly.

Every kill is event-driven, never timed: the child reports each commit (or the step it is
about to take) through its stdout pipe and the test kills it once the report arrives, so the
outcome does not depend on how fast or how loaded the machine is. The only timeout is a
generous failure timeout on the child's start.
"""

from __future__ import annotations

import os
import random
import runpy
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from featbank.store import open_store

JOB = '''
import signal
import sys
import numpy as np
from featbank.store import FeatureSetInfo, VideoMeta, VideoRows, open_store
from featbank.store import _files, _segments

SET = "job/feats"
# Progress lines are padded to 16 KiB: the child can run at most a few commits ahead of
# the test's reading (then its write to the pipe blocks), so it never finishes before a kill.
PAD = 16 * 1024 - 1


def rows_for(i):
    rng = np.random.default_rng(i)
    n = i % 13  # 0..12 rows, empty videos included
    feats = rng.standard_normal((n, 32)).astype(np.float32)
    starts = np.arange(n) * 0.5 + i
    return VideoRows(feats, starts, starts + 1.0)


def stop_before(cls, method, k, torn=False):
    """Make the k-th call of cls.method report "stop" and hang (the test then kills us).

    With torn=True the call first writes half of its bytes (a commit line cut short)."""
    orig = getattr(cls, method)
    calls = [0]

    def hooked(self, *a, **kw):
        calls[0] += 1
        if calls[0] == k:
            if torn:
                data = a[0]
                orig(self, data[: len(data) // 2])
            print("stop".ljust(PAD), flush=True)
            while True:  # wait for the test's SIGKILL
                signal.pause()
        return orig(self, *a, **kw)

    setattr(cls, method, hooked)


HOOKS = {
    "append": (_files.Appender, "append"),
    "torn": (_files.Appender, "append"),
    "segwrite": (_segments.Segment, "write"),
    "atomic": (_files.Files, "write_atomic"),
    "rm": (_files.Files, "rm"),
}


def main(path, n_videos, action, hook="", report=False):
    if hook:
        kind, k = hook.split(":")
        cls, method = HOOKS[kind]
        stop_before(cls, method, int(k), torn=kind == "torn")
    store = open_store(path, mode="a")
    fs = store.create_set(FeatureSetInfo(SET, (32,), "float16", backbone="bb", weights_id="w1"))
    print("ready".ljust(PAD), flush=True)
    if action in ("write", "write+compact"):
        for i in range(n_videos):
            vid = f"v{i:05d}"
            if vid in fs:  # resume: skip what a previous run committed
                continue
            fs.write_video(rows_for(i), VideoMeta(vid, labels=(i % 7,), fps=25.0))
            if report:
                print(f"committed {vid}".ljust(PAD), flush=True)
    if action in ("compact", "write+compact"):
        print("compacting".ljust(PAD), flush=True)
        store.compact()
    store.close()
    print("done".ljust(PAD), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else "",
         report=len(sys.argv) > 5)
'''

START_TIMEOUT = 600  # generous: only a hung child ever reaches it


@pytest.fixture()
def job(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(JOB)
    return script, runpy.run_path(str(script), run_name="job_module")


class Child:
    """The job in a subprocess, read line by line through its stdout pipe."""

    def __init__(self, script: Path, store: Path, n: int, action: str, hook: str = "", report: bool = False):
        argv = [sys.executable, str(script), str(store), str(n), action, hook] + (["report"] if report else [])
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait_for(self, predicate) -> str:
        """Read lines until one satisfies ``predicate``; fails when the child exits first."""
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait(timeout=START_TIMEOUT)
                raise AssertionError(f"child exited (rc {self.proc.returncode}): {self.proc.stderr.read()}")
            if predicate(line.strip()):
                return line.strip()

    def kill(self) -> None:
        assert self.proc.poll() is None, "the child finished before the kill"
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.close()

    def finish(self) -> None:
        rc = self.proc.wait(timeout=START_TIMEOUT)
        err = self.proc.stderr.read()
        self.close()
        assert rc == 0, err

    def close(self) -> None:
        self.proc.stdout.close()
        self.proc.stderr.close()


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
    """Kill after the child reported a random number of new commits, five times, then resume."""
    script, mod = job
    store, n = tmp_path / "store.zarr", 2000
    rng = random.Random(1234)
    committed = 0
    for _ in range(5):
        target = committed + rng.randint(1, 150)
        child = Child(script, store, n, "write+compact", report=True)
        child.wait_for(lambda line: line == f"committed v{target - 1:05d}")
        child.kill()  # the child is at most a few commits past the target, mid-write or between
        now = _check(store, mod["rows_for"], n, complete=False)
        assert now >= target  # every reported commit survived; nothing committed is ever lost
        committed = now
    child = Child(script, store, n, "write+compact")
    child.finish()
    _check(store, mod["rows_for"], n, complete=True)
    segs = [s for s in os.listdir(store / "job" / "feats" / "segments") if s != "zarr.json"]
    assert len(segs) == 1 and segs[0].startswith("c-")  # the finished job left the compacted layout


@pytest.mark.parametrize("hook", ["segwrite:4", "append:4", "torn:4"])
def test_sigkill_inside_a_commit(job, tmp_path, hook):
    """Killed after the rows of a video were written but before (or halfway through) its commit line."""
    script, mod = job
    store, n = tmp_path / "store.zarr", 40
    child = Child(script, store, n, "write", hook=hook)
    child.wait_for(lambda line: line == "stop")
    child.kill()
    assert _check(store, mod["rows_for"], n, complete=False) == 3  # exactly the three commits before
    Child(script, store, n, "write+compact").finish()
    _check(store, mod["rows_for"], n, complete=True)


# Points inside compaction where the child stops and is killed: before the k-th write of the
# new segment, before each index file / the CURRENT switch, and among the deletions after it.
COMPACTION_STOPS = ["segwrite:1", "atomic:3", "atomic:4", "rm:2"]


def test_sigkill_during_compaction(job, tmp_path):
    script, mod = job
    store, n = tmp_path / "store.zarr", 1500
    for k in range(3):  # three writer segments (one per run) to consolidate
        mod["main"](str(store), (k + 1) * n // 3, "write")
    for hook in COMPACTION_STOPS:
        child = Child(script, store, n, "compact", hook=hook)
        child.wait_for(lambda line: line == "stop")
        child.kill()
        _check(store, mod["rows_for"], n, complete=True)
    Child(script, store, n, "compact").finish()
    _check(store, mod["rows_for"], n, complete=True)
