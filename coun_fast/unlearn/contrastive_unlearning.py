"""CU, Contrastive Unlearning (Lee, Zhang, Yang, Lou, Xiong; IJCAI 2025; arXiv 2401.10458).

As the authors' code (Hongkyu-Lee/Contrastive-Unlearning, ``core/trainer/unlearn/unlearn.py``
``UnlearnTrainer``, L41-151, and ``unlearn.py`` L45-85). The loop runs over forget batches (the
anchors), in order, and takes ``omega`` SGD steps on each forget batch in a row (L45-74); each step
draws a retain batch, cuts it to the forget batch's size, and sends both through the model in ONE
forward pass (so batch norm sees the mixed batch). The embeddings z are ``forward_features``: for
a model built with ``projection_dim=128`` (:mod:`coun_fast.models.projection`) the authors' 128-d
projection head output, normalised and then ReLU'd as their ``SupConResNet`` returns it, used as
is (their loss does not normalise it again); for any other model the penultimate features,
L2-normalised here. With l_ia = z_i . z_a / tau - max_a(...)
(the row maximum, detached, as theirs), for forget anchor i the retain batch (B samples) splits into
P(i) (same label) and N(i) (other labels), and (``Loss_v1``, L89-134)

    L_UL(i) = -(1/|N(i)|) sum_{a in N(i)} l_ia + w_i log( sum_{p in P(i)} (exp(l_ip) + 1e-20) )

pulls the anchor toward other classes' retain embeddings and pushes it away from its own class's.
``push_weight="batch"`` (default) is their code's w_i = B / |N(i)| (the log term is broadcast over
all B columns before the division by |N(i)|); ``push_weight="one"`` is the paper's w_i = 1. Guards:
an anchor with empty P(i) gets log(1) = 0 for the push term (their ``single_class`` mode adds 1 to
the denominator; in sample mode they would take log 0); an anchor with empty N(i) (their 0/0) is
left out of the mean (0 when every anchor is). Loss (``Loss_v2``, L136-151):

    L = scale * mean_i L_UL(i) + CE(h(f(x_r)), y_r),

gradients flowing into both the forget and the retain embeddings.

Retain batches: ``batches="authors"`` (default) reproduces their loader, which is never shuffled
and is restarted for every forget batch (L47, L55; ``core/data/__init__.py`` L20-36 pass
``shuffle=None, sampler=None``): every forget batch, in dataset order, meets the same first
``omega`` retain batches of the run's batch size. ``batches="shuffled"`` fixes that: forget batches
are shuffled each epoch and retain batches come from a shuffled stream over the whole retain set.
No augmentation by default (their transforms are ToTensor + Normalize; ``augment=True`` gives the
``train`` recipe to both).

Stopping rule (``unlearn.py`` L77-85; ``early_stop=True``), checked after every epoch on the model
in eval mode, without augmentation, by the method itself: sample unlearning stops once the accuracy
on the whole forget set is <= the accuracy on the whole test set (``core/data/loader.py`` L14-39:
the whole test split), or <= ``stop_acc`` (%) when that is given; class unlearning (a class-wise
split) stops once the accuracy on the forgotten classes' test images is <= 100 / C. Both need the
test split (``unlearn(..., test=)``; the workflow and the experiment runner pass it). The values go
into the epoch's history row (``cu_forget_acc`` or ``cu_forgotten_class_test_acc``, and
``cu_test_acc`` or, for ``stop_acc`` and class unlearning, ``cu_threshold``) and the evaluated
images count as forward images.

Hyperparameters: ``scale`` (lambda_UL, their ``CT_ratio``; default 3, theirs; CoUn's range
[0.1, 2]), ``temperature`` (default 0.7, theirs; CoUn's range (0, 0.2]), ``omega`` (their
``retain_sampling_freq``, default 4; CoUn's range [1, 5]), ``early_stop``, ``stop_acc`` (None),
``push_weight``, ``batches``, ``augment``. Optimiser: the run's (the CoUn paper re-ran CU under its
protocol); ``protocol="authors"`` gives theirs (L19: SGD at lr 1e-3, momentum 0.9, no weight decay,
no schedule; the README's sample-unlearning run: batch 128, at most 30 epochs).

Under ``torchrun`` the K ranks compute the one-process step: each rank holds its rows of the global
forget batch (the anchors) and of the global retain batch, cut to the global forget batch's size
as one process cuts it (the rows of global position < M); the retain embeddings and labels are
all-gathered with their gradient (:func:`coun_fast.distributed.gather_own_first`), so every anchor
meets the whole retain batch (P(i), N(i), the row maximum and w_i as in one process), and both
means (over the anchors, over the retain rows' CE) are taken over all ranks
(:func:`coun_fast.distributed.reduce_rows`, whose gradient convention DDP's average turns into the
one-process gradient). With ``--sync-batchnorm`` the one forward's batch statistics are those of
the whole mixed batch, as in one process. The stopping rule is evaluated on rank 0 (the training
loop sends its decision to every rank).
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coun_fast import distributed
from coun_fast.data import class_test_subsets
from coun_fast.data.loader import Batch
from coun_fast.train import TrainConfig
from coun_fast.unlearn.base import (BatchStream, ForgetData, Method, Plan, accuracy_on, at_least_one, augment_recipe,
                                    boolean, choice, non_negative, one_of, positive, register, whole)

PUSH_WEIGHTS = ("batch", "one")
BATCHES = ("authors", "shuffled")


def contrastive_unlearning_loss(z_forget: Tensor, y_forget: Tensor, z_retain: Tensor, y_retain: Tensor,
                                temperature: float, push_weight: str = "batch", *, normalize: bool = True,
                                gather_distributed: bool = False) -> tuple[Tensor, Tensor]:
    """``mean_i L_UL(i)`` over the forget anchors that have at least one other-class retain sample.

    Args:
        z_forget, z_retain: (M, D) and (B, D) embeddings (in float32 at least; L2-normalised here
            when ``normalize``).
        y_forget, y_retain: their labels.
        temperature: tau > 0.
        push_weight: ``"batch"`` (w_i = B / |N(i)|, the authors' code) or ``"one"`` (the paper's).
        gather_distributed: in a distributed job, this rank's anchors against the retain rows of
            all ranks (gathered with gradient), the mean taken over all ranks' anchors: the value
            is the one-process loss of the concatenated batches, the gradient reaching this rank's
            inputs K times its one-process part (the convention of :mod:`coun_fast.distributed`).

    Returns:
        ``(loss, used)``: the scalar loss (0 when no anchor is usable) and the (M,) bool mask of
        this rank's anchors in the mean.
    """
    temperature = positive(temperature, "temperature")
    push_weight = choice(push_weight, "push_weight", PUSH_WEIGHTS)
    if gather_distributed:
        z_retain, y_retain, _ = distributed.gather_own_first(z_retain, y_retain)
    dtype = torch.float64 if z_forget.dtype == torch.float64 else torch.float32
    zf, zr = z_forget.to(dtype), z_retain.to(dtype)
    if normalize:
        zf, zr = F.normalize(zf, dim=1), F.normalize(zr, dim=1)
    logits = zf @ zr.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    same = y_forget[:, None] == y_retain[None, :]
    other = ~same
    n_other = other.sum(1)
    used = n_other > 0
    pull = (logits * other).sum(1) / n_other.clamp(min=1)
    denominator = ((logits.exp() + 1e-20) * same).sum(1) + (~same.any(1)).to(dtype)  # 1 where P(i) is empty
    weight = len(y_retain) / n_other.clamp(min=1).to(dtype) if push_weight == "batch" else 1.0
    per_anchor = -pull + weight * denominator.log()
    if gather_distributed:
        return distributed.reduce_rows(per_anchor * used, used, "mean"), used
    return (per_anchor * used).sum() / used.sum().clamp(min=1), used


def retain_rows_kept(forget_rows: int, retain_rows: int, device: torch.device) -> int:
    """How many of this rank's ``retain_rows`` rows a step keeps: one process cuts the retain batch
    to the forget batch's size M; under ``torchrun`` the rows of global position < M (the global M,
    this rank's rows counted from its place in the global retain batch; one small all-gather)."""
    if not distributed.active():
        return min(forget_rows, retain_rows)
    counts = distributed.counts_of_ranks([forget_rows, retain_rows], device)
    rank, _ = distributed.world()
    start = sum(retain for _, retain in counts[:rank])
    return max(0, min(retain_rows, sum(forget for forget, _ in counts) - start))


