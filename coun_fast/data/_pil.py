"""Pillow decoding shared by the loaders: open, convert to RGB, resize, in a thread pool.

Pillow releases the GIL while it decodes and resizes, so a thread pool decodes many images at once.
:func:`decode_many` fills one preallocated uint8 (N, H, W, 3) array; when something goes wrong it
reports the *lowest-numbered* failing image, whatever the thread schedule, so errors are
deterministic.
"""

from __future__ import annotations

import io
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
from PIL import Image

BILINEAR = Image.Resampling.BILINEAR
THREADED_PIXELS = 128 * 128  # below this image area, one decoding thread is faster than several


def as_size(image_size: object, name: str = "image_size") -> tuple[int, int] | None:
    """``None``, an int ``s`` (an s x s image) or a pair ``(h, w)`` of positive ints -> (h, w) or None."""
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        size = (int(image_size), int(image_size))
    elif (
        isinstance(image_size, (tuple, list))
        and len(image_size) == 2
        and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in image_size)
    ):
        size = (int(image_size[0]), int(image_size[1]))
    else:
        raise ValueError(f"{name} must be None, a positive int or a pair (height, width) of positive ints; got {image_size!r}")
    if min(size) < 1:
        raise ValueError(f"{name} must be positive; got {image_size!r}")
    return size


def as_threads(threads: object) -> int:
    """``None`` (one thread per CPU core) or a positive int -> the number of decoding threads."""
    if threads is None:
        if hasattr(os, "sched_getaffinity"):  # the cores this process may run on
            return max(1, len(os.sched_getaffinity(0)))
        return max(1, os.cpu_count() or 1)
    if not isinstance(threads, (int, np.integer)) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads must be None (one per CPU core) or a positive int; got {threads!r}")
    return int(threads)


def to_rgb(image: Image.Image, size: tuple[int, int] | None) -> np.ndarray:
    """``image`` as uint8 (H, W, 3) RGB: grey, palette and CMYK converted, alpha dropped, resized
    to ``size`` = (h, w) with bilinear interpolation when given and different."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    if size is not None and image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def decode_one(data, describe: Callable[[], str], size: tuple[int, int] | None = None) -> np.ndarray:
    """One encoded image (bytes or a uint8 array) decoded to uint8 (H, W, 3) RGB (see :func:`to_rgb`);
    a file Pillow cannot decode is a ValueError naming ``describe()``."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return to_rgb(image, size)
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ... on bad data
        raise ValueError(f"cannot decode {describe()}: {type(exc).__name__}: {exc}") from exc


def _chunks(start: int, stop: int, threads: int) -> list[range]:
    step = max(1, min(2048, math.ceil((stop - start) / (threads * 4))))
    return [range(i, min(i + step, stop)) for i in range(start, stop, step)]


def decode_many(
    count: int,
    open_image: Callable[[int], Image.Image],
    *,
    size: tuple[int, int] | None = None,
    threads: int | None = None,
    describe: Callable[[int], str] = lambda i: f"image {i}",
    size_hint: str = "",
) -> np.ndarray:
    """Decode ``count`` images into one uint8 (count, H, W, 3) RGB array.

    ``open_image(i)`` returns image i as a (lazily loaded) PIL image. With ``size`` = (h, w) every
    image is resized to it; without, every image must have the size of image 0. ``threads`` None
    picks one thread per CPU core for images of at least ``THREADED_PIXELS`` pixels and one thread
    for smaller ones (whose decoding is dominated by Pillow's Python code, so threads would only
    contend for the GIL); an int fixes the count. Raises ValueError
    naming ``describe(i)`` for the first image that fails to decode or has another size (followed
    by ``size_hint``); a FileNotFoundError from ``open_image`` propagates as is.
    """
    workers = None if threads is None else as_threads(threads)
    if count == 0:
        h, w = size or (0, 0)
        return np.zeros((0, h, w, 3), np.uint8)

    def load(i: int) -> np.ndarray:
        try:
            with open_image(i) as image:
                return to_rgb(image, size)
        except FileNotFoundError:
            raise
        except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ... on bad data
            raise ValueError(f"cannot decode {describe(i)}: {type(exc).__name__}: {exc}") from exc

    first = load(0)
    out = np.empty((count, *first.shape), np.uint8)
    out[0] = first
    if workers is None:
        workers = as_threads(None) if first.shape[0] * first.shape[1] >= THREADED_PIXELS else 1

    def run(indices: range) -> tuple[int, BaseException] | None:
        """Decode ``indices`` into ``out``; the first problem met, or None."""
        for i in indices:
            try:
                array = load(i)
            except (ValueError, FileNotFoundError) as exc:
                return i, exc
            if array.shape != first.shape:
                return i, ValueError(
                    f"images differ in size: {describe(0)} is {first.shape[0]}x{first.shape[1]} (HxW) but "
                    f"{describe(i)} is {array.shape[0]}x{array.shape[1]}{size_hint}"
                )
            out[i] = array
        return None

    chunks = _chunks(1, count, workers)
    if workers == 1 or len(chunks) <= 1:
        problems = [run(chunk) for chunk in chunks]
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="coun-fast-decode") as pool:
            problems = list(pool.map(run, chunks))
    found = [p for p in problems if p is not None]
    if found:
        raise min(found, key=lambda p: p[0])[1]
    return out


def resize_all(images: np.ndarray, image_size: object, *, threads: int | None = None) -> np.ndarray:
    """Decoded uint8 (N, H, W, 3) images resized to ``image_size`` (int or (h, w)) with bilinear
    interpolation; ``images`` itself when it already has that size or ``image_size`` is None."""
    size = as_size(image_size)
    if size is None or images.shape[1:3] == size:
        return images
    return decode_many(len(images), lambda i: Image.fromarray(np.asarray(images[i])), size=size, threads=threads)
