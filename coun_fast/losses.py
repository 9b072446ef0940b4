"""Drop-in ``nn.Module`` losses over :mod:`coun_fast.functional`.

Three of them take the arguments of the libraries their users come from, so that swapping the
class is the only change:

* :class:`NTXentLoss` is lightly's: ``NTXentLoss(temperature=0.5, memory_bank_size=0,
  gather_distributed=False)`` and ``loss(out0, out1)``, including the memory bank (a queue of past
  ``out1`` rows used as the negatives, MoCo-style).
* :class:`SupConLoss` and :class:`PMLNTXentLoss` are pytorch-metric-learning's (PML's)
  ``SupConLoss`` and ``NTXentLoss``: ``(temperature, distance=..., reducer=...,
  embedding_regularizer=...)`` and ``loss(embeddings, labels=None, indices_tuple=None,
  ref_emb=None, ref_labels=None)``, with PML's results for every argument PML accepts. What the
  kernels cannot compute (distances that are not an affine function of the cosine, a miner's
  ``indices_tuple``) runs unfused, as PML computes it, with a one-time :class:`FallbackWarning`
  naming why, or raises with ``strict=True`` (see :class:`SupConLoss`).

They return the loss in the dtype of their inputs, as the peers do; the kernels accumulate in
float32 whatever the input dtype. :class:`CrossViewInfoNCE` and :class:`InfoNCE` are this
package's own and return float32 like :mod:`coun_fast.functional`. Inputs of different float
dtypes (``out0``/``out1``, ``embeddings``/``ref_emb``, anchors/candidates) are computed in
``torch.promote_types`` of them (float32 with float64: float64; float32 with bfloat16: float32),
each input's gradient in its own dtype. Every class takes ``check_finite`` (raise on NaN or Inf
in an input, at the cost of a pass over it).
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as torch_F
from torch import Tensor, nn

from coun_fast import _pml, distributed, functional, validation
from coun_fast._pml import FallbackWarning


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
        check_finite: raise if ``out0`` or ``out1`` holds NaN or Inf (a pass over them).

    Call: ``loss(out0, out1)`` with the (N, D) outputs of the two views; returns a scalar in the
    inputs' dtype (the promoted one for two dtypes).
    """

    bank: Tensor
    bank_ptr: Tensor

    def __init__(
        self,
        temperature: float = 0.5,
        memory_bank_size: int | Sequence[int] = 0,
        gather_distributed: bool = False,
        backend: str = "auto",
        check_finite: bool = False,
    ) -> None:
        super().__init__(temperature, backend)
        self.check_finite = validation.boolean(check_finite, "check_finite")
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
        validation.views(out0, out1, ("out0", "out1"), check_finite=self.check_finite)
        dtype = torch.promote_types(out0.dtype, out1.dtype)
        if self.memory_bank_size[0] == 0:
            return functional.nt_xent(out0, out1, self.temperature, backend=self.backend,
                                      gather_distributed=self.gather_distributed).to(dtype)
        bank = self._bank_for(out1)
        candidates = torch.cat([out1.to(dtype), bank.to(dtype)])  # a copy: the negatives precede the update
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


