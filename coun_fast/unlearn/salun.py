"""SalUn (Fan et al., ICLR 2024, "SalUn: Empowering Machine Unlearning via Gradient-based Weight
Saliency"): RL restricted to the parameters most salient for the forget set.

1. Saliency, once, on a copy of the Original in eval mode: one pass over the forget set
   (``eval`` recipe, no shuffle, the run's batch size) accumulating g = sum over batches of
   grad_theta CE(batch) (the per-batch mean loss; SalUn differentiates -CE, the sign vanishes
   under |.|). The mask m is 1 on the ``threshold`` fraction of parameter elements with the
   largest |g|, ranked globally over all parameters (BN and biases included), 0 elsewhere;
   exactly round(threshold * #elements) ones, ties broken by parameter order.
2. RL (:class:`~coun_fast.unlearn.random_labels.RandomLabelObjective`: the union of retain and
   forget, forget labels drawn uniformly at random) updating masked-in elements only:
   ``before_step`` multiplies the gradients by m; ``after_step`` resets every masked-out element
   to its value in theta_0 (the Original) and zeroes its momentum buffer, so weight decay and
   momentum cannot move it either (the SalUn repository enforced this only from PR #33, Feb 2026).
   Buffers (BN running statistics) are not parameters and do update, as in the reference code.

Cost: the saliency pass (forward + backward over the forget set) is counted as trained images
(``Plan.prepared_images``), its time in the method's seconds.

Hyperparameters: ``threshold`` in (0, 1], default 0.5 (the repository's ``with_0.5.pt``); CoUn's
search range [0.1, 1.0]; threshold = 1 is plain RL. Optimiser: the CoUn protocol's (SGD, momentum
0.9, weight decay 5e-4, 50 epochs, cosine to 1e-4, lr in [0.01, 0.1]).

Sources: /work/shared/research/unlearning_anchors.md sections 1.1 and 3 (SalUn row,
[S1o][S24][S25]); /work/shared/research/coun_paper.md section 5.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coun_fast.data.loader import AugmentedLoader
from coun_fast.train import TrainConfig, resolve_device
from coun_fast.unlearn.base import ForgetData, Method, Plan, fraction, register, run_loader
from coun_fast.unlearn.random_labels import RandomLabelObjective, union_indices


def saliency(model: nn.Module, loader: AugmentedLoader) -> list[Tensor]:
    """|sum over ``loader``'s batches of grad CE| per parameter of ``model`` (put in eval mode;
    ``.grad`` is left untouched)."""
    model.eval()
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    for batch in loader:
        loss = F.cross_entropy(model(batch.inputs), batch.labels)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for acc, grad in zip(total, grads):
            if grad is not None:
                acc.add_(grad)
    return [g.abs() for g in total]


def top_fraction_mask(scores: list[Tensor], threshold: float) -> list[Tensor]:
    """Boolean masks shaped like ``scores``: True on the ``threshold`` fraction of all elements
    with the largest score, ranked globally (a stable sort: ties go to earlier elements)."""
    threshold = fraction(threshold, "threshold")
    flat = torch.cat([s.detach().flatten().float() for s in scores])
    keep = int(round(threshold * flat.numel()))
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    chosen[torch.sort(flat, descending=True, stable=True).indices[:keep]] = True
    return [part.view_as(s) for part, s in zip(chosen.split([s.numel() for s in scores]), scores)]


class SalUnObjective(RandomLabelObjective):
    """RL whose steps move only the parameter elements where ``mask`` is True (see the module
    docstring). ``theta0``: the parameters' starting values, restored where the mask is False."""

    def __init__(self, forget: np.ndarray, num_classes: int, mask: list[Tensor], theta0: list[Tensor]) -> None:
        super().__init__(forget, num_classes)
        self.mask = mask
        self.theta0 = theta0
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
        for p, m, p0 in self._frozen(model):
            p.copy_(torch.where(m, p, p0))
            buffer = optimizer.state.get(p, {}).get("momentum_buffer")
            if buffer is not None:
                buffer.mul_(m)


def plan_salun(original: nn.Module, data: ForgetData, config: TrainConfig, hparams: dict) -> Plan:
    """SalUn from a copy of ``original`` (left untouched): saliency mask, then masked RL."""
    threshold = hparams["threshold"]
    device = resolve_device(config.device)
    model = copy.deepcopy(original).to(device)
    loader = run_loader(data.train, data.forget, data.normalization, config, "eval", shuffle=False)
    mask = top_fraction_mask(saliency(model, loader), threshold)
    theta0 = [p.detach().clone() for p in model.parameters()]
    objective = SalUnObjective(data.forget, data.train.num_classes, mask, theta0)
    return Plan(model, objective, union_indices(data), loop="mixed", prepared_images=len(data.forget))


register(Method(
    name="salun", plan=plan_salun, uses_forget=True, defaults={"threshold": 0.5},
    search={"threshold": "[0.1, 1.0]", "lr": "[0.01, 0.1]"},
    summary="SalUn: RL updating only the top-threshold fraction of weights by forget-gradient saliency",
    checks={"threshold": fraction},
))
