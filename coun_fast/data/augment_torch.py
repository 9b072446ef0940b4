"""The torch backend: a whole batch of per-sample augmentations in a few tensor ops on its device.

Images stay where they are (a uint8 NHWC tensor on the GPU, typically); only the per-sample
parameters, a few numbers per image, travel from the host. Semantics: :mod:`coun_fast.data.recipes`;
tested against :mod:`coun_fast.data.augment_cpu`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor

from coun_fast.data.recipes import LUMA, Normalization, ViewParams


def _params_to(params: ViewParams, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    non_blocking = device.type == "cuda"
    box = torch.from_numpy(params.box).to(device, non_blocking=non_blocking)
    flip = torch.from_numpy(params.flip).to(device, non_blocking=non_blocking)
    jitter = torch.from_numpy(params.jitter).to(device, non_blocking=non_blocking)
    gray = torch.from_numpy(params.gray).to(device, non_blocking=non_blocking)
    return box, flip, jitter, gray


def _gather(images: Tensor, ys: Tensor, xs: Tensor) -> Tensor:
    """``images[b, ys[b, i], xs[b, j]]`` as float, 0 outside the image: (B, out_h, out_w, 3)."""
    batch, height, width, _ = images.shape
    inside = ((ys >= 0) & (ys < height))[:, :, None] & ((xs >= 0) & (xs < width))[:, None, :]
    rows = torch.arange(batch, device=images.device)[:, None, None]
    values = images[rows, ys.clamp(0, height - 1)[:, :, None], xs.clamp(0, width - 1)[:, None, :]]
    return values.float() * inside[..., None]


def ragged_gather(pixels: Tensor, starts: Tensor, sizes: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """:func:`_gather` for images of different sizes stored back to back: ``pixels`` (P, 3) uint8
    holds image b's rows (H_b, W_b) from row ``starts[b]``, ``sizes`` (B, 2) their (H, W)."""
    height, width = sizes[:, 0, None], sizes[:, 1, None]

    def gather(ys: Tensor, xs: Tensor) -> Tensor:
        inside = ((ys >= 0) & (ys < height))[:, :, None] & ((xs >= 0) & (xs < width))[:, None, :]
        row = starts[:, None] + torch.minimum(ys.clamp(min=0), height - 1) * width
        where = row[:, :, None] + torch.minimum(xs.clamp(min=0), width - 1)[:, None, :]
        return pixels[where].float() * inside[..., None]

    return gather


def _coordinates(start: Tensor, length: Tensor, out: int) -> tuple[Tensor, Tensor, Tensor]:
    """Source rows (or columns) of a bilinear resize of [start, start + length) to ``out`` pixels."""
    steps = torch.arange(out, device=start.device, dtype=torch.float32)
    src = start[:, None].float() + (steps[None, :] + 0.5) * (length[:, None].float() / out) - 0.5
    src = torch.minimum(torch.maximum(src, start[:, None].float()), (start + length - 1)[:, None].float())
    low = src.floor().long()
    high = torch.minimum(low + 1, (start + length - 1)[:, None])
    return low, high, src - low


def crop_resize(images, box: Tensor, out_size: tuple[int, int], *, copy: bool = False) -> Tensor:
    """Per-sample boxes of a uint8 (B, H, W, 3) batch, resized: float32 (B, out_h, out_w, 3) in [0, 255].

    ``images`` may also be a gather function ``(ys, xs) -> (B, out_h, out_w, 3)`` (see
    :func:`ragged_gather`). ``copy=True`` promises that every box has the output size (a shifted
    copy, no interpolation); the caller knows it from the host-side parameters, so no device sync
    is needed to find out.
    """
    gather = images if callable(images) else (lambda ys, xs: _gather(images, ys, xs))
    out_h, out_w = out_size
    top, left, height, width = box.unbind(1)
    if copy:
        ys = top[:, None] + torch.arange(out_h, device=box.device)
        xs = left[:, None] + torch.arange(out_w, device=box.device)
        return gather(ys, xs)
    y0, y1, wy = _coordinates(top, height, out_h)
    x0, x1, wx = _coordinates(left, width, out_w)
    wy, wx = wy[:, :, None, None], wx[:, None, :, None]
    upper = gather(y0, x0) * (1 - wx) + gather(y0, x1) * wx
    lower = gather(y1, x0) * (1 - wx) + gather(y1, x1) * wx
    return upper * (1 - wy) + lower * wy


