"""Torch custom ops over the fused kernels of ``coun_fast._C``.

``coun_fast::contrastive_forward`` returns per-anchor loss, log-sum-exp and positive count (each
float32, length T = M, or M + N when ``symmetric``); ``coun_fast::contrastive_backward`` returns the
gradients of both inputs. Both have fake implementations and the forward has a registered autograd
formula, so they trace under ``torch.compile`` and CUDA graphs and show up by name in profiles.
``coun_fast::similarity`` materializes norm(a) norm(b)^T / tau.

These ops trust their arguments: they are validated by ``coun_fast.functional``. The problem they
solve is stated in ``coun_fast.ops.reference`` (the same semantics, materialized).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from coun_fast import _ext
from coun_fast.ops.reference import inverse_permutation, normalize

_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
SUPPORTED_DTYPES = tuple(_DTYPE_CODES)
SUPPORTED_DEVICES = ("cpu", "cuda")


def _matrix(x: Tensor) -> tuple:
    """The (pointer, rows, dim, row stride, col stride, dtype code) tuple _C takes for a matrix."""
    return (x.data_ptr(), x.shape[0], x.shape[1], x.stride(0), x.stride(1), _DTYPE_CODES[x.dtype])


def _pointer(x: Optional[Tensor]) -> int:
    return 0 if x is None else x.data_ptr()


def _target(like: Tensor, rows: int, cols: int) -> tuple:
    """The _C.Target of a call on ``like``'s device, and the workspace tensor it points into
    (returned so it stays alive until the call returns)."""
    if like.device.type == "cpu":
        return _ext.C.Target(-1, 0, 0, torch.get_num_threads()), None
    floats = _ext.C.cuda_workspace_floats(rows, cols, like.shape[1])
    workspace = torch.empty(floats, dtype=torch.float32, device=like.device)
    stream = torch.cuda.current_stream(like.device).cuda_stream
    return _ext.C.Target(like.device.index, stream, workspace.data_ptr(), 0), workspace


class _Problem:
    """The directions of one loss call: which matrix plays anchors and which candidates, and the
    positives of each direction, in the form _C takes."""

    def __init__(
        self,
        anchors: Tensor,
        candidates: Optional[Tensor],
        positive_index: Optional[Tensor],
        anchor_labels: Optional[Tensor],
        candidate_labels: Optional[Tensor],
        symmetric: bool,
    ) -> None:
        self.anchors = anchors
        self.candidates = anchors if candidates is None else candidates
        self.is_self = candidates is None
        self.symmetric = symmetric
        if candidate_labels is None:
            candidate_labels = anchor_labels
        self.positives = (_pointer(positive_index), _pointer(anchor_labels), _pointer(candidate_labels))
        self.reverse_index = None
        if symmetric:
            if positive_index is not None:
                self.reverse_index = inverse_permutation(positive_index)
            self.reverse_positives = (
                _pointer(self.reverse_index),
                _pointer(candidate_labels),
                _pointer(anchor_labels),
            )

    @property
    def num_anchors(self) -> int:
        return self.anchors.shape[0]


@torch.library.custom_op("coun_fast::contrastive_forward", mutates_args=())
def contrastive_forward(
    anchors: Tensor,
    candidates: Optional[Tensor],
    temperature: float,
    positive_index: Optional[Tensor],
    anchor_labels: Optional[Tensor],
    candidate_labels: Optional[Tensor],
    exclude_self: bool,
    symmetric: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    problem = _Problem(anchors, candidates, positive_index, anchor_labels, candidate_labels, symmetric)
    m, n = problem.anchors.shape[0], problem.candidates.shape[0]
    total = m + n if symmetric else m
    loss, lse, count = (torch.empty(total, dtype=torch.float32, device=anchors.device) for _ in range(3))
    target, _workspace = _target(anchors, m, n)
    A, B = _matrix(problem.anchors), _matrix(problem.candidates)
    _ext.C.forward(A, B, temperature, problem.positives, exclude_self,
                   loss.data_ptr(), lse.data_ptr(), count.data_ptr(), target)
    if symmetric:
        _ext.C.forward(B, A, temperature, problem.reverse_positives, exclude_self,
                       loss[m:].data_ptr(), lse[m:].data_ptr(), count[m:].data_ptr(), target)
    return loss, lse, count


@contrastive_forward.register_fake
def _(anchors, candidates, temperature, positive_index, anchor_labels, candidate_labels, exclude_self, symmetric):
    total = anchors.shape[0] + (candidates.shape[0] if symmetric else 0)
    return tuple(anchors.new_empty(total, dtype=torch.float32) for _ in range(3))


@torch.library.custom_op("coun_fast::contrastive_backward", mutates_args=())
def contrastive_backward(
    grad_loss: Tensor,
    anchors: Tensor,
    candidates: Optional[Tensor],
    temperature: float,
    positive_index: Optional[Tensor],
    anchor_labels: Optional[Tensor],
    candidate_labels: Optional[Tensor],
    exclude_self: bool,
    symmetric: bool,
    lse: Tensor,
    count: Tensor,
) -> tuple[Tensor, Tensor]:
    """Gradients of sum_i grad_loss[i] * loss[i] with respect to the anchors and the candidates
    (an empty tensor for the candidates when they are the anchors)."""
    problem = _Problem(anchors, candidates, positive_index, anchor_labels, candidate_labels, symmetric)
    m, n = problem.anchors.shape[0], problem.candidates.shape[0]
    grad_loss = grad_loss.to(torch.float32).contiguous()
    lse, count = lse.contiguous(), count.contiguous()

    def direction(positives: tuple, start: int) -> tuple:
        return (positives, lse[start:].data_ptr(), count[start:].data_ptr(), grad_loss[start:].data_ptr())

    forward_direction = direction(problem.positives, 0)
    reverse_direction = direction(problem.reverse_positives, m) if symmetric else None
    A, B = _matrix(problem.anchors), _matrix(problem.candidates)
    grad_anchors = torch.empty(anchors.shape, dtype=anchors.dtype, device=anchors.device)
    target, _workspace = _target(anchors, max(m, n), max(m, n))
    if problem.is_self:
        _ext.C.backward(A, A, temperature, exclude_self, forward_direction, forward_direction,
                        grad_anchors.data_ptr(), target)
        return grad_anchors, anchors.new_empty(0)
    grad_candidates = torch.empty(candidates.shape, dtype=candidates.dtype, device=candidates.device)
    _ext.C.backward(A, B, temperature, exclude_self, forward_direction, reverse_direction,
                    grad_anchors.data_ptr(), target)
    _ext.C.backward(B, A, temperature, exclude_self, reverse_direction, forward_direction,
                    grad_candidates.data_ptr(), target)
    return grad_anchors, grad_candidates


@contrastive_backward.register_fake
def _(grad_loss, anchors, candidates, temperature, positive_index, anchor_labels, candidate_labels,
      exclude_self, symmetric, lse, count):
    grad_candidates = anchors.new_empty(0) if candidates is None else torch.empty_like(candidates)
    return torch.empty_like(anchors), grad_candidates


_FORWARD_ARGS = ("anchors", "candidates", "temperature", "positive_index", "anchor_labels",
                 "candidate_labels", "exclude_self", "symmetric")


def _setup_context(ctx, inputs, output) -> None:
    arguments = dict(zip(_FORWARD_ARGS, inputs))
    tensors = {name: value for name, value in arguments.items() if isinstance(value, Tensor)}
    ctx.arguments = {name: value for name, value in arguments.items() if name not in tensors}
    ctx.tensor_names = list(tensors)
    _, lse, count = output
    ctx.save_for_backward(*tensors.values(), lse, count)


def _backward(ctx, grad_loss, _grad_lse, _grad_count):
    *saved, lse, count = ctx.saved_tensors
    arguments = dict(ctx.arguments, **dict(zip(ctx.tensor_names, saved)))
    if grad_loss is None:
        grad_loss = torch.zeros_like(lse)
    grad_anchors, grad_candidates = contrastive_backward(grad_loss, **arguments, lse=lse, count=count)
    if arguments["candidates"] is None:
        grad_candidates = None
    return grad_anchors, grad_candidates, None, None, None, None, None, None


contrastive_forward.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("coun_fast::similarity", mutates_args=())
def similarity(a: Tensor, b: Optional[Tensor], temperature: float) -> Tensor:
    b_ = a if b is None else b
    out = torch.empty(a.shape[0], b_.shape[0], dtype=torch.float32, device=a.device)
    target, _workspace = _target(a, a.shape[0], b_.shape[0])
    _ext.C.similarity(_matrix(a), _matrix(b_), temperature, out.data_ptr(), target)
    return out


@similarity.register_fake
def _(a, b, temperature):
    return a.new_empty(a.shape[0], (a if b is None else b).shape[0], dtype=torch.float32)


def _similarity_setup(ctx, inputs, output) -> None:
    a, b, temperature = inputs
    ctx.temperature = temperature
    ctx.self_similarity = b is None
    ctx.save_for_backward(a, a if b is None else b)


def _normalize_backward(x: Tensor, grad_unit: Tensor) -> Tensor:
    """Gradient through x / max(||x||, eps), given the gradient with respect to the unit rows."""
    x32 = x.to(torch.float32)
    _, vjp = torch.func.vjp(normalize, x32)
    return vjp(grad_unit)[0].to(x.dtype)


def _similarity_backward(ctx, grad_out):
    # The gradient is two matrix products: done with torch ops, not a kernel.
    a, b = ctx.saved_tensors
    a_unit = normalize(a.to(torch.float32))
    b_unit = normalize(b.to(torch.float32))
    grad_out = grad_out.to(torch.float32) / ctx.temperature
    grad_a = _normalize_backward(a, grad_out @ b_unit)
    grad_b = _normalize_backward(b, grad_out.T @ a_unit)
    if ctx.self_similarity:
        return grad_a + grad_b, None, None
    return grad_a, grad_b, None


similarity.register_autograd(_similarity_backward, setup_context=_similarity_setup)
