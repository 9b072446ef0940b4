"""Packed JPEG arrays: decode them all on the CPU with Pillow, or encode decoded images.

The packed form is the one :class:`~coun_fast.data.dataset.ImageDataset` holds when encoded: one
flat uint8 array ``jpeg`` of concatenated JPEG files and int64 ``offsets`` (N + 1,), image i being
``jpeg[offsets[i]:offsets[i + 1]]``.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from coun_fast.data._pil import _chunks, as_threads, decode_many


def _check_packed(jpeg: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    jpeg = np.asarray(jpeg)
    offsets = np.asarray(offsets)
    if jpeg.ndim == 1 and not jpeg.flags.c_contiguous:
        jpeg = np.ascontiguousarray(jpeg)
    if jpeg.dtype != np.uint8 or jpeg.ndim != 1:
        raise ValueError(f"jpeg must be a flat uint8 array of concatenated JPEG files; got {jpeg.dtype} {jpeg.shape}")
    if offsets.ndim != 1 or offsets.size < 1 or not np.issubdtype(offsets.dtype, np.integer):
        raise ValueError(f"offsets must be a 1-D integer array of N + 1 boundaries; got {offsets.dtype} {offsets.shape}")
    offsets = offsets.astype(np.int64, copy=False)
    if offsets[0] != 0 or offsets[-1] != jpeg.size or np.any(np.diff(offsets) <= 0):
        raise ValueError(
            f"offsets must start at 0, rise strictly and end at len(jpeg) = {jpeg.size}; "
            f"got first {offsets[0]}, last {offsets[-1]}"
        )
    return jpeg, offsets


def decode_all(jpeg: np.ndarray, offsets: np.ndarray, *, threads: int | None = None) -> np.ndarray:
    """Decode every packed JPEG to one uint8 (N, H, W, 3) RGB array.

    Grey and CMYK JPEGs are converted to RGB. All images must share one size. Decoding runs in
    ``threads`` threads; None picks one per CPU core for images of at least 128 x 128 pixels and
    one for smaller ones, where threads only contend for the GIL (see
    :func:`coun_fast.data._pil.decode_many`). Raises ValueError for malformed ``jpeg``/``offsets``,
    or naming the index of the first image that fails to decode or whose size differs from
    image 0's.
    """
    jpeg, offsets = _check_packed(jpeg, offsets)
    view = memoryview(jpeg)
    bounds = offsets.tolist()
    return decode_many(
        len(bounds) - 1,
        lambda i: Image.open(io.BytesIO(view[bounds[i] : bounds[i + 1]]), formats=("JPEG",)),
        threads=threads,
    )


def encode_all(images: np.ndarray, quality: int = 95, *, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Encode uint8 (N, H, W, 3) RGB images as baseline JPEG files (Pillow, default chroma
    subsampling) of ``quality`` in [1, 100], in ``threads`` threads (None: one per CPU core);
    returns the packed ``(jpeg, offsets)``."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 of shape (N, H, W, 3); got {images.dtype} {images.shape}")
    if not isinstance(quality, (int, np.integer)) or isinstance(quality, bool) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be an int in [1, 100]; got {quality!r}")
    workers = as_threads(threads)

    def encode(indices: range) -> list[bytes]:
        files = []
        for i in indices:
            buffer = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(images[i])).save(buffer, format="JPEG", quality=int(quality))
            files.append(buffer.getvalue())
        return files

    chunks = _chunks(0, len(images), workers)
    if workers == 1 or len(chunks) <= 1:
        parts = [encode(chunk) for chunk in chunks]
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="coun-fast-encode") as pool:
            parts = list(pool.map(encode, chunks))
    files = [f for part in parts for f in part]
    offsets = np.zeros(len(files) + 1, np.int64)
    np.cumsum([len(f) for f in files], out=offsets[1:])
    jpeg = np.frombuffer(bytearray(b"".join(files)), np.uint8)
    return jpeg, offsets
