"""Double backward (``create_graph=True``: gradient penalties, Hessian-vector products) of every loss
and its nn.Module class, on every backend.

* float64 through the reference (and "auto", which runs the reference on float64):
  ``torch.autograd.gradgradcheck`` on small odd shapes;
* the fused kernels (on the CPU and, where there is a GPU, on both CUDA paths): their second-order
  derivatives (Hessian-vector products with respect to the features, and the derivative with
  respect to the upstream gradient) in float32, float16 and bfloat16 against the float64
  reference, with the tolerance rule of ``helpers``; a loose
  ``gradgradcheck`` of the fused first-order gradient (float32 finite differences); the first-order
  gradient under ``create_graph=True`` is the fused one, bit for bit;
* the issue's example: a gradient penalty through a linear layer gives the reference's gradient;
* torch.compile refuses a double backward (torch's own error) rather than dropping a term;
* a property test over random shapes (including 1, 2, 3, 31, 33), dimensions and temperatures.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Callable, Iterator

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from coun_fast import functional as F
from coun_fast import losses
from coun_fast.ops import reference
from coun_fast.ops.contrastive import PATH_EXACT, REDUCTIONS, RULE_LABELS, contrastive_forward
from helpers import KERNEL_DEVICES, LOW_PRECISION, check_result, kernel_path, rounding_floor

DIM = 4
TEMPERATURE = 0.5


def _rows(x: torch.Tensor) -> torch.Tensor:
    """0, 1, ..., len(x) - 1 on x's device."""
    return torch.arange(len(x), device=x.device)


def _labels(x: torch.Tensor, classes: int = 2) -> torch.Tensor:
    """One label per row of x, on its device."""
    return _rows(x) % classes


# A case: (shapes of the feature inputs for n rows, loss(backend, *features)). The labels and indices
# depend on the shapes alone, so that every backend and dtype sees the same problem.
Case = tuple[Callable[[int], list[tuple[int, int]]], Callable[..., torch.Tensor]]

CASES: dict[str, Case] = {
    "nt_xent": (lambda n: [(n, DIM), (n, DIM)],
                lambda b, t, z1, z2: F.nt_xent(z1, z2, t, backend=b)),
    "cross_view_info_nce": (lambda n: [(n, DIM), (n, DIM)],
                            lambda b, t, z1, z2: F.cross_view_info_nce(z1, z2, t, backend=b)),
    "sup_con": (lambda n: [(n, DIM)],
                lambda b, t, x: F.sup_con(x, _labels(x), t, backend=b)),
    "info_nce_index": (lambda n: [(n, DIM), (n + 2, DIM)],
                       lambda b, t, a, c: F.info_nce(a, c, t, positive_index=(_rows(a) * 2) % len(c),
                                                     backend=b)),
    "info_nce_labels_symmetric": (
        lambda n: [(n, DIM), (n + 1, DIM)],
        lambda b, t, a, c: F.info_nce(a, c, t, anchor_labels=_labels(a), candidate_labels=_labels(c, 3),
                                      symmetric=True, backend=b)),
    "info_nce_permutation_none": (
        lambda n: [(n, DIM), (n, DIM)],
        lambda b, t, a, c: F.info_nce(a, c, t, positive_index=_rows(a).flip(0), symmetric=True,
                                      reduction="none", backend=b)),
    "info_nce_self_labels_sum": (
        lambda n: [(n, DIM)],
        lambda b, t, a: F.info_nce(a, None, t, anchor_labels=_labels(a), exclude_self=True, reduction="sum",
                                   backend=b)),
    "info_nce_paired_bank": (
        lambda n: [(n, DIM), (n + 3, DIM)],
        lambda b, t, a, c: F.info_nce(a, c, t, paired_candidates=len(a), backend=b)),
    # The anchors' tensor as the candidates too, and candidates computed from the anchors: each role
    # keeps its own gradient (autograd adds them up).
    "info_nce_same_tensor_symmetric": (
        lambda n: [(n, DIM)],
        lambda b, t, a: F.info_nce(a, a, t, positive_index=_rows(a).roll(1), symmetric=True,
                                   backend=b)),
    "info_nce_candidates_from_anchors": (
        lambda n: [(n, DIM)],
        lambda b, t, a: F.info_nce(a, a.flip(0) * torch.linspace(0.5, 2, a.shape[1], dtype=a.dtype, device=a.device),
                                   t, backend=b)),
    "similarity": (lambda n: [(n, DIM), (n + 1, DIM)],
                   lambda b, t, x, y: F.similarity(x, y, t, backend=b)),
    "similarity_self": (lambda n: [(n, DIM)],
                        lambda b, t, x: F.similarity(x, None, t, backend=b)),
}
ROWS = (1, 2, 3, 5)


