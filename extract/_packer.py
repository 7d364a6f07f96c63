"""Packing windows of several videos into full model batches, and scattering outputs back.

Short videos have fewer windows than a batch; running them one video at a time would
leave the model at a fraction of its batch size. ``ClipPacker`` queues windows from any
number of videos, runs the model whenever ``batch_size`` windows of one clip shape are
queued, scatters each output row back to its video, and hands a video over (``on_done``)
once all its windows are computed and its ``VideoEnd`` has arrived.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ._stream import ClipChunk, VideoEnd


@dataclass
class _Pending:
    outputs: dict[int, np.ndarray] = field(default_factory=dict)  # window index -> (R, V, *F)
    end: VideoEnd | None = None


class ClipPacker:
    """Batches windows across videos.

    Args:
        run_batch: ``clips (B, V, C, L, h, w) -> outputs (B, R, V, *F)``.
        batch_size: windows per model call.
        on_done: called with ``(end, outputs (W, R, V, *F) | None)`` when a video is complete
            (``None`` when it has no windows).
    """

    def __init__(
        self,
        run_batch: Callable[[np.ndarray], np.ndarray],
        batch_size: int,
        on_done: Callable[[VideoEnd, np.ndarray | None], None],
    ) -> None:
        self.run_batch = run_batch
        self.batch_size = max(1, int(batch_size))
        self.on_done = on_done
        self._queue: deque[tuple[int, int, np.ndarray]] = deque()  # (key, first window, clips)
        self._queued = 0
        self._pending: dict[int, _Pending] = {}
        self.n_batches = 0
        self.n_windows = 0

    @property
    def n_pending_videos(self) -> int:
        return len(self._pending)

    @property
    def n_queued(self) -> int:
        """Windows waiting for a batch."""
        return self._queued

    def add(self, chunk: ClipChunk) -> None:
        """Queue a chunk of windows; runs full batches as they become available."""
        if len(chunk.clips) == 0:
            return
        if self._queue and self._queue[0][2].shape[1:] != chunk.clips.shape[1:]:
            self._drain(partial=True)  # windows of another shape cannot share a batch
        self._pending.setdefault(chunk.key, _Pending())
        self._queue.append((chunk.key, chunk.first, chunk.clips))
        self._queued += len(chunk.clips)
        self._drain(partial=False)

    def end(self, end: VideoEnd) -> None:
        """Mark a video's windows as all sent."""
        self._pending.setdefault(end.key, _Pending()).end = end
        self._maybe_done(end.key)

    def drop(self, key: int) -> None:
        """Forget a video that failed part-way (its queued windows are skipped)."""
        self._pending.pop(key, None)
        kept = [(k, f, c) for k, f, c in self._queue if k != key]
        self._queue = deque(kept)
        self._queued = sum(len(c) for _, _, c in kept)

    def flush(self) -> None:
        """Run the remaining (partial) batch."""
        self._drain(partial=True)

    def _drain(self, partial: bool) -> None:
        while self._queued >= self.batch_size or (partial and self._queued > 0):
            take = min(self.batch_size, self._queued)
            parts, owners = [], []  # owners: (key, first window, count)
            need = take
            while need:
                key, first, clips = self._queue[0]
                n = min(need, len(clips))
                parts.append(clips[:n])
                owners.append((key, first, n))
                if n == len(clips):
                    self._queue.popleft()
                else:
                    self._queue[0] = (key, first + n, clips[n:])
                need -= n
            self._queued -= take
            batch = parts[0] if len(parts) == 1 else np.concatenate(parts)  # (B, V, C, L, h, w)
            out = self.run_batch(batch)  # (B, R, V, *F)
            self.n_batches += 1
            self.n_windows += take
            i = 0
            for key, first, n in owners:
                pend = self._pending.get(key)
                if pend is not None:
                    for j in range(n):
                        pend.outputs[first + j] = out[i + j]
                i += n
            for key in {k for k, _, _ in owners}:
                self._maybe_done(key)

    def _maybe_done(self, key: int) -> None:
        pend = self._pending.get(key)
        if pend is None or pend.end is None or len(pend.outputs) < pend.end.n_windows:
            return
        del self._pending[key]
        n = pend.end.n_windows
        outputs = np.stack([pend.outputs[w] for w in range(n)]) if n else None  # (W, R, V, *F)
        self.on_done(pend.end, outputs)
