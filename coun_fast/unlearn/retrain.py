"""Retrain: the gold standard. A fresh model of the Original's architecture, trained from scratch on
the retain set alone, with the Original's training recipe (pass the same :class:`TrainConfig`)."""

from __future__ import annotations

import torch
from torch import nn

from coun_fast.models import rebuild
from coun_fast.train import CrossEntropy, TrainConfig
from coun_fast.unlearn.base import Method, Plan, RetainData, register


def plan_retrain(original: nn.Module, data: RetainData, config: TrainConfig, hparams: dict) -> Plan:
    """A freshly initialised copy of ``original``'s architecture, trained on ``data.retain``."""
    torch.manual_seed(config.seed)
    return Plan(rebuild(original), CrossEntropy(), data.retain)


register(Method(
    name="retrain", plan=plan_retrain, uses_forget=False, defaults={}, search={},
    summary="Retrain: train from scratch on the retain set (the gold standard the metrics compare with)",
    distributed=True,
))
