"""Drop-in ``nn.Module`` losses over :mod:`coun_fast.functional`.

``NTXentLoss`` is called like lightly's (``loss(out0, out1)``), ``SupConLoss`` like
pytorch-metric-learning's (``loss(embeddings, labels)``).
"""

from __future__ import annotations

from torch import Tensor, nn

from coun_fast import functional, validation


class _ContrastiveLoss(nn.Module):
    def __init__(self, temperature: float, backend: str = "auto") -> None:
        super().__init__()
        self.temperature = validation.temperature(temperature)
        self.backend = backend

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, backend={self.backend!r}"


class NTXentLoss(_ContrastiveLoss):
    """SimCLR's NT-Xent (see :func:`coun_fast.functional.nt_xent`): ``loss(out0, out1)`` with the
    (N, D) outputs of the two views."""

    def __init__(self, temperature: float = 0.5, backend: str = "auto") -> None:
        super().__init__(temperature, backend)

    def forward(self, out0: Tensor, out1: Tensor) -> Tensor:
        return functional.nt_xent(out0, out1, self.temperature, backend=self.backend)


class SupConLoss(_ContrastiveLoss):
    """Supervised contrastive loss (see :func:`coun_fast.functional.sup_con`):
    ``loss(embeddings, labels)``."""

    def __init__(self, temperature: float = 0.1, backend: str = "auto") -> None:
        super().__init__(temperature, backend)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return functional.sup_con(embeddings, labels, self.temperature, backend=self.backend)


class CrossViewInfoNCE(_ContrastiveLoss):
    """CoUn's cross-view InfoNCE, both directions summed (see
    :func:`coun_fast.functional.cross_view_info_nce`): ``loss(z1, z2)``."""

    def __init__(self, temperature: float = 0.1, backend: str = "auto") -> None:
        super().__init__(temperature, backend)

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        return functional.cross_view_info_nce(z1, z2, self.temperature, backend=self.backend)


class InfoNCE(_ContrastiveLoss):
    """General InfoNCE (see :func:`coun_fast.functional.info_nce`): ``loss(anchors, candidates,
    positive_index=..., anchor_labels=..., candidate_labels=...)``; by default anchor i's positive is
    candidate i."""

    def __init__(
        self,
        temperature: float = 0.1,
        *,
        exclude_self: bool = False,
        symmetric: bool = False,
        reduction: str = "mean",
        backend: str = "auto",
    ) -> None:
        super().__init__(temperature, backend)
        self.exclude_self = exclude_self
        self.symmetric = symmetric
        self.reduction = validation.reduction(reduction)

    def forward(
        self,
        anchors: Tensor,
        candidates: Tensor | None = None,
        *,
        positive_index: Tensor | None = None,
        anchor_labels: Tensor | None = None,
        candidate_labels: Tensor | None = None,
    ) -> Tensor:
        return functional.info_nce(
            anchors, candidates, self.temperature, positive_index=positive_index, anchor_labels=anchor_labels,
            candidate_labels=candidate_labels, exclude_self=self.exclude_self, symmetric=self.symmetric,
            reduction=self.reduction, backend=self.backend)