def features(shapes: list[tuple[int, int]], seed: int = 0, scale: float = 1.0) -> list[torch.Tensor]:
    """float64 features (rounded to bfloat16, so that every dtype holds the same values)."""
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(shape, generator=gen, dtype=torch.float64) * scale).bfloat16().double() for shape in shapes]


def derivatives(loss: Callable[..., torch.Tensor], inputs: list[torch.Tensor], weights: torch.Tensor,
                directions: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The first-order gradients ``g`` of ``sum(weights * loss(*inputs))`` (built with
    create_graph=True), and the gradients of ``sum_k <g_k, directions_k>`` with respect to every input
    (Hessian-vector products) and to the weights (the upstream gradient)."""
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    out = loss(*leaves)
    w = weights.to(device=out.device, dtype=out.dtype).clone().requires_grad_()
    first = torch.autograd.grad((out * w).sum(), leaves, create_graph=True)
    assert all(g.requires_grad for g in first), "the first-order gradient is not differentiable"
    inner = sum((g * v.to(g)).sum() for g, v in zip(first, directions))
    second = torch.autograd.grad(inner, [*leaves, w], allow_unused=True)
    second = [torch.zeros_like(x) if s is None else s for x, s in zip([*leaves, w], second)]
    return [g.detach() for g in first], [s.detach() for s in second]


def second_order_floor(temperature: float, inputs: list[torch.Tensor], weight: float, direction: float) -> float:
    """float32 rounding level of a second-order result whose exact value is ~0: some ulps of its
    scale weight * |v| / (tau^2 ||x||^2) (each normalization divides by ||x||)."""
    norm = min(float(x.norm(dim=-1).min()) for x in inputs)
    return 64 * torch.finfo(torch.float32).eps * weight * direction / (temperature**2 * norm**2)


def check_second_order(name: str, loss: Callable[..., torch.Tensor], inputs: list[torch.Tensor], dtype: torch.dtype,
                       temperature: float, seed: int = 1, device: str = "cpu") -> None:
    """``loss(backend, temperature, *features)`` on the fused kernels in ``dtype`` on ``device``
    against the float64 reference on the CPU (and, for float16 / bfloat16, the reference in that
    dtype): first-order gradients and every second-order derivative."""
    gen = torch.Generator().manual_seed(seed)
    out_shape = loss("reference", temperature, *inputs).shape
    weights = torch.randn(out_shape, generator=gen, dtype=torch.float64).bfloat16().double()
    directions = [torch.randn(x.shape, generator=gen, dtype=torch.float64).bfloat16().double() for x in inputs]
    low = [x.to(dtype) for x in inputs]
    fused = derivatives(lambda *xs: loss("fused", temperature, *xs), [x.to(device) for x in low], weights,
                        directions)
    ref64 = derivatives(lambda *xs: loss("reference", temperature, *xs), inputs, weights, directions)
    same = (None, None)
    if dtype in LOW_PRECISION:
        with reference_in_input_precision():
            same = derivatives(lambda *xs: loss("reference", temperature, *xs), low, weights, directions)
    weight, direction = float(weights.abs().max()) or 1.0, max(float(v.abs().max()) for v in directions)
    second_floor = second_order_floor(temperature, inputs, weight, direction)
    for i, x in enumerate(inputs):
        same_grad = None if same[0] is None else same[0][i]
        check_result(f"grad[{name} {i}]", dtype, fused[0][i], same_grad, ref64[0][i],
                     rounding_floor(temperature, weight, x))
    for i, (got, want) in enumerate(zip(fused[1], ref64[1])):  # the inputs', then the weights'
        same_second = None if same[1] is None else same[1][i]
        check_result(f"second[{name} {i}]", dtype, got, same_second, want, second_floor)


@contextlib.contextmanager
def reference_in_input_precision() -> Iterator[None]:
    """The reference computing in its inputs' dtype (its float32 upcast switched off): the
    same-precision oracle of the float16 / bfloat16 rule."""
    original = reference.compute_dtype
    reference.compute_dtype = lambda dtype, upcast=True: original(dtype, upcast=False)
    try:
        yield
    finally:
        reference.compute_dtype = original


# ---------------------------------------------------------------------------------------------
# gradgradcheck


@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize("n", ROWS)
@pytest.mark.parametrize("case", list(CASES))
def test_gradgradcheck_float64(case, n, backend):
    shapes, loss = CASES[case]
    inputs = [x.requires_grad_() for x in features(shapes(n))]
    assert torch.autograd.gradgradcheck(lambda *xs: loss(backend, TEMPERATURE, *xs), inputs)


@pytest.mark.parametrize("n", (2, 3))
@pytest.mark.parametrize("case", list(CASES))
def test_gradgradcheck_fused_float32(case, n):
    """The fused first-order gradient's graph against float32 finite differences of the fused
    gradient itself (loose: float32 differences), so the graph is that of the kernels' values."""
    shapes, loss = CASES[case]
    inputs = [x.requires_grad_() for x in features(shapes(n))]
    assert torch.autograd.gradgradcheck(lambda *xs: loss("fused", TEMPERATURE, *[x.float() for x in xs]).double(),
                                        inputs, eps=1e-3, atol=2e-2, rtol=2e-2)


# ---------------------------------------------------------------------------------------------
# fused second order against the float64 reference


@pytest.mark.parametrize("kernel_device", KERNEL_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, *LOW_PRECISION], ids=str)
@pytest.mark.parametrize("n", ROWS)
@pytest.mark.parametrize("case", list(CASES))
def test_fused_second_order_matches_float64_reference(case, n, dtype, kernel_device):
    shapes, loss = CASES[case]
    with kernel_path(kernel_device) as device:
        check_second_order(case, loss, features(shapes(n)), dtype, TEMPERATURE, device=device)


