"""Content digests of the files coun_fast writes, so a damaged file is detected before it is used.

Every file format coun_fast writes records a SHA-256 of its content inside itself (a weights file
or checkpoint as a key of its payload, a split in its ``meta``, a cache entry in its
``meta.json``, a JSON file as a ``digest`` key), so the digest is written atomically with what it
covers. A reader recomputes it and compares before using anything: :func:`check` raises
:class:`DamagedFileError` (a ValueError) in one line naming the file.

A :class:`Digest` hashes a sequence of parts, each prefixed by its length, so no two different
sequences of parts hash alike; :meth:`Digest.add_array` adds an array's dtype, shape and bytes,
:meth:`Digest.add_json` a plain value as canonical JSON (:func:`canonical_json`). SHA-256 runs at
about 1.7 GB/s on one core of a CPU with SHA extensions (0.09 s for CIFAR-10's 150 MB of images).

This module uses the standard library only, so every layer of the package may import it.
"""

from __future__ import annotations

import hashlib
import json
import os

ALGORITHM = "sha256"
"""The hash every digest uses; a recorded digest reads ``sha256:<64 hex digits>``."""


class DamagedFileError(ValueError):
    """A file whose content does not match its recorded digest, or that does not decode."""


def canonical_json(value: object) -> bytes:
    """``value`` (JSON-like) as canonical JSON: sorted keys, no spaces, ASCII; the same bytes for
    equal values however they were written (a float is written as ``repr`` writes it, which reads
    back exactly)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


class Digest:
    """A SHA-256 over length-prefixed parts (see the module docstring)."""

    def __init__(self) -> None:
        self._hash = hashlib.new(ALGORITHM)

    def add(self, part: bytes | bytearray | memoryview | str) -> "Digest":
        """Add one part (text is encoded as UTF-8; a buffer's bytes as they lie in memory)."""
        data = part.encode("utf-8") if isinstance(part, str) else memoryview(part).cast("B")
        self._hash.update(len(data).to_bytes(8, "little"))
        self._hash.update(data)
        return self

    def add_json(self, value: object) -> "Digest":
        """Add a plain value as :func:`canonical_json`."""
        return self.add(canonical_json(value))

    def add_array(self, dtype: str, shape: tuple | list, data: bytes | memoryview) -> "Digest":
        """Add an array: its dtype (as text), shape and contiguous bytes ``data``."""
        self.add(f"array {dtype} {list(shape)}")
        return self.add(data)

    def hexdigest(self) -> str:
        """``sha256:<hex>``."""
        return f"{ALGORITHM}:{self._hash.hexdigest()}"


def json_digest(value: object) -> str:
    """The digest of a plain value (its :func:`canonical_json`)."""
    return Digest().add_json(value).hexdigest()


def check(path: str | os.PathLike, recorded: object, computed: str, what: str = "its content") -> None:
    """Raise :class:`DamagedFileError` naming ``path`` unless ``recorded`` equals ``computed``."""
    if recorded != computed:
        raise DamagedFileError(f"{str(path)!r} is damaged: {what} does not match its recorded digest "
                               "(a changed or corrupted file); refusing to use it")


def undecodable(path: str | os.PathLike, what: str, error: BaseException) -> DamagedFileError:
    """A :class:`DamagedFileError` for a ``path`` that does not decode: ``'<path>' is not a readable
    <what>: <the error's first line>``."""
    reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
    reason = f"{type(error).__name__}: {reason}" if reason else type(error).__name__
    return DamagedFileError(f"{str(path)!r} is not a readable {what}: it is damaged or not such a file ({reason})")


__all__ = ["ALGORITHM", "DamagedFileError", "Digest", "canonical_json", "check", "json_digest", "undecodable"]
