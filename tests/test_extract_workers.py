"""Decoding worker processes: items in order, windows through shared memory without leftovers,
a dying worker named in a clear error, and a job that starts without torch."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from featbank.extract._stream import ClipChunk
from featbank.extract._workers import SHM_DIR, DecodePool, SharedArray, _Allocator
from featbank.extract.errors import ExtractError

FORK = multiprocessing.get_context("fork")  # this module's stream class needs no import in the child


class CountingStream:
    """A stand-in ``WindowStream``: item ``k`` is a chunk whose windows all hold ``k``; the worker
    that reaches ``die_at`` exits with code 3 (a decoder crash)."""

    def __init__(self, n: int, die_at: int = -1, shape=(2, 1, 3, 4, 5, 5)) -> None:
        self.n, self.die_at, self.shape = n, die_at, shape

    def items(self, wid: int, nw: int, alloc):
        for k in range(wid, self.n, nw):
            if k == self.die_at:
                os._exit(3)
            clips = alloc(self.shape, np.float32)
            clips[...] = k
            yield ClipChunk(k, 0, clips)


def _leftovers(pool: DecodePool) -> list[Path]:
    return sorted(SHM_DIR.glob(f"{pool.prefix}-*")) if SHM_DIR.is_dir() else []


def test_pool_yields_items_round_robin_with_their_windows_and_leaves_no_files():
    pool = DecodePool(CountingStream(7), n_workers=2, prefetch=2, context=FORK)
    items = list(pool)
    assert [it.key for it in items] == list(range(7))  # worker 0: 0, 2, 4, 6; worker 1: 1, 3, 5
    for it in items:
        assert isinstance(it.clips, np.ndarray) and it.clips.shape == (2, 1, 3, 4, 5, 5)
        assert (it.clips == it.key).all()  # readable after the file was unlinked
    assert _leftovers(pool) == []
    assert not any(p.is_alive() for p in pool.procs)


def test_a_dying_worker_is_an_error_naming_it_and_its_exit_code():
    pool = DecodePool(CountingStream(6, die_at=3), n_workers=2, prefetch=1, context=FORK)
    with pytest.raises(ExtractError, match=r"decoding worker 1 exited unexpectedly \(exit code 3\)"):
        list(pool)
    assert _leftovers(pool) == []


def test_stopping_early_stops_the_workers_and_removes_unread_windows():
    pool = DecodePool(CountingStream(50), n_workers=2, prefetch=2, context=FORK)
    it = iter(pool)
    first = next(it)
    assert first.key == 0
    it.close()  # the job stopped (an exception, Ctrl-C): workers stop, queued windows are removed
    assert not any(p.is_alive() for p in pool.procs)
    assert _leftovers(pool) == []


def test_shared_array_round_trip_frees_its_file(tmp_path):
    alloc = _Allocator(f"featbank-test-{os.getpid()}")
    a = alloc((3, 4), np.float32)
    a[...] = np.arange(12).reshape(3, 4)
    handle = alloc.handle(a)
    assert isinstance(handle, SharedArray) and Path(handle.path).is_file()
    b = handle.attach()
    assert not Path(handle.path).exists()  # unlinked at once: the mapping keeps the memory
    np.testing.assert_array_equal(b, np.arange(12).reshape(3, 4))
    assert alloc.handle(np.zeros(2)) is not None  # an array it did not make passes through as itself


STARTUP_PROBE = textwrap.dedent("""
    import json, sys
    from featbank.experiments.cli import main
    code = main(sys.argv[1:])
    print(json.dumps({"code": code, "torch": "torch" in sys.modules}))
