"""Compute cost of producing an unlearned model: wall time, images processed, PFLOPs.

The paper reports PFLOPs, not minutes. Its counting rule is not printed; the reconstruction that
fits its tables (docs/method.md, "Compute cost") is

    PFLOPs = F * (3 * trained_images + extra_forward_images) / 1e15

where ``F`` is the model's forward FLOPs per image (about 1.114e9 for a CIFAR ResNet-18), a
trained image costs a forward and a backward pass (3 F), and an extra forward-only view costs one
more forward (CoUn's second view: 4 F per retain image in all). Check: Retrain, 182 epochs of
45,000 images, ``182 * 45,000 * 3 * 1.114e9 = 27.37`` PFLOPs.

``F`` is passed in as a number: this module does not depend on :mod:`coun_fast.models`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import time

import torch

__all__ = ["pflops", "Cost", "CostMeter", "FORWARD_BACKWARD_FACTOR"]

FORWARD_BACKWARD_FACTOR = 3
"""A trained image costs forward + backward = 3 forward passes (backward counted as 2 forwards)."""


def _count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0 (a number of images); got {value!r}")
    return int(value)


def _flops(value: object, name: str = "forward_flops_per_image") -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0 (forward FLOPs of one image); got {value!r}")
    return float(value)


def pflops(forward_flops_per_image: float, trained_images: int, extra_forward_images: int = 0) -> float:
    """PFLOPs by the paper's counting: ``F * (3 * trained_images + extra_forward_images) / 1e15``.

    Args:
        forward_flops_per_image: forward FLOPs of one image (> 0), e.g. 1.114e9.
        trained_images: images that went through a forward and a backward pass (summed over
            epochs; an image seen in 10 epochs counts 10 times).
        extra_forward_images: extra forward-only images (CoUn's second view, one per retain image).
    """
    flops = _flops(forward_flops_per_image)
    trained = _count(trained_images, "trained_images")
    extra = _count(extra_forward_images, "extra_forward_images")
    return flops * (FORWARD_BACKWARD_FACTOR * trained + extra) / 1e15


@dataclasses.dataclass(frozen=True)
class Cost:
    """What producing one model cost.

    Attributes:
        seconds: wall-clock seconds of the method (device-synchronised), evaluation excluded.
        trained_images: images with a forward and backward pass.
        extra_forward_images: extra forward-only images.
        forward_flops_per_image: forward FLOPs of one image, or None when unknown (then no PFLOPs).
        device: where it ran, as text ("cuda:0", "cpu"), or None.
    """

    seconds: float = 0.0
    trained_images: int = 0
    extra_forward_images: int = 0
    forward_flops_per_image: float | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.seconds, bool) or not isinstance(self.seconds, numbers.Real) or not self.seconds >= 0:
            raise ValueError(f"seconds must be a number >= 0; got {self.seconds!r}")
        _count(self.trained_images, "trained_images")
        _count(self.extra_forward_images, "extra_forward_images")
        if self.forward_flops_per_image is not None:
            _flops(self.forward_flops_per_image)

    @property
    def pflops(self) -> float | None:
        """PFLOPs by :func:`pflops`, or None without ``forward_flops_per_image``."""
        if self.forward_flops_per_image is None:
            return None
        return pflops(self.forward_flops_per_image, self.trained_images, self.extra_forward_images)

    def as_dict(self) -> dict:
        """``{"seconds", "trained_images", "extra_forward_images", "PFLOPs", "device"}`` (the keys
        :func:`coun_fast.evaluate.report.metrics_table` reads; ``PFLOPs`` only when known)."""
        out = {
            "seconds": float(self.seconds),
            "trained_images": int(self.trained_images),
            "extra_forward_images": int(self.extra_forward_images),
            "device": self.device,
        }
        if self.pflops is not None:
            out["PFLOPs"] = self.pflops
        return out

    @classmethod
    def from_result(cls, result, forward_flops_per_image: float | None = None, device=None) -> "Cost":
        """A :class:`Cost` from any object with ``seconds``, ``trained_images`` and
        ``extra_forward_images`` attributes (e.g. the training loop's result)."""
        missing = [a for a in ("seconds", "trained_images", "extra_forward_images") if not hasattr(result, a)]
        if missing:
            raise TypeError(f"result must have the attributes seconds, trained_images and extra_forward_images; lacks {missing}")
        return cls(
            float(result.seconds), int(result.trained_images), int(result.extra_forward_images),
            forward_flops_per_image, None if device is None else str(device),
        )


def _synchronize(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


class CostMeter:
    """Measures wall time (synchronising CUDA around each timed block) and counts images.

    >>> meter = CostMeter(device="cpu", forward_flops_per_image=1.114e9)
    >>> with meter:                     # time a block; may be entered again, times add up
    ...     meter.add(trained=256, extra_forward=256)
    >>> round(meter.cost().pflops, 6)      # 1.114e9 * (3 * 256 + 256) / 1e15
    0.001141

    Args:
        device: the device the work runs on; on CUDA the meter calls ``torch.cuda.synchronize``
            when a block starts and ends, so queued kernels are timed. None or CPU: no sync.
        forward_flops_per_image: forward FLOPs of one image, for PFLOPs (optional).
    """

    def __init__(self, device=None, forward_flops_per_image: float | None = None) -> None:
        self.device = None if device is None else torch.device(device)
        if forward_flops_per_image is not None:
            _flops(forward_flops_per_image)
        self.forward_flops_per_image = forward_flops_per_image
        self.seconds = 0.0
        self.trained_images = 0
        self.extra_forward_images = 0
        self._started: float | None = None

    def start(self) -> None:
        """Start timing (after a device sync). Raises RuntimeError when already running."""
        if self._started is not None:
            raise RuntimeError("CostMeter is already timing; call stop() first")
        _synchronize(self.device)
        self._started = time.perf_counter()

    def stop(self) -> float:
        """Stop timing (after a device sync); add and return the block's seconds."""
        if self._started is None:
            raise RuntimeError("CostMeter is not timing; call start() first")
        _synchronize(self.device)
        elapsed = time.perf_counter() - self._started
        self._started = None
        self.seconds += elapsed
        return elapsed

    def __enter__(self) -> "CostMeter":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def add(self, trained: int = 0, extra_forward: int = 0) -> None:
        """Count ``trained`` forward+backward images and ``extra_forward`` forward-only images."""
        self.trained_images += _count(trained, "trained")
        self.extra_forward_images += _count(extra_forward, "extra_forward")

    def cost(self) -> Cost:
        """The totals so far as a :class:`Cost` (a block still being timed is not included)."""
        return Cost(
            self.seconds, self.trained_images, self.extra_forward_images, self.forward_flops_per_image,
            None if self.device is None else str(self.device),
        )
