"""Boundary Shrinking (Chen, Gao, Liu, Peng, Zeng; CVPR 2023, "Boundary Unlearning").

A frozen copy g of the Original theta0 (eval mode) finds, for each forget sample, its nearest
wrong class by one FGSM step in [0, 1] pixel space. Per (normalized) forget batch (x, y):

    p     = x * std + mean                                   (back to pixels)
    p_adv = round(clamp(p + bound * sign(grad_p CE(g(norm(p)), y)), 0, 1) * 255) / 255
    y'    = argmax g(norm(p_adv))                            (the "nearest wrong" label)
    L     = CE(model(x), y')

and the model is trained on L over the forget set (loop "forget"). Cost per forget sample beyond
the trained pass: the attack's forward through g, its backward to the input (about one forward:
g's weights need no gradient) and the forward on p_adv, so ``extra_forward_views = 3``.

As the SalUn repository's form (OPTML-Group/Unlearn-Saliency ``Classification/unlearn/boundary_sh.py``,
L35-53 ``FGSM_perturb`` and ``discretize``, L56-133 the loop: ``bound = 0.1``, a frozen deep copy
in eval mode, CE toward its argmax on the perturbed image; their models normalise inside, so the
step is in pixel space as here).

Hyperparameter: ``bound`` (the FGSM step, default 0.1 as theirs; a fraction of the [0, 1] pixel
range). Optimiser: the run's; the CoUn paper does not run BS, and no published learning rate is
known (their README gives no command for it).
"""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coun_fast.data.loader import Batch
from coun_fast.data.recipes import Normalization
from coun_fast.train import TrainConfig
from coun_fast.unlearn.base import ForgetData, Method, Plan, non_negative, register
from coun_fast.unlearn.distill import frozen_copy


def fgsm_pixels(frozen: nn.Module, x: Tensor, y: Tensor, bound: float, normalization: Normalization) -> Tensor:
    """One FGSM step of size ``bound`` on ``frozen``'s CE from normalized ``x``, in [0, 1] pixels,
    clamped and rounded to the /255 grid; returns the perturbed pixels (not normalized)."""
    mean = torch.tensor(normalization.mean, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(normalization.std, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    pixels = (x.detach().float() * std + mean).requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(frozen(((pixels - mean) / std).to(x.dtype)).float(), y)
        (grad,) = torch.autograd.grad(loss, pixels)
    return torch.round((pixels.detach() + bound * grad.sign()).clamp(0, 1) * 255) / 255


@dataclasses.dataclass
class BoundaryShrinkObjective:
    """CE toward the frozen copy's label on FGSM-perturbed forget images; see the module docstring."""

    frozen: nn.Module
    normalization: Normalization
    bound: float = 0.1
    recipe: str = "train"
    extra_forward_views: int = 3

    def __post_init__(self) -> None:
        self.bound = non_negative(self.bound, "bound")

    def nearest_wrong(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(labels, perturbed pixels)``: the frozen copy's argmax on the FGSM-perturbed ``x``."""
        adv = fgsm_pixels(self.frozen, x, y, self.bound, self.normalization)
        mean = adv.new_tensor(self.normalization.mean).view(1, -1, 1, 1)
        std = adv.new_tensor(self.normalization.std).view(1, -1, 1, 1)
        with torch.no_grad():
            labels = self.frozen(((adv - mean) / std).to(x.dtype)).argmax(1)
        return labels, adv

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        target, _ = self.nearest_wrong(batch.inputs, batch.labels)
        logits = model.forward_head(model.forward_features(batch.inputs))
        loss = F.cross_entropy(logits, target)
        moved = (target != batch.labels).float().mean()
        return loss, {"ce_shrink": loss.detach(), "label_moved": moved, "logits": logits.detach()}


def pixel_step(value: object, name: str) -> float:
    """``value`` as a step in [0, 1] pixel space, or a ValueError naming ``name``."""
    value = non_negative(value, name)
    if value > 1:
        raise ValueError(f"{name} is a step in [0, 1] pixel space; got {value!r}")
    return value


def plan_boundary_shrink(original: nn.Module, data: ForgetData, config: TrainConfig, hparams: dict) -> Plan:
    """Boundary Shrinking from a copy of ``original`` (left untouched); see the module docstring."""
    bound = hparams["bound"]
    if len(data.forget) == 0:
        raise ValueError("boundary_shrink needs a non-empty forget set")
    objective = BoundaryShrinkObjective(frozen_copy(original, config), data.normalization, bound)
    return Plan(copy.deepcopy(original), objective, data.forget, loop="forget")


register(Method(
    name="boundary_shrink", plan=plan_boundary_shrink, uses_forget=True, defaults={"bound": 0.1},
    search={"bound": "0.1 (anchors)", "lr": "very small, from 1e-8 (anchors)"},
    summary="Boundary Shrinking: train forget images toward the Original's FGSM nearest-wrong class (CVPR 2023)",
    distributed=True,
    checks={"bound": pixel_step},
))
