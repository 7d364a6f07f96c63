"""`featbank train --head linear` against the linear probe one writes today on an npy folder.

Same data (a generated feature set, also exported as one ``VIDEO_ID.npy`` per video), same head
(``Linear(D, C)`` on each video's mean feature, standardised), same optimiser (AdamW, cosine,
same epochs and batch size), same thread count, timed in one run:

* ``featbank``: ``train_heads`` end to end (read the set once through the store, train, evaluate);
* ``npy-per-epoch``: a torch ``Dataset`` that ``np.load``s and mean-pools a file in
  ``__getitem__`` under a ``DataLoader`` (how most probe scripts read feature folders);
* ``npy-preload``: the same script, but loading every file once before training.

Prints each time, the ratios, the accuracies (they must agree), and one JSON object last.

    .venv/bin/python bench/train_probe.py [--videos 2000] [--dim 1024] [--epochs 30]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import tempfile
import time

import numpy as np
import torch
from torch import nn


def make_store(path: str, videos: int, dim: int, classes: int, seed: int) -> None:
    from featbank.store import FeatureSetInfo, VideoMeta, VideoRows, open_store

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    with open_store(path, "w") as store:
        fs = store.create_set(FeatureSetInfo(name="bench/pool", row_shape=(dim,), dtype="float16",
                                             backbone="bench", weights_id="ab" * 32))
        for i in range(videos):
            c = i % classes
            n = int(rng.integers(8, 33))
            feats = (0.6 * centres[c] + rng.normal(size=(n, dim)).astype(np.float32)).astype(np.float16)
            st = np.arange(n) * 0.64
            fs.write_video(VideoRows(feats, st, st + 0.64),
                           VideoMeta(f"c{c:02d}/v{i:05d}", labels=(c,),
                                     split="test" if (i // classes) % 5 == 0 else "train"))
        store.compact()


def npy_probe(folder: str, meta: dict[str, tuple[int, str]], epochs: int, batch: int, lr: float, wd: float,
              preload: bool, seed: int) -> tuple[float, float]:
    """The plain script: returns (top-1 on test, seconds)."""
    t0 = time.perf_counter()
    files = sorted(glob.glob(os.path.join(folder, "**", "*.npy"), recursive=True))
    items = []
    for f in files:
        vid = os.path.relpath(f, folder)[:-4]
        label, split = meta[vid]
        items.append((f, label, split))

    class NpyDataset(torch.utils.data.Dataset):
        def __init__(self, entries):
            self.entries = entries
            self.cache = [np.load(f).astype(np.float32).mean(0) for f, _, _ in entries] if preload else None

        def __len__(self):
            return len(self.entries)

        def __getitem__(self, i):
            x = self.cache[i] if preload else np.load(self.entries[i][0]).astype(np.float32).mean(0)
            return torch.from_numpy(x), self.entries[i][1]

    train = NpyDataset([e for e in items if e[2] == "train"])
    test = NpyDataset([e for e in items if e[2] == "test"])
    # standardisation statistics from the train set (one pass, as probe scripts do)
    xs = torch.stack([train[i][0] for i in range(len(train))])
    mu, sd = xs.mean(0), xs.std(0).clamp_min(1e-6)
    num_classes = 1 + max(e[1] for e in items)
    torch.manual_seed(seed)
    head = nn.Linear(xs.shape[1], num_classes)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=wd)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    loader = torch.utils.data.DataLoader(train, batch_size=batch, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    for _ in range(epochs):
        for x, y in loader:
            loss = nn.functional.cross_entropy(head((x - mu) / sd), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    with torch.no_grad():
        xt = torch.stack([test[i][0] for i in range(len(test))])
        yt = torch.tensor([test[i][1] for i in range(len(test))])
        acc = float((head((xt - mu) / sd).argmax(1) == yt).float().mean())
    return acc, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=2000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from featbank.experiments.fit import OptimConfig
    from featbank.experiments.recipes.train import TrainConfig, train_heads
    from featbank.store import open_store
    from featbank.store.interop import export_npy

    with tempfile.TemporaryDirectory() as tmp:
        store_path, npy_dir = os.path.join(tmp, "s.zarr"), os.path.join(tmp, "npy")
        make_store(store_path, args.videos, args.dim, args.classes, args.seed)
        with open_store(store_path, "r") as store:
            fs = store.open_set("bench/pool")
            meta = {v: (fs.meta(v).label, fs.meta(v).split) for v in fs.video_ids()}
            export_npy(fs, npy_dir)
        optim = OptimConfig(optimizer="adamw", lr=1e-2, weight_decay=1e-4, epochs=args.epochs,
                            batch_size=args.batch_size, schedule="cosine")
        cfg = TrainConfig(store=store_path, set="bench/pool", head="linear", seeds=1, seed=args.seed,
                          threads=args.threads, optim=optim)
        # warm both paths once (imports, allocator), then time
        npy_probe(npy_dir, meta, 1, args.batch_size, 1e-2, 1e-4, True, args.seed)
        train_heads(TrainConfig(store=store_path, set="bench/pool", seeds=1, optim=OptimConfig(epochs=1)))
        t0 = time.perf_counter()
        ours = train_heads(cfg)
        t_ours = time.perf_counter() - t0
        acc_pre, t_pre = npy_probe(npy_dir, meta, args.epochs, args.batch_size, 1e-2, 1e-4, True, args.seed)
        acc_epoch, t_epoch = npy_probe(npy_dir, meta, args.epochs, args.batch_size, 1e-2, 1e-4, False, args.seed)
    res = {
        "videos": args.videos, "dim": args.dim, "epochs": args.epochs, "threads": args.threads,
        "featbank_s": round(t_ours, 3), "featbank_read_s": round(ours["load_seconds"], 3),
        "npy_preload_s": round(t_pre, 3), "npy_per_epoch_s": round(t_epoch, 3),
        "speedup_vs_npy_preload": round(t_pre / t_ours, 2), "speedup_vs_npy_per_epoch": round(t_epoch / t_ours, 2),
        "top1_featbank": round(ours["top1_mean"], 4), "top1_npy_preload": round(acc_pre, 4),
        "top1_npy_per_epoch": round(acc_epoch, 4), "load": os.getloadavg()[0],
    }
    print(f"featbank train      {t_ours:7.2f} s  (reading {ours['load_seconds']:.2f} s)  top-1 {ours['top1_mean']:.3f}")
    print(f"npy, preload        {t_pre:7.2f} s  ({res['speedup_vs_npy_preload']:.2f}x)           top-1 {acc_pre:.3f}")
    print(f"npy, load per epoch {t_epoch:7.2f} s  ({res['speedup_vs_npy_per_epoch']:.2f}x)           top-1 {acc_epoch:.3f}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
