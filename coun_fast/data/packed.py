"""The packed-JPEG ``.npz`` format: both splits of a data set as concatenated JPEG files.

Keys (no pickled objects, so ``np.load(path, allow_pickle=False)`` reads it), for split in
``train`` and ``test``:

* ``{split}_jpeg``: uint8 (bytes,), the split's JPEG files concatenated;
* ``{split}_offsets``: int64 (N + 1,), image i is ``{split}_jpeg[offsets[i]:offsets[i + 1]]``;
* ``{split}_labels``: int64 (N,), class indices;
* ``classes``: str (num_classes,), the class names in label order;
* ``digest`` (written by coun_fast; optional): the SHA-256 of the other arrays, checked on load
  (:mod:`coun_fast.data.npzfile`).

Keeping the JPEG bytes lets the GPU decode them (``decode=False``); ``decode=True`` decodes them
on the CPU with Pillow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from coun_fast.data.dataset import DatasetSplits, ImageDataset
from coun_fast.data.jpeg import decode_all, encode_all
from coun_fast.data.npzfile import read_npz, write_npz

SPLITS = ("train", "test")
REQUIRED_KEYS = ("classes",) + tuple(f"{s}_{part}" for s in SPLITS for part in ("jpeg", "offsets", "labels"))


def load_npz(path: str | Path, *, name: str | None = None, decode: bool = True, threads: int | None = None) -> DatasetSplits:
    """Both splits of a packed-JPEG ``.npz`` file (see the module docstring).

    ``name`` defaults to the file's stem. With ``decode=True`` the images are decoded on the CPU
    (``threads`` threads, None: one per core) to uint8 (N, H, W, 3); with ``decode=False`` the data
    sets stay encoded (``jpeg`` + ``offsets``). Raises FileNotFoundError for a missing file and
    ValueError for an unreadable or damaged file (one whose arrays do not match its digest),
    missing keys (listing those present and those required) or inconsistent arrays.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"packed data set file does not exist: {path}")
    arrays = read_npz(path, "packed data set")
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise ValueError(
            f"packed data set {path} lacks the keys {missing}; keys present: {sorted(arrays)}; "
            f"required: {list(REQUIRED_KEYS)}"
        )
    classes = arrays["classes"]
    if classes.ndim != 1 or classes.dtype.kind not in "US":
        raise ValueError(f"{path}: 'classes' must be a 1-D str array; got {classes.dtype} {classes.shape}")
    names = tuple(c.decode("utf-8") if isinstance(c, bytes) else str(c) for c in classes.tolist())
    name = name or path.stem
    splits = []
    for split in SPLITS:
        try:
            data = ImageDataset(
                name=name, split=split, labels=arrays[f"{split}_labels"], classes=names,
                jpeg=arrays[f"{split}_jpeg"], offsets=arrays[f"{split}_offsets"],
            )
            if decode:
                data = ImageDataset(
                    name=name, split=split, labels=data.labels, classes=names,
                    images=decode_all(data.jpeg, data.offsets, threads=threads),
                )
        except ValueError as exc:
            raise ValueError(f"{path} ({split} split): {exc}") from exc
        splits.append(data)
    return DatasetSplits(*splits)


def save_npz(path: str | Path, splits: DatasetSplits, quality: int = 95, *, threads: int | None = None) -> Path:
    """Write ``splits`` in the packed-JPEG format to ``path`` (exactly that name; replaced atomically).

    Encoded data sets are written as they are; decoded ones are encoded with
    :func:`~coun_fast.data.jpeg.encode_all` at ``quality``. Both splits must share their classes.
    Returns the path written.
    """
    train, test = splits
    if train.classes != test.classes:
        raise ValueError(f"train and test splits must share their classes to be packed; got {train.classes} vs {test.classes}")
    path = Path(path).expanduser()
    arrays: dict[str, np.ndarray] = {"classes": np.asarray(train.classes, dtype=str)}
    for split, data in zip(SPLITS, (train, test)):
        jpeg, offsets = (data.jpeg, data.offsets) if data.is_encoded else encode_all(data.images, quality, threads=threads)
        arrays[f"{split}_jpeg"] = np.asarray(jpeg, np.uint8)
        arrays[f"{split}_offsets"] = np.asarray(offsets, np.int64)
        arrays[f"{split}_labels"] = np.asarray(data.labels, np.int64)
    return write_npz(path, arrays)
