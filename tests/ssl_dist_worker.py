"""Worker of tests/test_ssl_losses.py: the multi-level loss on one rank's share of a fixed batch.

Run alone (one process, whole batch) or under ``torchrun --nproc_per_node N`` (gloo): each rank
takes its rows, computes the loss with gathered negatives, and the per-rank losses and
gradients are averaged (what DistributedDataParallel does). Rank 0 writes ``{world, losses,
grads}`` to the JSON path given as the only argument.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist

from featbank.heads.ssl import MultiLevelSSLHead, PrototypeQueue


def main(path: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    torch.set_num_threads(1)
    torch.manual_seed(0)
    head = MultiLevelSSLHead({"low": 16, "mid": 24, "high": 32}, dim=8, num_prototypes=6).double().eval()
    g = torch.Generator().manual_seed(1)
    b = 4
    feats = {"low": torch.randn(b, 3, 16, 8, generator=g), "mid": torch.randn(b, 3, 24, 4, generator=g),
             "high": torch.randn(b, 3, 32, 2, generator=g)}
    rev = {"low": torch.randn(b, 2, 16, 8, generator=g), "mid": torch.randn(b, 2, 24, 4, generator=g)}
    queue = PrototypeQueue(10, 6).double()
    queue.update(torch.randn(7, 2, 6, generator=g).double())
    share = slice(rank * b // world, (rank + 1) * b // world)
    mine = {k: v[share].double() for k, v in feats.items()}
    mine_rev = {k: v[share].double() for k, v in rev.items()}
    res = head.loss(head(mine), head.embed_reversed(mine_rev), queue=queue, use_queue=True, use_graph=True)
    res["loss"].backward()
    losses = {k: v.detach().clone() for k, v in res.items() if not k.startswith("acc") and k != "clusters"}
    grads = {n: p.grad.detach().clone() for n, p in head.named_parameters()}
    if world > 1:
        for t in list(losses.values()) + list(grads.values()):
            dist.all_reduce(t)
            t /= world
    if rank == 0:
        with open(path, "w") as f:
            json.dump({"world": world, "losses": {k: v.item() for k, v in losses.items()},
                       "grads": {k: v.flatten().tolist() for k, v in grads.items()}}, f)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
