"""Baselines GA, NegGrad+, RL, l1-sparse, SalUn and NoT: each runs (also with +cl), moves in the
right direction, keeps its invariants (SalUn's frozen weights, NoT's negation), and rejects bad
hyperparameters with a message naming them."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import coun_fast.unlearn.gradient_ascent  # noqa: F401  (registers the methods)
import coun_fast.unlearn.l1_sparse  # noqa: F401
import coun_fast.unlearn.negation  # noqa: F401
import coun_fast.unlearn.neggrad_plus  # noqa: F401
import coun_fast.unlearn.random_labels  # noqa: F401
import coun_fast.unlearn.salun  # noqa: F401
from coun_fast.data.loader import AugmentedLoader
from coun_fast.models import build
from coun_fast.train import fit
from coun_fast.unlearn import METHODS, unlearn
from coun_fast.unlearn.base import RetainData
from coun_fast.unlearn.gradient_ascent import GradientAscentObjective
from coun_fast.unlearn.l1_sparse import L1SparseObjective
from coun_fast.unlearn.negation import negate
from coun_fast.unlearn.random_labels import RandomLabelObjective
from coun_fast.unlearn.salun import top_fraction_mask
from method_setup import config, data, forget_data, split  # noqa: F401  (data, split: fixtures)
from nets import TinyNet

METHOD_NAMES = ["ga", "neggrad_plus", "rl", "l1_sparse", "salun", "not"]


def same_state(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def a_batch(data, indices):
    loader = AugmentedLoader(data.train, "eval", batch_size=len(indices), indices=indices, shuffle=False,
                             backend="cpu", device="cpu")
    return next(iter(loader))


@pytest.mark.parametrize("cl", [False, True])
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_each_method_runs_and_leaves_the_original_alone(method, cl, data, split):
    torch.manual_seed(0)
    original = TinyNet()
    before = copy.deepcopy(original.state_dict())
    name = method + ("+cl" if cl else "")
    result = unlearn(name, original, data.train, split, config())
    assert all(torch.equal(before[k], v) for k, v in original.state_dict().items())
    assert not same_state(result.model, original)
    row = result.train.history[0]
    assert all(math.isfinite(v) for v in row.values() if isinstance(v, float)), row
    assert result.method == name and ("cl" in row or not cl)


def test_ga_raises_the_forget_loss(data, split):
    torch.manual_seed(0)
    model = TinyNet().eval()  # eval: BN and dropout identical in both measurements
    batch = a_batch(data, split.forget)
    ce_before = F.cross_entropy(model(batch.inputs), batch.labels)
    loss, parts = GradientAscentObjective()(model, batch)
    assert torch.equal(loss, -parts["ce"]) and torch.allclose(parts["ce"], ce_before)
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.05).step()
    assert F.cross_entropy(model(batch.inputs), batch.labels) > ce_before
    plan = METHODS["ga"].plan(TinyNet(), forget_data(data, split), config(), {})
    assert plan.loop == "forget" and np.array_equal(plan.indices, split.forget)


def test_neggrad_plus_with_beta_one_is_ft(data, split):
    torch.manual_seed(1)
    original = TinyNet()
    ft = unlearn("ft", original, data.train, split, config(epochs=2))
    neggrad = unlearn("neggrad_plus", original, data.train, split, config(epochs=2), hparams={"beta": 1.0, "augment": True})
    assert same_state(ft.model, neggrad.model)
    assert neggrad.train.trained_images == ft.train.trained_images


def test_neggrad_plus_counts_and_ascends_on_forget(data, split):
    result = unlearn("neggrad_plus", TinyNet(), data.train, split, config(), hparams={"beta": 0.9})
    steps = math.ceil(len(split.retain) / 16)
    forget_sizes = [min(16, len(split.forget) - 16 * k) for k in range(math.ceil(len(split.forget) / 16))]
    side = sum(forget_sizes[i % len(forget_sizes)] for i in range(steps))
    assert result.train.trained_images == len(split.retain) + side
    row = result.train.history[0]
    assert row["loss"] == pytest.approx(0.9 * row["ce_retain"] - 0.1 * row["ce_forget"], rel=1e-5)


def test_random_labels_relabel_forget_rows_only(data, split):
    objective = RandomLabelObjective(split.forget, 4)
    batch = a_batch(data, np.arange(len(data.train)))
    forget = torch.as_tensor(np.isin(np.arange(len(data.train)), split.forget))
    assert torch.equal(objective.retain_rows(batch), ~forget)
    torch.manual_seed(0)
    draws = torch.stack([objective.relabel(batch) for _ in range(500)])
    assert torch.equal(draws[:, ~forget], batch.labels[~forget].expand(500, -1))
    drawn = draws[:, forget]
    assert drawn.min() >= 0 and drawn.max() < 4
    changed = (drawn != batch.labels[forget]).float().mean()
    assert abs(float(changed) - 3 / 4) < 0.03
    counts = torch.bincount(drawn.flatten(), minlength=4).float() / drawn.numel()
    assert torch.allclose(counts, torch.full((4,), 0.25), atol=0.03)
    plan = METHODS["rl"].plan(TinyNet(), forget_data(data, split), config(), {"variant": "auto"})
    assert plan.loop == "mixed" and np.array_equal(plan.indices, np.arange(len(data.train)))


def test_l1_penalty_and_schedule(data, split):
    objective = L1SparseObjective(0.01, 4)
    assert [objective.gamma_at(t) for t in range(7)] == pytest.approx([0.01, 0.0075, 0.005, 0.0025, 0, 0, 0])
    model = TinyNet().eval()
    batch = a_batch(data, split.retain[:8])
    ce = F.cross_entropy(model(batch.inputs), batch.labels)
    norm = sum(p.abs().sum() for p in model.parameters())
    objective.start_epoch(model, None, 1)
    loss, parts = objective(model, batch)
    torch.testing.assert_close(parts["l1"], 0.0075 * norm)
    torch.testing.assert_close(loss, ce + 0.0075 * norm)
    objective.start_epoch(model, None, 4)
    loss, parts = objective(model, batch)
    assert float(parts["l1"]) == 0.0 and torch.equal(loss, ce)


@pytest.mark.parametrize("threshold", [0.1, 0.5, 1.0])
def test_salun_mask_fraction(threshold):
    torch.manual_seed(0)
    scores = [torch.rand(7, 5), torch.rand(13), torch.zeros(4)]
    mask = top_fraction_mask(scores, threshold)
    total = sum(m.numel() for m in mask)
    assert [m.shape for m in mask] == [s.shape for s in scores]
    assert sum(int(m.sum()) for m in mask) == int(threshold * total)  # the authors' int(t * N) cut
    flat_scores, flat_mask = torch.cat([s.flatten() for s in scores]), torch.cat([m.flatten() for m in mask])
    if threshold < 1:
        assert flat_scores[flat_mask].min() >= flat_scores[~flat_mask].max()


def test_salun_freezes_masked_out_weights_under_weight_decay_and_momentum(data, split):
    torch.manual_seed(2)
    original = TinyNet()
    cfg = config(epochs=2, lr=0.05, momentum=0.9, weight_decay=5e-4)
    plan = METHODS["salun"].plan(original, forget_data(data, split), cfg, {**METHODS["salun"].defaults, "threshold": 0.5})
    mask = plan.objective.mask
    total = sum(m.numel() for m in mask)
    assert sum(int(m.sum()) for m in mask) == int(0.5 * total)
    result = fit(plan.model, data.train, plan.objective, cfg, indices=plan.indices)
    assert plan.prepared_images == len(split.forget)  # the saliency pass, added to the cost by unlearn()
    assert result.trained_images == 2 * len(plan.indices)
    plugged = unlearn("salun+cl", original, data.train, split, cfg, hparams={"threshold": 0.5})
    for model in (plan.model, plugged.model):
        moved = 0
        for p, p0, m in zip(model.parameters(), original.parameters(), mask):
            assert torch.equal(p[~m], p0[~m])
            moved += int((p[m] != p0[m]).sum())
        assert moved > 0.9 * sum(int(m.sum()) for m in mask)


def test_salun_with_threshold_one_is_rl(data, split):
    torch.manual_seed(3)
    original = TinyNet()
    rl = unlearn("rl", original, data.train, split, config())
    salun = unlearn("salun", original, data.train, split, config(), hparams={"threshold": 1.0})
    assert same_state(rl.model, salun.model)
    # the saliency pass (forward and backward over the forget set) is part of SalUn's cost
    assert salun.train.trained_images == rl.train.trained_images + len(split.forget)


def test_not_negates_the_first_layer(data, split):
    torch.manual_seed(4)
    original = TinyNet()
    plan = METHODS["not"].plan(original, RetainData(data.train, split.retain, data.train.normalization), config(), {})
    params, before = list(plan.model.parameters()), list(original.parameters())
    assert torch.equal(params[0], -before[0])
    assert all(torch.equal(a, b) for a, b in zip(params[1:], before[1:]))
    assert not METHODS["not"].uses_forget
    vit = build("vit_small_data", 4, dim=32, depth=1, heads=2, dim_head=8, mlp_dim=32)
    cnn = build("small_cnn", 4, widths=(4, 8))
    for model, negated in ((vit, {0, 4}), (cnn, {0})):
        flipped = negate(copy.deepcopy(model))
        for i, (a, b) in enumerate(zip(flipped.parameters(), model.parameters())):
            assert torch.equal(a, -b if i in negated else b), i


def test_not_plus_cl_is_coun_from_the_negated_model(data, split):
    torch.manual_seed(5)
    original = TinyNet()
    cfg = config(epochs=2)
    coun = unlearn("coun", negate(copy.deepcopy(original)), data.train, split, cfg,
                   hparams={"lam": 0.7, "temperature": 0.2})
    plugged = unlearn("not+cl", original, data.train, split, cfg, hparams={"cl_lam": 0.7, "cl_temperature": 0.2})
    for (name, a), b in zip(coun.model.state_dict().items(), plugged.model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("method, hparams, match", [
    ("neggrad_plus", {"beta": 0}, r"beta must be a number in \(0, 1\]"),
    ("neggrad_plus", {"beta": 1.5}, r"beta must be a number in \(0, 1\]"),
    ("salun", {"threshold": 0}, r"threshold must be a number in \(0, 1\]"),
    ("salun", {"threshold": 1.2}, r"threshold must be a number in \(0, 1\]"),
    ("l1_sparse", {"gamma": -1e-4}, "gamma must be a finite number >= 0"),
    ("l1_sparse", {"l1_epochs": 2.5}, "l1_epochs must be a whole number"),
    ("l1_sparse", {"l1_epochs": "4"}, "l1_epochs must be a whole number"),
])
def test_bad_hyperparameters(method, hparams, match, data, split):
    with pytest.raises(ValueError, match=match):
        unlearn(method, TinyNet(), data.train, split, config(), hparams=hparams)
