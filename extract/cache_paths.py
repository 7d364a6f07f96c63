"""Where featbank keeps what it derives once and reuses: converted weights and compiled models."""

from __future__ import annotations

import os
from pathlib import Path

RANDOM_WEIGHTS_ID = "random"  # the weights id of a randomly initialised model: never cached


def cache_root() -> Path:
    """``$FEATBANK_CACHE``, or ``~/.cache/featbank``."""
    root = os.environ.get("FEATBANK_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "featbank"
