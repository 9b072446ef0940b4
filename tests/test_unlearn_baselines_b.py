"""Bad Teacher, SCRUB, SSD, CU and Boundary Shrinking: runs through ``unlearn`` (with and without the
CL plug-in), the direction of each update against an independent computation, hyperparameter errors."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import coun_fast.unlearn.bad_teacher  # noqa: F401  (registers the methods)
import coun_fast.unlearn.boundary_shrink  # noqa: F401
import coun_fast.unlearn.contrastive_unlearning  # noqa: F401
import coun_fast.unlearn.scrub  # noqa: F401
import coun_fast.unlearn.ssd  # noqa: F401
from coun_fast.data.loader import AugmentedLoader
from coun_fast.models import rebuild
from coun_fast.unlearn import METHODS, unlearn
from coun_fast.unlearn.bad_teacher import plan_bad_teacher
from coun_fast.unlearn.boundary_shrink import plan_boundary_shrink
from coun_fast.unlearn.distill import distill_kl
from coun_fast.unlearn.scrub import plan_scrub
from method_setup import config, data, forget_data, split  # noqa: F401  (data, split: fixtures)
from nets import TinyNet

TRAINING = ["bad_teacher", "scrub", "cu", "boundary_shrink"]


def first_batch(data, indices, recipe="eval", batch_size=16):
    loader = AugmentedLoader(data.train, recipe, batch_size=batch_size, indices=indices, backend="cpu", device="cpu",
                             shuffle=False, normalization=data.train.normalization)
    return next(iter(loader))


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


# -- every method through unlearn ----------------------------------------------------------------
@pytest.mark.parametrize("method", TRAINING + [m + "+cl" for m in TRAINING])
def test_runs_through_unlearn(method, data, split):
    torch.manual_seed(0)
    original = TinyNet()
    before = state(original)
    hparams = {"omega": 3} if method.startswith("cu") else None  # the first omega retain batches must exist
    result = unlearn(method, original, data.train, split, config(), hparams=hparams, test=data.test)
    assert all(torch.equal(before[k], v) for k, v in original.state_dict().items())  # the Original is untouched
    assert any(not torch.equal(before[k], v) for k, v in result.model.state_dict().items())
    (row,) = result.train.history
    assert math.isfinite(row["loss"]) and (method.endswith("+cl") == ("cl" in row))
    assert result.train.trained_images > 0


def test_ssd_does_not_train_and_refuses_the_cl_plug_in(data, split):
    original = TinyNet()
    before = state(original)
    result = unlearn("ssd", original, data.train, split, config(), hparams={"alpha": 1.0})
    assert result.hparams == {"alpha": 1.0, "dampening": 1.0, "importance_batch_size": 128}
    # no training: no history; the cost is the two importance passes (training set, forget set)
    assert result.train.history == [] and result.train.seconds > 0
    assert result.train.trained_images == len(data.train) + len(split.forget)
    assert all(torch.equal(before[k], v) for k, v in original.state_dict().items())
    with pytest.raises(ValueError, match="'ssd' does not train"):
        unlearn("ssd+cl", original, data.train, split, config())


@pytest.mark.parametrize("method, hparams, match", [
    ("bad_teacher", {"temperature": 0}, "temperature must be a finite number > 0"),
    ("bad_teacher", {"retain_fraction": 1.5}, r"retain_fraction must be a number in \(0, 1\]"),
    ("scrub", {"msteps": -1}, "msteps must be a whole number >= 0"),
    ("scrub", {"msteps": 1.5}, "msteps must be a whole number"),
    ("scrub", {"gamma": -1}, "gamma must be a finite number >= 0"),
    ("scrub", {"alpha": float("nan")}, "alpha must be a finite number >= 0"),
    ("ssd", {"alpha": 0}, "alpha must be a finite number > 0"),
    ("ssd", {"dampening": -1}, "dampening must be a finite number > 0"),
    ("ssd", {"lambda": 1}, "has no hyperparameter lambda; it takes: alpha, dampening, importance_batch_size"),
    ("ssd", {"importance_batch_size": 0}, "importance_batch_size must be a whole number >= 1"),
    ("bad_teacher", {"kl_reduction": "sum"}, "kl_reduction must be one of 'mean', 'batchmean_t2'"),
    ("bad_teacher", {"augment": "no"}, "augment must be true or false"),
    ("scrub", {"forget_batch_size": 0}, "forget_batch_size must be a whole number >= 1"),
    ("cu", {"push_weight": "two"}, "push_weight must be one of 'batch', 'one'"),
    ("cu", {"batches": "random"}, "batches must be one of 'authors', 'shuffled'"),
    ("cu", {"omega": 5}, r"batches='authors' reuses the first omega x batch_size = 80 retain samples"),
    ("rl", {"variant": "mixed"}, "variant must be one of 'auto', 'forget_then_retain', 'union'"),
    ("salun", {"mask": "soft"}, "mask must be one of 'hard', 'leaky'"),
    ("cu", {"temperature": 0}, "temperature must be a finite number > 0"),
    ("cu", {"omega": 0}, "omega must be a whole number >= 1"),
    ("cu", {"scale": -0.5}, "scale must be a finite number >= 0"),
    ("cu", {"stop_acc": 150}, r"stop_acc is a percentage in \[0, 100\]"),
    ("cu", {"early_stop": "yes"}, "early_stop must be true or false"),
    ("boundary_shrink", {"bound": -0.1}, "bound must be a finite number >= 0"),
    ("boundary_shrink", {"bound": 2}, r"bound is a step in \[0, 1\] pixel space"),
])
def test_bad_hyperparameters(method, hparams, match, data, split):
    with pytest.raises(ValueError, match=match):
        unlearn(method, TinyNet(), data.train, split, config(), hparams=hparams, test=data.test)


def test_cu_needs_the_test_split_for_its_stopping_rule(data, split):
    with pytest.raises(ValueError, match="cu's stopping rule reads test accuracy"):
        unlearn("cu", TinyNet(), data.train, split, config(), hparams={"omega": 2})
    unlearn("cu", TinyNet(), data.train, split, config(), hparams={"omega": 2, "stop_acc": 50.0})
    unlearn("cu", TinyNet(), data.train, split, config(), hparams={"omega": 2, "early_stop": False})


def test_distill_kl_is_the_textbook_formula():
    torch.manual_seed(0)
    s, t = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
    for temperature in (1.0, 4.0):
        expected = F.kl_div(F.log_softmax(s / temperature, 1), F.softmax(t / temperature, 1),
                            reduction="batchmean") * temperature**2
        torch.testing.assert_close(distill_kl(s, t, temperature), expected)
    assert float(distill_kl(s, s)) == pytest.approx(0.0, abs=1e-12)


# -- Bad Teacher ---------------------------------------------------------------------------------
def test_bad_teacher_teachers_and_zero_gradient_on_retain(data, split):
    torch.manual_seed(0)
    original = TinyNet()
    fd = forget_data(data, split)
    hparams = {**METHODS["bad_teacher"].defaults, "retain_fraction": 0.5}
    plan = plan_bad_teacher(original, fd, config(seed=5), hparams)
    objective, student = plan.objective, plan.model.eval()
    assert plan.loop == "mixed" and objective.extra_forward_views == 1
    assert set(split.forget) <= set(plan.indices) and len(plan.indices) == len(split.forget) + len(split.retain) // 2
    # retain rows only, student == competent teacher: zero loss and zero gradient
    batch = first_batch(data, split.retain)
    assert not objective.retain_rows(batch).logical_not().any()
    loss, _ = objective(student, batch)
    grads = torch.autograd.grad(loss, list(student.parameters()), allow_unused=True)
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-6)
    assert all(g is None or float(g.abs().max()) < 1e-6 for g in grads)
    # forget rows only: the teacher is the freshly initialised network seeded by config.seed
    with torch.random.fork_rng():
        torch.manual_seed(5)
        incompetent = rebuild(original).eval()
    batch = first_batch(data, split.forget)
    loss, parts = objective(student, batch)
    teacher = F.softmax(incompetent(batch.inputs), 1)  # F.kl_div's default "mean": over all N x C elements
    expected = F.kl_div(F.log_softmax(student(batch.inputs), 1), teacher, reduction="sum") / teacher.numel()
    torch.testing.assert_close(loss, expected)
    assert float(loss.detach()) > 1e-4 and float(parts["kl_retain"]) == 0.0


# -- SCRUB ---------------------------------------------------------------------------------------
def test_scrub_max_step_raises_the_kl_on_forget_data(data, split):
    torch.manual_seed(0)
    fd = forget_data(data, split)
    plan = plan_scrub(TinyNet(), fd, config(), {**METHODS["scrub"].defaults, "msteps": 1})
    objective, student = plan.objective, plan.model
    with torch.no_grad():  # start a little away from the teacher, so the KL is positive before
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = first_batch(data, split.forget, batch_size=len(split.forget))

    def kl():
        student.eval()
        with torch.no_grad():
            return float(distill_kl(student(batch.inputs), objective.teacher(batch.inputs)))

    before = kl()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05)
    student.train()
    objective.start_epoch(student, optimizer, 0)
    after = kl()
    assert after > before > 0
    assert objective.side_trained_images == objective.side_forward_images == len(split.forget)
    weights = state(student)
    objective.start_epoch(student, optimizer, 1)  # epoch >= msteps: no max steps
    assert all(torch.equal(weights[k], v) for k, v in student.state_dict().items())
    assert objective.side_trained_images == len(split.forget)


# -- SSD -----------------------------------------------------------------------------------------
def independent_importance(model, data, indices, batch_size=16):
    loader = AugmentedLoader(data.train, "eval", batch_size=batch_size, indices=indices, backend="cpu", device="cpu",
                             shuffle=False, normalization=data.train.normalization)
    params = dict(model.named_parameters())
    sums = {k: torch.zeros_like(p) for k, p in params.items()}
    count = 0
    for batch in loader:
        grads = torch.autograd.grad(F.cross_entropy(model(batch.inputs), batch.labels), list(params.values()))
        for k, g in zip(params, grads):
            sums[k] += g * g
        count += 1
    return {k: v / count for k, v in sums.items()}


@pytest.mark.parametrize("alpha, dampening", [(1.0, 1.0), (2.0, 0.5)])
def test_ssd_dampens_exactly_the_selected_weights(alpha, dampening, data, split):
    torch.manual_seed(0)
    original = TinyNet()
    result = unlearn("ssd", original, data.train, split, config(),
                     hparams={"alpha": alpha, "dampening": dampening, "importance_batch_size": 16})
    reference = copy.deepcopy(original).eval()
    # the authors' full set: the retain samples, then the forget samples (ConcatDataset((retain, forget)))
    full = independent_importance(reference, data, np.concatenate([split.retain, split.forget]))
    forget = independent_importance(reference, data, np.sort(split.forget))
    selected = kept = 0
    new = dict(result.model.named_parameters())
    for name, p in original.named_parameters():
        where = forget[name] > alpha * full[name]
        assert torch.equal(new[name][~where], p[~where]), name  # bit-identical
        beta = torch.clamp(dampening * full[name][where] / forget[name][where], max=1.0)
        torch.testing.assert_close(new[name][where], p[where] * beta, rtol=1e-6, atol=0)
        selected, kept = selected + int(where.sum()), kept + int((~where).sum())
    assert selected > 0 and kept > 0
    for (name, a), b in zip(original.named_buffers(), dict(result.model.named_buffers()).values()):
        assert torch.equal(a, b), name


# -- Boundary Shrinking --------------------------------------------------------------------------
def test_boundary_shrink_labels_come_from_the_frozen_copy_on_the_pixel_grid(data, split):
    torch.manual_seed(0)
    original = TinyNet().eval()
    plan = plan_boundary_shrink(original, forget_data(data, split), config(), {"bound": 0.1})
    objective = plan.objective
    assert plan.loop == "forget" and objective.extra_forward_views == 3
    batch = first_batch(data, split.forget, recipe="train")
    labels, adv = objective.nearest_wrong(batch.inputs, batch.labels)
    mean = torch.tensor(data.train.normalization.mean).view(1, 3, 1, 1)
    std = torch.tensor(data.train.normalization.std).view(1, 3, 1, 1)
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1
    torch.testing.assert_close(adv * 255, torch.round(adv * 255), rtol=0, atol=1e-4)
    pixels = batch.inputs * std + mean
    assert float((adv - pixels).abs().max()) <= 0.1 + 0.5 / 255 + 1e-5
    # the FGSM direction, recomputed: the sign of the input gradient of the Original's CE
    x = pixels.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(original((x - mean) / std), batch.labels), x)
    expected = torch.round((pixels + 0.1 * grad.sign()).clamp(0, 1) * 255) / 255
    torch.testing.assert_close(adv, expected, rtol=0, atol=1.01 / 255)
    with torch.no_grad():
        assert torch.equal(labels, original((adv - mean) / std).argmax(1))
    model = plan.model.eval()
    loss, _ = objective(model, batch)
    torch.testing.assert_close(loss, F.cross_entropy(model(batch.inputs), labels))
