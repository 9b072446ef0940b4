"""Each baseline against its authors' code (docs/fidelity.md): the formulas, batch sizes, orders
and options that make coun_fast's defaults faithful, each pinned on tiny data against an
independent transcription of the authors' definition."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from coun_fast import recipes
from coun_fast.data.embedded import synthetic
from coun_fast.data.loader import AugmentedLoader
from coun_fast.data.splits import class_split
from coun_fast.experiment import load_config
from coun_fast.models import build, rebuild
from coun_fast.train import PRESETS, fit, lr_factor
from coun_fast.unlearn import METHODS, method_config, unlearn
from coun_fast.unlearn.bad_teacher import bad_teacher_loss
from coun_fast.unlearn.base import ForgetData, run_loader
from coun_fast.unlearn.contrastive_unlearning import contrastive_unlearning_loss
from coun_fast.unlearn.random_labels import RandomLabelObjective
from coun_fast.unlearn.salun import saliency
from method_setup import config, data, forget_data, split  # noqa: F401  (data, split: fixtures)
from nets import TinyNet


def with_defaults(method: str, **changes) -> dict:
    return {**METHODS[method].defaults, **changes}


# -- Bad Teacher -----------------------------------------------------------------------------------
def authors_unlearner_loss(output, labels, full_teacher_logits, unlearn_teacher_logits, temperature):
    """vikram2000b/bad-teaching-unlearning unlearn.py ``UnlearnerLoss``: labels 1 = forget row."""
    labels = labels[:, None]
    f_teacher = F.softmax(full_teacher_logits / temperature, dim=1)
    u_teacher = F.softmax(unlearn_teacher_logits / temperature, dim=1)
    overall = labels * u_teacher + (1 - labels) * f_teacher
    student = F.log_softmax(output / temperature, dim=1)
    # F.kl_div's default reduction in their (and today's) torch: the mean over all N x C elements;
    # torch announces that "mean" will behave as "batchmean" in a later major release
    elementwise = F.kl_div(student, overall, reduction="sum") / overall.numel()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        default = F.kl_div(student, overall)
    if torch.__version__.split(".")[0] == "2":
        torch.testing.assert_close(default, elementwise)
    return elementwise


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_bad_teacher_loss_is_f_kl_div_with_its_default_reduction(temperature):
    torch.manual_seed(0)
    student, competent, incompetent = (torch.randn(6, 10, dtype=torch.float64) for _ in range(3))
    is_forget = torch.tensor([1, 0, 0, 1, 0, 1], dtype=torch.float64)
    mixed = torch.where(is_forget[:, None].bool(), incompetent, competent)  # each row's teacher logits
    expected = authors_unlearner_loss(student, is_forget, competent, incompetent, temperature)
    loss, rows = bad_teacher_loss(student, mixed, temperature)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(rows.sum(), loss)
    # the named option: per-row mean times T^2 (Hinton's scaling) is C * T^2 times the authors' value
    scaled, _ = bad_teacher_loss(student, mixed, temperature, "batchmean_t2")
    torch.testing.assert_close(scaled, expected * 10 * temperature**2)


def test_bad_teacher_defaults_and_protocol(data, split):
    plan = METHODS["bad_teacher"].plan(TinyNet(), forget_data(data, split), config(),
                                       with_defaults("bad_teacher"))
    assert plan.objective.recipe == "eval"  # no augmentation by default, as the authors
    assert plan.objective.kl_reduction == "mean"
    authors = method_config(METHODS["bad_teacher"], PRESETS["paper_unlearn"], "authors")
    assert (authors.optimizer, authors.lr, authors.epochs, authors.batch_size, authors.weight_decay) == \
        ("adam", 1e-4, 1, 256, 0.0)
    assert method_config(METHODS["bad_teacher"], PRESETS["paper_unlearn"]) == PRESETS["paper_unlearn"]
    # explicit settings win over the authors' protocol
    assert method_config(METHODS["bad_teacher"], PRESETS["paper_unlearn"], "authors", {"epochs": 3}).epochs == 3


def test_adam_protocol_trains_with_adam(data, split):
    cfg = method_config(METHODS["bad_teacher"], config(), "authors", {"batch_size": 16, "device": "cpu"})
    result = unlearn("bad_teacher", TinyNet(), data.train, split, cfg)
    assert len(result.train.history) == 1 and result.train.history[0]["lr"] == pytest.approx(1e-4)


# -- CU ------------------------------------------------------------------------------------------
def authors_cu_loss(u_feat, rt_feat, u_label, rt_label, temperature, single_class_guard=True):
    """Hongkyu-Lee/Contrastive-Unlearning ``UnlearnTrainer.Loss_v1``, anchor by anchor, in float64.

    ``single_class_guard``: add 1 to the denominator of an anchor without a same-class retain
    sample (their ``single_class`` mode); anchors without an other-class sample (their 0/0) are
    skipped, as coun_fast does.
    """
    losses = []
    n_rt = len(rt_label)
    for i in range(len(u_label)):
        logits = [float(u_feat[i] @ rt_feat[a]) / temperature for a in range(n_rt)]
        top = max(logits)
        shifted = [v - top for v in logits]
        negatives = [a for a in range(n_rt) if rt_label[a] != u_label[i]]
        positives = [a for a in range(n_rt) if rt_label[a] == u_label[i]]
        if not negatives:
            continue
        denominator = sum(math.exp(shifted[a]) + 1e-20 for a in positives)
        if not positives and single_class_guard:
            denominator += 1
        # log_prob = neg_logits - log(pos_logits), broadcast over all n_rt columns, then summed
        log_prob_sum = sum(shifted[a] for a in negatives) - n_rt * math.log(denominator)
        losses.append(-log_prob_sum / len(negatives))
    return sum(losses) / len(losses)


def test_cu_loss_equals_a_float64_loop_of_the_authors_code():
    torch.manual_seed(0)
    zf = F.normalize(torch.randn(6, 5, dtype=torch.float64), dim=1)
    zr = F.normalize(torch.randn(12, 5, dtype=torch.float64), dim=1)
    yf = torch.tensor([0, 1, 2, 0, 1, 0])  # repeated classes among the anchors
    yr = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 1, 0, 1])  # unequal class counts: B / |N(i)| differs per anchor
    for temperature in (0.7, 0.1):
        loss, used = contrastive_unlearning_loss(zf, yf, zr, yr, temperature, normalize=False)
        assert loss.item() == pytest.approx(authors_cu_loss(zf, zr, yf, yr, temperature), rel=1e-12)
        assert bool(used.all())
    # a retain batch without class 2 (anchor 2 has no positive): the guard of their single_class mode
    yr_missing = torch.tensor([0, 0, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1])
    loss, _ = contrastive_unlearning_loss(zf, yf, zr, yr_missing, 0.7, normalize=False)
    assert loss.item() == pytest.approx(authors_cu_loss(zf, zr, yf, yr_missing, 0.7), rel=1e-12)
    # a one-class retain batch: anchors of that class have no negative and are left out of the mean
    loss, used = contrastive_unlearning_loss(zf, yf, zr, torch.zeros(12, dtype=torch.long), 0.7, normalize=False)
    assert used.tolist() == [False, True, True, False, True, False]
    assert loss.item() == pytest.approx(authors_cu_loss(zf, zr, yf, torch.zeros(12, dtype=torch.long), 0.7), rel=1e-12)
    # unnormalised inputs are normalised first by default
    loss, _ = contrastive_unlearning_loss(3 * zf, yf, 2 * zr, yr, 0.7)
    assert loss.item() == pytest.approx(authors_cu_loss(zf, zr, yf, yr, 0.7), rel=1e-12)


def test_cu_paper_weight_option_and_gradients():
    torch.manual_seed(1)
    zf = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    zr = torch.randn(10, 4, dtype=torch.float64, requires_grad=True)
    yf, yr = torch.tensor([0, 1, 2, 0, 1]), torch.arange(10) % 3
    same = yf[:, None] == yr[None, :]

    def expected(weight):
        s = F.normalize(zf, dim=1) @ F.normalize(zr, dim=1).T / 0.5
        w = [1.0 if weight == "one" else 10 / int((~same[i]).sum()) for i in range(5)]
        return torch.stack([-s[i][~same[i]].mean() + w[i] * torch.logsumexp(s[i][same[i]], 0) for i in range(5)]).mean()

    for weight in ("one", "batch"):
        loss, _ = contrastive_unlearning_loss(zf, yf, zr, yr, 0.5, weight)
        # equal gradients (the detached row maximum shifts the value only, by a constant)
        for got, want in zip(torch.autograd.grad(loss, [zf, zr]), torch.autograd.grad(expected(weight), [zf, zr])):
            torch.testing.assert_close(got, want)


class RetainLog:
    """Records the indices of the retain batches a CU objective draws."""

    def __init__(self, stream):
        self.stream, self.drawn = stream, []

    def next(self):
        batch = self.stream.next()
        self.drawn.append(batch.indices.tolist())
        return batch

    def __getattr__(self, name):
        return getattr(self.stream, name)


def cu_run(data, split, batches, epochs=1, **hparams):
    plan = METHODS["cu"].plan(TinyNet(), ForgetData(data.train, np.asarray(split.retain), data.train.normalization,
                                                    np.asarray(split.forget), test=data.test),
                              config(batch_size=8, epochs=epochs),
                              with_defaults("cu", omega=3, batches=batches, early_stop=False, **hparams))
    log = RetainLog(plan.objective.retain_stream)
    plan.objective.retain_stream = log
    seen = []
    call = type(plan.objective).__call__

    def spy(objective, model, batch):
        seen.append(batch.indices.tolist())
        return call(objective, model, batch)

    type(plan.objective).__call__ = spy
    try:
        fit(plan.model, data.train, plan.objective, config(batch_size=8, epochs=epochs), indices=plan.indices)
    finally:
        type(plan.objective).__call__ = call
    return seen, log.drawn


def test_cu_authors_batches_reuse_the_first_omega_retain_batches(data, split):
    seen, drawn = cu_run(data, split, "authors", epochs=2)
    forget = sorted(split.forget.tolist())
    forget_batches = [forget[i:i + 8] for i in range(0, len(forget), 8)]
    # every forget batch, in dataset order, for omega = 3 steps in a row, each epoch
    assert seen == [b for b in forget_batches for _ in range(3)] * 2
    retain = sorted(split.retain.tolist())
    first = [retain[0:8], retain[8:16], retain[16:24]]
    assert drawn == first * (2 * len(forget_batches))  # the same three retain batches for every forget batch


def test_cu_shuffled_batches_fix_covers_the_retain_set(data, split):
    seen, drawn = cu_run(data, split, "shuffled", epochs=2)
    assert len(seen) == 2 * 3 * math.ceil(len(split.forget) / 8)
    assert seen[:3] == [seen[0]] * 3  # still omega steps per forget batch
    assert sorted(i for b in seen[::3][: math.ceil(len(split.forget) / 8)] for i in b) == sorted(split.forget.tolist())
    assert len({i for b in drawn for i in b}) > 24  # beyond the first omega batches


def test_cu_stopping_rule_reads_the_whole_test_set(data, split):
    torch.manual_seed(0)
    result = unlearn("cu", TinyNet(), data.train, split, config(epochs=2, batch_size=8), hparams={"omega": 2},
                     test=data.test)
    model = result.model.eval()
    row = result.train.history[-1]

    def accuracy(dataset, indices):
        loader = AugmentedLoader(dataset, "eval", batch_size=100, indices=indices, shuffle=False, backend="cpu",
                                 device="cpu", normalization=data.train.normalization)
        with torch.no_grad():
            return 100.0 * np.mean([bool(p) for b in loader for p in model(b.inputs).argmax(1) == b.labels])

    assert row["cu_test_acc"] == pytest.approx(accuracy(data.test, np.arange(len(data.test))))
    assert row["cu_forget_acc"] == pytest.approx(accuracy(data.train, np.sort(split.forget)))
    assert ("stopped" in row) == (row["cu_forget_acc"] <= row["cu_test_acc"])
    # class-wise: the forgotten class's test accuracy against 100 / C
    class_wise = class_split(data.train.labels, [1], class_names=data.train.classes)
    result = unlearn("cu", TinyNet(), data.train, class_wise, config(epochs=1, batch_size=8),
                     hparams={"omega": 2, "batches": "shuffled"}, test=data.test)
    row = result.train.history[-1]
    assert row["cu_threshold"] == 25.0
    forgotten = np.flatnonzero(data.test.labels == 1)
    assert row["cu_forgotten_class_test_acc"] == pytest.approx(accuracy(data.test, forgotten))


def test_projection_head_model_as_the_authors_supcon_resnet():
    torch.manual_seed(0)
    model = build("small_cnn", 4, projection_dim=16).eval()
    x = torch.randn(3, 3, 8, 8)
    h = model.encoder.forward_features(x)
    z = F.normalize(model.head(h), dim=1)
    features = model.forward_features(x)
    torch.testing.assert_close(features, F.relu(z))  # their fc's in-place ReLU changes the returned feature
    torch.testing.assert_close(model(x), model.fc(F.relu(z)))
    assert features.shape == (3, 16) and model.num_features == 16
    assert not any(k.startswith("encoder.head") for k in model.state_dict())  # the backbone's classifier is gone
    again = rebuild(model)
    assert again.build_args == model.build_args and again.build_args["projection_dim"] == 16
    assert model.first_layer() is model.encoder.first_layer()


def test_cu_uses_the_projection_feature_as_is(data, split):
    torch.manual_seed(0)
    original = build("small_cnn", 4, widths=[8, 8], projection_dim=16)
    plan = METHODS["cu"].plan(original, forget_data(data, split), config(batch_size=8),
                              with_defaults("cu", early_stop=False, omega=2))
    assert plan.objective.normalize is False
    plan = METHODS["cu"].plan(TinyNet(), forget_data(data, split), config(batch_size=8),
                              with_defaults("cu", early_stop=False, omega=2))
    assert plan.objective.normalize is True and plan.objective.recipe == "eval"
    assert (plan.objective.scale, plan.objective.temperature) == (3.0, 0.7)


# -- RL and SalUn --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cifar10_like():
    return synthetic(num_classes=4, train_per_class=20, test_per_class=4, image_size=8, seed=0, name="cifar10")


def test_rl_on_cifar10_visits_the_forget_set_then_the_retain_set(cifar10_like, split, monkeypatch):
    fd = ForgetData(cifar10_like.train, np.asarray(split.retain), cifar10_like.train.normalization,
                    np.asarray(split.forget))
    plan = METHODS["rl"].plan(TinyNet(), fd, config(), {"variant": "auto"})
    assert plan.loop == "retain" and sorted(plan.indices) == sorted(split.retain)
    visits = []
    forget_pass, loop_step = RandomLabelObjective.forget_pass_loss, RandomLabelObjective.__call__
    monkeypatch.setattr(RandomLabelObjective, "forget_pass_loss",
                        lambda self, model, batch: visits.append(("forget", batch.indices.tolist()))
                        or forget_pass(self, model, batch))
    monkeypatch.setattr(RandomLabelObjective, "__call__",
                        lambda self, model, batch: visits.append(("retain", batch.indices.tolist()))
                        or loop_step(self, model, batch))
    result = fit(plan.model, cifar10_like.train, plan.objective, config(epochs=2), indices=plan.indices)
    for epoch in range(2):
        epoch_visits = visits[epoch * len(visits) // 2:(epoch + 1) * len(visits) // 2]
        kinds = [kind for kind, _ in epoch_visits]
        forget_steps = kinds.count("forget")
        assert kinds == ["forget"] * forget_steps + ["retain"] * (len(kinds) - forget_steps)
        assert sorted(i for kind, b in epoch_visits if kind == "forget" for i in b) == sorted(split.forget.tolist())
        assert sorted(i for kind, b in epoch_visits if kind == "retain" for i in b) == sorted(split.retain.tolist())
    # the forget images count in the cost
    assert result.trained_images == 2 * (len(split.forget) + len(split.retain))


def test_rl_variant_by_data_set_and_by_choice(data, split):
    fd = forget_data(data, split)  # the data set is named "synthetic": the authors' union branch
    assert METHODS["rl"].plan(TinyNet(), fd, config(), {"variant": "auto"}).loop == "mixed"
    assert METHODS["rl"].plan(TinyNet(), fd, config(), {"variant": "forget_then_retain"}).loop == "retain"
    assert METHODS["salun"].plan(TinyNet(), fd, config(), with_defaults("salun", variant="forget_then_retain")
                                 ).loop == "retain"


def test_salun_forget_then_retain_keeps_the_hard_mask(cifar10_like, split):
    torch.manual_seed(2)
    original = TinyNet()
    cfg = config(epochs=2, lr=0.05, momentum=0.9, weight_decay=5e-4)
    result = unlearn("salun", original, cifar10_like.train, split, cfg)
    plan = METHODS["salun"].plan(original, ForgetData(cifar10_like.train, np.asarray(split.retain),
                                                      cifar10_like.train.normalization, np.asarray(split.forget)),
                                 cfg, with_defaults("salun"))
    for p, p0, m in zip(result.model.parameters(), original.parameters(), plan.objective.mask):
        assert torch.equal(p[~m], p0[~m])


def test_salun_saliency_on_shuffled_training_views(data, split):
    torch.manual_seed(0)
    model = TinyNet()
    plan = METHODS["salun"].plan(model, forget_data(data, split), config(), with_defaults("salun", threshold=0.3))
    loader = run_loader(data.train, np.asarray(split.forget), data.train.normalization, config(), "train",
                        seed_offset=6)
    assert loader.shuffle and loader.recipe.name == "train"
    expected = saliency(model, loader)  # the same loader: the training recipe, shuffled
    flat = torch.cat([g.flatten() for g in expected])
    cut = torch.sort(flat, descending=True, stable=True).values[int(0.3 * flat.numel()) - 1]
    chosen = torch.cat([m.flatten() for m in plan.objective.mask])
    assert int(chosen.sum()) == int(0.3 * flat.numel())
    assert bool((flat[chosen] >= cut).all()) and bool((flat[~chosen] <= cut).all())
    eval_loader = run_loader(data.train, np.asarray(split.forget), data.train.normalization, config(), "eval",
                             shuffle=False)
    assert not all(torch.equal(a, b) for a, b in zip(expected, saliency(model, eval_loader)))


def test_salun_leaky_mask_lets_weight_decay_move_masked_weights(data, split):
    torch.manual_seed(4)
    original = TinyNet()
    cfg = config(epochs=2, lr=0.05, momentum=0.9, weight_decay=5e-2)
    fd = forget_data(data, split)
    hard = METHODS["salun"].plan(original, fd, cfg, with_defaults("salun"))
    leaky = METHODS["salun"].plan(original, fd, cfg, with_defaults("salun", mask="leaky"))
    for plan in (hard, leaky):
        fit(plan.model, data.train, plan.objective, cfg, indices=plan.indices)
    mask = hard.objective.mask
    frozen = [torch.equal(p[~m], p0[~m]) for p, p0, m in zip(hard.model.parameters(), original.parameters(), mask)]
    moved = [not torch.equal(p[~m], p0[~m]) for p, p0, m in zip(leaky.model.parameters(), original.parameters(), mask)
             if (~m).any()]
    assert all(frozen) and any(moved)


def test_salun_leaky_mask_is_the_pre_fix_step(data, split):
    """Pre-PR-#33 RL.py: grads *= mask, then the SGD step; nothing else."""
    torch.manual_seed(5)
    original = TinyNet()
    cfg = config(epochs=1, lr=0.05, momentum=0.9, weight_decay=5e-2)
    plan = METHODS["salun"].plan(original, forget_data(data, split), cfg,
                                 with_defaults("salun", mask="leaky", variant="union"))
    reference = rebuild(original)
    reference.load_state_dict(plan.model.state_dict())
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-2)
    loader = AugmentedLoader(data.train, "train", batch_size=16, indices=plan.indices, backend="cpu", device="cpu",
                             seed=cfg.seed, normalization=data.train.normalization)
    fit(plan.model, data.train, plan.objective, cfg, indices=plan.indices, normalization=data.train.normalization)
    from coun_fast.train import _epoch_seed
    torch.manual_seed(_epoch_seed(cfg.seed, 0))  # dropout's draws
    plan.objective.start_epoch(reference, optimizer, 0)  # the random labels' draws of epoch 0, again
    reference.train()
    for batch in loader.iterate(0):
        loss = F.cross_entropy(reference(batch.inputs), plan.objective.relabel(batch))
        optimizer.zero_grad()
        loss.backward()
        for p, m in zip(reference.parameters(), plan.objective.mask):
            p.grad *= m
        optimizer.step()
    for a, b in zip(plan.model.state_dict().values(), reference.state_dict().values()):
        torch.testing.assert_close(a, b)


