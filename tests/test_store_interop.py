"""Import/export round trips (npy folders, HDF5) and bad-input errors of store/interop.py."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from featbank.store import (
    FeatureSetInfo,
    ImportFormatError,
    StoreError,
    VideoConflictError,
    VideoMeta,
    VideoRows,
)
from featbank.store.interop import SIDECAR, export_hdf5, export_npy, import_hdf5, import_npy
from featbank.store.memory import MemoryStore

SET = "i3d-rgb-k400/Mixed_5c/c16s8"


def _info(dtype: str = "float16", row_shape=(6,), name: str = SET) -> FeatureSetInfo:
    return FeatureSetInfo(
        name=name,
        row_shape=row_shape,
        dtype=dtype,
        level="clip",
        backbone="i3d-rgb-k400",
        weights_id="ab" * 32,
        endpoint="Mixed_5c",
        spec={"clip_len": 16, "frame_stride": 1, "target_fps": 25.0, "feature_dim": row_shape[-1]},
        sampling={"window": 16, "stride": 8, "fps_policy": "resample"},
        extra={"note": "synthetic"},
    )


def _fill(fs, n_videos: int = 5, seed: int = 0) -> dict[str, tuple[VideoRows, VideoMeta]]:
    """Write ragged synthetic videos (ids with '/', an empty video, multi-labels)."""
    rng = np.random.default_rng(seed)
    written = {}
    for i in range(n_videos):
        n = [3, 0, 7, 1, 4][i % 5]
        vid = f"class_{i % 2}/video {i}" if i % 2 else f"v{i:03d}"
        feats = rng.standard_normal((n, *fs.info.row_shape)).astype(np.float32)
        starts = np.arange(n) * 0.32 + 0.01 * i
        rows = VideoRows(feats, starts, starts + 0.64, np.stack([np.arange(n) * 8, np.arange(n) * 8 + 15], 1))
        meta = VideoMeta(
            vid,
            source=f"/data/{vid}.mp4",
            labels=(i, i + 10) if i == 2 else (i,),
            split="train" if i < 3 else "val",
            domain="ucf" if i % 2 else "hmdb",
            fps=25.0 if i != 4 else math.nan,
            n_frames=100 + i,
            duration=4.0 + i,
        )
        fs.write_video(rows, meta)
        written[vid] = (fs.read(vid), fs.meta(vid))
    return written


def _assert_same_set(a, b) -> None:
    assert a.video_ids() == b.video_ids()
    info_a, info_b = a.info.to_dict(), b.info.to_dict()
    info_a.pop("name"), info_b.pop("name")
    assert info_a == info_b
    for vid in a.video_ids():
        ra, rb = a.read(vid), b.read(vid)
        assert ra.feats.dtype == rb.feats.dtype
        assert ra.equals(rb), vid
        assert a.meta(vid).to_dict().keys() == b.meta(vid).to_dict().keys()
        for k, v in a.meta(vid).to_dict().items():
            w = b.meta(vid).to_dict()[k]
            assert (isinstance(v, float) and math.isnan(v) and math.isnan(w)) or v == w, (vid, k)


def _new_store(kind: str, tmp_path, tag: str):
    """A fresh store of one backend: in-memory, a local Zarr folder, or a Zarr store at a memory:// URL."""
    from featbank.store import open_store

    if kind == "memory":
        return MemoryStore()
    if kind == "zarr":
        return open_store(tmp_path / f"{tag}.zarr", mode="w")
    return open_store(f"memory://interop-{tmp_path.name}-{tag}.zarr", mode="w")


@pytest.mark.parametrize("backend", ["memory", "zarr", "zarr-memory-url"])
@pytest.mark.parametrize("dtype,row_shape", [("float16", (6,)), ("float32", (2, 3)), ("bfloat16", (5,))])
@pytest.mark.parametrize("fmt", ["npy", "hdf5"])
def test_round_trip_is_exact(tmp_path, fmt, dtype, row_shape, backend):
    src = _new_store(backend, tmp_path, "src")
    fs = src.create_set(_info(dtype, row_shape))
    _fill(fs)
    dst = _new_store(backend, tmp_path, "dst")
    if fmt == "npy":
        rep = export_npy(fs, tmp_path / "out")
        assert (tmp_path / "out" / "class_1" / "video 1.npy").is_file()
        assert np.load(tmp_path / "out" / "v000.npy").dtype == (np.float32 if dtype == "bfloat16" else np.dtype(dtype))
        got = import_npy(dst, tmp_path / "out", "copy")
    else:
        rep = export_hdf5(fs, tmp_path / "out.h5")
        with h5py.File(tmp_path / "out.h5", "r") as f:
            assert f["class_1/video 1"].attrs["split"] == "train"
            assert list(f["v002"].attrs["labels"]) == [2, 12]
        got = import_hdf5(dst, tmp_path / "out.h5", "copy")
    assert rep.n_videos == 5 and rep.n_rows == 15
    assert got.exact and got.written == 5 and got.unchanged == 0 and got.dtype == dtype
    _assert_same_set(fs, dst.open_set("copy"))
    # importing again is a no-op
    again = (import_npy(dst, tmp_path / "out", "copy") if fmt == "npy" else import_hdf5(dst, tmp_path / "out.h5", "copy"))
    assert again.written == 0 and again.unchanged == 5


