"""Tables and charts of unlearning results, one row per method.

``rows`` maps a method name to its metrics dict (:func:`coun_fast.evaluate.unlearning_metrics`,
optionally merged with :meth:`coun_fast.evaluate.Cost.as_dict`): keys ``UA``, ``RA``, ``TA``,
``MIA`` and, when present, ``seconds`` and ``PFLOPs``. The Retrain row is the reference of every
gap.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Mapping, Sequence

from coun_fast.evaluate.metrics import GAP_KEYS, avg_gap

__all__ = ["metrics_table", "gap_bar_chart", "TIME_KEY", "PFLOPS_KEY"]

TIME_KEY = "seconds"
"""The metrics key of the method's wall-clock time (shown as the ``time(s)`` column)."""
PFLOPS_KEY = "PFLOPs"
"""The metrics key of the method's compute cost (shown as the ``PFLOPs`` column)."""

_DASH = "—"


def _check_rows(rows: Mapping, retrain_key: str | None) -> None:
    if not isinstance(rows, Mapping) or not rows:
        raise ValueError("rows must be a non-empty mapping {method name: metrics dict}")
    for name, values in rows.items():
        if not isinstance(values, Mapping):
            raise TypeError(f"rows[{name!r}] must be a metrics dict; got {type(values).__name__}")
    if retrain_key is not None and retrain_key not in rows:
        raise KeyError(f"retrain_key {retrain_key!r} is not a row; rows are {list(rows)} (pass retrain_key=None for no gaps)")


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        return None
    return float(value)


def _cell(value, digits: int = 2) -> str:
    """``digits`` decimals; a small non-zero value (a demo's PFLOPs) keeps two significant digits."""
    number = _number(value)
    if number is None:
        return ""
    if number != 0 and abs(number) < 0.5 * 10**-digits:
        return f"{number:.2g}"
    return f"{number:.{digits}f}"


def metrics_table(
    rows: Mapping[str, Mapping],
    retrain_key: str | None = "Retrain",
    *,
    keys: Sequence[str] = GAP_KEYS,
    show_delta: bool = False,
) -> str:
    """A markdown table: one row per method, columns ``keys`` (UA, RA, TA, MIA), ``Avg.Gap``, and
    ``time(s)`` / ``PFLOPs`` when any row has them.

    Values have 2 decimals; a missing value is an empty cell. ``Avg.Gap`` (:func:`avg_gap` over
    ``keys``) is ``—`` for the Retrain row; with ``retrain_key=None`` there is no Avg.Gap column.
    ``show_delta=True`` adds the paper's ``(|Δ|)`` to Retrain after each metric. Rows keep the
    order of ``rows``. Raises KeyError when ``retrain_key`` is not a row.
    """
    _check_rows(rows, retrain_key)
    keys = tuple(keys)
    reference = rows[retrain_key] if retrain_key is not None else None
    extras = [(TIME_KEY, "time(s)"), (PFLOPS_KEY, "PFLOPs")]
    extras = [(k, title) for k, title in extras if any(_number(v.get(k)) is not None for v in rows.values())]
    header = ["Method", *keys] + (["Avg.Gap"] if reference is not None else []) + [title for _, title in extras]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for name, values in rows.items():
        cells = [str(name)]
        for key in keys:
            cell = _cell(values.get(key))
            if show_delta and reference is not None and name != retrain_key and cell:
                other = _number(reference.get(key))
                if other is not None:
                    cell += f" ({abs(float(values[key]) - other):.2f})"
            cells.append(cell)
        if reference is not None:
            if name == retrain_key:
                cells.append(_DASH)
            elif all(_number(values.get(k)) is not None and _number(reference.get(k)) is not None for k in keys):
                cells.append(f"{avg_gap(values, reference, keys):.2f}")
            else:
                cells.append("")
        cells += [_cell(values.get(key)) for key, _ in extras]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def gap_bar_chart(
    rows: Mapping[str, Mapping],
    path,
    retrain_key: str = "Retrain",
    *,
    keys: Sequence[str] = GAP_KEYS,
    title: str | None = None,
) -> Path:
    """Write a PNG bar chart of each method's |Δ| to Retrain per metric, plus Avg.Gap.

    One group of bars per metric (``keys`` then ``Avg.Gap``), one bar per method other than
    Retrain. Every non-Retrain row needs all ``keys``. Uses matplotlib's Agg canvas directly (no
    pyplot, no global backend change). The folder of ``path`` must exist. Returns the path.
    """
    _check_rows(rows, retrain_key)
    if retrain_key is None:
        raise ValueError("gap_bar_chart needs a retrain_key: the bars are gaps to Retrain")
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write the chart to {path}: folder {path.parent} does not exist")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(f"gap_bar_chart needs matplotlib (pip install matplotlib): {error}") from None
    keys = tuple(keys)
    reference = rows[retrain_key]
    methods = [name for name in rows if name != retrain_key]
    if not methods:
        raise ValueError("rows holds only the Retrain row; there is no gap to draw")
    gaps = {}
    for name in methods:
        per_key = [avg_gap(rows[name], reference, (k,)) for k in keys]
        gaps[name] = per_key + [sum(per_key) / len(per_key)]
    groups = [*keys, "Avg.Gap"]
    figure = Figure(figsize=(1.6 + 1.3 * len(groups), 3.6), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / len(methods)
    for i, name in enumerate(methods):
        positions = [g - 0.4 + width * (i + 0.5) for g in range(len(groups))]
        axes.bar(positions, gaps[name], width, label=str(name))
    axes.set_xticks(range(len(groups)), groups)
    axes.set_ylabel(f"|Δ| to {retrain_key} (points)")
    axes.set_title(title or f"Gap to {retrain_key} (lower is better)")
    axes.legend(fontsize="small", frameon=False)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path
