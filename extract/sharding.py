"""Splitting a manifest across processes: torchrun ranks and cluster array tasks.

Shards are balanced by video duration (greedy longest-first onto the least-loaded shard),
not by count, so one shard of long videos does not finish hours after the others. The
assignment is a pure function of the weights, so every process computes the same one.
"""

from __future__ import annotations

import heapq
import os
import re
from typing import Mapping, Sequence

import numpy as np


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``"I/N"`` (0-based shard ``I`` of ``N``).

    Raises:
        ValueError: naming the bad value and the expected form.
    """
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise ValueError(f"shard {text!r} is not of the form I/N (e.g. 0/4)")
    index, count = int(m.group(1)), int(m.group(2))
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {text!r}: need 0 <= I < N and N >= 1")
    return index, count


def resolve_shard(shard: str | None, env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """The ``(index, count)`` this process works on.

    Order: an explicit ``shard`` (``"I/N"``); else ``SLURM_ARRAY_TASK_ID`` /
    ``SLURM_ARRAY_TASK_COUNT`` (task ids taken relative to ``SLURM_ARRAY_TASK_MIN``);
    else ``(0, 1)``. A torchrun rank (``distributed_rank``) further splits the shard.
    """
    env = os.environ if env is None else env
    if shard:
        return parse_shard(shard)
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        task = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        return parse_shard(f"{task}/{int(env['SLURM_ARRAY_TASK_COUNT'])}")
    return 0, 1


def distributed_rank(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``(RANK, WORLD_SIZE)`` set by torchrun (``(0, 1)`` outside torchrun)."""
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", "1"))
    rank = int(env.get("RANK", "0"))
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"invalid torchrun environment RANK={rank} WORLD_SIZE={world}")
    return rank, world


def balance_shards(weights: Sequence[float], count: int) -> list[list[int]]:
    """Greedy longest-processing-time assignment of items to ``count`` shards.

    Items are taken longest first and each goes to the shard with the smallest total so
    far (ties to the lower shard index); each shard's item list is returned in the
    original (manifest) order. Deterministic for equal inputs.

    Args:
        weights: non-negative cost per item (video duration in seconds or frames).
        count: number of shards.

    Returns:
        ``count`` lists of item indices; every index appears in exactly one list.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    w = np.asarray(weights, dtype=np.float64)
    if (w < 0).any() or not np.isfinite(w).all():
        raise ValueError("shard weights must be finite and non-negative")
    order = np.argsort(-w, kind="stable")  # longest first, manifest order among equals
    heap = [(0.0, s) for s in range(count)]
    shards: list[list[int]] = [[] for _ in range(count)]
    for i in order:
        load, s = heapq.heappop(heap)
        shards[s].append(int(i))
        heapq.heappush(heap, (load + float(w[i]), s))
    return [sorted(s) for s in shards]


def shard_loads(weights: Sequence[float], shards: Sequence[Sequence[int]]) -> list[float]:
    """Total weight of each shard."""
    w = np.asarray(weights, dtype=np.float64)
    return [float(w[list(s)].sum()) if len(s) else 0.0 for s in shards]


def select_shard(weights: Sequence[float], index: int, count: int) -> list[int]:
    """Item indices of shard ``index`` of ``count`` (``balance_shards``)."""
    if count == 1:
        return list(range(len(weights)))
    return balance_shards(weights, count)[index]
