"""Video manifests in the seed projects' formats.

Text formats (one video per line; blank lines and lines starting with ``#`` are skipped):

- ``path_label``: ``path label`` (CycDA, CFB);
- ``csv``: ``path,n_frames[,label]`` (multi-level SSL); an optional header line ``path,...``;
- ``mmaction``: ``path n_frames label`` or ``path offset n_frames label`` (GLAD rawframe lists);
- ``tree``: a directory ``ROOT/CLASS/VIDEO`` (video files, images or frame folders), class index =
  position of CLASS in sorted order.

Paths are relative to ``root`` (default: the manifest's folder; for a tree, the tree itself).

Video ids never contain where the data happens to live, so they stay the same when the data (with
its manifest) moves: ``video_id`` is the path relative to a base folder, with a known media
extension removed, POSIX separators, unique within the manifest. The base folder is

1. ``root`` when given (an entry outside it is an error: its id would depend on the location);
2. else the manifest's folder, for relative entries and absolute entries below that folder;
3. else, for absolute entries outside the manifest's folder, their deepest common folder
   (``/data/x/a.mp4`` and ``/data/y/b.mp4`` -> ``x/a`` and ``y/b``; moving ``/data`` to
   ``/mnt/data`` and rewriting the manifest keeps the ids).
Whitespace formats cannot hold paths with spaces; use csv for those.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from featbank.extract.decode_probe import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from featbank.extract.errors import ManifestError

FORMATS = ("auto", "path_label", "csv", "mmaction", "tree")
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS
_CSV_HEADER_NAMES = frozenset({"path", "video", "video_path", "file", "filename", "name"})


@dataclass(frozen=True)
class ManifestEntry:
    """One video of a manifest.

    Attributes:
        video_id: Unique id: path relative to root without its media extension.
        path: Absolute (or root-joined) path of the video file / frame folder.
        labels: Class indices (empty when the format has none).
        n_frames: Frame count stated by the manifest, -1 when not stated.
        offset: First frame to use (mmaction 4-field lines), else 0.
    """

    video_id: str
    path: str
    labels: tuple[int, ...] = ()
    n_frames: int = -1
    offset: int = 0


def video_id_for(path: str, root: str) -> str:
    """``path`` relative to ``root`` (POSIX separators) with a known media extension removed.

    Raises:
        ValueError: ``path`` is not below ``root``.
    """
    ap, ar = os.path.abspath(path), os.path.abspath(root)
    if os.path.commonpath([ap, ar]) != ar:
        raise ValueError(f"{path} is not below {root}")
    rel = os.path.relpath(ap, ar)
    stem, ext = os.path.splitext(rel)
    if ext.lower() in MEDIA_EXTENSIONS:
        rel = stem
    return rel.replace(os.sep, "/")


def _below(path: str, folder: str) -> bool:
    ap, af = os.path.abspath(path), os.path.abspath(folder)
    return os.path.commonpath([ap, af]) == af


def read_manifest(path: str | os.PathLike[str], *, root: str | None = None, fmt: str = "auto") -> list[ManifestEntry]:
    """Read a manifest file or a ``CLASS/VIDEO`` directory tree.

    Args:
        path: Manifest file, or a directory (tree format).
        root: Folder the manifest's relative paths are relative to (default: the manifest's folder,
            or the tree itself).
        fmt: ``"auto"``, ``"path_label"``, ``"csv"``, ``"mmaction"`` or ``"tree"``. ``auto``: a
            directory is a tree; ``.csv`` files or comma-separated lines are csv; otherwise the
            field count of the first entry line decides (2: path_label, 3 or 4: mmaction).

    Returns:
        Entries in manifest order (tree: sorted by class, then video name).

    Raises:
        ManifestError: Missing manifest, malformed line (names the 1-based line number and the
            line), duplicate video id (names both lines), or no entries at all.
    """
    p = os.fspath(path)
    if fmt not in FORMATS:
        raise ManifestError(f"{p}: unknown manifest format {fmt!r}; expected one of {FORMATS}")
    if os.path.isdir(p):
        if fmt not in ("auto", "tree"):
            raise ManifestError(f"{p}: is a directory, which only the 'tree' format reads (got fmt={fmt!r})")
        return _read_tree(p, root)
    if fmt == "tree":
        raise ManifestError(f"{p}: fmt='tree' needs a directory of CLASS/VIDEO")
    try:
        with open(p, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ManifestError(f"{p}: manifest file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"{p}: cannot read the manifest ({e})") from None
    base = root if root is not None else os.path.dirname(os.path.abspath(p))
    lines = [(i, ln.strip()) for i, ln in enumerate(text.splitlines(), start=1)]
    lines = [(i, ln) for i, ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise ManifestError(f"{p}: the manifest has no entries")
    if fmt == "auto":
        fmt = _guess_format(p, lines[0][1])
    parsed = []
    for k, (lineno, line) in enumerate(lines):
        if fmt == "csv" and k == 0 and _is_csv_header(line):
            continue
        try:
            rel, labels, n_frames, offset = _parse_line(line, fmt)
        except ValueError as e:
            raise ManifestError(f"{p}:{lineno}: {e} (format {fmt!r}): {line!r}") from None
        full = rel if os.path.isabs(rel) else os.path.join(base, rel)
        if root is not None and not _below(full, root):
            raise ManifestError(f"{p}:{lineno}: {rel} is outside --root {root}; video ids are paths relative "
                                f"to the root, so every entry must lie below it: {line!r}")
        parsed.append((lineno, line, full, labels, n_frames, offset))
    # absolute entries outside the manifest's folder: ids relative to their deepest common folder
    outside = [os.path.abspath(q[2]) for q in parsed if not _below(q[2], base)]
    common = os.path.commonpath([os.path.dirname(o) for o in outside]) if outside else base
    entries: list[ManifestEntry] = []
    seen: dict[str, int] = {}
    for lineno, line, full, labels, n_frames, offset in parsed:
        vid = video_id_for(full, base if _below(full, base) else common)
        if vid in seen:
            raise ManifestError(f"{p}:{lineno}: duplicate video id {vid!r} (first on line {seen[vid]}): {line!r}")
        seen[vid] = lineno
        entries.append(ManifestEntry(vid, full, labels, n_frames, offset))
    if not entries:
        raise ManifestError(f"{p}: the manifest has no entries")
    return entries


def _guess_format(path: str, first: str) -> str:
    if path.lower().endswith(".csv") or "," in first:
        return "csv"
    n = len(first.split())
    return "path_label" if n == 2 else "mmaction"


def _is_csv_header(line: str) -> bool:
    fields = [f.strip().lower() for f in line.split(",")]
    return len(fields) >= 2 and fields[0] in _CSV_HEADER_NAMES and not _is_int(fields[1])


def _is_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True


def _int(value: str, what: str, minimum: int | None = None) -> int:
    try:
        v = int(value)
    except ValueError:
        raise ValueError(f"{what} must be an integer, got {value!r}") from None
    if minimum is not None and v < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {v}")
    return v


def _parse_line(line: str, fmt: str) -> tuple[str, tuple[int, ...], int, int]:
    """One entry line -> (relative path, labels, n_frames, offset); ValueError says what is wrong."""
    if fmt == "csv":
        f = [x.strip() for x in line.split(",")]
        if len(f) not in (2, 3) or not f[0]:
            raise ValueError(f"expected 'path,n_frames[,label]', got {len(f)} fields")
        labels = (_int(f[2], "label"),) if len(f) == 3 and f[2] != "" else ()
        return f[0], labels, _int(f[1], "n_frames", 0), 0
    f = line.split()
    if fmt == "path_label":
        if len(f) != 2:
            raise ValueError(f"expected 'path label', got {len(f)} fields")
        return f[0], (_int(f[1], "label"),), -1, 0
    if fmt == "mmaction":
        if len(f) == 3:
            return f[0], (_int(f[2], "label"),), _int(f[1], "n_frames", 0), 0
        if len(f) == 4:
            return f[0], (_int(f[3], "label"),), _int(f[2], "n_frames", 0), _int(f[1], "offset", 0)
        raise ValueError(f"expected 'path n_frames label' or 'path offset n_frames label', got {len(f)} fields")
    raise ValueError(f"unknown format {fmt!r}")


def _read_tree(tree: str, root: str | None) -> list[ManifestEntry]:
    base = root if root is not None else tree
    if not _below(tree, base):
        raise ManifestError(f"{tree}: the tree is outside --root {root}; video ids are paths relative to the root")
    try:
        classes = sorted(d for d in os.listdir(tree) if not d.startswith(".") and os.path.isdir(os.path.join(tree, d)))
    except OSError as e:
        raise ManifestError(f"{tree}: cannot list the directory tree ({e})") from None
    if not classes:
        raise ManifestError(f"{tree}: no class folders (expected ROOT/CLASS/VIDEO)")
    entries: list[ManifestEntry] = []
    for label, cls in enumerate(classes):
        cdir = os.path.join(tree, cls)
        for name in sorted(os.listdir(cdir)):
            full = os.path.join(cdir, name)
            if name.startswith("."):
                continue
            if os.path.isdir(full) or os.path.splitext(name)[1].lower() in MEDIA_EXTENSIONS:
                entries.append(ManifestEntry(video_id_for(full, base), full, (label,)))
    if not entries:
        raise ManifestError(f"{tree}: no videos, images or frame folders under the class folders")
    seen: dict[str, str] = {}
    for e in entries:
        if e.video_id in seen:
            raise ManifestError(f"{tree}: duplicate video id {e.video_id!r} ({seen[e.video_id]} and {e.path})")
        seen[e.video_id] = e.path
    return entries
