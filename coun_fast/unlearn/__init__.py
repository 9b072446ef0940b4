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
                                   get_method, hyperparameters, method_config)
from coun_fast.unlearn.cl_plugin import CL_DEFAULTS, WithCL, split_name


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
    method's hyperparameters (defaults in ``METHODS[method].defaults``); ``fit_options`` go to
    :func:`coun_fast.train.fit` (``run_dir``, ``resume``, ``on_epoch_end``, ``record``...).
    """
    base_name, with_cl = split_name(method)
    spec = get_method(base_name)
    given = dict(hparams or {})
    cl_values = {key: given.pop(key, default) for key, default in CL_DEFAULTS.items()} if with_cl else {}
    values = hyperparameters(spec, given)
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
            raise ValueError(f"method {base_name!r} does not train, so it has no objective to add the CL term to")
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


__all__ = ["METHODS", "PROTOCOLS", "ForgetData", "Method", "RetainData", "UnlearnResult", "get_method", "method_config",
           "unlearn"]
