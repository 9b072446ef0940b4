"""Aggregation of per-run metrics over seeds, and the results files (JSON, CSV, markdown).

A *row* is one evaluated model: ``label`` (``Retrain``, ``Original`` or a method's label),
``method``, ``seed``, ``stage`` and the metrics ``UA``, ``RA``, ``TA``, ``MIA``, ``Avg.Gap``
(to that seed's Retrain), ``seconds``, ``PFLOPs``. :func:`summarize` is a pure function of rows.

Statistics follow the paper's tables: mean ± sample standard deviation over seeds (ddof=1; 0
with one seed); ``(|Δ|)`` is the distance of a mean to Retrain's mean of the same stage; the
summary's ``Avg.Gap`` is the mean of the four |Δ| of the means (as the paper computes it), and
``Avg.Gap_seeds`` the mean ± std of the per-seed Avg.Gap (the error bars of the charts).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Iterable, Sequence

from coun_fast.digest import KEY as DIGEST_KEY
from coun_fast.digest import checked_mapping, undecodable, with_digest
from coun_fast.evaluate import GAP_KEYS
from coun_fast.files import write_text_atomic

RESULTS_FORMAT = 1
"""The version of results.json's layout (its ``format_version``): 1 = ``config``, ``created``,
``environment``, ``statistics``, ``sweep``, ``summary``, ``runs``, ``files``, ``timings``, with
every path inside the output folder relative to it (``.`` is the folder itself) and paths
elsewhere (the data, the model cache) absolute."""
REFERENCE = "Retrain"
COLUMNS = ("RA", "UA", "TA", "MIA")
"""The metric columns in the paper's order."""
COST_KEYS = ("PFLOPs", "seconds")
CSV_FIELDS = ("label", "method", "seed", "stage", "RA", "UA", "TA", "MIA", "FA", "Avg.Gap", "seconds", "PFLOPs",
              "hparams", "folder")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value). ValueError when empty."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std needs at least one value")
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _groups(rows: Iterable[dict]) -> dict[tuple[int, str], list[dict]]:
    groups: dict[tuple[int, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((int(row.get("stage", 0)), row["label"]), []).append(row)
    return groups


def summarize(rows: Sequence[dict], reference: str = REFERENCE) -> list[dict]:
    """One entry per (stage, label), in order of stage then first appearance.

    Each entry: ``label``, ``method``, ``stage``, ``seeds`` (their number), for each of
    :data:`COLUMNS` and :data:`COST_KEYS` ``{"mean", "std"}`` (metrics also ``"delta"``, the |Δ| to
    the reference's mean, when that stage has reference rows), ``Avg.Gap`` (mean of the four |Δ|,
    None without a reference) and ``Avg.Gap_seeds`` (``{"mean", "std"}`` of per-row Avg.Gap).
    """
    groups = _groups(rows)
    entries = []
    for (stage, label), members in sorted(groups.items(), key=lambda item: item[0][0]):
        entry = {"label": label, "method": members[0].get("method", label), "stage": stage, "seeds": len(members)}
        for key in (*COLUMNS, *COST_KEYS):
            values = [m[key] for m in members if m.get(key) is not None]
            if values:
                mean, std = mean_std(values)
                entry[key] = {"mean": mean, "std": std}
        gaps = [m["Avg.Gap"] for m in members if m.get("Avg.Gap") is not None]
        if gaps:
            mean, std = mean_std(gaps)
            entry["Avg.Gap_seeds"] = {"mean": mean, "std": std}
        entries.append(entry)
    for entry in entries:
        ref = next((e for e in entries if e["stage"] == entry["stage"] and e["label"] == reference), None)
        entry["Avg.Gap"] = None
        if ref is None or not all(k in entry and k in ref for k in GAP_KEYS):
            continue
        for key in GAP_KEYS:
            entry[key]["delta"] = abs(entry[key]["mean"] - ref[key]["mean"])
        entry["Avg.Gap"] = sum(entry[key]["delta"] for key in GAP_KEYS) / len(GAP_KEYS)
    return entries


# -- tables ----------------------------------------------------------------------------------------
def cell(stat: dict | None, digits: int = 2) -> str:
    """``mean±std (|Δ|)`` as the paper prints it; a small non-zero mean keeps two significant digits."""
    if not stat:
        return ""
    mean, std = stat["mean"], stat["std"]
    if std <= 1e-9 * abs(mean):  # identical values whose mean has rounding noise: print 0
        std = 0.0
    if mean != 0 and abs(mean) < 0.5 * 10**-digits:
        text = f"{mean:.2g}±{std:.2g}"
    else:
        text = f"{mean:.{digits}f}±{std:.{digits}f}"
    return text + (f" ({stat['delta']:.{digits}f})" if "delta" in stat else "")


def markdown_table(entries: Sequence[dict]) -> str:
    """A markdown table of :func:`summarize` entries of one stage."""
    header = ["Method", *COLUMNS, "Avg.Gap", "PFLOPs", "time(s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for e in entries:
        gap = "" if e.get("Avg.Gap") is None else f"{e['Avg.Gap']:.2f}"
        cells = [e["label"], *(cell(e.get(k)) for k in COLUMNS), gap, cell(e.get("PFLOPs")), cell(e.get("seconds"), 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_report(entries: Sequence[dict], *, title: str, details: str) -> str:
    """The results.md text: a title, how to read it, and one table per stage."""
    stages = sorted({e["stage"] for e in entries})
    seeds = max((e["seeds"] for e in entries), default=0)
    parts = [
        f"# {title}\n",
        f"{details}\n",
        f"Mean ± sample standard deviation (ddof=1; 0 with one seed) over {seeds} seed(s); in parentheses the "
        f"|Δ| of the mean to Retrain's mean. Avg.Gap = mean of the four |Δ| of the means (the paper's "
        f"definition). UA = 100 − forget accuracy; MIA = MIA-Efficacy; PFLOPs by the paper's count; time(s) = "
        f"wall-clock training time of the model (Original: its training).\n",
    ]
    for stage in stages:
        if len(stages) > 1:
            parts.append(f"## Stage {stage + 1} of {len(stages)}\n")
        parts.append(markdown_table([e for e in entries if e["stage"] == stage]))
    return "\n".join(parts)


# -- files -----------------------------------------------------------------------------------------
def write_csv(rows: Sequence[dict], path: Path) -> Path:
    """One line per row (method x seed x stage); hparams as JSON text; the file replaced atomically."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "hparams": json.dumps(row.get("hparams", {}), sort_keys=True)})
    return write_text_atomic(path, text.getvalue())


def write_json(payload: dict, path: Path, *, digest: bool = False) -> Path:
    """``payload`` as indented JSON, the file replaced atomically. With ``digest``, the file also
    holds ``"digest"``: the SHA-256 of the rest as canonical JSON (values that are not JSON are
    written as their text), which :func:`read_json` checks."""
    if digest:
        payload = with_digest(json.loads(json.dumps(payload, default=str)))
    return write_text_atomic(path, json.dumps(payload, indent=2, default=str))


def read_json(path: Path, *, legacy_keys: Iterable[str] | None = None) -> dict:
    """The mapping :func:`write_json` wrote to ``path`` with ``digest=True``, its digest checked
    and removed. A file without a digest is accepted only when its keys are exactly
    ``legacy_keys`` (as older coun_fast wrote it). Raises OSError for an unreadable file and
    ValueError, in one line naming the file, for one that is not such JSON or whose content does
    not match its digest."""
    try:
        payload = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise undecodable(path, "coun_fast JSON file", error) from None
    if not isinstance(payload, dict):
        raise undecodable(path, "coun_fast JSON file", TypeError(f"it holds a {type(payload).__name__}, not a mapping"))
    if DIGEST_KEY not in payload and legacy_keys is not None and set(payload) == set(legacy_keys):
        return payload
    return checked_mapping(path, payload)


__all__ = ["COLUMNS", "CSV_FIELDS", "REFERENCE", "cell", "markdown_report", "markdown_table", "mean_std",
           "read_json", "summarize", "write_csv", "write_json"]
