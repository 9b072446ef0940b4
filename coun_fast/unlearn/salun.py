"""SalUn (Fan et al., ICLR 2024, "SalUn: Empowering Machine Unlearning via Gradient-based Weight
Saliency"): RL restricted to the parameters most salient for the forget set.

As the authors' code (OPTML-Group/Unlearn-Saliency, ``Classification/generate_mask.py`` and
``Classification/unlearn/RL.py``):

1. Saliency, once, on a copy of the Original in eval mode: one pass over the forget set with the
   ``train`` recipe (random crop and flip: their forget loader is built on the training transform)
   in shuffled batches of the run's batch size (their ``replace_loader_dataset(..., shuffle=True)``,
   generate_mask.py L108-118, L152-154), accumulating g = sum over batches of grad_theta CE(batch)
   (the per-batch mean loss, L30-44; they differentiate -CE, the sign vanishes under |.|). The mask
   m is 1 on the ``int(threshold * N)`` parameter elements with the largest |g| (L57-77), ranked
   globally over all N elements (BN and biases included), 0 elsewhere; ties broken by parameter
   order.
2. RL (:mod:`coun_fast.unlearn.random_labels`, the data-set-dependent ``variant``: forget pass then
   retain pass on CIFAR-10/SVHN, a shuffled union elsewhere) updating masked-in elements only.
   ``mask="hard"`` (default; their code since PR #33 of 2026-02-28, RL.py L11-34): ``before_step``
   multiplies the gradients by m; ``after_step`` resets every masked-out element to its value in
   theta_0 (the Original) and zeroes its momentum buffer, so weight decay and momentum cannot move it
   either. ``mask="leaky"`` (their code before that fix, and so every SalUn number published before
   it, the CoUn paper's included): the gradients are multiplied by m and nothing else, so weight
   decay and momentum still move masked-out weights. Buffers (BN running statistics) are not
   parameters and update, as in the reference code.

Cost: the saliency pass (forward + backward over the forget set) is counted as trained images
(``Plan.prepared_images``), its time in the method's seconds.

Under ``torchrun`` the saliency pass is split by whole batches (rank r takes batches r, r + K, ...
of the one-process pass, :func:`coun_fast.unlearn.base.this_rank_batches`) and the ranks' sums are
added up (one all-reduce), so every rank holds the one-process g and the same mask; the RL steps
then run as RL's do under torchrun (:mod:`coun_fast.unlearn.random_labels`), DDP averaging the
gradients before the mask is applied.

Hyperparameters: ``threshold`` in (0, 1], default 0.5 (the README's ``with_0.5.pt``); CoUn's
search range [0.1, 1.0]; threshold = 1 is plain RL. ``variant`` as RL's; ``mask`` (above).
Optimiser: the run's (the CoUn protocol: SGD, momentum 0.9, weight decay 5e-4, 50 epochs, cosine to
1e-4, lr in [0.01, 0.1]); ``protocol="authors"`` gives the README's SalUn run (10 epochs at lr
0.013, the OPTML defaults otherwise).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coun_fast.data.loader import AugmentedLoader
from coun_fast.train import TrainConfig, resolve_device
from coun_fast.distributed import sum_tensors_over_ranks
from coun_fast.unlearn.base import (OPTML_PROTOCOL, OPTML_SOURCE, ForgetData, Method, Plan, choice, fraction, one_of,
                                    register, run_loader, this_rank_batches)
from coun_fast.unlearn.random_labels import VARIANTS, RandomLabelObjective, mixes_rows, random_label_plan

MASKS = ("hard", "leaky")


def saliency(model: nn.Module, loader: AugmentedLoader) -> list[Tensor]:
    """|sum over ``loader``'s batches (of its first epoch) of grad CE| per parameter of ``model``
    (put in eval mode; ``.grad`` is left untouched). Under ``torchrun``, each rank takes its share
    of whole batches and the sums are added up over the ranks (the same result on every rank)."""
    model.eval()
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    for batch in this_rank_batches(loader):
        loss = F.cross_entropy(model(batch.inputs), batch.labels)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for acc, grad in zip(total, grads):
            if grad is not None:
                acc.add_(grad)
    return [g.abs() for g in sum_tensors_over_ranks(total)]


def top_fraction_mask(scores: list[Tensor], threshold: float) -> list[Tensor]:
    """Boolean masks shaped like ``scores``: True on the ``int(threshold * N)`` of all N elements
    with the largest score, ranked globally (a stable sort: ties go to earlier elements)."""
    threshold = fraction(threshold, "threshold")
    flat = torch.cat([s.detach().flatten().float() for s in scores])
    keep = int(threshold * flat.numel())
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    chosen[torch.sort(flat, descending=True, stable=True).indices[:keep]] = True
    return [part.view_as(s) for part, s in zip(chosen.split([s.numel() for s in scores]), scores)]


class SalUnObjective(RandomLabelObjective):
    """RL whose steps move only the parameter elements where ``mask`` is True (see the module
    docstring). ``theta0``: the parameters' starting values, restored where the mask is False when
    ``mask_mode`` is ``hard``."""

    def __init__(self, forget: np.ndarray, num_classes: int, mask: list[Tensor], theta0: list[Tensor],
                 mask_mode: str = "hard", forget_loader: AugmentedLoader | None = None, seed: int = 0) -> None:
        super().__init__(forget, num_classes, forget_loader, seed)
        self.mask = mask
        self.theta0 = theta0
        self.mask_mode = choice(mask_mode, "mask", MASKS)
        self._partial = [not bool(m.all()) for m in mask]  # computed once: no device sync per step

    def _frozen(self, model: nn.Module):
        """(parameter, mask, theta0) for every parameter with at least one masked-out element."""
        for p, m, p0, partial in zip(model.parameters(), self.mask, self.theta0, self._partial):
            if partial:
                yield p, m, p0

    def before_step(self, model: nn.Module) -> None:
        for p, m, _ in self._frozen(model):
            if p.grad is not None:
                p.grad.mul_(m)

    @torch.no_grad()
    def after_step(self, model: nn.Module, optimizer) -> None:
        if self.mask_mode == "leaky":
            return
        for p, m, p0 in self._frozen(model):
            p.copy_(torch.where(m, p, p0))
            buffer = optimizer.state.get(p, {}).get("momentum_buffer")
            if buffer is not None:
                buffer.mul_(m)


def plan_salun(original: nn.Module, data: ForgetData, config: TrainConfig, hparams: dict) -> Plan:
    """SalUn from a copy of ``original`` (left untouched): saliency mask, then masked RL."""
    threshold = hparams["threshold"]
    mask_mode = hparams["mask"]
    if len(data.forget) == 0:
        raise ValueError("salun needs a non-empty forget set")
    model = copy.deepcopy(original).to(resolve_device(config.device))
    loader = run_loader(data.train, data.forget, data.normalization, config, "train", seed_offset=6)
    mask = top_fraction_mask(saliency(model, loader), threshold)
    theta0 = [p.detach().clone() for p in model.parameters()]
    plan = random_label_plan(model, data, config, hparams["variant"], SalUnObjective, mask=mask, theta0=theta0,
                             mask_mode=mask_mode)
    plan.prepared_images = len(data.forget)
    return plan


register(Method(
    name="salun", plan=plan_salun, uses_forget=True, defaults={"threshold": 0.5, "variant": "auto", "mask": "hard"},
    search={"threshold": "[0.1, 1.0]", "variant": "auto (by data set, as the authors)",
            "mask": "hard (current code) | leaky (before 2026-02)", "lr": "[0.01, 0.1]"},
    summary="SalUn: RL updating only the top-threshold fraction of weights by forget-gradient saliency",
    checks={"threshold": fraction, "variant": one_of(VARIANTS), "mask": one_of(MASKS)},
    protocol={**OPTML_PROTOCOL, "lr": 0.013},
    protocol_source="OPTML-Group/Unlearn-Saliency Classification/README.md (SalUn on CIFAR-10: --unlearn_epochs 10 "
                    "--unlearn_lr 0.013); " + OPTML_SOURCE,
    distributed=True, mixes_rows=mixes_rows,
))
