"""Torch ops over the fused kernels of ``coun_fast._C``.

One loss call is one *problem*: anchors (M, D) against candidates (N, D) (or the anchors against
themselves), positives by a rule, optionally the transposed direction too (``symmetric``), and a
reduction. The statement of the problem, materialized, is ``coun_fast.ops.reference``.

``coun_fast::contrastive_forward`` returns ``(out, stats, saved)``: the loss (a scalar for "sum" and
"mean", else the T = M (+ N when symmetric) per-anchor losses), the per-anchor statistics the
backward needs (``stats[:T]`` log-sum-exp, ``stats[T:2T]`` positive counts, ``stats[2T:]`` the
anchors with a positive in each direction) and the tensor-core path's saved workspace (normalized
rows; empty on the other paths). ``coun_fast::contrastive_backward`` returns the gradients of both
inputs. Both have fake implementations and the forward has a registered autograd formula, so they
trace under ``torch.compile`` and show up by name in compiled graphs.

In eager mode :func:`contrastive_loss` runs the same kernels through a plain
``torch.autograd.Function``: the custom-op machinery costs tens of microseconds of Python per
call, more than the kernels of a small batch. Both routes run the same two functions,
:func:`forward_impl` and :func:`backward_impl`, and give bit-identical results.

The kernels' backward is not differentiable. Under ``create_graph=True`` (a gradient penalty, a
Hessian-vector product) both routes still return the kernels' first-order gradient, bit for bit, and
attach to it the graph of the same gradient computed by the reference (:func:`reference_loss`, which
materializes the M x N similarity matrix), so that autograd differentiates it again exactly
(:func:`_differentiable`). Under ``torch.compile`` the backward is traced without a graph (and
torch refuses a double backward through a compiled function).

Nothing here validates arguments: ``coun_fast.functional`` does. Every route is capturable in a
CUDA graph (no host synchronization, no host-side values read from the device), except the
reference's graph under ``create_graph=True``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from coun_fast import _ext
from coun_fast.ops import reference

_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
SUPPORTED_DTYPES = tuple(_DTYPE_CODES)
SUPPORTED_DEVICES = ("cpu", "cuda")

# Positive rules and reductions, as the kernels number them (csrc/include/coun_fast/math.h).
RULE_INDEX, RULE_LABELS, RULE_DIAGONAL, RULE_PARTNER = 0, 1, 2, 3
REDUCTIONS = {"none": 0, "sum": 1, "mean": 2}
_REDUCTION_NAMES = {code: name for name, code in REDUCTIONS.items()}
# CUDA paths (csrc/include/coun_fast/contrastive.h): exact float32 SIMT, or tensor cores.
PATH_EXACT, PATH_TENSOR_CORES, PATH_TENSOR_CORES_OCCUPANCY = 0, 1, 2

_EMPTY_BYTES = (0, 0, 0)


def _matrix(x: Tensor) -> tuple:
    """The (pointer, rows, dim, row stride, col stride, dtype code) tuple _C takes for a matrix."""
    return (x.data_ptr(), x.shape[0], x.shape[1], x.stride(0), x.stride(1), _DTYPE_CODES[x.dtype])


def _pointer(x: Optional[Tensor]) -> int:
    return 0 if x is None else x.data_ptr()


def _problem(anchors: Tensor, candidates: Optional[Tensor], temperature: float, rule: int,
             positive_index: Optional[Tensor], anchor_labels: Optional[Tensor],
             candidate_labels: Optional[Tensor], exclude_self: bool, paired: int, symmetric: bool,
             reduction: int) -> tuple:
    """The problem tuple _C takes (see csrc/bindings.cpp)."""
    labels_b = anchor_labels if candidate_labels is None else candidate_labels
    return (_matrix(anchors), None if candidates is None else _matrix(candidates), temperature, rule,
            _pointer(positive_index), _pointer(anchor_labels), _pointer(labels_b), exclude_self, paired, symmetric,
            reduction)


def _raw_stream(device: torch.device) -> int:
    """The current CUDA stream of ``device`` as an integer handle (without building a Stream object)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    get_raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    return get_raw(index) if get_raw is not None else torch.cuda.current_stream(index).cuda_stream


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _workspace_bytes(problem: tuple, device: torch.device, path: int) -> tuple[int, int, int]:
    """(saved, forward scratch, backward scratch) bytes of a call on ``device``."""
    if device.type != "cuda":
        return _EMPTY_BYTES
    return _ext.C.workspace(problem, path, _device_index(device))