# -- SCRUB and SSD -------------------------------------------------------------------------------
def test_scrub_max_steps_use_the_authors_forget_batch_size(data, split):
    plan = METHODS["scrub"].plan(TinyNet(), forget_data(data, split), config(),
                                 with_defaults("scrub", forget_batch_size=8))
    loader = plan.objective.forget_loader
    assert loader.batch_size == 8 and len(loader) == math.ceil(len(split.forget) / 8)
    assert loader.recipe.name == "eval" and plan.objective.recipe == "eval"  # no augmentation, as the authors
    assert METHODS["scrub"].defaults["forget_batch_size"] == 64
    augmented = METHODS["scrub"].plan(TinyNet(), forget_data(data, split), config(),
                                      with_defaults("scrub", augment=True))
    assert augmented.objective.forget_loader.recipe.name == "train" and augmented.objective.recipe == "train"


def test_scrub_authors_protocol_is_their_step_decay(data):
    cfg = method_config(METHODS["scrub"], PRESETS["paper_unlearn"], "authors")
    assert (cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.epochs) == ("sgd", 5e-4, 0.9, 5e-4, 3)
    # lr_decay_epochs [3, 5, 9] (x0.1 once epoch > 3, 1-based): no decay within the 3 epochs
    assert [lr_factor(cfg, e) for e in range(3)] == [1.0, 1.0, 1.0]
    longer = cfg.replace(epochs=6, milestones=(3 / 6, 5 / 6))
    assert [lr_factor(longer, e) for e in range(6)] == pytest.approx([1, 1, 1, 0.1, 0.1, 0.01])


