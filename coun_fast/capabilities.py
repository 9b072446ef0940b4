"""What this installation of coun_fast can do: ``info()``; ``python -m coun_fast.info`` prints it."""

from __future__ import annotations

import importlib.util
import json
import platform

import torch

from coun_fast import _ext
from coun_fast._version import __version__
from coun_fast.ops.backend import MAX_DIM


def package_version() -> str:
    """The version of coun_fast (``coun_fast/_version.py``, the one place it is written)."""
    return __version__


def _module_installed(name: str) -> bool:
    """Whether ``name`` can be imported, without importing it (a missing parent package is False)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def info() -> dict:
    """Capabilities of this installation.

    Returns:
        A dict with ``version``, ``cpu_kernels`` (the extension loaded), ``cpu_isa`` (the
        instruction-set variant of the CPU kernels on this machine: "avx512", "avx2", "baseline" or
        "native"; None without the extension), ``cuda_compiled`` (its CUDA
        kernels were built), ``cuda_archs`` (list of str, e.g. ["80", "86", "89", "90"]),
        ``cuda_available`` (a GPU usable now by torch and the kernels), ``dali_available``,
        ``torch_version``, ``max_dim`` (largest feature dimension of the fused kernels),
        ``extension_error`` (why the extension did not load, or None), ``python`` and ``platform``.
    """
    cuda_available = bool(
        _ext.CUDA_COMPILED and torch.cuda.is_available() and _ext.C.cuda_device_count() > 0
    )
    return {
        "version": package_version(),
        "cpu_kernels": _ext.C is not None,
        "cpu_isa": _ext.C.cpu_kernel_variant() if _ext.C is not None else None,
        "cuda_compiled": _ext.CUDA_COMPILED,
        "cuda_archs": list(_ext.CUDA_ARCHS),
        "cuda_available": cuda_available,
        "dali_available": _module_installed("nvidia.dali"),
        "torch_version": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name() if cuda_available else None,
        "max_dim": MAX_DIM,
        "extension_error": _ext.LOAD_ERROR,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def format_info(report: dict) -> str:
    """The report as aligned ``key: value`` lines."""
    width = max(len(key) for key in report)
    lines = []
    for key, value in report.items():
        shown = ", ".join(value) if isinstance(value, list) else json.dumps(value) if value is None else value
        lines.append(f"{key:<{width}}  {shown}")
    return "\n".join(lines)


def main() -> None:
    print(format_info(info()))


if __name__ == "__main__":
    main()
