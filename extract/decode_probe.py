"""Checks before opening an input and diagnosis of why a decoder failed.

``check_input`` turns missing / unreadable / empty inputs into typed errors before any native
decoder touches them (a FIFO would block a decoder forever). ``diagnose`` classifies a decoder
failure as ``truncated``, ``corrupt`` or ``not_video`` from the file's leading bytes and, for
MP4/MOV files, a walk over the top-level boxes (a box that runs past the end of the file means the
file was cut short).
"""

from __future__ import annotations

import os
import stat
import struct

from featbank.extract.errors import DecodeError

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".m2ts", ".flv", ".wmv", ".3gp", ".ogv", ".vob"}
)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})

# Leading bytes of container formats decoders understand (offset, signature).
_CONTAINER_MAGIC: tuple[tuple[int, bytes], ...] = (
    (4, b"ftyp"),  # MP4 / MOV / 3GP
    (4, b"moov"),
    (4, b"mdat"),
    (4, b"wide"),
    (4, b"free"),
    (0, b"RIFF"),  # AVI
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska / WebM (EBML)
    (0, b"OggS"),
    (0, b"FLV"),
    (0, b"\x00\x00\x01\xba"),  # MPEG-PS
    (0, b"\x00\x00\x01\xb3"),  # MPEG-1/2 elementary stream
    (0, b"\x30\x26\xb2\x75"),  # ASF / WMV
)
_IMAGE_MAGIC: tuple[bytes, ...] = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM")
_MP4_TOP_BOXES = frozenset({b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"uuid", b"meta", b"pdin", b"moof", b"mfra", b"styp", b"sidx"})


def check_input(path: str, *, allow_dir: bool) -> os.stat_result:
    """Reject inputs no decoder should open: missing, not readable, special files, 0-byte files.

    Args:
        path: File or folder.
        allow_dir: Whether a directory (frame folder) is acceptable here.

    Returns:
        The ``os.stat`` result of the path.

    Raises:
        DecodeError: ``missing``, ``unreadable`` or ``empty``.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DecodeError(path, "missing", "no such file or folder; check the manifest path and root") from None
    except PermissionError as e:
        raise DecodeError(path, "unreadable", f"permission denied ({e.strerror})") from None
    except OSError as e:
        raise DecodeError(path, "unreadable", f"cannot stat: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        if not allow_dir:
            raise DecodeError(path, "unreadable", "is a folder, but this backend expects a file")
        if not os.access(path, os.R_OK | os.X_OK):
            raise DecodeError(path, "unreadable", "permission denied (folder not listable)")
        return st
    if not stat.S_ISREG(st.st_mode):
        raise DecodeError(path, "unreadable", "not a regular file (FIFO, socket or device)")
    if not os.access(path, os.R_OK):
        raise DecodeError(path, "unreadable", "permission denied (no read access)")
    if st.st_size == 0:
        raise DecodeError(path, "empty", "0-byte file")
    return st


def read_head(path: str, n: int = 64) -> bytes:
    """The first ``n`` bytes of a file (``unreadable`` on an OS error)."""
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as e:
        raise DecodeError(path, "unreadable", f"cannot read: {e.strerror or e}") from None


def is_image_file(path: str) -> bool:
    """True for a still image by extension or by JPEG/PNG/BMP signature."""
    if os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS:
        return True
    try:
        head = read_head(path, 8)
    except DecodeError:
        return False
    return any(head.startswith(m) for m in _IMAGE_MAGIC)


def has_container_magic(head: bytes) -> bool:
    """True when the leading bytes are those of a known video container."""
    return any(head[off : off + len(sig)] == sig for off, sig in _CONTAINER_MAGIC)


def looks_like_text(head: bytes) -> bool:
    """True when the bytes decode as UTF-8 text made of printable characters and whitespace."""
    if not head:
        return False
    try:
        s = head.decode("utf-8")
    except UnicodeDecodeError:
        # A multi-byte character may be cut at the end of the sample.
        try:
            s = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return all(c.isprintable() or c in "\t\r\n\f" for c in s)


def mp4_truncation(path: str) -> str | None:
    """Walk the top-level MP4/MOV boxes; describe the truncation if a box runs past the end of the file.

    Returns:
        A reason string when the file is cut short (or the index box is missing), else None.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            pos = 0
            seen: set[bytes] = set()
            while pos + 8 <= size:
                f.seek(pos)
                hdr = f.read(16)
                box_size, box_type = struct.unpack(">I4s", hdr[:8])
                if box_type not in _MP4_TOP_BOXES:
                    return None  # not an MP4 box layout we understand: no verdict
                if box_size == 1 and len(hdr) >= 16:
                    box_size = struct.unpack(">Q", hdr[8:16])[0]
                elif box_size == 0:  # box extends to the end of the file
                    box_size = size - pos
                if box_size < 8:
                    return None
                seen.add(box_type)
                if pos + box_size > size:
                    return (
                        f"MP4 box '{box_type.decode('latin-1')}' at byte {pos} declares {box_size} bytes "
                        f"but the file ends after {size - pos}: file cut short (interrupted download or copy?)"
                    )
                pos += box_size
    except OSError:
        return None
    if b"mdat" in seen and b"moov" not in seen and b"moof" not in seen:
        return "MP4 index (moov box) missing: file cut short or still being written"
    return None


def diagnose(path: str, message: str) -> DecodeError:
    """Classify a decoder failure on an existing, non-empty, readable file.

    Args:
        path: The file.
        message: The decoder's own error text (kept in the reason).

    Returns:
        A ``DecodeError`` of kind ``truncated``, ``corrupt`` or ``not_video``.
    """
    head = read_head(path)
    message = " ".join(str(message).split())[:300]
    ext = os.path.splitext(path)[1].lower()
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free") or ext in (".mp4", ".m4v", ".mov", ".3gp"):
        cut = mp4_truncation(path)
        if cut is not None:
            return DecodeError(path, "truncated", cut)
    if has_container_magic(head):
        return DecodeError(path, "corrupt", f"recognised container header but the decoder failed: {message}")
    if looks_like_text(head):
        return DecodeError(path, "not_video", f"file is text, not a video (decoder: {message})")
    if ext in VIDEO_EXTENSIONS:
        return DecodeError(path, "corrupt", f"unrecognisable data in a {ext} file: {message}")
    return DecodeError(path, "not_video", f"not a recognised video container (decoder: {message})")