def test_ssd_importances_use_batches_of_128_by_default():
    assert METHODS["ssd"].defaults["importance_batch_size"] == 128


# -- the authors' protocols, precision and the experiment files ----------------------------------
def test_protocol_option_in_experiments_and_errors(tmp_path):
    raw = {"data": {"dataset": "digits"}, "model": {"name": "small_cnn"},
           "methods": [{"name": "bad_teacher", "protocol": "authors", "train": {"epochs": 2}},
                       {"name": "cu+cl", "protocol": "authors"}, "scrub"]}
    cfg = load_config(raw)
    bad, cu, scrub = (m.train_config(cfg.unlearn) for m in cfg.methods)
    assert (bad.optimizer, bad.lr, bad.epochs) == ("adam", 1e-4, 2)
    assert (cu.lr, cu.weight_decay, cu.schedule, cu.batch_size) == (1e-3, 0.0, "constant", 128)
    assert scrub == cfg.unlearn  # the CoUn protocol by default
    with pytest.raises(ValueError, match=r"methods\[0\].protocol: method 'not' has no authors' protocol"):
        load_config({**raw, "methods": [{"name": "not", "protocol": "authors"}]})
    with pytest.raises(ValueError, match=r"methods\[0\].protocol: must be one of coun, authors"):
        load_config({**raw, "methods": [{"name": "ft", "protocol": "paper"}]})


