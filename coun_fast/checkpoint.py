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
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import platform
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from coun_fast.files import write_atomic

FORMAT_VERSION = 2
"""2: records are plain values (no NumPy arrays); 1: the first format."""


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


def save(path: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` (plus the format version) to ``path`` atomically; returns the path.

    Missing folders are made. Raises the file system's OSError (read-only, no space...) with
    nothing left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **payload}, buffer)
    return write_atomic(path, buffer.getvalue())


def _foreign(error: Exception) -> str:
    """What a weights-only unpickling error refused, in a few words."""
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    what = f"the Python object {found.group(1)}" if found else "objects other than tensors and plain values"
    return f"it would load {what}, which a coun_fast file never holds"


def load(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save`, safely (see the module docstring).

    Raises FileNotFoundError for a missing file and ValueError, in one line naming the file, for
    a truncated or foreign file, one that holds objects other than tensors and plain values, or
    one that is not a coun_fast checkpoint.
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
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, TypeError, AttributeError,
            ImportError, KeyError, IndexError) as exc:  # a truncated or foreign file
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{str(path)!r} is not a readable coun_fast checkpoint: it is damaged or not a torch "
                         f"file ({reason})") from None
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise ValueError(f"{str(path)!r} is not a coun_fast checkpoint (no format_version)")
    if payload["format_version"] not in (1, FORMAT_VERSION):
        raise ValueError(f"{str(path)!r} has checkpoint format {payload['format_version']!r}; this coun_fast "
                         f"reads 1 and {FORMAT_VERSION}")
    return payload
