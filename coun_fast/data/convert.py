"""A user's own images into the in-memory form of :class:`~coun_fast.data.dataset.ImageDataset`.

Four ways in, each decoding once into uint8 (N, H, W, 3) RGB:

* :func:`from_arrays` (``ImageDataset.from_arrays``): arrays or tensors of images and labels;
* :func:`from_torch` (``ImageDataset.from_torch``): any map-style torch ``Dataset`` whose items
  are ``(image, label)``, read once in index order with a progress bar;
* :func:`load_arrays_npz`: a ``.npz`` file of arrays, both splits (``load_dataset("npz", path)``
  reads it, and so does ``coun-fast ... --dataset npz --data FILE.npz``); :func:`save_arrays`
  writes one;
* :func:`load_python`: ``MODULE:FUNCTION`` or ``FILE.py:FUNCTION``, a function of no arguments that
  returns both splits (``load_dataset("python", spec)``, ``--dataset python --data SPEC``).

What an image may be: a PIL image (any 8-bit mode: grey, palette, RGBA and CMYK become RGB); a
tensor or array of shape (H, W), (H, W, C) or (C, H, W) with C = 1 or 3, of uint8 (or another
integer type with values in 0..255) or floating point with values in [0, 1] (``ToTensor()``'s
output; rounded to the nearest of the 256 levels, so uint8 / 255 comes back exactly). Channels
come last for NumPy arrays and first for torch tensors when the shape alone cannot tell (3 x 3 x
3). Normalized images (values outside [0, 1]) are refused: coun_fast normalizes by itself, with
statistics of the training split. All images of a data set must have one size, unless
``image_size`` resizes them (bilinear). A label is an integer (a Python or NumPy integer, or a
one-element integer tensor); class names come from ``classes``, else the data set's own
``classes`` attribute (torchvision's data sets have one), else ``"0"``, ``"1"``, ...
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from coun_fast.data._pil import BILINEAR, as_size, to_rgb
from coun_fast.data.dataset import DatasetSplits, ImageDataset
from coun_fast.data.npzfile import read_npz, write_npz

log = logging.getLogger("coun_fast.data")

_FLOAT_SLACK = 1e-3
"""Float images may stray this far outside [0, 1] (rounding) before they are refused."""
ARRAY_KEYS = {"train_images": "train_labels", "test_images": "test_labels"}
KERAS_KEYS = {"x_train": "y_train", "x_test": "y_test"}
"""The two key schemes of a ``.npz`` of arrays: ours, and the one of Keras' data set files."""


# -- one image or a stack of them ------------------------------------------------------------------
def _numpy(value: Any) -> np.ndarray | None:
    """``value`` as a NumPy array if it is a tensor or an array (float16/bfloat16 tensors as float32)."""
    if isinstance(value, np.ndarray):
        return value
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.is_floating_point() and value.dtype != torch.float64:
            value = value.float()
        return value.numpy()
    return None


def _channels_last(shape: tuple[int, ...], channels_first: bool) -> bool | None:
    """For an image of ``shape`` (3 dimensions): True when channels come last, False when first,
    None when neither end is 1 or 3. ``channels_first`` breaks a tie (a torch tensor)."""
    first, last = shape[0] in (1, 3), shape[-1] in (1, 3)
    if first and last:
        return not channels_first
    return True if last else False if first else None


def _as_hwc(array: np.ndarray, *, batch: bool, channels_first: bool, what: str) -> np.ndarray:
    """``array`` (one image, or a stack of them with ``batch``) as (..., H, W, 3), values unchanged."""
    image_shape = array.shape[1:] if batch else array.shape
    if len(image_shape) == 2:
        array = array[..., None]
    elif len(image_shape) == 3:
        last = _channels_last(image_shape, channels_first)
        if last is None:
            raise ValueError(f"{what} has shape {tuple(array.shape)}: an image must have 1 or 3 channels, first "
                             "(C, H, W) or last (H, W, C)")
        if not last:
            array = np.moveaxis(array, -3, -1)
    else:
        layout = "(N, H, W), (N, H, W, C) or (N, C, H, W)" if batch else "(H, W), (H, W, C) or (C, H, W)"
        raise ValueError(f"{what} has shape {tuple(array.shape)}; expected {layout}")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return array


