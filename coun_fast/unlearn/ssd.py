"""SSD, Selective Synaptic Dampening (Foster, Schoepf, Brintrup; AAAI 2024). No training.

As the authors' code (if-loops/selective-synaptic-dampening, ``src/ssd.py`` ``calc_importance``
L151-180 and ``modify_weight`` L182-217, driven by ``src/forget_random_strategies.py`` ``ssd_tuning``
L311-345): with the model in eval mode, the diagonal Fisher importance of every parameter element
on a set S is the mean over S's mini-batches (``eval`` recipe: their unlearning transform has no
augmentation; in order; ``importance_batch_size`` samples) of the squared gradient of the
batch-mean cross-entropy:

    I_S = (1 / #batches) * sum_b (d CE_b / d theta)^2.

The full set D is the retain samples followed by the forget samples (their
``ConcatDataset((retain, forget))``, ``src/forget_random_main.py`` L133-136), so the batch
boundaries, which the squared batch means depend on, fall as theirs do. With I_D on D and I_f on
the forget set, every element with I_f > alpha * I_D is multiplied by
beta = min(dampening * I_D / I_f, 1); all others are left bit-identical (so are the buffers, e.g.
batch-norm statistics). The edit runs under no_grad, in float32.

Hyperparameters: ``alpha`` (the selection weighting, default 10) and ``dampening`` (the paper's
lambda, the dampening constant, default 1): the SSD repository's ResNet-18 values (ViT full-class
uses alpha 5); CoUn's search ranges: alpha in [0.1, 100], dampening in [0.1, 5].
``importance_batch_size`` (default 128: their forget loader's ``batch_size=128`` and the ``-b``
default 128 of the full-set loader, ``forget_random_main.py`` L57, L120, L133-136); the importances,
and so which weights alpha selects, change with it.

Under ``torchrun`` the squared gradients of a batch cannot be split by rows (the square of a sum
is not the sum of squares), so the ranks split the batches instead: rank r computes whole batches
r, r + K, ... (:func:`coun_fast.unlearn.base.this_rank_batches`; every batch is the one-process
batch, its gradient computed on one rank) and the ranks' sums are added up (one all-reduce), so
every rank holds the one-process importances and dampens its copy the same way.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coun_fast.data.dataset import ImageDataset
from coun_fast.data.recipes import Normalization
from coun_fast.train import TrainConfig, resolve_device
from coun_fast.distributed import sum_tensors_over_ranks
from coun_fast.unlearn.base import (ForgetData, Method, Plan, at_least_one, positive, register, run_loader,
                                    this_rank_batches, whole)


def importances(model: nn.Module, dataset: ImageDataset, indices: np.ndarray, normalization: Normalization,
                config: TrainConfig, batch_size: int = 128) -> dict[str, Tensor]:
    """Mean over the mini-batches (``batch_size`` samples, in the order of ``indices``) of the squared
    CE gradient of every parameter (``model``, on ``config``'s device, in eval mode; its gradients
    are cleared afterwards). Keys: parameter names. Under ``torchrun`` the ranks split the batches
    and sum (see the module docstring): every rank returns the one-process result."""
    loader = run_loader(dataset, indices, normalization, config, "eval", shuffle=False, batch_size=batch_size)
    model.eval()
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    totals = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in named}
    for batch in this_rank_batches(loader):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(batch.inputs), batch.labels).backward()
        for name, p in named:
            if p.grad is not None:
                totals[name] += p.grad.float().square()
    model.zero_grad(set_to_none=True)
    summed = sum_tensors_over_ranks(list(totals.values()))
    return {name: total / len(loader) for name, total in zip(totals, summed)}


@torch.no_grad()
def dampen(model: nn.Module, full: dict[str, Tensor], forget: dict[str, Tensor], alpha: float,
           dampening: float) -> int:
    """Scale in place every element with ``forget > alpha * full`` by ``min(dampening * full / forget, 1)``;
    returns how many elements were selected."""
    selected = 0
    for name, p in model.named_parameters():
        if name not in full:
            continue
        where = forget[name] > alpha * full[name]
        beta = (dampening * full[name][where] / forget[name][where]).clamp(max=1.0)
        p[where] = (p[where].float() * beta).to(p.dtype)
        selected += int(where.sum())
    return selected


def plan_ssd(original: nn.Module, data: ForgetData, config: TrainConfig, hparams: dict) -> Plan:
    """SSD on a copy of ``original`` (left untouched); the returned plan does not train."""
    alpha, dampening = hparams["alpha"], hparams["dampening"]
    if len(data.forget) == 0:
        raise ValueError("ssd needs a non-empty forget set")
    batch_size = whole(hparams["importance_batch_size"], "importance_batch_size", minimum=1)
    model = copy.deepcopy(original).to(resolve_device(config.device))
    everything = np.concatenate([np.asarray(data.retain), np.asarray(data.forget)])  # retain, then forget
    full = importances(model, data.train, everything, data.normalization, config, batch_size)
    forget = importances(model, data.train, np.asarray(data.forget), data.normalization, config, batch_size)
    dampen(model, full, forget, alpha, dampening)
    return Plan(model.eval(), None, prepared_images=len(everything) + len(data.forget))


register(Method(
    name="ssd", plan=plan_ssd, uses_forget=True,
    defaults={"alpha": 10.0, "dampening": 1.0, "importance_batch_size": 128},
    search={"alpha": "[0.1, 100]", "dampening": "[0.1, 5]", "importance_batch_size": "128 (authors)"},
    summary="SSD: dampen the weights far more important to the forget set than to the training set (AAAI 2024)",
    checks={"alpha": positive, "dampening": positive, "importance_batch_size": at_least_one},
    cl_refused="'ssd' does not train, so it has no objective to add the CL term to", distributed=True,
))
