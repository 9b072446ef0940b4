"""CIFAR-10 and CIFAR-100 from their official "python version" pickle folders.

Layouts (as released by the CIFAR authors; each file a pickled dict with bytes keys):

* ``cifar-10-batches-py/``: ``data_batch_1`` .. ``data_batch_5`` (train), ``test_batch``, each with
  ``b"data"`` (N, 3072) uint8 and ``b"labels"``; ``batches.meta`` with ``b"label_names"``.
* ``cifar-100-python/``: ``train``, ``test``, each with ``b"data"``, ``b"fine_labels"`` and
  ``b"coarse_labels"``; ``meta`` with ``b"fine_label_names"`` and ``b"coarse_label_names"``.

A row of ``b"data"`` is one 32x32 image, row-major channel-first (1024 red, 1024 green, 1024 blue
values); the loaders return it as NHWC. The pickles are read with a restricted unpickler that only
rebuilds NumPy arrays and plain Python values, so a tampered file cannot run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from coun_fast.data.dataset import DatasetSplits, ImageDataset

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR100_FOLDER = "cifar-100-python"
LABEL_KINDS = ("fine", "coarse")

_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]
_SCALAR = np.int64(0).__reduce__()[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]  # how NumPy pickles arrays with protocol 5
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles NumPy arrays, scalars and plain containers; refuses every other global."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "_codecs" and name == "encode":  # bytes pickled by Python 3 with protocol < 3
            import codecs

            return codecs.encode
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR pickle holds only NumPy arrays and lists")


def _find_folder(root: str | Path, folder: str, marker: str) -> Path:
    """``root`` itself when it holds ``marker``, else ``root/folder``."""
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"CIFAR root does not exist: {root}")
    if (root / marker).is_file():
        return root
    if (root / folder / marker).is_file():
        return root / folder
    raise FileNotFoundError(
        f"no CIFAR data at {root}: expected the folder {folder!r} (with {marker!r} inside) or its parent; "
        f"found neither {root / marker} nor {root / folder / marker}"
    )


def _read_pickle(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR file is missing: {path}")
    try:
        with open(path, "rb") as f:
            content = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise ValueError(f"cannot read CIFAR pickle {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(content, dict):
        raise ValueError(f"CIFAR pickle {path} must hold a dict with bytes keys; got {type(content).__name__}")
    return content


def _entry(content: dict, key: bytes, path: Path) -> object:
    if key not in content:
        present = sorted(k.decode("latin-1") if isinstance(k, bytes) else str(k) for k in content)
        raise ValueError(f"CIFAR pickle {path} lacks the key {key!r}; keys present: {present}")
    return content[key]


def _read_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 32, 32, 3), labels int64 (N,)) of one batch file."""
    content = _read_pickle(path)
    data = np.asarray(_entry(content, b"data", path))
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: b'data' must have shape (N, 3072) (32x32 RGB rows); got {data.shape}")
    if data.dtype != np.uint8:
        if not np.issubdtype(data.dtype, np.integer) or (data.size and (data.min() < 0 or data.max() > 255)):
            raise ValueError(f"{path}: b'data' must hold uint8 pixel values 0..255; got dtype {data.dtype}")
        data = data.astype(np.uint8)
    labels = np.asarray(_entry(content, label_key, path))
    if labels.shape != (len(data),) or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(
            f"{path}: {label_key!r} must be {len(data)} integer labels, one per row of b'data'; "
            f"got dtype {labels.dtype}, shape {labels.shape}"
        )
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels.astype(np.int64)


def _read_names(path: Path, key: bytes) -> tuple[str, ...]:
    names = _entry(_read_pickle(path), key, path)
    if not isinstance(names, (list, tuple)) or not names:
        raise ValueError(f"{path}: {key!r} must be a non-empty list of class names; got {type(names).__name__}")
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)


def _split(name: str, split: str, parts: list[tuple[np.ndarray, np.ndarray]], classes: tuple[str, ...], where: Path) -> ImageDataset:
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    try:
        return ImageDataset(name=name, split=split, labels=labels, classes=classes, images=images)
    except ValueError as exc:
        raise ValueError(f"{where} ({split} split): {exc}") from exc


def load_cifar10(root: str | Path) -> DatasetSplits:
    """CIFAR-10 from ``cifar-10-batches-py`` (``root`` is that folder or its parent).

    Returns DatasetSplits named "cifar10": train (50,000 images of the five data batches, in
    order) and test (10,000), uint8 (N, 32, 32, 3), 10 classes in the file's label order.
    Raises FileNotFoundError for a missing folder or file, ValueError for malformed contents.
    """
    folder = _find_folder(root, CIFAR10_FOLDER, "batches.meta")
    classes = _read_names(folder / "batches.meta", b"label_names")
    train = [_read_batch(folder / f"data_batch_{i}", b"labels") for i in range(1, 6)]
    test = [_read_batch(folder / "test_batch", b"labels")]
    return DatasetSplits(
        train=_split("cifar10", "train", train, classes, folder),
        test=_split("cifar10", "test", test, classes, folder),
    )


def load_cifar100(root: str | Path, *, label_kind: str = "fine") -> DatasetSplits:
    """CIFAR-100 from ``cifar-100-python`` (``root`` is that folder or its parent).

    ``label_kind`` "fine" gives the 100 classes, "coarse" the 20 superclasses. Returns
    DatasetSplits named "cifar100": train (50,000) and test (10,000), uint8 (N, 32, 32, 3).
    Raises FileNotFoundError for a missing folder or file, ValueError for malformed contents.
    """
    if label_kind not in LABEL_KINDS:
        raise ValueError(f"label_kind must be one of {LABEL_KINDS}; got {label_kind!r}")
    folder = _find_folder(root, CIFAR100_FOLDER, "meta")
    label_key = f"{label_kind}_labels".encode()
    classes = _read_names(folder / "meta", f"{label_kind}_label_names".encode())
    return DatasetSplits(
        train=_split("cifar100", "train", [_read_batch(folder / "train", label_key)], classes, folder),
        test=_split("cifar100", "test", [_read_batch(folder / "test", label_key)], classes, folder),
    )
