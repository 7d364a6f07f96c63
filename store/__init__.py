"""featbank.store: the Zarr feature store (imports none of extract, heads, experiments).

Names are imported from their modules on first use, so ``featbank.store.schema`` (or a name such
as ``BackboneSpec``) costs no Zarr import: decoding workers and a job's start-up read the schema
long before a store is opened.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "CorruptDataError": "._segments",
    "FAILURE_KEYS": ".base", "META_COLUMNS": ".base", "FeatureSet": ".base", "FeatureStore": ".base",
    "iter_rows_of": ".base",
    "DimensionMismatchError": ".errors", "FeatureSetConflictError": ".errors", "ImportFormatError": ".errors",
    "NonFiniteError": ".errors", "NotAStoreError": ".errors", "SchemaVersionError": ".errors",
    "StaleFeaturesError": ".errors", "StoreError": ".errors", "UnknownFeatureSetError": ".errors",
    "UnknownVideoError": ".errors", "VideoConflictError": ".errors",
    "BatchPolicy": "._objects",
    "MemoryFeatureSet": ".memory", "MemoryStore": ".memory",
    "SCHEMA_VERSION": ".schema", "BackboneSpec": ".schema", "FeatureSetInfo": ".schema", "VideoMeta": ".schema",
    "VideoRows": ".schema",
    "COMPRESSIONS": ".zarr_store", "ZarrFeatureSet": ".zarr_store", "ZarrStore": ".zarr_store",
    "open_store": ".zarr_store",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


if TYPE_CHECKING:  # static checkers and IDEs see the names directly
    from ._objects import BatchPolicy
    from ._segments import CorruptDataError
    from .base import FAILURE_KEYS, META_COLUMNS, FeatureSet, FeatureStore, iter_rows_of
    from .errors import (
        DimensionMismatchError,
        FeatureSetConflictError,
        ImportFormatError,
        NonFiniteError,
        NotAStoreError,
        SchemaVersionError,
        StaleFeaturesError,
        StoreError,
        UnknownFeatureSetError,
        UnknownVideoError,
        VideoConflictError,
    )
    from .memory import MemoryFeatureSet, MemoryStore
    from .schema import SCHEMA_VERSION, BackboneSpec, FeatureSetInfo, VideoMeta, VideoRows
    from .zarr_store import COMPRESSIONS, ZarrFeatureSet, ZarrStore, open_store
