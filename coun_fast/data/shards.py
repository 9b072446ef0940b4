"""Sharded data sets: JPEG files in memory-mapped shard files, for data sets larger than memory.

A packed data set is a folder (written by ``coun-fast data pack``, :mod:`coun_fast.data.pack`):

* ``manifest.json``: ``{"format": "coun_fast.shards", "version": 1, "name", "classes",
  "image_size"`` (the (H, W) every image has, or null when sizes differ), ``"normalization"``
  (per-channel mean and std on the [0, 1] scale of the training images, and how many were
  decoded for them), ``"source"``, ``"content_sha256"`` (over every shard's SHA-256, in order),
  and per split ``"splits": {"train"|"test": {"samples", "class_counts", "image_sizes": {"min",
  "max"}, "reencoded", "shards": [{"file", "samples", "bytes", "sha256", "index_digest"}, ...]}}``,
  and ``"digest"``, the SHA-256 of the rest of the manifest as canonical JSON
  (:func:`coun_fast.digest.json_digest`);
* the shard files ``{split}-{00000}.shard``, each (little-endian):

  ====================  ==============================================================
  16 bytes              ``b"COUNSHRD"``, shard format version (uint32, :data:`SHARD_VERSION`), 0 (uint32)
  ``data_bytes``        the JPEG files, concatenated
  0-7 bytes             zero padding to a multiple of 8
  index                 offsets int64 (n + 1, from the data's start), labels int64 (n),
                        heights int32 (n), widths int32 (n), CRC-32s uint32 (n, of each
                        JPEG file; version 2, absent in version 1)
  32 bytes              n (uint64), ``data_bytes`` (uint64), the index's position
                        (uint64), ``b"COUNSEND"``
  ====================  ==============================================================

Samples are numbered globally: the split's shards in order, each shard's entries in order, so
forget/retain splits, identities and loaders index a sharded set as any other.

Reading: opening a data set reads the manifest and each shard's 16-byte header, 32-byte footer
and index (a few dozen bytes per image), and checks them against each other and against the
manifest, and the manifest and each shard's header, index and footer against their digests
(``digest``, ``index_digest``; manifests of older coun_fast have none and are read as they are);
a missing, truncated or damaged shard is an error that names the file. The JPEG bytes are not
read on opening (a data set may be larger than memory): each image's bytes are checked against
their CRC-32 when they are read (:meth:`ShardedDataset.encoded_arrays`, a few microseconds per
image), so a damaged image is an error naming its shard and entry, never decoded as it is
(shards of version 1 have no CRC-32s); :meth:`ShardedDataset.verify` checks whole shards. The JPEG bytes
are memory-mapped (read-only, shared) and only the pages of the images asked for are read.
Pages a process has read stay mapped into it (and count in its resident set) until released:
after every :data:`RELEASE_BYTES` read from a data set (each image counted as at least the
:data:`FAULT_AROUND` bytes the kernel may map around a faulting page), the process releases its
mappings of every shard (``madvise(MADV_DONTNEED)``, which leaves the data in the page cache and
the views valid), so its resident memory stays bounded however large the data set is.
:meth:`ShardedDataset.verify` checks every shard's SHA-256 against the manifest.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import mmap
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from coun_fast.data.dataset import DatasetSplits, ImageDataset
from coun_fast.digest import KEY as DIGEST_KEY
from coun_fast.digest import Digest, check, checked_mapping, file_sha256, undecodable, with_digest
from coun_fast.files import write_text_atomic

FORMAT = "coun_fast.shards"
FORMAT_VERSION = 1
"""The manifest's format version."""
SHARD_VERSION = 2
"""The shard files' format version: 2 adds each image's CRC-32 to the index; 1 is still read."""
READABLE_SHARD_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
SPLITS = ("train", "test")
HEADER = struct.Struct("<8sII")
FOOTER = struct.Struct("<QQQ8s")
MAGIC = b"COUNSHRD"
END_MAGIC = b"COUNSEND"
DEFAULT_VIEW_SIZE = 224
"""The views' side when a data set's images differ in size and no ``view_size`` is given."""
RELEASE_BYTES = 32 * 1024**2
"""Bytes read from a data set after which its shards' mappings are released (module docstring)."""
FAULT_AROUND = 64 * 1024
"""Bytes the kernel may map into a process around one faulting page of a file (fault-around)."""


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:05d}.shard"


