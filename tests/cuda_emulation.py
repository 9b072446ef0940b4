"""The CUDA paths run on the CPU through the CUDA emulation (csrc/emulation), as a torch autograd
function, for tests on machines without a GPU.

``build()`` compiles csrc/cuda/*.cu (as C++) with csrc/emulation/emulation_api.cpp into a shared
library (cached by the sources' hash); :func:`emulated_loss` then computes a loss and its gradients
through the extension's CUDA entry points, with the very source that runs on the GPU (see
cuda_emulation.h for what the emulation does and does not check).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from coun_fast.ops.contrastive import _DTYPE_CODES, REDUCTIONS

ROOT = Path(__file__).resolve().parent.parent
CUDA_SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
API_SOURCE = ROOT / "csrc" / "emulation" / "emulation_api.cpp"
DEPENDENCIES = [*CUDA_SOURCES, API_SOURCE, ROOT / "csrc" / "emulation" / "cuda_emulation.h",
                *sorted((ROOT / "csrc" / "cuda").glob("*.h")), *sorted((ROOT / "csrc" / "cuda").glob("*.cuh")),
                *sorted((ROOT / "csrc" / "include" / "coun_fast").glob("*.h"))]
# The emulated devices (cuda_emulation.h's g_devices): an H100's 132 multiprocessors and 227 KB of
# shared memory per block; one multiprocessor (small sweeps are never split); 48 KB of shared memory
# (the tensor-core backward falls back to its streamed variant above D = 128).
DEVICES = {"h100": 0, "one_sm": 1, "48k": 2}
PATHS = {"exact": 0, "tensor_cores": 1, "tensor_cores_occupancy": 2}


class EmuMatrix(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("rows", ctypes.c_int64), ("dim", ctypes.c_int64),
                ("row_stride", ctypes.c_int64), ("col_stride", ctypes.c_int64), ("dtype", ctypes.c_int32)]


class EmuCall(ctypes.Structure):
    _fields_ = [("a", EmuMatrix), ("b", EmuMatrix), ("self", ctypes.c_int32), ("exclude_self", ctypes.c_int32),
                ("symmetric", ctypes.c_int32), ("reduction", ctypes.c_int32), ("rule", ctypes.c_int32),
                ("paired", ctypes.c_int64), ("temperature", ctypes.c_float), ("index", ctypes.c_void_p), ("anchor_labels", ctypes.c_void_p),
                ("candidate_labels", ctypes.c_void_p), ("path", ctypes.c_int32), ("device", ctypes.c_int32)]


def compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++"))


_LIBRARY: ctypes.CDLL | None = None


def build() -> ctypes.CDLL:
    """The emulation library, compiled once per source state."""
    global _LIBRARY
    if _LIBRARY is not None:
        return _LIBRARY
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in DEPENDENCIES)).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / f"coun_fast_cuda_emulation_{digest}.so"
    if not target.exists():
        partial = target.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run([compiler(), "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-DCOUN_FAST_EMULATE",
                        '-DCOUN_FAST_CUDA_ARCHS_STRING="emulated"', f"-I{ROOT / 'csrc' / 'include'}",
                        f"-I{ROOT / 'csrc' / 'cuda'}", "-x", "c++", *map(str, CUDA_SOURCES), "-x", "none",
                        str(API_SOURCE), "-o", str(partial)], check=True)
        partial.replace(target)
    library = ctypes.CDLL(str(target))
    library.emu_workspace.argtypes = [ctypes.POINTER(EmuCall), ctypes.POINTER(ctypes.c_int64)]
    library.emu_forward.argtypes = [ctypes.POINTER(EmuCall)] + [ctypes.c_void_p] * 4
    library.emu_backward.argtypes = [ctypes.POINTER(EmuCall)] + [ctypes.c_void_p] * 6
    _LIBRARY = library
    return library


def _matrix(x: torch.Tensor | None) -> EmuMatrix:
    if x is None:
        return EmuMatrix()
    return EmuMatrix(x.data_ptr(), x.shape[0], x.shape[1], x.stride(0), x.stride(1), _DTYPE_CODES[x.dtype])


def _pointer(x: torch.Tensor | None) -> int | None:
    return None if x is None else x.data_ptr()


def make_call(anchors, candidates, temperature, rule, positive_index, anchor_labels, candidate_labels, exclude_self,
              symmetric, reduction, path="tensor_cores", device="h100", paired=0) -> EmuCall:
    labels_b = anchor_labels if candidate_labels is None else candidate_labels
    return EmuCall(_matrix(anchors), _matrix(candidates), int(candidates is None), int(exclude_self), int(symmetric),
                   REDUCTIONS[reduction], rule, paired, temperature, _pointer(positive_index), _pointer(anchor_labels),
                   _pointer(labels_b), PATHS[path], DEVICES[device])


def plan(call: EmuCall) -> dict:
    """Workspace sizes of a call and, for the tensor-core path, its splits and backward variant."""
    sizes = (ctypes.c_int64 * 6)()
    build().emu_workspace(ctypes.byref(call), sizes)
    return dict(zip(("saved", "forward_scratch", "backward_scratch", "forward_splits", "backward_splits",
                     "g_chunks"), list(sizes)))


def _bytes(count: int) -> torch.Tensor:
    return torch.full((max(count, 1),), 0xA5, dtype=torch.uint8)  # poisoned: unwritten bytes show


class _Emulated(torch.autograd.Function):
    @staticmethod
    def forward(ctx, anchors, candidates, temperature, rule, positive_index, anchor_labels, candidate_labels,
                exclude_self, symmetric, reduction, path, device, paired):
        keep = (positive_index, anchor_labels, candidate_labels)
        call = make_call(anchors, candidates, temperature, rule, *keep, exclude_self, symmetric, reduction, path,
                         device, paired)
        sizes = plan(call)
        total = anchors.shape[0] + (candidates.shape[0] if symmetric else 0)
        out = torch.full((total,) if reduction == "none" else (), float("nan"))
        stats = torch.full((2 * total + 2,), float("nan"))
        saved, scratch = _bytes(sizes["saved"]), _bytes(sizes["forward_scratch"])
        status = build().emu_forward(ctypes.byref(call), out.data_ptr(), stats.data_ptr(), saved.data_ptr(),
                                     scratch.data_ptr())
        assert status == 0, f"emulated forward returned CUDA error {status}"
        ctx.save_for_backward(anchors, candidates, stats, saved, *[k for k in keep if k is not None])
        ctx.call, ctx.sizes, ctx.keep = call, sizes, keep
        return out

    @staticmethod
    def backward(ctx, grad_out):
        anchors, candidates, stats, saved = ctx.saved_tensors[:4]
        grad_out = grad_out.to(torch.float32).contiguous()
        grad_a = torch.full(anchors.shape, float("nan"), dtype=anchors.dtype)
        grad_b = None if candidates is None else torch.full(candidates.shape, float("nan"), dtype=candidates.dtype)
        scratch = _bytes(ctx.sizes["backward_scratch"])
        status = build().emu_backward(ctypes.byref(ctx.call), grad_out.data_ptr(), stats.data_ptr(),
                                      saved.data_ptr(), scratch.data_ptr(), grad_a.data_ptr(),
                                      0 if grad_b is None else grad_b.data_ptr())
        assert status == 0, f"emulated backward returned CUDA error {status}"
        return grad_a, grad_b, None, None, None, None, None, None, None, None, None, None, None


def emulated_loss(anchors, candidates, temperature, rule, *, positive_index=None, anchor_labels=None,
                  candidate_labels=None, exclude_self=False, symmetric=False, reduction="mean", path="tensor_cores",
                  device="h100", paired=0):
    """The loss of a CUDA path ("exact" or "tensor_cores"), emulated on the CPU on an emulated
    device (a key of DEVICES), differentiable in the features."""
    return _Emulated.apply(anchors, candidates, temperature, rule, positive_index, anchor_labels, candidate_labels,
                           exclude_self, symmetric, reduction, path, device, paired)