""")


def test_a_run_from_the_compiled_model_cache_never_imports_torch(tmp_path):
    """The second run of a job (converted model and backbone facts cached) starts without torch in
    the job process: no model is built, decoding workers need none, OpenVINO takes numpy."""
    pytest.importorskip("openvino")
    import torch

    from featbank.extract.backbones import create_backbone

    from test_extract_job import write_video

    weights = tmp_path / "x3d_xs.pt"
    torch.manual_seed(0)
    torch.save(create_backbone("x3d-xs", weights=None).state_dict(), weights)
    for i in range(2):
        write_video(tmp_path / f"v{i}.mp4", 12 + 4 * i)
    (tmp_path / "list.txt").write_text("v0.mp4 0\nv1.mp4 1\n")
    env = {**os.environ, "FEATBANK_CACHE": str(tmp_path / "cache")}
    results = []
    for run in range(2):
        cmd = [sys.executable, "-c", STARTUP_PROBE, "extract", "--manifest", str(tmp_path / "list.txt"),
               "--store", str(tmp_path / f"s{run}.zarr"), "--backbone", "x3d-xs", "--weights", str(weights),
               "--runtime", "openvino", "--precision", "fp32", "--device", "cpu", "--workers", "1",
               "--clip-len", "4", "--crop", "48", "--no-progress", "resize=48"]
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        results.append(json.loads(res.stdout.strip().splitlines()[-1]))
    assert results[0] == {"code": 0, "torch": True}  # the first run converts the model
    assert results[1] == {"code": 0, "torch": False}
    # a wrong endpoint is still named, with the valid ones, from the remembered facts alone
    bad = subprocess.run(cmd[:-1] + ["endpoint=res9", "resize=48"], capture_output=True, text=True, env=env, timeout=300)
    assert json.loads(bad.stdout.strip().splitlines()[-1])["code"] != 0
    assert "unknown endpoint 'res9'" in bad.stderr and "res5" in bad.stderr

    from featbank.store import open_store

    rows = []
    for run in range(2):
        with open_store(str(tmp_path / f"s{run}.zarr"), "r") as st:
            fs = st.open_set(st.feature_sets()[0])
            rows.append({vid: fs.read(vid).feats for vid in fs.video_ids()})
            assert fs.info.sampling["engine"]["batch_size"] == 1  # OpenVINO on the CPU: one window per call
    assert rows[0].keys() == rows[1].keys() and len(rows[0]) == 2
    for vid in rows[0]:
        np.testing.assert_array_equal(rows[0][vid], rows[1][vid])


SERVER_ENV_PROBE = textwrap.dedent("""
    import json, multiprocessing, os
    from featbank.extract.worker_server import DECODER_MALLOC_ENV, start_worker_server

    def child_env(q):
        q.put({k: os.environ.get(k) for k in DECODER_MALLOC_ENV})

    if __name__ == "__main__":
        start_worker_server()
        ctx = multiprocessing.get_context("forkserver")
        q = ctx.Queue()
        p = ctx.Process(target=child_env, args=(q,))
        p.start()
        seen = q.get(timeout=60)
        p.join()
        print(json.dumps({"worker": seen, "job": {k: os.environ.get(k) for k in DECODER_MALLOC_ENV}}))
""")


def test_the_worker_server_gives_decoders_warm_memory_and_leaves_the_job_environment_alone(tmp_path):
    from featbank.extract.worker_server import DECODER_MALLOC_ENV

    script = tmp_path / "probe.py"
    script.write_text(SERVER_ENV_PROBE)
    env = {k: v for k, v in os.environ.items() if k not in DECODER_MALLOC_ENV}
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["worker"] == DECODER_MALLOC_ENV
    assert out["job"] == {k: None for k in DECODER_MALLOC_ENV}


def test_windows_go_to_the_temp_folder_when_shared_memory_is_missing_or_full(tmp_path, monkeypatch):
    import tempfile

    from featbank.extract import _workers

    assert _workers.shared_folder(1) == SHM_DIR or not SHM_DIR.is_dir()
    assert _workers.shared_folder(1 << 62) == Path(tempfile.gettempdir())  # more than /dev/shm holds
    monkeypatch.setattr(_workers, "SHM_DIR", tmp_path / "no-shm")  # e.g. macOS
    assert _workers.shared_folder(1) == Path(tempfile.gettempdir())
    alloc = _Allocator(f"featbank-test-fallback-{os.getpid()}")
    a = alloc((4,), np.float64)
    a[...] = 7
    handle = alloc.handle(a)
    assert Path(handle.path).parent == Path(tempfile.gettempdir())
    np.testing.assert_array_equal(handle.attach(), np.full(4, 7.0))
    assert not Path(handle.path).exists()


class BlockedAfterFirstItem(CountingStream):
    """The first item at once; the next one only when ``release`` is set (a decode that does not
    finish: a huge chunk, a stalled disk)."""

    def __init__(self, n: int, release) -> None:
        super().__init__(n)
        self.release = release

    def items(self, wid: int, nw: int, alloc):
        for k, item in enumerate(super().items(wid, nw, alloc)):
            if k == 1:
                self.release.wait()
            yield item


def test_a_job_that_stops_does_not_wait_for_a_busy_worker():
    import threading

    from featbank.extract.job.loop import _Prefetched

    release = FORK.Event()
    pool = DecodePool(BlockedAfterFirstItem(5, release), n_workers=1, prefetch=1, context=FORK)
    source = _Prefetched(pool)
    try:
        assert source.get().key == 0
        closer = threading.Thread(target=source.close)  # e.g. the model raised
        closer.start()
        closer.join(timeout=60)
        # close returned while the worker was still blocked: it was stopped, not waited for
        assert not closer.is_alive() and not release.is_set()
        assert not any(p.is_alive() for p in pool.procs) and _leftovers(pool) == []
    finally:
        if any(p.is_alive() for p in pool.procs):  # (setting it with the waiter killed would block)
            release.set()  # lets a worker that was not stopped finish, so a failure does not hang the suite
