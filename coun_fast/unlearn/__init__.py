"""Unlearning methods, one module each, in one registry (:data:`METHODS`), run by :func:`unlearn`."""

from __future__ import annotations

import time

import numpy as np
from torch import nn

from coun_fast.data.dataset import ImageDataset
from coun_fast.data.splits import ForgetSplit
from coun_fast.train import TrainConfig, TrainResult, fit, resolve_device, synchronize
from coun_fast.unlearn import (  # noqa: F401  (importing a method's module registers it)
    bad_teacher,
    boundary_shrink,
    contrastive_unlearning,
    coun,
    gradient_ascent,
    l1_sparse,
    negation,
    neggrad_plus,
    random_labels,
    retrain,
    salun,
    scrub,
    ssd,
)
from coun_fast.unlearn.base import (METHODS, PROTOCOLS, BatchStream, ForgetData, Method, RetainData, UnlearnResult,
                                    check_distributed_method, check_global_batches, get_method, hyperparameters,
                                    method_config, non_negative, positive)
from coun_fast.unlearn.cl_plugin import CL_DEFAULTS, SUFFIX, WithCL, check_cl_under_ranks, split_name


def method_names() -> list[str]:
    """Every name :func:`unlearn` accepts: the registered methods, and ``NAME+cl`` for those the
    CL plug-in applies to."""
    return sorted(METHODS) + [f"{name}{SUFFIX}" for name in sorted(METHODS) if METHODS[name].cl_refused is None]


def _resolved(method: str, hparams: dict | None, check_ranks: bool = True) -> tuple[Method, bool, dict, dict]:
    """``(spec, with_cl, the method's checked hyperparameters, the CL plug-in's)``."""
    base_name, with_cl = split_name(method)
    spec = get_method(base_name)
    if with_cl and spec.cl_refused is not None:
        raise ValueError(f"there is no {method!r}: {spec.cl_refused}")
    if check_ranks:
        check_distributed_method(spec, method)
    given = dict(hparams or {})
    cl_given = {key: given.pop(key, default) for key, default in CL_DEFAULTS.items()} if with_cl else {}
    values = hyperparameters(spec, given)
    if check_ranks:
        check_global_batches(spec, values)
    cl_values = {"cl_lam": non_negative(cl_given["cl_lam"], "cl_lam"),
                 "cl_temperature": positive(cl_given["cl_temperature"], "cl_temperature")} if with_cl else {}
    return spec, with_cl, values, cl_values


def resolve_hparams(method: str, hparams: dict | None = None, *, check_ranks: bool = True) -> dict:
    """The hyperparameters ``method`` (a registered name, maybe ``NAME+cl``) runs with: its
    defaults updated with ``hparams`` (plus ``cl_lam`` and ``cl_temperature`` for ``+cl``), every
    value checked. Raises ValueError for an unknown method, a method the CL plug-in does not
    apply to, an unknown hyperparameter or a bad value, or, under ``torchrun``, a method that
    does not run there (only those with :attr:`Method.distributed`), before any work is done.
    ``check_ranks=False`` leaves that last check out (for files checked as a whole, e.g. an
    experiment's methods: :func:`coun_fast.experiment.check.check_distributed_experiment`)."""
    _, _, values, cl_values = _resolved(method, hparams, check_ranks)
    return {**values, **cl_values}


def unlearn(
    method: str,
    original: nn.Module,
    train: ImageDataset,
    split: ForgetSplit,
    config: TrainConfig,
    *,
    normalization=None,
    hparams: dict | None = None,
    test: ImageDataset | None = None,
    **fit_options,
) -> UnlearnResult:
    """Run unlearning ``method`` from ``original`` (left untouched) for ``split`` of ``train`` under
    ``config`` as given (:func:`~coun_fast.unlearn.base.method_config` gives the config of a
    method's authors' protocol). ``test``, the test split, serves stopping rules that read test
    accuracy (CU's).

    ``method`` is a registered name, or one with the ``+cl`` suffix (the CL plug-in: the method's
    objective plus ``cl_lam`` x cross-view InfoNCE at ``cl_temperature`` on its retain batches).
    Methods that do not use the forget set receive the retain indices only. ``hparams`` are the
    method's hyperparameters (defaults in ``METHODS[method].defaults``), checked by
    :func:`resolve_hparams` before any work; ``fit_options`` go to :func:`coun_fast.train.fit`
    (``run_dir``, ``resume``, ``on_epoch_end``, ``record``...).
    """
    for name, data in (("train", train), ("test", test)):
        if data is not None and not isinstance(data, ImageDataset):
            raise TypeError(f"{name} must be an ImageDataset; convert a torch Dataset once with "
                            f"ImageDataset.from_torch(dataset), arrays with ImageDataset.from_arrays(images, labels); "
                            f"got {type(data).__name__}")
    spec, with_cl, values, cl_values = _resolved(method, hparams)
    check_cl_under_ranks(spec, method, values, train.name)
    norm = train.normalization if normalization is None else normalization
    retain = np.asarray(split.retain)
    if spec.uses_forget:
        data: RetainData = ForgetData(train, retain, norm, np.asarray(split.forget), test=test,
                                      forget_classes=tuple(split.forget_classes))
    else:
        data = RetainData(train, retain, norm)
    fit_options.setdefault("description", method)
    device = resolve_device(config.device)
    synchronize(device)
    started = time.perf_counter()
    plan = spec.plan(original, data, config, values)
    synchronize(device)
    prepared = TrainResult([], time.perf_counter() - started, plan.prepared_images, 0)
    if plan.objective is None:
        if with_cl:
            raise ValueError(f"method {spec.name!r} does not train, so it has no objective to add the CL term to")
        return UnlearnResult(plan.model, method, values, prepared)
    objective = plan.objective
    if with_cl:
        stream = BatchStream(train, retain, norm, config, "two_view", seed_offset=2) if plan.loop == "forget" else None
        objective = WithCL(objective, cl_values["cl_lam"], cl_values["cl_temperature"], loop=plan.loop,
                           retain_stream=stream)
    result = fit(plan.model, train, objective, config, indices=plan.indices, normalization=norm, **fit_options)
    result.seconds += prepared.seconds  # the preparation runs again when a run resumes: counted each time
    result.trained_images += prepared.trained_images
    return UnlearnResult(plan.model, method, {**values, **cl_values}, result)


__all__ = ["METHODS", "PROTOCOLS", "ForgetData", "Method", "RetainData", "UnlearnResult", "get_method",
           "method_config", "method_names", "resolve_hparams", "unlearn"]
