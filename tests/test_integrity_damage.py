"""Deliberate damage, run through the CLI: nothing is lost, nothing is silently wrong.

Each test applies one kind of damage (or a dangerous command), runs the command a user
would run, and asserts the exit code, the one-line message and that no data was lost.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import numpy as np
import pytest

from featbank.experiments.cli import main
from featbank.store import CorruptDataError, FeatureSetInfo, VideoMeta, VideoRows, open_store

SET = "s"
N = 20


def rows_for(i: int) -> VideoRows:
    rng = np.random.default_rng(i)
    n = 1 + i % 4
    feats = rng.standard_normal((n, 8)).astype(np.float32)
    starts = np.arange(n) * 0.5
    return VideoRows(feats, starts, starts + 1.0, np.stack([np.arange(n) * 4, np.arange(n) * 4 + 7], 1))


def build(path: Path, compact: bool) -> None:
    with open_store(path, mode="w") as st:
        fs = st.create_set(FeatureSetInfo(SET, (8,), "float32", backbone="bb", weights_id="w1"))
        for i in range(N):
            fs.write_video(rows_for(i), VideoMeta(f"v{i:02d}", labels=(i % 3,), fps=25.0))
        if compact:
            st.compact()


def expect_all(path: Path, ids: list[str] | None = None) -> None:
    """The store reads back exactly what was written (all videos, or ``ids``)."""
    with open_store(path, mode="r") as st:
        fs = st.open_set(SET)
        want = ids if ids is not None else [f"v{i:02d}" for i in range(N)]
        assert fs.video_ids() == want
        for vid in want:
            assert fs.read(vid).equals(rows_for(int(vid[1:])))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.fixture()
def store(tmp_path) -> Path:
    path = tmp_path / "s.zarr"
    build(path, compact=False)
    return path


@pytest.fixture()
def compacted(tmp_path) -> Path:
    path = tmp_path / "c.zarr"
    build(path, compact=True)
    return path


def _log(path: Path) -> Path:
    (log,) = (path / SET / "_commits").iterdir()
    return log


# ---- export --overwrite never destroys what it did not write ------------------------------------
def test_export_overwrite_never_replaces_the_store_itself(store, capsys):
    for fmt in ("npy", "hdf5"):
        code, _, err = run(capsys, "store", "export", fmt, str(store), "--set", SET, str(store), "--overwrite")
        assert code == 1 and "featbank store" in err and "choose a path outside it" in err
        code, _, err = run(capsys, "store", "export", fmt, str(store), "--set", SET, str(store / SET), "--overwrite")
        assert code == 1 and "inside" in err
    expect_all(store)


def test_export_overwrite_never_replaces_foreign_files(store, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    code, _, err = run(capsys, "store", "export", "npy", str(store), "--set", SET, str(folder), "--overwrite")
    assert code == 1 and "not written by a featbank export" in err
    assert (folder / "precious.txt").read_text() == "keep me"
    # hdf5 never replaces a folder (empty or not), nor a file another tool wrote
    empty = tmp_path / "empty"
    empty.mkdir()
    for target in (folder, empty):
        code, _, err = run(capsys, "store", "export", "hdf5", str(store), "--set", SET, str(target), "--overwrite")
        assert code == 1 and "never replaces a folder" in err and target.is_dir()
    other = tmp_path / "other.h5"
    other.write_bytes(b"not mine")
    code, _, err = run(capsys, "store", "export", "hdf5", str(store), "--set", SET, str(other), "--overwrite")
    assert code == 1 and "not written by a featbank export" in err and other.read_bytes() == b"not mine"


def test_export_overwrite_replaces_an_earlier_export(store, tmp_path, capsys):
    for fmt, name in (("npy", "out"), ("hdf5", "out.h5")):
        out = tmp_path / name
        assert run(capsys, "store", "export", fmt, str(store), "--set", SET, str(out))[0] == 0
        code, _, err = run(capsys, "store", "export", fmt, str(store), "--set", SET, str(out))
        assert code == 1 and "--overwrite" in err
        assert run(capsys, "store", "export", fmt, str(store), "--set", SET, str(out), "--overwrite")[0] == 0
    # an export folder with a file added by hand is no longer only an export: refused
    (tmp_path / "out" / "notes.txt").write_text("mine")
    code, _, err = run(capsys, "store", "export", "npy", str(store), "--set", SET, str(tmp_path / "out"), "--overwrite")
    assert code == 1 and (tmp_path / "out" / "notes.txt").read_text() == "mine"


# ---- commit-log damage ----------------------------------------------------------------------------
def test_damaged_commit_line_is_refused_reported_and_salvaged(store, tmp_path, capsys):
    log = _log(store)
    data = bytearray(log.read_bytes())
    line2 = data.index(b"\n") + 1
    data[line2 + 10] ^= 0x01  # one bad byte on line 2 (video v01's record), not the last line
    log.write_bytes(bytes(data))
    for cmd in (["store", "info", str(store)], ["store", "export", "npy", str(store), "--set", SET, str(tmp_path / "x")]):
        code, _, err = run(capsys, *cmd)
        assert code == 1 and "line 2" in err and "--salvage" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()  # no empty export
    code, out, err = run(capsys, "store", "validate", str(store))
    assert code == 1 and "line 2" in out and "v01" in err  # the salvage summary names what is lost
    code, out, err = run(capsys, "store", "export", "npy", str(store), "--set", SET, str(tmp_path / "rescued"), "--salvage")
    assert code == 0 and "19 video(s)" in out and "'v01'" in err
    with open_store(store, mode="r", salvage=True) as st:
        fs = st.open_set(SET)
        assert fs.video_ids() == [f"v{i:02d}" for i in range(N) if i != 1]
        for vid in fs.video_ids():
            assert fs.read(vid).equals(rows_for(int(vid[1:])))
    with pytest.raises(ValueError, match="mode='r'"):
        open_store(store, mode="a", salvage=True)


def test_torn_last_line_is_not_damage(store, capsys):
    log = _log(store)
    log.write_bytes(log.read_bytes() + b'{"v":"v99","s":"w-x","r":0,')  # a writer killed mid-append
    code, out, _ = run(capsys, "store", "validate", str(store))
    assert code == 0 and "sound" in out
    expect_all(store)
    # a whole last record that only lost its newline is intact (its checksum proves it): kept
    data = log.read_bytes()
    log.write_bytes(data[: data.rindex(b"\n")])
    assert run(capsys, "store", "validate", str(store))[0] == 0
    expect_all(store)


def test_missing_current_pointer_of_compacted_store(compacted, tmp_path, capsys):
    (compacted / SET / "_index" / "CURRENT").unlink()
    code, _, err = run(capsys, "store", "info", str(compacted))
    assert code == 1 and "CURRENT is missing" in err and "compacted" in err
    code, out, _ = run(capsys, "store", "validate", str(compacted))
    assert code == 1 and "CURRENT is missing" in out
    code, out, err = run(capsys, "store", "export", "npy", str(compacted), "--set", SET, str(tmp_path / "r"), "--salvage")
    assert code == 0 and f"{N} video(s)" in out and "its own checksums verify" in err  # nothing lost
    with open_store(compacted, mode="r", salvage=True) as st:
        assert len(st.open_set(SET)) == N


@pytest.mark.parametrize("what", ["npz", "meta.json", "json"])
def test_damaged_compacted_index_files(compacted, tmp_path, capsys, what):
    (f,) = [p for p in (compacted / SET / "_index").iterdir()
            if p.name.endswith("." + what) and (what != "json" or not p.name.endswith(".meta.json"))]
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x20
    f.write_bytes(bytes(data))
    code, _, err = run(capsys, "store", "info", str(compacted))
    assert code == 1 and "_index/" in err and len(err.strip().splitlines()) == 1
    code, out, _ = run(capsys, "store", "validate", str(compacted))
    assert code == 1 and "_index/" in out
    code, out, err = run(capsys, "store", "export", "npy", str(compacted), "--set", SET, str(tmp_path / "r"), "--salvage")
    assert code == 0 and "0 video(s)" in out and "lost" in err  # everything was compacted: said, not hidden


# ---- row data damage --------------------------------------------------------------------------------
def _shard(path: Path) -> Path:
    (seg,) = [s for s in (path / SET / "segments").iterdir() if s.is_dir()]
    return seg / "feats" / "c" / "0" / "0"


def test_flipped_feature_bytes_name_exactly_the_changed_videos(compacted, capsys):
    with open_store(compacted, mode="r") as st:
        fs = st.open_set(SET)
        i = fs.index.pos["v07"]
        row, rb = fs.index.row[i], 8 * 4
    with open(_shard(compacted), "r+b") as f:
        f.seek(row * rb + 5)
        f.write(b"\x7f")
    code, out, _ = run(capsys, "store", "validate", str(compacted))
    assert code == 1 and "'v07'" in out and "checksum" in out and out.count("  - ") == 1
    assert run(capsys, "store", "validate", str(compacted), "--quick")[0] == 0  # --quick reads no values


def test_missing_times_chunk_is_an_error(compacted, capsys):
    (seg,) = [s for s in (compacted / SET / "segments").iterdir() if s.is_dir()]
    os.remove(seg / "times" / "c" / "0" / "0")
    for quick in ([], ["--quick"]):
        code, out, _ = run(capsys, "store", "validate", str(compacted), *quick)
        assert code == 1 and "times/c/0" in out and "missing" in out
    with open_store(compacted, mode="r") as st:
        with pytest.raises(CorruptDataError, match="times/c/0"):
            st.open_set(SET).read("v03")  # never zeros in place of timestamps


def test_old_store_without_checksums_stays_readable(store, capsys):
    """Commit records written before checksums (no ``"c"``): read as before, validate notes it."""
    log = _log(store)
    lines = []
    for line in log.read_bytes().splitlines():
        rec = json.loads(line.rsplit(b"\t", 1)[0])
        rec.pop("c")
        body = json.dumps(rec, separators=(",", ":")).encode()
        lines.append(body + b"\t" + f"{zlib.crc32(body):08x}".encode() + b"\n")
    log.write_bytes(b"".join(lines))
    code, out, _ = run(capsys, "store", "validate", str(store))
    assert code == 0 and "sound" in out and "carry no checksum" in out
    expect_all(store)
    assert run(capsys, "store", "compact", str(store))[0] == 0
    expect_all(store)


def test_old_compacted_store_without_checksums_stays_readable(compacted, capsys):
    """A compacted index written before checksums: no crc in CURRENT, the document or the npz."""
    idx = compacted / SET / "_index"
    gen = json.loads((idx / "CURRENT").read_text())["gen"]
    (idx / "CURRENT").write_text(json.dumps({"gen": gen}))
    doc = json.loads((idx / f"{gen}.json").read_text())
    doc.pop("npz_crc"), doc.pop("meta_crc")
    (idx / f"{gen}.json").write_text(json.dumps(doc))
    with np.load(idx / f"{gen}.npz") as z:
        arrays = {k: z[k] for k in z.files if k != "crc"}
    with open(idx / f"{gen}.npz", "wb") as f:
        np.savez(f, **arrays)
    os.remove(next((compacted / SET / "segments").glob("c-*/featbank_live")))
    code, out, _ = run(capsys, "store", "validate", str(compacted))
    assert code == 0 and "sound" in out and "no checksums" in out and f"{N} of {N} video(s) carry no checksum" in out
    expect_all(compacted)
