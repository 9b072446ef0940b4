"""Drop-in ``nn.Module`` losses over :mod:`coun_fast.functional`.

Two of them take the arguments of the libraries their users come from, so that swapping the class
is the only change:

* :class:`NTXentLoss` is lightly's: ``NTXentLoss(temperature=0.5, memory_bank_size=0,
  gather_distributed=False)`` and ``loss(out0, out1)``, including the memory bank (a queue of past
  ``out1`` rows used as the negatives, MoCo-style).
* :class:`SupConLoss` is pytorch-metric-learning's (PML): ``SupConLoss(temperature=0.1,
  distance=..., reducer=..., embedding_regularizer=...)`` and ``loss(embeddings, labels=None,
  indices_tuple=None, ref_emb=None, ref_labels=None)``, with PML's conventions (see the class).

Both return the loss in the dtype of their inputs, as the peers do; the kernels accumulate in
float32 whatever the input dtype. :class:`CrossViewInfoNCE` and :class:`InfoNCE` are this
package's own and return float32 like :mod:`coun_fast.functional`.

Not provided: PML's ``NTXentLoss`` with several positives per anchor. PML averages over positive
*pairs*, each pair with its own denominator (the pair's positive plus the anchor's negatives), which
a single pass over the similarity matrix with one log-sum-exp per anchor cannot express. With one
positive per anchor (two views of each sample) it equals :class:`NTXentLoss` without a bank.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as torch_F
from torch import Tensor, nn

from coun_fast import distributed, functional, validation


class _ContrastiveLoss(nn.Module):
    def __init__(self, temperature: float, backend: str = "auto") -> None:
        super().__init__()
        self.temperature = validation.temperature(temperature)
        self.backend = backend

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, backend={self.backend!r}"


def _bank_size(memory_bank_size: int | Sequence[int]) -> tuple[int, ...]:
    """lightly's ``memory_bank_size``: 0 (no bank), K, or (K, D); returned as (K,) or (K, D)."""
    size = (memory_bank_size,) if isinstance(memory_bank_size, (int, float)) else tuple(memory_bank_size)
    if len(size) not in (1, 2) or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in size):
        raise ValueError(f"memory_bank_size must be 0, a bank size K or a (K, D) tuple of ints >= 0; "
                         f"got {memory_bank_size!r}")
    if len(size) == 2 and (size[0] == 0) != (size[1] == 0):
        raise ValueError(f"memory_bank_size (K, D) needs both K and D > 0 (or K = 0 for no bank); got {size}")
    return size if size[0] else (0,)


