"""featbank.store: the Zarr feature store (imports none of extract, heads, experiments)."""

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
from ._objects import BatchPolicy
from .memory import MemoryFeatureSet, MemoryStore
from .schema import SCHEMA_VERSION, BackboneSpec, FeatureSetInfo, VideoMeta, VideoRows
from .zarr_store import COMPRESSIONS, ZarrFeatureSet, ZarrStore, open_store

__all__ = [
    "COMPRESSIONS", "FAILURE_KEYS", "META_COLUMNS", "SCHEMA_VERSION",
    "BackboneSpec", "BatchPolicy", "FeatureSet", "FeatureSetInfo", "FeatureStore", "MemoryFeatureSet", "MemoryStore",
    "VideoMeta", "VideoRows", "ZarrFeatureSet", "ZarrStore", "iter_rows_of", "open_store",
    "CorruptDataError", "DimensionMismatchError", "FeatureSetConflictError", "ImportFormatError",
    "NonFiniteError", "NotAStoreError", "SchemaVersionError", "StaleFeaturesError", "StoreError",
    "UnknownFeatureSetError", "UnknownVideoError", "VideoConflictError",
]
