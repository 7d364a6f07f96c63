"""torchrun / multi-process set-up: rank, world size and the barriers the job needs."""

from __future__ import annotations

import os
from typing import Any

from ..sharding import distributed_rank


def init_distributed() -> tuple[int, int, Any]:
    """torchrun rank/world size; a gloo process group (for barriers) when WORLD_SIZE > 1."""
    rank, world = distributed_rank()
    if world == 1:
        return rank, world, None
    import torch.distributed as dist

    if not dist.is_available() or "MASTER_ADDR" not in os.environ:
        return rank, world, None
    if dist.is_initialized():
        return rank, world, dist
    # gloo is enough for the two barriers (set creation, end of run), on CPU and GPU alike
    dist.init_process_group("gloo", rank=rank, world_size=world)
    return rank, world, OwnedGroup(dist)


class OwnedGroup:
    """A process group this job created (destroyed at the end of the run)."""

    def __init__(self, dist: Any) -> None:
        self.dist = dist

    def barrier(self) -> None:
        self.dist.barrier()

    def destroy(self) -> None:
        self.dist.destroy_process_group()
