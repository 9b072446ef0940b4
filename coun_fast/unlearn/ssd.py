"""SSD, Selective Synaptic Dampening (Foster, Schoepf, Brintrup; AAAI 2024). No training.

With the model in eval mode, the diagonal Fisher importance of every parameter element on a set S
is the mean over S's mini-batches (``eval`` recipe, in order, ``config.batch_size`` samples) of
the squared gradient of the batch-mean cross-entropy:

    I_S = (1 / #batches) * sum_b (d CE_b / d theta)^2.

With I_D on the full training set D = retain u forget and I_f on the forget set, every element with
I_f > alpha * I_D is multiplied by beta = min(dampening * I_D / I_f, 1); all others are left
bit-identical (so are the buffers, e.g. batch-norm statistics). The edit runs under no_grad, in
float32.

Hyperparameters: ``alpha`` (the selection weighting, default 10) and ``dampening`` (the paper's
lambda, the dampening constant, default 1): the SSD repository's ResNet-18 values (ViT full-class
uses alpha 5). CoUn's search ranges: alpha in [0.1, 100], dampening in [0.1, 5]. Sources:
/work/shared/research/unlearning_anchors.md §1.5 and §3 (if-loops/selective-synaptic-dampening,
``calc_importance`` and ``modify_weight``); coun_paper.md §5.
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
from coun_fast.unlearn.base import ForgetData, Method, Plan, positive, register, run_loader


def importances(model: nn.Module, dataset: ImageDataset, indices: np.ndarray, normalization: Normalization,
                config: TrainConfig) -> dict[str, Tensor]:
    """Mean over the mini-batches of ``indices`` of the squared CE gradient of every parameter
    (``model``, on ``config``'s device, in eval mode; its gradients are cleared afterwards). Keys:
    parameter names."""
    loader = run_loader(dataset, indices, normalization, config, "eval", shuffle=False)
    model.eval()
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    totals = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in named}
    batches = 0
    for batch in loader:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(batch.inputs), batch.labels).backward()
        for name, p in named:
            if p.grad is not None:
                totals[name] += p.grad.float().square()
        batches += 1
    model.zero_grad(set_to_none=True)
    return {name: total / batches for name, total in totals.items()}


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
    model = copy.deepcopy(original).to(resolve_device(config.device))
    everything = np.sort(np.concatenate([np.asarray(data.retain), np.asarray(data.forget)]))  # dataset order
    full = importances(model, data.train, everything, data.normalization, config)
    forget = importances(model, data.train, np.asarray(data.forget), data.normalization, config)
    dampen(model, full, forget, alpha, dampening)
    return Plan(model.eval(), None, prepared_images=len(everything) + len(data.forget))


register(Method(
    name="ssd", plan=plan_ssd, uses_forget=True, defaults={"alpha": 10.0, "dampening": 1.0},
    search={"alpha": "[0.1, 100]", "dampening": "[0.1, 5]"},
    summary="SSD: dampen the weights far more important to the forget set than to the training set (AAAI 2024)",
    checks={"alpha": positive, "dampening": positive},
    cl_refused="'ssd' does not train, so it has no objective to add the CL term to",
))
