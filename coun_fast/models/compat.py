"""Does a checkpoint fit a model? :func:`check_compatible` says no, loudly, before ``load_state_dict``
fails with a wall of key names (or, worse, a class-count mismatch slips through a partial load).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from coun_fast.models.base import classifier_key
from coun_fast.models.registry import MODELS, build, model_class, plain_value

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile
_STATE_KEYS = ("model", "state_dict")


def strip_wrapper_prefixes(state_dict: Mapping[str, object]) -> dict[str, object]:
    """``state_dict`` without the ``module.`` / ``_orig_mod.`` prefixes that DDP and torch.compile add
    (removed only when every key has them)."""
    state = dict(state_dict)
    changed = True
    while changed and state:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _describe(args: Mapping) -> str:
    return f"{args.get('name')!s} with {args.get('num_classes')!s} classes"


def _model_name(model: nn.Module) -> str:
    args = getattr(model, "build_args", None)
    return str(args.get("name")) if isinstance(args, Mapping) else type(model).__name__


def _describe_model(model: nn.Module) -> str:
    return f"{_model_name(model)} with {getattr(model, 'num_classes', '?')} classes"


def _compare_build_args(model: nn.Module, theirs: Mapping) -> None:
    if not isinstance(theirs, Mapping) or "name" not in theirs or "num_classes" not in theirs:
        raise ValueError(f"build_args must be a mapping with 'name' and 'num_classes'; got {theirs!r}")
    mine = getattr(model, "build_args", None)
    if not isinstance(mine, Mapping):
        # A model not made by build(): compare what it has, its class and its class count.
        name = str(theirs["name"]).lower()
        if name not in MODELS or not isinstance(model, model_class(name)):
            raise ValueError(f"checkpoint is for {_describe(theirs)} but the model is {_describe_model(model)}: "
                             "the architectures differ")
        mine = {"name": name, "num_classes": getattr(model, "num_classes", None)}
    if mine["name"] != str(theirs["name"]).lower():
        raise ValueError(f"checkpoint is for {_describe(theirs)} but the model is {_describe(mine)}: "
                         "the architectures differ")
    if mine["num_classes"] != theirs["num_classes"]:
        raise ValueError(f"checkpoint has {theirs['num_classes']} classes but the model has {mine['num_classes']} "
                         f"(both {mine['name']}): the class counts differ")
    theirs = {k: plain_value(v) for k, v in theirs.items()}
    differing = sorted(k for k in (set(mine) & set(theirs)) - {"name"} if plain_value(mine[k]) != theirs[k])
    if differing:
        pairs = ", ".join(f"{k}={theirs[k]!r} vs {mine[k]!r}" for k in differing)
        raise ValueError(f"checkpoint's {mine['name']} was built with other arguments than the model "
                         f"(checkpoint vs model): {pairs}")


@functools.lru_cache(maxsize=None)
def _registered_layouts() -> dict[str, tuple[frozenset[str], str | None]]:
    """Per registered name: the state-dict keys of its default build and its classifier prefix
    (built on the meta device: no memory, no init cost)."""
    layouts = {}
    with torch.device("meta"):
        for name in MODELS:
            model = build(name, 2)
            layouts[name] = (frozenset(model.state_dict()), classifier_key(model))
    return layouts


def _class_count(state: Mapping[str, object], head: str | None) -> int | None:
    weight = state.get(f"{head}.weight") if head is not None else None
    return int(weight.shape[0]) if isinstance(weight, Tensor) and weight.dim() == 2 else None


def _guess(state: Mapping[str, object]) -> str:
    """Which registered architecture a state dict's keys fit: exactly (default arguments), else the
    one sharing most keys (at least half; "with other arguments"), else none."""
    keys = frozenset(state)
    best, best_overlap = None, 0.5
    for name, (layout, head) in _registered_layouts().items():
        count = _class_count(state, head)
        described = f"{name} with {count if count is not None else '?'} classes"
        if keys == layout:
            return described
        overlap = len(keys & layout) / len(keys | layout)
        if overlap >= best_overlap:
            best, best_overlap = f"{described} (and other arguments)", overlap
    return best or "an architecture this package does not build"


def _compare_state_dict(model: nn.Module, state_dict: Mapping[str, object]) -> None:
    theirs = strip_wrapper_prefixes(state_dict)
    mine = strip_wrapper_prefixes(model.state_dict())
    missing, unexpected = sorted(set(mine) - set(theirs)), sorted(set(theirs) - set(mine))
    if missing or unexpected:
        details = [f"{len(missing)} of the model's tensors missing, e.g. {missing[:3]}" if missing else "",
                   f"{len(unexpected)} unexpected tensors, e.g. {unexpected[:3]}" if unexpected else ""]
        raise ValueError(f"checkpoint weights are from {_guess(theirs)} but the model is {_describe_model(model)}: "
                         f"the architectures differ ({'; '.join(d for d in details if d)})")
    wrong = [k for k in mine if isinstance(theirs[k], Tensor) and tuple(theirs[k].shape) != tuple(mine[k].shape)]
    if not wrong:
        return
    head = classifier_key(model)
    if head is not None and set(wrong) <= {f"{head}.weight", f"{head}.bias"}:
        count = _class_count(theirs, head)
        raise ValueError(f"checkpoint has {count} classes but the model has {getattr(model, 'num_classes', '?')} "
                         f"(both {_model_name(model)}): the class counts differ")
    shapes = "; ".join(f"{k}: checkpoint {tuple(theirs[k].shape)} vs model {tuple(mine[k].shape)}" for k in wrong[:3])
    raise ValueError(f"checkpoint weights have other shapes than the model ({_describe_model(model)}) in "
                     f"{len(wrong)} tensors, e.g. {shapes}: the architectures differ in width or configuration")


def _is_state_dict(value: Mapping) -> bool:
    return len(value) > 0 and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in value.items())


def check_compatible(model: nn.Module, reference: Mapping) -> None:
    """Raise ValueError unless the weights or architecture in ``reference`` fit ``model``.

    ``reference`` is any of: the ``build_args`` of a model (``{"name": ..., "num_classes": ..., ...}``),
    a state dict (keys may carry DDP's ``module.`` or torch.compile's ``_orig_mod.`` prefix), or a
    checkpoint dict holding ``"build_args"`` and/or a state dict under ``"model"`` or ``"state_dict"``
    (both are checked when both are there). ``model`` may be wrapped by DDP or torch.compile.

    The error names both sides: another architecture ("checkpoint is for vgg16_bn with 10 classes
    but the model is resnet18 with 10 classes"), another class count, other constructor arguments,
    or other tensor shapes. Returns None when they fit.
    """
    model = unwrap(model)
    if not isinstance(reference, Mapping):
        raise ValueError(f"reference must be build_args, a state dict or a checkpoint dict; got {type(reference).__name__}")
    checked = False
    if "build_args" in reference:
        _compare_build_args(model, reference["build_args"])
        checked = True
    for key in _STATE_KEYS:
        if isinstance(reference.get(key), Mapping):
            _compare_state_dict(model, reference[key])
            return
    if checked:
        return
    if _is_state_dict(reference):
        _compare_state_dict(model, reference)
    elif "name" in reference and "num_classes" in reference:
        _compare_build_args(model, reference)
    else:
        raise ValueError("reference must be build_args (with 'name' and 'num_classes'), a state dict (str -> Tensor) "
                         f"or a checkpoint dict with 'build_args', 'model' or 'state_dict'; got keys {sorted(map(str, reference))[:8]}")
