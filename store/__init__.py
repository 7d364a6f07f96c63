"""featbank.store: the Zarr feature store (imports none of extract, heads, experiments)."""

from .base import FeatureSet, FeatureStore
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
from .schema import SCHEMA_VERSION, BackboneSpec, FeatureSetInfo, VideoMeta, VideoRows
from .base import FAILURE_KEYS, META_COLUMNS
from .memory import MemoryStore
from .zarr_store import COMPRESSIONS, ZarrFeatureSet, ZarrStore, open_store
