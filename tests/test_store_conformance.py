"""Every store backend passes the shipped conformance suite (featbank.store.testing)."""

from __future__ import annotations

import uuid

from featbank.store import MemoryStore, ZarrStore, open_store
from featbank.store.testing import StoreTests


class TestMemoryStore(StoreTests):
    def make_store(self, tmp_path):
        return MemoryStore()


class TestZarrStoreLocal(StoreTests):
    def make_store(self, tmp_path):
        return open_store(tmp_path / "store.zarr", mode="w")

    def reopen(self, store):
        store.close()
        return ZarrStore(store.path, mode="a")


class TestZarrStoreMemoryURL(StoreTests):
    """The same store through fsspec (``memory://``): zarr-python reads, no direct shard access."""

    def make_store(self, tmp_path):
        return open_store(f"memory://featbank-test/{uuid.uuid4().hex}", mode="w")

    def reopen(self, store):
        store.close()
        return open_store(store.path, mode="a")
