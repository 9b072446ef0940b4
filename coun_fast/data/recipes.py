"""Augmentation recipes: what a view of an image is, independent of the backend that computes it.

A recipe fixes a distribution over per-sample parameters; :func:`sample_params` draws them with a
NumPy generator, and every backend (``cpu``, ``torch``, ``dali``) applies the same parameters the
same way. So a seed gives the same views on every backend, and each backend is tested against the
plain ``cpu`` one. One view of a uint8 image ``u`` (H, W, 3) is, in this order:

1. **crop + resize**: take the box ``(top, left, height, width)`` of ``u``; pixels outside the
   image are 0 (zero padding). Resize the box to the output size with bilinear interpolation at
   half-pixel centres, source coordinates clamped to the box: for output row i,
   ``y = top + (i + 0.5) * height / out_h - 0.5`` clamped to ``[top, top + height - 1]``; the same
   for columns. A box of the output size is an exact copy (no interpolation).
   *pad crop* ("C" of the paper): height, width = output size, top and left uniform integers in
   ``[-padding, padding]`` (a random 32x32 crop of the image zero-padded by 4).
   *resized crop*: torchvision's RandomResizedCrop box: area fraction uniform in ``scale``,
   log-aspect uniform in ``log(ratio)``, ten tries, else the centre crop clipped to ``ratio``.
   *centre crop*: the centred square of side ``round(crop_fraction * min(H, W))`` (0.875: the
   classic "resize to 256, centre-crop 224" evaluation of ImageNet models).
2. **flip**: mirror left-right with probability ``flip``.
3. scale to ``x = u / 255`` in [0, 1].
4. **colour jitter**, with probability ``jitter_p``, in the fixed order brightness, contrast,
   saturation, hue (DALI's order; torchvision draws a random order), clamping to [0, 1] after each:
   brightness ``x * b``; contrast ``c * x + (1 - c) * mean(gray(x))`` (the image's mean luma);
   saturation ``s * x + (1 - s) * gray(x)``; hue: rotate the HSV hue by ``h`` turns.
   Factors b, c, s are uniform in ``[max(0, 1 - j), 1 + j]``, h uniform in ``[-j_h, j_h]``.
5. **grayscale** with probability ``grayscale_p``: every channel becomes
   ``gray(x) = 0.299 r + 0.587 g + 0.114 b``.
6. **normalize**: ``(x - mean) / std`` per channel; output float, CHW.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import numpy as np

LUMA = (0.299, 0.587, 0.114)
CROPS = (None, "pad", "resized", "center")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A per-sample augmentation recipe (see the module docstring for the exact semantics).

    Attributes:
        name: the recipe's name.
        views: independent views drawn per image (2 for contrastive views).
        crop: ``"pad"`` (random crop of the zero-padded image), ``"resized"`` (random resized
            crop), ``"center"`` (centre crop of ``crop_fraction``) or ``None`` (the whole image).
        padding: pixels of zero padding on each side for ``crop="pad"``.
        scale: area fraction range for ``crop="resized"``.
        ratio: aspect ratio (width / height) range for ``crop="resized"``.
        crop_fraction: side of the ``crop="center"`` square over the image's shorter side.
        flip: probability of a horizontal flip.
        jitter: (brightness, contrast, saturation, hue) strengths, or None for no colour jitter.
        jitter_p: probability that colour jitter is applied to a view.
        grayscale_p: probability that a view is turned to gray.
    """

    name: str
    views: int = 1
    crop: str | None = None
    padding: int = 4
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    crop_fraction: float = 0.875
    flip: float = 0.0
    jitter: tuple[float, float, float, float] | None = None
    jitter_p: float = 0.0
    grayscale_p: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.views, int) or self.views < 1:
            raise ValueError(f"views must be an integer >= 1; got {self.views!r}")
        if self.crop not in CROPS:
            raise ValueError(f"crop must be 'pad', 'resized', 'center' or None; got {self.crop!r}")
        if not 0 < self.crop_fraction <= 1:
            raise ValueError(f"crop_fraction must lie in (0, 1]; got {self.crop_fraction}")
        if not isinstance(self.padding, int) or self.padding < 0:
            raise ValueError(f"padding must be an integer >= 0; got {self.padding!r}")
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"scale must satisfy 0 < low <= high <= 1; got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < low <= high; got {self.ratio}")
        for field in ("flip", "jitter_p", "grayscale_p"):
            value = getattr(self, field)
            if not 0 <= value <= 1:
                raise ValueError(f"{field} must be a probability in [0, 1]; got {value}")
        if self.jitter is not None:
            if len(self.jitter) != 4 or min(self.jitter) < 0 or self.jitter[3] > 0.5:
                raise ValueError(
                    "jitter must be (brightness, contrast, saturation, hue) with strengths >= 0 and hue <= 0.5; "
                    f"got {self.jitter}"
                )


