"""Helpers shared by the teacher-based baselines (Bad Teacher, SCRUB) and the frozen-copy ones.

:func:`distill_kl` is the temperature-scaled knowledge-distillation divergence of Hinton et al.,
as RepDistiller's ``DistillKL`` (which SCRUB uses) computes it:

    KL_T(t || s) = T^2 * sum_c softmax(t / T)_c * (log softmax(t / T)_c - log softmax(s / T)_c)

per row, averaged over the rows ("batchmean"); the T^2 factor keeps the gradient's size
independent of T. The teacher's logits are detached: only the student receives gradients.

:func:`frozen_copy` gives a teacher: a deep copy of a model in eval mode, without gradients, on the
training device.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coun_fast.train import TrainConfig, resolve_device
from coun_fast.unlearn.base import positive


def distill_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, *,
               reduction: str = "mean") -> Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, per row (``reduction="none"``,
    shape (N,)) or averaged over the rows (``"mean"``); computed in float32 at least."""
    temperature = positive(temperature, "temperature")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none'; got {reduction!r}")
    if student_logits.shape != teacher_logits.shape or student_logits.ndim != 2:
        raise ValueError(f"student and teacher logits must both be (N, C); got {tuple(student_logits.shape)} "
                         f"and {tuple(teacher_logits.shape)}")
    dtype = teacher_logits.dtype if teacher_logits.dtype == student_logits.dtype == torch.float64 else torch.float32
    log_s = F.log_softmax(student_logits.to(dtype) / temperature, dim=1)
    log_t = F.log_softmax(teacher_logits.detach().to(dtype) / temperature, dim=1)
    rows = (log_t.exp() * (log_t - log_s)).sum(1) * temperature**2
    return rows if reduction == "none" else rows.mean()


def frozen_copy(model: nn.Module, config: TrainConfig) -> nn.Module:
    """A deep copy of ``model`` in eval mode with ``requires_grad=False``, on ``config``'s device."""
    frozen = copy.deepcopy(model).to(resolve_device(config.device)).eval()
    frozen.requires_grad_(False)
    return frozen


def freeze(model: nn.Module, config: TrainConfig) -> nn.Module:
    """``model`` itself (not a copy) made a frozen teacher as :func:`frozen_copy` does."""
    model = model.to(resolve_device(config.device)).eval()
    model.requires_grad_(False)
    return model
