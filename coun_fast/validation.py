"""Argument checks shared by the public API. Each error names the argument and what is accepted."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

REDUCTIONS = ("mean", "sum", "none")


def _values_unreadable(x: Tensor) -> bool:
    """Value checks read tensors on the host: skipped while compiling and for meta tensors."""
    return torch.compiler.is_compiling() or x.device.type == "meta"


def features(x: object, name: str, *, check_finite: bool = False) -> Tensor:
    """A non-empty (rows, dim) floating-point tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (rows, dim); got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype (float32, float16, bfloat16, float64); got {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (rows, dim); got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must have at least one row and one feature; got shape {tuple(x.shape)}")
    if check_finite and not _values_unreadable(x) and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf (check_finite=True)")
    return x


def views(z1: object, z2: object, names: tuple[str, str] = ("z1", "z2"), *, check_finite: bool = False) -> None:
    """Two views of one batch: feature tensors of the same shape (N, D) on one device."""
    features(z1, names[0], check_finite=check_finite)
    features(z2, names[1], check_finite=check_finite)
    if z1.shape != z2.shape:
        raise ValueError(f"{names[0]} and {names[1]} must have the same shape (N, D); got {tuple(z1.shape)} and "
                         f"{tuple(z2.shape)}")
    same_device(z1, names[0], z2, names[1])


def promoted(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """The mixed-dtype rule: two feature tensors in ``torch.promote_types`` of their dtypes (a copy of
    the one that changes; autograd returns its gradient in its own dtype)."""
    if a.dtype == b.dtype:
        return a, b
    dtype = torch.promote_types(a.dtype, b.dtype)
    return a.to(dtype), b.to(dtype)


def boolean(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False; got {value!r}")
    return value


def same_device(reference: Tensor, reference_name: str, other: Tensor, name: str) -> None:
    if other.device != reference.device:
        raise ValueError(f"{name} is on {other.device} but {reference_name} is on {reference.device}; put them on one device")


def same_dim(a: Tensor, a_name: str, b: Tensor, b_name: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{a_name} and {b_name} must have the same feature dimension; got {a.shape[1]} and {b.shape[1]}")


def temperature(value: object, name: str = "temperature") -> float:
    """A finite real number > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number > 0; got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and > 0; got {value}")
    return value


def reduction(value: object) -> str:
    if value not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}; got {value!r}")
    return value  # type: ignore[return-value]


def integer_vector(x: object, name: str, length: int, like: Tensor, like_name: str) -> Tensor:
    """A 1-D integer tensor of ``length`` on ``like``'s device, returned as contiguous int64."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a 1-D integer torch.Tensor; got {type(x).__name__}")
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name} must have an integer dtype (int64, int32, ...); got {x.dtype}")
    if x.dim() != 1 or x.shape[0] != length:
        raise ValueError(f"{name} must have shape ({length},), one entry per row of {like_name}; got {tuple(x.shape)}")
    same_device(like, like_name, x, name)
    return x.to(torch.int64).contiguous()


def index_in_range(index: Tensor, name: str, upper: int) -> None:
    """Every entry in [0, upper)."""
    if _values_unreadable(index) or index.numel() == 0:
        return
    low, high = int(index.min()), int(index.max())
    if low < 0 or high >= upper:
        raise ValueError(f"{name} entries must lie in [0, {upper}); got values from {low} to {high}")


def paired_candidates(value: object, m: int, n: int, self_problem: bool, exclude_self: bool, symmetric: bool) -> int:
    """The number of candidates paired with one anchor each: an int in [0, min(M, N)], and with
    separate candidates, one direction and no exclude_self when > 0."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"paired_candidates must be an int; got {type(value).__name__}")
    if value < 0 or value > min(m, n):
        raise ValueError(f"paired_candidates must lie in [0, min(M, N)] = [0, {min(m, n)}]; got {value}")
    if value and (self_problem or exclude_self or symmetric):
        raise ValueError("paired_candidates needs separate candidates, exclude_self=False and symmetric=False")
    return value


def no_self_positive(index: Tensor, name: str) -> None:
    """No anchor is its own positive (needed when exclude_self removes that candidate)."""
    if _values_unreadable(index):
        return
    own = index == torch.arange(index.numel(), device=index.device)
    if bool(own.any()):
        first = int(own.nonzero()[0, 0])
        raise ValueError(f"{name}[{first}] = {first} points at the anchor itself, which exclude_self removes")


def is_permutation(index: Tensor, name: str) -> None:
    if _values_unreadable(index):
        return
    if not torch.equal(torch.sort(index).values, torch.arange(index.numel(), device=index.device)):
        raise ValueError(f"{name} must be a permutation of 0..{index.numel() - 1} when symmetric=True")
