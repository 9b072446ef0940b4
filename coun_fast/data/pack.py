"""``coun-fast data pack SRC OUT``: write a data set as memory-mapped JPEG shards (:mod:`.shards`).

Sources (``source_kind="auto"`` tells them apart):

* ``folder``: an image folder in the ImageNet layout, ``SRC/train/<class>/<images>`` and
  ``SRC/val/<class>/...`` (or ``SRC/test/``); classes are the sorted folder names of ``train``,
  files are sorted by name within a class (as :mod:`.folder` reads them);
* ``npz``: a packed-JPEG ``.npz`` file (:mod:`.packed`);
* ``cifar10`` / ``cifar100``: the CIFAR pickle folders (:mod:`.cifar`), encoded as JPEG at
  ``quality``.

JPEG files in RGB or grey are copied byte for byte; any other image (PNG, CMYK JPEG, BMP, WebP,
...) is decoded, converted to RGB and encoded as a JPEG at ``quality``; the manifest counts
those (``reencoded``). Each image's size is read from its header. The training split's
normalization is computed from up to ``stats_images`` evenly spaced training images (all pixels
of each). OUT is written as a unit under its lock (:func:`coun_fast.runfolder.staged`): in the
sibling ``.OUT.partial/``, renamed into place when everything is written, so a failed or
interrupted pack leaves no OUT and an existing OUT untouched (``overwrite`` replaces a packed
data set only when the new one is complete; a folder of other files is never replaced).
"""

from __future__ import annotations

import hashlib
import io
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np
from PIL import Image

from coun_fast.data._pil import as_threads, decode_one
from coun_fast.data.shards import (
    END_MAGIC, FOOTER, FORMAT, FORMAT_VERSION, HEADER, MAGIC, MANIFEST, SHARD_VERSION, SPLITS, _padded, index_digest,
    open_sharded, read_manifest, shard_name, write_manifest,
)

SOURCE_KINDS = ("auto", "folder", "npz", "cifar10", "cifar100")
VERBATIM_MODES = ("RGB", "L")
BLOCK = 512  # images read (and probed, or encoded) in parallel at a time


class Sample(NamedTuple):
    """One image to pack: its JPEG file, label, (H, W) and whether it was re-encoded."""

    data: bytes
    label: int
    size: tuple[int, int]
    reencoded: bool


class SplitSource(NamedTuple):
    count: int
    samples: Iterator[Sample]


class Source(NamedTuple):
    name: str
    classes: tuple[str, ...]
    splits: dict[str, SplitSource]
    description: dict


def _encode(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(quality))
    return buffer.getvalue()