def _bytes(count: int, device: torch.device) -> Tensor:
    return torch.empty(count, dtype=torch.uint8, device=device)


def _target(device: torch.device, path: int, saved: Optional[Tensor], scratch: Optional[Tensor]) -> tuple:
    """The _C target tuple of a call on ``device``."""
    if device.type == "cpu":
        return (-1, 0, 0, 0, 0, torch.get_num_threads())
    return (_device_index(device), _raw_stream(device), path, _pointer(saved), _pointer(scratch), 0)


def _output_shape(anchors: Tensor, candidates: Optional[Tensor], symmetric: bool, reduction: int) -> tuple:
    total = anchors.shape[0] + (candidates.shape[0] if symmetric else 0)
    return (total,) if reduction == REDUCTIONS["none"] else ()


def _total_rows(anchors: Tensor, candidates: Optional[Tensor], symmetric: bool) -> int:
    return anchors.shape[0] + (candidates.shape[0] if symmetric else 0)


def forward_impl(anchors: Tensor, candidates: Optional[Tensor], temperature: float, rule: int,
                 positive_index: Optional[Tensor], anchor_labels: Optional[Tensor],
                 candidate_labels: Optional[Tensor], exclude_self: bool, paired: int, symmetric: bool, reduction: int,
                 path: int, problem: Optional[tuple] = None) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """Run the forward kernels: ``(out, stats, saved)`` (``saved`` None when the path keeps nothing).
    ``problem``: the _C problem tuple of these arguments, when the caller has built it already."""
    device = anchors.device
    if problem is None:
        problem = _problem(anchors, candidates, temperature, rule, positive_index, anchor_labels, candidate_labels,
                           exclude_self, paired, symmetric, reduction)
    total = _total_rows(anchors, candidates, symmetric)
    out = torch.empty(_output_shape(anchors, candidates, symmetric, reduction), dtype=torch.float32, device=device)
    stats = torch.empty(2 * total + 2, dtype=torch.float32, device=device)
    saved_bytes, scratch_bytes, _ = _workspace_bytes(problem, device, path)
    saved = _bytes(saved_bytes, device) if saved_bytes else None
    scratch = _bytes(scratch_bytes, device) if scratch_bytes else None
    _ext.C.forward(problem, out.data_ptr(), stats.data_ptr(), _target(device, path, saved, scratch))
    return out, stats, saved


def backward_impl(grad_out: Tensor, anchors: Tensor, candidates: Optional[Tensor], temperature: float, rule: int,
                  positive_index: Optional[Tensor], anchor_labels: Optional[Tensor],
                  candidate_labels: Optional[Tensor], exclude_self: bool, paired: int, symmetric: bool,
                  reduction: int, path: int,
                  stats: Tensor, saved: Optional[Tensor], problem: Optional[tuple] = None
                  ) -> tuple[Tensor, Optional[Tensor]]:
    """Run the backward kernels: the gradients of the anchors and of the candidates (None when the
    anchors are their own candidates), each in its input's dtype. ``problem`` as in forward_impl."""
    device = anchors.device
    if problem is None:
        problem = _problem(anchors, candidates, temperature, rule, positive_index, anchor_labels, candidate_labels,
                           exclude_self, paired, symmetric, reduction)
    if grad_out.dtype != torch.float32 or not grad_out.is_contiguous():
        grad_out = grad_out.to(torch.float32).contiguous()
    grad_anchors = torch.empty(anchors.shape, dtype=anchors.dtype, device=device)
    grad_candidates = None
    if candidates is not None:
        grad_candidates = torch.empty(candidates.shape, dtype=candidates.dtype, device=device)
    _, _, scratch_bytes = _workspace_bytes(problem, device, path)
    scratch = _bytes(scratch_bytes, device) if scratch_bytes else None
    _ext.C.backward(problem, grad_out.data_ptr(), stats.data_ptr(), grad_anchors.data_ptr(),
                    _pointer(grad_candidates), _target(device, path, saved, scratch))
    return grad_anchors, grad_candidates


