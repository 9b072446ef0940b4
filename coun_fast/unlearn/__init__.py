"""Unlearning methods, one module each, in one registry (:data:`METHODS`), run by :func:`unlearn`."""

from __future__ import annotations

import numpy as np
from torch import nn

from coun_fast.data.dataset import ImageDataset
from coun_fast.data.splits import ForgetSplit
from coun_fast.train import TrainConfig
from coun_fast.unlearn import coun, retrain  # noqa: F401  (registers the methods)
from coun_fast.unlearn.base import METHODS, ForgetData, Method, RetainData, UnlearnResult, get_method, hyperparameters


def unlearn(
    method: str,
    original: nn.Module,
    train: ImageDataset,
    split: ForgetSplit,
    config: TrainConfig,
    *,
    normalization=None,
    hparams: dict | None = None,
    **fit_options,
) -> UnlearnResult:
    """Run unlearning ``method`` from ``original`` (left untouched) for ``split`` of ``train``.

    Methods that do not use the forget set receive the retain indices only. ``hparams`` are the
    method's hyperparameters (defaults in ``METHODS[method].defaults``); ``fit_options`` go to
    :func:`coun_fast.train.fit` (``run_dir``, ``resume``, ``on_epoch_end``, ``record``...).
    """
    spec = get_method(method)
    values = hyperparameters(spec, hparams or {})
    norm = train.normalization if normalization is None else normalization
    retain = np.asarray(split.retain)
    if spec.uses_forget:
        data: RetainData = ForgetData(train, retain, norm, np.asarray(split.forget))
    else:
        data = RetainData(train, retain, norm)
    fit_options.setdefault("description", method)
    return spec.run(original, data, config, values, **fit_options)


__all__ = ["METHODS", "ForgetData", "Method", "RetainData", "UnlearnResult", "get_method", "unlearn"]
