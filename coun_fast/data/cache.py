"""A disk cache of decoded data sets, so slow decoding (JPEG folders, packed files) runs once.

An entry ``{cache_dir}/{key}/`` holds ``{split}_images.npy`` (uint8 N, H, W, 3) and
``{split}_labels.npy`` (int64 N) for split in train/test, and ``meta.json`` (format version,
name, classes, its own ``digest``, and each split's shape and ``digest``: a SHA-256 of its
images' and labels' dtype, shape and bytes). Every file is written under a temporary name and
moved into place with ``os.replace``; ``meta.json`` is written last and removed first when an
entry is rewritten, so an entry with a readable, matching ``meta.json`` is complete. An entry
that is missing, partial, corrupt (its content does not match its digests: every hit reads and
hashes the arrays, about 0.1 s for CIFAR-10's 50000x32x32x3 uint8 on one core) or of another
format version is rebuilt. Hits map the image arrays copy-on-write (``mmap_mode="c"``): the
digest check reads each page once (it stays in the page cache, shared), and writing to them
changes only the process's copy, never the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from pathlib import Path
from typing import Callable

import numpy as np

from coun_fast.data.dataset import DatasetSplits, ImageDataset
from coun_fast.data.npzfile import arrays_digest
from coun_fast.digest import check, checked_mapping, with_digest

FORMAT_VERSION = 1  # (an entry of older coun_fast, without digests, is a damaged entry: rebuilt in place)
ENV_VAR = "COUN_FAST_CACHE"
SPLITS = ("train", "test")
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$COUN_FAST_CACHE`` when set (and not empty), else ``~/.cache/coun_fast``."""
    return Path(os.environ.get(ENV_VAR) or Path.home() / ".cache" / "coun_fast").expanduser()


def _fingerprint(path: Path) -> list:
    """[relative path, mtime_ns, size] of ``path``, and for a directory also of the files directly
    in it and of its subdirectories down to three levels: adding, removing or renaming an image
    in ``root/<split>/<class>/`` or ``root/train/<wnid>/images/`` changes a directory's mtime. A
    file rewritten in place below the first level goes unnoticed (give a new option to refresh)."""
    stat = path.stat()
    items = [[".", stat.st_mtime_ns, stat.st_size if path.is_file() else 0]]
    level = [path] if path.is_dir() else []
    for depth in range(3):
        below = []
        for folder in level:
            with os.scandir(folder) as entries:
                for child in sorted(entries, key=lambda e: e.name):
                    is_dir = child.is_dir()
                    if is_dir or depth == 0:
                        stat = child.stat()
                        relative = Path(child.path).relative_to(path).as_posix()
                        items.append([relative, stat.st_mtime_ns, 0 if is_dir else stat.st_size])
                    if is_dir:
                        below.append(Path(child.path))
        level = below
    return items


def cache_key(kind: str, path: str | Path, **options: object) -> str:
    """A cache key ``{kind}-{hash}`` for the data set of ``kind`` read from ``path`` with ``options``.

    The hash covers the absolute path, the modification times and sizes of the path and its
    upper levels (see :func:`_fingerprint`), the options (as JSON, so a tuple equals a list) and
    the cache format version. Raises FileNotFoundError for a missing path.
    """
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"cannot make a cache key: path does not exist: {path}")
    if not _KEY.fullmatch(kind):
        raise ValueError(f"kind must be letters, digits, '.', '_' or '-' (starting with a letter or digit); got {kind!r}")
    description = {"version": FORMAT_VERSION, "kind": kind, "path": str(path), "files": _fingerprint(path), "options": options}
    digest = hashlib.sha256(json.dumps(description, sort_keys=True, default=repr).encode()).hexdigest()
    return f"{kind}-{digest[:20]}"


def _write_atomic(target: Path, write: Callable[[object], None]) -> None:
    temporary = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, "wb") as f:
            write(f)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def _arrays_digest(images: np.ndarray, labels: np.ndarray) -> str:
    """The digest of one split of an entry: its images' and labels' dtype, shape and bytes."""
    return arrays_digest({"images": images, "labels": labels})


def _save(entry: Path, splits: DatasetSplits) -> None:
    entry.mkdir(parents=True, exist_ok=True)
    (entry / "meta.json").unlink(missing_ok=True)
    meta = {"version": FORMAT_VERSION, "name": splits.train.name, "classes": list(splits.train.classes), "splits": {}}
    for split, data in zip(SPLITS, splits):
        _write_atomic(entry / f"{split}_images.npy", lambda f: np.save(f, np.ascontiguousarray(data.images)))
        _write_atomic(entry / f"{split}_labels.npy", lambda f: np.save(f, data.labels))
        meta["splits"][split] = {"name": data.name, "classes": list(data.classes), "shape": list(data.images.shape),
                                 "digest": _arrays_digest(data.images, data.labels)}
    meta = with_digest(meta)
    _write_atomic(entry / "meta.json", lambda f: f.write(json.dumps(meta, indent=1).encode()))


def _load(entry: Path) -> DatasetSplits:
    """The entry's splits; raises (anything) when the entry is missing, partial or corrupt."""
    meta = json.loads((entry / "meta.json").read_text())
    if meta.get("version") != FORMAT_VERSION:
        raise ValueError(f"format version {meta.get('version')!r}, expected {FORMAT_VERSION}")
    meta = checked_mapping(entry / "meta.json", meta)
    splits = []
    for split in SPLITS:
        info = meta["splits"][split]
        images = np.load(entry / f"{split}_images.npy", mmap_mode="c", allow_pickle=False)
        labels = np.load(entry / f"{split}_labels.npy", allow_pickle=False)
        if list(images.shape) != info["shape"] or images.dtype != np.uint8:
            raise ValueError(f"{split} images are {images.dtype} {images.shape}, meta.json says uint8 {info['shape']}")
        check(entry / f"{split}_images.npy", info["digest"], _arrays_digest(images, labels),
              f"the {split} split's images and labels")
        splits.append(ImageDataset(name=info["name"], split=split, labels=labels, classes=info["classes"], images=images))
    return DatasetSplits(*splits)


def cached_splits(key: str, build: Callable[[], DatasetSplits], cache_dir: str | Path | None = None) -> DatasetSplits:
    """The decoded splits stored under ``key`` in ``cache_dir`` (None: :func:`default_cache_dir`);
    on a miss, ``build()`` them and store them (encoded results are decoded first).

    A missing, partial or corrupt entry is a miss and is rewritten. A failure to write the cache
    (read-only or full disk) is logged and the built splits are returned uncached. Hits return
    copy-on-write memory maps of the images (see the module docstring).
    """
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ValueError(f"key must be letters, digits, '.', '_' or '-' (starting with a letter or digit); got {key!r}")
    entry = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    entry = entry / key
    if (entry / "meta.json").is_file():
        try:
            return _load(entry)
        except Exception as exc:  # a damaged entry of any kind is rebuilt
            _log.warning("cache entry %s is unreadable (%s: %s); rebuilding it", entry, type(exc).__name__, exc)
    splits = build()
    if not isinstance(splits, DatasetSplits):
        raise TypeError(f"build() must return DatasetSplits; got {type(splits).__name__}")
    splits = DatasetSplits(splits.train.decoded(), splits.test.decoded())
    try:
        _save(entry, splits)
    except OSError as exc:
        _log.warning("cannot write cache entry %s (%s); continuing without the cache", entry, exc)
    return splits
