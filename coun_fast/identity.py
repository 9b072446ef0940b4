"""What makes two runs the same run: fingerprints, plain records, and the differences between them.

Checkpoints, model files and split files record the identity of what they were made from (the
data set, the architecture, the method and its hyperparameters, the starting model, the split).
A step that continues or reads another's output compares the identities and refuses a mismatch
with :func:`describe_differences`, which says what differs, key by key.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

_LONG = 8  # lists longer than this are reported as "differ", not printed


def plain(value: Any) -> Any:
    """``value`` with NumPy arrays and scalars, tuples and ``str`` subclasses turned into plain
    Python lists, numbers and ``str``, recursively: what a record may hold."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str):
        return str(value)
    return value


def fingerprint(payload: Any) -> str:
    """A 20-hex-digit SHA-256 of ``payload`` as canonical JSON (sorted keys)."""
    text = json.dumps(plain(payload), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def array_digest(*arrays: np.ndarray) -> str:
    """A 20-hex-digit SHA-256 of arrays' dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.view(np.uint8).reshape(-1).data if array.size else b"")
    return digest.hexdigest()[:20]


def weights_digest(state: Mapping[str, torch.Tensor]) -> str:
    """A 20-hex-digit SHA-256 of a state dict (names, dtypes, shapes and values, on the CPU)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()[:20]


def _show(value: Any) -> str:
    if isinstance(value, list) and len(value) > _LONG:
        return f"<{len(value)} entries>"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def differences(old: Any, new: Any, path: str = "") -> list[str]:
    """Where two records differ, one ``key.path: old -> new`` per leaf (long lists: "differ")."""
    old, new = plain(old), plain(new)
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in list(old) + [k for k in new if k not in old]:
            where = f"{path}.{key}" if path else str(key)
            if key not in new:
                found.append(f"{where}: {_show(old[key])} -> (absent)")
            elif key not in old:
                found.append(f"{where}: (absent) -> {_show(new[key])}")
            else:
                found += differences(old[key], new[key], where)
        return found
    if isinstance(old, list) and isinstance(new, list) and (len(old) > _LONG or len(new) > _LONG):
        if old == new:
            return []
        changed = sum(a != b for a, b in zip(old, new)) + abs(len(old) - len(new))
        return [f"{path or 'value'}: lists of {len(old)} and {len(new)} entries differ in {changed} places"]
    if _same(old, new):
        return []
    return [f"{path or 'value'}: {_show(old)} -> {_show(new)}"]


def describe_differences(old: Any, new: Any, limit: int = 4) -> str:
    """:func:`differences` in one line, at most ``limit`` of them (and how many more)."""
    found = differences(old, new)
    text = "; ".join(found[:limit])
    return text + (f"; and {len(found) - limit} more" if len(found) > limit else "") if found else "nothing"


__all__ = ["array_digest", "describe_differences", "differences", "fingerprint", "plain", "weights_digest"]