def test_export_refuses_existing_target_and_leaves_no_temp(tmp_path):
    fs = MemoryStore().create_set(_info())
    _fill(fs, 2)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    for overwrite in (False, True):  # a folder of other files is never replaced, not even with overwrite
        with pytest.raises(StoreError, match="not written by a featbank export"):
            export_npy(fs, tmp_path / "out", overwrite=overwrite)
    assert (tmp_path / "out" / "keep.txt").read_text() == "x"
    export_npy(fs, tmp_path / "new")
    with pytest.raises(StoreError, match="already exists"):
        export_npy(fs, tmp_path / "new")
    export_npy(fs, tmp_path / "new", overwrite=True)  # an earlier export is replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "out"]  # no temporary folder left


def test_plain_npy_folder_imports_with_row_index_timestamps(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {"a": rng.standard_normal((4, 8)).astype(np.float32), "sub/b": rng.standard_normal((2, 8)).astype(np.float32)}
    for vid, arr in arrays.items():
        (tmp_path / "src" / vid).parent.mkdir(parents=True, exist_ok=True)
        np.save(tmp_path / "src" / f"{vid}.npy", arr)
    np.save(tmp_path / "src" / "c.npy", rng.standard_normal(8).astype(np.float32))  # (D,) -> one row
    store = MemoryStore()
    rep = import_npy(store, tmp_path / "src", "plain", labels={"a": 3, "sub/b": [1, 2]}, split="test", row_seconds=0.5)
    assert not rep.exact and rep.written == 3 and rep.dtype == "float32" and rep.row_shape == (8,)
    fs = store.open_set("plain")
    assert fs.video_ids() == ["a", "c", "sub/b"]
    for vid, arr in arrays.items():
        rows = fs.read(vid)
        np.testing.assert_array_equal(rows.feats, arr)
        np.testing.assert_array_equal(rows.starts, np.arange(len(arr)) * 0.5)
        np.testing.assert_array_equal(rows.ends, np.arange(1, len(arr) + 1) * 0.5)
        assert (rows.frame_idx == -1).all()
    assert fs.read("c").feats.shape == (1, 8)
    assert fs.meta("a").labels == (3,) and fs.meta("sub/b").labels == (1, 2) and fs.meta("c").label == -1
    assert fs.meta("a").split == "test"
    assert fs.info.sampling["row_seconds"] == 0.5


def test_plain_float16_folder_keeps_float16(tmp_path):
    (tmp_path / "src").mkdir()
    arr = np.arange(12, dtype=np.float16).reshape(3, 4)
    np.save(tmp_path / "src" / "x.npy", arr)
    store = MemoryStore()
    assert import_npy(store, tmp_path / "src", "s").dtype == "float16"
    np.testing.assert_array_equal(store.open_set("s").read("x").feats, arr)


def test_mixed_dims_error_names_files_and_commits_nothing(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        np.save(src / f"ok{i}.npy", np.zeros((2, 16), np.float32))
    np.save(src / "odd.npy", np.zeros((2, 32), np.float32))
    store = MemoryStore()
    with pytest.raises(ImportFormatError) as e:
        import_npy(store, src, "s")
    msg = str(e.value)
    assert "odd.npy" in msg and "(32,)" in msg and "(16,)" in msg and "ok0.npy" in msg
    assert store.feature_sets() == []


def test_dim_check_against_existing_set(tmp_path):
    store = MemoryStore()
    fs = store.create_set(_info("float32", (6,)))
    _fill(fs, 2)
    before = {v: fs.read(v) for v in fs.video_ids()}
    src = tmp_path / "src"
    src.mkdir()
    np.save(src / "new1.npy", np.zeros((2, 6), np.float32))
    np.save(src / "new2.npy", np.zeros((2, 7), np.float32))
    np.save(src / "new3.npy", np.zeros((2, 7), np.float32))
    with pytest.raises(ImportFormatError, match=r"new2\.npy.*new3\.npy|new3\.npy.*new2\.npy") as e:
        import_npy(store, src, SET)
    assert "(6,)" in str(e.value)
    (src / "new1.npy").unlink()
    with pytest.raises(ImportFormatError, match=r"row shape \(6,\).*new2\.npy"):
        import_npy(store, src, SET, require_existing=True)
    with pytest.raises(ImportFormatError, match="does not exist"):
        import_npy(store, src, "missing/set", require_existing=True)
    with pytest.raises(ImportFormatError, match="expected feature dim 6"):
        import_npy(store, src, "other", expect_dim=6)
    assert store.feature_sets() == [SET]
    assert set(fs.video_ids()) == set(before)
    for v, rows in before.items():
        assert fs.read(v).equals(rows)
    # a good folder appends to the existing set
    for p in src.iterdir():
        p.unlink()
    np.save(src / "new4.npy", np.ones((3, 6), np.float32))
    rep = import_npy(store, src, SET, require_existing=True)
    assert rep.written == 1 and fs.n_rows("new4") == 3 and len(fs) == 3


def test_nonfinite_rows_rejected_unless_allowed(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    np.save(src / "good.npy", np.zeros((2, 4), np.float32))
    bad = np.zeros((5, 4), np.float32)
    bad[3, 1] = np.nan
    np.save(src / "bad.npy", bad)
    store = MemoryStore()
    with pytest.raises(ImportFormatError, match=r"bad\.npy.*row 3"):
        import_npy(store, src, "s")
    assert store.feature_sets() == []
    big = np.full((1, 4), 1e6, np.float32)  # overflows float16
    np.save(src / "bad.npy", big)
    with pytest.raises(ImportFormatError, match="overflow float16"):
        import_npy(store, src, "s", dtype="float16")
    bad_f16 = bad.astype(np.float16)
    np.save(src / "bad.npy", bad_f16)
    rep = import_npy(store, src, "s", allow_nonfinite=True)
    assert rep.written == 2 and np.isnan(store.open_set("s").read("bad").feats[3, 1])


def test_conflicting_video_named_and_nothing_written(tmp_path):
    store = MemoryStore()
    fs = store.create_set(_info("float32"))
    _fill(fs, 3)
    export_npy(fs, tmp_path / "out")
    arr = np.load(tmp_path / "out" / "v002.npy")
    arr[0, 0] += 1
    np.save(tmp_path / "out" / "v002.npy", arr)
    other = MemoryStore()
    import_npy(other, tmp_path / "out", SET)  # fresh store: fine
    with pytest.raises(VideoConflictError, match="v002"):
        import_npy(store, tmp_path / "out", SET)
    assert not np.array_equal(fs.read("v002").feats, arr)
    import_npy(store, tmp_path / "out", SET, overwrite=True)
    np.testing.assert_array_equal(fs.read("v002").feats, arr)


def test_sidecar_errors_name_the_culprit(tmp_path):
    fs = MemoryStore().create_set(_info())
    _fill(fs, 3)
    export_npy(fs, tmp_path / "out")
    np.save(tmp_path / "out" / "stray.npy", np.zeros((1, 6), np.float16))
    with pytest.raises(ImportFormatError, match="stray.npy"):
        import_npy(MemoryStore(), tmp_path / "out", "x")
    (tmp_path / "out" / "stray.npy").unlink()
    (tmp_path / "out" / "v000.npy").unlink()
    with pytest.raises(ImportFormatError, match="v000.npy"):
        import_npy(MemoryStore(), tmp_path / "out", "x")
    side = json.loads((tmp_path / "out" / SIDECAR).read_text())
    side["format_version"] = 99
    (tmp_path / "out" / SIDECAR).write_text(json.dumps(side))
    with pytest.raises(ImportFormatError, match="newer"):
        import_npy(MemoryStore(), tmp_path / "out", "x")


def test_plain_hdf5_and_non_numeric_dataset(tmp_path):
    path = tmp_path / "plain.h5"
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((3, 5)).astype(np.float32), rng.standard_normal((6, 5)).astype(np.float64)
    with h5py.File(path, "w") as f:
        f["vid_a"] = a
        f["group/vid_b"] = b
    store = MemoryStore()
    rep = import_hdf5(store, path, "h", labels={"vid_a": 1})
    assert rep.written == 2 and rep.dtype == "float32" and not rep.exact
    fs = store.open_set("h")
    assert sorted(fs.video_ids()) == ["group/vid_b", "vid_a"]
    np.testing.assert_array_equal(fs.read("vid_a").feats, a)
    np.testing.assert_array_equal(fs.read("group/vid_b").feats, b.astype(np.float32))
    assert fs.meta("vid_a").label == 1
    with h5py.File(path, "a") as f:
        f["names/titles"] = np.array([b"a", b"b"])
    with pytest.raises(ImportFormatError, match=r"names/titles.*not numeric"):
        import_hdf5(MemoryStore(), path, "h2")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(ImportFormatError, match="junk.h5"):
        import_hdf5(MemoryStore(), tmp_path / "junk.h5", "h3")


def test_hdf5_mixed_dims_names_datasets(tmp_path):
    path = tmp_path / "mixed.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros((2, 4), np.float32)
        f["y"] = np.zeros((2, 5), np.float32)
    store = MemoryStore()
    with pytest.raises(ImportFormatError, match=r"mixed row shapes.*mixed\.h5:/x.*mixed\.h5:/y|mixed row shapes.*:/y.*:/x"):
        import_hdf5(store, path, "m")
    assert store.feature_sets() == []


def test_failed_import_into_zarr_commits_nothing(tmp_path):
    store = _new_store("zarr", tmp_path, "s")
    fs = store.create_set(_info("float32"))
    _fill(fs, 3)
    before = {v: fs.read(v) for v in fs.video_ids()}
    src = tmp_path / "src"
    src.mkdir()
    np.save(src / "a.npy", np.zeros((2, 6), np.float32))
    bad = np.zeros((2, 6), np.float32)
    bad[1, 1] = np.inf
    np.save(src / "b.npy", bad)
    with pytest.raises(ImportFormatError, match="b.npy"):
        import_npy(store, src, SET)
    with pytest.raises(ImportFormatError, match="b.npy"):
        import_npy(store, src, "fresh/set")
    store.close()
    from featbank.store import open_store

    with open_store(tmp_path / "s.zarr", mode="r") as again:
        assert again.feature_sets() == [SET]
        fs = again.open_set(SET)
        assert fs.video_ids() == list(before) and all(fs.read(v).equals(r) for v, r in before.items())
        assert again.validate() == []


def test_hdf5_group_per_video_with_key(tmp_path):
    """ActivityNet-style files: /VIDEO_ID/c3d_features, other datasets ignored."""
    path = tmp_path / "anet.h5"
    feats = {"v_abc": np.arange(10, dtype=np.float32).reshape(2, 5), "v_def": np.ones((3, 5), np.float32)}
    with h5py.File(path, "w") as f:
        for vid, arr in feats.items():
            f[f"{vid}/c3d_features"] = arr
            f[f"{vid}/names"] = np.array([b"x"])  # non-numeric, but not the selected key
    store = MemoryStore()
    rep = import_hdf5(store, path, "anet", key="c3d_features", row_seconds=0.5)
    assert rep.written == 2
    fs = store.open_set("anet")
    assert sorted(fs.video_ids()) == ["v_abc", "v_def"]
    for vid, arr in feats.items():
        np.testing.assert_array_equal(fs.read(vid).feats, arr)
    with pytest.raises(ImportFormatError, match="no dataset named 'missing'"):
        import_hdf5(MemoryStore(), path, "x", key="missing")


_ID_PART = st.text(alphabet="abcXYZ019_- .", min_size=1, max_size=6).filter(lambda p: p.strip(".") != "" and p not in ("_featbank",))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    videos=st.dictionaries(
        st.lists(_ID_PART, min_size=1, max_size=2).map("/".join), st.integers(0, 6), min_size=1, max_size=5
    ),
    fmt=st.sampled_from(["npy", "hdf5"]),
    dtype=st.sampled_from(["float16", "float32", "bfloat16"]),
)
def test_round_trip_property(tmp_path_factory, videos, fmt, dtype):
    """Any ragged set whose ids are valid relative paths (no id a folder of another) survives export + import."""
    ids = sorted(videos)
    assume(not any(b.startswith(a + "/") for a in ids for b in ids))
    tmp = tmp_path_factory.mktemp("prop")
    fs = MemoryStore().create_set(_info(dtype, (3,)))
    rng = np.random.default_rng(len(ids))
    for vid in ids:
        n = videos[vid]
        t = np.sort(rng.uniform(0, 10, n))
        fs.write_video(VideoRows(rng.standard_normal((n, 3)) * 100, t, t + 0.5), VideoMeta(vid, labels=(n,)))
    dst = MemoryStore()
    if fmt == "npy":
        export_npy(fs, tmp / "out")
        import_npy(dst, tmp / "out", "copy")
    else:
        export_hdf5(fs, tmp / "out.h5")
        import_hdf5(dst, tmp / "out.h5", "copy")
    _assert_same_set(fs, dst.open_set("copy"))
