"""Pure-PyTorch reference of the contrastive-loss family: the oracle.

It materializes the full similarity matrix and is written to be read, not to be fast. It serves three
roles: the test oracle for the fused kernels, the fallback when the extension cannot run, and the
"reference" provider that the benchmarks time in the same run.

Symbols used throughout: anchors ``A`` (M x D), candidates ``B`` (N x D), temperature ``tau``.
Rows are L2-normalized, ``a_i = x_i / max(||x_i||, eps)``, and ``s_ij = a_i . b_j / tau``.
For anchor i, the candidates it is compared with are all j, except j = i when ``exclude_self``;
with ``paired = P`` the first P candidates belong to one anchor each (candidate i to anchor i only)
and the rest to every anchor (a memory bank or queue of negatives).
Its positives are either one index ``positive_index[i]`` or every compared j with
``candidate_labels[j] == anchor_labels[i]``. Its loss is

    l_i = logsumexp_j s_ij - mean_{p in Pos(i)} s_ip,

and l_i = 0 (with the anchor marked invalid) when it has no positive. With ``symmetric`` the
transposed problem (candidates as anchors against the anchors) is appended: the result then has
M + N entries, anchors first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NORM_EPS = 1e-12


def compute_dtype(dtype: torch.dtype, upcast: bool = True) -> torch.dtype:
    """The precision the reference computes in: float64 stays float64, others go to float32 when
    ``upcast`` (the default), else stay as they are (the "reference in the same precision" of tests)."""
    if dtype == torch.float64 or not upcast:
        return dtype
    return torch.float32


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Rows divided by max(L2 norm, 1e-12), as ``torch.nn.functional.normalize``."""
    return F.normalize(x, dim=1, eps=NORM_EPS)


def _one_direction(
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: float,
    positive_index: torch.Tensor | None,
    anchor_labels: torch.Tensor | None,
    candidate_labels: torch.Tensor | None,
    exclude_self: bool,
    paired: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-anchor losses (M,) and validity (M,) of normalized anchors ``a`` against candidates ``b``."""
    logits = a @ b.T / temperature  # (M, N)
    compared = torch.ones_like(logits, dtype=torch.bool)
    eye = torch.eye(*logits.shape, dtype=torch.bool, device=logits.device)
    if exclude_self:
        compared &= ~eye
    if paired:
        compared[:, :paired] = eye[:, :paired]
    if positive_index is not None:
        positive = F.one_hot(positive_index, logits.shape[1]).bool() & compared
    else:
        positive = (anchor_labels[:, None] == candidate_labels[None, :]) & compared
    lse = torch.logsumexp(logits.masked_fill(~compared, float("-inf")), dim=1)
    count = positive.sum(dim=1)
    positive_mean = logits.masked_fill(~positive, 0).sum(dim=1) / count.clamp_min(1)
    valid = count > 0
    loss = torch.where(valid, lse - positive_mean, torch.zeros_like(lse))
    return loss, valid


def inverse_permutation(index: torch.Tensor) -> torch.Tensor:
    """The inverse of a permutation given as an index tensor."""
    inverse = torch.empty_like(index)
    inverse[index] = torch.arange(index.numel(), device=index.device, dtype=index.dtype)
    return inverse


def info_nce_rows(
    anchors: torch.Tensor,
    candidates: torch.Tensor | None,
    temperature: float,
    *,
    positive_index: torch.Tensor | None = None,
    anchor_labels: torch.Tensor | None = None,
    candidate_labels: torch.Tensor | None = None,
    exclude_self: bool = False,
    symmetric: bool = False,
    upcast: bool = True,
    paired: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-anchor losses and their validity, materializing the similarity matrix.

    Args:
        anchors: (M, D) raw (unnormalized) anchor features.
        candidates: (N, D) raw candidate features, or None: the anchors are their own candidates.
        temperature: tau > 0.
        positive_index: (M,) int64, the candidate index of each anchor's positive; or None.
        anchor_labels, candidate_labels: (M,), (N,) int64 labels; used when positive_index is None.
        exclude_self: drop candidate i from anchor i's comparisons (needs M == N).
        paired: candidates [0, paired) are compared with their own anchor only (one direction).
        symmetric: append the transposed problem; with positive_index it must be a permutation.
        upcast: compute in float32 (float64 stays float64); False computes in the input dtype.

    Returns:
        (loss, valid): loss (T,) in the compute dtype, valid (T,) bool, T = M (+ N if symmetric).
        Invalid anchors (no positive) have loss 0.
    """
    dtype = compute_dtype(anchors.dtype, upcast)
    a = normalize(anchors.to(dtype))
    b = a if candidates is None else normalize(candidates.to(dtype))
    if candidate_labels is None:
        candidate_labels = anchor_labels
    loss, valid = _one_direction(
        a, b, temperature, positive_index, anchor_labels, candidate_labels, exclude_self, paired
    )
    if not symmetric:
        return loss, valid
    reverse_index = None if positive_index is None else inverse_permutation(positive_index)
    loss_t, valid_t = _one_direction(
        b, a, temperature, reverse_index, candidate_labels, anchor_labels, exclude_self
    )
    return torch.cat([loss, loss_t]), torch.cat([valid, valid_t])


def reduce_rows(
    loss: torch.Tensor, valid: torch.Tensor, reduction: str, split: int | None = None
) -> torch.Tensor:
    """Reduce per-anchor losses: "mean" over valid anchors (each of the two directions averaged
    separately and summed when ``split`` marks where the transposed direction starts), "sum", or
    "none" (the vector itself)."""
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    parts = [(loss, valid)] if split is None else [(loss[:split], valid[:split]), (loss[split:], valid[split:])]
    total = loss.new_zeros(())
    for part_loss, part_valid in parts:
        total = total + (part_loss * part_valid).sum() / part_valid.sum().clamp_min(1)
    return total


def similarity(a: torch.Tensor, b: torch.Tensor | None, temperature: float, upcast: bool = True) -> torch.Tensor:
    """The cosine-similarity matrix norm(a) norm(b)^T / tau, (M, N), in the compute dtype."""
    dtype = compute_dtype(a.dtype, upcast)
    an = normalize(a.to(dtype))
    bn = an if b is None else normalize(b.to(dtype))
    return an @ bn.T / temperature
