"""`featbank extract --store s3://... --shard I/N` (an array job's tasks) then `featbank store compact s3://...`.

Each task runs as its own process (as on separate machines) against a local S3 server; the
rows must equal those of one unsharded run into a local folder.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_extract_job import write_video
from test_extract_job_procs import assert_same_sets

from featbank.store import open_store, s3server

pytestmark = [
    pytest.mark.slow,  # three extraction processes, ~30-40 s
    pytest.mark.skipif(not s3server.available(),
                       reason=f"the local S3 server is not installed: pip install '{s3server.SERVER_PACKAGE}' s3fs "
                              "(part of the dev extras: pip install -e '.[dev]')"),
]

SET = "x3d-xs/conv5/c4s4"


def featbank(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "featbank.experiments.cli", *args], capture_output=True, text=True)


def extract(videos: Path, store: str, *extra: str) -> subprocess.CompletedProcess:
    return featbank("extract", "--manifest", str(videos / "list.txt"), "--root", str(videos), "--store", store,
                    "--backbone", "x3d-xs", "--weights", "random", "--clip-len", "4", "--fps", "source",
                    "--device", "cpu", "--workers", "0", "--timeout", "0", "--no-progress", "--runtime", "torch",
                    "--precision", "fp32", "resize=40", "crop=32", "frame_stride=1", "dtype=float32", "threads=1",
                    *extra)


def test_array_job_into_s3_then_compact_equals_a_local_run(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for i, n in enumerate([5, 23, 40, 17]):
        write_video(videos / f"v{i}.mp4", n)
    (videos / "list.txt").write_text("".join(f"v{i}.mp4 {i}\n" for i in range(4)))
    local = tmp_path / "local.zarr"
    r = extract(videos, str(local))
    assert r.returncode == 0, r.stderr
    with s3server.local_s3("feats"):
        url = "s3://feats/k.zarr"
        for task in ("0/2", "1/2"):  # an array job's tasks
            r = extract(videos, url, "--shard", task)
            assert r.returncode == 0 and "2 written" in r.stdout, r.stderr
        r = extract(videos, url, "--shard", "1/2")  # a rerun skips what is committed
        assert r.returncode == 0 and "0 written, 2 already committed" in r.stdout, r.stdout + r.stderr
        r = featbank("store", "compact", url)
        assert r.returncode == 0 and "compacted s3://feats/k.zarr" in r.stdout, r.stderr
        r = featbank("store", "validate", url)
        assert r.returncode == 0, r.stdout + r.stderr
        assert_same_sets(url, local, SET)  # same videos, rows, times and metadata; the s3 store validates
        with open_store(url, "r") as s3_store:
            got = s3_store.open_set(SET)
            assert sorted(got.video_ids()) == ["v0", "v1", "v2", "v3"]
            assert s3_store.failures() == []
            assert "feats/k.zarr" in got.info.sampling["config"]["store"]
