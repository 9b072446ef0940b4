"""pytorch-metric-learning's (PML's) conventions, for the drop-in classes of :mod:`coun_fast.losses`.

PML's objects (distances, reducers, regularizers) are recognized by class name and attributes, so
that PML is not a dependency. This module says which PML distances the fused kernels compute,
builds PML's pairs (``lmu.convert_to_pairs``) and its loss dictionaries, computes PML's SupCon and
NT-Xent per-element losses as PML does (the unfused path: the M x N matrix of the user's distance
object, PML's formulas transcribed), and reduces loss dictionaries as PML's reducers do.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as torch_F
from torch import Tensor


class FallbackWarning(UserWarning):
    """A drop-in loss runs a call on its unfused path (what the kernels cannot compute)."""


def cosine_scale(distance: object) -> tuple[float | None, str]:
    """``(c, "")`` when PML's similarity under ``distance`` is ``c * cosine + constant`` with c > 0,
    where the constant is shared by every term of a softmax-style loss and cancels, so the kernels
    compute the loss at temperature tau / c; else ``(None, why not)``.

    ``None``, ``CosineSimilarity()`` and ``DotProductSimilarity(normalize_embeddings=True)`` (p = 2,
    power 1) are the cosine (c = 1). ``LpDistance(normalize_embeddings=True, p=2, power=2)`` is
    ``2 - 2 cos``, a distance, so PML takes ``2 cos - 2`` as the similarity (c = 2)."""
    if distance is None:
        return 1.0, ""
    name = type(distance).__name__
    normalized = getattr(distance, "normalize_embeddings", False)
    p, power = getattr(distance, "p", 2), getattr(distance, "power", 1)
    shown = f"{name}(normalize_embeddings={normalized}, p={p}, power={power})"
    if name not in ("CosineSimilarity", "DotProductSimilarity", "LpDistance"):
        return None, f"distance={name}(...) is not one the kernels compute (they compute the cosine)"
    if not normalized:
        return None, f"distance={shown} compares unnormalized embeddings; the kernels compare normalized ones"
    if p != 2:
        return None, f"distance={shown} normalizes with the L{p} norm; the kernels normalize with L2"
    if name == "LpDistance":
        if power == 2:
            return 2.0, ""
        if power == 1:
            return None, (f"distance={shown} is sqrt(2 - 2 cos), not an affine function of the cosine; the "
                          f"kernels have no transform for it")
        return None, f"distance={shown} is (2 - 2 cos)^{power / 2:g}, not an affine function of the cosine"
    if power == 1:
        return 1.0, ""
    return None, f"distance={shown} is cos^{power}, not an affine function of the cosine"


def warn_once(module: object, reason: str) -> None:
    """A :class:`FallbackWarning` naming ``reason``, once per loss object and reason."""
    warned = module.__dict__.setdefault("_fallback_warned", set())
    if reason not in warned:
        warned.add(reason)
        warnings.warn(f"{type(module).__name__} runs unfused (as pytorch-metric-learning computes it): {reason}; "
                      f"pass strict=True to refuse instead", FallbackWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------------
# Pairs and PML's zero rule


def pairs(labels: Tensor | None, ref_labels: Tensor | None, indices_tuple: object,
          same_object: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """PML's ``convert_to_pairs``: (a1, p, a2, n) of every positive and negative pair from the
    labels, or a miner's pairs (4-tuple) or triplets (a, p, n -> a, p, a, n). With the same labels
    object on both sides (no ``ref_emb``), a row is neither its own positive nor its own negative."""
    if indices_tuple is None:
        matches = labels[:, None] == ref_labels[None, :]
        diffs = ~matches
        if same_object:
            matches.fill_diagonal_(False)
        a1, p = torch.where(matches)
        a2, n = torch.where(diffs)
        return a1, p, a2, n
    if not isinstance(indices_tuple, (tuple, list)) or len(indices_tuple) not in (3, 4):
        raise ValueError(f"indices_tuple must be a miner's (anchors, positives, negatives) or "
                         f"(anchors1, positives, anchors2, negatives) tuple of index tensors; got {indices_tuple!r}")
    if len(indices_tuple) == 4:
        return tuple(indices_tuple)
    a, p, n = indices_tuple
    return a, p, a, n


def pair_counts(labels: Tensor, ref_labels: Tensor, same_object: bool) -> tuple[Tensor, Tensor]:
    """Each anchor's numbers of positive and negative pairs (reference rows with its label, itself
    left out for the same labels object; rows of other labels): a sorted search, O((M + N) log N),
    no M x N matrix and no host synchronization."""
    ordered = torch.sort(ref_labels).values
    same = torch.searchsorted(ordered, labels, right=True) - torch.searchsorted(ordered, labels)
    return (same - 1 if same_object else same), ref_labels.shape[0] - same


def positive_pairs(labels: Tensor, ref_labels: Tensor, positives: Tensor, same_object: bool) -> tuple[Tensor, Tensor]:
    """(a1, p): every positive pair in PML's order (by anchor, then reference row), from a stable
    sort of the reference labels: O(pairs + (M + N) log N), no M x N matrix."""
    ordered, order = torch.sort(ref_labels, stable=True)
    start = torch.searchsorted(ordered, labels)
    same = positives + 1 if same_object else positives  # the reference rows with the anchor's label
    anchors = torch.repeat_interleave(torch.arange(labels.shape[0], device=labels.device), same)
    offsets = torch.arange(anchors.shape[0], device=labels.device) - torch.repeat_interleave(
        torch.cumsum(same, 0) - same, same)
    partners = order[start[anchors] + offsets]
    if same_object:
        kept = partners != anchors
        anchors, partners = anchors[kept], partners[kept]
    return anchors, partners


def zero_rule(positives: Tensor, negatives: Tensor) -> Tensor:
    """PML's "zero loss" condition, a 0-d bool tensor: no positive pair, no negative pair, or at most
    one of each (``GenericPairLoss.compute_loss`` and the losses' own checks)."""
    pos, neg = positives.sum(), negatives.sum()
    return (pos == 0) | (neg == 0) | ((pos <= 1) & (neg <= 1))


def zero_losses() -> dict:
    return {"losses": 0, "indices": None, "reduction_type": "already_reduced"}


# ---------------------------------------------------------------------------------------------
# The unfused path: PML's formulas on the M x N matrix


def matrix(distance: object, embeddings: Tensor, ref_emb: Tensor | None) -> tuple[Tensor, bool]:
    """The M x N matrix of ``distance`` (PML's default, the cosine, for None) and whether it is a
    similarity (PML's ``is_inverted``)."""
    if distance is not None:
        return distance(embeddings, ref_emb), bool(distance.is_inverted)
    a = torch_F.normalize(embeddings, dim=1)
    b = a if ref_emb is None else torch_F.normalize(ref_emb, dim=1)
    return a @ b.T, True


def _masks(mat: Tensor, indices: tuple) -> tuple[Tensor, Tensor]:
    a1, p, a2, n = indices
    pos_mask, neg_mask = torch.zeros_like(mat), torch.zeros_like(mat)
    pos_mask[a1, p] = 1
    neg_mask[a2, n] = 1
    if bool(((pos_mask != 0) & (neg_mask != 0)).any()):
        raise ValueError("indices_tuple: each pair must be either positive or negative, not both")
    return pos_mask, neg_mask


def sup_con_losses(mat: Tensor, similarity: bool, indices: tuple, temperature: float) -> dict:
    """PML's ``SupConLoss._compute_loss`` (via ``mat_based_loss``): per-anchor losses."""
    if all(len(x) <= 1 for x in indices):
        return zero_losses()
    pos_mask, neg_mask = _masks(mat, indices)
    if not (bool(pos_mask.bool().any()) and bool(neg_mask.bool().any())):
        return zero_losses()
    mat = (mat if similarity else -mat) / temperature
    mat = mat - mat.max(dim=1, keepdim=True).values.detach()
    keep = (pos_mask + neg_mask).bool()
    denominator = torch.logsumexp(mat.masked_fill(~keep, torch.finfo(mat.dtype).min), dim=1, keepdim=True)
    denominator = denominator.masked_fill(~keep.any(dim=1, keepdim=True), 0)
    log_prob = mat - denominator
    tiny = torch.finfo(mat.dtype).tiny
    mean_log_prob_pos = (pos_mask * log_prob).sum(dim=1) / (pos_mask.sum(dim=1) + tiny)
    return {"losses": -mean_log_prob_pos, "indices": torch.arange(mat.shape[0], device=mat.device),
            "reduction_type": "element"}


def nt_xent_losses(mat: Tensor, similarity: bool, indices: tuple, temperature: float) -> dict:
    """PML's ``NTXentLoss._compute_loss`` (via ``pair_based_loss``): one loss per positive pair,
    ``-log(exp(s_ap) / (exp(s_ap) + sum over the anchor's negatives exp(s_an)))``."""
    if all(len(x) <= 1 for x in indices):
        return zero_losses()
    a1, p, a2, n = indices
    if not (len(a1) > 0 and len(a2) > 0):
        return zero_losses()
    pos_pairs, neg_pairs = mat[a1, p], mat[a2, n]
    dtype = neg_pairs.dtype
    if not similarity:
        pos_pairs, neg_pairs = -pos_pairs, -neg_pairs
    pos_pairs = pos_pairs.unsqueeze(1) / temperature
    neg_pairs = neg_pairs / temperature
    n_per_p = (a2.unsqueeze(0) == a1.unsqueeze(1)).to(dtype)
    neg_pairs = neg_pairs * n_per_p
    neg_pairs[n_per_p == 0] = torch.finfo(dtype).min
    max_val = torch.max(pos_pairs, torch.max(neg_pairs, dim=1, keepdim=True)[0]).detach()
    numerator = torch.exp(pos_pairs - max_val).squeeze(1)
    denominator = torch.sum(torch.exp(neg_pairs - max_val), dim=1) + numerator
    losses = -torch.log((numerator / denominator) + torch.finfo(dtype).tiny)
    return {"losses": losses, "indices": (a1, p), "reduction_type": "pos_pair"}


# ---------------------------------------------------------------------------------------------
# Reducers

# PML reducers computed here without a host synchronization (exactly as PML reduces), by name.
BUILTIN_REDUCERS = {"AvgNonZeroReducer": "avg_non_zero", "MeanReducer": "mean", "SumReducer": "sum"}


def builtin_reduction(reducer: object, default: str) -> str | None:
    """The reduction computed here for ``reducer`` (``default`` for None), or None where the
    reducer object itself reduces (any other reducer, DoNothingReducer included)."""
    if reducer is None:
        return default
    name = type(reducer).__name__
    if name == "AvgNonZeroReducer" and (getattr(reducer, "low", 0) != 0 or getattr(reducer, "high", None) is not None):
        return None
    return BUILTIN_REDUCERS.get(name)


def reduce_one(info: dict, reduction: str, embeddings: Tensor) -> Tensor:
    """One loss entry reduced as PML's AvgNonZeroReducer / MeanReducer / SumReducer reduce it."""
    losses = info["losses"]
    if not torch.is_tensor(losses) and losses == 0:
        return torch.sum(embeddings * 0)
    if info["reduction_type"] == "already_reduced":
        return losses
    if reduction == "avg_non_zero":  # PML: the mean of the losses > 0, or 0 (NaN is not > 0)
        kept = losses > 0
        return torch.where(kept, losses, 0).sum() / kept.sum().clamp(min=1)
    return losses.mean() if reduction == "mean" else losses.sum()


def reduce(loss_dict: dict, reducer: object, reduction: str | None, embeddings: Tensor, labels: Tensor | None):
    """PML's reduction of a loss dictionary (one entry per sub-loss: "loss" and, with a regularizer,
    "embedding_reg_loss"): DoNothingReducer returns it; MultipleReducers reduces it whole; any other
    reducer reduces each entry (PML wraps it in MultipleReducers of copies) and the results are summed."""
    name = type(reducer).__name__
    if name in ("DoNothingReducer", "MultipleReducers"):
        return reducer(loss_dict, embeddings, labels)
    total = None
    for key, info in loss_dict.items():
        value = (reduce_one(info, reduction, embeddings) if reduction is not None
                 else reducer({key: info}, embeddings, labels))
        total = value if total is None else total + value
    return total
