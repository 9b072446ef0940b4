"""Checkpoints written atomically, with the record needed to reproduce and check the run.

A checkpoint is one ``torch.save`` file holding a dict; :func:`save` writes it to a temporary file in
the same folder and renames it over the target, so a run killed mid-write leaves the previous
checkpoint intact, never a truncated one.
"""

from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path

import torch

FORMAT_VERSION = 1


def environment(device: torch.device | None = None) -> dict:
    """Versions and the device, stored with every checkpoint and result."""
    from coun_fast.capabilities import package_version

    record = {
        "coun_fast": package_version(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if device is not None:
        record["device"] = str(device)
        record["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return record


def save(path: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` (plus the format version) to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save({"format_version": FORMAT_VERSION, **payload}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save`; clear errors for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # a truncated or foreign file
        raise ValueError(f"{str(path)!r} is not a readable coun_fast checkpoint: {exc}") from exc
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise ValueError(f"{str(path)!r} is not a coun_fast checkpoint (no format_version)")
    return payload
