"""Image folders: the ImageNet layout ``root/<class>/<image files>`` and TinyImageNet.

Image files are those with extension .jpg, .jpeg, .png, .bmp or .webp (any case); other files are
ignored, as are entries whose name starts with a dot. Classes are the sorted folder names, files
are sorted by name within a class, and images are decoded with Pillow to RGB (grey, palette and
CMYK converted, alpha dropped) in a thread pool. With ``image_size`` (an int or (h, w)) every
image is resized to it (bilinear); without, all images of a split must share one size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from coun_fast.data._pil import as_size, decode_many
from coun_fast.data.dataset import DatasetSplits, ImageDataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
TEST_FOLDERS = ("val", "test")
TINY_IMAGENET_FOLDER = "tiny-imagenet-200"
_SIZE_HINT = "; pass image_size=(height, width) to resize every image to one size"


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()


def _image_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if _is_image(p)), key=lambda p: p.name)


def _subfolders(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _existing_dir(root: str | Path, what: str) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{what} does not exist: {root}")
    if not root.is_dir():
        raise ValueError(f"{what} must be a directory; got the file {root}")
    return root


def decode_files(
    files: Sequence[Path], labels: np.ndarray, classes: Sequence[str], *, name: str, split: str,
    image_size: object = None, threads: int | None = None,
) -> ImageDataset:
    """Decode ``files`` (with their ``labels``) into a decoded ImageDataset; see the module docstring."""
    size = as_size(image_size)
    if not files:
        raise ValueError(f"no image files for the {split} split of {name!r} (extensions {', '.join(IMAGE_EXTENSIONS)})")
    images = decode_many(
        len(files), lambda i: Image.open(files[i]), size=size, threads=threads,
        describe=lambda i: str(files[i]), size_hint=_SIZE_HINT,
    )
    return ImageDataset(name=name, split=split, labels=np.asarray(labels, np.int64), classes=tuple(classes), images=images)


def list_image_folder(root: str | Path, classes: Sequence[str] | None = None) -> tuple[tuple[str, ...], list[Path], list[int]]:
    """The classes, image files and labels of ``root/<class>/<image files>``.

    ``classes`` fixes the class names and their label order (a class may lack a folder, and then
    has no samples; a folder not in ``classes`` is an error); None takes the sorted folder names.
    Raises FileNotFoundError for a missing ``root`` and ValueError for no classes or no images.
    """
    root = _existing_dir(root, "image folder")
    folders = {p.name: p for p in _subfolders(root)}
    if classes is None:
        classes = tuple(folders)
        if not classes:
            raise ValueError(f"image folder {root} has no class subfolders; expected root/<class>/<image files>")
    else:
        classes = tuple(str(c) for c in classes)
        unknown = sorted(set(folders) - set(classes))
        if unknown:
            raise ValueError(f"image folder {root} has class folders not among the {len(classes)} classes given: {unknown[:10]}")
    files: list[Path] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        if cls in folders:
            found = _image_files(folders[cls])
            files += found
            labels += [label] * len(found)
    if not files:
        raise ValueError(f"image folder {root} holds no image files (extensions {', '.join(IMAGE_EXTENSIONS)}) in its class folders")
    return classes, files, labels


def load_image_folder_split(
    root: str | Path, classes: Sequence[str] | None = None, *, image_size: object = None,
    name: str | None = None, split: str = "train", threads: int | None = None,
) -> ImageDataset:
    """One split from ``root/<class>/<image files>`` (classes as :func:`list_image_folder` says).

    ``name`` defaults to the folder's name. Raises FileNotFoundError for a missing ``root``,
    ValueError for no images, undecodable images or (without ``image_size``) mixed sizes.
    """
    classes, files, labels = list_image_folder(root, classes)
    name = name or Path(root).expanduser().name
    return decode_files(files, np.asarray(labels), classes, name=name, split=split, image_size=image_size, threads=threads)


def split_folders(root: str | Path) -> tuple[Path, Path]:
    """``root/train`` and ``root/val`` (or ``root/test``); ValueError when either is missing."""
    root = _existing_dir(root, "image folder")
    train_dir = root / "train"
    test_dir = next((root / t for t in TEST_FOLDERS if (root / t).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise ValueError(
            f"image folder {root} must contain train/ and val/ (or test/) subfolders of classes; "
            f"for one folder of classes use load_image_folder_split"
        )
    return train_dir, test_dir


def _same_size(splits: DatasetSplits, image_size: object, root: Path) -> DatasetSplits:
    train, test = splits
    if image_size is None and train.image_size != test.image_size:
        raise ValueError(
            f"{root}: train images are {train.image_size[0]}x{train.image_size[1]} but test images are "
            f"{test.image_size[0]}x{test.image_size[1]} (HxW){_SIZE_HINT}"
        )
    return splits


def load_image_folder(
    root: str | Path, *, image_size: object = None, name: str | None = None, threads: int | None = None,
) -> DatasetSplits:
    """Train and test splits from ``root/train/<class>/...`` and ``root/val/<class>/...`` (or
    ``root/test/``); classes are the sorted folder names of ``train``, which the test split shares.

    ``name`` defaults to the name of ``root``. Without ``image_size`` both splits must share one
    image size. For a single folder of classes use :func:`load_image_folder_split`.
    """
    train_dir, test_dir = split_folders(root)
    root = train_dir.parent
    name = name or root.name
    train = load_image_folder_split(train_dir, image_size=image_size, name=name, split="train", threads=threads)
    test = load_image_folder_split(test_dir, train.classes, image_size=image_size, name=name, split="test", threads=threads)
    return _same_size(DatasetSplits(train, test), image_size, root)


def _tiny_root(root: str | Path) -> Path:
    root = _existing_dir(root, "TinyImageNet root")
    if (root / "train").is_dir():
        return root
    if (root / TINY_IMAGENET_FOLDER / "train").is_dir():
        return root / TINY_IMAGENET_FOLDER
    raise FileNotFoundError(f"no TinyImageNet at {root}: expected {root / 'train'} or {root / TINY_IMAGENET_FOLDER / 'train'}")


def _tiny_val(val: Path, classes: tuple[str, ...]) -> tuple[list[Path], list[int]]:
    """Files and labels of ``val/images`` from ``val/val_annotations.txt``, sorted by file name."""
    annotations = val / "val_annotations.txt"
    index = {wnid: i for i, wnid in enumerate(classes)}
    entries: dict[str, int] = {}
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise ValueError(f"{annotations} line {number}: expected tab-separated file name, wnid and box; got {line!r}")
        file_name, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in index:
            raise ValueError(f"{annotations} line {number}: class {wnid!r} of {file_name!r} is not a train class folder")
        if file_name in entries:
            raise ValueError(f"{annotations} line {number}: {file_name!r} is annotated twice")
        entries[file_name] = index[wnid]
    if not entries:
        raise ValueError(f"{annotations} annotates no images")
    files, labels = [], []
    for file_name in sorted(entries):
        path = val / "images" / file_name
        if not path.is_file():
            raise FileNotFoundError(f"{annotations} names {file_name!r}, but {path} does not exist")
        files.append(path)
        labels.append(entries[file_name])
    return files, labels


def load_tiny_imagenet(root: str | Path, *, image_size: object = None, threads: int | None = None) -> DatasetSplits:
    """TinyImageNet (``tiny-imagenet-200``, ``root`` is that folder or its parent), named "tinyimagenet".

    Train: ``train/<wnid>/images/*.JPEG`` (or images directly in ``train/<wnid>/``); classes are the
    sorted wnids. Test: the labelled validation set, ``val/images/*`` with
    ``val/val_annotations.txt`` (tab-separated file name, wnid, box), sorted by file name; a
    ``val/<wnid>/`` class layout is accepted too. Raises ValueError for an annotation naming an
    unknown wnid and FileNotFoundError for an annotated file that is missing.
    """
    root = _tiny_root(root)
    class_dirs = _subfolders(root / "train")
    if not class_dirs:
        raise ValueError(f"{root / 'train'} has no class (wnid) folders")
    classes = tuple(d.name for d in class_dirs)
    files: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(class_dirs):
        found = _image_files(folder / "images") if (folder / "images").is_dir() else []
        found = found or _image_files(folder)
        files += found
        labels += [label] * len(found)
    train = decode_files(files, np.asarray(labels), classes, name="tinyimagenet", split="train", image_size=image_size, threads=threads)
    val = root / "val"
    if (val / "val_annotations.txt").is_file():
        files, labels = _tiny_val(val, classes)
        test = decode_files(files, np.asarray(labels), classes, name="tinyimagenet", split="test", image_size=image_size, threads=threads)
    elif val.is_dir() and not (val / "images").is_dir():
        test = load_image_folder_split(val, classes, image_size=image_size, name="tinyimagenet", split="test", threads=threads)
    else:
        raise FileNotFoundError(
            f"no TinyImageNet validation set: expected {val / 'val_annotations.txt'} with {val / 'images'}, "
            f"or class folders {val}/<wnid>/"
        )
    return _same_size(DatasetSplits(train, test), image_size, root)