def rule_positives(rule: int, positive_index: Optional[Tensor], m: int, device: torch.device) -> Optional[Tensor]:
    """The positive index the reference takes for a rule: candidate i for the diagonal rule, row
    (i + m/2) mod m for the partner rule, ``positive_index`` itself otherwise (labels: None)."""
    if rule == RULE_DIAGONAL:
        return torch.arange(m, device=device)
    if rule == RULE_PARTNER:
        return torch.arange(m, device=device).roll(m // 2)
    return positive_index


def reference_loss(anchors: Tensor, candidates: Optional[Tensor], temperature: float, rule: int,
                   positive_index: Optional[Tensor], anchor_labels: Optional[Tensor],
                   candidate_labels: Optional[Tensor], exclude_self: bool, paired: int, symmetric: bool,
                   reduction: int) -> Tensor:
    """The ``out`` of :func:`contrastive_forward` on the same arguments, computed by the pure-PyTorch
    reference (materializing the similarity matrix): differentiable to any order, float32 (float64
    for float64 inputs)."""
    m = anchors.shape[0]
    loss, valid = reference.info_nce_rows(
        anchors, candidates, temperature, positive_index=rule_positives(rule, positive_index, m, anchors.device),
        anchor_labels=anchor_labels, candidate_labels=candidate_labels, exclude_self=exclude_self,
        symmetric=symmetric, paired=paired)
    return reference.reduce_rows(loss, valid, _REDUCTION_NAMES[reduction], split=m if symmetric else None)


def _differentiable(grad_out: Tensor, gradients: tuple[Tensor, Optional[Tensor]], needed: tuple[bool, bool],
                    anchors: Tensor, candidates: Optional[Tensor], temperature: float, rule: int,
                    positive_index: Optional[Tensor], anchor_labels: Optional[Tensor],
                    candidate_labels: Optional[Tensor], exclude_self: bool, paired: int, symmetric: bool,
                    reduction: int) -> tuple[Tensor, Optional[Tensor]]:
    """The kernels' ``gradients`` of the anchors and the candidates, as tensors that autograd can
    differentiate again (the backward under ``create_graph=True``): each value is the kernels' own,
    bit for bit, and its graph is that of the reference's gradient ``d <grad_out, reference_loss> /
    d input``, which equals it up to rounding; so the second-order derivatives (with respect to the
    inputs and to ``grad_out``) are the reference's, exact. ``needed``: which of the two gradients
    autograd asked for (the others are returned as they are); the rest: the problem's arguments."""
    with torch.enable_grad():
        # Each role gets its own view, so that its gradient is that of its own uses only, as the
        # kernels' is, also where the candidates are the anchors' tensor or computed from it.
        roles = [None if x is None else x.view_as(x) for x in (anchors, candidates)]
        loss = reference_loss(*roles, temperature, rule, positive_index, anchor_labels, candidate_labels,
                              exclude_self, paired, symmetric, reduction)
        wanted = [x for x, need in zip(roles, needed) if need and x is not None]
        graphs = iter(torch.autograd.grad(loss, wanted, grad_out, create_graph=True, allow_unused=True))
    result = []
    for value, x, need in zip(gradients, roles, needed):
        graph = next(graphs) if need and x is not None else None
        # graph - graph.detach() is exactly 0: the value stays the kernels', the graph the reference's.
        result.append(value if graph is None else value.detach() + (graph - graph.detach()))
    return result[0], result[1]


# ---------------------------------------------------------------------------------------------
# Eager route: a plain autograd.Function


class _ContrastiveLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, anchors, candidates, temperature, rule, positive_index, anchor_labels, candidate_labels,
                exclude_self, paired, symmetric, reduction, path):
        problem = _problem(anchors, candidates, temperature, rule, positive_index, anchor_labels, candidate_labels,
                           exclude_self, paired, symmetric, reduction)
        out, stats, saved = forward_impl(anchors, candidates, temperature, rule, positive_index, anchor_labels,
                                         candidate_labels, exclude_self, paired, symmetric, reduction, path, problem)
        # The saved tensors keep the inputs (and so the problem's pointers) alive for the backward.
        ctx.save_for_backward(anchors, candidates, positive_index, anchor_labels, candidate_labels, stats, saved)
        ctx.options = (temperature, rule, exclude_self, paired, symmetric, reduction, path, problem)
        ctx.mark_non_differentiable(stats)
        ctx.set_materialize_grads(False)  # no zero-filled gradient for the statistics on every backward
        return out, stats

    @staticmethod
    def backward(ctx, grad_out, _grad_stats):
        if grad_out is None:  # only the statistics were used: nothing reaches the features
            return (None,) * 12
        anchors, candidates, positive_index, anchor_labels, candidate_labels, stats, saved = ctx.saved_tensors
        temperature, rule, exclude_self, paired, symmetric, reduction, path, problem = ctx.options
        grad_anchors, grad_candidates = backward_impl(
            grad_out, anchors, candidates, temperature, rule, positive_index, anchor_labels, candidate_labels,
            exclude_self, paired, symmetric, reduction, path, stats, saved, problem)
        if torch.is_grad_enabled():  # create_graph=True: a gradient autograd can differentiate again
            grad_anchors, grad_candidates = _differentiable(
                grad_out, (grad_anchors, grad_candidates), ctx.needs_input_grad[:2], anchors, candidates,
                temperature, rule, positive_index, anchor_labels, candidate_labels, exclude_self, paired, symmetric,
                reduction)
        return grad_anchors, grad_candidates, None, None, None, None, None, None, None, None, None, None


