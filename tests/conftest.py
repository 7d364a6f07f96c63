"""Shared test fixtures: the location of the real shared data (optional)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FEATBANK_SHARED_DATA", REPO.parent / "shared" / "data"))

# Tests run on a 2-core machine: keep torch from oversubscribing it.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real clips, frames, labels); skips when absent."""
    if not (SHARED_DATA / "clips").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set FEATBANK_SHARED_DATA)")
    return SHARED_DATA
