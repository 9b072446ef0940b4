"""Contrastive losses, exact against their textbook formulas, fused on CPU and CUDA.

Symbols: N pairs, M rows, D feature dimension, tau the temperature. Every loss L2-normalizes its
inputs (``x / max(||x||, 1e-12)``), compares them by cosine similarity over tau, and never builds
the M x M matrix on the fused path (memory O(M D)). Inputs may be non-contiguous and of any float
dtype; gradients flow to every feature input. Two feature inputs of different dtypes are computed
in ``torch.promote_types`` of them (float32 with float64: float64; float32 with bfloat16 or
float16: float32; bfloat16 with float16: float32), each input's gradient in its own dtype. The loss
is float32 (float64 when an input is float64).

``backend``: "auto" (fused kernels when they support the call, else the reference), "fused"
(raises an error listing why it cannot run), "reference" (the pure-PyTorch oracle,
``coun_fast.ops.reference``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from coun_fast import distributed, validation
from coun_fast.ops import backend as backends
from coun_fast.ops import reference
from coun_fast.ops.contrastive import (PATH_EXACT, REDUCTIONS, RULE_DIAGONAL, RULE_INDEX, RULE_LABELS,
                                       RULE_PARTNER, contrastive_loss, reference_loss, rule_positives)
from coun_fast.ops.contrastive import similarity as _fused_similarity

__all__ = ["info_nce", "nt_xent", "cross_view_info_nce", "sup_con", "similarity"]


def info_nce(
    anchors: Tensor,
    candidates: Tensor | None,
    temperature: float,
    *,
    positive_index: Tensor | None = None,
    anchor_labels: Tensor | None = None,
    candidate_labels: Tensor | None = None,
    exclude_self: bool = False,
    paired_candidates: int = 0,
    symmetric: bool = False,
    reduction: str = "mean",
    backend: str = "auto",
    check_finite: bool = False,
    gather_distributed: bool = False,
) -> Tensor:
    """General InfoNCE: anchors against candidates, positives by index or by label.

    For anchor i, ``l_i = logsumexp_j s_ij - mean_{p in Pos(i)} s_ip`` with ``s_ij = a_i . b_j / tau``
    over every compared candidate j: all of them, except j = i when ``exclude_self``; with
    ``paired_candidates = P``, candidate j < P only for anchor j (the memory-bank / MoCo form:
    each anchor against its own key and a shared bank of negatives).

    Args:
        anchors: (M, D) features.
        candidates: (N, D) features; None (or the anchors tensor itself) compares the anchors with
            each other, with one fused pass for the gradient.
        temperature: tau, a finite number > 0.
        positive_index: (M,) integers in [0, N): the one positive of each anchor.
        anchor_labels, candidate_labels: (M,), (N,) integer labels; the positives of anchor i are
            the compared candidates of the same label (candidate_labels defaults to anchor_labels
            when the anchors are their own candidates). Without positive_index or labels, anchor i's
            positive is candidate i (paired rows, M == N).
        exclude_self: drop candidate i from anchor i (M == N).
        paired_candidates: P in [0, min(M, N)]: the first P candidates belong to one anchor each
            (candidate i to anchor i), the others are compared with every anchor. Without
            positive_index or labels, anchor i's positive is then candidate i (needs P == M).
            One direction only (not with symmetric or exclude_self, and with separate candidates).
        symmetric: also take the candidates as anchors against the anchors and add that loss (the
            two-directional CLIP / CoUn form); positive_index must then be a permutation.
        reduction: "mean" (over anchors that have a positive; with symmetric, the mean of each
            direction, summed), "sum", or "none" (per-anchor losses, (M,) or (M + N,); anchors
            without a positive give 0).
        backend: "auto", "fused" or "reference".
        check_finite: raise if an input holds NaN or Inf (costs a pass over the inputs).
        gather_distributed: in a ``torch.distributed`` job, compare this rank's anchors with the
            candidates (and labels) of every rank and reduce over every rank's anchors: the loss is
            the single-process loss of the ranks' concatenated batches, and the gradients follow
            DistributedDataParallel's convention (see :mod:`coun_fast.distributed`). Indices stay
            local (positive_index, exclude_self). No effect outside a distributed job; not with
            paired_candidates.

    Returns:
        The loss: a scalar, or per-anchor losses for reduction="none".

    Raises:
        TypeError, ValueError: an argument outside what is accepted (the message names it).
        RuntimeError: backend="fused" where this installation cannot run fused kernels.
    """
    anchors = validation.features(anchors, "anchors", check_finite=check_finite)
    if candidates is anchors and not symmetric:
        candidates = None  # one tensor as both: the anchors-against-themselves problem
    if candidates is not None:
        candidates = validation.features(candidates, "candidates", check_finite=check_finite)
        validation.same_device(anchors, "anchors", candidates, "candidates")
        validation.same_dim(anchors, "anchors", candidates, "candidates")
        anchors, candidates = validation.promoted(anchors, candidates)
    temperature = validation.temperature(temperature)
    reduction = validation.reduction(reduction)
    m = anchors.shape[0]
    n = m if candidates is None else candidates.shape[0]
    if exclude_self and m != n:
        raise ValueError(f"exclude_self needs as many candidates as anchors; got {m} anchors and {n} candidates")
    if symmetric and candidates is None:
        raise ValueError("symmetric=True needs separate candidates; the anchors-against-themselves problem is already symmetric")
    paired_candidates = validation.paired_candidates(paired_candidates, m, n, candidates is None, exclude_self,
                                                     symmetric)

    rule = RULE_INDEX
    if positive_index is None and anchor_labels is None:
        if candidate_labels is not None:
            raise ValueError("candidate_labels was given without anchor_labels")
        if paired_candidates and paired_candidates != m:
            raise ValueError(f"give positive_index or anchor_labels: the default pairs anchor i with candidate i, "
                             f"which needs paired_candidates == M = {m}; got {paired_candidates}")
        if not paired_candidates and (m != n or exclude_self):
            raise ValueError("give positive_index or anchor_labels: the default pairs anchor i with candidate i, "
                             "which needs M == N and exclude_self=False")
        rule = RULE_DIAGONAL
    elif positive_index is not None:
        if anchor_labels is not None or candidate_labels is not None:
            raise ValueError("give either positive_index or labels, not both")
        positive_index = validation.integer_vector(positive_index, "positive_index", m, anchors, "anchors")
        validation.index_in_range(positive_index, "positive_index", n)
        if exclude_self:
            validation.no_self_positive(positive_index, "positive_index")
        if symmetric:
            if m != n:
                raise ValueError(f"positive_index must be a permutation when symmetric=True, which needs as many "
                                 f"candidates as anchors; got {m} anchors and {n} candidates")
            validation.is_permutation(positive_index, "positive_index")
    else:
        rule = RULE_LABELS
        anchor_labels = validation.integer_vector(anchor_labels, "anchor_labels", m, anchors, "anchors")
        if candidate_labels is None:
            if candidates is not None:
                raise ValueError("candidate_labels is required when candidates are given with anchor_labels")
        else:
            candidate_labels = validation.integer_vector(
                candidate_labels, "candidate_labels", n, anchors if candidates is None else candidates,
                "anchors" if candidates is None else "candidates")
    gather_distributed = validation.boolean(gather_distributed, "gather_distributed")
    if gather_distributed and paired_candidates:
        raise ValueError("gather_distributed=True does not combine with paired_candidates")
    return _loss(anchors, candidates, temperature, rule, positive_index, anchor_labels, candidate_labels,
                 exclude_self, symmetric, reduction, backend, paired_candidates, gather_distributed)


def _loss(anchors: Tensor, candidates: Tensor | None, temperature: float, rule: int, positive_index: Tensor | None,
          anchor_labels: Tensor | None, candidate_labels: Tensor | None, exclude_self: bool, symmetric: bool,
          reduction: str, backend: str, paired: int = 0, gather: bool = False) -> Tensor:
    """The loss of validated arguments, on the fused kernels or the reference (see ``backend``);
    ``gather``: against the candidates of every rank of a distributed job (:mod:`coun_fast.distributed`)."""
    if gather and distributed.active():
        return _gathered_loss(anchors, candidates, temperature, rule, positive_index, anchor_labels,
                              candidate_labels, exclude_self, symmetric, reduction, backend)
    inputs = (anchors,) if candidates is None else (anchors, candidates)
    if backends.resolve(backend, *inputs) == "fused":
        return contrastive_loss(anchors, candidates, temperature, rule, positive_index, anchor_labels,
                                candidate_labels, exclude_self, paired, symmetric, REDUCTIONS[reduction],
                                _cuda_path(anchors, candidates))
    return reference_loss(anchors, candidates, temperature, rule, positive_index, anchor_labels, candidate_labels,
                          exclude_self, paired, symmetric, REDUCTIONS[reduction])


def _cuda_path(anchors: Tensor, candidates: Tensor | None) -> int:
    if anchors.device.type == "cuda" and (candidates is None or candidates.dtype == anchors.dtype):
        return backends.cuda_path(anchors.dtype, anchors.device)
    return PATH_EXACT


def _rows(anchors: Tensor, candidates: Tensor, temperature: float, rule: int, positive_index: Tensor | None,
          anchor_labels: Tensor | None, candidate_labels: Tensor | None, exclude_self: bool,
          backend: str) -> tuple[Tensor, Tensor]:
    """One direction's per-anchor losses (M,) and whether each anchor has a positive (M,)."""
    if backends.resolve(backend, anchors, candidates) == "fused":
        rows, stats = contrastive_loss(anchors, candidates, temperature, rule, positive_index, anchor_labels,
                                       candidate_labels, exclude_self, 0, False, REDUCTIONS["none"],
                                       _cuda_path(anchors, candidates), with_stats=True)
        m = anchors.shape[0]
        return rows, stats[m: 2 * m] > 0
    positive_index = rule_positives(rule, positive_index, anchors.shape[0], anchors.device)
    return reference.info_nce_rows(anchors, candidates, temperature, positive_index=positive_index,
                                   anchor_labels=anchor_labels, candidate_labels=candidate_labels,
                                   exclude_self=exclude_self)


