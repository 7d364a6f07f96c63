"""``featbank bank build|query|eval``: faiss memory banks over a feature set.

Banks are saved next to the store, outside the Zarr hierarchy:
``<store>.banks/<quoted set name>/<bank name>/`` (``--name``, default ``default``), or in
``--dir``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


_FMT = argparse.RawDescriptionHelpFormatter

BUILD_EXAMPLES = """examples:
  featbank bank build feats.zarr --set i3d/pool                        # auto index, cosine, row level
  featbank bank build feats.zarr --set i3d/pool --level video --split train --name train-videos
  featbank bank build feats.zarr --set i3d/pool --recall-target 0.98 --build-budget 120 --memory-budget 4G
  featbank bank build feats.zarr --set i3d/pool --index HNSW32 --metric l2 --dir /tmp/bank
  featbank bank build feats.zarr --set i3d/pool --on-disk --index IVF4096,Flat   # larger than RAM"""
QUERY_EXAMPLES = """examples:
  featbank bank query feats.zarr --set i3d/pool --video vid3 -k 10 --json
  featbank bank query feats.zarr --set i3d/pool --video vid3 --row 2 --exclude-self -k 5
  featbank bank query feats.zarr --set i3d/pool --vectors queries.npy -k 10"""
EVAL_EXAMPLES = """examples:
  featbank bank eval feats.zarr --set i3d/pool --retrieval --json
  featbank bank eval feats.zarr --set i3d/pool --knn -k 200 --temperature 0.07
  featbank bank eval feats.zarr --set i3d/pool --knn --train-split train --test-split train   # leave-one-video-out"""


def _positive_int(value: int, flag: str) -> None:
    from featbank.store.bank import BankError

    if value < 1:
        raise BankError(f"{flag} must be an integer >= 1, got {value}")


def _recall_target(value: float) -> None:
    from featbank.store.bank import BankError

    if not 0.0 < value <= 1.0:
        raise BankError(f"--recall-target must be in (0, 1] (a fraction of the true top-10), got {value}")


def _bytes(text: str) -> int:
    """``4G``, ``512M``, ``100000`` -> bytes."""
    from featbank.store.bank import BankError

    t = str(text).strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(t[-1:], 1)
    try:
        v = float(t[:-1] if scale > 1 else t) * scale
    except ValueError:
        raise BankError(f"--memory-budget {text!r}: expected bytes such as 4G, 512M or 1000000") from None
    if v <= 0:
        raise BankError(f"--memory-budget must be > 0, got {text!r}")
    return int(v)


def _open_store(path: str):
    from featbank.store import open_store

    return open_store(path, mode="r")


def _require_set(store, name: str) -> None:
    """A missing set is named, with the sets the store has."""
    from featbank.store.bank import BankError

    sets = store.feature_sets()
    if name not in sets:
        have = ", ".join(repr(s) for s in sets) or "none"
        raise BankError(f"feature set {name!r} is not in store {store.path} (sets: {have})")


def _bank_dir(args, store) -> Path:
    from featbank.store.bank import default_bank_dir

    return Path(args.dir) if args.dir else default_bank_dir(store.path, args.set, args.name)