def contrastive_loss(anchors: Tensor, candidates: Optional[Tensor], temperature: float, rule: int,
                     positive_index: Optional[Tensor], anchor_labels: Optional[Tensor],
                     candidate_labels: Optional[Tensor], exclude_self: bool, paired: int, symmetric: bool,
                     reduction: int, path: int, with_stats: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """The loss on the fused kernels, differentiable in ``anchors`` and ``candidates``: the custom op
    while ``torch.compile`` traces, the lean autograd.Function in eager mode. ``with_stats``: also
    return the statistics (``[lse T][positive count T][anchors with a positive, per direction 2]``,
    not differentiable)."""
    args = (anchors, candidates, temperature, rule, positive_index, anchor_labels, candidate_labels, exclude_self,
            paired, symmetric, reduction, path)
    if torch.compiler.is_compiling():
        out, stats, _ = contrastive_forward(*args)
    else:
        out, stats = _ContrastiveLoss.apply(*args)
    return (out, stats) if with_stats else out


# ---------------------------------------------------------------------------------------------
# Custom-op route (torch.compile)


@torch.library.custom_op("coun_fast::contrastive_forward", mutates_args=())
def contrastive_forward(
    anchors: Tensor,
    candidates: Optional[Tensor],
    temperature: float,
    rule: int,
    positive_index: Optional[Tensor],
    anchor_labels: Optional[Tensor],
    candidate_labels: Optional[Tensor],
    exclude_self: bool,
    paired: int,
    symmetric: bool,
    reduction: int,
    path: int,
) -> tuple[Tensor, Tensor, Tensor]:
    out, stats, saved = forward_impl(anchors, candidates, temperature, rule, positive_index, anchor_labels,
                                     candidate_labels, exclude_self, paired, symmetric, reduction, path)
    return out, stats, _bytes(0, anchors.device) if saved is None else saved


@contrastive_forward.register_fake
def _(anchors, candidates, temperature, rule, positive_index, anchor_labels, candidate_labels, exclude_self,
      paired, symmetric, reduction, path):
    total = _total_rows(anchors, candidates, symmetric)
    out = anchors.new_empty(_output_shape(anchors, candidates, symmetric, reduction), dtype=torch.float32)
    stats = anchors.new_empty(2 * total + 2, dtype=torch.float32)
    saved_bytes = 0
    if anchors.device.type == "cuda":
        shape = _problem_shape(anchors, candidates, rule, exclude_self, paired, symmetric, reduction)
        saved_bytes = _ext.C.workspace(shape, path, _device_index(anchors.device))[0]
    return out, stats, anchors.new_empty(saved_bytes, dtype=torch.uint8)


def _problem_shape(anchors: Tensor, candidates: Optional[Tensor], rule: int, exclude_self: bool, paired: int,
                   symmetric: bool, reduction: int) -> tuple:
    """A problem tuple with placeholder pointers: enough for the workspace sizes, which depend on the
    shapes and dtypes alone (used where the tensors have no data, under fake tensors)."""
    def shaped(x: Tensor) -> tuple:
        return (1, x.shape[0], x.shape[1], x.shape[1], 1, _DTYPE_CODES[x.dtype])

    placeholder = 1
    return (shaped(anchors), None if candidates is None else shaped(candidates), 1.0, rule, placeholder,
            placeholder, placeholder, exclude_self, paired, symmetric, reduction)


@torch.library.custom_op("coun_fast::contrastive_backward", mutates_args=())
def contrastive_backward(
    grad_out: Tensor,
    anchors: Tensor,
    candidates: Optional[Tensor],
    temperature: float,
    rule: int,
    positive_index: Optional[Tensor],
    anchor_labels: Optional[Tensor],
    candidate_labels: Optional[Tensor],
    exclude_self: bool,
    paired: int,
    symmetric: bool,
    reduction: int,
    path: int,
    stats: Tensor,
    saved: Tensor,
) -> tuple[Tensor, Tensor]:
    """Gradients of ``sum(grad_out * out)`` with respect to the anchors and the candidates (an empty
    tensor for the candidates when they are the anchors)."""
    grad_anchors, grad_candidates = backward_impl(
        grad_out, anchors, candidates, temperature, rule, positive_index, anchor_labels, candidate_labels,
        exclude_self, paired, symmetric, reduction, path, stats, saved if saved.numel() else None)
    return grad_anchors, anchors.new_empty(0) if grad_candidates is None else grad_candidates


@contrastive_backward.register_fake
def _(grad_out, anchors, candidates, temperature, rule, positive_index, anchor_labels, candidate_labels,
      exclude_self, paired, symmetric, reduction, path, stats, saved):
    grad_candidates = anchors.new_empty(0) if candidates is None else torch.empty_like(candidates)
    return torch.empty_like(anchors), grad_candidates


_FORWARD_ARGS = ("anchors", "candidates", "temperature", "rule", "positive_index", "anchor_labels",
                 "candidate_labels", "exclude_self", "paired", "symmetric", "reduction", "path")


def _setup_context(ctx, inputs, output) -> None:
    arguments = dict(zip(_FORWARD_ARGS, inputs))
    tensors = {name: value for name, value in arguments.items() if isinstance(value, Tensor)}
    ctx.arguments = {name: value for name, value in arguments.items() if name not in tensors}
    ctx.tensor_names = list(tensors)
    _, stats, saved = output
    ctx.save_for_backward(*tensors.values(), stats, saved)


def _backward(ctx, grad_out, _grad_stats, _grad_saved):
    *inputs, stats, saved = ctx.saved_tensors
    arguments = dict(ctx.arguments, **dict(zip(ctx.tensor_names, inputs)))
    grad_anchors, grad_candidates = contrastive_backward(grad_out, **arguments, stats=stats, saved=saved)
    if arguments["candidates"] is None:
        grad_candidates = None
    if torch.is_grad_enabled():  # create_graph=True (never while torch.compile traces the backward)
        arguments.pop("path")
        grad_anchors, grad_candidates = _differentiable(
            grad_out, (grad_anchors, grad_candidates), ctx.needs_input_grad[:2], **arguments)
    return grad_anchors, grad_candidates, None, None, None, None, None, None, None, None, None, None


contrastive_forward.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------
# The similarity matrix


@torch.library.custom_op("coun_fast::similarity", mutates_args=())
def similarity(a: Tensor, b: Optional[Tensor], temperature: float) -> Tensor:
    b_ = a if b is None else b
    out = torch.empty(a.shape[0], b_.shape[0], dtype=torch.float32, device=a.device)
    scratch = _bytes(4 * (a.shape[0] + b_.shape[0]), a.device) if a.device.type == "cuda" else None
    _ext.C.similarity(_matrix(a), _matrix(b_), temperature, out.data_ptr(),
                      _target(a.device, PATH_EXACT, None, scratch))
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
    _, vjp = torch.func.vjp(reference.normalize, x32)
    return vjp(grad_unit)[0].to(x.dtype)


def _similarity_backward(ctx, grad_out):
    # The gradient is two matrix products: done with torch ops, not a kernel (so it is differentiable).
    a, b = ctx.saved_tensors
    a_unit = reference.normalize(a.to(torch.float32))
    b_unit = reference.normalize(b.to(torch.float32))
    grad_out = grad_out.to(torch.float32) / ctx.temperature
    grad_a = _normalize_backward(a, grad_out @ b_unit)
    grad_b = _normalize_backward(b, grad_out.T @ a_unit)
    if ctx.self_similarity:
        return grad_a + grad_b, None, None
    return grad_a, grad_b, None


similarity.register_autograd(_similarity_backward, setup_context=_similarity_setup)