def _as_uint8(array: np.ndarray, what: str) -> np.ndarray:
    """Pixel values as uint8: integers in 0..255 as they are, floats in [0, 1] scaled and rounded."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_ or array.dtype.kind not in "iuf":
        raise ValueError(f"{what} has dtype {array.dtype}; images must be uint8, integers in 0..255 or floats in "
                         "[0, 1]")
    if array.size == 0:
        return array.astype(np.uint8)
    low, high = float(array.min()), float(array.max())
    if array.dtype.kind == "f":
        if not (np.isfinite(low) and np.isfinite(high)) or low < -_FLOAT_SLACK or high > 1 + _FLOAT_SLACK:
            raise ValueError(f"{what} has float values in [{low:.4g}, {high:.4g}]; float images must lie in [0, 1] "
                             "(ToTensor() without Normalize: coun_fast normalizes by itself), or give uint8")
        return np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    if low < 0 or high > 255:
        raise ValueError(f"{what} has integer values in [{low:.0f}, {high:.0f}]; integer images must lie in 0..255")
    return array.astype(np.uint8)


def _resized(image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is None or image.shape[:2] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), BILINEAR), dtype=np.uint8)


def image_array(image: Any, size: tuple[int, int] | None = None, *, what: str = "the image") -> np.ndarray:
    """One image (see the module docstring) as uint8 (H, W, 3) RGB, resized to ``size`` = (h, w)
    when given. ValueError/TypeError naming ``what`` for anything else."""
    if isinstance(image, Image.Image):
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            raise ValueError(f"{what} is a PIL image of mode {image.mode!r} (more than 8 bits); convert it to 'L' "
                             "or 'RGB' first")
        return to_rgb(image, size)
    array = _numpy(image)
    if array is None:
        raise TypeError(f"{what} is a {type(image).__name__}; expected a PIL image, a tensor or a NumPy array")
    channels_first = not isinstance(image, np.ndarray)
    hwc = _as_hwc(array, batch=False, channels_first=channels_first, what=what)
    return _resized(np.ascontiguousarray(_as_uint8(hwc, what)), size)


def label_value(label: Any, what: str = "the label") -> int:
    """An integer class label: a Python or NumPy integer, or a one-element integer tensor/array."""
    array = _numpy(label)
    if array is not None:
        if array.size != 1:
            raise ValueError(f"{what} has shape {tuple(array.shape)}; a label must be one integer (not one-hot)")
        label = array.reshape(()).item() if array.dtype.kind in "iu" else array.reshape(())[()]
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
        raise ValueError(f"{what} is {label!r} ({type(label).__name__}); a label must be an integer class index")
    return int(label)


def _classes(classes: Sequence[str] | None, labels: np.ndarray, source: Any = None) -> tuple[str, ...]:
    """``classes`` as given, else the ``classes`` of ``source`` (or of the data sets it wraps), else
    "0", "1", ... up to the largest label."""
    if classes is None:
        inner = source
        while inner is not None and classes is None:
            found = getattr(inner, "classes", None)
            if isinstance(found, (list, tuple)) and found:
                classes = found
            inner = getattr(inner, "dataset", None)
    if classes is None:
        classes = [str(c) for c in range(int(labels.max()) + 1 if labels.size else 1)]
    if isinstance(classes, np.ndarray):
        classes = classes.tolist()
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence) or not classes:
        raise ValueError(f"classes must be a non-empty sequence of names; got {classes!r}")
    return tuple(str(c) for c in classes)


# -- entry points ----------------------------------------------------------------------------------
def from_arrays(images: Any, labels: Any, classes: Sequence[str] | None = None, *, name: str = "arrays",
                split: str = "train", image_size: object = None) -> ImageDataset:
    """An :class:`ImageDataset` of ``images`` (a stack: (N, H, W), (N, H, W, C) or (N, C, H, W),
    C = 1 or 3, uint8 or floats in [0, 1]; or a sequence of single images) and ``labels`` (N
    integers); ``classes`` names the classes in label order (default "0", "1", ...)."""
    size = as_size(image_size)
    stack = _numpy(images)
    if stack is not None:
        what = "images"
        hwc = _as_hwc(stack, batch=True, channels_first=not isinstance(images, np.ndarray), what=what)
        pixels = np.ascontiguousarray(_as_uint8(hwc, what))
        if size is not None and pixels.shape[1:3] != size:
            pixels = np.stack([_resized(image, size) for image in pixels]) if len(pixels) else pixels
    elif isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
        pixels = _stacked([image_array(image, size, what=f"images[{i}]") for i, image in enumerate(images)])
    else:
        raise TypeError(f"images must be an array, a tensor or a sequence of images; got {type(images).__name__}")
    label_array = _numpy(labels)
    if label_array is None:
        label_array = np.asarray([label_value(label, f"labels[{i}]") for i, label in enumerate(labels)],
                                 dtype=np.int64)
    if label_array.ndim != 1 or (label_array.size and label_array.dtype.kind not in "iu"):
        raise ValueError(f"labels must be N integers; got dtype {label_array.dtype}, shape {tuple(label_array.shape)}")
    if len(label_array) != len(pixels):
        raise ValueError(f"images and labels disagree in length: {len(pixels)} images, {len(label_array)} labels")
    label_array = label_array.astype(np.int64)
    return ImageDataset(name, split, label_array, _classes(classes, label_array), images=pixels)


def _stacked(images: list[np.ndarray]) -> np.ndarray:
    """Same-size (H, W, 3) images as one (N, H, W, 3) array; ValueError naming the first odd one."""
    if not images:
        raise ValueError("images is empty; a data set needs at least one image")
    first = images[0].shape
    for i, image in enumerate(images):
        if image.shape != first:
            raise ValueError(f"images[{i}] is {image.shape[0]}x{image.shape[1]} but images[0] is "
                             f"{first[0]}x{first[1]}; give image_size to resize them all")
    return np.stack(images)


def _identity(item: Any) -> Any:
    return item


def from_torch(dataset: Any, *, classes: Sequence[str] | None = None, name: str | None = None, split: str = "train",
               image_size: object = None, workers: int = 0, progress: bool = True) -> ImageDataset:
    """An :class:`ImageDataset` of a map-style torch ``Dataset`` (``len`` and ``dataset[i]``) whose
    items are ``(image, label)``: every item read once, in index order (``workers`` > 0 reads them
    in that many processes through a ``DataLoader``), with a tqdm bar unless ``progress=False``.

    ``name`` defaults to the data set's class name; ``classes`` to its ``classes`` attribute;
    ``image_size`` (int or (h, w)) resizes every image, which images of several sizes need.
    ValueError/TypeError names the first item that is not an (image, label) pair of the accepted
    kinds (see the module docstring).
    """
    from tqdm.auto import tqdm

    if (not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__")
            or isinstance(dataset, (Mapping, str, bytes))):
        raise TypeError(f"dataset must be a map-style torch Dataset (with __len__ and __getitem__); got "
                        f"{type(dataset).__name__}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an integer >= 0; got {workers!r}")
    size = as_size(image_size)
    count = len(dataset)
    if count == 0:
        raise ValueError(f"dataset {type(dataset).__name__} is empty")
    name = name or type(dataset).__name__
    if workers:
        from torch.utils.data import DataLoader

        items = iter(DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers, collate_fn=_identity))
    else:
        items = (dataset[i] for i in range(count))
    pixels: np.ndarray | None = None
    labels = np.empty(count, dtype=np.int64)
    with tqdm(total=count, desc=f"{name} {split}", unit="img", disable=not progress) as bar:
        for i, item in enumerate(items):
            what = f"dataset[{i}]"
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                kind = f"a {len(item)}-tuple" if isinstance(item, (tuple, list)) else f"a {type(item).__name__}"
                raise ValueError(f"{what} is {kind}; from_torch needs items (image, label)")
            image = image_array(item[0], size, what=f"the image of {what}")
            if pixels is None:
                pixels = np.empty((count, *image.shape), dtype=np.uint8)
            elif image.shape != pixels.shape[1:]:
                raise ValueError(f"the image of {what} is {image.shape[0]}x{image.shape[1]} but the first is "
                                 f"{pixels.shape[1]}x{pixels.shape[2]}; pass image_size to resize them all")
            pixels[i] = image
            labels[i] = label_value(item[1], f"the label of {what}")
            bar.update()
    return ImageDataset(name, split, labels, _classes(classes, labels, dataset), images=pixels)


def _both_classes(classes, train_labels: np.ndarray, test_labels: np.ndarray, source: Any = None) -> tuple[str, ...]:
    """One list of class names for both splits (from the labels of both when none is given)."""
    return _classes(classes, np.concatenate([train_labels, test_labels]), source)


# -- a .npz of arrays ------------------------------------------------------------------------------
def _npz_keys(files: Sequence[str]) -> dict[str, str] | None:
    for scheme in (ARRAY_KEYS, KERAS_KEYS):
        if all(key in files for pair in scheme.items() for key in pair):
            return scheme
    return None


def is_arrays_npz(path: str | Path) -> bool:
    """Whether ``path`` is a ``.npz`` file of image arrays (:data:`ARRAY_KEYS` or :data:`KERAS_KEYS`)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return _npz_keys(archive.files) is not None
    except Exception:  # noqa: BLE001 - not a readable .npz (a damaged one is refused by the reader it goes to)
        return False


