"""Data sets that need no files: scikit-learn's bundled digits and generated synthetic images.

Both are small and deterministic under their seed, for tests, demos and quick experiments.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image

from coun_fast.data._pil import BILINEAR, as_size
from coun_fast.data.dataset import DatasetSplits, ImageDataset


def _positive_int(value: object, name: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}")
    return int(value)


def _stratified_test_mask(labels: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """True for the test samples: round(test_fraction * n_c) random samples of each class c
    (at least one, and at least one left for training when the class has two or more)."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        count = int(round(test_fraction * len(members)))
        count = min(max(count, 1), max(len(members) - 1, 1))
        test[rng.permutation(members)[:count]] = True
    return test


def load_digits(*, image_size: object = 32, test_fraction: float = 0.2, seed: int = 0) -> DatasetSplits:
    """scikit-learn's bundled handwritten digits (1,797 8x8 grey images, values 0..16), named "digits".

    Pixels are scaled to 0..255 (``round(v * 255 / 16)``), resized to ``image_size`` (an int or
    (h, w); bilinear, Pillow) and repeated over three equal channels; classes are "0" .. "9".
    The split is stratified: per class, ``round(test_fraction * n)`` samples chosen at random
    under ``seed`` go to the test split; both splits keep the original sample order.
    """
    size = as_size(image_size)
    if size is None:
        raise ValueError("image_size must be a positive int or a pair (height, width) for digits; got None")
    if not isinstance(test_fraction, (int, float)) or not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be a number strictly between 0 and 1; got {test_fraction!r}")
    from sklearn.datasets import load_digits as sklearn_digits  # bundled with scikit-learn; no download

    digits = sklearn_digits()
    grey = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    if grey.shape[1:] != size:
        grey = np.stack([np.asarray(Image.fromarray(g).resize((size[1], size[0]), BILINEAR)) for g in grey])
    images = np.repeat(grey[..., None], 3, axis=-1)
    labels = digits.target.astype(np.int64)
    classes = tuple(str(c) for c in range(10))
    test = _stratified_test_mask(labels, float(test_fraction), seed)
    return DatasetSplits(
        train=ImageDataset(name="digits", split="train", labels=labels[~test], classes=classes, images=images[~test]),
        test=ImageDataset(name="digits", split="test", labels=labels[test], classes=classes, images=images[test]),
    )


def _class_images(c: int, num_classes: int, count: int, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """``count`` images of class ``c``: its own hue and stripe direction and frequency, with a
    random stripe phase, brightness and pixel noise per image."""
    h, w = size
    colour = np.array(colorsys.hsv_to_rgb(c / num_classes, 0.8, 0.9)) * 255.0
    angle = math.pi * ((c * 0.6180339887) % 1.0)
    frequency = 2 + c % 3
    y, x = np.meshgrid(np.arange(h) / h, np.arange(w) / w, indexing="ij")
    along = x * math.cos(angle) + y * math.sin(angle)
    phase = rng.uniform(0.0, 2 * math.pi, (count, 1, 1))
    stripes = 0.55 + 0.45 * np.sin(2 * math.pi * frequency * along[None] + phase)
    brightness = rng.uniform(0.85, 1.15, (count, 1, 1, 1))
    noise = rng.normal(0.0, 12.0, (count, h, w, 3))
    return np.rint(colour * stripes[..., None] * brightness + noise).clip(0, 255).astype(np.uint8)


def synthetic(
    *, num_classes: int = 10, train_per_class: int = 50, test_per_class: int = 10,
    image_size: object = 32, seed: int = 0, name: str = "synthetic",
) -> DatasetSplits:
    """Generated images a small model can learn: class c has its own colour (hue c / num_classes)
    and stripe pattern; each image adds a random stripe phase, brightness and Gaussian noise.

    ``train_per_class`` and ``test_per_class`` images per class, in class order (labels
    0, 0, ..., 1, 1, ...), uint8 (N, h, w, 3) for ``image_size`` an int or (h, w); classes
    "class_0", "class_1", .... The same arguments give the same arrays.
    """
    num_classes = _positive_int(num_classes, "num_classes")
    train_per_class = _positive_int(train_per_class, "train_per_class")
    test_per_class = _positive_int(test_per_class, "test_per_class")
    size = as_size(image_size)
    if size is None:
        raise ValueError("image_size must be a positive int or a pair (height, width) for synthetic; got None")
    rng = np.random.default_rng(seed)
    classes = tuple(f"class_{c}" for c in range(num_classes))
    splits = []
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        images = np.concatenate([_class_images(c, num_classes, per_class, size, rng) for c in range(num_classes)])
        labels = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
        splits.append(ImageDataset(name=name, split=split, labels=labels, classes=classes, images=images))
    return DatasetSplits(*splits)
