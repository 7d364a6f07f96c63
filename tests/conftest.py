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


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of tiny-model tests: on a shared 2-core box intra-op
    threads only add OpenMP barrier stalls. Opt in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real clips, frames, labels); skips when absent."""
    if not (SHARED_DATA / "clips").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set FEATBANK_SHARED_DATA)")
    return SHARED_DATA