def _gray(x: Tensor) -> Tensor:
    """Luma of (B, H, W, 3) images, shape (B, H, W, 1)."""
    weights = torch.tensor(LUMA, device=x.device, dtype=x.dtype)
    return (x * weights).sum(-1, keepdim=True)


def _rotate_hue(x: Tensor, turns: Tensor) -> Tensor:
    """Shift the HSV hue of (B, H, W, 3) images in [0, 1] by per-sample ``turns`` (B,)."""
    r, g, b = x.unbind(-1)
    high, low = x.amax(-1), x.amin(-1)
    chroma = high - low
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.where(
        high == r, torch.remainder((g - b) / safe, 6.0), torch.where(high == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0)
    )
    hue = torch.where(chroma > 0, hue / 6.0, torch.zeros_like(hue))
    hue = torch.remainder(hue + turns[:, None, None], 1.0)
    saturation = torch.where(high > 0, chroma / torch.where(high > 0, high, torch.ones_like(high)), torch.zeros_like(high))
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device)
    k = torch.remainder(n + hue[..., None] * 6.0, 6.0)
    return high[..., None] - (high * saturation)[..., None] * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)


def _color_jitter(x: Tensor, jitter: Tensor, rotate_hue: bool) -> Tensor:
    """Per-sample brightness, contrast, saturation, hue (B, 4), in that order, clamped after each."""
    brightness, contrast, saturation, hue = (v[:, None, None, None] for v in jitter.unbind(1))
    x = (x * brightness).clamp(0.0, 1.0)
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    x = (contrast * x + (1 - contrast) * mean).clamp(0.0, 1.0)
    x = (saturation * x + (1 - saturation) * _gray(x)).clamp(0.0, 1.0)
    if rotate_hue:
        turns = hue.view(-1)
        x = torch.where((turns != 0)[:, None, None, None], _rotate_hue(x, turns).clamp(0.0, 1.0), x)
    return x


def apply_view(
    images: "Tensor | Callable[[Tensor, Tensor], Tensor]",
    params: ViewParams,
    norm: Normalization,
    out_size: tuple[int, int],
    *,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    device: torch.device | None = None,
) -> Tensor:
    """One view of a uint8 (B, H, W, 3) batch on any device: (B, 3, out_h, out_w) of ``dtype``.

    ``images`` may also be a gather function of images of different sizes (:func:`ragged_gather`;
    ``device`` is then required). With ``channels_last`` the result has the channels-last memory format (NCHW shape, NHWC
    strides), the layout convolution kernels on GPUs prefer; it is then free of a transpose.
    """
    device = images.device if device is None else device
    box, flip, jitter, gray = _params_to(params, device)
    copy = bool(np.all(params.box[:, 2:] == np.asarray(out_size)))
    x = crop_resize(images, box, out_size, copy=copy)
    x = torch.where(flip[:, None, None, None], x.flip(2), x) / 255.0
    identity = torch.tensor([1.0, 1.0, 1.0, 0.0], device=device)
    if params.has_jitter:
        jittered = (jitter != identity).any(1)
        x = torch.where(jittered[:, None, None, None], _color_jitter(x, jitter, bool(np.any(params.jitter[:, 3] != 0))), x)
    if bool(params.gray.any()):
        x = torch.where(gray[:, None, None, None], _gray(x).expand_as(x), x)
    mean = torch.tensor(norm.mean, device=device)
    std = torch.tensor(norm.std, device=device)
    x = ((x - mean) / std).permute(0, 3, 1, 2)
    if channels_last:
        return x.to(dtype=dtype, memory_format=torch.channels_last)
    return x.to(dtype=dtype).contiguous()
