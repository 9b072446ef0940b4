"""The unlearning metrics of the SalUn protocol used by CoUn: UA, RA, TA, MIA and Avg. Gap.

All values are percentages of a model's predictions without augmentation (:func:`predict`):

* **FA**: accuracy on the forget set D_f; **UA = 100 - FA** (the paper's "Unlearn" column).
* **RA**: accuracy on the full retain set D_r.
* **TA**: accuracy on the test set. For a class-wise split, TA is on the retained classes' test
  images and ``forgotten_class_test_acc`` on the forgotten classes' test images (both reported).
* **MIA**: MIA-Efficacy (:func:`coun_fast.evaluate.mia.mia_efficacy`), members = the first
  ``len(test)`` retain samples in dataset order, non-members = the test samples TA uses; the
  confidence attack unless ``mia_attack`` names another of SalUn's five.
* **Avg. Gap** (:func:`avg_gap`): the mean |difference| to Retrain over UA, RA, TA and MIA.

None of them is "higher is better": the target is the Retrain model's value.
"""

from __future__ import annotations

import math
import numbers
import time
from typing import Mapping, Sequence

import numpy as np
from torch import nn

from coun_fast.data.dataset import ImageDataset
from coun_fast.data.splits import ForgetSplit, class_test_subsets
from coun_fast.evaluate.mia import mia_efficacy, mia_privacy
from coun_fast.evaluate.predict import Predictions, predict

__all__ = ["accuracy", "unlearning_metrics", "unlearning_predictions", "metrics_from_predictions", "avg_gap",
           "GAP_KEYS"]

GAP_KEYS = ("UA", "RA", "TA", "MIA")
"""The metrics Avg. Gap averages over (SalUn's and CoUn's definition)."""


def accuracy(pred: Predictions) -> float:
    """Top-1 accuracy of ``pred`` in percent; ValueError when it holds no samples."""
    if not isinstance(pred, Predictions):
        raise TypeError(f"pred must be a Predictions (see coun_fast.evaluate.predict); got {type(pred).__name__}")
    if len(pred) == 0:
        raise ValueError("pred holds no samples; accuracy is undefined")
    return float(100.0 * np.mean(pred.correct))


def metrics_from_predictions(
    forget: Predictions,
    retain: Predictions,
    test: Predictions,
    *,
    forgotten_test: Predictions | None = None,
    mia: bool = True,
    privacy: bool = False,
    short_retain: str = "error",
    mia_attack: str = "confidence",
) -> dict:
    """The metrics dict of :func:`unlearning_metrics` from predictions already made.

    ``retain`` must be in dataset order (its first ``len(test)`` rows are the MIA members);
    ``test`` is the test set TA and the MIA use (the retained classes' test images for a class-wise
    split); ``forgotten_test``, when given, adds ``forgotten_class_test_acc``.
    """
    for name, value in (("forget", forget), ("retain", retain), ("test", test)):
        if not isinstance(value, Predictions):
            raise TypeError(f"{name} must be a Predictions; got {type(value).__name__}")
    if np.any(np.diff(retain.indices) < 0):
        raise ValueError("retain must be in dataset order (sorted indices): the MIA members are its first rows")
    fa = accuracy(forget)
    out = {"UA": 100.0 - fa, "RA": accuracy(retain), "TA": accuracy(test), "FA": fa}
    if forgotten_test is not None:
        out["forgotten_class_test_acc"] = accuracy(forgotten_test)
    if mia:
        out["MIA"] = mia_efficacy(retain, test, forget, attack=mia_attack, short_retain=short_retain)
    if privacy:
        out["MIA_privacy"] = mia_privacy(retain, test, attack=mia_attack)
    out.update(num_forget=len(forget), num_retain=len(retain), num_test=len(test))
    return out


