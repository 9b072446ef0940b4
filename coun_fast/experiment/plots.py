"""The experiment's charts, drawn on matplotlib's Agg canvas (no pyplot, no global backend change).

* :func:`avg_gap_chart`: a bar per method (grouped by stage when sequential): height = Avg.Gap of
  the means, error bar = std of the per-seed Avg.Gap.
* :func:`ua_mia_chart`: UA against MIA per method (last stage), mean with std error bars; Retrain
  is the target, drawn as a star.
* :func:`curves_chart`: forget and retain accuracy per epoch, mean over seeds; sequential stages
  follow one another on the epoch axis.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

from coun_fast.experiment.results import REFERENCE
from coun_fast.files import write_atomic


def _figure(width: float, height: float, columns: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(figure)
    return figure, [figure.add_subplot(1, columns, i + 1) for i in range(columns)]


def _styles(labels) -> dict[str, dict]:
    """A colour and marker per label (Retrain excluded), the same in every chart of one experiment."""
    from matplotlib import colormaps

    shown = [label for label in dict.fromkeys(labels) if label != REFERENCE]
    palette = colormaps["tab10" if len(shown) <= 10 else "tab20"].colors
    return {label: {"color": palette[i % len(palette)], "marker": "o^sD"[(i // len(palette)) % 4]}
            for i, label in enumerate(shown)}


def _save(figure, path: Path) -> Path:
    """The figure as a PNG at ``path``, replaced atomically."""
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")  # "tight" keeps legends placed outside the axes
    return write_atomic(path, buffer.getvalue())


def avg_gap_chart(entries: Sequence[dict], path: Path, *, title: str = "") -> Path:
    """Bars of Avg.Gap per method (not Retrain) from :func:`~coun_fast.experiment.results.summarize` entries."""
    shown = [e for e in entries if e["label"] != REFERENCE and e.get("Avg.Gap") is not None]
    labels = list(dict.fromkeys(e["label"] for e in shown))
    stages = sorted({e["stage"] for e in shown})
    figure, (axes,) = _figure(max(4.0, 0.7 * len(labels) + 1.5), 3.6)
    styles = _styles(e["label"] for e in entries)
    width = 0.8 / max(1, len(stages))
    for i, stage in enumerate(stages):
        by_label = {e["label"]: e for e in shown if e["stage"] == stage}
        xs = [x - 0.4 + width * (i + 0.5) for x, label in enumerate(labels) if label in by_label]
        heights = [by_label[label]["Avg.Gap"] for label in labels if label in by_label]
        errors = [by_label[label].get("Avg.Gap_seeds", {}).get("std", 0.0) for label in labels if label in by_label]
        colours = [styles[label]["color"] for label in labels if label in by_label]
        axes.bar(xs, heights, width, yerr=errors, capsize=3, color=colours if len(stages) == 1 else None,
                 label=f"stage {stage + 1}" if len(stages) > 1 else None)
    crowded = len(labels) > 5
    axes.set_xticks(range(len(labels)), labels, rotation=45 if crowded else 0, ha="right" if crowded else "center")
    axes.set_ylabel("Avg.Gap to Retrain (lower is better)")
    axes.set_title(title or "Avg.Gap (error bar: std over seeds)", fontsize="medium")
    axes.grid(axis="y", alpha=0.3)
    if len(stages) > 1:
        axes.legend(fontsize="small", frameon=False)
    return _save(figure, path)


def ua_mia_chart(entries: Sequence[dict], path: Path, *, title: str = "") -> Path:
    """UA (x) against MIA (y) per method at the last stage, with std error bars; Retrain a star."""
    last = max(e["stage"] for e in entries)
    shown = [e for e in entries if e["stage"] == last and "UA" in e and "MIA" in e]
    figure, (axes,) = _figure(5.0, 4.0)
    styles = _styles(e["label"] for e in entries)
    for e in shown:
        style = styles.get(e["label"], {"color": "black", "marker": "*"})  # Retrain: a black star
        axes.errorbar(e["UA"]["mean"], e["MIA"]["mean"], xerr=e["UA"]["std"], yerr=e["MIA"]["std"],
                      fmt=style["marker"], color=style["color"], markersize=14 if e["label"] == REFERENCE else 6,
                      capsize=3, label=e["label"], zorder=3 if e["label"] == REFERENCE else 2)
    axes.set_xlabel("UA (100 − forget accuracy, %)")
    axes.set_ylabel("MIA-Efficacy (%)")
    axes.set_title(title or "UA vs MIA (closer to Retrain is better)", fontsize="medium")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="x-small", frameon=False, loc="upper left", bbox_to_anchor=(1.02, 1),
                ncol=1 if len(shown) <= 16 else 2)
    return _save(figure, path)


def mean_curves(rows: Sequence[dict]) -> dict[str, list[tuple[float, float, float]]]:
    """Per label, ``(epoch, forget_acc, retain_acc)`` means over seeds; stages are concatenated
    (stage k's epochs follow stage k-1's)."""
    sums: dict[str, dict[float, list[float]]] = {}
    stage_length: dict[tuple[str, int], int] = {}
    for row in rows:
        curve = row.get("curve") or []
        if curve:
            key = (row["label"], int(row.get("stage", 0)))
            stage_length[key] = max(stage_length.get(key, 0), max(int(p["epoch"]) for p in curve))
    for row in rows:
        label, stage = row["label"], int(row.get("stage", 0))
        offset = sum(stage_length.get((label, s), 0) for s in range(stage))
        for point in row.get("curve") or []:
            total = sums.setdefault(label, {}).setdefault(offset + point["epoch"], [0.0, 0.0, 0])
            total[0] += point["forget_acc"]
            total[1] += point["retain_acc"]
            total[2] += 1
    return {label: [(epoch, f / n, r / n) for epoch, (f, r, n) in sorted(points.items())]
            for label, points in sums.items()}


def curves_chart(rows: Sequence[dict], path: Path, *, title: str = "") -> Path:
    """Forget (left) and retain (right) accuracy per epoch of each method, mean over seeds."""
    from matplotlib.ticker import MaxNLocator

    curves = mean_curves(rows)
    styles = _styles(row["label"] for row in rows)
    figure, (forget, retain) = _figure(9.0, 3.8, columns=2)
    for label, points in curves.items():
        epochs = [p[0] for p in points]
        style = dict(color=styles[label]["color"], marker=styles[label]["marker"], markersize=3, label=label)
        forget.plot(epochs, [p[1] for p in points], **style)
        retain.plot(epochs, [p[2] for p in points], **style)
    forget.set_title("forget accuracy (%)", fontsize="medium")
    retain.set_title("retain accuracy (%, fixed subset)", fontsize="medium")
    for axes in (forget, retain):
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
    if curves:
        retain.legend(fontsize="x-small", frameon=False, loc="upper left", bbox_to_anchor=(1.02, 1),
                      ncol=1 if len(curves) <= 16 else 2)
    else:
        forget.text(0.5, 0.5, "no per-epoch evaluation\n(curves: false)", ha="center", va="center",
                    transform=forget.transAxes, fontsize="small")
    if title:
        figure.suptitle(title, fontsize="medium")
    return _save(figure, path)


__all__ = ["avg_gap_chart", "curves_chart", "mean_curves", "ua_mia_chart"]