def load_arrays_npz(path: str | Path, *, name: str | None = None, image_size: object = None) -> DatasetSplits:
    """Both splits of a ``.npz`` file of arrays: ``train_images``, ``train_labels``,
    ``test_images``, ``test_labels`` and optionally ``classes`` (names in label order), or Keras'
    ``x_train``, ``y_train``, ``x_test``, ``y_test``; images as :func:`from_arrays` takes them.
    ``name`` defaults to the file's stem."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    arrays = read_npz(path, ".npz of arrays")
    scheme = _npz_keys(list(arrays))
    if scheme is None:
        raise ValueError(f"{path} holds the keys {sorted(arrays)}; a .npz of arrays needs "
                         f"{', '.join(k for pair in ARRAY_KEYS.items() for k in pair)} (and optionally "
                         f"classes), or Keras' {', '.join(k for pair in KERAS_KEYS.items() for k in pair)}")
    (train_x, train_y), (test_x, test_y) = ((arrays[x], arrays[y]) for x, y in scheme.items())
    classes = arrays.get("classes")
    classes = _both_classes(None if classes is None else classes.tolist(), np.asarray(train_y).reshape(-1),
                            np.asarray(test_y).reshape(-1))
    name = name or path.stem
    return DatasetSplits(*(from_arrays(x, y, classes, name=name, split=split, image_size=image_size)
                           for (x, y), split in (((train_x, train_y), "train"), ((test_x, test_y), "test"))))


def save_arrays(path: str | Path, splits: DatasetSplits) -> Path:
    """Write ``splits`` (decoded) as a ``.npz`` of arrays that :func:`load_arrays_npz` reads, to
    exactly ``path``, replaced atomically: convert a data set once, then point the command line at it."""
    train, test = (data.decoded() for data in splits)
    if train.classes != test.classes:
        raise ValueError("the training and test splits name different classes")
    return write_npz(path, {"train_images": train.images, "train_labels": train.labels, "test_images": test.images,
                             "test_labels": test.labels, "classes": np.asarray(train.classes, dtype=str)})


# -- a Python function -----------------------------------------------------------------------------
def check_python_spec(spec: object) -> str:
    """``MODULE:FUNCTION`` or ``FILE.py:FUNCTION`` checked for form (and the file for existence),
    with the file made absolute; ValueError/FileNotFoundError otherwise. Nothing is imported."""
    if not isinstance(spec, str) or spec.count(":") < 1:
        raise ValueError(f"a Python data source is MODULE:FUNCTION or FILE.py:FUNCTION; got {spec!r}")
    where, _, function = spec.rpartition(":")
    if not where or not function.isidentifier():
        raise ValueError(f"a Python data source is MODULE:FUNCTION or FILE.py:FUNCTION; got {spec!r}")
    if where.endswith(".py"):
        file = Path(where).expanduser()
        if not file.is_file():
            raise FileNotFoundError(f"no such Python file: {where}")
        return f"{file.resolve()}:{function}"
    if not all(part.isidentifier() for part in where.split(".")):
        raise ValueError(f"{where!r} is neither a module name nor a .py file (in {spec!r})")
    return spec


def _import(where: str):
    if where.endswith(".py"):
        file = Path(where)
        module_name = f"coun_fast_user_data_{hashlib.sha256(str(file).encode()).hexdigest()[:12]}"
        spec = importlib.util.spec_from_file_location(module_name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # so that worker processes and pickling find it
        spec.loader.exec_module(module)
        return module
    added = os.getcwd() not in sys.path  # the current folder, as `python -m` has it
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(where)
    finally:
        if added:
            sys.path.remove(os.getcwd())


def _split_pair(value: Any, spec: str) -> tuple[Any, Any]:
    if isinstance(value, DatasetSplits):
        return value
    if isinstance(value, dict) and {"train", "test"} <= set(value):
        return value["train"], value["test"]
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return value[0], value[1]
    raise ValueError(f"{spec} returned a {type(value).__name__}; it must return the training and test sets: a pair "
                     "(train, test) or a dict with keys train and test")


def _part(value: Any, split: str, name: str, classes, image_size, progress: bool) -> ImageDataset:
    """One split returned by a data function: an ImageDataset, a pair (images, labels) or a torch Dataset."""
    if isinstance(value, ImageDataset):
        return value
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return from_arrays(value[0], value[1], classes, name=name, split=split, image_size=image_size)
    return from_torch(value, classes=classes, name=name, split=split, image_size=image_size, progress=progress)


def load_python(spec: str, *, image_size: object = None, name: str | None = None) -> DatasetSplits:
    """Both splits from ``spec`` = ``MODULE:FUNCTION`` (imported with the current folder on the
    path) or ``FILE.py:FUNCTION``: the function, called without arguments, returns ``(train, test)``
    (or ``{"train": ..., "test": ...}``), each a torch Dataset of (image, label), a pair
    ``(images, labels)`` of arrays, or an ImageDataset. ``name`` defaults to the function's name;
    the class names are the training set's ``classes`` attribute, if any, for both splits. A torch
    Dataset is read with a progress bar when the package's informational messages are shown (the
    command line's default). It is read anew on every load (nothing is cached): save a large one
    once with :func:`save_arrays`."""
    spec = check_python_spec(spec)
    where, _, function_name = spec.rpartition(":")
    module = _import(where)
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ValueError(f"{where} has no function {function_name!r}")
    train, test = _split_pair(function(), spec)
    name = name or function_name
    progress = log.isEnabledFor(logging.INFO)
    first = _part(train, "train", name, None, image_size, progress)
    second = _part(test, "test", name, first.classes, image_size, progress)
    if second.classes != first.classes:
        raise ValueError(f"{spec}: the training and test sets name different classes")
    return DatasetSplits(first, second)


__all__ = ["check_python_spec", "from_arrays", "from_torch", "image_array", "is_arrays_npz", "label_value",
           "load_arrays_npz", "load_python", "save_arrays"]
