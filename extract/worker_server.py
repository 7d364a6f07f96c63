"""The decoding workers' fork server, started at the very start of ``featbank extract``.

The job's decoding workers fork from a ``multiprocessing`` fork server that has the decoding
modules imported (forking the job process itself, which holds OpenMP / OpenVINO threads, is not
safe). Begun before the job imports anything heavy, the server's imports run on another core
while the job opens its store and prepares its engine, and the workers it forks start decoding at
once. The decoding side needs no torch, so neither does the server. This module imports nothing
heavy.
"""

from __future__ import annotations

import os

WORKER_PRELOAD = ("featbank.extract._workers", "featbank.extract.transforms", "featbank.extract.decode")

# Decoding allocates arrays of the same sizes for every chunk (frames, resized pixels, windows).
# glibc returns allocations above 32 MB to the system when freed and faults fresh pages in for the
# next one; keeping them in the heap makes a worker's later chunks reuse warm memory. Only the
# server (and the workers and decoder processes it starts) get this; other C libraries ignore it.
DECODER_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 31)}


def start_worker_server() -> None:
    """Start this process's fork server with the workers' modules preloaded (no-op when running).

    Returns at once: the server imports its modules in the background.
    """
    import multiprocessing
    from multiprocessing import forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload(list(WORKER_PRELOAD))
    saved = {k: os.environ.get(k) for k in DECODER_MALLOC_ENV}
    os.environ.update({k: v for k, v in DECODER_MALLOC_ENV.items() if saved[k] is None})
    try:
        forkserver.ensure_running()  # the server inherits this environment
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