def index_bytes(count: int, version: int = SHARD_VERSION) -> int:
    """Size of the index of a shard of ``count`` images (of shard format ``version``)."""
    return 8 * (count + 1) + 8 * count + 4 * count + 4 * count + (4 * count if version >= 2 else 0)


def index_digest(header: bytes, index: bytes, footer: bytes) -> str:
    """The digest of a shard's header, index and footer (what opening it reads), as the manifest
    records it (``index_digest``)."""
    return Digest().add(header).add(index).add(footer).hexdigest()


def _padded(data_bytes: int) -> int:
    return -(-data_bytes // 8) * 8


class Shard:
    """One shard file: its index in memory, its JPEG bytes memory-mapped on first use.

    Raises FileNotFoundError for a missing file and ValueError naming the file for one that is
    truncated, damaged or disagrees with the manifest (``samples``, ``size``, ``digest``: the
    manifest's ``index_digest``, see :func:`index_digest`).
    """

    def __init__(self, path: str | os.PathLike, *, samples: int | None = None, size: int | None = None,
                 num_classes: int | None = None, digest: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"shard file is missing: {self.path}")
        actual = self.path.stat().st_size
        if size is not None and actual != size:
            state = "truncated" if actual < size else "longer than written"
            raise ValueError(f"shard file {self.path} is {state}: it has {actual} bytes, the manifest records {size}")
        with open(self.path, "rb") as f:
            if actual < HEADER.size + FOOTER.size:
                raise ValueError(f"shard file {self.path} is truncated: {actual} bytes, less than a header and footer")
            header = f.read(HEADER.size)
            magic, version, _ = HEADER.unpack(header)
            if magic != MAGIC:
                raise ValueError(f"{self.path} is not a coun_fast shard file (its first bytes are {magic!r})")
            if version not in READABLE_SHARD_VERSIONS:
                raise ValueError(f"shard file {self.path} has format version {version}; this coun_fast reads "
                                 f"{', '.join(map(str, READABLE_SHARD_VERSIONS))}")
            f.seek(actual - FOOTER.size)
            footer = f.read(FOOTER.size)
            count, data_bytes, index_at, end = FOOTER.unpack(footer)
            if end != END_MAGIC:
                raise ValueError(f"shard file {self.path} is truncated or damaged: it lacks its end marker")
            if (index_at != HEADER.size + _padded(data_bytes)
                    or index_at + index_bytes(count, version) + FOOTER.size != actual):
                raise ValueError(f"shard file {self.path} is damaged: its footer (n={count}, {data_bytes} data bytes) "
                                 f"does not fit its size of {actual} bytes")
            if samples is not None and count != samples:
                raise ValueError(f"shard file {self.path} holds {count} images, the manifest records {samples}")
            f.seek(index_at)
            index = f.read(index_bytes(count, version))
        if digest is not None:
            check(self.path, digest, index_digest(header, index, footer), "its header, index and footer")
        self.count, self.data_bytes = int(count), int(data_bytes)
        self.offsets = np.frombuffer(index, np.int64, count + 1, 0)
        self.labels = np.frombuffer(index, np.int64, count, 8 * (count + 1))
        self.heights = np.frombuffer(index, np.int32, count, 16 * count + 8)
        self.widths = np.frombuffer(index, np.int32, count, 20 * count + 8)
        self.crcs = np.frombuffer(index, np.uint32, count, 24 * count + 8) if version >= 2 else None
        if count and (self.offsets[0] != 0 or self.offsets[-1] != data_bytes or np.any(np.diff(self.offsets) <= 0)):
            raise ValueError(f"shard file {self.path} is damaged: its offsets do not rise from 0 to {data_bytes}")
        if count and (self.heights.min() < 1 or self.widths.min() < 1):
            raise ValueError(f"shard file {self.path} is damaged: it records an image size below 1 pixel")
        if num_classes is not None and count and (self.labels.min() < 0 or self.labels.max() >= num_classes):
            raise ValueError(f"shard file {self.path} is damaged: labels outside [0, {num_classes})")
        self._map: mmap.mmap | None = None
        self._bytes: np.ndarray | None = None

    def __getstate__(self) -> dict:
        """Pickled without its mapping (a worker process maps the file itself)."""
        return {**self.__dict__, "_map": None, "_bytes": None}

    def _data(self) -> np.ndarray:
        if self._bytes is None:
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            if hasattr(self._map, "madvise") and hasattr(mmap, "MADV_RANDOM"):
                self._map.madvise(mmap.MADV_RANDOM)  # shuffled reads: no read-ahead beyond the page
            self._bytes = np.frombuffer(self._map, np.uint8, self.data_bytes, HEADER.size)
        return self._bytes

    def view(self, entry: int, *, checked: bool = True) -> np.ndarray:
        """The JPEG file of entry ``entry`` (a view of the mapping), :meth:`check`-ed unless not ``checked``."""
        data = self._data()[int(self.offsets[entry]) : int(self.offsets[entry + 1])]
        if checked:
            self.check(entry, data)
        return data

    def check(self, entry: int, data: np.ndarray) -> None:
        """ValueError naming the file and entry when ``data``, entry ``entry``'s bytes, differ from
        their CRC-32 (a damaged shard; a shard of version 1 records none)."""
        if self.crcs is not None and zlib.crc32(data) != int(self.crcs[entry]):
            raise ValueError(f"shard file {self.path} is damaged: the bytes of its entry {entry} do not match their "
                             "CRC-32")

    def release(self) -> None:
        """Drop this process's mapped pages of the file (the page cache keeps them; views stay valid)."""
        if self._map is not None and hasattr(self._map, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED)

    def sha256(self) -> str:
        """SHA-256 of the whole file, read in chunks."""
        return file_sha256(self.path)


@dataclasses.dataclass(frozen=True, eq=False)
class ShardedDataset(ImageDataset):
    """One split of a packed data set (see the module docstring), read from its shards on demand.

    An :class:`~coun_fast.data.dataset.ImageDataset` whose images are JPEG files in memory-mapped
    shards: ``labels`` are in memory, ``sizes`` (N, 2) holds each image's (H, W), ``view_size``
    the (H, W) of the views loaders make (resized crops when it differs from the images' size,
    see :func:`coun_fast.data.recipes.resized_form`), ``stats`` the normalization recorded at
    packing. :class:`~coun_fast.data.loader.AugmentedLoader` streams it batch by batch.
    """

    root: Path | None = None
    shards: tuple[Shard, ...] = ()
    sizes: np.ndarray | None = None
    output_size: tuple[int, int] | None = None
    stats: tuple | None = None
    manifest: dict | None = None

    def __post_init__(self) -> None:
        self._check_labels()
        if self.images is not None or self.jpeg is not None:
            raise ValueError("a ShardedDataset reads its images from its shards; give neither images nor jpeg")
        counts = [s.count for s in self.shards]
        if sum(counts) != len(self.labels):
            raise ValueError(f"the shards hold {sum(counts)} images but labels has {len(self.labels)}")
        sizes = np.asarray(self.sizes, dtype=np.int64)
        if sizes.shape != (len(self.labels), 2):
            raise ValueError(f"sizes must have shape ({len(self.labels)}, 2); got {sizes.shape}")
        object.__setattr__(self, "sizes", sizes)
        object.__setattr__(self, "_starts", np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
        if self.output_size is None or len(self.output_size) != 2 or min(self.output_size) < 1:
            raise ValueError(f"output_size must be a pair of positive ints; got {self.output_size!r}")
        object.__setattr__(self, "output_size", (int(self.output_size[0]), int(self.output_size[1])))
        object.__setattr__(self, "_unreleased", [0])  # bytes read since the last release, per process

    def __repr__(self) -> str:
        return (f"ShardedDataset({self.name!r}, {self.split!r}, samples={len(self)}, shards={len(self.shards)}, "
                f"view_size={self.output_size}, root={str(self.root)!r})")

    # -- what it is -------------------------------------------------------------------------
    @property
    def is_encoded(self) -> bool:
        return True

    @property
    def streaming(self) -> bool:
        """Read batch by batch from its shards, never whole."""
        return True

    @functools.cached_property
    def image_size(self) -> tuple[int, int] | None:
        """(H, W) of every image when they share one size, else None."""
        if len(self.sizes) and np.all(self.sizes == self.sizes[0]):
            return int(self.sizes[0, 0]), int(self.sizes[0, 1])
        return None

    @property
    def view_size(self) -> tuple[int, int]:
        return self.output_size

    @property
    def resizes(self) -> bool:
        """Whether views are resized crops (images not all of the views' size)."""
        return self.image_size != self.output_size

    @functools.cached_property
    def normalization(self):
        """The per-channel statistics recorded when the data set was packed."""
        from coun_fast.data.recipes import normalization

        if self.stats is None:
            raise ValueError(f"{self.root}: the manifest records no normalization for the {self.split} split")
        return normalization(*self.stats)

    @property
    def stored_bytes(self) -> int:
        return int(sum(s.data_bytes for s in self.shards))

    def summary(self) -> dict:
        sizes = self.sizes
        return {
            "name": self.name, "split": self.split, "samples": len(self),
            "image_size": list(self.image_size) if self.image_size else
            f"{int(sizes[:, 0].min())}-{int(sizes[:, 0].max())} x {int(sizes[:, 1].min())}-{int(sizes[:, 1].max())} (HxW)",
            "view_size": list(self.output_size),
            "stored_bytes": self.stored_bytes,
            "shards": len(self.shards),
            "num_classes": self.num_classes,
            "classes": list(self.classes),
            "class_counts": self.class_counts().tolist(),
        }

    # -- reading ----------------------------------------------------------------------------
    def locate(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """(shard numbers, entries in them) of global ``indices``."""
        index = np.asarray(indices, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"indices must lie in [0, {len(self)}); got values in [{index.min()}, {index.max()}]")
        shard = np.searchsorted(self._starts, index, side="right") - 1
        return shard, index - self._starts[shard]

    def encoded_arrays(self, indices) -> list[np.ndarray]:
        """The JPEG files of ``indices`` as uint8 arrays (views of the mapped shards, no copy), each
        checked against its CRC-32 (ValueError naming the shard and entry of a damaged one)."""
        shards, entries = self.locate(indices)
        located = list(zip(shards.tolist(), entries.tolist()))
        files = [self.shards[s].view(e, checked=False) for s, e in located]
        incoming = sum(max(len(f), FAULT_AROUND) for f in files)
        if self._unreleased[0] + incoming > RELEASE_BYTES:  # before these are read: no refaults
            self.release()
        self._unreleased[0] += incoming
        for (s, e), data in zip(located, files):
            self.shards[s].check(e, data)
        return files

    def describe(self, index: int) -> str:
        """Where image ``index`` is stored, for error messages."""
        shard, entry = self.locate([index])
        return f"image {index} ({self.shards[int(shard[0])].path}, entry {int(entry[0])})"

    def decode(self, indices, *, threads: int | None = None) -> list[np.ndarray]:
        """Images ``indices`` decoded with Pillow to uint8 (H, W, 3) RGB arrays, each its own size.
        A file that does not decode is a ValueError naming its shard file and entry."""
        from coun_fast.data._pil import decode_one

        index = np.asarray(indices, dtype=np.int64)
        files = self.encoded_arrays(index)
        return [decode_one(data, lambda i=int(i): self.describe(i)) for data, i in zip(files, index)]

    def decoded(self) -> ImageDataset:
        """Every image decoded into memory (an in-memory :class:`ImageDataset`): only for a small
        data set whose images share one size; a large one is read batch by batch by the loaders."""
        if self.image_size is None:
            raise ValueError(f"the images of {self.name!r} ({self.split}) differ in size; a sharded data set is read "
                             "batch by batch by coun_fast.data.AugmentedLoader, not decoded whole")
        from coun_fast.data.jpeg import decode_all

        files = self.encoded_arrays(np.arange(len(self)))
        offsets = np.concatenate([[0], np.cumsum([len(f) for f in files])]).astype(np.int64)
        jpeg = np.concatenate(files) if files else np.zeros(0, np.uint8)
        images = decode_all(jpeg, offsets)
        return ImageDataset(name=self.name, split=self.split, labels=self.labels, classes=self.classes, images=images)

    def release(self) -> None:
        """Drop this process's mapped pages of every shard (see :meth:`Shard.release`)."""
        self._unreleased[0] = 0
        for shard in self.shards:
            shard.release()

    def verify(self) -> None:
        """Check every shard's SHA-256 against the manifest (reads every byte); ValueError naming
        the first shard that differs."""
        recorded = {entry["file"]: entry["sha256"] for entry in self.manifest["splits"][self.split]["shards"]}
        for shard in self.shards:
            if shard.sha256() != recorded[shard.path.name]:
                raise ValueError(f"shard file {shard.path} is corrupt: its SHA-256 differs from the manifest's")


def write_manifest(path: str | os.PathLike, manifest: dict) -> Path:
    """Write ``manifest`` with its ``digest`` (replacing one it holds) to ``path``, atomically."""
    return write_text_atomic(path, json.dumps(with_digest(manifest), indent=1))


def read_manifest(root: str | os.PathLike) -> dict:
    """The checked manifest of the packed data set in folder ``root``."""
    root = Path(root).expanduser()
    path = root / MANIFEST
    if not root.is_dir():
        raise FileNotFoundError(f"packed data set folder does not exist: {root}")
    if not path.is_file():
        raise ValueError(f"{root} is not a packed data set: it has no {MANIFEST} (write one with coun-fast data pack)")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise undecodable(path, "shards manifest", exc) from None
    if isinstance(manifest, dict) and DIGEST_KEY in manifest:
        checked_mapping(path, manifest)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a coun_fast shards manifest (format {manifest.get('format') if isinstance(manifest, dict) else None!r})")
    if manifest.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path} has format version {manifest.get('version')!r}; this coun_fast reads {FORMAT_VERSION}")
    missing = [k for k in ("name", "classes", "splits", "normalization") if k not in manifest]
    missing += [f"splits.{s}" for s in SPLITS if s not in manifest.get("splits", {})]
    if missing:
        raise ValueError(f"{path} lacks {missing}")
    return manifest


def open_sharded(root: str | os.PathLike, *, view_size=None, name: str | None = None) -> DatasetSplits:
    """Both splits of the packed data set in folder ``root``, as :class:`ShardedDataset`.

    ``view_size`` (an int or (H, W)) is the views' size; default the images' size when they all
    share one, else :data:`DEFAULT_VIEW_SIZE`. ``name`` defaults to the manifest's. Every shard's
    header, footer and index are checked (see :class:`Shard`); the JPEG bytes are not read.
    """
    from coun_fast.data._pil import as_size

    root = Path(root).expanduser()
    manifest = read_manifest(root)
    size = as_size(view_size, "view_size")
    classes = tuple(manifest["classes"])
    common = manifest.get("image_size")
    if size is None:
        size = tuple(common) if common else (DEFAULT_VIEW_SIZE, DEFAULT_VIEW_SIZE)
    norm = manifest["normalization"]
    splits = []
    for split in SPLITS:
        entries = manifest["splits"][split]["shards"]
        shards = tuple(Shard(root / e["file"], samples=e["samples"], size=e["bytes"], num_classes=len(classes),
                             digest=e.get("index_digest")) for e in entries)
        labels = np.concatenate([s.labels for s in shards]) if shards else np.zeros(0, np.int64)
        sizes = (np.stack([np.concatenate([s.heights for s in shards]), np.concatenate([s.widths for s in shards])], 1)
                 if shards else np.zeros((0, 2), np.int64))
        if len(labels) != manifest["splits"][split]["samples"]:
            raise ValueError(f"{root / MANIFEST}: the {split} shards hold {len(labels)} images, the manifest "
                             f"records {manifest['splits'][split]['samples']}")
        splits.append(ShardedDataset(
            name=name or manifest["name"], split=split, labels=labels, classes=classes, root=root, shards=shards,
            sizes=sizes, output_size=size, stats=(tuple(norm["mean"]), tuple(norm["std"])), manifest=manifest,
        ))
    return DatasetSplits(*splits)


def is_sharded(dataset: ImageDataset) -> bool:
    """Whether ``dataset`` is read from shards batch by batch."""
    return bool(getattr(dataset, "streaming", False))

