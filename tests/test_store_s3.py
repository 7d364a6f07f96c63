"""Feature stores on S3, against a real local S3 server (moto's standalone server on 127.0.0.1).

Writers there write immutable objects only (a segment per commit batch, then its commit
object); these tests kill a writer between the two, run two writer processes into one
store, damage a commit object, race the pointer switch, and read every array with plain
zarr-python. Kills are driven by what the child reports on its stdout, never by sleeps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import numpy as np
import pytest

from featbank.store import BatchPolicy, StoreError, VideoMeta, open_store, s3server
from featbank.store.testing import StoreTests, assert_rows_equal, make_info, make_rows

pytestmark = pytest.mark.skipif(
    not s3server.available(),
    reason=f"the local S3 server is not installed: pip install '{s3server.SERVER_PACKAGE}' s3fs "
           "(part of the dev extras: pip install -e '.[dev]')")

BUCKET = "featbank"
SET = "bb/layer/c8"
DIM = 8


@pytest.fixture(scope="module")
def s3():
    with s3server.local_s3(BUCKET) as env:
        yield env


def new_url() -> str:
    return f"s3://{BUCKET}/{uuid.uuid4().hex}.zarr"


def rows_for(i: int):
    return make_rows(i % 7 + (i % 3 == 0), (DIM,), seed=i)  # 0..7 rows, empty videos included


def s3fs_fs():
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)


def commit_objects(url: str) -> list[str]:
    fs = s3fs_fs()
    return sorted(p for p in fs.find(f"{url[5:]}/{SET}/_commits") if p.endswith(".jsonl"))


# A writer process: writes videos FIRST..LAST-1 in batches of BATCH; with STOP=k it reports
# "data" after the k-th batch's segment objects are written and waits there for SIGKILL.
WRITER = r'''
import signal, sys
from featbank.store import BatchPolicy, VideoMeta, open_store, _objects
from featbank.store.testing import make_info, make_rows
url, first, last, batch, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
calls = [0]
orig = _objects.BatchWriter._commit
def commit(self, body):
    calls[0] += 1
    if calls[0] == stop:
        print("data " + self.name, flush=True)
        while True:
            signal.pause()
    orig(self, body)
    print("commit " + self.name, flush=True)
_objects.BatchWriter._commit = commit
def rows_for(i):
    return make_rows(i % 7 + (i % 3 == 0), (8,), seed=i)
with open_store(url, "a", batch=BatchPolicy(videos=batch)) as store:
    fs = store.create_set(make_info("bb/layer/c8", row_shape=(8,)))
    for i in range(first, last):
        fs.write_video(rows_for(i), VideoMeta(f"v{i:03d}", labels=(i % 5,), split="train"))
print("done", flush=True)
'''


def start_writer(url: str, first: int, last: int, batch: int, stop: int = 0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, url, str(first), str(last), str(batch), str(stop)],
                            stdout=subprocess.PIPE, text=True)


def check_all(url: str, ids: range, quick: bool = True) -> None:
    with open_store(url, "r") as store:
        assert store.validate(quick=quick) == []  # quick: all but re-reading every value (read below)
        fs = store.open_set(SET)
        assert sorted(fs.video_ids()) == [f"v{i:03d}" for i in ids]
        for i, got in zip(ids, fs.read_many([f"v{i:03d}" for i in ids])):
            assert_rows_equal(got, rows_for(i), "float32")
            assert fs.meta(f"v{i:03d}").labels == (i % 5,)


def zarr_reads_every_array(url: str) -> int:
    """Plain zarr-python reads every segment array; returns the rows of the live segments."""
    import zarr

    g = zarr.open_group(url, mode="r", storage_options={"skip_instance_cache": True})  # a fresh reader
    segments = g[f"{SET}/segments"]
    total = 0
    for name in segments.group_keys():
        seg = segments[name]
        feats, times, frames = seg["feats"][:], seg["times"][:], seg["frame_idx"][:]
        assert len(feats) == len(times) == len(frames) and feats.shape[1:] == (DIM,)
        total += len(feats)
    return total


def test_sigkill_between_data_and_commit_then_rerun_completes_exactly(s3):
    url = new_url()
    child = start_writer(url, 0, 12, batch=4, stop=2)
    try:
        reports = [child.stdout.readline(), child.stdout.readline()]
        assert reports[0].startswith("commit w-") and reports[1].startswith("data w-")  # batch 2: data, no commit
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    with open_store(url, "r") as store:  # exactly the first batch; batch 2's orphan segment is no damage
        problems, notes = store.check(quick=True)
        assert problems == [] and any("not referenced" in n for n in notes)
        fs = store.open_set(SET)
        assert sorted(fs.video_ids()) == [f"v{i:03d}" for i in range(4)]
        for i, got in zip(range(4), fs.read_many([f"v{i:03d}" for i in range(4)])):
            assert_rows_equal(got, rows_for(i), "float32")
    rerun = start_writer(url, 0, 12, batch=4)
    out = rerun.communicate()[0]
    assert rerun.returncode == 0 and out.count("commit ") == 2  # videos 0-3 were skipped: two new batches
    with open_store(url, "a") as store:
        store.compact()
    check_all(url, range(12), quick=False)
    assert zarr_reads_every_array(url) == sum(len(rows_for(i)) for i in range(12))  # the orphan is gone


@pytest.mark.slow  # ~20 s against the local server
def test_two_writer_processes_then_compact_every_value_equal(s3):
    url = new_url()
    a, b = start_writer(url, 0, 16, batch=5), start_writer(url, 12, 28, batch=5)  # 12-15: both, equal rows
    outs = [a.communicate()[0], b.communicate()[0]]
    assert a.returncode == 0 and b.returncode == 0, outs
    check_all(url, range(28))
    assert zarr_reads_every_array(url) == sum(len(rows_for(i)) for i in range(0, 16)) + sum(
        len(rows_for(i)) for i in range(12, 28))  # before compaction: every batch segment, overlap twice
    with open_store(url, "a") as store:
        store.compact()
    check_all(url, range(28))
    assert commit_objects(url) == []  # consumed by the new generation
    assert zarr_reads_every_array(url) == sum(len(rows_for(i)) for i in range(28))


def write_batches(url: str, n: int, batch: int) -> None:
    with open_store(url, "a", batch=BatchPolicy(videos=batch)) as store:
        fs = store.create_set(make_info(SET, row_shape=(DIM,)))
        for i in range(n):
            fs.write_video(rows_for(i), VideoMeta(f"v{i:03d}", labels=(i % 5,), split="train"))


def test_torn_or_damaged_commit_objects_are_ignored(s3):
    url = new_url()
    write_batches(url, 8, batch=2)
    objs = commit_objects(url)
    assert len(objs) == 4
    fs3 = s3fs_fs()
    for k, damage in ((1, "truncated"), (2, "bad_checksum"), (3, "missing_record")):
        body = fs3.cat_file(objs[k])
        if damage == "truncated":  # a partial upload
            bad = body[: len(body) // 2]
        elif damage == "bad_checksum":  # one changed byte
            i = body.index(b'"r":') + 4
            bad = body[:i] + (b"9" if body[i:i + 1] != b"9" else b"8") + body[i + 1:]
        else:  # whole lines, one video record short of its count
            bad = b"\n".join(body.split(b"\n")[1:])
        fs3.rm(objs[k])
        fs3.pipe_file(objs[k], bad)
    with open_store(url, "r") as store:
        fs = store.open_set(SET)
        assert sorted(fs.video_ids()) == ["v000", "v001"]  # batches 2-4 ignored, batch 1 read
        for i in (0, 1):
            assert_rows_equal(fs.read(f"v{i:03d}"), rows_for(i), "float32")
        problems = store.validate()
        assert len(problems) == 3 and all("ignore" in p for p in problems)
        assert all(o.rsplit("/", 1)[1] in p for o, p in zip(objs[1:], sorted(problems)))
    write_batches(url, 8, batch=2)  # the rerun writes the ignored batches' videos again
    with open_store(url, "r") as store:
        fs = store.open_set(SET)
        assert len(fs) == 8
        for i, got in enumerate(fs.read_many([f"v{i:03d}" for i in range(8)])):
            assert_rows_equal(got, rows_for(i), "float32")


def test_pointer_switch_is_conditional(s3):
    url = new_url()
    write_batches(url, 4, batch=2)
    key = f"{SET}/_index/CURRENT"
    with open_store(url, "a") as store, open_store(url, "a") as other:
        objects = store.objects
        assert objects.etag(key) is None
        fs = store.open_set(SET)
        fs.write_video(rows_for(10), VideoMeta("v010"))
        stale = objects.etag
        objects.etag = lambda k: None if k == key else stale(k)  # read before the other compaction switched
        other.compact()  # the first compaction: CURRENT created with If-None-Match
        etag = objects.etag
        with pytest.raises(StoreError, match="another compaction"):
            store.compact()  # its If-None-Match fails: nothing of it is kept
        objects.etag = stale
        with pytest.raises(StoreError, match="another compaction"):
            objects.switch_pointer(key, b"{}", '"0123456789abcdef0123456789abcdef"')  # a stale ETag
        assert etag is not None
    with open_store(url, "r") as store:
        assert store.validate() == []
        fs = store.open_set(SET)
        assert sorted(fs.video_ids()) == [f"v{i:03d}" for i in (0, 1, 2, 3, 10)]
        for i, got in zip((0, 1, 2, 3, 10), fs.read_many([f"v{i:03d}" for i in (0, 1, 2, 3, 10)])):
            assert_rows_equal(got, rows_for(i), "float32")
        assert len([s for s in s3fs_fs().ls(f"{url[5:]}/{SET}/segments") if "/c-" in s]) == 1


def test_reads_windows_read_many_and_cache(s3, tmp_path, monkeypatch):
    url = new_url()
    write_batches(url, 20, batch=6)
    with open_store(url, "a") as store:
        store.compact()
    cache = tmp_path / "cache"
    with open_store(url, "r", cache_dir=cache) as store:
        fs = store.open_set(SET)
        ids = [f"v{i:03d}" for i in (13, 2, 19, 2, 7)]
        for vid, got in zip(ids, fs.read_many(ids)):
            assert_rows_equal(got, rows_for(int(vid[1:])), "float32")
        want = rows_for(13)
        w = fs.read("v013", time=(float(want.starts[2]), float(want.starts[4])))
        t0, t1 = float(want.starts[2]), float(want.starts[4])
        np.testing.assert_array_equal(w.feats, want.window(t0, t1).feats)
        assert 0 < len(w) < len(want)
        np.testing.assert_array_equal(fs.read("v013", rows=slice(1, 3)).feats, want.feats[1:3])
        feats, offsets, vids = fs.read_all()
        for k, vid in enumerate(vids):
            np.testing.assert_array_equal(feats[offsets[k]:offsets[k + 1]], rows_for(int(vid[1:])).feats)
        assert any(cache.rglob("0"))  # shard objects kept locally

        def offline(*a, **k):
            raise AssertionError("a cached segment object was fetched again")

        monkeypatch.setattr(store.objects.fs, "cat_ranges", offline)  # a second epoch: the cache folder only
        monkeypatch.setattr(store.objects.fs, "cat_file", offline)
        for vid, got in zip(ids, fs.read_many(ids)):
            assert_rows_equal(got, rows_for(int(vid[1:])), "float32")


def test_credentials_stay_out_of_the_store_and_messages(s3):
    secret = "S3CR3T-" + uuid.uuid4().hex
    url = new_url()
    opts = {"key": "AKIDFEATBANKTEST", "secret": secret}
    with open_store(url, "a", batch=BatchPolicy(videos=2), **opts) as store:
        fs = store.create_set(make_info(SET, row_shape=(DIM,)))
        for i in range(3):
            fs.write_video(rows_for(i), VideoMeta(f"v{i:03d}"))
        store.record_failure(SET, "bad", "decode_crash", "boom")
        with pytest.raises(StoreError) as e:
            store.open_set("nope")
    assert secret not in str(e.value) and "AKIDFEATBANKTEST" not in str(e.value)
    fs3 = s3fs_fs()
    for path in fs3.find(url[5:]):
        data = fs3.cat_file(path)
        assert secret.encode() not in data and b"AKIDFEATBANKTEST" not in data, path
    with open_store(url, "r") as store:  # failure records are objects too (no append on S3)
        assert [f["video_id"] for f in store.failures()] == ["bad"]


def test_an_unreachable_object_store_is_one_clear_error_without_the_secret(s3):
    secret = "S3CR3T-" + uuid.uuid4().hex
    opts = {"key": "AKIDFEATBANKTEST", "secret": secret, "endpoint_url": "http://127.0.0.1:9",  # nothing listens
            "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1}}
    with pytest.raises(StoreError, match="cannot read the object store at 's3://featbank/x.zarr'.*AWS_ENDPOINT_URL") as e:
        open_store("s3://featbank/x.zarr", "r", **opts)
    assert secret not in str(e.value) and "AKIDFEATBANKTEST" not in str(e.value)


@pytest.mark.slow
class TestZarrStoreS3(StoreTests):
    """The shipped conformance suite on S3 (small batches, so every test crosses batch commits)."""

    @pytest.fixture(autouse=True)
    def _server(self, s3):
        yield

    def make_store(self, tmp_path):
        return open_store(new_url(), mode="w", batch=BatchPolicy(videos=3))

    def reopen(self, store):
        store.close()
        return open_store(store.path, mode="a", batch=BatchPolicy(videos=3))