RECIPES: dict[str, Recipe] = {
    # The paper's "CHN": random crop with 4-pixel zero padding, horizontal flip, normalize.
    "train": Recipe("train", views=1, crop="pad", padding=4, flip=0.5),
    # CoUn's two views: two independent draws of "train".
    "two_view": Recipe("two_view", views=2, crop="pad", padding=4, flip=0.5),
    # SimCLR / SupCon views.
    "simclr": Recipe(
        "simclr", views=2, crop="resized", scale=(0.2, 1.0), flip=0.5,
        jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, grayscale_p=0.2,
    ),
    # The paper's "CHJGN" ablation: CHN plus colour jitter (0.8, 0.8, 0.8, 0.2) p=0.8 and grayscale p=0.2.
    "chjgn": Recipe(
        "chjgn", views=2, crop="pad", padding=4, flip=0.5,
        jitter=(0.8, 0.8, 0.8, 0.2), jitter_p=0.8, grayscale_p=0.2,
    ),
    # Evaluation: normalize only.
    "eval": Recipe("eval", views=1),
}


def get_recipe(recipe: "str | Recipe", **overrides) -> Recipe:
    """A recipe by name (``train``, ``two_view``, ``simclr``, ``chjgn``, ``eval``), or a copy with overrides."""
    if isinstance(recipe, Recipe):
        base = recipe
    elif recipe in RECIPES:
        base = RECIPES[recipe]
    else:
        raise ValueError(f"recipe must be a Recipe or one of {', '.join(map(repr, RECIPES))}; got {recipe!r}")
    return dataclasses.replace(base, **overrides) if overrides else base


def resized_form(recipe: Recipe) -> Recipe:
    """``recipe`` for images resized to the views' size (data sets of mixed image sizes, such as
    ImageNet, read at 224 px): the pad crop, which presumes images of the views' size, becomes
    the random resized crop of ``recipe.scale`` and ``recipe.ratio`` (torchvision's
    RandomResizedCrop, ImageNet's training crop), and no crop becomes the centre crop of
    ``recipe.crop_fraction`` (ImageNet's evaluation crop); resized and centre crops, flips and
    colour steps stay as they are."""
    if recipe.crop == "pad":
        return dataclasses.replace(recipe, crop="resized")
    if recipe.crop is None:
        return dataclasses.replace(recipe, crop="center")
    return recipe