@pytest.mark.parametrize("case", list(CASES))
def test_first_order_gradient_with_create_graph_is_the_fused_one(case):
    """create_graph=True changes what autograd can differentiate, not the first-order values."""
    shapes, loss = CASES[case]
    inputs = features(shapes(5))
    plain, graph = [[x.float().requires_grad_() for x in inputs] for _ in range(2)]
    expected = torch.autograd.grad(loss("fused", TEMPERATURE, *plain).sum(), plain)
    got = torch.autograd.grad(loss("fused", TEMPERATURE, *graph).sum(), graph, create_graph=True)
    for e, g in zip(expected, got):
        assert g.requires_grad and torch.equal(g.detach(), e)


def test_custom_op_route_double_backward():
    """The torch.library op itself (the route torch.compile traces) differentiates twice."""
    anchors, candidates = features([(5, DIM), (6, DIM)])
    labels_a, labels_c = _labels(anchors), _labels(candidates, 3)

    def op_loss(backend, temperature, a, c):
        if backend == "reference":
            return F.info_nce(a, c, temperature, anchor_labels=labels_a, candidate_labels=labels_c,
                              symmetric=True, backend=backend)
        return contrastive_forward(a, c, temperature, RULE_LABELS, None, labels_a, labels_c, False, 0, True,
                                   REDUCTIONS["mean"], PATH_EXACT)[0]

    check_second_order("op", op_loss, [anchors, candidates], torch.float32, TEMPERATURE)


# ---------------------------------------------------------------------------------------------
# The example and the nn.Module classes