class _PMLLoss(_ContrastiveLoss):
    """pytorch-metric-learning's loss interface over the fused kernels (see :class:`SupConLoss`).

    A call runs fused when the kernels compute it: the distance is the cosine or an affine function
    of it (:func:`coun_fast._pml.cosine_scale`), the pairs are all pairs the labels give (no miner),
    and the reference rows are labelled. Anything else runs on the unfused path, PML's own formulas
    on the M x N matrix of the given distance object, with a one-time :class:`FallbackWarning`
    naming why, or raises a ValueError with ``strict=True``."""

    default_reducer = "avg_non_zero"

    def __init__(self, temperature: float, distance: object, reducer: object, embedding_regularizer: object,
                 embedding_reg_weight: float, strict: bool, check_finite: bool, backend: str) -> None:
        super().__init__(temperature, backend)
        self.strict = validation.boolean(strict, "strict")
        self.check_finite = validation.boolean(check_finite, "check_finite")
        self.distance = distance
        self.scale, self.distance_reason = _pml.cosine_scale(distance)
        if self.scale is None and self.strict:
            self._refuse(self.distance_reason)
        if reducer is not None and not callable(reducer):
            raise TypeError(f"reducer must be a pytorch-metric-learning reducer object or None; got {reducer!r}")
        named = type(reducer).__name__ in ("DoNothingReducer", "MultipleReducers")
        self.reducer = reducer if reducer is None or named else copy.deepcopy(reducer)  # as PML does
        self.reduction = _pml.builtin_reduction(reducer, self.default_reducer)
        if embedding_regularizer is not None and not callable(embedding_regularizer):
            raise TypeError(f"embedding_regularizer must be a regularizer object or None; "
                            f"got {embedding_regularizer!r}")
        self.embedding_regularizer = embedding_regularizer
        self.embedding_reg_weight = embedding_reg_weight

    def extra_repr(self) -> str:
        reducer = "None" if self.reducer is None else f"{type(self.reducer).__name__}()"
        return f"{super().extra_repr()}, reducer={reducer}, strict={self.strict}"

    def _refuse(self, reason: str) -> None:
        raise ValueError(f"{reason}; strict=True refuses what the fused kernels cannot compute")

    def _arguments(self, embeddings: Tensor, labels: Tensor | None, indices_tuple: object, ref_emb: Tensor | None,
                   ref_labels: Tensor | None) -> tuple:
        """Validated (embeddings, labels, ref_emb, ref_labels, same_object, why unfused or "").
        ``ref_emb`` stays None without reference rows; ``same_object``: PML leaves row i out of
        anchor i's pairs (no ``ref_emb``, or the very ``labels`` object as ``ref_labels``, or no
        ``ref_labels``, in which case PML takes ``labels`` for them)."""
        same_object = ref_emb is None or ref_labels is None or ref_labels is labels  # before any conversion
        if isinstance(embeddings, Tensor) and embeddings.dim() == 3:  # (B, V, D): V views of B samples
            if ref_emb is not None:
                raise ValueError("ref_emb needs (M, D) embeddings, not (B, V, D)")
            batch, views, dim = embeddings.shape
            embeddings = embeddings.reshape(batch * views, dim)
            if isinstance(labels, Tensor) and labels.dim() == 1 and labels.shape[0] == batch:
                labels = labels.repeat_interleave(views)
        embeddings = validation.features(embeddings, "embeddings", check_finite=self.check_finite)
        if labels is None and indices_tuple is None:
            raise ValueError(f"labels is required (or a miner's indices_tuple): {type(self).__name__} takes the "
                             f"positives from the labels")
        if labels is not None:
            labels = validation.integer_vector(labels, "labels", embeddings.shape[0], embeddings, "embeddings")
        if ref_emb is None:
            if ref_labels is not None:
                raise ValueError("ref_labels was given without ref_emb")
            ref_labels = labels
        else:
            ref_emb = validation.features(ref_emb, "ref_emb", check_finite=self.check_finite)
            validation.same_device(embeddings, "embeddings", ref_emb, "ref_emb")
            validation.same_dim(embeddings, "embeddings", ref_emb, "ref_emb")
            if ref_labels is not None:  # PML checks them against ref_emb, the labels object too
                ref_labels = validation.integer_vector(ref_labels, "ref_labels", ref_emb.shape[0], ref_emb, "ref_emb")
            if same_object:
                ref_labels = labels
        reason = ""
        if self.scale is None:
            reason = self.distance_reason
        elif indices_tuple is not None:
            reason = "indices_tuple (a miner's pairs) selects pairs; the kernels compare all pairs of the labels"
        elif ref_emb is not None and same_object and ref_emb.shape[0] != embeddings.shape[0]:
            reason = (f"ref_emb without its own ref_labels has {ref_emb.shape[0]} rows, not one per embedding "
                      f"({embeddings.shape[0]}); PML then labels its rows with labels")
        if reason and self.strict:
            self._refuse(reason)
        if reason and getattr(self, "gather_distributed", False):
            raise ValueError(f"gather_distributed=True needs the fused kernels, which cannot run this call: {reason}")
        return embeddings, labels, ref_emb, ref_labels, same_object, reason

    def _temperature(self) -> float:
        return self.temperature / self.scale

    def _unfused(self, embeddings: Tensor, labels: Tensor | None, indices_tuple: object, ref_emb: Tensor | None,
                 ref_labels: Tensor | None, same_object: bool) -> dict:
        """PML's computation: its pairs, the M x N matrix of the distance object, its formula."""
        indices = _pml.pairs(labels, ref_labels, indices_tuple, same_object)
        mat, similarity = _pml.matrix(self.distance, embeddings, ref_emb if ref_emb is not None or
                                      self.distance is None else embeddings)
        return self._pml_losses(mat, similarity, indices, self.temperature)

    def _reduced(self, info: dict, embeddings: Tensor, labels: Tensor | None):
        """PML's loss dictionary (the regularizer's term added) reduced by the reducer; the result
        in the embeddings' dtype."""
        loss_dict = {"loss": info}
        if self.embedding_regularizer is not None:
            term = self.embedding_regularizer(embeddings) * self.embedding_reg_weight
            loss_dict["embedding_reg_loss"] = {"losses": term, "indices": None, "reduction_type": "already_reduced"}
        result = _pml.reduce(loss_dict, self.reducer, self.reduction, embeddings, labels)
        return result.to(embeddings.dtype) if isinstance(result, Tensor) else result

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor | None = None,
        indices_tuple: object = None,
        ref_emb: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Tensor | dict:
        embeddings, labels, ref_emb, ref_labels, same_object, reason = self._arguments(
            embeddings, labels, indices_tuple, ref_emb, ref_labels)
        if ref_emb is not None:  # the mixed-dtype rule
            embeddings, ref_emb = validation.promoted(embeddings, ref_emb)
        if reason:
            _pml.warn_once(self, reason)
            info = self._unfused(embeddings, labels, indices_tuple, ref_emb, ref_labels, same_object)
            return self._reduced(info, embeddings, labels)
        return self._fused(embeddings, labels, ref_emb, ref_labels, same_object)


