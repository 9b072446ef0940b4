"""Representation-level analyses of the paper (not used for ranking).

* :func:`prediction_distribution`: the share (%) of forget samples predicted as each class
  (paper Tables 1, 5 and 6), and :func:`distribution_gap`, the mean |difference| to Retrain over
  the table's columns. Check from Table 1 (class-wise 'truck'): Retrain 0.00 / 69.32 / 13.47 /
  12.60, CoUn 0.00 / 69.60 / 13.96 / 13.13, gap (0 + 0.28 + 0.49 + 0.53) / 4 = 0.33.
* :func:`centroid_distances`: the average L2 distance from forget samples' penultimate features
  to each retain class centroid, normalised (paper Table 4). The paper does not say how it
  normalises; here the distances are divided by their maximum over the classes that have retain
  samples (so the farthest class is 1), or left raw with ``normalize="none"``.
  :func:`distribution_gap` also gives Table 4's "avg diff" between two rows.
"""

from __future__ import annotations

import numbers
from typing import Mapping, Sequence

import numpy as np

__all__ = ["prediction_distribution", "distribution_gap", "centroid_distances", "CENTROID_NORMALIZE"]

CENTROID_NORMALIZE = ("max", "none")
"""``normalize`` values of :func:`centroid_distances`."""


def _scores(values, name: str) -> np.ndarray:
    """(N, K) scores from a Predictions, a NumPy array or a torch tensor."""
    if hasattr(values, "logits") and hasattr(values, "labels"):  # a Predictions
        values = values.logits
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(
            f"{name} must be a non-empty 2-D array (samples, classes) of probabilities or logits; got shape {array.shape}"
        )
    if not np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_:
        raise ValueError(f"{name} must hold numbers; got dtype {array.dtype}")
    return array


def _class_index(column, names: Sequence[str]) -> int:
    if isinstance(column, numbers.Integral) and not isinstance(column, bool):
        if not 0 <= int(column) < len(names):
            raise ValueError(f"columns entry {column} is out of range for {len(names)} classes")
        return int(column)
    try:
        return list(names).index(str(column))
    except ValueError:
        raise ValueError(f"columns entry {column!r} is not a class name; classes are {list(names)}") from None


def prediction_distribution(
    forget_probs_or_logits,
    classes: Sequence[str] | int,
    top: int | None = None,
    *,
    columns: Sequence[str | int] | None = None,
) -> dict[str, float]:
    """The share (%) of samples predicted (arg-max) as each class.

    Args:
        forget_probs_or_logits: (N, K) probabilities or logits of the forget samples (NumPy,
            torch, or a :class:`~coun_fast.evaluate.predict.Predictions`); the arg-max is the same
            for both.
        classes: the K class names in label order, or K (names become "0", "1", ...).
        top: keep only the ``top`` most-predicted classes (ties broken by the lower label).
            None keeps all K, whose shares sum to 100.
        columns: report exactly these classes (names or label indices), in this order, e.g. the
            paper's Truck / Automobile / Airplane / Ship, or another row's keys to compare with
            it. Cannot be combined with ``top``.

    Returns:
        ``{class name: percent}``, most-predicted first (or in ``columns`` order).
    """
    scores = _scores(forget_probs_or_logits, "forget_probs_or_logits")
    if isinstance(classes, numbers.Integral) and not isinstance(classes, bool):
        names = [str(c) for c in range(int(classes))]
    elif isinstance(classes, str):
        raise TypeError("classes must be a sequence of class names (or their number), not one string")
    else:
        names = [str(c) for c in classes]
    if len(names) != scores.shape[1]:
        raise ValueError(f"classes names {len(names)} classes but the scores have {scores.shape[1]} columns")
    if top is not None and columns is not None:
        raise ValueError("give top or columns, not both")
    counts = np.bincount(scores.argmax(axis=1), minlength=len(names))
    share = 100.0 * counts / scores.shape[0]
    if columns is not None:
        order = [_class_index(c, names) for c in columns]
    else:
        order = list(np.argsort(-share, kind="stable"))
        if top is not None:
            if isinstance(top, bool) or not isinstance(top, numbers.Integral) or top < 1:
                raise ValueError(f"top must be an integer >= 1 or None; got {top!r}")
            order = order[: int(top)]
    return {names[i]: float(share[i]) for i in order}


