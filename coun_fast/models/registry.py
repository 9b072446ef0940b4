"""Models by name: :func:`build` makes one and records how on ``model.build_args``, so a checkpoint
can store the architecture and :func:`rebuild` can make it again.

``build_args`` is a plain JSON-ready dict: ``{"name": ..., "num_classes": ..., <every other
constructor argument, defaults filled in>}`` (tuples become lists). Filling in the defaults pins the
architecture even if a default changes later.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping

from torch import nn

from coun_fast.models.base import ImageClassifier, check_num_classes
from coun_fast.models.projection import ProjectionHeadClassifier
from coun_fast.models.resnet import ResNet18, resnet18_imagenet, resnet50_imagenet
from coun_fast.models.small_cnn import SmallCNN
from coun_fast.models.vgg import VGG16BN
from coun_fast.models.vit import SmallDataViT

MODELS: dict[str, str] = {
    "resnet18": "ResNet-18, CIFAR stem (3x3 stride-1 conv, no max-pool), 512-d features; any input size",
    "resnet18_imagenet": "ResNet-18, ImageNet stem (7x7 stride-2 conv, max-pool), 512-d features; for 224 px "
                         "data sets (e.g. packed ImageNet)",
    "resnet50_imagenet": "ResNet-50, ImageNet stem, Bottleneck blocks, 2048-d features; for 224 px data sets",
    "vgg16_bn": "VGG-16 with batch norm and a 1024-d encoder head (Linear 512->1024 + ReLU); inputs >= 32x32",
    "vit_small_data": "ViT for small datasets (Lee et al. 2021): SPT + LSA, 4x4 patches, dim 512, depth 6, "
                      "12 heads; fixed img_size (32 by default)",
    "small_cnn": "small 3-block CNN (32-64-128), 128-d features; for CPU demos (digits at 16x16 or 32x32)",
}
"""The names :func:`build` knows, each with a one-line description."""

_CLASSES: dict[str, type[ImageClassifier]] = {
    "resnet18": ResNet18,
    "resnet18_imagenet": resnet18_imagenet,
    "resnet50_imagenet": resnet50_imagenet,
    "vgg16_bn": VGG16BN,
    "vit_small_data": SmallDataViT,
    "small_cnn": SmallCNN,
}


def available() -> dict[str, str]:
    """The model names :func:`build` accepts, each with a one-line description (a copy of :data:`MODELS`)."""
    return dict(MODELS)


def plain_value(value: object) -> object:
    """Tuples become lists, recursively, so build_args survive a JSON round trip unchanged."""
    if isinstance(value, (tuple, list)):
        return [plain_value(v) for v in value]
    return value


def _resolve_name(name: object) -> str:
    key = name.lower() if isinstance(name, str) else None
    if key not in MODELS:
        raise ValueError(f"unknown model name {name!r}; known models: {', '.join(MODELS)}")
    return key


def build(name: str, num_classes: int, *, projection_dim: int | None = None, **kwargs: object) -> ImageClassifier:
    """A freshly initialised model ``name`` (a key of :data:`MODELS`, any case) with ``num_classes`` outputs.

    ``kwargs`` go to the model's constructor (``in_chans`` for all; see each class for the rest).
    ``projection_dim`` (e.g. 128) wraps the model with the CU authors' projection head
    (:class:`~coun_fast.models.projection.ProjectionHeadClassifier`). The result carries
    ``build_args`` (see the module docstring); ``build(**model.build_args)`` makes the same
    architecture again.

    Raises ValueError for an unknown name (listing the known ones), a ``num_classes`` that is not
    an int >= 2, an argument the model does not take (listing those it does) or a bad value.
    """
    key = _resolve_name(name)
    num_classes = check_num_classes(num_classes)
    cls = _CLASSES[key]
    signature = inspect.signature(cls)
    accepted = [p for p in signature.parameters if p != "num_classes"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"model {key!r} does not take the arguments {unknown}; it accepts "
                         f"{accepted + ['projection_dim']}")
    bound = signature.bind(num_classes=num_classes, **kwargs)
    bound.apply_defaults()
    model = cls(**bound.arguments)
    args = {"name": key, **{k: plain_value(v) for k, v in bound.arguments.items()}}
    if projection_dim is not None:
        model = ProjectionHeadClassifier(model, projection_dim)
        args["projection_dim"] = model.projection_dim
    model.build_args = args
    return model


def model_config(model: nn.Module) -> dict:
    """A copy of ``model.build_args``: what a checkpoint records to rebuild the architecture.

    Raises ValueError if ``model`` was not made by :func:`build` (it has no ``build_args``).
    """
    args = getattr(model, "build_args", None)
    if not isinstance(args, Mapping):
        raise ValueError(f"model ({type(model).__name__}) has no build_args: it was not made by "
                         f"coun_fast.models.build, so its architecture cannot be recorded or rebuilt by name")
    return copy.deepcopy(dict(args))


def _reset_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every submodule's ``reset_parameters()`` called; ValueError if a
    parameter belongs to a module without one (it would keep its trained value)."""
    stuck = [f"{name}.{p}" if name else p for name, m in model.named_modules()
             for p, value in m._parameters.items() if value is not None and not hasattr(m, "reset_parameters")]
    if stuck:
        raise ValueError(f"cannot re-initialise a {type(model).__name__} that was not made by coun_fast.models.build: "
                         f"parameters {stuck[:4]} belong to modules without reset_parameters(); build the model "
                         "with coun_fast.models.build, or give those modules a reset_parameters() method")
    fresh = copy.deepcopy(model)
    for module in fresh.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    return fresh


def rebuild(source: nn.Module | Mapping) -> nn.Module:
    """A freshly initialised model of the same architecture as ``source``.

    ``source`` is a model made by :func:`build` or its ``build_args`` mapping (as stored in a
    checkpoint): the model is built again by name. Any other ``nn.Module`` (a user's own timm-style
    model) is deep-copied and every submodule's ``reset_parameters()`` called (their default
    initialisation, which also clears batch-norm statistics); the copy stays on ``source``'s device.

    Raises ValueError for a mapping without ``name`` and ``num_classes``, for a foreign model with a
    parameter no ``reset_parameters()`` covers, plus :func:`build`'s errors.
    """
    if isinstance(source, nn.Module) and not isinstance(getattr(source, "build_args", None), Mapping):
        return _reset_copy(source)
    args = dict(source) if isinstance(source, Mapping) else model_config(source)
    missing = [k for k in ("name", "num_classes") if k not in args]
    if missing:
        raise ValueError(f"build_args must hold 'name' and 'num_classes'; {missing} missing from {sorted(args)}")
    return build(**args)


def model_class(name: str) -> type[ImageClassifier]:
    """The class :func:`build` uses for ``name`` (ValueError for an unknown name)."""
    return _CLASSES[_resolve_name(name)]
