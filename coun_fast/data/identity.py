"""The identity of a loaded data set: what checkpoints, model files and split files record of it.

:func:`dataset_identity` holds the data set's name, its sizes (training and test samples,
classes, image size), SHA-256 digests of the training and test labels and of the class names,
and a digest of the content of up to :data:`SAMPLED_IMAGES` evenly spaced images of each split
(the stored bytes: pixels, or JPEG files of an encoded set). Two loads of the same files give the
same identity wherever the files are; a data set with other labels, other images at the sampled
positions, another size or another name gives another one. The source path is recorded beside
it (``record["data"]``), not in it, so moving the files does not change a run's identity.
"""

from __future__ import annotations

import numpy as np

from coun_fast.data.dataset import DatasetSplits, ImageDataset
from coun_fast.identity import array_digest, describe_differences, fingerprint

SAMPLED_IMAGES = 64
"""Images of each split whose stored bytes enter the identity."""


def _sampled_images(data: ImageDataset) -> list[np.ndarray]:
    if len(data) == 0:
        return []
    positions = np.unique(np.linspace(0, len(data) - 1, min(len(data), SAMPLED_IMAGES)).round().astype(np.int64))
    if data.images is not None:
        return [np.asarray(data.images[positions])]
    return [np.asarray(f) for f in data.encoded_arrays(positions)]  # JPEG files, in memory or in shards


def dataset_identity(splits: DatasetSplits) -> dict:
    """The identity of ``splits`` as a JSON-safe dict (see the module docstring)."""
    train, test = splits
    return {
        "name": train.name,
        "num_train": len(train),
        "num_test": len(test),
        "num_classes": train.num_classes,
        "image_size": list(train.image_size) if train.image_size else None,
        "class_names": fingerprint(list(train.classes)),
        "train_labels": array_digest(train.labels),
        "test_labels": array_digest(test.labels),
        "images": array_digest(*_sampled_images(train), *_sampled_images(test)),
    }


def check_same_dataset(recorded: dict | None, actual: dict, what: str) -> None:
    """Raise ValueError, saying what differs, unless ``recorded`` (the identity a file holds) is
    ``actual``'s; a file without one (made by hand, or by an older coun_fast) is not checked."""
    if recorded is None or recorded == actual:
        return
    raise ValueError(f"{what} was made on another data set than the {actual['name']!r} it is used with "
                     f"({describe_differences(recorded, actual)})")


__all__ = ["SAMPLED_IMAGES", "check_same_dataset", "dataset_identity"]