def _row(values, name: str) -> dict | np.ndarray:
    if isinstance(values, Mapping):
        return dict(values)
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a mapping or a non-empty 1-D sequence of numbers; got shape {array.shape}")
    return array


def distribution_gap(dist, retrain_dist, columns: Sequence | None = None) -> float:
    """Mean |dist - retrain_dist| over the columns (paper Tables 1, 4, 5 and 6 "avg diff").

    ``dist`` and ``retrain_dist`` are both mappings (class -> value; ``columns`` defaults to
    ``retrain_dist``'s keys, and each must be in ``dist``) or both equal-length 1-D sequences
    (``columns``, if given, are positions). NaN entries (e.g. a class with no retain samples in
    :func:`centroid_distances`) are skipped; ValueError when no column is left.
    """
    a, b = _row(dist, "dist"), _row(retrain_dist, "retrain_dist")
    if isinstance(a, dict) != isinstance(b, dict):
        raise TypeError("dist and retrain_dist must both be mappings or both be sequences")
    if isinstance(b, dict):
        keys = list(b) if columns is None else list(columns)
        missing = [k for k in keys if k not in a]
        if missing:
            raise KeyError(f"dist lacks the columns {missing}; build it with columns={keys!r}")
        absent = [k for k in keys if k not in b]
        if absent:
            raise KeyError(f"retrain_dist lacks the columns {absent}")
        x = np.array([a[k] for k in keys], dtype=np.float64)
        y = np.array([b[k] for k in keys], dtype=np.float64)
    else:
        if a.shape != b.shape:
            raise ValueError(f"dist and retrain_dist must have the same length; got {a.size} and {b.size}")
        keys = np.arange(a.size) if columns is None else np.asarray(columns, dtype=np.int64)
        x, y = a[keys], b[keys]
    diff = np.abs(x - y)
    diff = diff[~np.isnan(diff)]
    if diff.size == 0:
        raise ValueError("no column has a value in both dist and retrain_dist")
    return float(diff.mean())


def _features(values, name: str) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (samples, features); got shape {array.shape}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite")
    return array


def centroid_distances(
    forget_features,
    retain_features,
    retain_labels,
    num_classes: int,
    *,
    normalize: str = "max",
) -> np.ndarray:
    """Average L2 distance from the forget features to each retain class centroid (paper Table 4).

    For each class c with retain samples, the centroid is the mean of its retain features and
    ``d[c] = mean_i ||forget_features[i] - centroid_c||_2``. With ``normalize="max"`` (default)
    ``d`` is divided by its maximum over those classes (the farthest class gets 1; the paper does
    not state its normalisation, so this is an assumption); ``"none"`` keeps raw distances.

    Args:
        forget_features: (N_f, F) penultimate features of the forget samples (e.g. the forget
            class's samples).
        retain_features: (N_r, F) penultimate features of the retain samples.
        retain_labels: (N_r,) their labels in ``[0, num_classes)``.
        num_classes: number of classes K.

    Returns:
        (K,) float64; NaN for classes with no retain samples (e.g. the forgotten class of a
        class-wise split).
    """
    forget = _features(forget_features, "forget_features")
    retain = _features(retain_features, "retain_features")
    if forget.shape[1] != retain.shape[1]:
        raise ValueError(f"forget_features and retain_features differ in width: {forget.shape[1]} vs {retain.shape[1]}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1; got {num_classes!r}")
    labels = np.asarray(retain_labels.detach().cpu().numpy() if hasattr(retain_labels, "detach") else retain_labels)
    if labels.shape != (retain.shape[0],) or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(
            f"retain_labels must be {retain.shape[0]} integer labels (one per retain feature); "
            f"got {labels.dtype} {labels.shape}"
        )
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"retain_labels must lie in [0, {num_classes}); got values in [{labels.min()}, {labels.max()}]")
    if normalize not in CENTROID_NORMALIZE:
        raise ValueError(f"normalize must be one of {CENTROID_NORMALIZE}; got {normalize!r}")
    out = np.full(num_classes, np.nan)
    for c in np.unique(labels):  # one class at a time: exact distances, memory N_f x F
        centroid = retain[labels == c].mean(axis=0)
        out[c] = np.linalg.norm(forget - centroid, axis=1).mean()
    if normalize == "max":
        top = np.nanmax(out)
        if top > 0:
            out = out / top
    return out