def _existing_bank_dir(args, store) -> Path:
    """The bank folder to read; a missing bank lists the banks the set has."""
    from featbank.store.bank import BankError, default_bank_dir

    _require_set(store, args.set)
    d = _bank_dir(args, store)
    if not (d / "bank.json").is_file() and not args.dir:
        root = default_bank_dir(store.path, args.set, "default").parent
        banks = sorted(p.name for p in root.iterdir() if (p / "bank.json").is_file()) if root.is_dir() else []
        have = ", ".join(banks) if banks else "none yet"
        raise BankError(f"feature set {args.set!r} has no bank named {args.name!r} (banks: {have}); "
                        f"build one with `featbank bank build {store.path} --set {args.set}`")
    return d


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", metavar="STORE", help="path of the feature store")
    p.add_argument("--set", required=True, metavar="NAME", help="feature set name")
    p.add_argument("--name", default="default", help="bank name (folder under <store>.banks/<set>/)")
    p.add_argument("--dir", default=None, help="bank folder (overrides the default location)")
    p.add_argument("--allow-stale", action="store_true", help="use a set/bank whose backbone weights are outdated")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def register(sub, groups) -> None:
    g = groups["bank"]

    p = g.add_parser("build", help="build and save a faiss bank over a feature set",
                     description="Build a nearest-neighbour bank over a feature set and save it next to the store. "
                     "'auto' builds exact Flat for small sets, else tries IVF and HNSW candidates tuned on held-out "
                     "queries and keeps the fastest meeting the recall target within the memory and build budgets. "
                     "An unchanged set reuses the saved index (--rebuild forces a new one).",
                     epilog=BUILD_EXAMPLES, formatter_class=_FMT)
    _common(p)
    p.add_argument("--index", default="auto", help="'auto' or a faiss factory string (Flat, IVF1024,Flat, IVF1024,SQ8, HNSW32, ...)")
    p.add_argument("--metric", choices=("cosine", "l2"), default="cosine")
    p.add_argument("--level", choices=("row", "video"), default="row", help="a vector per row, or per video (mean of rows)")
    p.add_argument("--split", nargs="+", default=None, help="only videos of these splits")
    p.add_argument("--domain", nargs="+", default=None, help="only videos of these domains")
    p.add_argument("--label", nargs="+", type=int, default=None, help="only videos with these labels")
    p.add_argument("--recall-target", type=float, default=0.95, help="true-neighbour recall@10 the tuning aims for, in (0, 1]")
    p.add_argument("--memory-budget", default=None, help="bytes the index may take, e.g. 4G (default: half the RAM)")
    p.add_argument("--build-budget", type=float, default=None, help="seconds auto may spend building candidates (default 600)")
    p.add_argument("--flat-max", type=int, default=50_000, help="auto builds exact Flat up to this many vectors")
    p.add_argument("--rebuild", action="store_true", help="build anew even when the saved bank matches the set")
    p.add_argument("--on-disk", action="store_true",
                   help="IVF with on-disk inverted lists, built by streaming the set chunk by chunk (larger than RAM)")
    p.add_argument("--chunk-videos", type=int, default=256, help="with --on-disk: videos per streamed chunk")
    p.set_defaults(func=cmd_build)

    p = g.add_parser("query", help="nearest neighbours of a stored video/row or of vectors from a .npy file",
                     description="Query a saved bank; prints video id, row, label and score of each neighbour.",
                     epilog=QUERY_EXAMPLES, formatter_class=_FMT)
    _common(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", help="query with this video (one query per row for row-level banks)")
    src.add_argument("--vectors", help=".npy file of (Q, D) or (D,) query vectors")
    p.add_argument("--row", type=int, default=None, help="with --video: query with this row only")
    p.add_argument("-k", type=int, default=10, help="neighbours per query")
    p.add_argument("--exclude-self", action="store_true", help="with --video: leave the video itself out")
    p.set_defaults(func=cmd_query)

    p = g.add_parser("eval", help="kNN classification or retrieval Recall@k of the test split against the train split",
                     description="Build a bank over the train split and evaluate the test split against it. "
                     "Reports class-level metrics through the bank and through exact search, and the "
                     "true-neighbour recall@10 of the index vs exact search. With the same split for "
                     "gallery and queries, each query's own video is left out of its neighbours.",
                     epilog=EVAL_EXAMPLES, formatter_class=_FMT)
    p.add_argument("store", metavar="STORE", help="path of the feature store")
    p.add_argument("--set", required=True, metavar="NAME", help="feature set name")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--knn", action="store_true", help="weighted kNN top-1/top-5")
    mode.add_argument("--retrieval", action="store_true", help="Recall@k (a hit = a same-class neighbour in the top k)")
    p.add_argument("--index", default="auto", help="'auto' or a faiss factory string for the gallery bank")
    p.add_argument("--metric", choices=("cosine", "l2"), default="cosine")
    p.add_argument("--level", choices=("row", "video"), default="video")
    p.add_argument("--train-split", default="train", help="split forming the gallery (default: train)")
    p.add_argument("--test-split", default="test", help="split forming the queries (default: test)")
    p.add_argument("--ks", nargs="+", type=int, default=[1, 5, 10, 20], help="Recall@k cut-offs")
    p.add_argument("-k", type=int, default=200, help="kNN: neighbours voting")
    p.add_argument("--temperature", type=float, default=0.07, help="kNN: vote temperature")
    p.add_argument("--recall-target", type=float, default=0.95)
    p.add_argument("--allow-stale", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)


def cmd_build(args) -> int:
    from featbank.store.bank import FaissBank
    from featbank.store.bank_auto import describe

    _recall_target(args.recall_target)  # every argument is checked before any work starts
    _positive_int(args.chunk_videos, "--chunk-videos")
    if args.flat_max < 0:
        from featbank.store.bank import BankError

        raise BankError(f"--flat-max must be >= 0, got {args.flat_max}")
    budget = _bytes(args.memory_budget) if args.memory_budget is not None else None
    if args.build_budget is not None and not args.build_budget > 0:
        from featbank.store.bank import BankError

        raise BankError(f"--build-budget must be > 0 seconds, got {args.build_budget}")
    with _open_store(args.store) as store:
        _require_set(store, args.set)
        out = _bank_dir(args, store)
        if args.on_disk:
            from featbank.store.bank_ondisk import build_on_disk

            bank = build_on_disk(
                store, args.set, out, index=None if args.index == "auto" else args.index, metric=args.metric,
                level=args.level, split=args.split, domain=args.domain, labels=args.label,
                recall_target=args.recall_target, allow_stale=args.allow_stale, videos_per_chunk=args.chunk_videos,
                memory_budget=budget,
            )
        else:
            bank = FaissBank.build(
                store, args.set, index=args.index, metric=args.metric, level=args.level, split=args.split,
                domain=args.domain, labels=args.label, recall_target=args.recall_target, allow_stale=args.allow_stale,
                memory_budget=budget, build_budget=args.build_budget, flat_max=args.flat_max,
                cache_dir=None if args.rebuild else out,
            )
            if not bank.cached:
                bank.save(out)
    i = bank.info
    if args.json:
        print(json.dumps({"path": str(out), "n": bank.ntotal, "cached": bank.cached, **i.to_dict()}))
        return 0
    what = "reused the saved" if bank.cached else "built"
    print(f"{what} {i.index} over {bank.ntotal} {i.level} vectors of {i.set_name!r} (dim {i.dim}, {i.metric}); "
          f"build took {i.build_seconds:.1f}s" + (" (set unchanged since)" if bank.cached else ""))
    if i.requested_index == "auto" or i.on_disk:
        print(f"  memory budget {i.memory_budget / 2**30:.2f} GiB, build budget {i.build_budget_s:.0f}s")
    for c in i.candidates:
        print("    " + describe(c))
    if i.auto_reason:
        print(f"  choice: {i.auto_reason}")
    knobs = ", ".join(f"{k} {v}" for k, v in (("nprobe", i.nprobe), ("efSearch", i.ef_search), ("k_factor", i.k_factor)) if v)
    where = f"{i.heldout_queries} held-out queries" if i.heldout_queries else "exact search"
    print(f"  true-neighbour recall@10 {i.recall_at_10:.3f} on {where} (target {i.recall_target})"
          + (f", {knobs}" if knobs else "") + (f", trained on {i.train_size}" if i.train_size else ""))
    if i.warning:
        print(f"  WARNING: {i.warning}")
    print(f"  saved to {out}")
    return 0


def cmd_query(args) -> int:
    import numpy as np

    from featbank.store.bank import BankError, FaissBank

    _positive_int(args.k, "-k")
    if args.vectors is not None and (args.row is not None or args.exclude_self):
        raise BankError("--row and --exclude-self go with --video, not --vectors")
    if args.row is not None and args.row < 0:
        raise BankError(f"--row must be >= 0, got {args.row}")
    with _open_store(args.store) as store:
        bank = FaissBank.load(_existing_bank_dir(args, store), store=store, allow_stale=args.allow_stale)
        if args.video is not None:
            if args.row is not None:
                d, i = bank.search_row(args.video, args.row, args.k, exclude_self=args.exclude_self)
                queries = [{"video": args.video, "row": args.row}]
            else:
                d, i = bank.search_video(args.video, args.k, exclude_self=args.exclude_self)
                rows = [-1] if bank.info.level == "video" else list(range(len(i)))
                queries = [{"video": args.video, "row": r} for r in rows]
        else:
            vec_path = Path(args.vectors)
            if not vec_path.is_file():
                raise FileNotFoundError(f"vectors file {vec_path} does not exist")
            try:
                vecs = np.load(vec_path, allow_pickle=False)
            except ValueError as e:
                raise BankError(f"{vec_path}: not a numeric .npy file ({e})") from None
            d, i = bank.search(vecs, args.k)
            queries = [{"vectors": str(vec_path), "index": q} for q in range(len(i))]
        results = bank.neighbours(d, i)
    for q, nbs in zip(queries, results):
        if args.json:
            print(json.dumps({"query": q, "neighbours": [n._asdict() for n in nbs]}))
        else:
            print(" ".join(f"{k}={v}" for k, v in q.items()))
            for rank, n in enumerate(nbs, 1):
                print(f"  {rank:3d}  {n.video}  row {n.row}  label {n.label}  score {n.score:.4f}")
    return 0


def cmd_eval(args) -> int:
    from featbank.experiments.bank_eval import evaluate_bank, format_report
    from featbank.store.bank import BankError

    _positive_int(args.k, "-k")
    for k in args.ks:
        _positive_int(k, "--ks")
    _recall_target(args.recall_target)
    if not args.temperature > 0:
        raise BankError(f"--temperature must be > 0, got {args.temperature}")
    with _open_store(args.store) as store:
        _require_set(store, args.set)
        rep = evaluate_bank(
            store, args.set, mode="knn" if args.knn else "retrieval", index=args.index, metric=args.metric,
            level=args.level, train_split=args.train_split, test_split=args.test_split, ks=tuple(args.ks),
            knn_k=args.k, temperature=args.temperature, recall_target=args.recall_target,
            allow_stale=args.allow_stale,
        )
    print(json.dumps(rep) if args.json else format_report(rep))
    sys.stdout.flush()
    return 0
