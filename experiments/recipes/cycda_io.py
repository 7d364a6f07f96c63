"""Small file helpers of the CycDA recipe (strict JSON, stage folders)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def write_json(path: Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (numpy scalars and arrays converted)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    return path


def stage_dir(out_dir: Path, cycle: int, name: str) -> Path:
    """``out_dir/cycle<k>/<name>`` (created)."""
    d = out_dir / f"cycle{cycle}" / name
    d.mkdir(parents=True, exist_ok=True)
    return d
