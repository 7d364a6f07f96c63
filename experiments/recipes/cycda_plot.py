"""Tables and the accuracy plot of a CycDA run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np


def fmt(x: float | None) -> str:
    """``0.123`` or `` -`` for missing / NaN values."""
    return "  -  " if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def format_table(result: dict[str, Any]) -> str:
    """Plain-text table of one run: per stage test / transductive accuracy and pseudo labels."""
    lines = [f"{'cycle':>5}  {'stage':<30} {'test acc':>8} {'mean-cls':>8} {'transd.':>7} {'PL acc':>7} "
             f"{'PL cov':>7} {'PL cls':>6}"]
    for s in result["stages"]:
        lines.append(f"{s['cycle']:>5}  {s['name']:<30} {s['target_acc']:>8.3f} {s['mean_class_acc']:>8.3f} "
                     f"{fmt(s.get('transductive_acc')):>7} {fmt(s['pl_acc']):>7} {fmt(s['pl_coverage']):>7} "
                     f"{s.get('pl_classes') if s.get('pl_classes') is not None else '-':>6}")
    for o in result.get("oracle", []):
        lines.append(f"{'-':>5}  {o['name']:<30} {o['target_acc']:>8.3f} {o['mean_class_acc']:>8.3f}")
    return "\n".join(lines)


def plot_stages(result: dict[str, Any], path: str | Path) -> Path:
    """PNG of test accuracy (and pseudo-label accuracy) across stages and cycles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = result["stages"]
    xs = list(range(len(stages)))
    names = [("src-only" if s["cycle"] == 0 else f"c{s['cycle']}:{s['name'].split('_')[0]}") for s in stages]
    acc = [s["target_acc"] for s in stages]
    pl = [np.nan if s["pl_acc"] is None else s["pl_acc"] for s in stages]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(xs) + 2), 3.6))
    ax.plot(xs, acc, "o-", label="target test top-1")
    ax.plot(xs, pl, "s--", label="pseudo-label accuracy")
    ax.axhline(result["source_only_acc"], color="gray", lw=0.8, ls=":", label="source only")
    for o in result.get("oracle", []):
        ax.axhline(o["target_acc"], color="green", lw=0.8, ls="--", alpha=0.6)
    ax.set_xticks(xs, names, rotation=30, ha="right")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy")
    ax.set_title(f"CycDA: {result.get('name', '')}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    p = Path(path)
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p
