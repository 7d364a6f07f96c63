"""Means over seeds with 95% confidence intervals, and the ``results.json`` every demo writes.

The interval is Student's t: ``mean ± t(0.975, n-1) · std(ddof=1) / sqrt(n)``; with one seed
it is undefined (``None``), never zero.

Example:
    >>> m, h = mean_ci95([0.5, 0.6, 0.7]); round(m, 3), round(h, 3)
    (0.6, 0.248)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np


def mean_ci95(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and the half-width of its 95% t-interval (``None`` for fewer than two values)."""
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if arr.size == 0:
        return math.nan, None
    mean = float(arr.mean())
    if arr.size < 2:
        return mean, None
    from scipy.stats import t

    half = float(t.ppf(0.975, arr.size - 1) * arr.std(ddof=1) / math.sqrt(arr.size))
    return mean, half


def summarize(name: str, per_seed: Sequence[Mapping[str, Any]], keys: Sequence[str] | None = None) -> dict[str, Any]:
    """One table row: for each numeric key, ``KEY`` (mean over seeds), ``KEY_ci95`` and ``KEY_std``.

    Args:
        name: the row's name (e.g. ``source-only``).
        per_seed: one dict of metrics per seed.
        keys: metrics to summarise (default: every numeric key of the first dict).
    """
    if not per_seed:
        raise ValueError(f"summarize({name!r}): no seeds")
    if keys is None:
        keys = [k for k, v in per_seed[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                and k != "seed"]
    row: dict[str, Any] = {"name": name, "seeds": len(per_seed)}
    for k in keys:
        vals = [float(d[k]) for d in per_seed if d.get(k) is not None]
        mean, half = mean_ci95(vals)
        row[k] = mean
        row[f"{k}_ci95"] = half
        row[f"{k}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
    row["per_seed"] = [dict(d) for d in per_seed]
    return row


def fmt_ci(mean: float, half: float | None, digits: int = 3) -> str:
    """``0.512 ± 0.034`` (or just the mean when the interval is undefined)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    return f"{mean:.{digits}f}" + (f" ± {half:.{digits}f}" if half is not None else "")


def format_rows(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> str:
    """A plain-text table: one line per row, ``mean ± ci95`` per metric."""
    width = max([len(r["name"]) for r in rows] + [4])
    head = f"{'':<{width}}  " + "  ".join(f"{m:>17}" for m in metrics)
    lines = [head]
    for r in rows:
        cells = "  ".join(f"{fmt_ci(r.get(m), r.get(f'{m}_ci95')):>17}" for m in metrics)
        lines.append(f"{r['name']:<{width}}  {cells}")
    return "\n".join(lines)


def to_jsonable(v: Any) -> Any:
    """Nested dicts/lists with numpy scalars as Python numbers and non-finite floats as ``None`` (strict JSON)."""
    if isinstance(v, dict):
        return {k: to_jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_jsonable(x) for x in v]
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_demo_results(out: str | Path, *, recipe: str, metric: str, rows: Sequence[Mapping[str, Any]],
                       source_only: str, final: str, seeds: Sequence[int], seconds: float,
                       extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``out/results.json`` in the layout every demo shares; returns the dict.

    Args:
        out: the demo's output folder.
        recipe: recipe name (``cycda``, ``glad``, ...).
        metric: the headline metric's key in the rows (e.g. ``mean_class_acc``).
        rows: table rows from :func:`summarize`.
        source_only: name of the baseline row (source-only, random init or fine-only).
        final: name of the full method's row.
        seeds: the training seeds.
        seconds: wall time of the demo.
        extra: more keys to store (benchmark description, timings, ...).
    """
    by_name = {r["name"]: r for r in rows}
    for n in (source_only, final):
        if n not in by_name:
            raise KeyError(f"write_demo_results: no row named {n!r} (rows: {sorted(by_name)})")
    res: dict[str, Any] = {
        "recipe": recipe,
        "metric": metric,
        "source_only_acc": by_name[source_only][metric],
        "source_only_ci95": by_name[source_only].get(f"{metric}_ci95"),
        "final_acc": by_name[final][metric],
        "final_ci95": by_name[final].get(f"{metric}_ci95"),
        "seeds": list(seeds),
        "seconds": seconds,
        "rows": list(rows),
    }
    if extra:
        res.update(extra)
    res = to_jsonable(res)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    return res
