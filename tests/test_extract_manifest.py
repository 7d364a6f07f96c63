"""Manifests: every format, comments/blank lines, line-numbered errors, trees, duplicate ids."""

from __future__ import annotations

import os

import pytest

from featbank.extract.errors import ManifestError
from featbank.extract.manifest import ManifestEntry, read_manifest


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_path_label(tmp_path):
    m = write(tmp_path, "train.txt", "# CycDA list\n\nvideos/a.mp4 3\n  videos/sub/b.avi 0  \n/abs/c.mkv 12\n")
    e = read_manifest(m)
    assert e == [
        ManifestEntry("videos/a", str(tmp_path / "videos/a.mp4"), (3,)),
        ManifestEntry("videos/sub/b", str(tmp_path / "videos/sub/b.avi"), (0,)),
        ManifestEntry("c", "/abs/c.mkv", (12,)),  # outside the manifest folder: relative to its own folder
    ]
    assert read_manifest(m, fmt="path_label") == e


def test_root_overrides_the_manifest_folder(tmp_path):
    m = write(tmp_path, "list.txt", "a.mp4 1\n")
    (e,) = read_manifest(m, root="/data/videos")
    assert (e.video_id, e.path) == ("a", "/data/videos/a.mp4")


def test_csv_with_and_without_label_and_header(tmp_path):
    m = write(tmp_path, "list.csv", "path,n_frames,label\nclips/x y.mp4,120,4\nclips/z.mp4,300\n")
    e = read_manifest(m)
    assert e == [
        ManifestEntry("clips/x y", str(tmp_path / "clips/x y.mp4"), (4,), 120),
        ManifestEntry("clips/z", str(tmp_path / "clips/z.mp4"), (), 300),
    ]
    m2 = write(tmp_path, "nohdr.txt", "v1.mp4,10,1\n")
    assert read_manifest(m2)[0] == ManifestEntry("v1", str(tmp_path / "v1.mp4"), (1,), 10)  # commas -> csv


def test_mmaction_three_and_four_fields(tmp_path):
    m = write(tmp_path, "glad.txt", "rawframes/v_001 150 7\nrawframes/v_002 10 90 2\n")
    e = read_manifest(m)
    assert e == [
        ManifestEntry("rawframes/v_001", str(tmp_path / "rawframes/v_001"), (7,), 150, 0),
        ManifestEntry("rawframes/v_002", str(tmp_path / "rawframes/v_002"), (2,), 90, 10),
    ]


@pytest.mark.parametrize(
    "fmt, text, bad_line, words",
    [
        ("path_label", "a.mp4 1\nb.mp4\nc.mp4 2\n", 2, "expected 'path label'"),
        ("path_label", "a.mp4 1\n\n# note\nb.mp4 x\n", 4, "label must be an integer"),
        ("mmaction", "a 10 1\nb 10 1 2 3\n", 2, "got 5 fields"),
        ("mmaction", "a 10 1\nb ten 1\n", 2, "n_frames must be an integer"),
        ("mmaction", "a 10 1\nb -4 1\n", 2, "n_frames must be >= 0"),
        ("csv", "a.mp4,10,1\nb.mp4,1.5,1\n", 2, "n_frames must be an integer"),
        ("csv", "a.mp4,10,1\nb.mp4\n", 2, "expected 'path,n_frames[,label]'"),
        ("csv", "a.mp4,10,1\nb.mp4,3,1,9\n", 2, "got 4 fields"),
    ],
)
def test_malformed_line_names_manifest_and_line(tmp_path, fmt, text, bad_line, words):
    m = write(tmp_path, "m.csv" if fmt == "csv" else "m.txt", text)
    for f in (fmt, "auto"):
        with pytest.raises(ManifestError) as e:
            read_manifest(m, fmt=f)
        msg = str(e.value)
        assert f"{m}:{bad_line}:" in msg and words in msg
        assert text.splitlines()[bad_line - 1].strip() in msg


def test_duplicate_ids_rejected_with_both_lines(tmp_path):
    m = write(tmp_path, "dup.txt", "a.mp4 1\nb.mp4 2\n\na.avi 3\n")  # same id "a" from different extensions
    with pytest.raises(ManifestError, match=r"dup.txt:4: duplicate video id 'a' \(first on line 1\)"):
        read_manifest(m)


def test_empty_missing_and_unknown(tmp_path):
    with pytest.raises(ManifestError, match="no entries"):
        read_manifest(write(tmp_path, "e.txt", "# only a comment\n\n"))
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "nope.txt")
    with pytest.raises(ManifestError, match="unknown manifest format"):
        read_manifest(write(tmp_path, "x.txt", "a 1\n"), fmt="json")


def test_directory_tree(tmp_path):
    tree = tmp_path / "tree"
    for cls, names in {"walk": ["w2.mp4", "w1.avi"], "jump": ["j1.mp4", "frames_dir"], "zzz_empty": []}.items():
        (tree / cls).mkdir(parents=True)
        for n in names:
            if n.endswith("_dir"):
                (tree / cls / n).mkdir()
            else:
                (tree / cls / n).write_bytes(b"x")
    (tree / "walk" / "README.txt").write_text("not a video")
    (tree / "walk" / ".hidden.mp4").write_bytes(b"x")
    (tree / "notes.txt").write_text("top-level file, not a class")
    e = read_manifest(tree)
    assert [(x.video_id, x.labels) for x in e] == [
        ("jump/frames_dir", (0,)), ("jump/j1", (0,)), ("walk/w1", (1,)), ("walk/w2", (1,)),
    ]
    assert e[2].path == os.path.join(str(tree), "walk", "w1.avi")
    assert read_manifest(tree, fmt="tree") == e
    with pytest.raises(ManifestError, match="only the 'tree' format"):
        read_manifest(tree, fmt="csv")
    (tree / "walk" / "j1.mkv").write_bytes(b"x")
    (tree / "walk" / "j1.mp4").write_bytes(b"x")
    with pytest.raises(ManifestError, match="duplicate video id 'walk/j1'"):
        read_manifest(tree)


def test_tree_without_classes(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.mp4").write_bytes(b"x")
    with pytest.raises(ManifestError, match="no class folders"):
        read_manifest(tmp_path / "t")


def test_ids_do_not_contain_the_data_location(tmp_path):
    """Absolute entries outside the manifest's folder get ids relative to their common folder,
    so moving the data (and rewriting the manifest) keeps every id."""
    ids = []
    for where in ("data", "mnt/storage/data"):
        d = tmp_path / where
        man = tmp_path / "manifests" / f"list_{len(ids)}.txt"
        man.parent.mkdir(parents=True, exist_ok=True)
        man.write_text(f"{d}/x/a.mp4 0\n{d}/y/b.avi 1\n")
        ids.append([e.video_id for e in read_manifest(man)])
    assert ids[0] == ids[1] == ["x/a", "y/b"]
    one = tmp_path / "one.txt"
    one.write_text(f"{tmp_path}/elsewhere/deep/clip.mp4 3\n")
    assert [e.video_id for e in read_manifest(one, fmt="path_label")] == ["elsewhere/deep/clip"]  # below the manifest's folder


def test_entry_outside_root_is_refused(tmp_path):
    (tmp_path / "m.txt").write_text("/somewhere/else/v.mp4 0\n")
    with pytest.raises(ManifestError, match=r"m.txt:1: /somewhere/else/v.mp4 is outside --root"):
        read_manifest(tmp_path / "m.txt", root=str(tmp_path / "videos"))