class SupConLoss(_PMLLoss):
    """Supervised contrastive loss (Khosla et al.'s L_out), pytorch-metric-learning's (PML's) class.

    For anchor i, ``l_i = logsumexp_j s_ij - mean_{p in Pos(i)} s_ip`` over the reference rows j
    compared with it, where ``s_ij`` is the similarity over tau and the positives are the compared
    rows with the anchor's label. Every argument PML accepts gives PML's result (values and
    gradients), with PML's conventions:

    * Without ``ref_emb`` the rows are compared with every other row (not themselves). With
      ``ref_emb`` every anchor is compared with every reference row, except that, as in PML,
      passing the very ``labels`` tensor as ``ref_labels`` (or no ``ref_labels``: PML then takes
      ``labels``) also drops row i of the reference from anchor i.
    * The loss is 0 (with zero gradients) when the batch has no positive pair, no negative pair, or
      at most one of each.
    * The reducer (default ``AvgNonZeroReducer``: the mean of the per-anchor losses > 0) reduces the
      per-anchor losses as in PML; ``DoNothingReducer`` returns PML's loss dictionary.

    Fused (the kernels, O(M D) memory): the cosine (``distance=None``, ``CosineSimilarity()``,
    ``DotProductSimilarity(normalize_embeddings=True)``) and ``LpDistance(normalize_embeddings=True,
    power=2)`` (``2 - 2 cos``: similarity ``2 cos - 2``, whose constant cancels, i.e. the cosine at
    temperature tau / 2), with any reducer and regularizer. ``AvgNonZeroReducer``,
    ``MeanReducer`` and ``SumReducer`` reduce without a host synchronization. Unfused (PML's formula
    on the M x N matrix, with a one-time :class:`FallbackWarning` naming why; a ValueError with
    ``strict=True``): other distances (``LpDistance`` of power 1, unnormalized or other-norm
    distances, powers of the cosine, distances of other classes), a miner's ``indices_tuple``, and
    ``ref_emb`` without ``ref_labels`` of another length than ``embeddings``.

    Args:
        temperature: tau > 0 (PML's default 0.1).
        distance: None (the cosine) or a PML distance object.
        reducer: None (``AvgNonZeroReducer``) or a PML reducer object.
        embedding_regularizer, embedding_reg_weight: PML's: the regularizer's term (times the
            weight) is added to the loss dictionary and reduced with it. ``collect_stats`` is
            accepted; statistics are not recorded.
        strict: refuse (ValueError) a call the fused kernels cannot compute instead of running it
            unfused.
        check_finite: raise if ``embeddings`` or ``ref_emb`` holds NaN or Inf (a pass over them).
            Without it, as in PML, ``AvgNonZeroReducer`` leaves NaN losses out of its mean (NaN is
            not > 0), so a NaN input can give a finite loss.
        gather_distributed: in a ``torch.distributed`` job, every rank's anchors against the
            reference rows and labels of all ranks, reduced over all ranks' anchors (not a PML
            argument; see :mod:`coun_fast.distributed`); fused calls only, and with
            ``AvgNonZeroReducer`` the mean is over the anchors that have a positive.
        backend: "auto", "fused" or "reference" (the fused path's formula in pure PyTorch).

    Call: ``loss(embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None)``;
    ``embeddings`` (M, D) or (B, V, D) with V views of each of B labelled samples. Returns the loss
    in the embeddings' dtype (for ``ref_emb`` of another dtype, the promoted one).
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
        strict: bool = False,
        check_finite: bool = False,
        gather_distributed: bool = False,
        backend: str = "auto",
    ) -> None:
        self.gather_distributed = validation.boolean(gather_distributed, "gather_distributed")
        super().__init__(temperature, distance, reducer, embedding_regularizer, embedding_reg_weight, strict,
                         check_finite, backend)
        if self.gather_distributed and self.reduction is None and type(reducer).__name__ != "DoNothingReducer":
            raise ValueError(f"gather_distributed=True reduces over every rank with AvgNonZeroReducer, MeanReducer, "
                             f"SumReducer or DoNothingReducer; got reducer={type(reducer).__name__}(...)")

    _pml_losses = staticmethod(_pml.sup_con_losses)

    def _rows(self, embeddings: Tensor, labels: Tensor, ref_emb: Tensor | None, ref_labels: Tensor,
              same_object: bool, reduction: str) -> Tensor:
        common = dict(anchor_labels=labels, reduction=reduction, backend=self.backend,
                      gather_distributed=self.gather_distributed)
        if ref_emb is None:
            return functional.info_nce(embeddings, None, self._temperature(), exclude_self=True, **common)
        return functional.info_nce(embeddings, ref_emb, self._temperature(), candidate_labels=ref_labels,
                                   exclude_self=same_object, **common)

    def _fused(self, embeddings: Tensor, labels: Tensor, ref_emb: Tensor | None, ref_labels: Tensor,
               same_object: bool):
        if self.gather_distributed and distributed.active():
            return self._gathered(embeddings, labels, ref_emb, ref_labels, same_object)
        rows = self._rows(embeddings, labels, ref_emb, ref_labels, same_object, "none")
        zero = _pml.zero_rule(*_pml.pair_counts(labels, ref_labels, same_object))
        indices = torch.arange(embeddings.shape[0], device=embeddings.device)
        if self.reduction is None and bool(zero):  # a reducer object sees PML's own "zero loss" entry
            return self._reduced(_pml.zero_losses(), embeddings, labels)
        losses = torch.where(zero, torch.zeros_like(rows), rows)  # no host synchronization
        if self.reduction is None:
            losses = losses.to(embeddings.dtype)
        return self._reduced({"losses": losses, "indices": indices, "reduction_type": "element"}, embeddings, labels)

    def _gathered(self, embeddings: Tensor, labels: Tensor, ref_emb: Tensor | None, ref_labels: Tensor,
                  same_object: bool):
        """Reduced over every rank's anchors: AvgNonZeroReducer as the mean over the anchors that
        have a positive, MeanReducer as the sum over every rank's M anchors / their number."""
        reduction = {"avg_non_zero": "mean", "mean": "sum", "sum": "sum", None: "none"}[self.reduction]
        loss = self._rows(embeddings, labels, ref_emb, ref_labels, same_object, reduction)
        all_labels = distributed.all_gather_rows(labels)
        all_ref_labels = distributed.all_gather_rows(ref_labels)
        if self.reduction == "mean":
            loss = loss / all_labels.shape[0]
        zero = _pml.zero_rule(*_pml.pair_counts(all_labels, all_ref_labels, same_object))
        loss = torch.where(zero, torch.zeros_like(loss), loss).to(embeddings.dtype)
        if self.reduction is None:
            indices = torch.arange(embeddings.shape[0], device=embeddings.device)
            return {"loss": {"losses": loss, "indices": indices, "reduction_type": "element"}}
        return loss


