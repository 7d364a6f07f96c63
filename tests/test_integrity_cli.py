"""Store commands speak CLI: clear one-line messages, consistent arguments, help with examples."""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pytest

from featbank.experiments.cli import build_parser, main
from featbank.store import FeatureSetInfo, NotAStoreError, VideoMeta, VideoRows, open_store
from featbank.store.info import disk_usage

FEATBANK = str(Path(sys.executable).with_name("featbank"))


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def _store(path: Path, sampling: dict | None = None) -> Path:
    with open_store(path, mode="w") as st:
        fs = st.create_set(FeatureSetInfo("s", (4,), "float32", backbone="bb", weights_id="w", sampling=sampling or {}))
        for i in range(3):
            fs.write_video(VideoRows(np.full((2, 4), i, np.float32), [0.0, 1.0], [1.0, 2.0]), VideoMeta(f"v{i}"))
    return path


def test_missing_store_message_is_cli_worded(tmp_path, capsys):
    for cmd in (["info"], ["validate"], ["compact"], ["export", "npy"], ["verify"], ["explain"]):
        extra = {"export": ["--set", "s", str(tmp_path / "o")], "verify": ["--set", "s"],
                 "explain": ["--set", "s", "v0", "0"]}.get(cmd[0], [])
        code, _, err = _run(capsys, "store", *cmd, str(tmp_path / "nope.zarr"), *extra)
        assert code == 1 and "no such store" in err and "mode=" not in err, cmd
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "nope.zarr").exists()


def test_verify_takes_path_and_set_name_and_explains_imported_sets(tmp_path, capsys):
    store_cmds = _subparsers(build_parser())["store"]
    usage = store_cmds.choices["verify"].format_usage()
    assert "PATH" in usage and "--set NAME" in usage
    mine = ("info", "validate", "import", "export", "compact", "explain", "verify")
    assert all("PATH" in store_cmds.choices[c].format_usage() for c in mine)
    path = _store(tmp_path / "s.zarr")  # written without `featbank extract`: no config recorded
    code, _, err = _run(capsys, "store", "verify", str(path), "--set", "s")
    assert code == 1 and "records no extraction config" in err and "pass a config" not in err


def test_moved_npy_folder_names_the_differing_field(tmp_path, capsys):
    src = tmp_path / "feats"
    src.mkdir()
    np.save(src / "a.npy", np.ones((3, 4), np.float32))
    store = tmp_path / "s.zarr"
    assert _run(capsys, "store", "import", "npy", str(src), str(store), "--set", "x")[0] == 0
    moved = tmp_path / "moved"
    shutil.move(src, moved)
    code, _, err = _run(capsys, "store", "import", "npy", str(moved), str(store), "--set", "x")
    assert code == 1 and "source (" in err and str(src / "a.npy") in err and str(moved / "a.npy") in err


def test_traceback_is_a_global_option(tmp_path, capsys):
    missing = str(tmp_path / "nope.zarr")
    for argv in (["store", "info", missing, "--traceback"], ["--traceback", "store", "validate", missing],
                 ["store", "compact", "--traceback", missing]):
        with pytest.raises(NotAStoreError):
            main(argv)
    code, _, err = _run(capsys, "store", "info", missing)  # without it: one line, exit 1
    assert code == 1 and err.startswith("featbank store: error:")
    from featbank.experiments.config import ConfigError

    with pytest.raises(ConfigError):  # commands that declare their own flag keep working
        main(["run", str(tmp_path / "none.yaml"), "--traceback"])


def test_no_arguments_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "usage: featbank" in err and "examples:" in err


def test_every_store_command_and_the_top_level_have_an_example():
    parser = build_parser()
    assert "example" in parser.format_help()
    for name in ("info", "validate", "import", "export", "compact", "explain", "verify"):
        assert "example" in _subparsers(parser)["store"].choices[name].format_help(), name


def _subparsers(parser: argparse.ArgumentParser) -> dict:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    out = {}
    for name, p in action.choices.items():
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if subs:
            out[name] = subs[0]
    return out


def test_info_and_explain_print_nested_config_readably(tmp_path, capsys):
    config = {f"key_{i}": f"value number {i} " * 4 for i in range(30)}
    path = _store(tmp_path / "s.zarr", sampling={"stride": 8, "config": config})
    for argv in (["store", "info", str(path)], ["store", "explain", str(path), "--set", "s", "v1", "0"]):
        code, out, _ = _run(capsys, *argv)
        assert code == 0 and max(len(line) for line in out.splitlines()) <= 110
        lines = out.splitlines()
        k = next(i for i, line in enumerate(lines) if line.strip() == "config:")
        assert lines[k + 1].startswith(lines[k][: len(lines[k]) - len(lines[k].lstrip())] + "  key_0: ")


def test_compact_reports_allocated_bytes_not_sparse_sizes(tmp_path, capsys):
    path = _store(tmp_path / "s.zarr")
    apparent = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    allocated = sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())
    assert disk_usage(str(path))[0] == allocated < apparent  # writer shards are sparse
    code, out, _ = _run(capsys, "store", "compact", str(path))
    assert code == 0 and "allocated" in out


def _import_argv(tmp_path: Path) -> list[str]:
    src = tmp_path / "many"
    src.mkdir(exist_ok=True)
    for i in range(50):
        np.save(src / f"v{i:03d}.npy", np.ones((2, 4), np.float32))
    return [FEATBANK, "store", "import", "npy", str(src), str(tmp_path / f"s{len(os.listdir(tmp_path))}.zarr"),
            "--set", "x"]


def test_import_shows_a_bar_on_a_terminal_and_none_into_pipes(tmp_path):
    piped = subprocess.run(_import_argv(tmp_path), capture_output=True, text=True, timeout=600)
    assert piped.returncode == 0 and "50 video(s) written" in piped.stdout and "video/s" not in piped.stderr
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    proc = subprocess.Popen(_import_argv(tmp_path), stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        seen += chunk
    out, _ = proc.communicate(timeout=600)
    os.close(master)
    assert proc.returncode == 0 and "50 video(s) written" in out
    assert b"import x" in seen and b"/50 [" in seen and b"video/s" in seen


def test_verify_refuses_a_non_positive_count_before_opening(tmp_path, capsys):
    for n in ("0", "-1"):
        code, _, err = _run(capsys, "store", "verify", str(tmp_path / "nope.zarr"), "--set", "s", "-n", n)
        assert code == 1 and "-n must be >= 1" in err, err
