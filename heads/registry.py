"""Registry of heads: a literal dict, so what exists is visible in one place and importing registers nothing.

Every entry is built as ``HEADS[name](in_features=D, num_classes=C)``, takes a feature
tensor of rank ``cls.feats_ndim`` (``(B, D)`` or ``(B, T, D)``) in ``forward`` and returns a
NamedTuple whose first field is ``(B, C)`` logits; ``loss(out, targets)`` returns a dict of
scalar tensors. ``tests/test_heads_registry.py`` sweeps every entry.
"""

from __future__ import annotations

from .cfb import CfbPaceHead, CfbStreamHead
from .cycda import CycdaImageHead, CycdaVideoHead
from .detect import CoarseFineHead, FineOnlyHead, PDANHead
from .glad import GladHead
from .probes import AttentionPoolHead, LinearProbe, MLPProbe, TCNHead
from .ssl import TemporalCueHead

HEADS = {
    "cycda-image": CycdaImageHead,
    "cycda-video": CycdaVideoHead,
    "glad": GladHead,
    "cfb-stream": CfbStreamHead,
    "cfb-pace": CfbPaceHead,
    "linear": LinearProbe,
    "mlp": MLPProbe,
    "attn": AttentionPoolHead,
    "tcn": TCNHead,
    "temporal-cue": TemporalCueHead,
    "detect-fine": FineOnlyHead,
    "detect-pdan": PDANHead,
    "detect-coarse-fine": CoarseFineHead,
}


def create_head(name: str, **kwargs):
    """Build a registered head by name (``KeyError`` listing the names otherwise)."""
    if name not in HEADS:
        raise KeyError(f"unknown head {name!r}; registered heads: {sorted(HEADS)}")
    return HEADS[name](**kwargs)
