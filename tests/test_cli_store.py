"""``featbank store info|validate|import|export|compact|explain`` end to end on a Zarr store."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from featbank.experiments.cli import main
from featbank.store import FeatureSetInfo, VideoMeta, VideoRows, open_store

SET = "i3d-rgb-k400/Mixed_5c/c16s8"
WEIGHTS = "ab" * 32


def _rows(i: int, n: int) -> VideoRows:
    rng = np.random.default_rng(i)
    feats = rng.standard_normal((n, 8)).astype(np.float32)
    starts = np.arange(n) * 0.32
    frames = np.stack([np.arange(n) * 8, np.arange(n) * 8 + 15], axis=1)
    return VideoRows(feats, starts, starts + 0.64, frames)


@pytest.fixture()
def store_path(tmp_path) -> Path:
    """A store with one clip-level set of 4 ragged videos, one failure, one stale-able backbone."""
    path = tmp_path / "feats.zarr"
    with open_store(path, mode="w") as store:
        fs = store.create_set(
            FeatureSetInfo(
                name=SET, row_shape=(8,), dtype="float16", backbone="i3d-rgb-k400", weights_id=WEIGHTS,
                endpoint="Mixed_5c", spec={"clip_len": 16, "frame_stride": 1, "target_fps": 25.0},
                sampling={"window": 16, "stride": 8},
            )
        )
        store.set_backbone_weights("i3d-rgb-k400", WEIGHTS)
        for i, n in enumerate([5, 3, 0, 9]):
            meta = VideoMeta(f"cls{i % 2}/v{i}", source=f"/clips/v{i}.mp4", labels=(i,), split="train",
                             fps=25.0, n_frames=8 * n + 8, duration=(8 * n + 8) / 25.0)
            fs.write_video(_rows(i, n), meta)
        store.record_failure(SET, "broken", "decode_crash", "moov atom not found")
    return path


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["store", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_info_json_fields(store_path, capsys):
    code, out, _ = _run(capsys, "info", str(store_path), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["bytes_on_disk"] > 0 and report["files"] > 0
    (s,) = report["feature_sets"]
    assert s["name"] == SET and s["n_videos"] == 4 and s["n_rows"] == 17
    assert s["row_shape"] == [8] and s["dim"] == 8 and s["dtype"] == "float16" and s["level"] == "clip"
    assert s["bytes"] == 17 * 8 * 2 and 0 < s["bytes_on_disk"] <= report["bytes_on_disk"]
    assert s["stale"] is False and s["provenance"]["weights_id"] == WEIGHTS
    assert s["provenance"]["sampling"] == {"window": 16, "stride": 8}
    assert report["n_failures"] == 1 and report["failures"][0]["video_id"] == "broken"
    code, text, _ = _run(capsys, "info", str(store_path))
    assert code == 0 and SET in text and "videos 4, rows 17" in text and "decode_crash" in text


def test_info_shows_stale(store_path, capsys):
    with open_store(store_path, mode="a") as store:
        assert store.set_backbone_weights("i3d-rgb-k400", "cd" * 32) == [SET]
    _, out, _ = _run(capsys, "info", str(store_path), "--json")
    assert json.loads(out)["feature_sets"][0]["stale"] is True
    _, text, _ = _run(capsys, "info", str(store_path))
    assert "STALE" in text


def test_validate_exit_codes(store_path, capsys):
    code, out, _ = _run(capsys, "validate", str(store_path))
    assert code == 0 and "sound" in out
    # damage the stored values: fill every Zarr chunk file (default v3 keys ".../c/...") with 0xFF (NaN in float16)
    chunks = [p for p in store_path.rglob("*") if p.is_file() and "c" in p.relative_to(store_path).parts[:-1]]
    assert chunks
    for p in chunks:
        p.write_bytes(b"\xff" * p.stat().st_size)
    code, out, err = _run(capsys, "validate", str(store_path))
    assert code == 1, out + err
    assert "problem" in out and SET in out


@pytest.mark.parametrize("cmd", ["info", "validate", "compact"])
def test_not_a_store_is_one_line_error(tmp_path, capsys, cmd):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("not a store")
    for path in (tmp_path / "nothing_here", tmp_path / "folder"):
        code, _, err = _run(capsys, cmd, str(path))
        assert code == 1 and err.count("\n") == 1 and "error" in err and str(path) in err, err
    assert not (tmp_path / "nothing_here").exists()


@pytest.mark.parametrize("fmt,out_name", [("npy", "out_npy"), ("hdf5", "out.h5")])
def test_export_import_round_trip(store_path, tmp_path, capsys, fmt, out_name):
    out = tmp_path / out_name
    code, msg, _ = _run(capsys, "export", fmt, str(store_path), "--set", SET, str(out))
    assert code == 0 and "4 video(s), 17 rows" in msg
    if fmt == "npy":
        assert (out / "cls1" / "v1.npy").is_file()
    copy = tmp_path / "copy.zarr"
    code, msg, _ = _run(capsys, "import", fmt, str(out), str(copy), "--set", "copied")
    assert code == 0 and "4 video(s) written" in msg and "exact" in msg
    with open_store(store_path, mode="r") as a, open_store(copy, mode="r") as b:
        fa, fb = a.open_set(SET), b.open_set("copied")
        assert fa.video_ids() == fb.video_ids()
        ia, ib = fa.info.to_dict(), fb.info.to_dict()
        ia.pop("name"), ib.pop("name")
        assert ia == ib
        for vid in fa.video_ids():
            assert fa.read(vid).equals(fb.read(vid)) and fb.read(vid).feats.dtype == np.float16
            assert fa.meta(vid).to_dict() == fb.meta(vid).to_dict()
    # exporting onto an existing target is refused with one line
    code, _, err = _run(capsys, "export", fmt, str(store_path), "--set", SET, str(out))
    assert code == 1 and "already exists" in err


def test_import_plain_npy_with_dim_check(store_path, tmp_path, capsys):
    src = tmp_path / "plain"
    src.mkdir()
    np.save(src / "new_a.npy", np.ones((2, 8), np.float32))
    np.save(src / "new_b.npy", np.ones((3, 7), np.float32))
    code, _, err = _run(capsys, "import", "npy", str(src), str(store_path), "--set", SET, "--dim-check")
    assert code == 1 and "new_b.npy" in err and "new_a.npy" in err  # mixed dims: both groups named
    (src / "new_b.npy").unlink()
    np.save(src / "new_c.npy", np.full((1, 8), 2.0, np.float32))
    (src / "labels.txt").write_text("new_a 3\nnew_c 1,2\n")
    code, _, err = _run(capsys, "import", "npy", str(src), str(store_path), "--set", "other", "--dim-check")
    assert code == 1 and "does not exist" in err
    code, msg, _ = _run(capsys, "import", "npy", str(src), str(store_path), "--set", SET, "--dim-check",
                        "--labels", str(src / "labels.txt"), "--row-seconds", "0.5", "--split", "test")
    assert code == 0 and "2 video(s) written" in msg
    with open_store(store_path, mode="r") as store:
        fs = store.open_set(SET)
        assert len(fs) == 6 and fs.meta("new_c").labels == (1, 2) and fs.meta("new_a").split == "test"
        np.testing.assert_array_equal(fs.read("new_c").ends, [0.5])
    code, _, err = _run(capsys, "import", "npy", str(src), str(tmp_path / "x.zarr"), "--set", "s", "--dim-check", "16")
    assert code == 1 and "expected feature dim 16" in err


def test_import_non_numeric_hdf5_commits_nothing(store_path, tmp_path, capsys):
    import h5py

    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f["good"] = np.zeros((2, 8), np.float32)
        f["names"] = np.array([b"a", b"b"])
    code, _, err = _run(capsys, "import", "hdf5", str(tmp_path / "bad.h5"), str(store_path), "--set", SET)
    assert code == 1 and "bad.h5:/names" in err and "not numeric" in err
    with open_store(store_path, mode="r") as store:
        assert "good" not in store.open_set(SET)


def test_compact_keeps_values(store_path, capsys):
    with open_store(store_path, mode="r") as store:
        before = {v: store.open_set(SET).read(v) for v in store.open_set(SET).video_ids()}
    code, msg, _ = _run(capsys, "compact", str(store_path))
    assert code == 0 and "compacted" in msg
    assert _run(capsys, "validate", str(store_path))[0] == 0
    with open_store(store_path, mode="r") as store:
        fs = store.open_set(SET)
        assert list(before) == fs.video_ids()
        assert all(fs.read(v).equals(r) for v, r in before.items())


def test_explain(store_path, capsys):
    code, out, _ = _run(capsys, "explain", str(store_path), "--set", SET, "cls1/v3", "2", "--json")
    assert code == 0
    e = json.loads(out)
    assert e["row"] == 2 and e["n_rows"] == 9
    assert math.isclose(e["start"], 0.64) and math.isclose(e["end"], 1.28)
    assert e["frames"] == [16, 31] and e["frames_time"] == [16 / 25.0, 32 / 25.0]
    assert e["sampling"] == {"window": 16, "stride": 8} and e["spec"]["clip_len"] == 16
    assert e["video"]["source"] == "/clips/v3.mp4" and e["stale"] is False
    code, text, _ = _run(capsys, "explain", str(store_path), "--set", SET, "cls1/v3", "-1")
    assert code == 0 and "row 8 of 9" in text and "64 .. 79" in text
    code, _, err = _run(capsys, "explain", str(store_path), "--set", SET, "cls1/v3", "9")
    assert code == 1 and "out of range" in err
    code, _, err = _run(capsys, "explain", str(store_path), "--set", SET, "nope", "0")
    assert code == 1 and "nope" in err


def test_console_script_help_lists_subcommands():
    exe = Path(sys.executable).with_name("featbank")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "featbank.experiments.cli"]
    out = subprocess.run([*cmd, "store", "--help"], capture_output=True, text=True, check=True).stdout
    for sub in ("info", "validate", "import", "export", "compact", "explain"):
        assert sub in out
    for sub in ("info", "validate", "import", "export", "compact", "explain"):
        text = subprocess.run([*cmd, "store", sub, "--help"], capture_output=True, text=True, check=True).stdout
        assert "example" in text and "featbank store " + sub in text
