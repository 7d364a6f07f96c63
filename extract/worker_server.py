"""The decoding workers' fork server, started before the job imports torch.

The job's DataLoader workers fork from a ``multiprocessing`` fork server that has torch and the
decoding modules imported (forking the job process itself, which holds OpenMP / OpenVINO
threads, is not safe). Starting that server costs a torch import in the server process; begun
at the very start of ``featbank extract``, it runs on another core while the job process imports
torch and loads its model, instead of after them. This module imports nothing heavy.
"""

from __future__ import annotations

WORKER_PRELOAD = ("torch", "featbank.extract._stream", "featbank.extract.transforms")


def start_worker_server() -> None:
    """Start this process's fork server with the workers' modules preloaded (no-op when running).

    Returns at once: the server imports its modules in the background.
    """
    import multiprocessing
    from multiprocessing import forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload(list(WORKER_PRELOAD))
    forkserver.ensure_running()