def penalized_weight_gradient(backend: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient of ``loss + |d loss / d W|^2`` with respect to a linear layer's weight W, and of
    the loss alone (NT-Xent of the layer's outputs on two views)."""
    gen = torch.Generator().manual_seed(3)
    x1, x2 = (torch.randn(8, 6, generator=gen, dtype=torch.float64).to(dtype) for _ in range(2))
    layer = torch.nn.Linear(6, 5).to(dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(5, 6, generator=gen, dtype=torch.float64))
        layer.bias.copy_(torch.randn(5, generator=gen, dtype=torch.float64))
    loss = F.nt_xent(layer(x1), layer(x2), 0.5, backend=backend)
    (plain,) = torch.autograd.grad(loss, layer.weight, create_graph=True)
    (penalized,) = torch.autograd.grad(loss + plain.pow(2).sum(), layer.weight)
    return penalized, plain.detach()


def test_gradient_penalty_through_a_linear_layer_matches_the_reference():
    """The issue's example: the fused penalty lost its second-order term (norm 0.2638 vs 0.2720)."""
    fused, _ = penalized_weight_gradient("fused", torch.float32)
    reference32, _ = penalized_weight_gradient("reference", torch.float32)
    reference64, plain64 = penalized_weight_gradient("reference", torch.float64)
    assert (reference64 - plain64).abs().max() > 1e-2 * plain64.abs().max(), "the penalty's term is negligible"
    scale = float(reference64.abs().max())
    check_result("penalized grad (fused)", torch.float32, fused, None, reference64, 1e-5 * scale)
    check_result("penalized grad (reference float32)", torch.float32, reference32, None, reference64, 1e-5 * scale)


def _bank_loss(temperature: float) -> losses.NTXentLoss:
    with torch.random.fork_rng():
        torch.manual_seed(7)
        return losses.NTXentLoss(temperature, memory_bank_size=(9, DIM))


# As CASES, through the nn.Module classes.
MODULES: dict[str, Case] = {
    "NTXentLoss": (lambda n: [(n, DIM), (n, DIM)],
                   lambda b, t, z1, z2: losses.NTXentLoss(t, backend=b)(z1, z2)),
    "SupConLoss": (lambda n: [(n, DIM)],
                   lambda b, t, x: losses.SupConLoss(t, backend=b)(x, _labels(x))),
    "SupConLoss_ref_emb": (lambda n: [(n, DIM), (n + 2, DIM)],
                           lambda b, t, x, r: losses.SupConLoss(t, backend=b)(x, _labels(x), ref_emb=r,
                                                                              ref_labels=_labels(r, 3))),
    "CrossViewInfoNCE": (lambda n: [(n, DIM), (n, DIM)],
                         lambda b, t, z1, z2: losses.CrossViewInfoNCE(t, backend=b)(z1, z2)),
    "InfoNCE_symmetric_none": (lambda n: [(n, DIM), (n, DIM)],
                               lambda b, t, a, c: losses.InfoNCE(t, symmetric=True, reduction="none", backend=b)(
                                   a, c, positive_index=_rows(a).roll(1))),
}


@pytest.mark.parametrize("n", (1, 3))
@pytest.mark.parametrize("name", list(MODULES))
def test_module_gradgradcheck_float64(name, n):
    shapes, loss = MODULES[name]
    inputs = [x.requires_grad_() for x in features(shapes(n))]
    assert torch.autograd.gradgradcheck(lambda *xs: loss("auto", TEMPERATURE, *xs), inputs)


@pytest.mark.parametrize("n", (1, 3))
@pytest.mark.parametrize("name", list(MODULES))
def test_module_fused_second_order_matches_float64_reference(name, n):
    shapes, loss = MODULES[name]
    check_second_order(name, loss, features(shapes(n)), torch.float32, TEMPERATURE)


def test_memory_bank_second_order_matches_float64_reference():
    """NTXentLoss with a memory bank (the bank is a constant: one copy of the module per call)."""
    module = _bank_loss(0.3)

    def loss(backend, temperature, out0, out1):
        fresh = copy.deepcopy(module)
        fresh.backend = backend
        return fresh(out0, out1)

    check_second_order("bank", loss, features([(4, DIM), (4, DIM)]), torch.float32, 0.3)


def test_compiled_double_backward_is_refused_not_silent():
    """torch.compile (aot_autograd) has no double backward: torch raises, nothing is silently dropped."""
    z1, z2 = (x.float().requires_grad_() for x in features([(3, DIM), (3, DIM)]))
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b: F.nt_xent(a, b, 0.5, backend="fused"), fullgraph=True, backend="aot_eager")
    (g,) = torch.autograd.grad(compiled(z1, z2), z1, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.pow(2).sum().backward()


# ---------------------------------------------------------------------------------------------
# Property test

SIZES = (1, 2, 3, 31, 33)


@pytest.mark.parametrize("kernel_device", KERNEL_DEVICES)
@given(case=st.sampled_from(list(CASES)), n=st.one_of(st.sampled_from(SIZES), st.integers(1, 40)),
       dim=st.sampled_from((1, 3, 8, 33)), temperature=st.floats(0.05, 1.0, allow_nan=False),
       dtype=st.sampled_from((torch.float32, *LOW_PRECISION)), scale=st.sampled_from((0.3, 1.0, 5.0)),
       seed=st.integers(0, 2**32 - 1))
def test_property_fused_second_order_matches_float64_reference(kernel_device, case, n, dim, temperature, dtype, scale,
                                                                seed):
    shapes, loss = CASES[case]
    inputs = features([(rows, dim) for rows, _ in shapes(n)], seed, scale)
    with kernel_path(kernel_device) as device:
        check_second_order(case, loss, inputs, dtype, temperature, seed + 1, device)