def unlearning_predictions(
    model: nn.Module,
    train: ImageDataset,
    test: ImageDataset,
    split: ForgetSplit,
    *,
    normalization,
    batch_size: int = 512,
    device=None,
    precision: str = "fp32",
    backend: str = "auto",
) -> dict:
    """The model passes of :func:`unlearning_metrics`: ``{"forget", "retain", "test"}``
    :class:`Predictions` (plus ``"forgotten_test"`` for a class-wise split), each sample predicted
    once. ``test`` is the retained classes' test images for a class-wise split. Their metrics,
    :func:`metrics_from_predictions`, need no model: they can be computed in another thread.
    Arguments as for :func:`unlearning_metrics`."""
    if not isinstance(split, ForgetSplit):
        raise TypeError(f"split must be a ForgetSplit; got {type(split).__name__}")
    for name, value in (("train", train), ("test", test)):
        if not isinstance(value, ImageDataset):
            raise TypeError(f"{name} must be an ImageDataset; got {type(value).__name__}")
    if split.train_indices[-1] >= len(train):
        raise ValueError(
            f"split uses training index {int(split.train_indices[-1])} but train has only {len(train)} samples; "
            "is it the split of another data set?"
        )
    run = dict(normalization=normalization, batch_size=batch_size, device=device, precision=precision, backend=backend)
    out = {"forget": predict(model, train, split.forget, **run), "retain": predict(model, train, split.retain, **run)}
    test_all = predict(model, test, None, **run)
    if split.kind == "class":
        kept, forgotten = class_test_subsets(test.labels, split.forget_classes)
        out["test"], out["forgotten_test"] = test_all.take(kept), test_all.take(forgotten)
    else:
        out["test"] = test_all
    return out


def unlearning_metrics(
    model: nn.Module,
    train: ImageDataset,
    test: ImageDataset,
    split: ForgetSplit,
    *,
    normalization,
    batch_size: int = 512,
    device=None,
    precision: str = "fp32",
    backend: str = "auto",
    mia: bool = True,
    privacy: bool = False,
    short_retain: str = "error",
    mia_attack: str = "confidence",
    return_predictions: bool = False,
) -> dict:
    """Evaluate an (unlearned) model on a forget/retain split: UA, RA, TA, MIA and FA (percent).

    Args:
        model: the model to evaluate (any train/eval mode; it is restored afterwards).
        train: the training split the ``split`` indexes.
        test: the test split.
        split: the forget/retain split; for ``split.kind == "class"`` the test set is divided with
            :func:`coun_fast.data.class_test_subsets`.
        normalization: the training split's ``(mean, std)``, used for train and test images alike.
        batch_size, device, precision, backend: passed to :func:`predict`.
        mia: compute MIA-Efficacy (an SVC fit: seconds on a CPU for 10k + 10k points).
        privacy: also compute MIA-Privacy as ``MIA_privacy``.
        short_retain: see :func:`coun_fast.evaluate.mia.mia_efficacy`.
        mia_attack: the SVC attack of ``MIA`` (and ``MIA_privacy``): ``confidence`` (the paper's;
            default) or another of :data:`coun_fast.evaluate.mia.ATTACKS`.
        return_predictions: add ``"predictions"``: a dict of the :class:`Predictions` used
            (``forget``, ``retain``, ``test`` and, class-wise, ``forgotten_test``).

    Returns:
        ``{"UA", "RA", "TA", "MIA", "FA", "num_forget", "num_retain", "num_test", "eval_seconds"}``
        plus ``forgotten_class_test_acc`` for a class-wise split (and ``MIA_privacy`` /
        ``predictions`` when asked). Every sample is predicted exactly once
        (:func:`unlearning_predictions`). ``TA``, ``num_test`` and the MIA non-members are the
        retained classes' test images for a class-wise split.
    """
    started = time.perf_counter()
    predictions = unlearning_predictions(model, train, test, split, normalization=normalization,
                                         batch_size=batch_size, device=device, precision=precision, backend=backend)
    out = metrics_from_predictions(**predictions, mia=mia, privacy=privacy, short_retain=short_retain,
                                   mia_attack=mia_attack)
    out["eval_seconds"] = time.perf_counter() - started
    if return_predictions:
        out["predictions"] = predictions
    return out


def _metric(values: Mapping, key: str, name: str) -> float:
    if key not in values:
        raise KeyError(f"{name} lacks the metric {key!r}; it has {sorted(map(str, values))}")
    value = values[key]
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name}[{key!r}] must be a finite number; got {value!r}")
    return float(value)


def avg_gap(metrics: Mapping, retrain_metrics: Mapping, keys: Sequence[str] = GAP_KEYS) -> float:
    """Mean absolute difference to Retrain over ``keys``: ``mean(|metrics[k] - retrain_metrics[k]|)``.

    With the default keys this is SalUn's / CoUn's Avg. Gap (lower is better). Raises KeyError
    naming the dict that lacks a key and ValueError for a non-finite value or empty ``keys``.
    """
    keys = tuple(keys)
    if not keys:
        raise ValueError("keys must name at least one metric")
    gaps = [abs(_metric(metrics, k, "metrics") - _metric(retrain_metrics, k, "retrain_metrics")) for k in keys]
    return float(sum(gaps) / len(gaps))
