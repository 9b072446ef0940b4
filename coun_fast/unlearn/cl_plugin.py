"""The CL plug-in: any method's objective plus lam x CoUn's cross-view InfoNCE on the retain batch.

``method+cl`` (e.g. ``neggrad_plus+cl``) draws two ``train`` views of each retain batch, runs the
method's own objective on view 1, and adds ``cl_lam * cross_view_info_nce(f1, f2, cl_temperature)``
where f1 are the penultimate features the method's own forward pass computed for view 1 (read by a
tap on ``forward_features``, so no extra forward) and f2 those of view 2. For FT this is exactly
CoUn's computation, in the same order: ``ft+cl`` equals ``coun`` (tested). Methods whose batches
mix retain and forget samples (RL, SalUn) get the term on their retain rows only; methods that
train on forget batches alone (GA, Boundary Shrinking) get it on a retain batch drawn beside each
forget batch.

A method that trains without augmentation by default (its authors' code: Bad Teacher, SCRUB,
NegGrad+, CU) keeps its own batches on a "forget" loop; on a "retain" or "mixed" loop the CL term
needs two augmented views, so with ``+cl`` the method's objective sees view 1 (augmented).

Under ``torchrun`` the term is CoUn's ``cl_scope="global"``: each rank's anchors against the
candidates of all ranks (``gather_distributed=True``), the one-process term of the global batch. A
"mixed" loop is refused there, before any work (:func:`check_cl_under_ranks`): a rank whose
batch holds no retain row would have no anchors for the gathered term.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from coun_fast import distributed
from coun_fast.data.loader import Batch
from coun_fast.functional import cross_view_info_nce
from coun_fast.unlearn.base import non_negative, positive

CL_DEFAULTS = {"cl_lam": 1.0, "cl_temperature": 0.1}
SUFFIX = "+cl"


class FeatureTap(nn.Module):
    """``model`` with the output of ``forward_features`` on one chosen input recorded."""

    def __init__(self, model: nn.Module, watched: Tensor) -> None:
        super().__init__()
        self.model = model
        self.watched = watched
        self.features: Tensor | None = None

    def forward_features(self, x: Tensor) -> Tensor:
        features = self.model.forward_features(x)
        if x is self.watched and self.features is None:
            self.features = features
        return features

    def forward_head(self, features: Tensor) -> Tensor:
        return self.model.forward_head(features)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


class WithCL:
    """``base`` (a one-view objective) plus the cross-view contrastive term on retain samples.

    ``loop`` is what the base objective's batches hold (see :class:`~coun_fast.unlearn.base.Plan`):
    ``"retain"``: the term covers the whole batch; ``"mixed"``: only the rows
    ``base.retain_rows(batch)`` marks; ``"forget"``: the base never sees a retain sample, so the
    term is computed on a two-view retain batch drawn from ``retain_stream`` each step.
    """

    HOOKS = ("start_epoch", "start_epoch_synchronized", "before_step", "after_step", "should_stop", "retain_rows",
             "shuffle", "steps_per_batch")

    def __init__(self, base, lam: float, temperature: float, *, loop: str = "retain", retain_stream=None) -> None:
        if base.recipe not in ("train", "eval"):
            raise ValueError(f"the CL plug-in adds views of 'train' batches; this method's batches use {base.recipe!r}")
        if loop == "mixed" and distributed.active():  # check_cl_under_ranks refuses it before any work
            raise ValueError("the CL plug-in on a loop that mixes retain and forget rows is not yet supported under "
                             "torchrun")
        if loop == "forget" and retain_stream is None:
            raise ValueError("a method whose loop runs over the forget set needs a retain_stream for the CL term")
        self.base = base
        self.lam = non_negative(lam, "cl_lam")
        self.temperature = positive(temperature, "cl_temperature")
        self.loop = loop
        self.retain_stream = retain_stream
        self.recipe = base.recipe if loop == "forget" else "two_view"
        self.extra_forward_views = base.extra_forward_views + (1 if loop == "retain" else 0)
        self._trained, self._forward = 0, 0
        for hook in self.HOOKS:
            if hasattr(base, hook):
                setattr(self, hook, getattr(base, hook))

    @property
    def side_trained_images(self) -> int:
        return getattr(self.base, "side_trained_images", 0) + self._trained

    @property
    def side_forward_images(self) -> int:
        return getattr(self.base, "side_forward_images", 0) + self._forward

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        if self.loop == "forget":
            loss, parts = self.base(model, batch)
            if self.lam == 0:
                return loss, parts
            x1, x2 = self.retain_stream.next().inputs
            self._trained += len(x1)  # the paper's count: view 1 trained, view 2 one more forward
            self._forward += len(x2)
            f1 = model.forward_features(x1)
            return self._add(loss, parts, f1, model.forward_features(x2))
        x1, x2 = batch.inputs
        tap = FeatureTap(model, x1)
        loss, parts = self.base(tap, batch._replace(inputs=x1))
        if tap.features is None:
            raise RuntimeError("the method's objective never computed forward_features on its batch; "
                               "the CL plug-in needs the penultimate features of view 1")
        if self.lam == 0:
            return loss, parts
        f1 = tap.features
        if self.loop == "mixed":
            rows = self.base.retain_rows(batch)
            if int(rows.sum()) == 0:
                return loss, {**parts, "cl": torch.zeros((), device=loss.device)}
            f1, x2 = f1[rows], x2[rows]
            self._forward += len(x2)
        return self._add(loss, parts, f1, model.forward_features(x2))

    def _add(self, loss: Tensor, parts: dict, f1: Tensor, f2: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        cl = cross_view_info_nce(f1, f2, self.temperature, gather_distributed=True)
        return loss + self.lam * cl, {**parts, "cl": cl.detach()}


def check_cl_under_ranks(method, name: str, hparams: dict, dataset_name: str, ranks: int | None = None) -> None:
    """ValueError when the run has several ranks (``ranks``, default the running process group's
    size), ``name`` is a ``+cl`` form and ``method`` (a :class:`~coun_fast.unlearn.base.Method`)
    with ``hparams`` mixes retain and forget rows in its batches on the data set named
    ``dataset_name``."""
    ranks = distributed.world()[1] if ranks is None else ranks
    if not (ranks > 1 and split_name(name)[1] and method.mixes_rows is not None):
        return
    if method.mixes_rows(hparams, dataset_name):
        raise ValueError(f"{name!r} under torchrun (several ranks) is not yet supported: its batches mix retain and "
                         f"forget rows on {dataset_name!r} (the CL plug-in's term there is not gathered across "
                         f"ranks); run {split_name(name)[0]!r} without +cl, or in one process")


def split_name(name: str) -> tuple[str, bool]:
    """``"neggrad_plus+cl"`` -> ``("neggrad_plus", True)``."""
    return (name[: -len(SUFFIX)], True) if name.endswith(SUFFIX) else (name, False)
