"""Plain-file operations next to the Zarr data (commit logs, index files, pointers).

Local folders use ``os`` directly (atomic ``os.replace``, ``O_APPEND`` writes); any other
fsspec URL goes through its filesystem (object stores put whole objects atomically).
"""

from __future__ import annotations

import os
import posixpath
import uuid
from typing import Any

import fsspec

# fsspec protocols of object stores (immutable objects, no append): written through ``_objects``
OBJECT_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "oss"})


def is_object_url(url: str) -> bool:
    return "://" in url and url.split("://", 1)[0].lower() in OBJECT_PROTOCOLS


class Files:
    """File access rooted at a store path (a local folder or an fsspec URL).

    Args:
        url: local path or fsspec URL of the store root.
        storage_options: passed to fsspec for URLs.
    """

    def __init__(self, url: str, **storage_options: Any) -> None:
        self.objects = is_object_url(url)
        if self.objects:  # listings must be fresh: other machines add commit objects at any time
            storage_options = {"use_listings_cache": False, **storage_options}
        self.storage_options = storage_options  # what every fsspec client of this store is opened with
        if "://" in url and not url.startswith("file://"):
            self.fs, self.root = fsspec.core.url_to_fs(url, **storage_options)
            self.local = False
        else:
            self.fs = None
            self.root = os.path.abspath(url[len("file://"):] if url.startswith("file://") else url)
            self.local = True

    def path(self, key: str) -> str:
        """Absolute path (or fs path) of ``key`` (``/``-separated, relative to the root)."""
        if not key:
            return self.root
        return os.path.join(self.root, *key.split("/")) if self.local else posixpath.join(self.root, key)

    def exists(self, key: str) -> bool:
        return os.path.exists(self.path(key)) if self.local else self.fs.exists(self.path(key))

    def isdir(self, key: str) -> bool:
        return os.path.isdir(self.path(key)) if self.local else self.fs.isdir(self.path(key))

    def read(self, key: str, offset: int = 0) -> bytes:
        """Bytes of a file from ``offset`` (``FileNotFoundError`` when missing)."""
        if self.local:
            with open(self.path(key), "rb") as f:
                f.seek(offset)
                return f.read()
        return self.fs.cat_file(self.path(key), start=offset or None)

    def size(self, key: str) -> int:
        return os.path.getsize(self.path(key)) if self.local else int(self.fs.size(self.path(key)))

    def write_atomic(self, key: str, data: bytes) -> None:
        """Replace a file in one step: readers see the old or the new content, never a mix."""
        p = self.path(key)
        if self.local:
            os.makedirs(os.path.dirname(p), exist_ok=True)
            tmp = f"{p}.{uuid.uuid4().hex}.partial"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        else:
            self.fs.pipe_file(p, data)

    def listdir(self, key: str) -> list[str]:
        """Names directly under ``key`` (empty when it does not exist)."""
        p = self.path(key)
        if self.local:
            try:
                return sorted(os.listdir(p))
            except (FileNotFoundError, NotADirectoryError):
                return []
        try:
            return sorted(posixpath.basename(e.rstrip("/")) for e in self.fs.ls(p, detail=False))
        except FileNotFoundError:
            return []

    def rm(self, key: str) -> None:
        """Remove a file or a folder tree (missing is fine)."""
        p = self.path(key)
        if self.local:
            import shutil

            if os.path.isdir(p):
                shutil.rmtree(p, ignore_errors=True)
            elif os.path.exists(p):
                os.remove(p)
        elif self.fs.exists(p):
            self.fs.rm(p, recursive=True)

    def open_append(self, key: str) -> "Appender":
        """An append-only handle: each ``append`` lands whole at the end of the file."""
        return Appender(self, key)


class Appender:
    """Appends records to a log file; local files use one ``O_APPEND`` write per record."""

    def __init__(self, files: Files, key: str) -> None:
        self.files, self.key = files, key
        self.fd: int | None = None
        self.count = 0  # object stores: records written so far (each one its own object)
        if files.local:
            p = files.path(key)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            self.fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        else:
            files.fs.makedirs(posixpath.dirname(files.path(key)), exist_ok=True)

    def append(self, data: bytes, fsync: bool = False) -> None:
        if self.fd is not None:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]
            if fsync:
                os.fsync(self.fd)
        elif self.files.objects:  # no append on object stores: each record is a new numbered object
            self.count += 1
            self.files.fs.pipe_file(f"{self.files.path(self.key)[:-len('.jsonl')]}-{self.count:06d}.jsonl", data)
        else:
            with self.files.fs.open(self.files.path(self.key), "ab") as f:
                f.write(data)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
