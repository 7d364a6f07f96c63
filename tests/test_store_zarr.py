"""Zarr backend specifics: on-disk format, schema version, other Zarr readers, corruption detection."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import zarr

from featbank.store import (
    SCHEMA_VERSION,
    CorruptDataError,
    NotAStoreError,
    SchemaVersionError,
    StoreError,
    VideoMeta,
    open_store,
)
from featbank.store.testing import assert_rows_equal, make_info, make_rows


def _fill(store, name="s", n_videos=20, row_shape=(16,), dtype="float16", **kw):
    fs = store.create_set(make_info(name, row_shape=row_shape, dtype=dtype), **kw)
    rows = {f"v{i:03d}": make_rows(int(i % 7) * 3 + 1, row_shape, seed=i) for i in range(n_videos)}
    for vid, r in rows.items():
        fs.write_video(r, VideoMeta(vid, labels=(i % 5 for i in [len(r)])))
    return fs, rows


def _files(root: Path) -> list[Path]:
    return [Path(d) / f for d, _, fs in os.walk(root) for f in fs]


# ---- opening ------------------------------------------------------------------------------
def test_schema_version_recorded_and_newer_refused(tmp_path):
    path = tmp_path / "s.zarr"
    open_store(path, mode="w").close()
    meta = json.loads((path / "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta["node_type"] == "group"
    assert meta["attributes"]["featbank"]["schema_version"] == SCHEMA_VERSION
    meta["attributes"]["featbank"]["schema_version"] = SCHEMA_VERSION + 1
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(SchemaVersionError, match="upgrade featbank"):
        open_store(path, mode="r")


def test_not_a_store_named(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(NotAStoreError, match="missing"):
        open_store(missing, mode="r")
    assert not missing.exists()
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("precious")
    for mode in ("a", "w", "r"):
        with pytest.raises(NotAStoreError, match="junk"):
            open_store(junk, mode=mode)
    assert (junk / "notes.txt").read_text() == "precious"
    plain = tmp_path / "plain.zarr"
    zarr.open_group(str(plain), mode="w")
    with pytest.raises(NotAStoreError, match="plain.zarr"):
        open_store(plain, mode="a")
    empty = tmp_path / "empty"
    empty.mkdir()
    open_store(empty, mode="a").close()  # an empty folder may become a store
    assert open_store(empty, mode="r").feature_sets() == []


def test_modes(tmp_path):
    path = tmp_path / "s.zarr"
    with open_store(path, mode="a") as st:
        _fill(st)
    with open_store(path, mode="r") as st:
        fs = st.open_set("s")
        assert len(fs) == 20
        with pytest.raises(StoreError, match="read-only"):
            fs.write_video(make_rows(2, (16,)), VideoMeta("new"))
        with pytest.raises(StoreError, match="read-only"):
            st.set_backbone_weights("bb", "x")
    with open_store(path, mode="w") as st:  # w wipes an existing store
        assert st.feature_sets() == []
    with pytest.raises(ValueError, match="mode"):
        open_store(path, mode="x")


def test_file_url_and_closed_store(tmp_path):
    st = open_store(f"file://{tmp_path / 'u.zarr'}", mode="w")
    _fill(st, n_videos=3)
    st.close()
    with pytest.raises(StoreError, match="closed"):
        st.feature_sets()
    assert len(open_store(tmp_path / "u.zarr", mode="r").open_set("s")) == 3


# ---- format -----------------------------------------------------------------------------
def test_zarr_python_reads_segments_identically(tmp_path):
    path = tmp_path / "s.zarr"
    st = open_store(path, mode="w")
    fs, rows = _fill(st, row_shape=(3, 8), n_videos=30)
    st.close()

    def check_with_zarr():
        st = open_store(path, mode="r")
        fs = st.open_set("s")
        root = zarr.open_group(str(path), mode="r")
        idx = fs.index
        for i, vid in enumerate(idx.ids):
            seg = root[f"s/segments/{idx.segments[idx.seg[i]]}"]
            a, b = idx.row[i], idx.row[i] + idx.n[i]
            np.testing.assert_array_equal(seg["feats"][a:b], fs.read(vid).feats)
            np.testing.assert_array_equal(seg["times"][a:b, 0], rows[vid].starts)
            np.testing.assert_array_equal(seg["frame_idx"][a:b], rows[vid].frame_idx)
            assert seg["feats"].metadata.dimension_names[0] == "row"
        st.close()

    check_with_zarr()  # writer segments
    with open_store(path) as st:
        st.compact()
    check_with_zarr()  # the compacted, read-optimised segment
    with open_store(path, mode="r") as st:
        assert st.validate() == []


def test_compacted_layout_is_few_sharded_files(tmp_path):
    path = tmp_path / "s.zarr"
    with open_store(path, mode="w") as st:
        fs, rows = _fill(st, n_videos=300, row_shape=(64,))
        st.compact()
        assert st.open_set("s").compact() is False  # already compact
    files = _files(path)
    assert len(files) <= 16 < len(rows)
    assert not any(f.suffix == ".partial" for f in files)
    segs = [s for s in os.listdir(path / "s" / "segments") if s != "zarr.json"]
    assert len(segs) == 1 and segs[0].startswith("c-")
    feats = zarr.open_array(str(path / "s" / "segments" / segs[0] / "feats"))
    assert feats.shape[0] == sum(len(r) for r in rows.values())
    assert feats.shards is not None and feats.shards[0] >= feats.shape[0] > feats.chunks[0]  # one shard file


def test_bfloat16_stored_as_raw_bits(tmp_path):
    path = tmp_path / "s.zarr"
    with open_store(path, mode="w") as st:
        fs = st.create_set(make_info("bf", row_shape=(8,), dtype="bfloat16"))
        r = make_rows(5, (8,))
        fs.write_video(r, VideoMeta("v"))
        st.compact()
    root = zarr.open_group(str(path), mode="r")
    assert root["bf"].attrs["featbank_set"]["dtype"] == "bfloat16"
    seg = [k for k in root["bf/segments"].group_keys()][0]
    bits = root[f"bf/segments/{seg}/feats"][:5]
    assert bits.dtype == np.uint16
    with open_store(path, mode="r") as st:
        got = st.open_set("bf").read("v").feats
    np.testing.assert_array_equal((bits.astype(np.uint32) << 16).view(np.float32), got)


@pytest.mark.parametrize("compression", ["lz4", "zstd", "gzip"])
def test_compressed_sets_round_trip(tmp_path, compression):
    path = tmp_path / "s.zarr"
    with open_store(path, mode="w") as st:
        fs, rows = _fill(st, compression=compression)
        seg = fs._segment(fs.index.segments[0])
        assert not seg.fast and seg.direct  # zarr-python writes, direct decoding reads
        for i in range(5):  # read right after each write: the rewritten shard file is remapped
            r = make_rows(3 + i, (16,), seed=100 + i)
            fs.write_video(r, VideoMeta(f"late{i}"))
            rows[f"late{i}"] = r
            assert_rows_equal(fs.read(f"late{i}"), r, "float16")
            assert_rows_equal(fs.read("v000"), rows["v000"], "float16")
        assert st.validate() == []
        st.compact()
    with open_store(path, mode="r") as st:
        fs = st.open_set("s")
        assert fs.layout.compression == compression
        for vid, got in zip(rows, fs.read_many(list(rows))):
            assert_rows_equal(got, rows[vid], "float16")
        assert st.validate() == []
    with pytest.raises(ValueError, match="compression"):
        open_store(tmp_path / "t.zarr", mode="w").create_set(make_info("x"), compression="snappy-ish")


def test_staleness_persisted_in_root_attributes(tmp_path):
    path = tmp_path / "s.zarr"
    with open_store(path, mode="w") as st:
        _fill(st)
        assert st.set_backbone_weights("bb", "w9") == ["s"]
    attrs = zarr.open_group(str(path), mode="r").attrs.asdict()
    assert attrs["featbank_backbone_weights"] == {"bb": "w9"}
    with open_store(path, mode="r") as st:
        assert st.is_stale("s")


def test_set_names_with_slashes_and_nesting_refused(tmp_path):
    from featbank.store import FeatureSetConflictError

    with open_store(tmp_path / "s.zarr", mode="w") as st:
        st.create_set(make_info("i3d/Mixed_5c/c64s32"))
        st.create_set(make_info("i3d/Mixed_4f/c64s32"))
        with pytest.raises(FeatureSetConflictError, match="nest"):
            st.create_set(make_info("i3d/Mixed_5c/c64s32/more"))
        with pytest.raises(FeatureSetConflictError):
            st.create_set(make_info("i3d/Mixed_5c"))
        with pytest.raises(ValueError, match="_"):
            st.create_set(make_info("_featbank/x"))
        assert st.feature_sets() == ["i3d/Mixed_4f/c64s32", "i3d/Mixed_5c/c64s32"]


# ---- crash leftovers and corruption ---------------------------------------------------------
def test_torn_commit_record_is_ignored(tmp_path):
    path = tmp_path / "s.zarr"
    with open_store(path, mode="w") as st:
        fs, rows = _fill(st, n_videos=5)
    log = next((path / "s" / "_commits").iterdir())
    good = log.read_bytes()
    log.write_bytes(good + b'{"v":"ghost","s":"w-x","r":0,"n":3,"m":{}')  # killed mid-line
    with open_store(path, mode="r") as st:
        assert st.open_set("s").video_ids() == list(rows) and st.validate() == []
    with open_store(path, mode="a") as st:
        st.open_set("s").write_video(make_rows(2, (16,)), VideoMeta("after"))  # a new writer segment, unaffected
    with open_store(path, mode="r") as st:
        assert st.open_set("s").n_rows("after") == 2 and st.validate() == []


def test_complete_commit_line_with_bad_checksum_is_damage(tmp_path):
    """Only an incomplete last line is a torn write; a whole line that fails its checksum is damage."""
    path = tmp_path / "s.zarr"
    with open_store(path, mode="w") as st:
        fs, rows = _fill(st, n_videos=5)
    log = next((path / "s" / "_commits").iterdir())
    good = log.read_bytes()
    bad_crc = good.splitlines()[0].rsplit(b"\t", 1)[0] + b"\t00000000\n"
    log.write_bytes(good + bad_crc)
    with open_store(path, mode="r") as st:
        with pytest.raises(CorruptDataError, match="line 6.*'v000'.*--salvage"):
            st.open_set("s").video_ids()
        assert any("line 6" in p for p in st.validate())
    with open_store(path, mode="r", salvage=True) as st:
        assert st.open_set("s").video_ids() == list(rows)[1:]  # v000's latest state is unknown: left out
        assert any("'v000'" in line for line in st.salvage_report())


def _video_location(path: Path, vid: str):
    with open_store(path, mode="r") as st:
        fs = st.open_set("s")
        i = fs.index.pos[vid]
        seg = fs.index.segments[fs.index.seg[i]]
        return seg, fs.index.row[i], fs.index.n[i], fs._segment(seg)


def test_validate_names_video_with_nan_injected(tmp_path):
    path = tmp_path / "s.zarr"
    with open_store(path, mode="w") as st:
        _fill(st, n_videos=12)
        st.compact()
    seg, row, n, s = _video_location(path, "v005")
    shard = path / "s" / "segments" / seg / "feats" / "c" / "0" / "0"
    with open(shard, "r+b") as f:
        f.seek((row + 1) * s.row_bytes + 2 * 3)
        f.write(np.array([np.nan], np.float16).tobytes())
    with open_store(path, mode="r") as st:
        problems = st.validate()
    assert len(problems) == 2 and all("'v005'" in p for p in problems)
    assert "checksum" in problems[0] and "NaN" in problems[1]


def test_validate_names_videos_of_truncated_shard(tmp_path):
    path = tmp_path / "s.zarr"
    with open_store(path, mode="w") as st:
        fs, rows = _fill(st, n_videos=12)
    seg, row, n, _ = _video_location(path, "v003")
    shard = path / "s" / "segments" / seg / "feats" / "c" / "0" / "0"
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(size // 2)
    with open_store(path, mode="r") as st:
        problems = st.validate()
    assert problems and any("'v003'" in p for p in problems)
    # a missing times chunk is reported too
    os.remove(shard)
    with open_store(path, mode="r") as st:
        assert any("'v003'" in p for p in st.validate())


def test_validate_reports_bad_times(tmp_path):
    path = tmp_path / "s.zarr"
    with open_store(path, mode="w") as st:
        _fill(st, n_videos=4)
        st.compact()
    seg, row, n, _ = _video_location(path, "v002")
    arr = zarr.open_array(str(path / "s" / "segments" / seg / "times"), mode="r+")
    arr[row] = [5.0, 1.0]  # ends before it starts
    with open_store(path, mode="r") as st:
        problems = st.validate()
    assert len(problems) == 2 and all("'v002'" in p for p in problems)
    assert "checksum" in problems[0] and "ends before" in problems[1]


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_fsync_mode_round_trip(tmp_path, compression):
    path = tmp_path / "s.zarr"
    with open_store(path, mode="w", fsync=True) as st:
        fs, rows = _fill(st, n_videos=6, compression=compression)
        st.record_failure("s", "bad", "corrupt", "x")
    with open_store(path, mode="r") as st:
        fs = st.open_set("s")
        for vid, r in rows.items():
            assert_rows_equal(fs.read(vid), r, "float16")
        assert st.validate() == [] and st.failures()[0]["video_id"] == "bad"


def test_fsync_mode_video_spanning_many_files(tmp_path):
    """A durable write touching more files than the writer keeps open flushes every one of them."""
    path = tmp_path / "s.zarr"
    rows = make_rows(200, (8,), seed=3)  # rows_per_chunk=1: writer shards of 16 rows -> 13+ files
    with open_store(path, mode="w", fsync=True) as st:
        fs = st.create_set(make_info("s", (8,), "float32"), rows_per_chunk=1)
        fs.write_video(rows, VideoMeta("long"))
    with open_store(path, mode="r") as st:
        assert_rows_equal(st.open_set("s").read("long"), rows, "float32")
        assert st.validate() == []


def test_large_reads_match_zarr(tmp_path):
    """Reads of 1 MiB and more take the memory-map path; both paths agree with zarr-python."""
    path = tmp_path / "s.zarr"
    rows = {f"big{i}": make_rows(300 + 50 * i, (1024,), seed=i) for i in range(3)}
    with open_store(path, mode="w") as st:
        fs = st.create_set(make_info("s", row_shape=(1024,), dtype="float32"))
        for vid, r in rows.items():
            fs.write_video(r, VideoMeta(vid))
        for vid, r in rows.items():  # writer segment: large reads before compaction
            assert_rows_equal(fs.read(vid), r, "float32")
        st.compact()
    with open_store(path, mode="r") as st:
        fs = st.open_set("s")
        feats, offsets, ids = fs.read_all()  # one multi-MiB read
        assert feats.nbytes > 3 << 20
        for i, vid in enumerate(ids):
            np.testing.assert_array_equal(feats[offsets[i]:offsets[i + 1]], rows[vid].feats)
            assert_rows_equal(fs.read(vid, rows=slice(1, None)), rows[vid].slice(slice(1, None)), "float32")
        assert st.validate() == []
