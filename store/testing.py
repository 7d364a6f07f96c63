"""Reusable conformance suite every ``FeatureStore`` backend passes (zarr's ``StoreTests`` style).

Subclass ``StoreTests`` in a pytest module and implement ``make_store``::

    class TestMyBackend(StoreTests):
        def make_store(self, tmp_path):
            return MyStore(tmp_path / "s")

        def reopen(self, store):            # optional: persisted backends reopen from disk
            return MyStore(store.path)

Every test writes synthetic rows, reads them back and compares exactly.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ._rows import from_bf16_bits, to_bf16_bits
from .base import FAILURE_KEYS, META_COLUMNS, FeatureStore
from .errors import (
    DimensionMismatchError,
    FeatureSetConflictError,
    NonFiniteError,
    StaleFeaturesError,
    UnknownFeatureSetError,
    UnknownVideoError,
    VideoConflictError,
)
from .schema import FeatureSetInfo, VideoMeta, VideoRows

_counter = itertools.count()


def make_rows(n: int, row_shape: tuple[int, ...] = (8,), seed: int = 0, dtype=np.float32) -> VideoRows:
    """Synthetic rows: ``n`` rows of ``row_shape`` with 0.5 s clips every 0.25 s."""
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n, *row_shape)).astype(dtype)
    starts = np.arange(n) * 0.25
    return VideoRows(feats, starts, starts + 0.5, np.stack([np.arange(n) * 4, np.arange(n) * 4 + 7], 1))


def make_info(name: str = "bb/layer/c8", row_shape: tuple[int, ...] = (8,), dtype: str = "float32", **kw) -> FeatureSetInfo:
    """A feature-set description for tests (backbone ``bb``, weights ``w1`` unless given)."""
    kw.setdefault("backbone", "bb")
    kw.setdefault("weights_id", "w1")
    return FeatureSetInfo(name=name, row_shape=row_shape, dtype=dtype, **kw)


def expected_feats(rows: VideoRows, dtype: str) -> np.ndarray:
    """What a reader gets back for ``rows`` written into a set of ``dtype``."""
    if dtype == "bfloat16":
        return from_bf16_bits(to_bf16_bits(rows.feats))
    return rows.feats.astype(dtype)


def assert_rows_equal(got: VideoRows, want: VideoRows, dtype: str) -> None:
    """Exact equality of feats (after the set's dtype cast), times and frame indices."""
    np.testing.assert_array_equal(got.feats, expected_feats(want, dtype))
    np.testing.assert_array_equal(got.starts, want.starts)
    np.testing.assert_array_equal(got.ends, want.ends)
    np.testing.assert_array_equal(got.frame_idx, want.frame_idx)


class StoreTests(ABC):
    """Conformance tests; subclasses implement ``make_store`` (and ``reopen`` when persisted)."""

    @abstractmethod
    def make_store(self, tmp_path: Path) -> FeatureStore:
        """A fresh, empty store (under ``tmp_path`` for persisted backends)."""

    def reopen(self, store: FeatureStore) -> FeatureStore:
        """A fresh handle on the same store (persisted backends close and reopen)."""
        return store

    # ---- feature sets -------------------------------------------------------------
    def test_create_and_open_set(self, tmp_path):
        store = self.make_store(tmp_path)
        fs = store.create_set(make_info("a/b/c"))
        assert fs.name == "a/b/c" and len(fs) == 0
        store.create_set(make_info("other", row_shape=(2, 4)))
        store = self.reopen(store)
        assert store.feature_sets() == ["a/b/c", "other"]
        assert store.open_set("other").info.row_shape == (2, 4)
        assert store.open_set("a/b/c").info.compatible_with(make_info("a/b/c"))

    def test_create_set_is_idempotent_and_detects_conflicts(self, tmp_path):
        store = self.make_store(tmp_path)
        store.create_set(make_info("s"))
        assert store.create_set(make_info("s")).info.compatible_with(make_info("s"))
        with pytest.raises(FeatureSetConflictError, match="row_shape"):
            store.create_set(make_info("s", row_shape=(9,)))
        with pytest.raises(FeatureSetConflictError, match="weights_id"):
            store.create_set(make_info("s", weights_id="w2"))
        with pytest.raises(FeatureSetConflictError):
            store.create_set(make_info("s"), exist_ok=False)

    def test_unknown_set_lists_existing(self, tmp_path):
        store = self.make_store(tmp_path)
        store.create_set(make_info("present"))
        with pytest.raises(UnknownFeatureSetError, match="present"):
            store.open_set("absent")

    def test_delete_set(self, tmp_path):
        store = self.make_store(tmp_path)
        fs = store.create_set(make_info("gone"))
        fs.write_video(make_rows(3), VideoMeta("v"))
        store.create_set(make_info("kept"))
        store.delete_set("gone")
        store = self.reopen(store)
        assert store.feature_sets() == ["kept"]
        with pytest.raises(UnknownFeatureSetError):
            store.open_set("gone")

    # ---- writes and reads ---------------------------------------------------------
    @pytest.mark.parametrize("dtype", ["float16", "float32", "bfloat16"])
    def test_round_trip_dtypes(self, tmp_path, dtype):
        store = self.make_store(tmp_path)
        fs = store.create_set(make_info("s", row_shape=(2, 5), dtype=dtype))
        rows = {f"v{i}": make_rows(n, (2, 5), seed=i) for i, n in enumerate([5, 1, 17])}
        for vid, r in rows.items():
            assert fs.write_video(r, VideoMeta(vid)) is True
        fs = self.reopen(store).open_set("s")
        for vid, r in rows.items():
            got = fs.read(vid)
            assert got.feats.dtype == (np.float32 if dtype == "bfloat16" else np.dtype(dtype))
            assert_rows_equal(got, r, dtype)

    def test_bfloat16_rounding_matches_torch(self, tmp_path):
        torch = pytest.importorskip("torch")
        store = self.make_store(tmp_path)
        fs = store.create_set(make_info("s", row_shape=(64,), dtype="bfloat16"))
        r = make_rows(7, (64,), seed=3)
        fs.write_video(r, VideoMeta("v"))
        want = torch.from_numpy(r.feats).to(torch.bfloat16).to(torch.float32).numpy()
        np.testing.assert_array_equal(self.reopen(store).open_set("s").read("v").feats, want)

    @settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.differing_executors])
    @given(
        counts=st.lists(st.integers(0, 40), min_size=1, max_size=8),
        dim=st.integers(1, 12),
        dtype=st.sampled_from(["float16", "float32", "bfloat16"]),
        data=st.data(),
    )
    def test_ragged_round_trip(self, tmp_path, counts, dim, dtype, data):
        store = self.make_store(tmp_path / f"h{next(_counter)}")
        fs = store.create_set(make_info("rag", row_shape=(dim,), dtype=dtype))
        written = {}
        for i, n in enumerate(counts):
            rows = make_rows(n, (dim,), seed=i)
            fs.write_video(rows, VideoMeta(f"vid-{i}", labels=(i,)))
            written[f"vid-{i}"] = rows
        fs = self.reopen(store).open_set("rag")
        assert fs.video_ids() == list(written)
        # per video, a row slice, a time window
        for vid, rows in written.items():
            assert fs.n_rows(vid) == len(rows)
            assert_rows_equal(fs.read(vid), rows, dtype)
            a = data.draw(st.integers(0, len(rows)))
            b = data.draw(st.integers(a, len(rows)))
            assert_rows_equal(fs.read(vid, rows=slice(a, b)), rows.slice(slice(a, b)), dtype)
            t0 = data.draw(st.floats(-1.0, 12.0))
            t1 = t0 + data.draw(st.floats(0.0, 5.0))
            assert_rows_equal(fs.read(vid, time=(t0, t1)), rows.window(t0, t1), dtype)
        # read_many in the asked order (with repeats)
        order = data.draw(st.lists(st.sampled_from(list(written)), max_size=12))
        for vid, got in zip(order, fs.read_many(order), strict=True):
            assert_rows_equal(got, written[vid], dtype)
        # read_all
        feats, offsets, ids = fs.read_all()
        assert ids == list(written)
        assert offsets[0] == 0 and offsets[-1] == len(feats) == sum(counts)
        assert feats.shape[1:] == (dim,)
        for i, vid in enumerate(ids):
            np.testing.assert_array_equal(feats[offsets[i]:offsets[i + 1]], expected_feats(written[vid], dtype))

    def test_read_rows_and_time_window(self, tmp_path):
        store = self.make_store(tmp_path)
        fs = store.create_set(make_info("s"))
        r = make_rows(10)
        fs.write_video(r, VideoMeta("v"))
        assert_rows_equal(fs.read("v", rows=slice(2, 6)), r.slice(slice(2, 6)), "float32")
        assert_rows_equal(fs.read("v", rows=slice(-3, None)), r.slice(slice(7, 10)), "float32")
        got = fs.read("v", time=(1.0, 1.6))  # rows starting at 0.75 .. 1.5 overlap
        np.testing.assert_array_equal(got.starts, [0.75, 1.0, 1.25, 1.5])
        assert len(fs.read("v", time=(100.0, 200.0))) == 0

    def test_empty_video(self, tmp_path):
        store = self.make_store(tmp_path)
        fs = store.create_set(make_info("s", row_shape=(3, 4)))
        assert fs.write_video(make_rows(0, (3, 4)), VideoMeta("empty")) is True
        fs.write_video(make_rows(2, (3, 4)), VideoMeta("two"))
        fs = self.reopen(store).open_set("s")
        assert "empty" in fs and fs.n_rows("empty") == 0
        got = fs.read("empty")
        assert got.feats.shape == (0, 3, 4) and got.starts.shape == (0,)
        feats, offsets, ids = fs.read_all()
        assert ids == ["empty", "two"] and offsets.tolist() == [0, 0, 2]

    def test_read_many_order_and_unknown(self, tmp_path):
        store = self.make_store(tmp_path)
        fs = store.create_set(make_info("s"))
        rows = {f"v{i}": make_rows(i + 1, seed=i) for i in range(6)}
        for vid, r in rows.items():
            fs.write_video(r, VideoMeta(vid))
        order = ["v5", "v0", "v3", "v0"]
        for vid, got in zip(order, fs.read_many(order)):
            assert_rows_equal(got, rows[vid], "float32")
        with pytest.raises(UnknownVideoError, match="nope"):
            fs.read("nope")
        with pytest.raises(UnknownVideoError):
            fs.read_many(["v1", "nope"])
        assert "nope" not in fs and "v1" in fs

    def test_idempotent_rewrite_and_conflict(self, tmp_path):
        store = self.make_store(tmp_path)
        fs = store.create_set(make_info("s", dtype="float16"))
        r = make_rows(4)
        assert fs.write_video(r, VideoMeta("v", labels=(1,))) is True
        assert fs.write_video(r, VideoMeta("v", labels=(1,))) is False
        other = make_rows(4, seed=9)
        with pytest.raises(VideoConflictError, match="overwrite=True"):
            fs.write_video(other, VideoMeta("v", labels=(1,)))
        with pytest.raises(VideoConflictError):
            fs.write_video(r, VideoMeta("v", labels=(2,)))
        assert_rows_equal(fs.read("v"), r, "float16")
        fs = self.reopen(store).open_set("s")
        assert fs.write_video(r, VideoMeta("v", labels=(1,))) is False
        assert fs.video_ids() == ["v"]

    def test_overwrite(self, tmp_path):
        store = self.make_store(tmp_path)
        fs = store.create_set(make_info("s"))
        fs.write_video(make_rows(4), VideoMeta("a"))
        fs.write_video(make_rows(2, seed=5), VideoMeta("b"))
        new = make_rows(7, seed=1)
        assert fs.write_video(new, VideoMeta("a", split="val"), overwrite=True) is True
        fs = self.reopen(store).open_set("s")
        assert fs.video_ids() == ["a", "b"]
        assert_rows_equal(fs.read("a"), new, "float32")
        assert fs.meta("a").split == "val" and fs.n_rows("a") == 7
        feats, offsets, ids = fs.read_all()
        assert offsets.tolist() == [0, 7, 9]

    def test_dimension_mismatch_writes_nothing(self, tmp_path):
        store = self.make_store(tmp_path)
        fs = store.create_set(make_info("s", row_shape=(8,)))
        with pytest.raises(DimensionMismatchError, match="'bad'.*8"):
            fs.write_video(make_rows(3, (7,)), VideoMeta("bad"))
        with pytest.raises(DimensionMismatchError):
            fs.write_video(make_rows(3, (2, 8)), VideoMeta("bad"))
        assert "bad" not in self.reopen(store).open_set("s")

    def test_non_finite_rejected_unless_allowed(self, tmp_path):
        store = self.make_store(tmp_path)
        fs = store.create_set(make_info("s", dtype="float16"))
        r = make_rows(3)
        r.feats[1, 2] = np.nan
        with pytest.raises(NonFiniteError, match="'nan'"):
            fs.write_video(r, VideoMeta("nan"))
        big = make_rows(2)
        big.feats[0, 0] = 1e6  # overflows float16
        with pytest.raises(NonFiniteError, match="float16"):
            fs.write_video(big, VideoMeta("big"))
        assert len(fs) == 0
        assert fs.write_video(r, VideoMeta("nan"), allow_nonfinite=True) is True
        got = self.reopen(store).open_set("s").read("nan")
        assert np.isnan(got.feats[1, 2]) and np.isfinite(got.feats[0]).all()
        assert self.reopen(store).validate() == []

    # ---- metadata -----------------------------------------------------------------
    def test_metadata_table(self, tmp_path):
        store = self.make_store(tmp_path)
        fs = store.create_set(make_info("s"))
        m0 = VideoMeta("x", source="/data/x.mp4", labels=(3, 5), split="train", domain="ucf",
                       fps=25.0, n_frames=100, duration=4.0)
        m1 = VideoMeta("y")
        fs.write_video(make_rows(2), m0)
        fs.write_video(make_rows(5), m1)
        fs = self.reopen(store).open_set("s")
        assert fs.meta("x") == m0
        assert fs.meta("y").video_id == "y" and math.isnan(fs.meta("y").fps)
        table = fs.metadata()
        assert tuple(table) == META_COLUMNS
        assert table["video_id"].tolist() == ["x", "y"]
        assert table["label"].tolist() == [3, -1]
        assert table["n_rows"].tolist() == [2, 5]
        assert table["source"][0] == "/data/x.mp4" and table["domain"][0] == "ucf"
        with pytest.raises(UnknownVideoError):
            fs.meta("z")

    # ---- staleness ----------------------------------------------------------------
    def test_stale_refusal(self, tmp_path):
        store = self.make_store(tmp_path)
        store.create_set(make_info("old", weights_id="w1")).write_video(make_rows(2), VideoMeta("v"))
        store.create_set(make_info("imported", backbone="", weights_id=""))
        assert store.set_backbone_weights("bb", "w1") == []
        assert store.set_backbone_weights("bb", "w2") == ["old"]
        store = self.reopen(store)
        assert store.backbone_weights() == {"bb": "w2"}
        assert store.is_stale("old") and not store.is_stale("imported")
        with pytest.raises(StaleFeaturesError) as e:
            store.open_set("old")
        msg = str(e.value)
        assert "'old'" in msg and "w1" in msg and "w2" in msg and "allow_stale=True" in msg and "re-extract" in msg
        assert store.open_set("old", allow_stale=True).n_rows("v") == 2
        store.open_set("imported")
        store.set_backbone_weights("bb", "w1")
        assert not self.reopen(store).is_stale("old")

    # ---- failure log --------------------------------------------------------------
    def test_failure_log(self, tmp_path):
        store = self.make_store(tmp_path)
        fs = store.create_set(make_info("s"))
        store.record_failure("s", "v1", "decode_timeout", "took too long")
        store.record_failure("s", "v2", "decode_crash", "segfault")
        store.record_failure("s", "v1", "corrupt", "bad header")
        store.record_failure("t", "v9", "decode_crash", "boom")
        store = self.reopen(store)
        fails = store.failures()
        assert all(tuple(f) == FAILURE_KEYS for f in fails)
        by_key = {(f["set"], f["video_id"]): f for f in fails}
        assert set(by_key) == {("s", "v1"), ("s", "v2"), ("t", "v9")}
        assert by_key[("s", "v1")]["kind"] == "corrupt" and by_key[("s", "v1")]["message"] == "bad header"
        assert {f["video_id"] for f in store.failures("s")} == {"v1", "v2"}
        store.open_set("s").write_video(make_rows(1), VideoMeta("v2"))
        store = self.reopen(store)
        assert {f["video_id"] for f in store.failures("s")} == {"v1"}

    # ---- maintenance --------------------------------------------------------------
    def test_validate_sound_store_and_compact_keeps_values(self, tmp_path):
        store = self.make_store(tmp_path)
        fs = store.create_set(make_info("s", dtype="float16"))
        rows = {f"v{i}": make_rows(3 * i, seed=i) for i in range(8)}
        for i, (vid, r) in enumerate(rows.items()):
            fs.write_video(r, VideoMeta(vid, labels=(i,)))
        fs.write_video(make_rows(5, seed=99), VideoMeta("v3"), overwrite=True)
        rows["v3"] = make_rows(5, seed=99)
        assert store.validate() == []
        store.compact()
        store = self.reopen(store)
        assert store.validate() == []
        fs = store.open_set("s")
        assert fs.video_ids() == list(rows)
        for vid, r in rows.items():
            assert_rows_equal(fs.read(vid), r, "float16")
        fs.write_video(make_rows(4, seed=7), VideoMeta("after"))
        assert_rows_equal(self.reopen(store).open_set("s").read("after"), make_rows(4, seed=7), "float16")