class PMLNTXentLoss(_PMLLoss):
    """pytorch-metric-learning's ``NTXentLoss``: one loss per positive pair (a, p), each with its own
    denominator, ``-log(exp(s_ap) / (exp(s_ap) + sum_{n in Neg(a)} exp(s_an)))``, with s the
    similarity over tau; reduced by default with ``MeanReducer`` (the mean over the pairs), as PML.

    With one positive per anchor (two views of each sample) it is SimCLR's NT-Xent
    (:class:`NTXentLoss` without a bank); with several, each positive pair is a term (not the
    mean over the positives inside one log-sum-exp, as :class:`SupConLoss`).

    Arguments, conventions (pairs, ``ref_emb``, the zero rule), what runs fused and what falls back
    as in :class:`SupConLoss`. Fused: every anchor's log-sum-exp over its negatives comes from the
    kernels (one call when every anchor has at most one positive; else one call per label, the
    label's anchors against the other labels' rows), then the per-pair terms
    ``log(1 + exp(lse_neg(a) - s_ap))`` in O(pairs x D). Each call reads the labels on the host (not
    for ``torch.compile(fullgraph=True)``). Where a pair's ratio underflows, PML's
    ``-log(ratio + tiny)`` stops at about 87 (float32) and this loss does not.

    Args: as :class:`SupConLoss` (temperature default 0.07, PML's; no ``gather_distributed``).
    """

    default_reducer = "mean"

    def __init__(
        self,
        temperature: float = 0.07,
        *,
        distance: object = None,
        reducer: object = None,
        embedding_regularizer: object = None,
        embedding_reg_weight: float = 1,
        collect_stats: bool | None = None,
        strict: bool = False,
        check_finite: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__(temperature, distance, reducer, embedding_regularizer, embedding_reg_weight, strict,
                         check_finite, backend)

    _pml_losses = staticmethod(_pml.nt_xent_losses)

    def _fused(self, embeddings: Tensor, labels: Tensor, ref_emb: Tensor | None, ref_labels: Tensor,
               same_object: bool):
        positives, negatives = _pml.pair_counts(labels, ref_labels, same_object)
        if bool(_pml.zero_rule(positives, negatives)):
            return self._reduced(_pml.zero_losses(), embeddings, labels)
        anchors, partners = _pml.positive_pairs(labels, ref_labels, positives, same_object)
        ref = embeddings if ref_emb is None else ref_emb
        if int(positives.max()) <= 1:  # each pair is its anchor's one term: the kernels' own loss
            rows = functional.info_nce(embeddings, ref_emb, self._temperature(), anchor_labels=labels,
                                       candidate_labels=None if ref_emb is None else ref_labels,
                                       exclude_self=same_object, reduction="none", backend=self.backend)
            losses = rows[anchors]
        else:
            lse = self._negative_log_sum_exp(embeddings, labels, ref, ref_labels, positives)
            gap = lse[anchors] - self._similarity(embeddings[anchors], ref[partners])
            losses = torch.logaddexp(gap, torch.zeros_like(gap))  # log(1 + e^gap), exact at both ends
        if self.reduction is None:
            losses = losses.to(embeddings.dtype)
        return self._reduced({"losses": losses, "indices": (anchors, partners), "reduction_type": "pos_pair"},
                             embeddings, labels)

    def _similarity(self, a: Tensor, b: Tensor) -> Tensor:
        """Row-wise cosine over the kernels' temperature, at least in float32."""
        dtype = torch.promote_types(a.dtype, torch.float32)
        return (torch_F.normalize(a.to(dtype), dim=1) * torch_F.normalize(b.to(dtype), dim=1)).sum(1) \
            / self._temperature()

    def _negative_log_sum_exp(self, embeddings: Tensor, labels: Tensor, ref: Tensor, ref_labels: Tensor,
                              positives: Tensor) -> Tensor:
        """Each anchor's log-sum-exp over its negatives (-inf without one), differentiable: per label
        with a positive pair, the kernels' loss of the label's anchors against the other labels' rows
        with the first of them as the "positive", ``lse - s_a0``, plus ``s_a0``."""
        rows, values = [], []
        for label in torch.unique(labels[positives > 0]).tolist():
            members = torch.nonzero(labels == label).squeeze(1)
            others = torch.nonzero(ref_labels != label).squeeze(1)
            if others.numel() == 0:
                continue
            anchors, candidates = embeddings[members], ref[others]
            first = torch.zeros_like(members)
            loss = functional.info_nce(anchors, candidates, self._temperature(), positive_index=first,
                                       reduction="none", backend=self.backend)
            rows.append(members)
            values.append(loss + self._similarity(anchors, candidates[:1].expand_as(anchors)))
        dtype = torch.promote_types(embeddings.dtype, torch.float32)
        lse = torch.full((embeddings.shape[0],), float("-inf"), dtype=dtype, device=embeddings.device)
        if not rows:
            return lse
        return lse.index_put((torch.cat(rows),), torch.cat(values).to(dtype))


class CrossViewInfoNCE(_ContrastiveLoss):
    """CoUn's cross-view InfoNCE, both directions summed (see
    :func:`coun_fast.functional.cross_view_info_nce`): ``loss(z1, z2)``; ``gather_distributed`` and
    ``check_finite`` as there."""

    def __init__(self, temperature: float = 0.1, backend: str = "auto", gather_distributed: bool = False,
                 check_finite: bool = False) -> None:
        super().__init__(temperature, backend)
        self.gather_distributed = validation.boolean(gather_distributed, "gather_distributed")
        self.check_finite = validation.boolean(check_finite, "check_finite")

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        return functional.cross_view_info_nce(z1, z2, self.temperature, backend=self.backend,
                                              check_finite=self.check_finite,
                                              gather_distributed=self.gather_distributed)


class InfoNCE(_ContrastiveLoss):
    """General InfoNCE (see :func:`coun_fast.functional.info_nce`): ``loss(anchors, candidates,
    positive_index=..., anchor_labels=..., candidate_labels=..., paired_candidates=...)``; by
    default anchor i's positive is candidate i; ``gather_distributed`` and ``check_finite`` as there."""

    def __init__(
        self,
        temperature: float = 0.1,
        *,
        exclude_self: bool = False,
        symmetric: bool = False,
        reduction: str = "mean",
        backend: str = "auto",
        gather_distributed: bool = False,
        check_finite: bool = False,
    ) -> None:
        super().__init__(temperature, backend)
        self.check_finite = validation.boolean(check_finite, "check_finite")
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
            check_finite=self.check_finite, gather_distributed=self.gather_distributed)
