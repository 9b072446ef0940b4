"""One entry point for every data set: :func:`load_dataset` by name (see :data:`DATASETS`).

File-based data sets are decoded once and kept in the disk cache of :mod:`.cache` (keyed by the
path, its modification times and the options); the built-in ones (digits, synthetic) are made
in memory each time.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from coun_fast.data._pil import as_size, resize_all
from coun_fast.data.cache import cache_key, cached_splits
from coun_fast.data.cifar import load_cifar10, load_cifar100
from coun_fast.data.convert import check_python_spec, is_arrays_npz, load_arrays_npz, load_python
from coun_fast.data.dataset import DatasetSplits
from coun_fast.data.embedded import load_digits, synthetic
from coun_fast.data.folder import load_image_folder, load_tiny_imagenet
from coun_fast.data.packed import load_npz
from coun_fast.data.shards import open_sharded

DATASETS: dict[str, str] = {
    "cifar10": "CIFAR-10: the cifar-10-batches-py pickle folder (or its parent), or a packed-JPEG .npz file",
    "cifar100": "CIFAR-100: the cifar-100-python pickle folder (or its parent; option label_kind='fine' or "
    "'coarse'), or a packed-JPEG .npz file",
    "tinyimagenet": "TinyImageNet: the tiny-imagenet-200 folder (or its parent)",
    "folder": "an image folder root/train/<class>/<images> with root/val/ (or root/test/); option name",
    "npz": "a .npz file: packed JPEG (keys {split}_jpeg, {split}_offsets, {split}_labels, classes) or arrays "
    "(train_images, train_labels, test_images, test_labels, optional classes; or Keras' x_train, y_train, x_test, "
    "y_test); option name",
    "python": "MODULE:FUNCTION or FILE.py:FUNCTION, a function of no arguments returning (train, test): torch "
    "Datasets of (image, label), (images, labels) arrays or ImageDatasets; option name",
    "npz": "a packed-JPEG .npz file (keys {split}_jpeg, {split}_offsets, {split}_labels, classes); option name",
    "sharded": "a folder of memory-mapped JPEG shards written by 'coun-fast data pack' (any size: read batch by "
    "batch, never whole); image_size: the views' size (default: the images' size when they share one, else 224); "
    "option name",
    "digits": "scikit-learn's bundled 8x8 digits (no path); options test_fraction, seed",
    "synthetic": "generated class-dependent images (no path); options num_classes, train_per_class, "
    "test_per_class, seed, name",
}
"""The data set names :func:`load_dataset` knows, each with what it reads."""

BUILT_IN = ("digits", "synthetic")
_OPTIONS: dict[str, frozenset[str]] = {
    "cifar10": frozenset({"threads"}),
    "cifar100": frozenset({"label_kind", "threads"}),
    "tinyimagenet": frozenset({"threads"}),
    "folder": frozenset({"name", "threads"}),
    "npz": frozenset({"name", "threads"}),
    "python": frozenset({"name"}),
    "sharded": frozenset({"name"}),
    "digits": frozenset({"test_fraction", "seed"}),
    "synthetic": frozenset({"num_classes", "train_per_class", "test_per_class", "seed", "name"}),
}


def _resized(splits: DatasetSplits, size: tuple[int, int] | None, threads: int | None) -> DatasetSplits:
    if size is None:
        return splits
    return DatasetSplits(
        *(dataclasses.replace(d, images=resize_all(d.images, size, threads=threads)) for d in splits)
    )


def load_dataset(
    name: str, /, path: str | Path | None = None, *, image_size: object = None, cache: bool = True,
    cache_dir: str | Path | None = None, decode: bool = True, **options: object,
) -> DatasetSplits:
    """The train and test splits of data set ``name`` (one of :data:`DATASETS`).

    Args:
        name: a key of :data:`DATASETS` (any case); positional, so that ``name=`` can be the
            option that names the loaded data set (folder, npz, synthetic).
        path: where the files are; required by every data set except digits and synthetic, which
            take none. For cifar10 and cifar100 a path ending in ``.npz`` is read as a packed file.
        image_size: None (the stored size; for digits and synthetic 32), an int or (h, w): every
            image is resized to it with bilinear interpolation.
        cache: keep the decoded arrays of file-based data sets in the disk cache
            (:mod:`coun_fast.data.cache`) and read them from there next time.
        cache_dir: the cache folder; None uses ``$COUN_FAST_CACHE`` or ``~/.cache/coun_fast``.
        decode: False keeps the JPEG bytes of a packed ``.npz`` file (for GPU decoding; never
            cached, no ``image_size``); only packed files support it. A ``sharded`` data set is
            always read from its shards batch by batch (``image_size`` is then its views' size).
        options: per data set (see :data:`DATASETS`); ``threads`` sets the decoding threads.

    Raises ValueError for an unknown name or option, a missing or superfluous path, an
    unsupported combination, or a CIFAR file with another number of classes; FileNotFoundError for a path that does not exist; and the loaders'
    own errors for malformed files.
    """
    kind = name.lower() if isinstance(name, str) else name
    if kind not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known data sets: {', '.join(DATASETS)}")
    unknown = sorted(set(options) - _OPTIONS[kind])
    if unknown:
        raise ValueError(f"dataset {kind!r} does not take the options {unknown}; it accepts {sorted(_OPTIONS[kind]) or 'none'}")
    size = as_size(image_size)

    if kind in BUILT_IN:
        if path is not None:
            raise ValueError(f"dataset {kind!r} is built in and takes no path; got {path!r}")
        if not decode:
            raise ValueError(f"decode=False keeps JPEG bytes, which only packed .npz files have; dataset {kind!r} has none")
        make = load_digits if kind == "digits" else synthetic
        return make(**options, **({} if size is None else {"image_size": size}))

    if path is None:
        raise ValueError(f"dataset {kind!r} needs a path: {DATASETS[kind]}")
    if kind == "python":  # the user's function, run on every load (nothing to key a cache on)
        if not decode:
            raise ValueError("decode=False keeps JPEG bytes, which only packed .npz files have; dataset 'python' has none")
        return load_python(str(path), image_size=size, **options)
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"dataset {kind!r}: path does not exist: {path}")
    if kind == "npz" and is_arrays_npz(path):  # arrays read as fast as the cache would be: not cached
        if not decode:
            raise ValueError(f"decode=False keeps JPEG bytes; {path} holds decoded arrays")
        options.pop("threads", None)
        return load_arrays_npz(path, image_size=size, **options)
    if kind == "sharded":
        return open_sharded(path, view_size=size, name=options.get("name"))
    packed = kind == "npz" or (kind in ("cifar10", "cifar100") and path.suffix.lower() == ".npz")
    if not decode and not packed:
        raise ValueError(f"decode=False keeps JPEG bytes, which only packed .npz files have; {path} is not one")
    if not decode and size is not None:
        raise ValueError("image_size resizes decoded images; it cannot be combined with decode=False")
    if packed and "label_kind" in options:
        raise ValueError(f"label_kind selects labels of the CIFAR-100 pickles; a packed file ({path}) has one set of labels")
    threads = options.pop("threads", None)
    if kind == "cifar100" and not packed:
        options.setdefault("label_kind", "fine")  # one cache entry whether or not it is spelled out

    def build() -> DatasetSplits:
        if packed:
            splits = load_npz(path, name=options.get("name", None if kind == "npz" else kind), decode=decode, threads=threads)
            return _resized(splits, size, threads) if decode else splits
        if kind == "cifar10":
            return _resized(load_cifar10(path), size, threads)
        if kind == "cifar100":
            return _resized(load_cifar100(path, **options), size, threads)
        if kind == "tinyimagenet":
            return load_tiny_imagenet(path, image_size=size, threads=threads)
        return load_image_folder(path, image_size=size, threads=threads, **options)

    if not decode or not cache:
        return _check_classes(kind, path, build())
    return _check_classes(kind, path, cached_splits(cache_key(kind, path, image_size=size, **options), build, cache_dir))


_CLASS_COUNTS = {"cifar10": (10,), "cifar100": (100, 20)}
"""The class counts of the CIFAR benchmarks (CIFAR-100: fine labels, or the 20 coarse ones); a
packed file given as one of them must have it."""


def _check_classes(kind: str, path: Path, splits: DatasetSplits) -> DatasetSplits:
    """``splits``, unless a CIFAR file has another number of classes (e.g. a CIFAR-10 file given
    as cifar100): then ValueError."""
    expected = _CLASS_COUNTS.get(kind)
    if expected is not None and splits.train.num_classes not in expected:
        raise ValueError(f"dataset {kind!r} has {' or '.join(map(str, expected))} classes, but {path} holds "
                         f"{splits.train.num_classes}; is it another data set? (use dataset 'npz' or 'folder' for "
                         "other data)")
    return splits


def resolve_location(name: str, path: object) -> str | None:
    """The location of data set ``name`` as a run records it: None for a built-in set, the Python
    source ``MODULE:FUNCTION`` (its file made absolute) for ``python``, else the absolute path of
    an existing file or folder. ValueError/FileNotFoundError, without reading any data, when it
    cannot be one."""
    kind = name.lower()
    if kind in BUILT_IN:
        if path is not None:
            raise ValueError(f"dataset {kind!r} is built in and takes no path; remove it")
        return None
    if path is None:
        raise ValueError(f"required for dataset {kind!r} ({DATASETS[kind]})")
    if kind == "python":
        return check_python_spec(path)
    if not isinstance(path, (str, Path)) or not Path(path).expanduser().exists():
        raise FileNotFoundError(f"no such file or folder: {str(path)!r}")
    return str(Path(path).expanduser().resolve())
