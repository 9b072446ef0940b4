"""The drop-in classes against the libraries they replace (lightly's NTXentLoss with and without a
memory bank, pytorch-metric-learning's SupConLoss), the memory bank against a float64 reference,
and the peers' arguments that are rejected with a clear error."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as torch_F

from coun_fast import losses
from helpers import assert_close_verbose
from peers import lightly_ntxent, pml

LightlyNTXent = lightly_ntxent()
PML = pml()
needs_lightly = pytest.mark.skipif(LightlyNTXent is None, reason="lightly is not installed")
needs_pml = pytest.mark.skipif(PML is None, reason="pytorch-metric-learning is not installed")
FP32 = dict(rtol=1e-5, atol=1e-6)  # against a float64 reference
PEER = dict(rtol=1e-4, atol=1e-5)  # two float32 computations in different orders
BACKENDS = ("fused", "reference")


def leaf(*shape, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape).to(dtype).requires_grad_()


def twin(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().requires_grad_(x.requires_grad)


def loss_and_grads(loss_fn, *inputs):
    loss = loss_fn(*inputs)
    loss.backward()
    return loss, [x.grad for x in inputs]


def assert_same(name, ours, theirs, **tolerance):
    assert_close_verbose(name, ours[0].float(), theirs[0].float(), **tolerance)
    for i, (g, h) in enumerate(zip(ours[1], theirs[1])):
        assert_close_verbose(f"{name} grad[{i}]", g.float(), h.float(), **tolerance)


# ---------------------------------------------------------------------------------------------
# lightly's NTXentLoss


@needs_lightly
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,dim,temperature", [(1, 4, 0.5), (8, 16, 0.1), (33, 20, 0.5)])
def test_ntxent_without_bank_matches_lightly(backend, n, dim, temperature):
    out0, out1 = leaf(n, dim), leaf(n, dim)
    ours = loss_and_grads(losses.NTXentLoss(temperature, backend=backend), out0, out1)
    theirs = loss_and_grads(LightlyNTXent(temperature), twin(out0), twin(out1))
    assert_same("ntxent", ours, theirs, **PEER)


@needs_lightly
@pytest.mark.parametrize("backend", BACKENDS)
def test_memory_bank_matches_lightly_over_steps(backend):
    """Five training steps with a bank of 10 and batches of 4: the queue wraps (rows past the end
    are dropped, as lightly does); an evaluation call in between leaves the bank as it is."""
    torch.manual_seed(3)
    theirs_fn = LightlyNTXent(0.2, memory_bank_size=(10, 8))
    torch.manual_seed(3)
    ours_fn = losses.NTXentLoss(0.2, memory_bank_size=(10, 8), backend=backend)
    assert torch.equal(ours_fn.bank, theirs_fn.memory_bank.bank)
    for step in range(5):
        out0, out1 = leaf(4, 8), leaf(4, 8)
        ours = loss_and_grads(ours_fn, out0, out1)
        theirs = loss_and_grads(theirs_fn, twin(out0), twin(out1))
        assert_same(f"step {step}", ours, theirs, **PEER)
        assert int(ours_fn.bank_ptr) == int(theirs_fn.memory_bank.bank_ptr)
        assert_close_verbose(f"bank after step {step}", ours_fn.bank, theirs_fn.memory_bank.bank, **PEER)
        if step == 2:
            with torch.no_grad():
                frozen = ours_fn.bank.clone()
                ours_fn(torch.randn(4, 8), torch.randn(4, 8))
            assert torch.equal(ours_fn.bank, frozen) and int(ours_fn.bank_ptr) == int(theirs_fn.memory_bank.bank_ptr)


@needs_lightly
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_ntxent_returns_the_input_dtype_like_lightly(dtype):
    out0, out1 = torch.randn(16, 32).to(dtype), torch.randn(16, 32).to(dtype)
    for size in (0, (64, 32)):
        torch.manual_seed(0)
        ours = losses.NTXentLoss(0.5, memory_bank_size=size)(out0, out1)
        torch.manual_seed(0)
        theirs = LightlyNTXent(0.5, memory_bank_size=size)(out0.float(), out1.float())
        assert ours.dtype == dtype
        assert_close_verbose(f"{dtype} bank={size}", ours.float(), theirs, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,bank,dim,temperature", [(1, 1, 3, 0.5), (6, 16, 8, 0.1), (40, 100, 33, 0.07)])
def test_memory_bank_matches_float64_reference(backend, n, bank, dim, temperature):
    """The loss and gradients of one bank step against CE([q.k, q.bank] / tau, class 0) in float64."""
    loss_fn = losses.NTXentLoss(temperature, memory_bank_size=(bank, dim), backend=backend)
    negatives = loss_fn.bank.double().clone()
    out0, out1 = leaf(n, dim), leaf(n, dim)
    ours = loss_and_grads(loss_fn, out0, out1)
    q0, k0 = out0.detach().double().requires_grad_(), out1.detach().double().requires_grad_()
    q, k = torch_F.normalize(q0, dim=1), torch_F.normalize(k0, dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ torch_F.normalize(negatives, dim=1).T], dim=1) / temperature
    reference = torch_F.cross_entropy(logits, torch.zeros(n, dtype=torch.long))
    reference.backward()
    assert_same("bank vs float64", ours, (reference, [q0.grad, k0.grad]), **FP32)
    # the normalized out1 rows were enqueued
    assert_close_verbose("enqueued", loss_fn.bank[: min(n, bank)], k[: min(n, bank)].float(), **FP32)


def test_memory_bank_of_bare_size_is_created_at_first_call_and_not_saved():
    loss_fn = losses.NTXentLoss(memory_bank_size=16)
    assert loss_fn.bank.numel() == 0 and "bank" not in loss_fn.state_dict()
    loss_fn(leaf(4, 12), leaf(4, 12))
    assert loss_fn.bank.shape == (16, 12) and int(loss_fn.bank_ptr) == 4
    assert torch.allclose(loss_fn.bank.norm(dim=1), torch.ones(16))
    with pytest.raises(ValueError, match="out1 has 7 features but the memory bank holds rows of 12"):
        loss_fn(leaf(4, 7), leaf(4, 7))


def lightly_enqueue(bank: torch.Tensor, pointer: int, rows: torch.Tensor) -> int:
    """lightly's MemoryBankModule update, as lightly writes it (in place; returns the new pointer)."""
    size = bank.shape[0]
    if pointer + rows.shape[0] >= size:
        bank[pointer:] = rows[: size - pointer]
        return 0
    bank[pointer: pointer + rows.shape[0]] = rows
    return pointer + rows.shape[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_memory_bank_queue_follows_lightly_rule(backend):
    """Batches that stop short of the bank's end, reach it exactly, overshoot it (rows past the end
    are dropped), and are as long as or longer than the bank: the same rows and pointer as lightly's
    update, bit for bit; a call without gradient (evaluation) enqueues nothing."""
    loss_fn = losses.NTXentLoss(0.3, memory_bank_size=(10, 6), backend=backend)
    bank, pointer = loss_fn.bank.clone(), 0
    for step, n in enumerate((4, 4, 3, 7, 12, 10, 5, 9, 1, 2)):
        out0, out1 = leaf(n, 6), leaf(n, 6)
        loss_fn(out0, out1).backward()
        pointer = lightly_enqueue(bank, pointer, torch_F.normalize(out1.detach(), dim=1))
        assert int(loss_fn.bank_ptr) == pointer, step
        assert torch.equal(loss_fn.bank, bank), step
        with torch.no_grad():
            loss_fn(torch.randn(n, 6), torch.randn(n, 6))
        assert int(loss_fn.bank_ptr) == pointer and torch.equal(loss_fn.bank, bank), step


def compiled_bank_steps(backend: str, size, compiler: str, **tolerance) -> None:
    """torch.compile(fullgraph=True) of NTXentLoss with a bank of 10 rows (``size``: (10, 8), or a
    bare 10, created at the first call) against the eager module: six training steps of 4 rows, so
    the queue fills, overshoots its end and wraps twice; loss, gradients, bank and pointer agree."""
    torch._dynamo.reset()
    eager_fn = losses.NTXentLoss(0.2, memory_bank_size=size, backend=backend)
    compiled_module = copy.deepcopy(eager_fn)
    compiled_fn = torch.compile(compiled_module, fullgraph=True, backend=compiler)
    for step in range(6):
        out0, out1 = leaf(4, 8), leaf(4, 8)
        with torch.random.fork_rng():
            eager = loss_and_grads(eager_fn, out0, out1)
        compiled = loss_and_grads(compiled_fn, twin(out0), twin(out1))  # the same random bank at step 0
        assert_same(f"step {step}", compiled, eager, **tolerance)
        assert int(compiled_module.bank_ptr) == int(eager_fn.bank_ptr), step
        assert_close_verbose(f"bank after step {step}", compiled_module.bank, eager_fn.bank, **tolerance)


@pytest.mark.parametrize("size", [(10, 8), 10], ids=["k_d", "bare_k"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_memory_bank_matches_eager(backend, size):
    """With backend="aot_eager" (dynamo and aot_autograd, the same ops as eager): bit for bit."""
    compiled_bank_steps(backend, size, "aot_eager", rtol=0, atol=0)


@pytest.mark.slow
def test_compiled_memory_bank_matches_eager_with_inductor():
    """Inductor (a C++ compile, ~15 s here) fuses the normalization its own way: float32 rounding."""
    compiled_bank_steps("fused", (10, 8), "inductor", **PEER)


@pytest.mark.parametrize("size,message", [((4, 0), "needs both K and D > 0"), (-1, "memory_bank_size must be"),
                                          ((1, 2, 3), "memory_bank_size must be"), (2.5, "memory_bank_size must be")])
def test_bad_memory_bank_size(size, message):
    with pytest.raises(ValueError, match=message):
        losses.NTXentLoss(memory_bank_size=size)


def test_ntxent_views_must_match():
    with pytest.raises(ValueError, match=r"out0 and out1 must have the same shape"):
        losses.NTXentLoss(memory_bank_size=(8, 4))(torch.randn(3, 4), torch.randn(2, 4))


def test_gather_distributed_alone_changes_nothing():
    """Outside a distributed job there is nothing to gather (tests/test_distributed_losses.py runs ranks)."""
    out0, out1 = torch.randn(4, 8), torch.randn(4, 8)
    assert torch.equal(losses.NTXentLoss(gather_distributed=True)(out0, out1), losses.NTXentLoss()(out0, out1))
    with pytest.raises(TypeError, match="gather_distributed must be True or False"):
        losses.NTXentLoss(gather_distributed=1)


# ---------------------------------------------------------------------------------------------
# pytorch-metric-learning's SupConLoss

LABELS = {
    "mixed": [0, 1, 0, 1, 2, 2, 2, 0, 3, 4, 4, 1],
    "singletons_and_pairs": [5, 6, 7, 7, 8, 9],
    "no_positive_pair": [0, 1, 2, 3],
    "no_negative_pair": [4, 4, 4, 4, 4],
    "one_row": [3],
}
REDUCERS = ("AvgNonZeroReducer", "MeanReducer", "SumReducer", "DoNothingReducer")


def pml_kwargs(reducer: str) -> dict:
    return dict(reducer=getattr(PML.reducers, reducer)())


def value(result):
    """The loss tensor of a reduced call, or the per-anchor losses of DoNothingReducer's dictionary."""
    if isinstance(result, dict):
        losses_ = result["loss"]["losses"]
        return losses_ if torch.is_tensor(losses_) else torch.tensor(float(losses_))
    return result


@needs_pml
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reducer", REDUCERS)
@pytest.mark.parametrize("labels", list(LABELS))
def test_sup_con_matches_pml(backend, reducer, labels):
    labels = torch.tensor(LABELS[labels])
    embeddings = leaf(labels.numel(), 16)
    ours = losses.SupConLoss(0.1, backend=backend, **pml_kwargs(reducer))(embeddings, labels)
    theirs = PML.losses.SupConLoss(0.1, **pml_kwargs(reducer))(twin(embeddings), labels)
    ours, theirs = value(ours), value(theirs)
    if reducer == "DoNothingReducer" and theirs.dim() == 0:  # PML's "zero loss" form: no pair of a kind
        assert torch.equal(ours, torch.zeros_like(ours))
        return
    assert_close_verbose("loss", ours, theirs, **PEER)
    if ours.requires_grad:
        weights = torch.randn_like(ours)
        (g,) = torch.autograd.grad((ours * weights).sum(), embeddings)
        theirs_input = twin(embeddings)
        theirs = value(PML.losses.SupConLoss(0.1, **pml_kwargs(reducer))(theirs_input, labels))
        (h,) = torch.autograd.grad((theirs * weights).sum(), theirs_input, allow_unused=True)
        assert_close_verbose("grad", g, torch.zeros_like(g) if h is None else h, **PEER)


@needs_pml
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["other_labels", "same_labels_object", "no_negative"])
def test_sup_con_with_reference_embeddings_matches_pml(backend, case):
    labels = torch.tensor([0, 1, 0, 2, 1, 3])
    embeddings, ref_emb = leaf(6, 9), leaf(6 if case == "same_labels_object" else 8, 9)
    ref_labels = {"other_labels": torch.tensor([0, 0, 1, 4, 2, 2, 3, 1]), "same_labels_object": labels,
                  "no_negative": torch.zeros(8, dtype=torch.long)}[case]
    if case == "no_negative":
        labels = torch.zeros(6, dtype=torch.long)
    ours = loss_and_grads(lambda e, r: losses.SupConLoss(0.2, backend=backend)(e, labels, ref_emb=r,
                                                                                ref_labels=ref_labels),
                          embeddings, ref_emb)
    theirs = loss_and_grads(lambda e, r: PML.losses.SupConLoss(0.2)(e, labels, ref_emb=r, ref_labels=ref_labels),
                            twin(embeddings), twin(ref_emb))
    theirs = (theirs[0], [torch.zeros_like(x) if g is None else g for x, g in zip((embeddings, ref_emb), theirs[1])])
    assert_same(case, ours, theirs, **PEER)


@needs_pml
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sup_con_returns_the_input_dtype_like_pml(dtype):
    labels = torch.randint(0, 4, (32,))
    embeddings = torch.randn(32, 24).to(dtype)
    ours = losses.SupConLoss(0.1)(embeddings, labels)
    theirs = PML.losses.SupConLoss(0.1)(embeddings.float(), labels)
    assert ours.dtype == dtype
    assert_close_verbose(str(dtype), ours.float(), theirs, rtol=2e-2, atol=2e-2)


@needs_pml
def test_sup_con_accepts_pml_cosine_similarity_and_default_arguments():
    labels, embeddings = torch.tensor([0, 1, 0, 1]), torch.randn(4, 8)
    expected = PML.losses.SupConLoss(0.1)(embeddings, labels)
    for distance in (PML.distances.CosineSimilarity(), PML.distances.DotProductSimilarity(normalize_embeddings=True)):
        loss_fn = losses.SupConLoss(temperature=0.1, distance=distance, reducer=PML.reducers.AvgNonZeroReducer(),
                                    embedding_regularizer=None, embedding_reg_weight=1, collect_stats=False)
        assert_close_verbose(type(distance).__name__, loss_fn(embeddings, labels), expected, **PEER)


@needs_pml
def test_pml_ntxent_with_two_views_equals_ntxent():
    """PML's NTXentLoss over labels arange(N).repeat(2) is SimCLR's NT-Xent (one positive per anchor)."""
    out0, out1 = torch.randn(10, 12), torch.randn(10, 12)
    labels = torch.arange(10).repeat(2)
    theirs = PML.losses.NTXentLoss(0.5)(torch.cat([out0, out1]), labels)
    assert_close_verbose("ntxent", losses.NTXentLoss(0.5)(out0, out1), theirs, **PEER)


@needs_pml
@pytest.mark.parametrize("make,message", [
    (lambda: dict(distance=PML.distances.LpDistance()),
     r"distance=LpDistance\(normalize_embeddings=True, p=2, power=1\) is sqrt\(2 - 2 cos\).*strict=True refuses"),
    (lambda: dict(distance=PML.distances.CosineSimilarity(power=2)), r"distance=CosineSimilarity.* is cos\^2"),
    (lambda: dict(distance=PML.distances.DotProductSimilarity(normalize_embeddings=False)), r"compares unnormalized embeddings"),
], ids=["lp_distance", "cosine_power", "dot_product"])
def test_sup_con_strict_refuses_what_the_kernels_do_not_compute(make, message):
    """Without strict=True these run unfused (tests/test_losses_pml_parity.py)."""
    with pytest.raises(ValueError, match=message):
        losses.SupConLoss(strict=True, **make())


@pytest.mark.parametrize("call,message", [
    (lambda f, e, y: f(e), "labels is required"),
    (lambda f, e, y: f(e, y, ref_labels=y), "ref_labels was given without ref_emb"),
    (lambda f, e, y: f(e, y, ref_emb=torch.randn(3, 8), ref_labels=torch.arange(4)), r"ref_labels must have shape"),
])
def test_sup_con_call_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call(losses.SupConLoss(), torch.randn(4, 8), torch.tensor([0, 1, 0, 1]))


@pytest.mark.parametrize("make", [losses.SupConLoss, losses.PMLNTXentLoss])
@pytest.mark.parametrize("kwargs,error,message", [
    (dict(reducer="mean"), TypeError, "reducer must be a pytorch-metric-learning reducer object or None"),
    (dict(embedding_regularizer=3), TypeError, "embedding_regularizer must be a regularizer object or None"),
    (dict(strict="yes"), TypeError, "strict must be True or False"),
])
def test_pml_class_argument_errors(make, kwargs, error, message):
    with pytest.raises(error, match=message):
        make(**kwargs)