class Normalization(NamedTuple):
    """Per-channel mean and std on the [0, 1] scale."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def normalization(mean, std) -> Normalization:
    """Validated per-channel statistics: three finite means and three finite stds > 0."""
    mean = tuple(float(m) for m in mean)
    std = tuple(float(s) for s in std)
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std must have 3 values (RGB); got {len(mean)} and {len(std)}")
    if not all(math.isfinite(m) for m in mean) or not all(math.isfinite(s) and s > 0 for s in std):
        raise ValueError(f"mean must be finite and std finite and > 0; got mean={mean}, std={std}")
    return Normalization(mean, std)  # type: ignore[arg-type]


def channel_stats(images: np.ndarray, *, chunk: int = 4096) -> Normalization:
    """Per-channel mean and std on the [0, 1] scale of uint8 NHWC ``images``, over all pixels.

    Computed in float64 chunks, so it needs little memory on a large data set.
    """
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 of shape (N, H, W, 3); got {images.dtype} {images.shape}")
    if len(images) == 0:
        raise ValueError("channel statistics need at least one image")
    total = np.zeros(3)
    squares = np.zeros(3)
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].reshape(-1, 3).astype(np.float64)
        total += block.sum(0)
        squares += np.square(block).sum(0)
    count = images.shape[0] * images.shape[1] * images.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0))
    std = np.where(std > 0, std, 255.0)  # a constant channel: leave it unscaled
    return normalization(mean / 255.0, std / 255.0)


class ViewParams(NamedTuple):
    """Per-sample parameters of one view of a batch of B images (all arrays have length B).

    ``box`` is (B, 4) int64 ``(top, left, height, width)`` in source pixels; ``flip`` and ``gray``
    are bool; ``jitter`` is (B, 4) float32 ``(brightness, contrast, saturation, hue)`` factors,
    the identity ``(1, 1, 1, 0)`` where jitter is not applied.
    """

    box: np.ndarray
    flip: np.ndarray
    jitter: np.ndarray
    gray: np.ndarray

    @property
    def has_jitter(self) -> bool:
        return bool(np.any(self.jitter != IDENTITY_JITTER))


IDENTITY_JITTER = np.array([1.0, 1.0, 1.0, 0.0], dtype=np.float32)


def _resized_crop_boxes(rng: np.random.Generator, batch: int, height, width, recipe: Recipe) -> np.ndarray:
    """torchvision's RandomResizedCrop box rule, vectorized: ten tries per sample, then a fallback.
    ``height`` and ``width`` are ints or (batch,) arrays of per-sample image sizes."""
    height = np.broadcast_to(np.asarray(height, np.int64), (batch,))
    width = np.broadcast_to(np.asarray(width, np.int64), (batch,))
    area = (height * width)[:, None]
    log_ratio = np.log(np.asarray(recipe.ratio))
    target = area * rng.uniform(recipe.scale[0], recipe.scale[1], size=(batch, 10))
    aspect = np.exp(rng.uniform(log_ratio[0], log_ratio[1], size=(batch, 10)))
    w = np.round(np.sqrt(target * aspect)).astype(np.int64)
    h = np.round(np.sqrt(target / aspect)).astype(np.int64)
    fits = (w > 0) & (h > 0) & (w <= width[:, None]) & (h <= height[:, None])
    first = np.argmax(fits, axis=1)
    rows = np.arange(batch)
    h, w = h[rows, first], w[rows, first]
    # Fallback (no try fits): the centre crop with the aspect ratio clipped to the range.
    in_ratio = width / height
    narrow, wide = in_ratio < recipe.ratio[0], in_ratio > recipe.ratio[1]
    fw = np.where(wide, np.round(height * recipe.ratio[1]), width).astype(np.int64)
    fh = np.where(narrow, np.round(width / recipe.ratio[0]), height).astype(np.int64)
    found = fits[rows, first]
    h = np.where(found, h, fh)
    w = np.where(found, w, fw)
    top = np.where(found, (rng.random(batch) * (height - h + 1)).astype(np.int64), (height - h) // 2)
    left = np.where(found, (rng.random(batch) * (width - w + 1)).astype(np.int64), (width - w) // 2)
    return np.stack([top, left, h, w], axis=1)


def _center_boxes(batch: int, height, width, fraction: float) -> np.ndarray:
    """The centred square of side ``round(fraction * min(H, W))`` (at least 1) per sample."""
    height = np.broadcast_to(np.asarray(height, np.int64), (batch,))
    width = np.broadcast_to(np.asarray(width, np.int64), (batch,))
    side = np.maximum(1, np.round(fraction * np.minimum(height, width))).astype(np.int64)
    return np.stack([(height - side) // 2, (width - side) // 2, side, side], axis=1)


def sample_params(
    recipe: Recipe, rng: np.random.Generator, batch: int, image_size, out_size: tuple[int, int] | None = None,
) -> list[ViewParams]:
    """Draw ``recipe.views`` independent :class:`ViewParams` for ``batch`` images of ``image_size``:
    one (H, W) for all, or a (batch, 2) array of per-sample (H, W).

    Views have ``out_size`` (default: ``image_size``, which must then be one size); pad crops have
    that size. The draws depend only on ``rng``'s state, so a seeded generator gives the same
    parameters on every backend and device.
    """
    sizes = np.asarray(image_size, dtype=np.int64)
    if sizes.ndim == 2:
        if sizes.shape != (batch, 2):
            raise ValueError(f"per-sample image sizes must have shape ({batch}, 2); got {sizes.shape}")
        height, width = sizes[:, 0], sizes[:, 1]
    else:
        height, width = int(sizes[0]), int(sizes[1])
    if out_size is None:
        if sizes.ndim == 2:
            raise ValueError("out_size is required with per-sample image sizes")
        out_size = (height, width)
    out_h, out_w = int(out_size[0]), int(out_size[1])
    views = []
    for _ in range(recipe.views):
        if recipe.crop == "pad":
            offsets = rng.integers(-recipe.padding, recipe.padding + 1, size=(batch, 2))
            box = np.concatenate([offsets, np.tile([out_h, out_w], (batch, 1))], axis=1)
        elif recipe.crop == "resized":
            box = _resized_crop_boxes(rng, batch, height, width, recipe)
        elif recipe.crop == "center":
            box = _center_boxes(batch, height, width, recipe.crop_fraction)
        else:
            box = np.zeros((batch, 4), np.int64)
            box[:, 2], box[:, 3] = height, width
        flip = rng.random(batch) < recipe.flip
        jitter = np.tile(IDENTITY_JITTER, (batch, 1))
        if recipe.jitter is not None:
            applied = rng.random(batch) < recipe.jitter_p
            b, c, s, h = recipe.jitter
            draws = np.stack(
                [
                    rng.uniform(max(0.0, 1 - b), 1 + b, batch),
                    rng.uniform(max(0.0, 1 - c), 1 + c, batch),
                    rng.uniform(max(0.0, 1 - s), 1 + s, batch),
                    rng.uniform(-h, h, batch),
                ],
                axis=1,
            ).astype(np.float32)
            jitter = np.where(applied[:, None], draws, jitter)
        gray = rng.random(batch) < recipe.grayscale_p
        views.append(ViewParams(box.astype(np.int64), flip, jitter.astype(np.float32), gray))
    return views


def batch_rng(seed: int, epoch: int, step: int) -> np.random.Generator:
    """The generator of one batch's augmentation: a function of (seed, epoch, step) alone, so a run
    resumed at any step draws the same views as an uninterrupted one."""
    return np.random.default_rng([seed, epoch, step, 0xA06])