@pytest.mark.parametrize("name", [n for n in recipes.available() if not n.startswith("cpu_")])
def test_paper_recipes_train_in_fp32(name):
    cfg = load_config(recipes.resolve(name), data=".")
    assert cfg.original.precision == cfg.retrain.precision == cfg.unlearn.precision == "fp32"


def test_fit_honours_the_objectives_order_and_steps_per_batch(data):
    calls = []

    class Ordered:
        recipe, extra_forward_views, shuffle, steps_per_batch = "eval", 0, False, 2

        def __call__(self, model, batch):
            calls.append(batch.indices.tolist())
            logits = model(batch.inputs)
            return F.cross_entropy(logits, batch.labels), {"logits": logits.detach()}

    indices = np.array([7, 3, 50, 12, 1, 30])
    result = fit(TinyNet(), data.train, Ordered(), config(batch_size=4), indices=indices)
    assert calls == [[7, 3, 50, 12]] * 2 + [[1, 30]] * 2
    assert result.trained_images == 2 * len(indices)


def test_adam_optimizer_option(data):
    from coun_fast.train import TrainConfig, make_optimizer

    model = TinyNet()
    assert isinstance(make_optimizer(model, TrainConfig(optimizer="adam", lr=1e-3)), torch.optim.Adam)
    assert isinstance(make_optimizer(model, TrainConfig()), torch.optim.SGD)
    with pytest.raises(ValueError, match="optimizer must be one of 'sgd', 'adam'"):
        TrainConfig(optimizer="rmsprop")



