"""``run_extraction``: one process's shard of the manifest into one feature set.

1. read the manifest, keep this process's shard (``--shard I/N`` or the SLURM array task,
   times the torchrun rank), balanced by video duration;
2. resolve the backbone on ``cfg.device`` (built only when no cached engine covers it);
3. create (or reopen) the feature set with full provenance and skip committed videos;
4. decode + preprocess in worker processes, pack windows of several videos into full
   batches, write each video atomically once all its windows are done; a failing video goes
   to the store's failure log and the job carries on;
5. return an ``ExtractSummary`` (exit code 2 when any video failed).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from featbank.store.schema import VideoMeta, VideoRows

from ..sharding import resolve_shard, select_shard
from .config import ExtractConfig, default_set_name
from .distributed import OwnedGroup, init_distributed
from .loop import consume, open_stream
from .provenance import set_info, settings_differences
from .report import ExtractSummary, seconds_since_launch
from .runtime import build_pipeline, prepare_engine
from .tasks import duration_weights, load_tasks
from .verify import verify_extraction


def _open_store(path: str, mode: str, fsync: bool = False):
    from featbank.store import open_store

    return open_store(path, mode, fsync=fsync)


def run_extraction(cfg: ExtractConfig, *, progress: bool = True, store: Any = None) -> ExtractSummary:
    """Extract every video of ``cfg.manifest`` (this process's shard) into ``cfg.store``.

    Args:
        cfg: the job configuration.
        progress: show a tqdm bar (videos/s, frames/s, ETA) on a terminal.
        store: an open ``FeatureStore`` to write into instead of opening ``cfg.store``.

    Returns:
        The ``ExtractSummary``; ``summary.exit_code`` is 2 when any video failed.

    Raises:
        ManifestError: a malformed manifest (before any work).
        ConfigError / ExtractError / StoreError: bad configuration, backbone, weights or store.
    """
    started = time.perf_counter()
    tasks_all = load_tasks(cfg)  # manifest errors surface before the model is built
    rank, world, dist = init_distributed()
    try:
        return _run_shard(cfg, tasks_all, rank, world, dist, progress=progress, store=store, started=started)
    finally:
        if isinstance(dist, OwnedGroup):
            dist.destroy()


def check_same_settings(old: Any, new: Any) -> None:
    """Refuse to add rows made with other settings to an existing set (one set, one way of making rows).

    Raises:
        SettingsConflictError: naming every differing field.
    """
    from ..errors import SettingsConflictError

    diffs = settings_differences(old, new)
    if diffs:
        raise SettingsConflictError(
            f"feature set {old.name!r} was extracted with other settings ({'; '.join(diffs)}); "
            f"extract into a new set (--set NEW_NAME) or delete this one first"
        )


def _run_shard(cfg: ExtractConfig, tasks_all: list, rank: int, world: int, dist: Any, *, progress: bool,
               store: Any, started: float) -> ExtractSummary:
    """``run_extraction`` for one process: its shard of ``tasks_all`` into the store."""
    s_index, s_count = resolve_shard(cfg.shard)
    index, count = s_index * world + rank, s_count * world
    pipe = build_pipeline(cfg, probe=False)
    if count > 1:
        weights = duration_weights(tasks_all, cfg.decoder, "rgb" if cfg.flow else pipe.modality)
        tasks = [tasks_all[i] for i in select_shard(weights, index, count)]
    else:
        tasks = tasks_all
    name = cfg.feature_set or default_set_name(cfg.backbone, pipe.sampling)

    own_store = store is None
    if own_store and dist is not None and rank != 0:
        dist.barrier()  # rank 0 creates the store first: ranks creating its folders at once race
    try:
        fstore = _open_store(cfg.store, "a", fsync=cfg.fsync) if own_store else store
    finally:
        if own_store and dist is not None and rank == 0:
            dist.barrier()  # the store exists (or rank 0 failed and says why); the other ranks open it
    try:
        existing = fstore.open_set(name, allow_stale=True) if name in fstore.feature_sets() else None
        committed = set(existing.video_ids()) if existing is not None else set()
        todo = [t for t in tasks if t.video_id not in committed]
        # decoding workers start now and overlap the engine set-up (conversion, probe) and the set creation
        items = open_stream(cfg, pipe, todo) if todo else iter(())
        prepare_engine(pipe, cfg)
        info = set_info(cfg, pipe.spec, pipe.sampling, pipe.row_shape, name, pipe.choice)
        if existing is not None:
            check_same_settings(existing.info, info)
        if rank == 0:
            fstore.set_backbone_weights(cfg.backbone, pipe.spec.weights_id)
            fs = fstore.create_set(info, exist_ok=True)
        if dist is not None:
            dist.barrier()
        if rank != 0:
            fs = fstore.create_set(info, exist_ok=True)
        summary = ExtractSummary(
            store=str(getattr(fstore, "path", cfg.store)), feature_set=name, shard=(index, count),
            n_videos=len(tasks), n_skipped=len(tasks) - len(todo),
        )
        bar = _progress_bar(len(todo), progress and (rank == 0 or dist is None), name)
        t0 = time.perf_counter()

        def on_rows(task, rows: VideoRows, meta: VideoMeta) -> None:
            fs.write_video(rows, meta)
            summary.n_written += 1
            summary.n_rows += len(rows)
            _tick(bar, summary, t0)

        def on_failure(task, kind: str, message: str) -> None:
            fstore.record_failure(name, task.video_id, kind, message)
            summary.failures.append((task.video_id, kind, message))
            _tick(bar, summary, t0)

        def on_frames(n: int) -> None:
            summary.n_frames += n

        def on_batch() -> None:
            if not summary.startup_seconds:
                summary.startup_seconds = time.perf_counter() - started
                summary.launch_seconds = seconds_since_launch()

        summary.wait_seconds = consume(cfg, pipe, todo, items, on_rows, on_failure, on_frames, on_batch)
        summary.seconds = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        fs.close()  # release this process's writer segment before rank 0 compacts
        if dist is not None:
            dist.barrier()
        if cfg.compact and rank == 0 and s_count == 1:
            summary.compacted = bool(fs.compact())
        if cfg.verify and rank == 0:
            summary.verify = verify_extraction(fstore, name, cfg.verify, seed=cfg.seed, cfg=cfg, pipe=pipe)
    finally:
        if own_store:
            fstore.close()
    return summary


def _progress_bar(total: int, enabled: bool, name: str):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="video", desc=f"extract {name}", file=sys.stderr,
                disable=not sys.stderr.isatty(), dynamic_ncols=True)


def _tick(bar, summary: ExtractSummary, t0: float) -> None:
    if bar is None:
        return
    elapsed = max(time.perf_counter() - t0, 1e-9)
    bar.set_postfix(frames_s=f"{summary.n_frames / elapsed:.1f}", failed=len(summary.failures), refresh=False)
    bar.update(1)
