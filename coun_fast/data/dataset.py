"""The image data set every loader returns and every pipeline reads.

An :class:`ImageDataset` holds one split of a data set in memory, in one of two forms:

* decoded: ``images`` is a uint8 array (N, H, W, 3), RGB, NHWC, all images the same size;
* encoded: ``jpeg`` is one flat uint8 array of concatenated JPEG files and ``offsets`` (N + 1,)
  int64 marks image i as ``jpeg[offsets[i]:offsets[i + 1]]`` (for decoding on the GPU).

plus ``labels`` (N,) int64 in ``[0, len(classes))`` and ``classes``, the class names in label
order. Grey images are stored as three equal channels, so every model sees RGB.

A user's own data comes in through :meth:`ImageDataset.from_torch` (a torch ``Dataset`` of
``(image, label)``) and :meth:`ImageDataset.from_arrays` (arrays or tensors); see :mod:`.convert`.
A third form, for data sets larger than memory, is the subclass
:class:`coun_fast.data.shards.ShardedDataset`: JPEG files in memory-mapped shard files, read
batch by batch (``encoded_arrays``), never whole.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
    """One split of an image classification data set, held in memory (see the module docstring)."""

    name: str
    split: str
    labels: np.ndarray
    classes: tuple[str, ...]
    images: np.ndarray | None = None
    jpeg: np.ndarray | None = None
    offsets: np.ndarray | None = None

    def __post_init__(self) -> None:
        self._check_labels()
        if (self.images is None) == (self.jpeg is None):
            raise ValueError("give exactly one of images (decoded uint8 NHWC) or jpeg + offsets (encoded)")
        if self.images is not None:
            images = self.images
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(f"images must be uint8 of shape (N, H, W, 3); got {images.dtype} {images.shape}")
            if len(images) != len(self.labels):
                raise ValueError(f"images and labels disagree in length: {len(images)} vs {len(self.labels)}")
        else:
            if self.offsets is None:
                raise ValueError("jpeg needs offsets (N + 1 int64 boundaries)")
            jpeg = np.asarray(self.jpeg)
            offsets = np.asarray(self.offsets).astype(np.int64, copy=False)
            if jpeg.dtype != np.uint8 or jpeg.ndim != 1:
                raise ValueError(f"jpeg must be a flat uint8 array; got {jpeg.dtype} {jpeg.shape}")
            count = len(self.labels)
            if offsets.shape != (count + 1,):
                raise ValueError(f"offsets must have shape ({count + 1},) for {count} labels; got {offsets.shape}")
            if offsets[0] != 0 or offsets[-1] != jpeg.size or np.any(np.diff(offsets) <= 0):
                raise ValueError("offsets must start at 0, rise strictly and end at len(jpeg)")
            object.__setattr__(self, "jpeg", jpeg)
            object.__setattr__(self, "offsets", offsets)

    def _check_labels(self) -> None:
        """Normalize ``classes`` to strings and ``labels`` to int64, checking they agree."""
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be a 1-D integer array; got dtype {labels.dtype}, shape {labels.shape}")
        labels = labels.astype(np.int64, copy=False)
        object.__setattr__(self, "labels", labels)
        if not self.classes:
            raise ValueError("classes must name at least one class")
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.classes)):
            raise ValueError(
                f"labels must lie in [0, {len(self.classes)}) for {len(self.classes)} classes; "
                f"got values in [{labels.min()}, {labels.max()}]"
            )

    # -- a user's own data -------------------------------------------------------------------
    @classmethod
    def from_torch(cls, dataset, *, classes: Sequence[str] | None = None, name: str | None = None,
                   split: str = "train", image_size: object = None, workers: int = 0,
                   progress: bool = True) -> "ImageDataset":
        """The items ``(image, label)`` of a map-style torch ``Dataset``, read once into memory
        with a progress bar (PIL images, HWC/CHW uint8 or [0, 1] float tensors or arrays); see
        :func:`coun_fast.data.convert.from_torch`."""
        from coun_fast.data.convert import from_torch

        return from_torch(dataset, classes=classes, name=name, split=split, image_size=image_size,
                          workers=workers, progress=progress)

    @classmethod
    def from_arrays(cls, images, labels, classes: Sequence[str] | None = None, *, name: str = "arrays",
                    split: str = "train", image_size: object = None) -> "ImageDataset":
        """``images`` ((N, H, W[, C]) or (N, C, H, W), uint8 or [0, 1] floats, arrays or tensors)
        with their integer ``labels``; see :func:`coun_fast.data.convert.from_arrays`."""
        from coun_fast.data.convert import from_arrays

        return from_arrays(images, labels, classes, name=name, split=split, image_size=image_size)

    # -- shape ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def is_encoded(self) -> bool:
        return self.images is None

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(H, W) of the decoded images; None while encoded (JPEG sizes are read when decoded)."""
        return None if self.images is None else (int(self.images.shape[1]), int(self.images.shape[2]))

    @property
    def view_size(self) -> tuple[int, int]:
        """(H, W) of the views loaders make of it: the images' size (for JPEG bytes read from the
        first file's header; all must agree)."""
        if self.images is not None:
            return self.image_size
        import io

        from PIL import Image

        width, height = Image.open(io.BytesIO(self.encoded(0))).size
        return height, width

    def encoded(self, index: int) -> bytes:
        """The JPEG file of image ``index`` (encoded data sets only)."""
        return self.encoded_arrays([index])[0].tobytes()

    def encoded_arrays(self, indices) -> list[np.ndarray]:
        """The JPEG files of images ``indices`` as uint8 arrays (views, no copy; encoded data sets only)."""
        if self.jpeg is None:
            raise ValueError(f"data set {self.name!r} ({self.split}) is decoded; it holds no JPEG bytes")
        offsets = self.offsets
        return [self.jpeg[offsets[i] : offsets[i + 1]] for i in np.asarray(indices, dtype=np.int64).tolist()]

    # -- derived data sets ------------------------------------------------------------------
    def decoded(self) -> "ImageDataset":
        """This data set with decoded uint8 images (itself when already decoded); see :mod:`.jpeg`."""
        if self.images is not None:
            return self
        from coun_fast.data.jpeg import decode_all

        return dataclasses.replace(self, images=decode_all(self.jpeg, self.offsets), jpeg=None, offsets=None)

    def subset(self, indices: Sequence[int] | np.ndarray) -> "ImageDataset":
        """The samples at ``indices``, in that order (decoded data sets only)."""
        index = np.asarray(indices, dtype=np.int64)
        if index.ndim != 1:
            raise ValueError(f"indices must be 1-D; got shape {index.shape}")
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise ValueError(f"indices must lie in [0, {len(self)}); got values in [{index.min()}, {index.max()}]")
        data = self.decoded()
        return dataclasses.replace(data, labels=data.labels[index], images=data.images[index])

    @functools.cached_property
    def normalization(self):
        """Per-channel (mean, std) on the [0, 1] scale over all images, computed once (decodes JPEG)."""
        from coun_fast.data.recipes import channel_stats

        return channel_stats(self.decoded().images)

    def class_counts(self) -> np.ndarray:
        """Number of samples per class, (num_classes,) int64."""
        return np.bincount(self.labels, minlength=self.num_classes)

    def summary(self) -> dict:
        """Name, split, size, image size, classes and per-class counts, as plain Python values."""
        return {
            "name": self.name,
            "split": self.split,
            "samples": len(self),
            "image_size": list(self.image_size) if self.image_size else "encoded JPEG",
            "stored_bytes": int(self.images.nbytes if self.images is not None else self.jpeg.nbytes),
            "num_classes": self.num_classes,
            "classes": list(self.classes),
            "class_counts": self.class_counts().tolist(),
        }


class DatasetSplits(NamedTuple):
    """The official training and test splits of one data set."""

    train: ImageDataset
    test: ImageDataset