# -- MIA: SalUn's five SVC attacks ---------------------------------------------------------------
def salun_entropy(p, dim=-1, keepdim=False):
    """SVC_MIA.py ``entropy``, verbatim in behaviour."""
    return -torch.where(p > 0, p * p.log(), p.new([0.0])).sum(dim=dim, keepdim=keepdim)


def salun_m_entropy(p, labels, dim=-1, keepdim=False):
    """SVC_MIA.py ``m_entropy``, as written (column indexing by the whole label vector)."""
    log_prob = torch.where(p > 0, p.log(), torch.tensor(1e-30).log())
    reverse_prob = 1 - p
    log_reverse_prob = torch.where(p > 0, p.log(), torch.tensor(1e-30).log())
    modified_probs = p.clone()
    modified_probs[:, labels] = reverse_prob[:, labels]
    modified_log_probs = log_reverse_prob.clone()
    modified_log_probs[:, labels] = log_prob[:, labels]
    return -torch.sum(modified_probs * modified_log_probs, dim=dim, keepdim=keepdim)


def salun_svc_efficacy(shadow_train, shadow_test, target_test):
    """SVC_MIA.py ``SVC_fit_predict`` with ``target_train`` empty (MIA-Efficacy's call)."""
    from sklearn.svm import SVC

    x_shadow = torch.cat([shadow_train, shadow_test]).cpu().numpy().reshape(len(shadow_train) + len(shadow_test), -1)
    y_shadow = np.concatenate([np.ones(len(shadow_train)), np.zeros(len(shadow_test))])
    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(x_shadow, y_shadow)
    return 1 - clf.predict(target_test.cpu().numpy().reshape(len(target_test), -1)).mean()


