"""The CL plug-in: any method's objective plus lam x CoUn's cross-view InfoNCE on the retain batch.

``method+cl`` (e.g. ``neggrad_plus+cl``) draws two ``train`` views of each retain batch, runs the
method's own objective on view 1, and adds ``cl_lam * cross_view_info_nce(f1, f2, cl_temperature)``
where f1 are the penultimate features the method's own forward pass computed for view 1 (read by a
tap on ``forward_features``, so no extra forward) and f2 those of view 2. For FT this is exactly
CoUn's computation, in the same order: ``ft+cl`` equals ``coun`` (tested).
"""

from __future__ import annotations

from torch import Tensor, nn

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
    """``base`` (a one-view objective on retain batches) plus the cross-view contrastive term."""

    def __init__(self, base, lam: float, temperature: float) -> None:
        if base.recipe != "train":
            raise ValueError(f"the CL plug-in adds views of 'train' batches; this method's batches use {base.recipe!r}")
        self.base = base
        self.lam = non_negative(lam, "cl_lam")
        self.temperature = positive(temperature, "cl_temperature")
        self.recipe = "two_view"
        self.extra_forward_views = base.extra_forward_views + 1
        for hook in ("before_step", "after_step", "should_stop"):
            if hasattr(base, hook):
                setattr(self, hook, getattr(base, hook))

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        x1, x2 = batch.inputs
        tap = FeatureTap(model, x1)
        loss, parts = self.base(tap, batch._replace(inputs=x1))
        if tap.features is None:
            raise RuntimeError("the method's objective never computed forward_features on its batch; "
                               "the CL plug-in needs the penultimate features of view 1")
        if self.lam == 0:
            return loss, parts
        cl = cross_view_info_nce(tap.features, model.forward_features(x2), self.temperature)
        return loss + self.lam * cl, {**parts, "cl": cl.detach()}


def split_name(name: str) -> tuple[str, bool]:
    """``"neggrad_plus+cl"`` -> ``("neggrad_plus", True)``."""
    return (name[: -len(SUFFIX)], True) if name.endswith(SUFFIX) else (name, False)