def as_jpeg(data: bytes, label: int, quality: int, describe: Callable[[], str]) -> Sample:
    """``data`` (an encoded image) as a :class:`Sample`: verbatim when it is an RGB or grey
    JPEG, else decoded, converted to RGB and encoded at ``quality``."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if image.format == "JPEG" and image.mode in VERBATIM_MODES:
                return Sample(bytes(data), label, (height, width), False)
    except Exception as exc:  # not an image Pillow knows
        raise ValueError(f"cannot read {describe()}: {type(exc).__name__}: {exc}") from exc
    rgb = Image.fromarray(decode_one(data, describe))
    return Sample(_encode(rgb, quality), label, (height, width), True)


def _blocks(count: int, load: Callable[[int], Sample], threads: int) -> Iterator[Sample]:
    """``load(i)`` for i in 0..count-1, in order, :data:`BLOCK` at a time in ``threads`` threads."""
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="coun-fast-pack") as pool:
        for start in range(0, count, BLOCK):
            yield from pool.map(load, range(start, min(start + BLOCK, count)))


def folder_source(root: Path, quality: int, threads: int) -> Source:
    from coun_fast.data.folder import list_image_folder, split_folders

    train_dir, test_dir = split_folders(root)
    classes, files, labels = list_image_folder(train_dir)
    splits = {}
    for split, listing in (("train", (files, labels)), ("test", list_image_folder(test_dir, classes)[1:])):
        def load(i: int, files=listing[0], labels=listing[1]) -> Sample:
            return as_jpeg(files[i].read_bytes(), labels[i], quality, lambda: str(files[i]))

        splits[split] = SplitSource(len(listing[0]), _blocks(len(listing[0]), load, threads))
    return Source(root.name, classes, splits, {"kind": "folder", "path": str(root)})


def npz_source(path: Path, quality: int, threads: int) -> Source:
    from coun_fast.data.packed import load_npz

    loaded = load_npz(path, decode=False)
    splits = {}
    for split, data in zip(SPLITS, loaded):
        def load(i: int, data=data) -> Sample:
            return as_jpeg(data.encoded_arrays([i])[0], int(data.labels[i]), quality, lambda: f"{path} {split} image {i}")

        splits[split] = SplitSource(len(data), _blocks(len(data), load, threads))
    return Source(path.stem, loaded.train.classes, splits, {"kind": "npz", "path": str(path)})


def cifar_source(root: Path, kind: str, quality: int, threads: int, label_kind: str) -> Source:
    from coun_fast.data.cifar import load_cifar10, load_cifar100

    loaded = load_cifar10(root) if kind == "cifar10" else load_cifar100(root, label_kind=label_kind)
    splits = {}
    for split, data in zip(SPLITS, loaded):
        def load(i: int, data=data) -> Sample:
            image = data.images[i]
            return Sample(_encode(Image.fromarray(image), quality), int(data.labels[i]), image.shape[:2], True)

        splits[split] = SplitSource(len(data), _blocks(len(data), load, threads))
    return Source(kind, loaded.train.classes, splits, {"kind": kind, "path": str(root), "quality": quality})


def detect_kind(src: Path) -> str:
    """The kind of source ``src`` is (see the module docstring)."""
    if src.is_file():
        if src.suffix.lower() == ".npz":
            return "npz"
        raise ValueError(f"{src} is a file but not a packed .npz; pack an image folder, a .npz or a CIFAR folder")
    for marker, folder, kind in (("batches.meta", "cifar-10-batches-py", "cifar10"), ("meta", "cifar-100-python", "cifar100")):
        if (src / marker).is_file() or (src / folder / marker).is_file():
            return kind
    if (src / "train").is_dir():
        return "folder"
    raise ValueError(f"cannot tell what {src} holds: expected an image folder with train/ and val/, a packed .npz, "
                     "or a CIFAR pickle folder (say which with --format)")


class ShardWriter:
    """Writes one split's images into shard files of about ``shard_bytes`` bytes each."""

    def __init__(self, folder: Path, split: str, shard_bytes: int, num_classes: int) -> None:
        self.folder, self.split, self.shard_bytes = folder, split, shard_bytes
        self.entries: list[dict] = []
        self.class_counts = np.zeros(num_classes, np.int64)
        self.min_size = self.max_size = None
        self.reencoded = 0
        self._file = None

    def _open(self) -> None:
        self._path = self.folder / shard_name(self.split, len(self.entries))
        self._file = open(self._path, "wb")
        self._hash = hashlib.sha256()
        self._offsets, self._labels, self._heights, self._widths, self._crcs = [0], [], [], [], []
        self._write(HEADER.pack(MAGIC, SHARD_VERSION, 0))

    def _write(self, data) -> None:
        self._file.write(data)
        self._hash.update(data)

    def add(self, sample: Sample) -> None:
        if self._file is None:
            self._open()
        self._write(sample.data)
        self._offsets.append(self._offsets[-1] + len(sample.data))
        self._labels.append(sample.label)
        self._heights.append(sample.size[0])
        self._widths.append(sample.size[1])
        self._crcs.append(zlib.crc32(sample.data))
        self.class_counts[sample.label] += 1
        self.reencoded += bool(sample.reencoded)
        size = np.asarray(sample.size)
        self.min_size = size if self.min_size is None else np.minimum(self.min_size, size)
        self.max_size = size if self.max_size is None else np.maximum(self.max_size, size)
        if self._offsets[-1] >= self.shard_bytes:
            self._close_shard()

    def _close_shard(self) -> None:
        data_bytes = self._offsets[-1]
        self._write(bytes(_padded(data_bytes) - data_bytes))
        count = len(self._labels)
        index = (np.asarray(self._offsets, np.int64).tobytes() + np.asarray(self._labels, np.int64).tobytes()
                 + np.asarray(self._heights, np.int32).tobytes() + np.asarray(self._widths, np.int32).tobytes()
                 + np.asarray(self._crcs, np.uint32).tobytes())
        footer = FOOTER.pack(count, data_bytes, HEADER.size + _padded(data_bytes), END_MAGIC)
        self._write(index)
        self._write(footer)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        self.entries.append({"file": self._path.name, "samples": count, "bytes": self._path.stat().st_size,
                             "sha256": self._hash.hexdigest(),
                             "index_digest": index_digest(HEADER.pack(MAGIC, SHARD_VERSION, 0), index, footer)})

    def close(self) -> dict:
        """Finish the last shard; the split's manifest entry."""
        if self._file is not None:
            self._close_shard()
        return {
            "samples": int(self.class_counts.sum()), "class_counts": self.class_counts.tolist(),
            "image_sizes": {"min": None if self.min_size is None else self.min_size.tolist(),
                            "max": None if self.max_size is None else self.max_size.tolist()},
            "reencoded": self.reencoded, "shards": self.entries,
        }

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def channel_moments(folder: Path, images: int, threads: int) -> dict:
    """Per-channel mean and std on the [0, 1] scale over all pixels of up to ``images`` evenly
    spaced training images of the packed data set in ``folder``."""
    train = open_sharded(folder).train
    if len(train) == 0:
        raise ValueError("the training split is empty: there are no images to compute the normalization from")
    count = len(train) if images <= 0 else min(images, len(train))
    positions = np.unique(np.linspace(0, len(train) - 1, count).round().astype(np.int64))

    def moments(chunk: np.ndarray) -> np.ndarray:
        total = np.zeros(7)
        for image in train.decode(chunk):
            pixels = image.reshape(-1, 3).astype(np.float64)
            total[:3] += pixels.sum(0)
            total[3:6] += np.square(pixels).sum(0)
            total[6] += len(pixels)
        return total

    chunks = np.array_split(positions, max(1, min(len(positions), threads * 8)))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        total = sum(pool.map(moments, chunks))
    mean = total[:3] / total[6]
    std = np.sqrt(np.maximum(total[3:6] / total[6] - mean**2, 0.0))
    std = np.where(std > 0, std, 255.0)
    return {"mean": (mean / 255).tolist(), "std": (std / 255).tolist(), "images": int(len(positions))}


