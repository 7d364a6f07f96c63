"""The decoding workers' fork server, started at the very start of ``featbank extract``.

The job's decoding workers fork from a ``multiprocessing`` fork server that has the decoding
modules imported (forking the job process itself, which holds OpenMP / OpenVINO threads, is not
safe). Begun before the job imports anything heavy, the server's imports run on another core
while the job opens its store and loads its model, and the workers it forks start decoding at
once. The decoding side needs no torch, so neither does the server. This module imports nothing
heavy.
"""

from __future__ import annotations

WORKER_PRELOAD = ("featbank.extract._workers", "featbank.extract.transforms", "featbank.extract.decode")


def start_worker_server() -> None:
    """Start this process's fork server with the workers' modules preloaded (no-op when running).

    Returns at once: the server imports its modules in the background.
    """
    import multiprocessing
    from multiprocessing import forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload(list(WORKER_PRELOAD))
    forkserver.ensure_running()
