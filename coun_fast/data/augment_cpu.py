"""The plain CPU backend: one image at a time in NumPy, written to be read, not to be fast.

This is the reference the ``torch`` and ``dali`` backends are tested against; the semantics it
implements are stated in :mod:`coun_fast.data.recipes`. All arithmetic is float32.
"""

from __future__ import annotations

import numpy as np

from coun_fast.data.recipes import LUMA, Normalization, ViewParams

_LUMA = np.asarray(LUMA, dtype=np.float32)


def crop_resize(image: np.ndarray, box, out_size: tuple[int, int]) -> np.ndarray:
    """The box ``(top, left, height, width)`` of a uint8 (H, W, 3) image, zero outside the image,
    resized bilinearly (half-pixel centres, clamped to the box) to ``out_size``; float32 in [0, 255]."""
    top, left, height, width = (int(v) for v in box)
    out_h, out_w = out_size
    h_img, w_img = image.shape[:2]

    def pixel(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        inside = (ys[:, None] >= 0) & (ys[:, None] < h_img) & (xs[None, :] >= 0) & (xs[None, :] < w_img)
        values = image[np.clip(ys, 0, h_img - 1)[:, None], np.clip(xs, 0, w_img - 1)[None, :]]
        return np.where(inside[..., None], values, 0).astype(np.float32)

    if (height, width) == (out_h, out_w):  # a shifted copy: slice the zero-padded image
        pad = max(0, -top, -left, top + height - h_img, left + width - w_img)
        padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0))) if pad else image
        return padded[top + pad : top + pad + height, left + pad : left + pad + width].astype(np.float32)

    def coordinates(start: int, length: int, out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = start + (np.arange(out, dtype=np.float32) + 0.5) * (length / out) - 0.5
        src = np.clip(src, start, start + length - 1)
        low = np.floor(src).astype(np.int64)
        high = np.minimum(low + 1, start + length - 1)
        return low, high, (src - low).astype(np.float32)

    y0, y1, wy = coordinates(top, height, out_h)
    x0, x1, wx = coordinates(left, width, out_w)
    wy, wx = wy[:, None, None], wx[None, :, None]
    upper = pixel(y0, x0) * (1 - wx) + pixel(y0, x1) * wx
    lower = pixel(y1, x0) * (1 - wx) + pixel(y1, x1) * wx
    return upper * (1 - wy) + lower * wy


def gray(x: np.ndarray) -> np.ndarray:
    """Luma of an (H, W, 3) image in [0, 1], shape (H, W, 1)."""
    return (x @ _LUMA)[..., None]


def rotate_hue(x: np.ndarray, turns: float) -> np.ndarray:
    """Shift the HSV hue of an (H, W, 3) image in [0, 1] by ``turns`` of a full circle."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    high, low = x.max(-1), x.min(-1)
    chroma = high - low
    safe = np.where(chroma > 0, chroma, 1.0)
    hue = np.where(high == r, ((g - b) / safe) % 6.0, np.where(high == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    hue = np.where(chroma > 0, hue / 6.0, 0.0)
    hue = (hue + turns) % 1.0
    saturation = np.where(high > 0, chroma / np.where(high > 0, high, 1.0), 0.0)
    # HSV -> RGB: channel n takes v - v*s*clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6.
    out = np.empty_like(x)
    for channel, n in enumerate((5.0, 3.0, 1.0)):
        k = (n + hue * 6.0) % 6.0
        out[..., channel] = high - high * saturation * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return out.astype(np.float32)


def color_jitter(x: np.ndarray, brightness: float, contrast: float, saturation: float, hue: float) -> np.ndarray:
    """Brightness, contrast, saturation, hue in that order, clamped to [0, 1] after each."""
    x = np.clip(x * np.float32(brightness), 0.0, 1.0)
    x = np.clip(np.float32(contrast) * x + np.float32(1 - contrast) * gray(x).mean(), 0.0, 1.0)
    x = np.clip(np.float32(saturation) * x + np.float32(1 - saturation) * gray(x), 0.0, 1.0)
    if hue != 0:
        x = np.clip(rotate_hue(x, float(hue)), 0.0, 1.0)
    return x.astype(np.float32)


def augment_one(image: np.ndarray, box, flip: bool, jitter, to_gray: bool, out_size, norm: Normalization) -> np.ndarray:
    """One view of one uint8 (H, W, 3) image: float32 (3, out_h, out_w)."""
    x = crop_resize(image, box, out_size)
    if flip:
        x = x[:, ::-1]
    x = x / np.float32(255.0)
    if tuple(jitter) != (1.0, 1.0, 1.0, 0.0):
        x = color_jitter(x, *(float(v) for v in jitter))
    if to_gray:
        x = np.repeat(gray(x), 3, axis=-1)
    x = (x - np.asarray(norm.mean, np.float32)) / np.asarray(norm.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def apply_view(images: np.ndarray, params: ViewParams, norm: Normalization, out_size: tuple[int, int]) -> np.ndarray:
    """One view of a uint8 (B, H, W, 3) batch with per-sample ``params``: float32 (B, 3, out_h, out_w)."""
    return np.stack(
        [
            augment_one(images[i], params.box[i], bool(params.flip[i]), params.jitter[i], bool(params.gray[i]), out_size, norm)
            for i in range(len(images))
        ]
    ) if len(images) else np.zeros((0, 3, *out_size), np.float32)
