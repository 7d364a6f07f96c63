"""Property: one damaged byte anywhere in a small store is harmless, reported or refused; never silent.

For a store in both layouts (writer segments with commit logs, and compacted), a seeded
loop changes one byte of one file (every file at least once, then random files; each
trial on a fresh copy) and requires one of:

* ``validate()`` reports a problem, or
* a reader refuses with a ``StoreError`` (one clear line on the CLI, no traceback), or
* everything a reader sees equals the original: the set list, provenance, video ids,
  every video's rows, times, frame indices and metadata.

Any other exception type, or a different value with a clean ``validate()``, fails.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from featbank.store import FeatureSetInfo, StoreError, VideoMeta, VideoRows, open_store

SET = "bb/feats"
TRIALS = 15  # random trials per layout on top of one per file (the slow test runs 400)


def _rows(i: int) -> VideoRows:
    rng = np.random.default_rng(i)
    n = 1 + i % 5
    feats = rng.standard_normal((n, 6)).astype(np.float32)
    starts = np.arange(n) * 0.25 + i
    return VideoRows(feats, starts, starts + 0.5, np.stack([np.arange(n) * 2, np.arange(n) * 2 + 3], 1))


def _build(path: Path, compact: bool) -> None:
    info = FeatureSetInfo(SET, (6,), "float16", backbone="bb", weights_id="w1", sampling={"stride": 2})
    with open_store(path, mode="w") as st:
        st.set_backbone_weights("bb", "w1")
        fs = st.create_set(info)
        for i in range(4):
            fs.write_video(_rows(i), VideoMeta(f"v{i}", source=f"/c/v{i}.mp4", labels=(i,), fps=25.0))
        st.record_failure(SET, "bad", "decode_crash", "x")
    with open_store(path, mode="a") as st:  # a second writer segment
        fs = st.open_set(SET)
        for i in range(4, 7):
            fs.write_video(_rows(i), VideoMeta(f"v{i}", source=f"/c/v{i}.mp4", labels=(i % 3,), split="test"))
        if compact:
            st.compact()


def _view(path: Path) -> dict:
    """Everything a reader sees (raises StoreError when refused)."""
    with open_store(path, mode="r") as st:
        out = {"sets": st.feature_sets(), "weights": st.backbone_weights()}
        fs = st.open_set(SET)
        out["info"] = fs.info.to_dict()
        out["ids"] = fs.video_ids()
        out["videos"] = {}
        for vid, rows in zip(fs.video_ids(), fs.read_many(fs.video_ids())):
            one = fs.read(vid)
            assert one.equals(rows)
            out["videos"][vid] = (rows, fs.meta(vid).to_dict())
        feats, offsets, ids = fs.read_all()
        out["all"] = (feats.tobytes(), offsets.tolist(), ids)
    return out


def _same(a: dict, b: dict) -> bool:
    if {k: a[k] for k in ("sets", "weights", "info", "ids", "all")} != {k: b[k] for k in ("sets", "weights", "info", "ids", "all")}:
        return False
    for vid, (rows, meta) in a["videos"].items():
        rows_b, meta_b = b["videos"][vid]
        if not rows.equals(rows_b) or repr(meta) != repr(meta_b):
            return False
    return True


def _files(root: Path) -> list[Path]:
    return sorted(Path(d) / f for d, _, fs in os.walk(root) for f in fs if os.path.getsize(Path(d) / f))


def _outcome(path: Path, original: dict) -> str:
    try:
        with open_store(path, mode="r") as st:
            problems = st.validate()
    except StoreError:
        return "refused"
    if problems:
        return "reported"
    try:
        seen = _view(path)
    except StoreError:
        return "refused"
    return "harmless" if _same(seen, original) else "SILENT"


@pytest.mark.parametrize("compact", [False, True], ids=["logs", "compacted"])
def test_single_byte_damage_is_never_silent(tmp_path, compact):
    counts = _trials(tmp_path, compact, TRIALS, seed=20261130)
    # the loop exercised both sides: damage that matters was caught, damage that does not was harmless
    assert counts.get("reported", 0) + counts.get("refused", 0) > 0 and counts.get("harmless", 0) > 0, counts


@pytest.mark.slow
@pytest.mark.parametrize("compact", [False, True], ids=["logs", "compacted"])
def test_single_byte_damage_is_never_silent_many(tmp_path, compact):
    _trials(tmp_path, compact, 400, seed=7)


def _trials(tmp_path: Path, compact: bool, n_random: int, seed: int) -> dict[str, int]:
    clean = tmp_path / "clean.zarr"
    _build(clean, compact)
    original = _view(clean)
    files = _files(clean)
    rng = random.Random(seed + compact)
    trials = [(f, None) for f in files] + [(rng.choice(files), None) for _ in range(n_random)]
    counts: dict[str, int] = {}
    work = tmp_path / "work.zarr"
    for k, (f, _) in enumerate(trials):
        rel = f.relative_to(clean)
        size = f.stat().st_size
        offset = rng.randrange(size)
        flip = rng.randrange(1, 256)
        if work.exists():
            shutil.rmtree(work)
        shutil.copytree(clean, work)
        with open(work / rel, "r+b") as fh:
            fh.seek(offset)
            b = fh.read(1)[0]
            fh.seek(offset)
            fh.write(bytes([b ^ flip]))
        try:
            result = _outcome(work, original)
        except Exception as e:  # a traceback instead of a clear StoreError
            raise AssertionError(f"trial {k}: byte {offset} of {rel} ^ {flip:#x}: {type(e).__name__}: {e}") from e
        assert result != "SILENT", f"trial {k}: byte {offset} of {rel} ^ {flip:#x} changed values silently"
        counts[result] = counts.get(result, 0) + 1
    return counts
