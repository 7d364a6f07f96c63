"""Where featbank keeps what it derives once and reuses: converted weights and compiled models."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

RANDOM_WEIGHTS_ID = "random"  # the weights id of a randomly initialised model: never cached


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` then rename onto ``path``: readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def cache_root() -> Path:
    """``$FEATBANK_CACHE``, or ``~/.cache/featbank``."""
    root = os.environ.get("FEATBANK_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "featbank"
