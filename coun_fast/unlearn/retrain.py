"""Retrain: the gold standard. A fresh model of the Original's architecture, trained from scratch on
the retain set alone, with the Original's training recipe (pass the same :class:`TrainConfig`)."""

from __future__ import annotations

import torch
from torch import nn

from coun_fast.models import rebuild
from coun_fast.train import CrossEntropy, TrainConfig, fit
from coun_fast.unlearn.base import Method, RetainData, UnlearnResult, register


def run_retrain(original: nn.Module, data: RetainData, config: TrainConfig, hparams: dict, **fit_options) -> UnlearnResult:
    """Train a freshly initialised copy of ``original``'s architecture on ``data.retain``."""
    torch.manual_seed(config.seed)
    model = rebuild(original)
    result = fit(model, data.train, CrossEntropy(), config, indices=data.retain, normalization=data.normalization,
                 **fit_options)
    return UnlearnResult(model, "retrain", {}, result)


register(Method(
    name="retrain", run=run_retrain, uses_forget=False, defaults={}, search={},
    summary="Retrain: train from scratch on the retain set (the gold standard the metrics compare with)",
))
