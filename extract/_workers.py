"""Decoding worker processes for the batch job: ``WindowStream`` items in order, windows through
shared memory.

Each worker is a ``multiprocessing`` process (started by the fork server by default) that
reads its share of a ``WindowStream`` (videos ``i, i + n, ...``) and puts the items on its own
bounded queue (``prefetch`` items: memory stays bounded however far decoding runs ahead). The
job takes them round-robin, worker 0, 1, ..., so the order of items, and with it the model's
batches, does not depend on timing.

Windows travel without a copy: a worker writes each chunk's windows straight into a file in
``/dev/shm`` (a temporary folder where that is missing or too full), sends its name, and the job
maps it and unlinks it at once, so the memory lives exactly as long as the array. Files of a
pool that stops early are removed by ``close``.

Neither side imports torch: a worker starts in well under a second.
"""

from __future__ import annotations

import itertools
import mmap
import os
import queue
import secrets
import signal
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ._stream import ClipChunk, WindowStream

SHM_DIR = Path("/dev/shm")
_POLL_S = 1.0  # how often a waiting job checks that its workers are alive


@dataclass(frozen=True)
class SharedArray:
    """An array in a memory-mapped file, sent by name between processes."""

    path: str
    shape: tuple[int, ...]
    dtype: str

    def attach(self) -> np.ndarray:
        """Map the array and unlink its file: the memory is freed with the returned array."""
        try:
            return _mapped(self.path, self.shape, np.dtype(self.dtype), create=False)
        finally:
            os.unlink(self.path)


def _mapped(path: str | os.PathLike, shape: tuple, dtype: np.dtype, *, create: bool) -> np.ndarray:
    """An array over the memory-mapped file ``path`` (created at its size when ``create``)."""
    nbytes = int(np.prod(shape)) * dtype.itemsize
    fd = os.open(path, os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0), 0o600)
    try:
        if create:
            os.ftruncate(fd, nbytes)
        mm = mmap.mmap(fd, nbytes)
    finally:
        os.close(fd)
    return np.ndarray(shape, dtype, buffer=mm)  # the array keeps the mapping alive


def shared_folder(nbytes: int) -> Path:
    """``/dev/shm`` when it exists and has room for ``nbytes`` (twice over), else the temp folder."""
    try:
        st = os.statvfs(SHM_DIR)
        if st.f_bavail * st.f_frsize >= 2 * nbytes and os.access(SHM_DIR, os.W_OK):
            return SHM_DIR
    except OSError:
        pass
    return Path(tempfile.gettempdir())


class _Allocator:
    """Allocates arrays in memory-mapped files named ``featbank-<pool>-<worker>-<n>``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._count = itertools.count()
        self._paths: dict[int, SharedArray] = {}

    def __call__(self, shape: tuple, dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if nbytes == 0:
            return np.empty(shape, dtype)
        path = shared_folder(nbytes) / f"{self.prefix}-{next(self._count)}"
        out = _mapped(path, shape, dtype, create=True)
        self._paths[id(out)] = SharedArray(str(path), tuple(int(d) for d in shape), dtype.str)
        return out

    def handle(self, array: np.ndarray) -> Any:
        """The ``SharedArray`` of an array this allocator made (the array itself otherwise)."""
        return self._paths.pop(id(array), array)


@dataclass(frozen=True)
class _Done:
    """A worker's last item."""


@dataclass(frozen=True)
class _Crashed:
    """A worker's stream raised (a bug: per-video errors are ``VideoFailed`` items)."""

    text: str


def _work(stream: WindowStream, wid: int, n_workers: int, items: Any, prefix: str) -> None:
    """A worker's body: its share of ``stream`` onto ``items``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the job's to handle: it stops the workers
    os.environ["OMP_NUM_THREADS"] = "1"  # native libraries in a worker use one thread: the job computes
    alloc = _Allocator(f"{prefix}-{wid}")
    try:
        for item in stream.items(wid, n_workers, alloc):
            if isinstance(item, ClipChunk):
                item = ClipChunk(item.key, item.first, alloc.handle(item.clips))
            items.put(item)
        items.put(_Done())
    except BaseException:  # noqa: BLE001 - reported to the job, which raises it
        items.put(_Crashed(traceback.format_exc()))


class DecodePool:
    """``n_workers`` processes decoding ``stream``; iterate for its items in order.

    Args:
        stream: the shard's ``WindowStream`` (pickled to each worker).
        n_workers: worker processes (at least 1).
        prefetch: items each worker may queue ahead of the job.
        context: the ``multiprocessing`` context that starts them.
    """

    def __init__(self, stream: WindowStream, n_workers: int, prefetch: int, context: Any) -> None:
        self.prefix = f"featbank-{os.getpid()}-{secrets.token_hex(4)}"
        self.queues = [context.Queue(maxsize=max(1, prefetch)) for _ in range(n_workers)]
        self.procs = [
            context.Process(target=_work, args=(stream, i, n_workers, q, self.prefix), daemon=True,
                            name=f"featbank-decode-{i}")
            for i, q in enumerate(self.queues)
        ]
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            for p in self.procs:
                p.start()

    def __iter__(self) -> Iterator[Any]:
        self.start()
        try:
            active = list(range(len(self.procs)))
            while active:
                for i in list(active):
                    item = self._next(i)
                    if isinstance(item, _Done):
                        active.remove(i)
                        continue
                    if isinstance(item, ClipChunk) and isinstance(item.clips, SharedArray):
                        item = ClipChunk(item.key, item.first, item.clips.attach())
                    yield item
        finally:
            self.close()

    def _next(self, i: int) -> Any:
        from .errors import ExtractError

        while True:
            try:
                item = self.queues[i].get(timeout=_POLL_S)
            except queue.Empty:
                proc = self.procs[i]
                if not proc.is_alive():
                    try:  # it may have put its last item just before exiting
                        item = self.queues[i].get(timeout=_POLL_S)
                    except queue.Empty:
                        raise ExtractError(
                            f"decoding worker {i} exited unexpectedly (exit code {proc.exitcode}); a decoder "
                            f"crashed or the machine ran out of memory. Rerun the job: committed videos are kept "
                            f"and skipped; --workers 0 decodes in the job process") from None
                else:
                    continue
            if isinstance(item, _Crashed):
                raise ExtractError(f"decoding worker {i} failed:\n{item.text}")
            return item

    def stop(self) -> None:
        """Terminate the workers (from any thread); the iteration then ends with an error."""
        for p in self.procs:
            if p.is_alive():
                p.terminate()

    def close(self) -> None:
        """Stop the workers and remove the files of windows nobody attached."""
        self.stop()
        for p in self.procs:
            if self._started:
                p.join(timeout=5)
        for q in self.queues:
            q.cancel_join_thread()
            q.close()
        for folder in {SHM_DIR, Path(tempfile.gettempdir())}:
            for leftover in folder.glob(f"{self.prefix}-*") if folder.is_dir() else ():
                leftover.unlink(missing_ok=True)