def pack(src: str | os.PathLike, out: str | os.PathLike, *, source_kind: str = "auto", name: str | None = None,
         shard_mib: float = 256, quality: int = 95, stats_images: int = 50_000, threads: int | None = None,
         label_kind: str = "fine", overwrite: bool = False, progress: bool = True) -> Path:
    """Pack the data set at ``src`` into the folder ``out`` (see the module docstring); returns ``out``.

    Raises FileNotFoundError for a missing ``src``; ValueError for a bad argument, an unreadable
    source or an ``out`` that cannot be written (a packed data set there needs ``overwrite``)."""
    from coun_fast.files import check_writable_location
    from coun_fast.runfolder import check_target, staged

    src = Path(src).expanduser()
    if not src.exists():
        raise FileNotFoundError(f"SRC does not exist: {src}")
    if source_kind not in SOURCE_KINDS:
        raise ValueError(f"format must be one of {', '.join(SOURCE_KINDS)}; got {source_kind!r}")
    if not isinstance(shard_mib, (int, float)) or not shard_mib > 0:
        raise ValueError(f"shard size must be a number of MiB > 0; got {shard_mib!r}")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be an int in [1, 100]; got {quality!r}")
    if isinstance(stats_images, bool) or not isinstance(stats_images, int) or stats_images < 0:
        raise ValueError(f"stats images must be an int >= 0 (0: all); got {stats_images!r}")
    workers = as_threads(threads)
    check_writable_location(out, "OUT")
    check_target(out, overwrite=overwrite, what="packed data set", ours=is_packed)
    kind = detect_kind(src) if source_kind == "auto" else source_kind
    if kind == "folder":
        source = folder_source(src, quality, workers)
    elif kind == "npz":
        source = npz_source(src, quality, workers)
    else:
        source = cifar_source(src, kind, quality, workers, label_kind)
    with staged(out, overwrite=overwrite, what="packed data set", ours=is_packed) as work:
        splits = {}
        bar = _bar(sum(s.count for s in source.splits.values()), progress)
        for split in SPLITS:
            writer = ShardWriter(work, split, int(shard_mib * 1024**2), len(source.classes))
            try:
                for sample in source.splits[split].samples:
                    writer.add(sample)
                    if bar is not None:
                        bar.update(1)
                splits[split] = writer.close()
            except BaseException:
                writer.abort()
                raise
        if bar is not None:
            bar.close()
        sizes = {tuple(s["image_sizes"][k]) for s in splits.values() for k in ("min", "max") if s["image_sizes"][k]}
        digest = hashlib.sha256("".join(f"{split}/{e['file']}:{e['sha256']}\n" for split in SPLITS
                                        for e in splits[split]["shards"]).encode()).hexdigest()
        manifest = {"format": FORMAT, "version": FORMAT_VERSION, "name": name or source.name,
                    "classes": list(source.classes), "image_size": list(sizes.pop()) if len(sizes) == 1 else None,
                    "source": source.description, "content_sha256": digest, "splits": splits,
                    "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3, "images": 0}}
        # The statistics are read back through the shards, which open_sharded finds through a
        # manifest: a first one (in the partial folder only) with placeholders, then the final one.
        write_manifest(work / MANIFEST, manifest)
        manifest["normalization"] = channel_moments(work, stats_images, workers)
        write_manifest(work / MANIFEST, manifest)
    return Path(out)


def is_packed(folder: Path) -> bool:
    """Whether ``folder`` holds a packed data set (a readable coun_fast shards manifest)."""
    try:
        read_manifest(folder)
    except (OSError, ValueError):
        return False
    return True


def _bar(total: int, progress: bool):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="pack", unit="img", unit_scale=True, dynamic_ncols=True)
