"""Augmentation backends behind one interface, and the rule that picks one.

An *augmenter* holds a data set where its backend wants it (host memory, a device tensor, or a
DALI pipeline's input) and turns a batch of sample indices plus per-view parameters
(:class:`~coun_fast.data.recipes.ViewParams`) into NCHW float tensors on its device:

* ``cpu``: :mod:`coun_fast.data.augment_cpu`, the plain reference, results on the CPU;
* ``torch``: :mod:`coun_fast.data.augment_torch` on the data set's device (GPU, or CPU);
* ``dali``: :mod:`coun_fast.data.augment_dali`, a DALI pipeline on the GPU, or on the CPU with
  ``device_id=None``.

``backend="auto"`` picks ``dali`` on a GPU when DALI is installed, else ``torch`` on a GPU, else
``cpu``, and says why.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from coun_fast.data import augment_cpu, augment_torch
from coun_fast.data.dataset import ImageDataset
from coun_fast.data.recipes import Normalization, Recipe, ViewParams

BACKENDS = ("auto", "dali", "torch", "cpu")
log = logging.getLogger("coun_fast.data")


class Augmenter(Protocol):
    """What a backend provides to :class:`~coun_fast.data.loader.AugmentedLoader`."""

    name: str
    device: torch.device

    def views(self, indices: np.ndarray, params: list[ViewParams]) -> list[Tensor]:
        """One (B, 3, H, W) tensor per entry of ``params`` for the samples ``indices`` (B,)."""
        ...


def dali_installed() -> bool:
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:
        return False


def resolve_backend(backend: str, device: torch.device) -> tuple[str, str]:
    """The backend to run on ``device`` for the request ``backend``, and why (for the log)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}; got {backend!r}")
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"backend 'cpu' produces CPU tensors; got device {device}. Use backend 'torch' or 'dali'")
    if backend == "dali" and not dali_installed():
        raise RuntimeError("backend 'dali' needs NVIDIA DALI: pip install nvidia-dali-cuda130 (or -cuda120)")
    if backend != "auto":
        return backend, "requested"
    if device.type == "cuda":
        if dali_installed():
            return "dali", f"auto: DALI is installed and the device is {device}"
        return "torch", f"auto: the device is {device} and DALI is not installed"
    return "cpu", f"auto: the device is {device.type}"


class CpuAugmenter:
    """The reference backend: NumPy, one image at a time; results on the CPU."""

    name = "cpu"

    def __init__(self, dataset: ImageDataset, norm: Normalization, out_size: tuple[int, int], *, dtype, channels_last):
        self.images = dataset.decoded().images
        self.norm, self.out_size = norm, out_size
        self.dtype, self.channels_last = dtype, channels_last
        self.device = torch.device("cpu")

    def views(self, indices: np.ndarray, params: list[ViewParams]) -> list[Tensor]:
        batch = self.images[indices]
        out = []
        for view in params:
            x = torch.from_numpy(augment_cpu.apply_view(batch, view, self.norm, self.out_size)).to(self.dtype)
            out.append(x.contiguous(memory_format=torch.channels_last) if self.channels_last else x)
        return out


class TorchAugmenter:
    """The data set as one uint8 NHWC tensor on ``device``; batches gathered and augmented there."""

    name = "torch"

    def __init__(self, dataset: ImageDataset, norm: Normalization, out_size, *, device, dtype, channels_last):
        self.device = device
        self.images = torch.from_numpy(np.ascontiguousarray(dataset.decoded().images)).to(device)
        self.norm, self.out_size = norm, out_size
        self.dtype, self.channels_last = dtype, channels_last

    def views(self, indices: np.ndarray, params: list[ViewParams]) -> list[Tensor]:
        batch = self.images[torch.from_numpy(indices).to(self.device, non_blocking=True)]
        return [
            augment_torch.apply_view(
                batch, view, self.norm, self.out_size, dtype=self.dtype, channels_last=self.channels_last
            )
            for view in params
        ]


def make_augmenter(
    backend: str,
    dataset: ImageDataset,
    norm: Normalization,
    out_size: tuple[int, int],
    *,
    device: torch.device,
    dtype: torch.dtype,
    channels_last: bool,
    max_batch: int,
    recipe: Recipe,
) -> Augmenter:
    """The augmenter of a resolved ``backend`` (see :func:`resolve_backend`)."""
    if backend == "cpu":
        return CpuAugmenter(dataset, norm, out_size, dtype=dtype, channels_last=channels_last)
    if backend == "torch":
        return TorchAugmenter(dataset, norm, out_size, device=device, dtype=dtype, channels_last=channels_last)
    from coun_fast.data.augment_dali import DaliAugmenter

    return DaliAugmenter(
        dataset, norm, out_size, device=device, dtype=dtype, channels_last=channels_last, max_batch=max_batch, recipe=recipe
    )
