"""The loop from pixels to rows: decoding workers feed windows, the packer batches them across
videos, the model runs, and each finished video's rows are handed to a callback."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np

from featbank.store.schema import VideoMeta, VideoRows

from ..features import assemble_rows
from .config import ExtractConfig, flow_settings
from .runtime import Pipeline


def pixel_transform(cfg: ExtractConfig):
    """The decoded-frame transform of ``cfg`` (``BackgroundBlend`` when ``blend_dir`` is set), or None."""
    if not cfg.blend_dir:
        return None
    from ..background import BackgroundBlend

    return BackgroundBlend(cfg.blend_dir, p=cfg.blend_p, alpha=cfg.blend_alpha, seed=cfg.blend_seed)


def group_windows(rows: VideoRows, k: int) -> VideoRows:
    """Every ``k`` consecutive window rows ``(W, D)`` -> one row ``(k, D)`` spanning their times."""
    n = len(rows.feats) // k
    feats = np.asarray(rows.feats)[: n * k].reshape(n, k, *rows.feats.shape[1:])  # (W, D) -> (W/k, k, D)
    starts = np.asarray(rows.starts)[: n * k].reshape(n, k).min(1)
    ends = np.asarray(rows.ends)[: n * k].reshape(n, k).max(1)
    fidx = np.asarray(rows.frame_idx)[: n * k].reshape(n, k, 2)
    fidx = np.stack([fidx[:, :, 0].min(1), fidx[:, :, 1].max(1)], 1)
    return VideoRows(feats, starts, ends, fidx)


def open_stream(cfg: ExtractConfig, pipe: Pipeline, tasks: Sequence[Any], workers: int | None = None):
    """Start decoding ``tasks`` (worker processes begin at once, in the background); returns the
    item iterator."""
    from .._stream import StreamOptions, WindowStream

    opts = StreamOptions(
        spec=pipe.spec,
        sampling=pipe.sampling,
        modality=pipe.modality,
        decoder=cfg.decoder,
        timeout_s=cfg.timeout,
        chunk_frames=cfg.chunk_frames,
        flow=flow_settings(cfg),
        pixel_transform=pixel_transform(cfg),
    )
    stream = WindowStream(tasks, opts)
    n_workers = min(cfg.workers if workers is None else workers, len(tasks))
    if not n_workers:
        return iter(stream)
    import multiprocessing

    from .._workers import DecodePool

    context = multiprocessing.get_context(cfg.start_method)
    if cfg.start_method == "forkserver":  # workers fork from a server that has the decoding modules imported
        from ..worker_server import start_worker_server

        start_worker_server()  # already running when `featbank extract` started it
    # the workers start in a thread, while the caller loads the engine
    return _Prefetched(DecodePool(stream, n_workers, cfg.prefetch, context))


def consume(
    cfg: ExtractConfig,
    pipe: Pipeline,
    tasks: Sequence[Any],
    items: Any,
    on_rows: Callable[[Any, VideoRows, VideoMeta], None],
    on_failure: Callable[[Any, str, str], None],
    on_frames: Callable[[int], None] = lambda n: None,
    on_batch: Callable[[], None] = lambda: None,
) -> float:
    """Batch the stream's windows across videos, run the model, hand finished rows over.

    Returns:
        Seconds the model side waited for decoded windows (0 when decoding kept up).
    """
    from .._packer import ClipPacker
    from .._stream import VideoEnd

    by_key = {t.key: t for t in tasks}

    def run_batch(clips: np.ndarray) -> np.ndarray:
        on_batch()  # computing starts
        return pipe.engine(clips)  # (B, V, C, L, h, w) -> (B, R, V, *F)

    def done(end: VideoEnd, outputs: np.ndarray | None) -> None:
        task = by_key[end.key]
        if outputs is None:  # no window: an empty video keeps its metadata with zero rows
            feats = np.zeros((0, *pipe.row_shape), np.float32)
            rows = VideoRows(feats, np.zeros(0), np.zeros(0), np.zeros((0, 2), np.int64))
        else:
            rows = assemble_rows(outputs, end.layout(pipe.rows_per_window), pipe.sampling.n_views)
            if pipe.sampling.windows_per_row > 1:  # sampler glad: the video's windows are one row's views
                rows = group_windows(rows, pipe.sampling.windows_per_row)
        try:
            on_rows(task, rows, end.meta)
        except Exception as exc:  # a rejected write (non-finite rows, conflict) fails this video only
            on_failure(task, type(exc).__name__, str(exc))

    packer = ClipPacker(run_batch, pipe.batch_size or cfg.batch_size or 1, done)
    source = items if isinstance(items, _Prefetched) else (_Prefetched(items) if cfg.workers > 0 else None)
    try:
        return _consume_items(source, items, packer, by_key, on_failure, on_frames)
    finally:
        if source is not None:
            source.close()


def _consume_items(source: "_Prefetched | None", items: Any, packer: Any, by_key: dict,
                   on_failure: Callable[[Any, str, str], None], on_frames: Callable[[int], None]) -> float:
    """Feed items to ``packer`` until the stream ends; seconds spent waiting for decoded items."""
    from .._stream import ClipChunk, VideoEnd, VideoFailed

    waited = 0.0
    while True:
        if source is not None:
            item = source.get_nowait()
            if item is _EMPTY and packer.n_queued:
                # decoding is behind: compute the windows already here instead of idling for a full batch
                packer.flush()
            t0 = time.perf_counter()
            item = source.get() if item is _EMPTY else item
        else:
            t0 = time.perf_counter()
            item = next(items, None)
        waited += time.perf_counter() - t0
        if item is None:
            break
        if isinstance(item, ClipChunk):
            packer.add(item)
        elif isinstance(item, VideoEnd):
            on_frames(item.n_frames_decoded)
            packer.end(item)
        elif isinstance(item, VideoFailed):
            packer.drop(item.key)
            on_failure(by_key[item.key], item.kind, item.message)
    packer.flush()
    return waited


def iterate(
    cfg: ExtractConfig,
    pipe: Pipeline,
    tasks: Sequence[Any],
    on_rows: Callable[[Any, VideoRows, VideoMeta], None],
    on_failure: Callable[[Any, str, str], None],
    on_frames: Callable[[int], None] = lambda n: None,
    workers: int | None = None,
) -> float:
    """Decode ``tasks`` in workers and extract them (``_open_stream`` + ``_consume``)."""
    return consume(cfg, pipe, tasks, open_stream(cfg, pipe, tasks, workers), on_rows, on_failure, on_frames)


def read_windows(cfg: ExtractConfig, spec: Any, sampling: Any, tasks: Sequence[Any], modality: str = "rgb") -> dict:
    """Decode and preprocess the windows of ``tasks`` through the job's decoding path, without a
    model (e.g. clips to fine-tune a backbone on): ``{video_id: (W, V, C, L, h, w)}`` torch tensors.

    Raises:
        ExtractError: naming the first video that could not be read.
    """
    import torch

    from .._stream import ClipChunk, StreamOptions, VideoEnd, VideoFailed, WindowStream
    from ..errors import ExtractError

    opts = StreamOptions(spec=spec, sampling=sampling, modality=modality, decoder=cfg.decoder, timeout_s=cfg.timeout,
                         chunk_frames=cfg.chunk_frames)
    by_key = {t.key: t for t in tasks}
    parts: dict[int, list] = {}
    out = {}
    for item in WindowStream(tasks, opts):
        if isinstance(item, ClipChunk):
            parts.setdefault(item.key, []).append(item.clips)
        elif isinstance(item, VideoEnd):
            chunks = parts.pop(item.key, [])
            out[by_key[item.key].video_id] = (torch.from_numpy(np.concatenate(chunks)) if chunks
                                              else torch.zeros((0, sampling.n_views, 0)))
        elif isinstance(item, VideoFailed):
            raise ExtractError(f"video {item.video_id!r}: {item.message}")
    return out


_EMPTY = object()


class _Prefetched:
    """The decoded items pulled by a thread into a small queue, so the model side can see
    whether the next item is already there (and run a partial batch when it is not). The queue
    holds at most two items, which keeps the job's memory bound; an exception of the iterator
    is re-raised on the model side."""

    def __init__(self, items: Any) -> None:
        import queue
        import threading

        self._q: Any = queue.Queue(maxsize=2)
        self._items = items
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, args=(items,), daemon=True, name="featbank-decoded")
        self._thread.start()

    def _pump(self, items: Any) -> None:
        it = None
        try:
            it = iter(items)  # a DecodePool starts its workers here, in this thread
            for item in it:
                if not self._put(item):
                    return
            self._put(None)
        except BaseException as exc:  # handed to the model side
            self._put(_Raised(exc))
        finally:
            close = getattr(it, "close", None)
            if close is not None:  # a generator: its cleanup (stopping workers) runs here
                close()

    def _put(self, item: Any) -> bool:
        import queue

        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def close(self) -> None:
        """Stop pulling items and wait for the decoding side to shut down (a ``DecodePool``'s
        workers are stopped at once, not after their next item)."""
        import queue

        self._stop.set()
        stop = getattr(self._items, "stop", None)
        if stop is not None:
            stop()
        while self._thread.is_alive():
            try:
                self._q.get(timeout=0.1)
            except queue.Empty:
                pass
            self._thread.join(timeout=0.1)

    def _unwrap(self, item: Any) -> Any:
        if isinstance(item, _Raised):
            raise item.exc
        return item

    def get_nowait(self) -> Any:
        import queue

        try:
            return self._unwrap(self._q.get_nowait())
        except queue.Empty:
            return _EMPTY

    def get(self) -> Any:
        return self._unwrap(self._q.get())


class _Raised:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
