"""Property tests: backend="fused" against the float64 oracle, loss and gradients of every input.

Each example draws sizes (the awkward ones {1, 2, 3, 31, 33, 127, 257} and random ones), a feature
dimension (including ones that are no multiple of 16 or 32), a temperature in [0.05, 1], a dtype,
non-contiguous layouts and a seed; the tolerance rule is described in ``helpers``.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from coun_fast import functional as F
from helpers import (
    KERNEL_DEVICES,
    DTYPES,
    LAYOUTS,
    check_against_oracle,
    kernel_path,
    make_feature,
    random_weights,
    reference_cross_view,
    reference_info_nce,
    reference_nt_xent,
    reference_sup_con,
)
from coun_fast.ops import reference

SIZES = (1, 2, 3, 31, 33, 127, 257)
DIMS = (1, 3, 31, 33, 127, 257, 513)
WORK_BUDGET = 1 << 21  # largest (anchor rows) x (candidate rows) x dim of one example

sizes = st.one_of(st.sampled_from(SIZES), st.integers(1, 300))
dims = st.one_of(st.sampled_from(DIMS), st.integers(1, 600))
temperatures = st.floats(0.05, 1.0, allow_nan=False)
dtypes = st.sampled_from(DTYPES)
layouts = st.sampled_from(LAYOUTS)
scales = st.sampled_from((0.3, 1.0, 5.0))
seeds = st.integers(0, 2**32 - 1)
reductions = st.sampled_from(("mean", "sum", "none"))


def fit_dim(dim: int, rows: int, cols: int) -> int:
    """The drawn dimension, capped so that one example stays cheap."""
    return max(1, min(dim, WORK_BUDGET // (rows * cols)))


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def derangement(n: int, gen: torch.Generator) -> torch.Tensor:
    """A random permutation without fixed points (one n-cycle), n >= 2."""
    order = torch.randperm(n, generator=gen)
    index = torch.empty(n, dtype=torch.int64)
    index[order] = order.roll(-1)
    return index


def index_positives(m: int, n: int, exclude_self: bool, symmetric: bool, gen: torch.Generator) -> torch.Tensor:
    if symmetric:
        return derangement(n, gen) if exclude_self else torch.randperm(n, generator=gen)
    if exclude_self:
        return (torch.arange(m) + torch.randint(1, n, (m,), generator=gen)) % n
    return torch.randint(0, n, (m,), generator=gen)


def reduction_weights(reduction: str, length: int, dtype: torch.dtype, gen: torch.Generator):
    return random_weights((length,), dtype, gen) if reduction == "none" else None


@pytest.mark.parametrize("kernel_device", KERNEL_DEVICES)
@given(n=sizes, dim=dims, temperature=temperatures, dtype=dtypes, layout1=layouts, layout2=layouts, scale=scales,
       seed=seeds)
def test_nt_xent_matches_oracle(kernel_device, n, dim, temperature, dtype, layout1, layout2, scale, seed):
    with kernel_path(kernel_device) as device:
        gen = generator(seed)
        dim = fit_dim(dim, 2 * n, 2 * n)
        z1 = make_feature(n, dim, dtype, gen, layout1, scale)
        z2 = make_feature(n, dim, dtype, gen, layout2)
        check_against_oracle(
            lambda a, b: F.nt_xent(a, b, temperature, backend="fused"),
            lambda a, b, upcast: reference_nt_xent(a, b, temperature, upcast=upcast),
            [z1, z2], dtype, device, temperature, names=["z1", "z2"])


@pytest.mark.parametrize("kernel_device", KERNEL_DEVICES)
@given(n=sizes, dim=dims, temperature=temperatures, dtype=dtypes, layout1=layouts, layout2=layouts, scale=scales,
       seed=seeds)
def test_cross_view_info_nce_matches_oracle(kernel_device, n, dim, temperature, dtype, layout1, layout2, scale, seed):
    with kernel_path(kernel_device) as device:
        gen = generator(seed)
        dim = fit_dim(dim, n, n)
        z1 = make_feature(n, dim, dtype, gen, layout1)
        z2 = make_feature(n, dim, dtype, gen, layout2, scale)
        check_against_oracle(
            lambda a, b: F.cross_view_info_nce(a, b, temperature, backend="fused"),
            lambda a, b, upcast: reference_cross_view(a, b, temperature, upcast=upcast),
            [z1, z2], dtype, device, temperature, names=["z1", "z2"])


@pytest.mark.parametrize("kernel_device", KERNEL_DEVICES)
@given(m=sizes, dim=dims, temperature=temperatures, dtype=dtypes, layout=layouts, classes=st.integers(1, 40),
       label_offset=st.integers(-3, 1000), int32_labels=st.booleans(), seed=seeds)
def test_sup_con_matches_oracle(kernel_device, m, dim, temperature, dtype, layout, classes, label_offset, int32_labels, seed):
    with kernel_path(kernel_device) as device:
        gen = generator(seed)
        dim = fit_dim(dim, m, m)
        features = make_feature(m, dim, dtype, gen, layout)
        labels = torch.randint(0, classes, (m,), generator=gen) + label_offset
        fused_labels = labels.to(device=device, dtype=torch.int32 if int32_labels else torch.int64)
        check_against_oracle(
            lambda x: F.sup_con(x, fused_labels, temperature, backend="fused"),
            lambda x, upcast: reference_sup_con(x, labels, temperature, upcast=upcast),
            [features], dtype, device, temperature, names=["features"])


@pytest.mark.parametrize("kernel_device", KERNEL_DEVICES)
@given(m=sizes, n=sizes, dim=dims, temperature=temperatures, dtype=dtypes, layout1=layouts, layout2=layouts,
       exclude_self=st.booleans(), symmetric=st.booleans(), reduction=reductions, seed=seeds)
def test_info_nce_index_positives_match_oracle(kernel_device, m, n, dim, temperature, dtype, layout1, layout2, exclude_self,
                                               symmetric, reduction, seed):
    with kernel_path(kernel_device) as device:
        gen = generator(seed)
        if symmetric or exclude_self:
            m = n
        exclude_self = exclude_self and n >= 2
        dim = fit_dim(dim, m, n)
        anchors = make_feature(m, dim, dtype, gen, layout1)
        candidates = make_feature(n, dim, dtype, gen, layout2)
        index = index_positives(m, n, exclude_self, symmetric, gen)
        options = dict(exclude_self=exclude_self, symmetric=symmetric, reduction=reduction)
        weights = reduction_weights(reduction, m + n if symmetric else m, dtype, gen)
        check_against_oracle(
            lambda a, b: F.info_nce(a, b, temperature, positive_index=index.to(device), backend="fused", **options),
            lambda a, b, upcast: reference_info_nce(a, b, temperature, positive_index=index, upcast=upcast, **options),
            [anchors, candidates], dtype, device, temperature, weights, names=["anchors", "candidates"])


@pytest.mark.parametrize("kernel_device", KERNEL_DEVICES)
@given(m=sizes, n=sizes, dim=dims, temperature=temperatures, dtype=dtypes, layout1=layouts, layout2=layouts,
       classes=st.integers(1, 12), exclude_self=st.booleans(), symmetric=st.booleans(), reduction=reductions,
       seed=seeds)
def test_info_nce_label_positives_match_oracle(kernel_device, m, n, dim, temperature, dtype, layout1, layout2, classes,
                                               exclude_self, symmetric, reduction, seed):
    with kernel_path(kernel_device) as device:
        gen = generator(seed)
        if exclude_self:
            m = n
        dim = fit_dim(dim, m, n)
        anchors = make_feature(m, dim, dtype, gen, layout1)
        candidates = make_feature(n, dim, dtype, gen, layout2)
        anchor_labels = torch.randint(0, classes, (m,), generator=gen)
        candidate_labels = torch.randint(0, classes + 2, (n,), generator=gen)
        options = dict(exclude_self=exclude_self, symmetric=symmetric, reduction=reduction)
        weights = reduction_weights(reduction, m + n if symmetric else m, dtype, gen)
        check_against_oracle(
            lambda a, b: F.info_nce(a, b, temperature, anchor_labels=anchor_labels.to(device),
                                    candidate_labels=candidate_labels.to(device), backend="fused", **options),
            lambda a, b, upcast: reference_info_nce(a, b, temperature, anchor_labels=anchor_labels,
                                                    candidate_labels=candidate_labels, upcast=upcast, **options),
            [anchors, candidates], dtype, device, temperature, weights, names=["anchors", "candidates"])


@pytest.mark.parametrize("kernel_device", KERNEL_DEVICES)
@given(m=sizes, dim=dims, temperature=temperatures, dtype=dtypes, layout=layouts,
       positives_by=st.sampled_from(("index", "labels", "two_label_sets")), classes=st.integers(1, 12),
       exclude_self=st.booleans(), reduction=reductions, seed=seeds)
def test_info_nce_anchors_as_candidates_match_oracle(kernel_device, m, dim, temperature, dtype, layout, positives_by, classes,
                                                     exclude_self, reduction, seed):
    with kernel_path(kernel_device) as device:
        gen = generator(seed)
        exclude_self = exclude_self and (positives_by != "index" or m >= 2)
        dim = fit_dim(dim, m, m)
        anchors = make_feature(m, dim, dtype, gen, layout)
        if positives_by == "labels":
            positives = dict(anchor_labels=torch.randint(0, classes, (m,), generator=gen))
        elif positives_by == "two_label_sets":
            positives = dict(anchor_labels=torch.randint(0, classes, (m,), generator=gen),
                             candidate_labels=torch.randint(0, classes, (m,), generator=gen))
        else:
            positives = dict(positive_index=index_positives(m, m, exclude_self, False, gen))
        options = dict(exclude_self=exclude_self, reduction=reduction)
        weights = reduction_weights(reduction, m, dtype, gen)
        check_against_oracle(
            lambda a: F.info_nce(a, None, temperature, **{k: v.to(device) for k, v in positives.items()},
                                 backend="fused", **options),
            lambda a, upcast: reference_info_nce(a, None, temperature, upcast=upcast, **positives, **options),
            [anchors], dtype, device, temperature, weights, names=["anchors"])


@pytest.mark.parametrize("kernel_device", KERNEL_DEVICES)
@given(m=sizes, n=sizes, dim=dims, temperature=temperatures, dtype=dtypes, layout1=layouts, layout2=layouts,
       self_similarity=st.booleans(), seed=seeds)
def test_similarity_matches_oracle(kernel_device, m, n, dim, temperature, dtype, layout1, layout2, self_similarity, seed):
    with kernel_path(kernel_device) as device:
        gen = generator(seed)
        if self_similarity:
            n = m
        dim = fit_dim(dim, m, n)
        a = make_feature(m, dim, dtype, gen, layout1)
        weights = random_weights((m, n), dtype, gen)
        if self_similarity:
            check_against_oracle(
                lambda x: F.similarity(x, None, temperature, backend="fused"),
                lambda x, upcast: reference.similarity(x, None, temperature, upcast=upcast),
                [a], dtype, device, temperature, weights, names=["a"])
            return
        b = make_feature(n, dim, dtype, gen, layout2)
        check_against_oracle(
            lambda x, y: F.similarity(x, y, temperature, backend="fused"),
            lambda x, y, upcast: reference.similarity(x, y, temperature, upcast=upcast),
            [a, b], dtype, device, temperature, weights, names=["a", "b"])


@pytest.mark.parametrize("kernel_device", KERNEL_DEVICES)
@given(m=sizes, bank=st.one_of(st.sampled_from((0, 1, 2, 33)), st.integers(0, 300)), dim=dims,
       temperature=temperatures, dtype=dtypes, layout1=layouts, layout2=layouts,
       positives=st.sampled_from(("own", "index", "labels")), reduction=reductions, seed=seeds)
def test_info_nce_paired_candidates_match_oracle(kernel_device, m, bank, dim, temperature, dtype, layout1, layout2,
                                                 positives, reduction, seed):
    """The memory-bank form: anchor i against its own candidate i and a shared bank of negatives."""
    with kernel_path(kernel_device) as device:
        gen = generator(seed)
        n = m + bank
        dim = fit_dim(dim, m, n)
        anchors = make_feature(m, dim, dtype, gen, layout1)
        candidates = make_feature(n, dim, dtype, gen, layout2)
        options = dict(paired_candidates=m, reduction=reduction)
        oracle_options = dict(paired=m, reduction=reduction)
        if positives == "index":  # some anchors name another anchor's candidate: no positive then
            index = torch.randint(0, n, (m,), generator=gen)
            options["positive_index"] = oracle_options["positive_index"] = index
        elif positives == "labels":
            anchor_labels, candidate_labels = torch.randint(0, 4, (m,), generator=gen), torch.randint(0, 4, (n,), generator=gen)
            options.update(anchor_labels=anchor_labels, candidate_labels=candidate_labels)
            oracle_options.update(anchor_labels=anchor_labels, candidate_labels=candidate_labels)
        fused_options = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in options.items()}
        weights = reduction_weights(reduction, m, dtype, gen)
        check_against_oracle(
            lambda a, b: F.info_nce(a, b, temperature, backend="fused", **fused_options),
            lambda a, b, upcast: reference_info_nce(a, b, temperature, upcast=upcast, **oracle_options),
            [anchors, candidates], dtype, device, temperature, weights, names=["anchors", "candidates"])
