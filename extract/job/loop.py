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


def open_stream(cfg: ExtractConfig, pipe: Pipeline, tasks: Sequence[Any], workers: int | None = None):
    """Start decoding ``tasks`` (DataLoader workers begin at once); returns the item iterator."""
    from torch.utils.data import DataLoader

    from .._stream import StreamOptions, WindowStream, worker_init

    opts = StreamOptions(
        spec=pipe.spec,
        sampling=pipe.sampling,
        modality=pipe.modality,
        decoder=cfg.decoder,
        timeout_s=cfg.timeout,
        chunk_frames=cfg.chunk_frames,
        flow=flow_settings(cfg),
    )
    n_workers = min(cfg.workers if workers is None else workers, len(tasks))
    context = None
    if n_workers:
        import multiprocessing

        context = multiprocessing.get_context(cfg.start_method)
        if cfg.start_method == "forkserver":  # workers fork from a server that has these imported
            context.set_forkserver_preload(["torch", "featbank.extract._stream", "featbank.extract.transforms"])
    loader = DataLoader(
        WindowStream(tasks, opts),
        batch_size=None,
        num_workers=n_workers,
        pin_memory=pipe.device.type == "cuda",
        prefetch_factor=cfg.prefetch if n_workers else None,
        worker_init_fn=worker_init if n_workers else None,
        multiprocessing_context=context,
    )
    return iter(loader)


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
    import torch

    from .._packer import ClipPacker
    from .._stream import ClipChunk, VideoEnd, VideoFailed

    by_key = {t.key: t for t in tasks}

    def run_batch(clips: torch.Tensor) -> torch.Tensor:
        out = pipe.engine(clips)  # (B, V, C, L, h, w) -> (B, R, V, *F)
        on_batch()
        return out

    def done(end: VideoEnd, outputs: torch.Tensor | None) -> None:
        task = by_key[end.key]
        if outputs is None:  # no window: an empty video keeps its metadata with zero rows
            feats = np.zeros((0, *pipe.row_shape), np.float32)
            rows = VideoRows(feats, np.zeros(0), np.zeros(0), np.zeros((0, 2), np.int64))
        else:
            rows = assemble_rows(outputs, end.layout(pipe.rows_per_window), pipe.sampling.n_views)
        try:
            on_rows(task, rows, end.meta)
        except Exception as exc:  # a rejected write (non-finite rows, conflict) fails this video only
            on_failure(task, type(exc).__name__, str(exc))

    packer = ClipPacker(run_batch, cfg.batch_size, done)
    waited = 0.0
    while True:
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
    model (e.g. clips to fine-tune a backbone on): ``{video_id: (W, V, C, L, h, w)}``.

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
            out[by_key[item.key].video_id] = torch.cat(chunks) if chunks else torch.zeros((0, sampling.n_views, 0))
        elif isinstance(item, VideoFailed):
            raise ExtractError(f"video {item.video_id!r}: {item.message}")
    return out