def percentage_or_none(value: object, name: str) -> float | None:
    """None, or ``value`` as a percentage in [0, 100]; a ValueError naming ``name`` otherwise."""
    if value is None:
        return None
    value = non_negative(value, name)
    if value > 100:
        raise ValueError(f"{name} is a percentage in [0, 100]; got {value!r}")
    return value


@dataclasses.dataclass
class ContrastiveUnlearningObjective:
    """CU's loss on a forget batch plus a retain batch from ``retain_stream``; see the module docstring.

    ``model`` and ``data`` (the model being trained and the method's data, with the test split)
    serve the stopping rule; ``omega`` is the loop's ``steps_per_batch``.
    """

    retain_stream: BatchStream
    model: nn.Module | None = None
    data: ForgetData | None = None
    config: TrainConfig | None = None
    scale: float = 3.0
    temperature: float = 0.7
    omega: int = 4
    num_classes: int = 10
    early_stop: bool = True
    stop_acc: float | None = None
    push_weight: str = "batch"
    normalize: bool = True
    shuffle: bool = False
    recipe: str = "eval"
    extra_forward_views: int = 0
    side_trained_images: int = 0
    side_forward_images: int = 0

    def __post_init__(self) -> None:
        self.scale = non_negative(self.scale, "scale")
        self.temperature = positive(self.temperature, "temperature")
        self.omega = whole(self.omega, "omega", minimum=1)
        self.push_weight = choice(self.push_weight, "push_weight", PUSH_WEIGHTS)
        self.early_stop = boolean(self.early_stop, "early_stop")
        self.stop_acc = percentage_or_none(self.stop_acc, "stop_acc")

    @property
    def steps_per_batch(self) -> int:
        return self.omega

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        m = len(batch.labels)
        retain = self.retain_stream.next()
        kept = retain_rows_kept(m, len(retain.labels), batch.labels.device)
        x_r, y_r = retain.inputs[:kept], retain.labels[:kept]
        self.side_trained_images += len(y_r)
        features = model.forward_features(torch.cat([batch.inputs, x_r]))
        logits = model.forward_head(features)
        spread = distributed.active()
        ul, used = contrastive_unlearning_loss(features[:m], batch.labels, features[m:], y_r, self.temperature,
                                               self.push_weight, normalize=self.normalize, gather_distributed=spread)
        if spread:  # the mean over all ranks' retain rows
            ce = distributed.reduce_rows(F.cross_entropy(logits[m:], y_r, reduction="none"),
                                         torch.ones_like(y_r, dtype=torch.bool), "mean")
        else:
            ce = F.cross_entropy(logits[m:], y_r)
        parts = {"ul": ul.detach(), "ce": ce.detach(), "anchors": used.float().mean(), "logits": logits[:m].detach()}
        return self.scale * ul + ce, parts

    def stopping_accuracies(self) -> tuple[float, float]:
        """``(value, threshold)`` of the stopping rule on the current model (see the module docstring)."""
        data, config = self.data, self.config
        if data.forget_classes:
            _, forgotten = class_test_subsets(data.test.labels, data.forget_classes)
            self.side_forward_images += len(forgotten)
            return accuracy_on(self.model, data.test, forgotten, data.normalization, config), 100.0 / self.num_classes
        forget = accuracy_on(self.model, data.train, data.forget, data.normalization, config)
        self.side_forward_images += len(data.forget)
        if self.stop_acc is not None:
            return forget, self.stop_acc
        self.side_forward_images += len(data.test)
        everything = np.arange(len(data.test))
        return forget, accuracy_on(self.model, data.test, everything, data.normalization, config)

    def should_stop(self, epoch: int, row: dict) -> bool:
        if not self.early_stop:
            return False
        value, threshold = self.stopping_accuracies()
        class_wise = bool(self.data.forget_classes)
        row["cu_forgotten_class_test_acc" if class_wise else "cu_forget_acc"] = value
        row["cu_threshold" if class_wise or self.stop_acc is not None else "cu_test_acc"] = threshold
        return value <= threshold