def salun_features(prob, labels, attack):
    if attack == "correctness":
        return (torch.argmax(prob, axis=1) == labels).int()
    if attack == "confidence":
        return torch.gather(prob, 1, labels[:, None])
    if attack == "entropy":
        return salun_entropy(prob)
    if attack == "m_entropy":
        return salun_m_entropy(prob, labels)
    return prob


def mia_sets(seed=0, classes=5):
    generator = torch.Generator().manual_seed(seed)

    def sample(n, sharpness, label_classes=classes):
        labels = torch.randint(0, label_classes, (n,), generator=generator)
        logits = torch.randn(n, classes, generator=generator)
        logits[torch.arange(n), labels] += sharpness * torch.rand(n, generator=generator)
        return torch.softmax(logits, 1), labels

    # the first len(test) = 120 retain samples lack class 4 (the rest have it): m_entropy's columns
    # come from the shadow members' own labels; the forget set holds 3 classes only
    first, rest = sample(120, 9.0, label_classes=4), sample(180, 9.0)
    retain = (torch.cat([first[0], rest[0]]), torch.cat([first[1], rest[1]]))
    return retain, sample(120, 3.0), sample(80, 6.0, label_classes=3)


@pytest.mark.parametrize("attack", ["confidence", "correctness", "entropy", "m_entropy", "prob"])
def test_mia_attacks_equal_salun_svc_mia(attack):
    from coun_fast.evaluate import attack_features, mia_efficacy

    (retain_p, retain_y), (test_p, test_y), (forget_p, forget_y) = mia_sets()
    # main_forget.py: the shadow members are the first len(test) retain samples
    shadow_train_p, shadow_train_y = retain_p[: len(test_p)], retain_y[: len(test_p)]
    expected = salun_svc_efficacy(salun_features(shadow_train_p, shadow_train_y, attack),
                                  salun_features(test_p, test_y, attack), salun_features(forget_p, forget_y, attack))
    # the set-level m_entropy: the shadow-train set's labels come from its own rows
    for probs, labels in ((retain_p[: len(test_p)], retain_y[: len(test_p)]), (forget_p, forget_y)):
        ours = attack_features(probs.numpy(), labels.numpy(), attack)
        theirs = salun_features(probs, labels, attack).float().reshape(len(labels), -1).numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
    got = mia_efficacy((retain_p.numpy(), retain_y.numpy()), (test_p.numpy(), test_y.numpy()),
                       (forget_p.numpy(), forget_y.numpy()), attack=attack)
    assert got == pytest.approx(100 * expected, abs=1e-9)


