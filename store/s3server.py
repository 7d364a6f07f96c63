"""A local S3 server for tests and benchmarks: moto's standalone server on 127.0.0.1.

``local_s3()`` starts ``moto.server`` in its own process on a free loopback port, creates a
bucket and yields the environment a client needs (``AWS_ENDPOINT_URL``, test credentials);
the server stops when the block ends. Nothing leaves the machine.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Iterator

SERVER_PACKAGE = "moto[server]"


def available() -> bool:
    """True when moto's server and an S3 client (s3fs) are installed."""
    try:
        import flask  # noqa: F401  (moto[server] pulls it in)
        import moto  # noqa: F401
        import s3fs  # noqa: F401
    except ImportError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_s3(bucket: str = "featbank") -> Iterator[dict[str, str]]:
    """Run a moto S3 server; yields the environment variables that point clients at it.

    The variables are also set in ``os.environ`` for the duration (child processes inherit them).
    """
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    try:
        deadline = time.monotonic() + 60
        while True:  # wait until it answers (a failure timeout, not a timing assumption)
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the local S3 server (moto) did not start on {url}") from None
                time.sleep(0.1)
        os.environ.update(env)
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem(skip_instance_cache=True).mkdir(bucket)
        yield env
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