def plan_cu(original: nn.Module, data: ForgetData, config: TrainConfig, hparams: dict) -> Plan:
    """CU from a copy of ``original`` (left untouched); see the module docstring."""
    batches = choice(hparams["batches"], "batches", BATCHES)
    model = copy.deepcopy(original)
    num_classes = getattr(original, "num_classes", None) or len(data.train.classes)
    objective = ContrastiveUnlearningObjective(  # validates the hyperparameters
        None, model, data, config, hparams["scale"], hparams["temperature"], hparams["omega"], num_classes,
        hparams["early_stop"], hparams["stop_acc"], hparams["push_weight"],
        normalize=getattr(original, "projection_dim", None) is None, shuffle=batches == "shuffled",
        recipe=augment_recipe(hparams["augment"]))
    if len(data.forget) == 0:
        raise ValueError("cu needs a non-empty forget set")
    if objective.early_stop and data.test is None and (data.forget_classes or objective.stop_acc is None):
        raise ValueError("cu's stopping rule reads test accuracy: pass the test split (unlearn(..., test=...)), "
                         "or set stop_acc (sample unlearning), or early_stop=False")
    retain = np.sort(np.asarray(data.retain))  # dataset order, as their unshuffled loaders
    if batches == "authors":
        first = objective.omega * config.batch_size
        if len(retain) < first:
            raise ValueError(f"batches='authors' reuses the first omega x batch_size = {first} retain samples, but "
                             f"the retain set has {len(retain)}; use batches='shuffled' or a smaller omega/batch size")
        retain = retain[:first]
    objective.retain_stream = BatchStream(data.train, retain, data.normalization, config, objective.recipe,
                                          seed_offset=4)
    objective.retain_stream.loader.shuffle = batches == "shuffled"
    return Plan(model, objective, np.sort(np.asarray(data.forget)), loop="forget")


