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


def _open_store(path: str):
    from featbank.store import open_store

    return open_store(path, mode="r")


def _bank_dir(args, store) -> Path:
    from featbank.store.bank import default_bank_dir

    return Path(args.dir) if args.dir else default_bank_dir(store.path, args.set, args.name)


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
                     description="Build a nearest-neighbour bank over a feature set and save it next to the store.")
    _common(p)
    p.add_argument("--index", default="auto", help="'auto' or a faiss factory string (Flat, IVF1024,Flat, IVF1024,SQ8, HNSW32, ...)")
    p.add_argument("--metric", choices=("cosine", "l2"), default="cosine")
    p.add_argument("--level", choices=("row", "video"), default="row", help="a vector per row, or per video (mean of rows)")
    p.add_argument("--split", nargs="+", default=None, help="only videos of these splits")
    p.add_argument("--domain", nargs="+", default=None, help="only videos of these domains")
    p.add_argument("--label", nargs="+", type=int, default=None, help="only videos with these labels")
    p.add_argument("--recall-target", type=float, default=0.95, help="true-neighbour recall@10 the tuning aims for")
    p.set_defaults(func=cmd_build)

    p = g.add_parser("query", help="nearest neighbours of a stored video/row or of vectors from a .npy file",
                     description="Query a saved bank; prints video id, row, label and score of each neighbour.")
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
                     "true-neighbour recall@10 of the index vs exact search.")
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

    with _open_store(args.store) as store:
        bank = FaissBank.build(
            store, args.set, index=args.index, metric=args.metric, level=args.level, split=args.split,
            domain=args.domain, labels=args.label, recall_target=args.recall_target, allow_stale=args.allow_stale,
        )
        out = bank.save(_bank_dir(args, store))
    if args.json:
        print(json.dumps({"path": str(out), "n": bank.ntotal, **bank.info.to_dict()}))
    else:
        i = bank.info
        print(f"built {i.index} over {bank.ntotal} {i.level} vectors of {i.set_name!r} (dim {i.dim}, {i.metric}) "
              f"in {i.build_seconds:.1f}s")
        print(f"  trained on {i.train_size}, nprobe {i.nprobe}, efSearch {i.ef_search}, "
              f"true-neighbour recall@10 {i.recall_at_10:.3f} (target {i.recall_target})")
        if i.auto_reason:
            print(f"  auto chose exact search: {i.auto_reason}")
        print(f"  saved to {out}")
    return 0


def cmd_query(args) -> int:
    import numpy as np

    from featbank.store.bank import BankError, FaissBank

    with _open_store(args.store) as store:
        bank = FaissBank.load(_bank_dir(args, store), store=store, allow_stale=args.allow_stale)
        if args.video is not None:
            if args.row is not None:
                d, i = bank.search_row(args.video, args.row, args.k, exclude_self=args.exclude_self)
                queries = [{"video": args.video, "row": args.row}]
            else:
                d, i = bank.search_video(args.video, args.k, exclude_self=args.exclude_self)
                rows = [-1] if bank.info.level == "video" else list(range(len(i)))
                queries = [{"video": args.video, "row": r} for r in rows]
        else:
            if args.row is not None or args.exclude_self:
                raise BankError("--row and --exclude-self go with --video, not --vectors")
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

    with _open_store(args.store) as store:
        rep = evaluate_bank(
            store, args.set, mode="knn" if args.knn else "retrieval", index=args.index, metric=args.metric,
            level=args.level, train_split=args.train_split, test_split=args.test_split, ks=tuple(args.ks),
            knn_k=args.k, temperature=args.temperature, recall_target=args.recall_target,
            allow_stale=args.allow_stale,
        )
    print(json.dumps(rep) if args.json else format_report(rep))
    sys.stdout.flush()
    return 0
