"""Which implementation runs a call: decided here, in one place.

``"fused"`` runs the kernels of ``coun_fast._C`` (CPU or CUDA), ``"reference"`` the pure-PyTorch
oracle in ``coun_fast.ops.reference``, and ``"auto"`` the fused kernels whenever they support the
call, else the reference. Asking for ``"fused"`` where it cannot run raises an error that lists
every reason.
"""

from __future__ import annotations

import torch
from torch import Tensor

from coun_fast import _ext
from coun_fast.ops.contrastive import SUPPORTED_DEVICES, SUPPORTED_DTYPES

BACKENDS = ("auto", "fused", "reference")
MAX_DIM = 2048  # the kernels' kMaxDim (csrc/include/coun_fast/contrastive.h); _C checks it too


def installation_reasons(device: torch.device) -> list[str]:
    """Why this installation cannot run fused kernels on ``device``; empty when it can."""
    if _ext.C is None:
        return [f"the extension coun_fast._C is not loaded ({_ext.LOAD_ERROR})"]
    if device.type == "cuda" and not _ext.CUDA_COMPILED:
        return ["the extension was built without CUDA kernels (no nvcc at build time, or COUN_FAST_CUDA=0)"]
    return []


def input_reasons(*tensors: Tensor) -> list[str]:
    """Why the fused kernels do not support these feature tensors; empty when they do."""
    reasons = []
    device = tensors[0].device
    if device.type not in SUPPORTED_DEVICES:
        reasons.append(f"device {device.type!r} is not supported (supported: {', '.join(SUPPORTED_DEVICES)})")
    for tensor in tensors:
        if tensor.dtype not in SUPPORTED_DTYPES:
            names = ", ".join(str(d).removeprefix("torch.") for d in SUPPORTED_DTYPES)
            reasons.append(f"dtype {str(tensor.dtype).removeprefix('torch.')} is not supported (supported: {names})")
            break
    dim = tensors[0].shape[-1]
    if dim > MAX_DIM:
        reasons.append(f"feature dimension {dim} is above the fused kernels' maximum of {MAX_DIM}")
    return reasons


def resolve(backend: str, *tensors: Tensor) -> str:
    """``"fused"`` or ``"reference"`` for a call on ``tensors`` with the requested ``backend``.

    Raises:
        ValueError: ``backend`` is not one of "auto", "fused", "reference".
        ValueError: ``backend="fused"`` and the inputs are outside what the kernels support.
        RuntimeError: ``backend="fused"`` and this installation cannot run fused kernels.
        Either message lists every reason.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}; got {backend!r}")
    if backend == "reference":
        return "reference"
    installation, inputs = installation_reasons(tensors[0].device), input_reasons(*tensors)
    if not installation and not inputs:
        return "fused"
    if backend == "fused":
        error = RuntimeError if installation else ValueError
        raise error("backend='fused' cannot run this call: " + "; ".join(installation + inputs))
    return "reference"