class NTXentLoss(_ContrastiveLoss):
    """SimCLR's NT-Xent, or with a memory bank MoCo's InfoNCE; lightly's ``NTXentLoss`` arguments.

    Without a bank: :func:`coun_fast.functional.nt_xent` over cat(out0, out1), 2N anchors, each
    against the 2N - 1 other rows with its other view as the positive.

    With a bank of K rows: anchor ``out0[i]`` against its own ``out1[i]`` (the positive) and the K
    bank rows (the negatives), mean over the N anchors (:func:`coun_fast.functional.info_nce` with
    ``paired_candidates=N``; the batch's other ``out1`` rows are not compared). After the loss, and
    only when ``out0`` requires grad (training), the normalized ``out1`` rows are enqueued: written
    from the bank's pointer on, the pointer returning to 0 when the batch reaches the bank's end
    (rows past the end are dropped), as lightly does. The bank starts as random unit rows; with a
    bare K it is created on the first call with the features' dimension. It is a non-persistent
    buffer (not in ``state_dict``), moved with the module.

    Args:
        temperature: tau > 0.
        memory_bank_size: 0 (no bank), K or (K, D).
        gather_distributed: in a ``torch.distributed`` job, without a bank: every rank's anchors
            against the rows of all ranks (the single-process loss of the concatenated batch; see
            :mod:`coun_fast.distributed`); with a bank: all ranks' ``out1`` rows are enqueued, in
            rank order, as lightly does.
        backend: "auto", "fused" or "reference" (see :func:`coun_fast.functional.info_nce`).

    Call: ``loss(out0, out1)`` with the (N, D) outputs of the two views; returns a scalar in the
    inputs' dtype.
    """

    bank: Tensor
    bank_ptr: Tensor

    def __init__(
        self,
        temperature: float = 0.5,
        memory_bank_size: int | Sequence[int] = 0,
        gather_distributed: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__(temperature, backend)
        self.memory_bank_size = _bank_size(memory_bank_size)
        self.gather_distributed = validation.boolean(gather_distributed, "gather_distributed")
        if self.gather_distributed and not torch.distributed.is_available():
            raise ValueError("gather_distributed=True needs a PyTorch build with torch.distributed")
        bank = torch.empty(0)
        if len(self.memory_bank_size) == 2:
            bank = torch_F.normalize(torch.randn(self.memory_bank_size), dim=1)
        self.register_buffer("bank", bank, persistent=False)
        self.register_buffer("bank_ptr", torch.zeros(1, dtype=torch.long), persistent=False)

    def extra_repr(self) -> str:
        size = self.memory_bank_size if len(self.memory_bank_size) == 2 else self.memory_bank_size[0]
        return f"{super().extra_repr()}, memory_bank_size={size}, gather_distributed={self.gather_distributed}"

    def forward(self, out0: Tensor, out1: Tensor) -> Tensor:
        validation.views(out0, out1, ("out0", "out1"))
        dtype = torch.promote_types(out0.dtype, out1.dtype)
        if self.memory_bank_size[0] == 0:
            return functional.nt_xent(out0, out1, self.temperature, backend=self.backend,
                                      gather_distributed=self.gather_distributed).to(dtype)
        bank = self._bank_for(out1)
        candidates = torch.cat([out1, bank.to(out1.dtype)])  # a copy: the negatives precede the update
        loss = functional.info_nce(out0, candidates, self.temperature, paired_candidates=out0.shape[0],
                                   backend=self.backend)
        if out0.requires_grad:
            self._enqueue(out1)
        return loss.to(dtype)

    def _bank_for(self, out1: Tensor) -> Tensor:
        if self.bank.numel() == 0:  # a bare K: created at the first call, with the features' dimension
            size = (self.memory_bank_size[0], out1.shape[1])
            self.bank = torch_F.normalize(torch.randn(size, device=out1.device), dim=1)
        if self.bank.shape[1] != out1.shape[1]:
            raise ValueError(f"out1 has {out1.shape[1]} features but the memory bank holds rows of "
                             f"{self.bank.shape[1]} (memory_bank_size={tuple(self.bank.shape)})")
        if self.bank.device != out1.device:
            raise ValueError(f"the memory bank is on {self.bank.device} and out1 on {out1.device}; "
                             f"move the loss module with .to(device)")
        return self.bank

    @torch.no_grad()
    def _enqueue(self, out1: Tensor) -> None:
        """lightly's update: B rows written from the pointer p on, those past the bank's end dropped;
        the pointer becomes p + B, or 0 once p + B reaches the end. Done on the device, without
        reading the pointer on the host (no synchronization, and torch.compile traces it whole):
        a row i < K lands in slot (p + i) mod K, the slots that wrap around (past the end) get their
        own rows back, so one index_copy_ of distinct slots writes exactly lightly's rows."""
        rows = torch_F.normalize(out1.detach(), dim=1).to(self.bank.dtype)
        if self.gather_distributed:
            rows = distributed.all_gather_rows(rows)
        size, batch = self.bank.shape[0], rows.shape[0]
        rows = rows[:size]  # of a batch longer than the bank, rows past K never land
        positions = self.bank_ptr + torch.arange(rows.shape[0], device=self.bank.device)
        landed = positions < size
        slots = torch.where(landed, positions, positions - size)  # distinct: at most K consecutive positions
        kept = self.bank.index_select(0, slots)
        self.bank.index_copy_(0, slots, torch.where(landed[:, None], rows, kept))
        end = self.bank_ptr + batch
        self.bank_ptr.copy_(torch.where(end >= size, torch.zeros_like(end), end))


# pytorch-metric-learning's objects, recognized by name so that PML is not a dependency:
# reducer -> how the per-anchor losses are reduced.
_PML_REDUCERS = {"AvgNonZeroReducer": "mean", "MeanReducer": "mean_all", "SumReducer": "sum",
                 "DoNothingReducer": "none"}
_PML_DISTANCES = ("CosineSimilarity", "DotProductSimilarity")


def _pml_distance(distance: object) -> None:
    """Accept cosine similarity (PML's default), reject anything else by name."""
    if distance is None:
        return
    name = type(distance).__name__
    cosine = (name in _PML_DISTANCES and getattr(distance, "normalize_embeddings", False)
              and getattr(distance, "power", 1) == 1)
    if not cosine:
        raise ValueError(f"distance={name}(...) is not supported: the fused kernels compute cosine similarity; "
                         f"use distance=None or CosineSimilarity()")


def _pml_reducer(reducer: object) -> str:
    if reducer is None:
        return "mean"
    name = type(reducer).__name__
    if name not in _PML_REDUCERS:
        raise ValueError(f"reducer={name}(...) is not supported; use one of "
                         f"{', '.join(f'{r}()' for r in _PML_REDUCERS)} (or None for AvgNonZeroReducer)")
    return _PML_REDUCERS[name]


class SupConLoss(_ContrastiveLoss):
    """Supervised contrastive loss (Khosla et al.'s L_out) with pytorch-metric-learning's arguments.

    For anchor i, ``l_i = logsumexp_j s_ij - mean_{p in Pos(i)} s_ip`` over the reference rows j
    compared with it, where ``s_ij`` is the cosine similarity over tau and the positives are the
    compared rows with the anchor's label (:func:`coun_fast.functional.info_nce` with labels).

    PML's conventions, kept because PML's callers depend on them:

    * Without ``ref_emb`` the rows are compared with every other row (not themselves). With
      ``ref_emb`` (and ``ref_labels``) every anchor is compared with every reference row, except
      that, as in PML, passing the very ``labels`` tensor as ``ref_labels`` also drops row i of the
      reference from anchor i.
    * The loss is 0 (with zero gradients) when the batch has no positive pair or no negative pair
      (every label equal), where Khosla's formula would give a positive number.
    * Reducers: ``AvgNonZeroReducer`` (PML's default) is the mean over anchors that have a
      positive; it differs from PML only for an anchor whose loss is exactly 0 with a positive
      (every compared row a positive at one similarity), which PML leaves out of the mean.
      ``MeanReducer`` is the sum over the M anchors / M, ``SumReducer`` the sum, and
      ``DoNothingReducer`` returns PML's loss dictionary ``{"loss": {"losses": (M,) tensor,
      "indices": arange(M), "reduction_type": "element"}}``.

    Args:
        temperature: tau > 0 (PML's default 0.1).
        distance: None or ``CosineSimilarity()``; other distances raise.
        reducer: None or one of PML's ``AvgNonZeroReducer``, ``MeanReducer``, ``SumReducer``,
            ``DoNothingReducer``; others raise.
        embedding_regularizer: must be None. ``embedding_reg_weight`` and ``collect_stats`` are
            accepted and have no effect.
        gather_distributed: in a ``torch.distributed`` job, every rank's anchors against the
            reference rows and labels of all ranks, reduced over all ranks' anchors (not a PML
            argument; see :mod:`coun_fast.distributed`).
        backend: "auto", "fused" or "reference".

    Call: ``loss(embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None)``;
    ``embeddings`` (M, D) or (B, V, D) with V views of each of B labelled samples; miners
    (``indices_tuple``) are not supported. Returns the loss in the embeddings' dtype.
    """

    def __init__(
        self,
        temperature: float = 0.1,
        *,
        distance: object = None,
        reducer: object = None,
        embedding_regularizer: object = None,
        embedding_reg_weight: float = 1,
        collect_stats: bool | None = None,
        gather_distributed: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__(temperature, backend)
        self.gather_distributed = validation.boolean(gather_distributed, "gather_distributed")
        _pml_distance(distance)
        self.reduction = _pml_reducer(reducer)
        if embedding_regularizer is not None:
            raise ValueError(f"embedding_regularizer={type(embedding_regularizer).__name__}(...) is not supported; "
                             f"add the regularizer's term to the loss yourself")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, reduction={self.reduction!r}"

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor | None = None,
        indices_tuple: object = None,
        ref_emb: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Tensor | dict:
        if indices_tuple is not None:
            raise ValueError("indices_tuple (a miner's output) is not supported: SupConLoss uses every pair")
        same_labels = ref_labels is labels  # PML drops the diagonal only for the very same labels object
        if labels is None:
            raise ValueError("labels is required: SupConLoss takes the positives from the labels")
        if isinstance(embeddings, Tensor) and embeddings.dim() == 3:
            if ref_emb is not None:
                raise ValueError("ref_emb needs (M, D) embeddings, not (B, V, D)")
            batch, views, dim = embeddings.shape
            embeddings = embeddings.reshape(batch * views, dim)
            if isinstance(labels, Tensor) and labels.dim() == 1 and labels.shape[0] == batch:
                labels = labels.repeat_interleave(views)
        embeddings = validation.features(embeddings, "embeddings")
        labels = validation.integer_vector(labels, "labels", embeddings.shape[0], embeddings, "embeddings")
        reduction = "sum" if self.reduction == "mean_all" else self.reduction
        gather = dict(gather_distributed=self.gather_distributed)
        if ref_emb is None:
            if ref_labels is not None:
                raise ValueError("ref_labels was given without ref_emb")
            loss = functional.info_nce(embeddings, None, self.temperature, anchor_labels=labels,
                                       exclude_self=True, reduction=reduction, backend=self.backend, **gather)
            reference_labels = labels
        else:
            if ref_labels is None:
                raise ValueError("ref_labels is required with ref_emb")
            ref_emb = validation.features(ref_emb, "ref_emb")
            reference_labels = validation.integer_vector(ref_labels, "ref_labels", ref_emb.shape[0], ref_emb,
                                                         "ref_emb")
            loss = functional.info_nce(embeddings, ref_emb, self.temperature, anchor_labels=labels,
                                       candidate_labels=reference_labels, exclude_self=same_labels,
                                       reduction=reduction, backend=self.backend, **gather)
        anchors = embeddings.shape[0]
        if self.gather_distributed and distributed.active():  # the rule and the mean over every rank
            labels = distributed.all_gather_rows(labels)
            reference_labels = distributed.all_gather_rows(reference_labels)
            anchors = labels.shape[0]
        if self.reduction == "mean_all":
            loss = loss / anchors
        # PML's "no negative pair" rule, without a host synchronization: every label the same value.
        first = labels[:1]
        no_negative = (labels == first).all() & (reference_labels == first).all()
        loss = torch.where(no_negative, torch.zeros_like(loss), loss).to(embeddings.dtype)
        if self.reduction == "none":
            indices = torch.arange(embeddings.shape[0], device=embeddings.device)
            return {"loss": {"losses": loss, "indices": indices, "reduction_type": "element"}}
        return loss


class CrossViewInfoNCE(_ContrastiveLoss):
    """CoUn's cross-view InfoNCE, both directions summed (see
    :func:`coun_fast.functional.cross_view_info_nce`): ``loss(z1, z2)``; ``gather_distributed`` as
    there."""

    def __init__(self, temperature: float = 0.1, backend: str = "auto", gather_distributed: bool = False) -> None:
        super().__init__(temperature, backend)
        self.gather_distributed = validation.boolean(gather_distributed, "gather_distributed")

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        return functional.cross_view_info_nce(z1, z2, self.temperature, backend=self.backend,
                                              gather_distributed=self.gather_distributed)


class InfoNCE(_ContrastiveLoss):
    """General InfoNCE (see :func:`coun_fast.functional.info_nce`): ``loss(anchors, candidates,
    positive_index=..., anchor_labels=..., candidate_labels=..., paired_candidates=...)``; by
    default anchor i's positive is candidate i; ``gather_distributed`` as there."""

    def __init__(
        self,
        temperature: float = 0.1,
        *,
        exclude_self: bool = False,
        symmetric: bool = False,
        reduction: str = "mean",
        backend: str = "auto",
        gather_distributed: bool = False,
    ) -> None:
        super().__init__(temperature, backend)
        self.exclude_self = exclude_self
        self.symmetric = symmetric
        self.reduction = validation.reduction(reduction)
        self.gather_distributed = validation.boolean(gather_distributed, "gather_distributed")

    def forward(
        self,
        anchors: Tensor,
        candidates: Tensor | None = None,
        *,
        positive_index: Tensor | None = None,
        anchor_labels: Tensor | None = None,
        candidate_labels: Tensor | None = None,
        paired_candidates: int = 0,
    ) -> Tensor:
        return functional.info_nce(
            anchors, candidates, self.temperature, positive_index=positive_index, anchor_labels=anchor_labels,
            candidate_labels=candidate_labels, exclude_self=self.exclude_self, paired_candidates=paired_candidates,
            symmetric=self.symmetric, reduction=self.reduction, backend=self.backend,
            gather_distributed=self.gather_distributed)
