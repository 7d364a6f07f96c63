"""Typed errors of the extraction side (decoding, manifests, weights, backbones).

Every error names the culprit (file, manifest line, weights file, backbone name) and the
reason, so the CLI can print it as one line and a batch job can record it per video.
"""

from __future__ import annotations

import os

DECODE_KINDS: tuple[str, ...] = (
    "missing",  # the path does not exist
    "not_video",  # the file exists but is not a video/image/frame folder (e.g. a text file)
    "unreadable",  # no permission, or a directory where a file was expected
    "corrupt",  # the container/stream cannot be parsed
    "truncated",  # the file ends before its declared frames (cut download)
    "empty",  # a 0-byte file or a frame folder without frames
    "zero_frames",  # a valid container with no decodable video frame
    "decode_timeout",  # the decoder worker did not answer within the per-video timeout
    "decode_crash",  # the decoder worker process died (segfault, abort)
)


class ExtractError(Exception):
    """Base class of every error raised by ``featbank.extract`` (the CLI prints it as one line)."""


class DecodeError(ExtractError):
    """A video, frame folder or image could not be decoded.

    Attributes:
        path: The offending file or folder.
        kind: One of :data:`DECODE_KINDS`.
        reason: Human-readable detail (decoder message, frame index, timeout).
    """

    def __init__(self, path: str | os.PathLike[str], kind: str, reason: str) -> None:
        if kind not in DECODE_KINDS:
            raise ValueError(f"unknown decode error kind {kind!r}; expected one of {DECODE_KINDS}")
        self.path = os.fspath(path)
        self.kind = kind
        self.reason = reason
        super().__init__(path, kind, reason)

    def __str__(self) -> str:
        return f"cannot decode {self.path!r} ({self.kind}): {self.reason}"

    def __reduce__(self):  # picklable across the decoder worker's pipe
        return (type(self), (self.path, self.kind, self.reason))


class ManifestError(ExtractError):
    """A manifest file is malformed; the message names the manifest path and 1-based line number."""


class WeightsError(ExtractError):
    """Bad or missing weights file, sha256 mismatch, or state_dict key mismatch."""


class BackboneError(ExtractError):
    """Unknown backbone name or endpoint; the message lists the valid ones."""

    @classmethod
    def unknown_endpoint(cls, backbone: str, endpoint: str, valid: "tuple[str, ...] | list[str]") -> "BackboneError":
        return cls(f"{backbone}: unknown endpoint {endpoint!r}; valid endpoints: {', '.join(valid)}")


class EngineError(ExtractError):
    """A runtime or precision that cannot run on this machine (the message says why and what to use)."""


class SettingsConflictError(ExtractError):
    """A job would add rows made with other settings (sampling, backbone, weights, transforms,
    precision) to an existing feature set; the message names each differing field."""
