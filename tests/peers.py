"""The peer libraries' losses, for the drop-in tests: lightly's NTXentLoss and pytorch-metric-learning's
SupConLoss / NTXentLoss, or None where the library is not installed.

lightly imports torchvision in modules unrelated to its losses (and PyPI's torchvision does not
import with a CPU build of torch), so lightly's loss module is loaded alone: lightly's sub-packages
are entered without running their ``__init__`` and torchvision is a placeholder during the import.
"""

from __future__ import annotations

import importlib
import sys
import types

import torch


class _Placeholder(types.ModuleType):
    """A stand-in module whose every attribute is an empty ``nn.Module`` subclass."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (torch.nn.Module,), {})


def lightly_ntxent():
    """lightly's ``NTXentLoss`` class, or None."""
    try:
        import lightly
    except Exception:
        return None
    placeholders = ("torchvision", "torchvision.ops", "torchvision.transforms")
    saved = {name: sys.modules.get(name) for name in placeholders}
    try:
        if not _imports("torchvision"):
            for name in placeholders:
                sys.modules[name] = _Placeholder(name)
        root = lightly.__path__[0]
        for package in ("lightly.models", "lightly.models.modules", "lightly.loss"):
            if package not in sys.modules:
                module = types.ModuleType(package)
                module.__path__ = [f"{root}/{package.split('.', 1)[1].replace('.', '/')}"]
                sys.modules[package] = module
        return importlib.import_module("lightly.loss.ntx_ent_loss").NTXentLoss
    except Exception:
        return None
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _imports(name: str) -> bool:
    try:
        importlib.import_module(name)
        return True
    except Exception:
        return False


def pml():
    """pytorch_metric_learning's (losses, reducers, distances, regularizers, miners) modules, or None."""
    try:
        from pytorch_metric_learning import distances, losses, miners, reducers, regularizers
    except Exception:
        return None
    return types.SimpleNamespace(losses=losses, reducers=reducers, distances=distances, regularizers=regularizers,
                                 miners=miners)