def test_m_entropy_set_level_quirk_and_the_song_variant():
    from coun_fast.evaluate import attack_features

    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]], dtype=np.float32)
    y = np.array([0, 0])  # only class 0 labels the set: only column 0 is "reversed", for both rows
    salun = attack_features(p, y, "m_entropy")[:, 0]
    log = np.log(p)
    expected = -((1 - p[:, 0]) * log[:, 0] + p[:, 1] * log[:, 1] + p[:, 2] * log[:, 2])
    np.testing.assert_allclose(salun, expected, rtol=1e-6)
    song = attack_features(p, y, "m_entropy", m_entropy_variant="song")[:, 0]
    expected_song = -((1 - p[:, 0]) * log[:, 0] + p[:, 1] * np.log(1 - p[:, 1]) + p[:, 2] * np.log(1 - p[:, 2]))
    np.testing.assert_allclose(song, expected_song, rtol=1e-6)
    # a confident correct sample has a small modified entropy under Song's definition
    assert attack_features(np.array([[0.98, 0.01, 0.01]], np.float32), np.array([0]), "m_entropy",
                           m_entropy_variant="song")[0, 0] < 0.1


def test_mia_attack_errors_and_metrics_option(data):
    from coun_fast.evaluate import mia_efficacy, unlearning_metrics

    (retain_p, retain_y), (test_p, test_y), (forget_p, forget_y) = mia_sets(1)
    with pytest.raises(ValueError, match="attack must be one of 'confidence', 'correctness'"):
        mia_efficacy((retain_p, retain_y), (test_p, test_y), (forget_p, forget_y), attack="loss")
    with pytest.raises(ValueError, match="retain must be Predictions or a \\(probs, labels\\) pair"):
        mia_efficacy(retain_p[:, 0].numpy(), (test_p, test_y), (forget_p, forget_y), attack="entropy")
    with pytest.raises(ValueError, match="forget: labels must lie in"):
        mia_efficacy((retain_p, retain_y), (test_p, test_y), (forget_p, forget_y + 10), attack="prob")
    split = class_split(data.train.labels, [0], class_names=data.train.classes)
    model = TinyNet().eval()
    out = unlearning_metrics(model, data.train, data.test, split, normalization=data.train.normalization,
                             mia_attack="entropy", return_predictions=True)
    predictions = out["predictions"]
    assert out["MIA"] == mia_efficacy(predictions["retain"], predictions["test"], predictions["forget"],
                                      attack="entropy")