def _gathered_loss(anchors: Tensor, candidates: Tensor | None, temperature: float, rule: int,
                   positive_index: Tensor | None, anchor_labels: Tensor | None, candidate_labels: Tensor | None,
                   exclude_self: bool, symmetric: bool, reduction: str, backend: str) -> Tensor:
    """This rank's anchors against every rank's candidates, gathered with this rank's rows first so
    that local indices keep their meaning; reduced over every rank's anchors (distributed.py)."""
    m = anchors.shape[0]
    if rule == RULE_PARTNER:  # the partner of local row i is local row (i + m/2) mod m
        rule, positive_index = RULE_INDEX, torch.arange(m, device=anchors.device).roll(m // 2)
    own = anchors if candidates is None else candidates
    own_labels = anchor_labels if candidate_labels is None else candidate_labels
    directions = [(anchors, own, positive_index, anchor_labels, own_labels)]
    if symmetric:
        reverse = None if positive_index is None else reference.inverse_permutation(positive_index)
        directions.append((candidates, anchors, reverse, candidate_labels, anchor_labels))
    losses = []
    for a, b, index, a_labels, b_labels in directions:
        gathered, gathered_labels, _ = distributed.gather_own_first(b, b_labels if rule == RULE_LABELS else None)
        rows, valid = _rows(a, gathered, temperature, rule, index, a_labels, gathered_labels, exclude_self, backend)
        losses.append(rows if reduction == "none" else distributed.reduce_rows(rows, valid, reduction))
    return torch.cat(losses) if reduction == "none" else sum(losses[1:], losses[0])


def nt_xent(
    z1: Tensor, z2: Tensor, temperature: float = 0.5, *, backend: str = "auto", check_finite: bool = False,
    gather_distributed: bool = False,
) -> Tensor:
    """SimCLR's NT-Xent over the 2N rows of cat(z1, z2).

    Each row is compared with every other row (its own similarity is excluded); its positive is the
    other view of the same sample (row i and row i + N). The loss is the mean over the 2N rows.

    Args:
        z1, z2: (N, D) features of the two views.
        temperature: tau > 0 (SimCLR: 0.5 at batch 256, 0.1 for large batches).
        backend, check_finite, gather_distributed: as in :func:`info_nce`.

    Returns:
        Scalar loss; log(2N - 1) when all rows are identical.
    """
    validation.views(z1, z2, check_finite=check_finite)
    temperature = validation.temperature(temperature)
    rows = torch.cat(validation.promoted(z1, z2))  # row i's partner is row i + N (mod 2N)
    return _loss(rows, None, temperature, RULE_PARTNER, None, None, None, True, False, "mean", backend,
                 gather=validation.boolean(gather_distributed, "gather_distributed"))


def cross_view_info_nce(
    z1: Tensor, z2: Tensor, temperature: float = 0.1, *, backend: str = "auto", check_finite: bool = False,
    gather_distributed: bool = False,
) -> Tensor:
    """CoUn's contrastive term L_CL between two views of one batch.

    With ``S = norm(z1) norm(z2)^T / tau`` (N x N), the mean over rows of
    ``logsumexp(S[n, :]) - S[n, n]`` plus the same over columns: each sample's positive is its other
    view, its negatives the other view of every other sample. The two directions are summed, as in
    the paper's code (no 1/2).

    Args:
        z1, z2: (N, D) penultimate features of the two views.
        temperature: tau > 0 (CoUn: 0.1).
        backend, check_finite, gather_distributed: as in :func:`info_nce`.
    """
    validation.views(z1, z2, check_finite=check_finite)
    z1, z2 = validation.promoted(z1, z2)
    temperature = validation.temperature(temperature)
    return _loss(z1, z2, temperature, RULE_DIAGONAL, None, None, None, False, True, "mean", backend,
                 gather=validation.boolean(gather_distributed, "gather_distributed"))


def sup_con(
    features: Tensor,
    labels: Tensor,
    temperature: float = 0.1,
    *,
    backend: str = "auto",
    check_finite: bool = False,
    gather_distributed: bool = False,
) -> Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, the L_out form).

    For anchor i, the positives are the other rows with its label and the denominator runs over all
    rows except i: ``l_i = logsumexp_{k != i} s_ik - mean_{p in Pos(i)} s_ip``; the loss is the mean
    over anchors that have at least one positive (no temperature / base-temperature rescaling).

    Args:
        features: (M, D) features, or (B, V, D) with V views of each of B samples (then the labels
            are per sample and are repeated for every view).
        labels: (M,) or (B,) integer labels.
        temperature: tau > 0.
        backend, check_finite, gather_distributed: as in :func:`info_nce`.
    """
    if isinstance(features, Tensor) and features.dim() == 3:
        batch, views, dim = features.shape
        features = features.reshape(batch * views, dim)
        if isinstance(labels, Tensor) and labels.dim() == 1 and labels.shape[0] == batch:
            labels = labels.repeat_interleave(views)
    features = validation.features(features, "features", check_finite=check_finite)
    labels = validation.integer_vector(labels, "labels", features.shape[0], features, "features")
    temperature = validation.temperature(temperature)
    return _loss(features, None, temperature, RULE_LABELS, None, labels, None, True, False, "mean", backend,
                 gather=validation.boolean(gather_distributed, "gather_distributed"))


def similarity(a: Tensor, b: Tensor | None = None, temperature: float = 1.0, *, backend: str = "auto") -> Tensor:
    """The cosine-similarity matrix ``norm(a) norm(b)^T / tau``, materialized (M, N), float32
    (float64 for float64 inputs); ``b=None`` compares ``a`` with itself. Differentiable."""
    a = validation.features(a, "a")
    if b is not None:
        b = validation.features(b, "b")
        validation.same_device(a, "a", b, "b")
        validation.same_dim(a, "a", b, "b")
    temperature = validation.temperature(temperature)
    inputs = (a,) if b is None else (a, b)
    if backends.resolve(backend, *inputs) == "fused":
        return _fused_similarity(a, b, temperature)
    return reference.similarity(a, b, temperature)
