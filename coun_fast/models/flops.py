"""FLOPs of one forward pass of one image, the unit of the CoUn paper's compute cost
(PFLOPs = epochs x images x passes x forward FLOPs; docs/method.md, "Compute cost").

Counting rule: ``torch.utils.flop_counter.FlopCounterMode``, i.e. 2 FLOPs per multiply-add of the
matrix products (mm, addmm, bmm, baddbmm), convolutions and attention (``scaled_dot_product_attention``,
whose CPU kernel the counter misses and this module adds, with the same formula: 2 * B * heads * Lq *
Lk * (Dqk + Dv)). Not counted, as by most FLOP counters: biases, normalization, activations,
softmax, pooling, residual additions. They are small here, so they are left out: measured per
element (BN 2 FLOPs, ReLU and additions 1, LayerNorm ~7, GELU ~8, softmax ~5), about 0.2% of the
counted total for ResNet-18 at 32x32, 0.15% for VGG-16-BN and 0.4% for the small-data ViT.

Measured against the paper's per-image figures (reconstructed from its PFLOP tables):
ResNet-18 1.1108e9 vs 1.114e9 at 32x32 (-0.28%) and 4.4434e9 vs 4.456e9 at 64x64 (convolutions
scale exactly 4x); VGG-16-BN 0.6276e9 vs 0.634e9 (-1.0%, see :mod:`coun_fast.models.vgg`);
small-data ViT 2.138e9 vs 3.534e9 (see :mod:`coun_fast.models.vit`: the paper's ViT figures fit
2.144e9 with a 300-epoch Retrain).
"""

from __future__ import annotations

import json
import numbers
import threading

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

_CACHE: dict[tuple, int] = {}
_LOCK = threading.Lock()


def _attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """2 FLOPs per multiply-add of ``Q K^T`` and ``P V`` (shapes (B, H, L, D))."""
    *batch, lq, dqk = query
    lk, dv = key[-2], value[-1]
    b = 1
    for size in batch:
        b *= size
    return 2 * b * lq * lk * dqk + 2 * b * lq * lk * dv


def _extra_formulas() -> dict:
    """Flop formulas for ops the counter misses (the CPU attention kernel, where this torch has it)."""
    extra = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        extra[op] = _attention_flops
    return extra


def _check_input_shape(input_shape: object) -> tuple[int, ...]:
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, (tuple, list, torch.Size)) or not input_shape:
        raise ValueError(f"input_shape must be the shape of one image, e.g. (3, 32, 32); got {input_shape!r}")
    if not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1 for s in input_shape):
        raise ValueError(f"input_shape must hold positive ints, e.g. (3, 32, 32); got {input_shape!r}")
    return tuple(int(s) for s in input_shape)


def _architecture_key(model: nn.Module) -> str:
    """What identifies the architecture for the cache: ``build_args`` when the model has them,
    else every parameter's and buffer's name and shape."""
    args = getattr(model, "build_args", None)
    if isinstance(args, dict):
        return "build_args:" + json.dumps(args, sort_keys=True, default=repr)
    return "shapes:" + repr([(name, tuple(t.shape)) for name, t in model.state_dict().items()])


def _count(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    modes = [(m, m.training) for m in model.modules()]
    model.eval()  # no batch-norm statistics updated, no dropout; FLOPs are the same in either mode
    try:
        x = torch.zeros((1, *input_shape), device=device, dtype=dtype)
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_extra_formulas()) as counter:
            model(x)
    finally:
        for module, training in modes:
            module.training = training
    return int(counter.get_total_flops())


def forward_flops(model: nn.Module, input_shape: tuple[int, ...] = (3, 32, 32)) -> int:
    """FLOPs (multiply-add = 2) of ``model``'s forward pass on ONE image of shape ``input_shape``
    (channels, height, width), by the counting rule of the module docstring.

    Runs one forward pass of a zero image on the model's device, in eval mode, without gradients;
    every module's train/eval mode is restored afterwards and no state changes. Results are cached
    per (model class, architecture, input shape); the architecture is ``model.build_args`` when set,
    else the names and shapes of its tensors.

    Raises ValueError for an ``input_shape`` that is not a non-empty sequence of positive ints, and
    whatever the model raises for an input it does not accept.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    shape = _check_input_shape(input_shape)
    key = (type(model).__module__, type(model).__qualname__, _architecture_key(model), shape)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
    flops = _count(model, shape)
    with _LOCK:
        _CACHE[key] = flops
    return flops


def clear_flops_cache() -> None:
    """Forget every cached :func:`forward_flops` result."""
    with _LOCK:
        _CACHE.clear()