register(Method(
    name="cu", plan=plan_cu, uses_forget=True,
    defaults={"scale": 3.0, "temperature": 0.7, "omega": 4, "early_stop": True, "stop_acc": None,
              "push_weight": "batch", "batches": "authors", "augment": False},
    search={"scale": "[0.1, 2]", "temperature": "(0, 0.2]", "omega": "[1, 5]", "push_weight": "batch (authors)",
            "batches": "authors | shuffled (fix)", "augment": "false (authors)", "lr": "[0.01, 0.1]"},
    summary="CU: pull forget embeddings toward other classes' retain embeddings, CE on retain (IJCAI 2025)",
    checks={"scale": non_negative, "temperature": positive, "omega": at_least_one, "early_stop": boolean,
            "stop_acc": percentage_or_none, "push_weight": one_of(PUSH_WEIGHTS), "batches": one_of(BATCHES),
            "augment": boolean},
    protocol={"optimizer": "sgd", "lr": 1e-3, "momentum": 0.9, "weight_decay": 0.0, "schedule": "constant",
              "batch_size": 128, "epochs": 30},
    protocol_source="Hongkyu-Lee/Contrastive-Unlearning core/trainer/unlearn/unlearn.py L19 (SGD, lr, momentum; "
                    "no weight decay, no scheduler), core/args/parse.py L73, L76 (lr 1e-3, momentum 0.9), "
                    "README.md (sample unlearning: "
                    "--batch_size 128 --unlearn_epoch 30)",
    distributed=True,
))
