"""Which implementation runs a call: decided here, in one place.

``"fused"`` runs the kernels of ``coun_fast._C`` (CPU or CUDA), ``"reference"`` the pure-PyTorch
oracle in ``coun_fast.ops.reference``, and ``"auto"`` the fused kernels whenever they support the
call, else the reference. Asking for ``"fused"`` where it cannot run raises an error that lists
every reason.

On a GPU the fused kernels have two paths (:func:`cuda_path`):

* tensor cores (the default on sm_80 and newer): bfloat16 and float16 inputs run on tensor cores
  (the inputs themselves as operands, scaled by powers of two; float32 normalization, accumulation
  and softmax); float32 inputs run on TF32
  tensor cores only where ``torch.backends.cuda.matmul.allow_tf32`` is True (PyTorch's own switch
  for TF32 matrix products), and on the exact path otherwise;
* exact: float32 SIMT arithmetic for every input dtype, the path of older GPUs, of float32 inputs
  without TF32, and of every call where tensor cores are switched off (``COUN_FAST_TENSOR_CORES=0``
  in the environment, or ``with tensor_cores(False):``).

Both paths passed the CUDA tests (float64 and same-precision oracles, bit-identical reruns, CUDA
graph capture) and compute-sanitizer's memcheck on an H200; the tensor-core path is 10x (D=128)
and 6x (D=512) faster than the exact one for bfloat16 NT-Xent at 2N=32768 and 22x at CoUn's
256 x 512 (benchmarks/results/losses_cuda_20261126T170954Z.json).

The tensor-core path also has an *occupancy variant*, opt-in (``COUN_FAST_TENSOR_CORES=occupancy``
or ``with tensor_cores("occupancy"):``): the same arithmetic, bit for bit (checked in the CPU
emulation of the CUDA kernels), with the forward and the backward compiled for three thread blocks
per multiprocessor instead of two, the backward's per-column terms staged in shared memory and the
last kernel's loads issued together. It has not yet run on a GPU; it becomes the default only if a
GPU run shows it correct and faster.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch
from torch import Tensor

from coun_fast import _ext
from coun_fast.ops.contrastive import (PATH_EXACT, PATH_TENSOR_CORES, PATH_TENSOR_CORES_OCCUPANCY, SUPPORTED_DEVICES,
                                       SUPPORTED_DTYPES)

BACKENDS = ("auto", "fused", "reference")
MAX_DIM = 2048  # the kernels' kMaxDim (csrc/include/coun_fast/contrastive.h); _C checks it too
TENSOR_CORES_ENV = "COUN_FAST_TENSOR_CORES"
_LOW_PRECISION = (torch.bfloat16, torch.float16)
_OFF = ("0", "false", "no", "off")
OCCUPANCY = "occupancy"
_tensor_cores_override: bool | str | None = None


def tensor_cores_setting() -> bool | str:
    """False, True or "occupancy": as set by :func:`tensor_cores`, else by the environment variable
    ``COUN_FAST_TENSOR_CORES`` (read at every call): "0", "false", "no" or "off" switch the path
    off, "occupancy" selects its occupancy variant, anything else (or nothing) leaves it on."""
    if _tensor_cores_override is not None:
        return _tensor_cores_override
    text = os.environ.get(TENSOR_CORES_ENV, "").strip().lower()
    return OCCUPANCY if text == OCCUPANCY else text not in _OFF


def tensor_cores_enabled() -> bool:
    """Whether the tensor-core path may run (see :func:`tensor_cores`)."""
    return tensor_cores_setting() is not False


@contextlib.contextmanager
def tensor_cores(enabled: bool | str = True) -> Iterator[None]:
    """Allow the tensor-core path (``True``), its occupancy variant (``"occupancy"``) or, with
    ``False``, force the exact path inside a ``with`` block, whatever the environment says."""
    global _tensor_cores_override
    if not isinstance(enabled, bool) and enabled != OCCUPANCY:
        raise ValueError(f"enabled must be True, False or {OCCUPANCY!r}; got {enabled!r}")
    previous = _tensor_cores_override
    _tensor_cores_override = enabled
    try:
        yield
    finally:
        _tensor_cores_override = previous


_capable_devices: dict[int, bool] = {}


def _tensor_core_capable(device: torch.device) -> bool:
    """Whether the GPU has the tensor-core instructions of the path (sm_80 or newer)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _capable_devices:
        _capable_devices[index] = torch.cuda.get_device_capability(index) >= (8, 0)
    return _capable_devices[index]


def cuda_path(dtype: torch.dtype, device: torch.device) -> int:
    """The CUDA path of a fused call on inputs of ``dtype`` on ``device`` (see the module
    docstring); the exact path on GPUs older than sm_80."""
    setting = tensor_cores_setting()
    if setting is False:
        return PATH_EXACT
    wanted = dtype in _LOW_PRECISION or (dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32)
    if not (wanted and _tensor_core_capable(device)):
        return PATH_EXACT
    return PATH_TENSOR_CORES_OCCUPANCY if setting == OCCUPANCY else PATH_TENSOR_CORES


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


def fused_supported(*tensors: Tensor) -> bool:
    """The common case without building reason lists: fused kernels can run these features."""
    first = tensors[0]
    device = first.device.type
    if _ext.C is None or device not in SUPPORTED_DEVICES or first.shape[-1] > MAX_DIM:
        return False
    if device == "cuda" and not _ext.CUDA_COMPILED:
        return False
    return all(t.dtype in SUPPORTED_DTYPES for t in tensors)


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
    if fused_supported(*tensors):
        return "fused"
    installation, inputs = installation_reasons(tensors[0].device), input_reasons(*tensors)
    if not installation and not inputs:
        return "fused"
    if backend == "fused":
        error = RuntimeError if installation else ValueError
        raise error("backend='fused' cannot run this call: " + "; ".join(installation + inputs))
    return "reference"

