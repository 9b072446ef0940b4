"""Closed forms, invariances, independent hand computations, gradcheck, determinism, custom-op
checks, torch.compile and the nn.Module wrappers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as torch_F

from coun_fast import functional as F
from coun_fast import losses
from coun_fast.ops import reference
from coun_fast.ops.backend import MAX_DIM
from coun_fast.ops.contrastive import (PATH_EXACT, REDUCTIONS, RULE_DIAGONAL, RULE_INDEX, RULE_LABELS, RULE_PARTNER,
                                       contrastive_backward, contrastive_forward, contrastive_loss, similarity)
from helpers import DEVICES, assert_close_verbose

BACKENDS = ("fused", "reference")
FP32 = dict(rtol=1e-5, atol=1e-5)


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def grads(loss: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(loss, inputs)


def leaf(*shape: int, device: str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, device=device, dtype=dtype, requires_grad=True)


def hand_nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    n = z1.shape[0]
    z = unit(torch.cat([z1, z2]).double())
    logits = (z @ z.T / temperature).fill_diagonal_(float("-inf"))
    targets = (torch.arange(2 * n) + n) % (2 * n)
    return torch_F.cross_entropy(logits, targets)


def hand_cross_view(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = unit(z1.double()) @ unit(z2.double()).T / temperature
    targets = torch.arange(z1.shape[0])
    return torch_F.cross_entropy(logits, targets) + torch_F.cross_entropy(logits.T, targets)


def hand_sup_con(features: torch.Tensor, labels: list[int], temperature: float) -> torch.Tensor:
    """Khosla et al.'s L_out, one anchor at a time."""
    z = unit(features.double())
    terms = []
    for i in range(len(labels)):
        others = [k for k in range(len(labels)) if k != i]
        positives = [p for p in others if labels[p] == labels[i]]
        if not positives:
            continue
        denominator = torch.logsumexp(torch.stack([z[i] @ z[k] / temperature for k in others]), dim=0)
        terms.append(torch.stack([denominator - z[i] @ z[p] / temperature for p in positives]).mean())
    return torch.stack(terms).mean() if terms else torch.zeros((), dtype=torch.float64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", [1, 2, 7, 64, 129])
def test_nt_xent_of_identical_rows_is_log_2n_minus_1(device, backend, n):
    row = torch.randn(1, 19, device=device)
    z = row.expand(n, 19)
    loss = F.nt_xent(z, z * 3.0, temperature=0.07, backend=backend)
    assert_close_verbose("loss", loss, torch.tensor(math.log(2 * n - 1)), **FP32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("m", [2, 5, 40])
def test_sup_con_of_identical_rows_is_log_m_minus_1(device, backend, m):
    features = torch.randn(1, 33, device=device).repeat(m, 1)
    labels = torch.zeros(m, dtype=torch.int64, device=device)
    loss = F.sup_con(features, labels, temperature=0.2, backend=backend)
    assert_close_verbose("loss", loss, torch.tensor(math.log(m - 1)), **FP32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss_fn", [F.nt_xent, F.cross_view_info_nce], ids=["nt_xent", "cross_view"])
def test_swapping_views_leaves_loss_unchanged(device, backend, loss_fn):
    z1, z2 = leaf(37, 45, device=device), leaf(37, 45, device=device)
    forward = loss_fn(z1, z2, 0.2, backend=backend)
    swapped = loss_fn(z2, z1, 0.2, backend=backend)
    assert_close_verbose("loss", swapped, forward, **FP32)
    g1, g2 = grads(forward, z1, z2)
    s1, s2 = grads(swapped, z1, z2)
    assert_close_verbose("grad[z1]", s1, g1, **FP32)
    assert_close_verbose("grad[z2]", s2, g2, **FP32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss_fn", [F.nt_xent, F.cross_view_info_nce], ids=["nt_xent", "cross_view"])
def test_permuting_pairs_leaves_loss_unchanged(device, backend, loss_fn):
    z1, z2 = leaf(50, 24, device=device), leaf(50, 24, device=device)
    order = torch.randperm(50, device=device)
    forward = loss_fn(z1, z2, 0.3, backend=backend)
    permuted = loss_fn(z1[order], z2[order], 0.3, backend=backend)
    assert_close_verbose("loss", permuted, forward, **FP32)
    for name, g, p in zip(("z1", "z2"), grads(forward, z1, z2), grads(permuted, z1, z2)):
        assert_close_verbose(f"grad[{name}]", p, g, **FP32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", [1e-3, 0.5, 8.0, 300.0])
def test_positive_rescaling_of_rows_has_no_effect(device, backend, scale):
    z1, z2 = torch.randn(20, 31, device=device), torch.randn(20, 31, device=device)
    labels = torch.randint(0, 4, (20,), device=device)
    row_scale = scale * torch.rand(20, 1, device=device).add(0.5)
    for name, loss_fn in [("nt_xent", lambda a, b: F.nt_xent(a, b, 0.1, backend=backend)),
                          ("cross_view", lambda a, b: F.cross_view_info_nce(a, b, 0.1, backend=backend)),
                          ("sup_con", lambda a, b: F.sup_con(a, labels, 0.1, backend=backend))]:
        assert_close_verbose(name, loss_fn(z1 * row_scale, z2 * scale), loss_fn(z1, z2), **FP32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss_fn", [F.nt_xent, F.cross_view_info_nce], ids=["nt_xent", "cross_view"])
def test_one_tensor_passed_as_both_views(device, backend, loss_fn):
    z = torch.randn(8, 10, device=device)
    assert_close_verbose("loss", loss_fn(z, z, 0.1, backend=backend), loss_fn(z, z.clone(), 0.1, backend=backend),
                         **FP32)


@pytest.mark.parametrize("device", DEVICES)
def test_duplicate_rows_match_reference(device):
    base = torch.randn(6, 17, device=device)
    z1 = base[torch.tensor([0, 1, 1, 2, 3, 3, 3, 4, 5, 0], device=device)].requires_grad_()
    z2 = z1.detach().clone().requires_grad_()
    for loss_fn in (F.nt_xent, F.cross_view_info_nce):
        fused, ref = loss_fn(z1, z2, 0.1, backend="fused"), loss_fn(z1, z2, 0.1, backend="reference")
        assert_close_verbose(loss_fn.__name__, fused, ref, **FP32)
        for name, g, r in zip(("z1", "z2"), grads(fused, z1, z2), grads(ref, z1, z2)):
            assert_close_verbose(f"{loss_fn.__name__} grad[{name}]", g, r, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_sup_con_excludes_anchors_without_positives(device, backend):
    features = torch.randn(7, 12, device=device)
    labels = torch.tensor([0, 0, 5, 2, 2, 2, 9], device=device)
    per_anchor = F.info_nce(features, None, 0.2, anchor_labels=labels, exclude_self=True, reduction="none",
                            backend=backend)
    singletons = torch.tensor([2, 6], device=device)
    assert torch.equal(per_anchor[singletons], torch.zeros(2, device=device))
    expected = hand_sup_con(features.cpu(), labels.tolist(), 0.2)
    assert_close_verbose("mean over anchors with positives", per_anchor.sum() / 5, expected, **FP32)
    assert_close_verbose("sup_con", F.sup_con(features, labels, 0.2, backend=backend), expected, **FP32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_sup_con_with_only_singletons_is_zero_with_zero_gradient(device, backend):
    features = leaf(9, 20, device=device)
    loss = F.sup_con(features, torch.arange(9, device=device), 0.1, backend=backend)
    assert loss.item() == 0.0
    (grad,) = grads(loss, features)
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,dim", [(1, 4), (3, 5), (17, 33)])
def test_nt_xent_equals_cross_entropy_over_masked_logits(backend, n, dim):
    z1, z2 = torch.randn(n, dim), torch.randn(n, dim)
    assert_close_verbose("nt_xent", F.nt_xent(z1, z2, 0.25, backend=backend), hand_nt_xent(z1, z2, 0.25), **FP32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,dim", [(1, 4), (3, 5), (31, 40)])
def test_cross_view_equals_row_plus_column_cross_entropy(backend, n, dim):
    z1, z2 = torch.randn(n, dim), torch.randn(n, dim)
    loss = F.cross_view_info_nce(z1, z2, 0.1, backend=backend)
    assert_close_verbose("cross_view", loss, hand_cross_view(z1, z2, 0.1), **FP32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("labels", [[0, 1, 0, 1, 2, 2, 2, 0], [3, 3], [1, 4, 4, 7, 1, 1]],
                         ids=["mixed", "pair", "singletons"])
def test_sup_con_equals_hand_computation(backend, labels):
    features = torch.randn(len(labels), 11)
    loss = F.sup_con(features, torch.tensor(labels), 0.15, backend=backend)
    assert_close_verbose("sup_con", loss, hand_sup_con(features, labels, 0.15), **FP32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,bank,dim", [(1, 0, 4), (1, 3, 5), (6, 11, 9), (33, 70, 17)])
def test_paired_candidates_equal_cross_entropy_over_own_key_and_bank(backend, n, bank, dim):
    """The memory-bank form (MoCo, lightly's NTXentLoss with a bank): logits [q_i . k_i, q_i . bank] / tau,
    cross-entropy against class 0."""
    q, k, queue = torch.randn(n, dim), torch.randn(n, dim), torch.randn(bank, dim)
    loss = F.info_nce(q, torch.cat([k, queue]), 0.2, paired_candidates=n, backend=backend)
    qn, kn, bn = (torch_F.normalize(t.double(), dim=1) for t in (q, k, queue))
    logits = torch.cat([(qn * kn).sum(1, keepdim=True), qn @ bn.T], dim=1) / 0.2
    hand = torch_F.cross_entropy(logits, torch.zeros(n, dtype=torch.long))
    assert_close_verbose("paired", loss.double(), hand, **FP32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sup_con_multiview_features_repeat_labels_per_view(backend):
    features = torch.randn(5, 3, 16)
    labels = torch.tensor([0, 1, 0, 2, 1])
    loss = F.sup_con(features, labels, 0.1, backend=backend)
    flat_labels = labels.repeat_interleave(3)
    assert_close_verbose("(B, V, D)", loss, F.sup_con(features.reshape(15, 16), flat_labels, 0.1, backend=backend),
                         **FP32)
    assert_close_verbose("hand", loss, hand_sup_con(features.reshape(15, 16), flat_labels.tolist(), 0.1), **FP32)


def test_gradcheck_functional_reference_backend():
    a, b = leaf(4, 5, dtype=torch.float64), leaf(4, 5, dtype=torch.float64)
    labels, other = torch.tensor([0, 1, 0, 2]), torch.tensor([1, 1, 0, 3])
    cases = {
        "nt_xent": lambda x, y: F.nt_xent(x, y, 0.3, backend="reference"),
        "cross_view": lambda x, y: F.cross_view_info_nce(x, y, 0.3, backend="reference"),
        "sup_con": lambda x, y: F.sup_con(torch.cat([x, y]), torch.cat([labels, other]), 0.3, backend="reference"),
        "info_nce_labels": lambda x, y: F.info_nce(x, y, 0.5, anchor_labels=labels, candidate_labels=other,
                                                   symmetric=True, reduction="none", backend="reference"),
        "info_nce_index": lambda x, y: F.info_nce(x, y, 0.5, positive_index=torch.tensor([2, 0, 3, 1]),
                                                  exclude_self=True, reduction="sum", backend="reference"),
        "similarity": lambda x, y: F.similarity(x, y, 0.7, backend="reference"),
    }
    for name, fn in cases.items():
        assert torch.autograd.gradcheck(fn, (a, b)), name


def test_gradcheck_reference_module_directly():
    a, b = leaf(5, 3, dtype=torch.float64), leaf(4, 3, dtype=torch.float64)
    index = torch.tensor([1, 0, 3, 2, 0])
    labels, other = torch.tensor([0, 0, 1, 1, 2]), torch.tensor([0, 1, 1, 5])
    cases = {
        "index": lambda x, y: reference.info_nce_rows(x, y, 0.4, positive_index=index)[0],
        "labels": lambda x, y: reference.info_nce_rows(x, y, 0.4, anchor_labels=labels, candidate_labels=other,
                                                       symmetric=True)[0],
        "self": lambda x, y: reference.info_nce_rows(x, None, 0.4, anchor_labels=labels, exclude_self=True)[0],
        "similarity": lambda x, y: reference.similarity(x, y, 0.9),
    }
    for name, fn in cases.items():
        assert torch.autograd.gradcheck(fn, (a, b)), name


def fused_run(threads: int) -> tuple[torch.Tensor, ...]:
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(7)
    a = torch.randn(300, 70, generator=generator).requires_grad_()
    b = torch.randn(260, 70, generator=generator).requires_grad_()
    labels_a = torch.randint(0, 9, (300,), generator=generator)
    labels_b = torch.randint(0, 9, (260,), generator=generator)
    cross = F.info_nce(a, b, 0.1, anchor_labels=labels_a, candidate_labels=labels_b, symmetric=True, backend="fused")
    nt = F.nt_xent(a[:260], b, 0.1, backend="fused")
    return (cross.detach(), nt.detach(), *grads(cross + nt, a, b))


@pytest.mark.parametrize("threads", [1, 2])
def test_fused_backward_is_bitwise_deterministic(threads):
    first, second = fused_run(threads), fused_run(threads)
    for name, x, y in zip(("cross", "nt", "grad[a]", "grad[b]"), first, second):
        assert torch.equal(x, y), name


def test_fused_results_do_not_depend_on_thread_count():
    for name, x, y in zip(("cross", "nt", "grad[a]", "grad[b]"), fused_run(1), fused_run(2)):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_fused_loss_is_float32_and_gradients_keep_input_dtype(device, dtype):
    z1, z2 = leaf(6, 8, device=device, dtype=dtype), leaf(6, 8, device=device, dtype=dtype)
    for loss in (F.nt_xent(z1, z2, backend="fused"), F.cross_view_info_nce(z1, z2, backend="fused"),
                 F.sup_con(z1, torch.tensor([0, 0, 1, 1, 2, 2], device=device), backend="fused")):
        assert loss.dtype == torch.float32
        assert all(g.dtype == dtype for g in torch.autograd.grad(loss, (z1,), retain_graph=True))
    assert F.similarity(z1, z2, backend="fused").dtype == torch.float32


def test_auto_backend_uses_fused_kernels_and_float64_reference():
    z1, z2 = torch.randn(9, 10), torch.randn(9, 10)
    assert torch.equal(F.nt_xent(z1, z2, backend="auto"), F.nt_xent(z1, z2, backend="fused"))
    loss64 = F.nt_xent(z1.double(), z2.double(), backend="auto")
    assert loss64.dtype == torch.float64
    assert torch.equal(loss64, F.nt_xent(z1.double(), z2.double(), backend="reference"))


def test_anchors_passed_as_candidates_match_anchors_against_themselves():
    x = leaf(12, 9)
    labels = torch.randint(0, 3, (12,))
    alone = F.info_nce(x, None, 0.2, anchor_labels=labels, exclude_self=True, backend="fused")
    again = F.info_nce(x, x, 0.2, anchor_labels=labels, exclude_self=True, backend="fused")
    assert torch.equal(alone, again)
    assert torch.equal(*(grads(loss, x)[0] for loss in (alone, again)))


def test_zero_row_is_finite_and_matches_reference():
    z1, z2 = torch.randn(5, 8), torch.randn(5, 8)
    z1[2] = 0.0
    assert_close_verbose("nt_xent", F.nt_xent(z1, z2, backend="fused"), F.nt_xent(z1, z2, backend="reference"), **FP32)


@pytest.mark.parametrize("loss_fn", [F.nt_xent, F.cross_view_info_nce], ids=["nt_xent", "cross_view"])
def test_fused_accepts_the_maximum_feature_dimension(loss_fn):
    z1, z2 = leaf(5, MAX_DIM), leaf(5, MAX_DIM)
    fused, ref = loss_fn(z1, z2, 0.1, backend="fused"), loss_fn(z1.double(), z2.double(), 0.1, backend="reference")
    assert_close_verbose("loss", fused, ref, **FP32)
    for name, g, r in zip(("z1", "z2"), grads(fused, z1, z2), grads(ref, z1, z2)):
        assert_close_verbose(f"grad[{name}]", g, r, rtol=1e-5, atol=1e-5 * float(r.abs().max()))


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_large_batch_matches_float64_reference(device):
    z1, z2 = leaf(2500, 768, device=device), leaf(2500, 768, device=device)
    labels = torch.randint(0, 100, (5000,), device=device)
    cases = {
        "nt_xent": lambda x, y, backend: F.nt_xent(x, y, 0.1, backend=backend),
        "cross_view": lambda x, y, backend: F.cross_view_info_nce(x, y, 0.05, backend=backend),
        "sup_con": lambda x, y, backend: F.sup_con(torch.cat([x, y]), labels, 0.1, backend=backend),
    }
    for name, fn in cases.items():
        fused = fn(z1, z2, "fused")
        ref = fn(z1.double(), z2.double(), "reference")
        assert_close_verbose(name, fused, ref, **FP32)
        for input_name, g, r in zip(("z1", "z2"), grads(fused, z1, z2), grads(ref, z1, z2)):
            assert_close_verbose(f"{name} grad[{input_name}]", g, r, rtol=1e-5, atol=1e-5 * float(r.abs().max()))


def forward_samples() -> dict[str, tuple]:
    """Op arguments: (anchors, candidates, temperature, rule, positive_index, anchor_labels,
    candidate_labels, exclude_self, paired, symmetric, reduction, path)."""
    a, b = leaf(5, 7), leaf(6, 7)
    square, pair = leaf(6, 7), leaf(5, 7)
    none, total, mean = REDUCTIONS["none"], REDUCTIONS["sum"], REDUCTIONS["mean"]
    return {
        "index": (a, b, 0.5, RULE_INDEX, torch.randint(0, 6, (5,)), None, None, False, 0, False, none, PATH_EXACT),
        "labels": (a, b, 0.3, RULE_LABELS, None, torch.tensor([0, 1, 1, 2, 0]), torch.tensor([1, 1, 0, 2, 3, 0]),
                   False, 0, True, mean, PATH_EXACT),
        "self_labels": (square, None, 0.2, RULE_LABELS, None, torch.tensor([0, 1, 0, 1, 2, 2]), None, True, 0,
                        False, total, PATH_EXACT),
        "symmetric_index": (square, b, 1.0, RULE_INDEX, torch.randperm(6), None, None, True, 0, True, mean, PATH_EXACT),
        "diagonal": (a, pair, 0.1, RULE_DIAGONAL, None, None, None, False, 0, True, mean, PATH_EXACT),
        "partner": (square, None, 0.5, RULE_PARTNER, None, None, None, True, 0, False, mean, PATH_EXACT),
        "paired": (a, leaf(9, 7), 0.2, RULE_DIAGONAL, None, None, None, False, 5, False, none, PATH_EXACT),
        "half": (a.detach().half().requires_grad_(), b.detach().half(), 0.1, RULE_INDEX, torch.arange(5), None, None,
                 False, 0, False, none, PATH_EXACT),
    }


@pytest.mark.parametrize("sample", list(forward_samples()))
def test_opcheck_contrastive_forward(sample):
    torch.library.opcheck(contrastive_forward, forward_samples()[sample])


@pytest.mark.parametrize("sample", list(forward_samples()))
def test_opcheck_contrastive_backward(sample):
    """The backward op is called on detached saved tensors (it has no double-backward formula)."""
    args = tuple(x.detach() if isinstance(x, torch.Tensor) else x for x in forward_samples()[sample])
    out, stats, saved = contrastive_forward(*args)
    torch.library.opcheck(contrastive_backward, (torch.randn_like(out), *args, stats, saved))


@pytest.mark.parametrize("sample", list(forward_samples()))
def test_eager_function_and_custom_op_agree_bit_for_bit(sample):
    """The eager autograd.Function route and the custom-op route run the same kernels."""
    args = forward_samples()[sample]
    inputs = [x for x in args[:2] if x is not None and x.requires_grad]
    eager = contrastive_loss(*args)
    op = contrastive_forward(*args)[0]
    assert torch.equal(eager, op)
    weights = torch.randn_like(eager)
    for name, g, h in zip(("anchors", "candidates"), grads((eager * weights).sum(), *inputs),
                          grads((op * weights).sum(), *inputs)):
        assert torch.equal(g, h), name


@pytest.mark.parametrize("same", [False, True], ids=["a_b", "a_self"])
def test_opcheck_similarity(same):
    a, b = leaf(4, 9), leaf(3, 9)
    torch.library.opcheck(similarity, (a, None if same else b, 0.25))


def test_torch_compile_fullgraph_matches_eager():
    z1, z2 = leaf(24, 20), leaf(24, 20)

    def step(x, y):
        return F.nt_xent(x, y, 0.2, backend="fused")

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)
    eager_loss, compiled_loss = step(z1, z2), compiled(z1, z2)
    assert_close_verbose("loss", compiled_loss, eager_loss, **FP32)
    for name, e, c in zip(("z1", "z2"), grads(eager_loss, z1, z2), grads(compiled_loss, z1, z2)):
        assert_close_verbose(f"grad[{name}]", c, e, **FP32)


@pytest.mark.parametrize("backend", ["auto", "fused", "reference"])
def test_loss_modules_match_functional(backend):
    z1, z2 = torch.randn(10, 13), torch.randn(10, 13)
    labels, other = torch.randint(0, 3, (10,)), torch.randint(0, 3, (10,))
    index = torch.randperm(10)
    pairs = [
        (losses.NTXentLoss(0.4, backend=backend)(z1, z2), F.nt_xent(z1, z2, 0.4, backend=backend)),
        (losses.SupConLoss(0.2, backend=backend)(z1, labels), F.sup_con(z1, labels, 0.2, backend=backend)),
        (losses.CrossViewInfoNCE(0.1, backend=backend)(z1, z2), F.cross_view_info_nce(z1, z2, 0.1, backend=backend)),
        (losses.InfoNCE(0.3, backend=backend)(z1, z2), F.info_nce(z1, z2, 0.3, backend=backend)),
        (losses.InfoNCE(0.3, symmetric=True, reduction="none", backend=backend)(z1, z2, positive_index=index),
         F.info_nce(z1, z2, 0.3, positive_index=index, symmetric=True, reduction="none", backend=backend)),
        (losses.InfoNCE(0.3, exclude_self=True, reduction="sum", backend=backend)(z1, anchor_labels=labels),
         F.info_nce(z1, None, 0.3, anchor_labels=labels, exclude_self=True, reduction="sum", backend=backend)),
        (losses.InfoNCE(0.3, backend=backend)(z1, z2, anchor_labels=labels, candidate_labels=other),
         F.info_nce(z1, z2, 0.3, anchor_labels=labels, candidate_labels=other, backend=backend)),
    ]
    for i, (module_loss, functional_loss) in enumerate(pairs):
        assert torch.equal(module_loss, functional_loss), i


def test_loss_module_defaults_and_repr():
    assert losses.NTXentLoss().temperature == 0.5
    assert losses.SupConLoss().temperature == 0.1
    assert losses.CrossViewInfoNCE().temperature == 0.1
    assert repr(losses.InfoNCE(backend="fused")) == "InfoNCE(temperature=0.1, backend='fused')"
