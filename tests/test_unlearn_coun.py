"""CoUn, FT and the method registry: the objective against an independent computation, the forget
set never read, hyperparameter errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from coun_fast.data.embedded import synthetic
from coun_fast.data.loader import AugmentedLoader
from coun_fast.data.splits import random_split
from coun_fast.train import TrainConfig
from coun_fast.unlearn import METHODS, unlearn
from coun_fast.unlearn.base import RetainData
from coun_fast.unlearn.coun import CoUnObjective, coun_objective
from nets import TinyNet


def independent_coun_loss(model, x1, x2, y, lam, tau):
    """The paper's listing, written out with the full N x N matrices (run it on a float64 model)."""
    f1, f2 = model.forward_features(x1), model.forward_features(x2)
    ce = F.cross_entropy(model.forward_head(f1), y)
    s12 = F.cosine_similarity(f1[:, None, :], f2[None, :, :], dim=-1) / tau
    s21 = s12.T
    cl = -(torch.diagonal(F.log_softmax(s12, 1)).mean() + torch.diagonal(F.log_softmax(s21, 1)).mean())
    return ce + lam * cl, ce, cl


@pytest.mark.parametrize("lam, tau", [(1.0, 0.1), (0.3, 0.05), (6.0, 0.3)])
def test_objective_equals_the_papers_listing(lam, tau):
    torch.manual_seed(1)
    model = TinyNet().eval()  # eval: BN and dropout act the same in both computations
    x1, x2 = torch.randn(13, 3, 8, 8), torch.randn(13, 3, 8, 8)
    y = torch.randint(0, 4, (13,))
    loss, parts = coun_objective(model, x1, x2, y, lam=lam, temperature=tau)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    model64 = copy.deepcopy(model).double()
    expected, ce, cl = independent_coun_loss(model64, x1.double(), x2.double(), y, lam, tau)
    expected_grads = torch.autograd.grad(expected, list(model64.parameters()))
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(parts["ce"].double(), ce, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(parts["cl"].double(), cl, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


def test_lambda_zero_is_cross_entropy_on_view_one():
    model = TinyNet().eval()
    x1, y = torch.randn(5, 3, 8, 8), torch.randint(0, 4, (5,))
    loss, parts = coun_objective(model, x1, None, y, lam=0.0, temperature=0.1)
    torch.testing.assert_close(loss, F.cross_entropy(model(x1), y))
    assert float(parts["cl"]) == 0.0
    assert CoUnObjective(0.0).recipe == "train" and CoUnObjective(1.0).recipe == "two_view"
    assert CoUnObjective(1.0).extra_forward_views == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(lam=-0.1, temperature=0.1), "lam must be a finite number >= 0"),
    (dict(lam=1.0, temperature=0.0), "temperature must be a finite number > 0"),
    (dict(lam=1.0, temperature=-1.0), "temperature must be a finite number > 0"),
    (dict(lam=float("nan"), temperature=0.1), "lam must be"),
])
def test_objective_errors(kwargs, match):
    model = TinyNet()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match=match):
        coun_objective(model, x, x, torch.zeros(2, dtype=torch.long), **kwargs)


@pytest.fixture(scope="module")
def data():
    return synthetic(num_classes=4, train_per_class=20, test_per_class=4, image_size=8, seed=0)


def config():
    return TrainConfig(epochs=2, batch_size=16, lr=0.01, schedule="cosine", min_lr=1e-4, device="cpu",
                       progress=False, augment_backend="cpu")


@pytest.mark.parametrize("method", ["coun", "ft"])
def test_forget_set_is_never_read(method, data, monkeypatch):
    split = random_split(len(data.train), 0.25, seed=0)
    served = []
    original_iterate = AugmentedLoader.iterate

    def spy(self, epoch, start=0):
        for batch in original_iterate(self, epoch, start):
            served.append(batch.indices.numpy())
            yield batch

    monkeypatch.setattr(AugmentedLoader, "iterate", spy)
    original = TinyNet()
    before = {k: v.clone() for k, v in original.state_dict().items()}
    result = unlearn(method, original, data.train, split, config())
    served = np.concatenate(served)
    assert np.intersect1d(served, split.forget).size == 0
    assert sorted(served.tolist()) == sorted(np.tile(split.retain, 2).tolist())  # two epochs of the retain set
    assert all(torch.equal(before[k], v) for k, v in original.state_dict().items())  # the Original is untouched
    changed = any(not torch.equal(before[k], v) for k, v in result.model.state_dict().items())
    assert changed and result.method == method
    expected_extra = result.train.trained_images if method == "coun" else 0
    assert result.train.extra_forward_images == expected_extra


def test_coun_refuses_data_with_a_forget_set(data):
    from coun_fast.unlearn.base import ForgetData
    from coun_fast.unlearn.coun import plan_coun

    forget_data = ForgetData(data.train, np.arange(10), data.train.normalization, np.arange(10, 20))
    with pytest.raises(TypeError, match="never see the forget set"):
        plan_coun(TinyNet(), forget_data, config(), {"lam": 1.0, "temperature": 0.1})
    assert not hasattr(RetainData(data.train, np.arange(3), data.train.normalization), "forget")


def test_registry_errors(data):
    split = random_split(len(data.train), 0.25, seed=0)
    assert {"coun", "ft", "retrain"} <= set(METHODS)
    with pytest.raises(ValueError, match="unknown unlearning method 'forgetful'; available: .*coun"):
        unlearn("forgetful", TinyNet(), data.train, split, config())
    with pytest.raises(ValueError, match="has no hyperparameter tau; it takes: cl_scope, lam, temperature"):
        unlearn("coun", TinyNet(), data.train, split, config(), hparams={"tau": 0.1})
    with pytest.raises(ValueError, match="lam must be a finite number >= 0"):
        unlearn("coun", TinyNet(), data.train, split, config(), hparams={"lam": -1})


def test_ft_plus_cl_equals_coun(data):
    """The CL plug-in on FT is CoUn: same views, same forward passes in the same order, same loss."""
    split = random_split(len(data.train), 0.25, seed=0)
    torch.manual_seed(3)
    original = TinyNet()
    coun = unlearn("coun", original, data.train, split, config(), hparams={"lam": 0.7, "temperature": 0.2})
    plugged = unlearn("ft+cl", original, data.train, split, config(), hparams={"cl_lam": 0.7, "cl_temperature": 0.2})
    for (name, a), b in zip(coun.model.state_dict().items(), plugged.model.state_dict().values()):
        assert torch.equal(a, b), name
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in rows]
    assert strip(coun.train.history) == strip(plugged.train.history)
    assert plugged.train.extra_forward_images == coun.train.extra_forward_images
    assert plugged.hparams == {"cl_lam": 0.7, "cl_temperature": 0.2}
