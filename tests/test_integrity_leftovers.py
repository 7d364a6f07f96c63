"""Failed commands leave nothing new behind: no empty store, no half-created set, no orphan segment."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from featbank.experiments.cli import main
from featbank.store import CorruptDataError, FeatureSetInfo, VideoMeta, VideoRows, open_store
from featbank.store._files import Files
from featbank.store._segments import Layout, Segment


def _tree(root: Path) -> list[str]:
    return sorted(str(Path(d, f).relative_to(root)) for d, _, fs in os.walk(root) for f in fs)


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def _mixed_npy(folder: Path) -> Path:
    folder.mkdir()
    np.save(folder / "a.npy", np.ones((3, 8), np.float32))
    np.save(folder / "b.npy", np.ones((2, 4), np.float32))  # another dim: the import fails before writing
    return folder


def test_failed_import_leaves_no_store(tmp_path, capsys):
    target = tmp_path / "new.zarr"
    code, err = _run(capsys, "store", "import", "npy", str(tmp_path / "missing"), str(target), "--set", "x")
    assert code == 1 and "does not exist" in err and not target.exists()
    code, err = _run(capsys, "store", "import", "hdf5", str(tmp_path / "missing.h5"), str(target), "--set", "x")
    assert code == 1 and "does not exist" in err and not target.exists()
    src = _mixed_npy(tmp_path / "mixed")
    code, err = _run(capsys, "store", "import", "npy", str(src), str(target), "--set", "x")
    assert code == 1 and "mixed row shapes" in err and not target.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _ = _run(capsys, "store", "import", "npy", str(src), str(empty), "--set", "x")
    assert code == 1 and empty.is_dir() and not any(empty.iterdir())  # the empty folder stays as it was


def test_failed_import_into_existing_store_leaves_it_unchanged(tmp_path, capsys):
    store = tmp_path / "s.zarr"
    with open_store(store, mode="w") as st:
        st.create_set(FeatureSetInfo("kept", (8,), "float32")).write_video(
            VideoRows(np.ones((2, 8), np.float32), [0.0, 1.0], [1.0, 2.0]), VideoMeta("v"))
    before = _tree(store)
    src = _mixed_npy(tmp_path / "mixed")
    code, _ = _run(capsys, "store", "import", "npy", str(src), str(store), "--set", "deep/new/set")
    assert code == 1 and _tree(store) == before  # neither the set nor its parent groups remain


def _store_with_logs(path: Path) -> None:
    with open_store(path, mode="w") as st:
        fs = st.create_set(FeatureSetInfo("s", (8,), "float32"))
        for i in range(6):
            fs.write_video(VideoRows(np.full((3, 8), i, np.float32), [0.0, 1, 2], [1.0, 2, 3]), VideoMeta(f"v{i}"))


def test_failed_compact_leaves_no_orphan_segment(tmp_path, capsys, monkeypatch):
    path = tmp_path / "s.zarr"
    _store_with_logs(path)
    before = _tree(path)
    real = Files.write_atomic

    def fail_on_switch(self, key, data):
        if key.endswith("_index/CURRENT"):
            raise OSError(28, "No space left on device")
        return real(self, key, data)

    monkeypatch.setattr(Files, "write_atomic", fail_on_switch)
    with open_store(path, mode="a") as st:
        with pytest.raises(OSError, match="No space"):
            st.compact()
    monkeypatch.undo()
    assert _tree(path) == before  # no new segment, no index files
    # damaged rows: compaction refuses (it would carry the damage over) and leaves nothing either
    (seg,) = [s for s in (path / "s" / "segments").iterdir() if s.is_dir()]
    with open(seg / "feats" / "c" / "0" / "0", "r+b") as f:
        f.seek(4 * 8 * 3 + 1)
        f.write(b"\x55")
    before = _tree(path)
    code, err = _run(capsys, "store", "compact", str(path))
    assert code == 1 and "'v1'" in err and "checksum" in err and _tree(path) == before


def test_compact_removes_orphans_of_an_interrupted_compaction(tmp_path, capsys):
    path = tmp_path / "s.zarr"
    _store_with_logs(path)
    with open_store(path, mode="a") as st:  # what a compaction killed before its switch leaves
        fs = st.open_set("s")
        Segment.create(st.zstore, "s/segments/c-0-orphan", (8,), np.dtype("float32"), fs.layout, st.local_root,
                       18, fs.layout.rows_per_chunk).write(0, np.ones((18, 8), np.float32), np.zeros((18, 2)),
                                                           np.zeros((18, 2), np.int64))
    code = main(["store", "validate", str(path)])
    out = capsys.readouterr().out
    assert code == 0 and "c-0-orphan" in out and "not referenced" in out  # a note, not damage
    assert main(["store", "compact", str(path)]) == 0
    assert "c-0-orphan" not in os.listdir(path / "s" / "segments")
    with open_store(path, mode="r") as st:
        assert [float(st.open_set("s").read(f"v{i}").feats[0, 0]) for i in range(6)] == list(range(6))
    # a store compacted before, whose pointer then disappeared, is damage, not an orphan to remove
    os.remove(path / "s" / "_index" / "CURRENT")
    with open_store(path, mode="a") as st:
        with pytest.raises(CorruptDataError, match="CURRENT is missing"):
            st.compact()
    assert len([s for s in os.listdir(path / "s" / "segments") if s.startswith("c-")]) == 1


def test_layout_default_is_unchanged_by_checksums():
    """Checksums live in the commit records: the on-disk row layout is the same as before."""
    lay = Layout.default(8 * 4)
    assert lay.rows_per_chunk == 1024 and lay.write_rows_per_shard == 16 * 1024
