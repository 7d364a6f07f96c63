"""Typed errors of the feature store.

Every error names the culprit (path, feature set, video id, dimension) and, where
there is one, what the user can do about it.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error raised by ``featbank.store``."""


class NotAStoreError(StoreError):
    """The path exists but is not a featbank store (or does not exist in read mode)."""


class SchemaVersionError(StoreError):
    """The store was written by a newer featbank schema than this one can read."""


class UnknownFeatureSetError(StoreError, KeyError):
    """No feature set of that name exists in the store."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownVideoError(StoreError, KeyError):
    """No committed video of that id exists in the feature set."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class FeatureSetConflictError(StoreError):
    """A feature set of that name exists with a different backbone, weights, shape or dtype."""


class DimensionMismatchError(StoreError, ValueError):
    """Rows do not have the feature set's row shape."""


class NonFiniteError(StoreError, ValueError):
    """Rows contain NaN or Inf values (rejected unless ``allow_nonfinite=True``)."""


class VideoConflictError(StoreError):
    """A committed video is being re-written with different content without ``overwrite=True``."""


class StaleFeaturesError(StoreError):
    """The feature set was produced by backbone weights that are no longer current."""


class ImportFormatError(StoreError, ValueError):
    """An HDF5 file or npy folder cannot be imported (mixed dims, non-numeric data, ...)."""
