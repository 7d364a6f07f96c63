"""Every store backend passes the shipped conformance suite (featbank.store.testing)."""

from __future__ import annotations

from featbank.store.memory import MemoryStore
from featbank.store.testing import StoreTests


class TestMemoryStore(StoreTests):
    def make_store(self, tmp_path):
        return MemoryStore()
