"""Checkpoints written atomically and read safely, with the record needed to reproduce and check the run.

A checkpoint is one ``torch.save`` file holding a dict of tensors and plain records (dicts,
lists, strings, numbers, booleans, None). :func:`save` serializes it in memory first, then
writes it to a temporary file in the same folder and renames it over the target
(:func:`coun_fast.files.write_atomic`), so a run killed mid-write leaves the previous checkpoint
intact, a full disk gives the file system's own error (not a half-written file), and the file
gets the permissions the umask gives.

:func:`load` reads with ``torch.load(weights_only=True)``: a file that would need any other type
to unpickle (code, arbitrary objects) is refused before anything of it runs. Files of format
version 1 (records holding NumPy index arrays) are still read: exactly the NumPy globals that
rebuild a plain array are allow-listed for them.

Since format version 3 the payload carries ``digest``, a SHA-256 over a canonical walk of the rest
of it (every tensor's dtype, shape and bytes, every plain value as canonical JSON, every key; see
:func:`payload_digest`), stored inside the file and so written atomically with it. torch's zip
reader checks no CRCs, so without it one flipped bit in a tensor loads silently; :func:`load`
recomputes the digest and refuses a file whose content does not match it (ValueError, one line
naming the file). Files of formats 1 and 2 carry no digest: they are still read, with a warning
that damage to them cannot be detected.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import platform
import re
from pathlib import Path

import numpy as np
import torch

from coun_fast.digest import Digest, check_versioned, undecodable
from coun_fast.files import write_atomic

FORMAT_VERSION = 3
"""3: the payload carries its ``digest``; 2: records are plain values (no NumPy arrays); 1: the first format."""
READABLE_VERSIONS = (1, 2, FORMAT_VERSION)
DIGEST_KEY = "digest"


def _numpy_array_globals() -> list:
    """The globals a pickled plain NumPy array needs (format 1 records held index arrays)."""
    try:
        from numpy._core.multiarray import _reconstruct  # NumPy 2
    except ImportError:  # pragma: no cover - NumPy 1
        from numpy.core.multiarray import _reconstruct
    dtypes = [type(np.dtype(t)) for t in (np.int64, np.int32, np.float64, np.float32, np.bool_, np.uint8)]
    from torch.torch_version import TorchVersion

    return [_reconstruct, np.ndarray, np.dtype, *dtypes, TorchVersion]


def _allowing_plain_arrays():
    """A context in which ``torch.load(weights_only=True)`` also rebuilds plain NumPy arrays."""
    allowed = _numpy_array_globals()
    if hasattr(torch.serialization, "safe_globals"):
        return torch.serialization.safe_globals(allowed)
    torch.serialization.add_safe_globals(allowed)  # torch 2.4: no context manager
    return contextlib.nullcontext()


def environment(device: torch.device | None = None) -> dict:
    """Versions, the thread count and the device, stored with every checkpoint and result."""
    from coun_fast.capabilities import package_version

    record = {
        "coun_fast": package_version(),
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
    }
    if device is not None:
        record["device"] = str(device)
        record["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return record


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The bytes of ``tensor``'s elements in row-major order (on the CPU)."""
    flat = tensor.detach().reshape(-1).contiguous().cpu()
    return memoryview(flat.view(torch.uint8).numpy())


def _walk(digest: Digest, value: object) -> None:
    if isinstance(value, torch.Tensor):
        digest.add_array(str(value.dtype), tuple(value.shape), _tensor_bytes(value))
    elif isinstance(value, dict):
        keys = sorted(value, key=lambda key: (type(key).__name__, repr(key)))
        digest.add(f"dict {len(keys)}")
        for key in keys:
            digest.add(type(key).__name__).add_json(key)
            _walk(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.add(f"{type(value).__name__} {len(value)}")
        for item in value:
            _walk(digest, item)
    else:  # a plain value; anything else is a TypeError (a checkpoint holds no other objects)
        digest.add(type(value).__name__).add_json(value)


def payload_digest(payload: dict) -> str:
    """``sha256:<hex>`` over a canonical walk of ``payload`` without its ``digest`` key: every key,
    every tensor's dtype, shape and bytes, every plain value as canonical JSON, so equal payloads
    (on any device) have equal digests. TypeError for a value that is neither."""
    digest = Digest()
    _walk(digest, {key: value for key, value in payload.items() if key != DIGEST_KEY})
    return digest.hexdigest()


def save(path: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` (plus this format version and its digest, replacing any it holds, as a
    loaded payload does) to ``path`` atomically; returns the path.

    Missing folders are made. Raises TypeError for a payload holding values other than tensors
    and plain values, and the file system's OSError (read-only, no space...) with nothing left
    behind.
    """
    path = Path(path)
    payload = {"format_version": FORMAT_VERSION,
               **{key: value for key, value in payload.items() if key not in ("format_version", DIGEST_KEY)}}
    payload[DIGEST_KEY] = payload_digest(payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return write_atomic(path, buffer.getvalue())


def _foreign(error: Exception) -> str:
    """What a weights-only unpickling error refused, in a few words."""
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    what = f"the Python object {found.group(1)}" if found else "objects other than tensors and plain values"
    return f"it would load {what}, which a coun_fast file never holds"


def load(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save`, safely (see the module docstring).

    Raises FileNotFoundError for a missing file and ValueError, in one line naming the file, for
    a truncated, damaged or foreign file, one whose content does not match its digest, one that
    holds objects other than tensors and plain values, or one that is not a coun_fast checkpoint.
    The returned payload keeps its ``digest`` key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        with _allowing_plain_arrays():
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{str(path)!r} is not a readable coun_fast checkpoint: {_foreign(exc)}; "
                         "refusing to load it") from None
    except Exception as exc:  # noqa: BLE001 - a truncated, damaged or foreign file fails in many ways
        raise undecodable(path, "coun_fast checkpoint", exc) from None
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise ValueError(f"{str(path)!r} is not a coun_fast checkpoint (no format_version)")
    version = payload["format_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise ValueError(f"{str(path)!r} has checkpoint format {version!r}; this coun_fast reads "
                         f"{', '.join(map(str, READABLE_VERSIONS))}")

    def computed() -> str:
        try:
            return payload_digest(payload)
        except TypeError as exc:  # a damaged value that is neither a tensor nor plain
            raise undecodable(path, "coun_fast checkpoint", exc) from None

    check_versioned(path, payload, kind="checkpoint format", version=version, current=FORMAT_VERSION,
                    readable=READABLE_VERSIONS, compute=computed)
    return payload
