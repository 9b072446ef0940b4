""".npz archives read whole or refused in one line, and written with a digest of their arrays.

:func:`read_npz` reads every array of an archive (``allow_pickle=False``) and turns any failure
to decode it (a truncated or damaged zip, a zlib stream that does not inflate, a damaged array
header, ...) into :class:`~coun_fast.digest.DamagedFileError`, a ValueError in one line naming
the file. An archive that coun_fast wrote with :func:`write_npz` holds one more member,
``digest`` (``sha256:<hex>`` over the other arrays' names, dtypes, shapes and bytes,
:func:`arrays_digest`), which :func:`read_npz` checks; archives made elsewhere have none and are
read as they are (the zip's own CRC-32s still catch most damage to their data).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from coun_fast.digest import Digest, check, undecodable
from coun_fast.files import write_atomic

DIGEST = "digest"
"""The member holding the digest of the other arrays."""


def arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    """``sha256:<hex>`` over ``arrays`` (all but :data:`DIGEST`) in name order: each name, dtype,
    shape and bytes."""
    digest = Digest()
    for name in sorted(k for k in arrays if k != DIGEST):
        array = np.ascontiguousarray(arrays[name])
        digest.add(name).add_array(array.dtype.str, array.shape, array.reshape(-1).view(np.uint8).data)
    return digest.hexdigest()


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], *, compressed: bool = False) -> Path:
    """Write ``arrays`` and their :data:`DIGEST` to ``path`` atomically (:func:`coun_fast.files.write_atomic`)."""
    buffer = io.BytesIO()
    save = np.savez_compressed if compressed else np.savez
    save(buffer, **arrays, **{DIGEST: np.array(arrays_digest(arrays))})
    return write_atomic(path, buffer.getvalue())


def read_npz(path: str | os.PathLike, what: str) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` file ``path`` (a ``what``, for messages), its digest checked
    when it holds one (and then left out). Raises ValueError in one line naming the file for an
    archive that does not decode or whose arrays do not match their digest; FileNotFoundError
    for a missing file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single array, not an .npz archive")
        with archive:
            arrays = {name: archive[name] for name in archive.files}
        recorded = str(arrays.pop(DIGEST)[()]) if DIGEST in arrays else None
    except Exception as error:  # noqa: BLE001 - a damaged archive fails in many ways (zlib.error, ...)
        raise undecodable(path, what, error) from None
    if recorded is not None:
        check(path, recorded, arrays_digest(arrays))
    return arrays


__all__ = ["DIGEST", "arrays_digest", "read_npz", "write_npz"]
