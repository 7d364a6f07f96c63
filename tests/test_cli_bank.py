"""`featbank bank build|query|eval` on a Zarr store written by the test, and experiments.bank_eval."""

from __future__ import annotations

import json

import numpy as np
import pytest

from featbank.experiments.bank_eval import evaluate_bank
from featbank.experiments.cli import main
from featbank.store import FeatureSetInfo, MemoryStore, VideoMeta, VideoRows, open_store
from featbank.store.bank import FaissBank, default_bank_dir

SET = "enc/pool"
DIM = 8
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def one_faiss_thread():
    """One OpenMP thread (deterministic faiss; spinning threads stall on a loaded machine)."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def _write_set(store, n_videos: int = 24, seed: int = 0):
    """Videos whose rows sit near a class centre: label = v % 3; every 4th video is in the test split."""
    rng = np.random.default_rng(seed)
    centres = 5 * rng.normal(size=(3, DIM)).astype(np.float32)
    fs = store.create_set(FeatureSetInfo(name=SET, row_shape=(DIM,), dtype="float32", backbone="bb", weights_id="w1"))
    store.set_backbone_weights("bb", "w1")
    for v in range(n_videos):
        n = 2 + v % 3
        feats = centres[v % 3] + rng.normal(size=(n, DIM)).astype(np.float32)
        t = np.arange(n, dtype=np.float64)
        fs.write_video(VideoRows(feats, t, t + 1), VideoMeta(f"v{v:02d}", labels=(v % 3,),
                                                              split="test" if v % 4 == 0 else "train"))
    return fs


@pytest.fixture()
def store_path(tmp_path):
    path = tmp_path / "feats.zarr"
    with open_store(path, mode="w") as store:
        _write_set(store)
    return path


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(map(str, argv)))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_build_query_video_and_vectors(store_path, tmp_path, capsys):
    code, out, _ = _run(capsys, "bank", "build", store_path, "--set", SET, "--json")
    assert code == 0
    info = json.loads(out)
    assert info["index"] == "Flat" and info["n"] == sum(2 + v % 3 for v in range(24))
    assert info["path"] == str(default_bank_dir(store_path, SET))
    assert not (store_path / "banks").exists()

    code, out, _ = _run(capsys, "bank", "query", store_path, "--set", SET, "--video", "v05", "-k", "3", "--json")
    lines = [json.loads(x) for x in out.splitlines()]
    assert code == 0 and len(lines) == 2 + 5 % 3  # one query per row
    for r, rec in enumerate(lines):
        assert rec["query"] == {"video": "v05", "row": r}
        first = rec["neighbours"][0]
        assert (first["video"], first["row"], first["label"]) == ("v05", r, 2)
        assert first["score"] == pytest.approx(1.0, abs=1e-5)
        assert set(first) == {"video", "row", "label", "score"} and len(rec["neighbours"]) == 3

    code, out, _ = _run(capsys, "bank", "query", store_path, "--set", SET, "--video", "v05", "--row", "1",
                        "--exclude-self", "-k", "2", "--json")
    rec = json.loads(out)
    assert all(n["video"] != "v05" for n in rec["neighbours"]) and all(n["label"] == 2 for n in rec["neighbours"])

    with open_store(store_path, mode="r") as store:
        vec = store.open_set(SET).read("v07").feats[:1]
    np.save(tmp_path / "q.npy", vec)
    code, out, _ = _run(capsys, "bank", "query", store_path, "--set", SET, "--vectors", tmp_path / "q.npy", "-k", "1")
    assert code == 0 and "v07" in out and "row 0" in out and "label 1" in out


def test_video_level_bank_in_custom_dir(store_path, tmp_path, capsys):
    bank_dir = tmp_path / "mybank"
    code, _, _ = _run(capsys, "bank", "build", store_path, "--set", SET, "--level", "video", "--split", "train",
                      "--metric", "l2", "--dir", bank_dir)
    assert code == 0
    bank = FaissBank.load(bank_dir)
    assert bank.info.level == "video" and bank.info.metric == "l2" and bank.ntotal == 18
    code, out, _ = _run(capsys, "bank", "query", store_path, "--set", SET, "--dir", bank_dir, "--video", "v00", "--json")
    rec = json.loads(out)
    assert rec["query"] == {"video": "v00", "row": -1}
    assert rec["neighbours"][0]["label"] == 0 and rec["neighbours"][0]["row"] == -1


def test_errors_are_one_line(store_path, tmp_path, capsys):
    code, _, err = _run(capsys, "bank", "query", store_path, "--set", SET, "--video", "v01")
    assert code == 1 and "no bank named 'default'" in err and "banks: none yet" in err and "Traceback" not in err
    _run(capsys, "bank", "build", store_path, "--set", SET)
    code, _, err = _run(capsys, "bank", "query", store_path, "--set", SET, "--video", "nope")
    assert code == 1 and "'nope'" in err
    np.save(tmp_path / "bad.npy", np.zeros((2, DIM + 1), np.float32))
    code, _, err = _run(capsys, "bank", "query", store_path, "--set", SET, "--vectors", tmp_path / "bad.npy")
    assert code == 1 and "dim" in err
    code, _, err = _run(capsys, "bank", "build", store_path, "--set", "missing/set")
    assert code == 1 and "missing/set" in err
    code, _, err = _run(capsys, "bank", "build", store_path, "--set", SET, "--split", "val")
    assert code == 1 and "split" in err and "train" in err


def test_stale_bank_refused_by_cli(store_path, capsys):
    _run(capsys, "bank", "build", store_path, "--set", SET)
    with open_store(store_path, mode="a") as store:
        store.set_backbone_weights("bb", "w2")
    code, _, err = _run(capsys, "bank", "query", store_path, "--set", SET, "--video", "v01")
    assert code == 1 and "rebuild" in err
    code, out, _ = _run(capsys, "bank", "query", store_path, "--set", SET, "--video", "v01", "--allow-stale", "--json")
    assert code == 0 and out


@pytest.mark.parametrize("mode", ["--knn", "--retrieval"])
def test_eval_reports_class_and_neighbour_recall(store_path, capsys, mode):
    code, out, _ = _run(capsys, "bank", "eval", store_path, "--set", SET, mode, "-k", "5", "--json")
    assert code == 0
    rep = json.loads(out)
    assert rep["n_gallery"] == 18 and rep["n_queries"] == 6
    assert rep["neighbour_recall_at_10"] == 1.0  # Flat index
    assert set(rep["class_metrics"]) == {"bank", "exact"}
    key = "top1" if mode == "--knn" else "R@1"
    assert rep["class_metrics"]["bank"][key] == rep["class_metrics"]["exact"][key] == 1.0  # separated classes
    code, out, _ = _run(capsys, "bank", "eval", store_path, "--set", SET, mode)
    assert code == 0 and "true-neighbour recall@10" in out and "exact" in out


def test_eval_shows_collapsed_index():
    """A coarse PQ index can keep class-level R@1 while true-neighbour recall collapses: both are reported."""
    store = MemoryStore()
    rng = np.random.default_rng(0)
    centres = 10 * rng.normal(size=(4, 32)).astype(np.float32)
    fs = store.create_set(FeatureSetInfo(name=SET, row_shape=(32,), dtype="float32"))
    for v in range(800):
        f = centres[v % 4] + rng.normal(size=(1, 32)).astype(np.float32)
        fs.write_video(VideoRows(f, [0.0], [1.0]), VideoMeta(f"v{v}", labels=(v % 4,), split="test" if v % 8 == 0 else "train"))
    rep = evaluate_bank(store, SET, mode="retrieval", index="PQ2x4", ks=(1,))
    assert rep["class_metrics"]["exact"]["R@1"] == 1.0
    assert rep["class_metrics"]["bank"]["R@1"] >= 0.95
    assert rep["neighbour_recall_at_10"] < 0.5


@pytest.mark.parametrize("argv, culprit", [
    (("query", "--video", "v01", "-k", "0"), "-k must be an integer >= 1, got 0"),
    (("query", "--video", "v01", "-k", "-2"), "-k must be an integer >= 1, got -2"),
    (("eval", "--knn", "-k", "0"), "-k must be an integer >= 1, got 0"),
    (("eval", "--retrieval", "--ks", "1", "0"), "--ks must be an integer >= 1, got 0"),
    (("build", "--recall-target", "2"), "--recall-target must be in (0, 1]"),
    (("build", "--recall-target", "0"), "--recall-target must be in (0, 1]"),
    (("build", "--memory-budget", "lots"), "--memory-budget 'lots'"),
])
def test_bad_numbers_fail_before_any_work(tmp_path, capsys, argv, culprit):
    """Checked before the store is even opened: a missing store does not mask the bad argument."""
    sub, *rest = argv
    missing = tmp_path / "no_such.zarr"
    code, out, err = _run(capsys, "bank", sub, missing, "--set", SET, *rest)
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and culprit in lines[0], err
    assert not missing.exists() and not (tmp_path / "no_such.zarr.banks").exists()


def test_recall_target_checked_in_python_api_too():
    from featbank.store.bank import BankError

    with pytest.raises(BankError, match=r"recall_target must be in \(0, 1\]"):
        FaissBank.from_arrays(np.ones((10, 4), np.float32), recall_target=2)


def test_nan_queries_raise_bank_error(store_path, tmp_path, capsys):
    from featbank.store.bank import BankError

    _run(capsys, "bank", "build", store_path, "--set", SET)
    q = np.ones((3, DIM), np.float32)
    q[1, 2] = np.nan
    np.save(tmp_path / "nan.npy", q)
    code, out, err = _run(capsys, "bank", "query", store_path, "--set", SET, "--vectors", tmp_path / "nan.npy")
    assert code == 1 and out == "" and "NaN or Inf (first: query 1)" in err
    with open_store(store_path, mode="r") as store:
        bank = FaissBank.open(store, SET)
        with pytest.raises(BankError, match="NaN"):
            bank.search(q, 2)
        with pytest.raises(BankError, match="k .*>= 1"):
            bank.search(q[:1], 0)


def test_missing_set_and_bank_are_named(store_path, capsys):
    code, _, err = _run(capsys, "bank", "query", store_path, "--set", "nosuch", "--video", "v01")
    assert code == 1 and "feature set 'nosuch' is not in store" in err and "'enc/pool'" in err
    code, _, err = _run(capsys, "bank", "eval", store_path, "--set", "nosuch", "--knn")
    assert code == 1 and "'nosuch'" in err and "'enc/pool'" in err
    _run(capsys, "bank", "build", store_path, "--set", SET, "--name", "mine")
    code, _, err = _run(capsys, "bank", "query", store_path, "--set", SET, "--video", "v01")
    assert code == 1 and "no bank named 'default' (banks: mine)" in err


@pytest.mark.parametrize("sub", ["build", "query", "eval"])
def test_help_has_examples(capsys, sub):
    with pytest.raises(SystemExit) as e:
        main(["bank", sub, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "examples:" in out and f"featbank bank {sub} feats.zarr" in out


def test_eval_same_split_leaves_each_query_out():
    """Labels unrelated to the features: with itself as a neighbour each query would score top-1 1.0."""
    store = MemoryStore()
    rng = np.random.default_rng(0)
    fs = store.create_set(FeatureSetInfo(name=SET, row_shape=(16,), dtype="float32"))
    for v in range(120):
        f = rng.normal(size=(2, 16)).astype(np.float32)
        fs.write_video(VideoRows(f, [0.0, 1.0], [1.0, 2.0]), VideoMeta(f"v{v}", labels=(int(rng.integers(0, 4)),), split="train"))
    for level in ("video", "row"):
        rep = evaluate_bank(store, SET, mode="knn", level=level, train_split="train", test_split="train", knn_k=1)
        assert "leave-one-video-out" in rep["self_excluded"]
        assert rep["class_metrics"]["exact"]["top1"] < 0.6  # chance is 0.25; self-matches would give 1.0
        assert rep["neighbour_recall_at_10"] == 1.0
    rep = evaluate_bank(store, SET, mode="retrieval", level="row", train_split="train", test_split="train", ks=(1,))
    assert rep["class_metrics"]["bank"]["R@1"] < 0.6
