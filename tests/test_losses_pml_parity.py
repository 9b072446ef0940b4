"""pytorch-metric-learning (PML) parity of the drop-in SupConLoss and PMLNTXentLoss, the way PML's own
suite tests its losses: distances, reducers, miners (indices_tuple), ref_emb, regularizers, and the
edge cases (all labels equal, all different, no positive pair, one row), with the installed PML
classes as the oracle for values and gradients. Which calls run fused (no M x N matrix) and which
fall back (a one-time FallbackWarning naming why; a ValueError under strict=True) is checked too."""

from __future__ import annotations

import warnings

import pytest
import torch

from coun_fast import _pml, losses
from helpers import assert_close_verbose
from peers import pml

PML = pml()
pytestmark = pytest.mark.skipif(PML is None, reason="pytorch-metric-learning is not installed")
TIGHT = dict(rtol=1e-5, atol=5e-7)  # float32 values, two summation orders
GRAD = dict(rtol=1e-4, atol=1e-6)  # float32 gradients (of a random weighting), two summation orders
EXACT = dict(rtol=1e-10, atol=1e-12)  # float64 (the pure-PyTorch form of the kernels' formula)
CLASSES = {"SupConLoss": losses.SupConLoss, "NTXentLoss": losses.PMLNTXentLoss}
LABELS = {
    "mixed": [0, 1, 0, 1, 2, 2, 2, 0, 3, 4, 4, 1],
    "singletons_and_pairs": [5, 6, 7, 7, 8, 9],
    "two_views": [0, 1, 2, 3, 4, 0, 1, 2, 3, 4],
    "all_different": [0, 1, 2, 3],
    "all_equal": [4, 4, 4, 4, 4],
    "one_pair": [1, 1],
    "one_row": [3],
}


def peer(name: str):
    return getattr(PML.losses, name)


def unpack(result):
    """A reduced loss, or DoNothingReducer's dictionary as (losses, its other fields)."""
    if isinstance(result, dict):
        info = result["loss"]
        losses_ = info["losses"]
        return (losses_ if torch.is_tensor(losses_) else torch.tensor(float(losses_))), info
    return result, None


def assert_same_call(name: str, make_ours, make_theirs, inputs: list[torch.Tensor], call, grad_inputs=None,
                     dtype=torch.float32):
    """The loss (or DoNothingReducer's per-element losses, indices and reduction type) and the
    gradients of a random weighting of it, ours against PML's, on copies of the same inputs."""
    grad_inputs = range(len(inputs)) if grad_inputs is None else grad_inputs
    inputs = [x.to(dtype) if x.is_floating_point() else x for x in inputs]
    values, grads = (TIGHT, GRAD) if dtype == torch.float32 else (EXACT, EXACT)
    ours_in = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    theirs_in = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    ours, ours_info = unpack(call(make_ours(), ours_in))
    theirs, theirs_info = unpack(call(make_theirs(), theirs_in))
    assert ours.dtype == theirs.dtype, (ours.dtype, theirs.dtype)
    assert_close_verbose(f"{name} loss", ours, theirs, **values)
    if theirs_info is not None:
        assert ours_info["reduction_type"] == theirs_info["reduction_type"]
        for i, (a, b) in enumerate(zip(_tuple(ours_info["indices"]), _tuple(theirs_info["indices"]))):
            assert torch.equal(a, b), (name, i)
    weights = torch.randn_like(theirs)
    differentiable = [i for i in grad_inputs if inputs[i].is_floating_point()]
    g = _grads((ours * weights).sum(), [ours_in[i] for i in differentiable])
    h = _grads((theirs * weights).sum(), [theirs_in[i] for i in differentiable])
    for i, a, b in zip(differentiable, g, h):
        assert_close_verbose(f"{name} grad[{i}]", a, b, **grads)


def _tuple(indices):
    return () if indices is None else (indices,) if torch.is_tensor(indices) else tuple(indices)


def _grads(loss, inputs):
    if not loss.requires_grad:
        return [torch.zeros_like(x) for x in inputs]
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


def embeddings_for(labels, dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(len(labels), dim, generator=generator), torch.tensor(labels)


def plain(loss, inputs):
    return loss(*inputs)


@pytest.fixture
def no_fallback(monkeypatch):
    """The call must run fused: no FallbackWarning and no M x N matrix of PML's formulas."""
    def refuse(*args, **kwargs):
        raise AssertionError("the unfused path ran")
    monkeypatch.setattr(_pml, "matrix", refuse)
    with warnings.catch_warnings():
        warnings.simplefilter("error", _pml.FallbackWarning)
        yield


# ---------------------------------------------------------------------------------------------
# Labels and reducers (fused)

REDUCERS = {
    "default": lambda: None,
    "AvgNonZero": lambda: PML.reducers.AvgNonZeroReducer(),
    "Mean": lambda: PML.reducers.MeanReducer(),
    "Sum": lambda: PML.reducers.SumReducer(),
    "DoNothing": lambda: PML.reducers.DoNothingReducer(),
    "Threshold_low": lambda: PML.reducers.ThresholdReducer(low=1.5),
    "Threshold_high": lambda: PML.reducers.ThresholdReducer(high=2.2),
    "ClassWeighted": lambda: PML.reducers.ClassWeightedReducer(torch.linspace(0.5, 2.0, 10)),
    "PerAnchor": lambda: PML.reducers.PerAnchorReducer(PML.reducers.SumReducer()),
    "Multiple": lambda: PML.reducers.MultipleReducers({"loss": PML.reducers.SumReducer()}),
}


def kwargs(reducer: str, **extra) -> dict:
    made = REDUCERS[reducer]()
    return {**({} if made is None else {"reducer": made}), **extra}


@pytest.mark.parametrize("loss", list(CLASSES))
@pytest.mark.parametrize("reducer", list(REDUCERS))
@pytest.mark.parametrize("labels", list(LABELS))
def test_labels_and_reducers_run_fused_and_match_pml(no_fallback, loss, reducer, labels):
    x, y = embeddings_for(LABELS[labels])
    for backend in ("fused", "reference"):
        assert_same_call(f"{loss} {reducer} {labels} {backend}",
                         lambda: CLASSES[loss](0.2, backend=backend, **kwargs(reducer)),
                         lambda: peer(loss)(0.2, **kwargs(reducer)), [x, y], plain, grad_inputs=[0])


@pytest.mark.parametrize("loss", list(CLASSES))
@pytest.mark.parametrize("temperature", [0.05, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_many_classes_and_sizes_match_pml(no_fallback, loss, temperature, dtype):
    """Odd sizes, several positives of varying counts per anchor (PML's NTXent: one term per pair);
    float32 runs the kernels, float64 the pure-PyTorch form of their formula, against PML in the
    same dtype (float64: to 1e-10)."""
    for m, classes in ((1, 1), (7, 3), (33, 5), (40, 40), (64, 2)):
        generator = torch.Generator().manual_seed(m)
        x = torch.randn(m, 5, generator=generator)
        y = torch.randint(0, classes, (m,), generator=generator)
        assert_same_call(f"{loss} M={m}", lambda: CLASSES[loss](temperature), lambda: peer(loss)(temperature),
                         [x, y], plain, grad_inputs=[0], dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Distances

FUSED_DISTANCES = {
    "Cosine": lambda: PML.distances.CosineSimilarity(),
    "DotProduct_normalized": lambda: PML.distances.DotProductSimilarity(normalize_embeddings=True),
    "Lp_power2_normalized": lambda: PML.distances.LpDistance(normalize_embeddings=True, power=2),
}
UNFUSED_DISTANCES = {
    "Lp_power1_normalized": (lambda: PML.distances.LpDistance(), r"sqrt\(2 - 2 cos\)"),
    "Lp_unnormalized": (lambda: PML.distances.LpDistance(normalize_embeddings=False), "unnormalized"),
    "Lp_power2_unnormalized": (lambda: PML.distances.LpDistance(normalize_embeddings=False, power=2),
                               "unnormalized"),
    "Lp_p1": (lambda: PML.distances.LpDistance(p=1), "L1 norm"),
    "DotProduct_unnormalized": (lambda: PML.distances.DotProductSimilarity(normalize_embeddings=False),
                                "unnormalized"),
    "Cosine_power2": (lambda: PML.distances.CosineSimilarity(power=2), r"cos\^2"),
    "SNR": (lambda: PML.distances.SNRDistance(), "SNRDistance"),
}


@pytest.mark.parametrize("loss", list(CLASSES))
@pytest.mark.parametrize("distance", list(FUSED_DISTANCES))
@pytest.mark.parametrize("reducer", ["default", "DoNothing"])
def test_cosine_distances_run_fused_and_match_pml(no_fallback, loss, distance, reducer):
    x, y = embeddings_for(LABELS["mixed"], seed=1)
    make = FUSED_DISTANCES[distance]
    assert_same_call(f"{loss} {distance}", lambda: CLASSES[loss](0.1, distance=make(), **kwargs(reducer)),
                     lambda: peer(loss)(0.1, distance=make(), **kwargs(reducer)), [x, y], plain, grad_inputs=[0])


@pytest.mark.parametrize("loss", list(CLASSES))
@pytest.mark.parametrize("distance", list(UNFUSED_DISTANCES))
def test_other_distances_fall_back_with_one_warning_and_match_pml(loss, distance):
    make, why = UNFUSED_DISTANCES[distance]
    x, y = embeddings_for(LABELS["mixed"], seed=2)
    ours = CLASSES[loss](0.1, distance=make())
    with pytest.warns(_pml.FallbackWarning, match=why):
        ours(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", _pml.FallbackWarning)
        ours(x, y)  # once per loss object and reason
        assert_same_call(f"{loss} {distance}", lambda: ours, lambda: peer(loss)(0.1, distance=make()), [x, y], plain,
                         grad_inputs=[0])
    with pytest.raises(ValueError, match=why + ".*strict=True refuses"):
        CLASSES[loss](0.1, distance=make(), strict=True)


# ---------------------------------------------------------------------------------------------
# Miners (indices_tuple)

MINERS = {
    "MultiSimilarity": lambda: PML.miners.MultiSimilarityMiner(epsilon=0.5),
    "TripletMargin_all": lambda: PML.miners.TripletMarginMiner(margin=0.5, type_of_triplets="all"),
    "BatchHard": lambda: PML.miners.BatchHardMiner(),
    "PairMargin": lambda: PML.miners.PairMarginMiner(pos_margin=0.2, neg_margin=0.8),
    "BatchEasyHard": lambda: PML.miners.BatchEasyHardMiner(),
}


@pytest.mark.parametrize("loss", list(CLASSES))
@pytest.mark.parametrize("miner", list(MINERS))
@pytest.mark.parametrize("with_ref", [False, True], ids=["self", "ref_emb"])
def test_miners_fall_back_and_match_pml(loss, miner, with_ref):
    x, y = embeddings_for(LABELS["mixed"], seed=3)
    r, ry = embeddings_for([0, 1, 2, 3, 4, 0, 1, 9], seed=4)
    if with_ref:
        tuples = MINERS[miner]()(x, y, r, ry)
        call = lambda f, i: f(i[0], i[1], tuples, ref_emb=i[2], ref_labels=i[3])  # noqa: E731
        inputs = [x, y, r, ry]
    else:
        tuples = MINERS[miner]()(x, y)
        call = lambda f, i: f(i[0], i[1], tuples)  # noqa: E731
        inputs = [x, y]
    with pytest.warns(_pml.FallbackWarning, match="indices_tuple"):
        assert_same_call(f"{loss} {miner}", lambda: CLASSES[loss](0.1), lambda: peer(loss)(0.1), inputs, call)
    with pytest.raises(ValueError, match="indices_tuple.*strict=True refuses"):
        call(CLASSES[loss](0.1, strict=True), inputs)


@pytest.mark.parametrize("loss", list(CLASSES))
def test_indices_tuple_without_labels_and_pairs_given_by_hand(loss):
    """PML takes a miner's pairs without labels; an explicit 4-tuple and an empty one."""
    x, _ = embeddings_for(range(6), seed=5)
    full = (torch.tensor([0, 1, 2]), torch.tensor([1, 0, 3]), torch.tensor([0, 0, 1, 2]), torch.tensor([4, 5, 5, 4]))
    empty = tuple(torch.tensor([], dtype=torch.long) for _ in range(4))
    for tuples in (full, empty):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", _pml.FallbackWarning)
            assert_same_call(f"{loss} by hand", lambda: CLASSES[loss](0.3), lambda: peer(loss)(0.3), [x],
                             lambda f, i: f(i[0], None, tuples))


# ---------------------------------------------------------------------------------------------
# ref_emb

REF_CASES = ["other_labels", "same_labels_object", "no_ref_labels", "no_negative", "one_pos_one_neg",
             "no_positive"]


def ref_case(case: str):
    x, y = embeddings_for([0, 1, 0, 2, 1, 3], seed=6)
    r, ry = embeddings_for([0, 0, 1, 4, 2, 2, 3, 1], seed=7)
    if case == "same_labels_object":
        r, ry = embeddings_for([0] * 6, seed=7)[0], y
    elif case == "no_ref_labels":
        r, ry = embeddings_for([0] * 6, seed=7)[0], None
    elif case == "no_negative":
        y, ry = torch.zeros(6, dtype=torch.long), torch.zeros(8, dtype=torch.long)
    elif case == "one_pos_one_neg":
        x, y = x[:1], y[:1]
        r, ry = r[:2], torch.tensor([0, 1])
    elif case == "no_positive":
        ry = ry + 10
    return x, y, r, ry


@pytest.mark.parametrize("loss", list(CLASSES))
@pytest.mark.parametrize("reducer", ["default", "DoNothing", "Mean"])
@pytest.mark.parametrize("case", REF_CASES)
def test_reference_embeddings_run_fused_and_match_pml(no_fallback, loss, reducer, case):
    x, y, r, ry = ref_case(case)
    same = case == "same_labels_object"
    inputs = [x, y, r] + ([] if ry is None or same else [ry])

    def call(f, i):
        ref_labels = i[1] if same else (i[3] if len(i) > 3 else None)
        return f(i[0], i[1], ref_emb=i[2], ref_labels=ref_labels)

    assert_same_call(f"{loss} {case}", lambda: CLASSES[loss](0.2, **kwargs(reducer)),
                     lambda: peer(loss)(0.2, **kwargs(reducer)), inputs, call)


@pytest.mark.parametrize("loss", list(CLASSES))
def test_the_same_labels_object_of_another_integer_dtype(no_fallback, loss):
    """int32 labels passed as labels and ref_labels are still the same object for PML's rule."""
    x, _, r, _ = ref_case("same_labels_object")
    y = torch.tensor([0, 1, 0, 2, 1, 3], dtype=torch.int32)
    assert_same_call(loss, lambda: CLASSES[loss](0.2), lambda: peer(loss)(0.2), [x, r],
                     lambda f, i: f(i[0], y, ref_emb=i[1], ref_labels=y))
    with pytest.raises(ValueError, match=r"ref_labels must have shape \(8,\)"):
        CLASSES[loss](0.2)(x, y, ref_emb=torch.randn(8, 8), ref_labels=y)


@pytest.mark.parametrize("loss", list(CLASSES))
def test_ref_emb_without_ref_labels_of_another_length_falls_back(loss):
    """PML then labels the reference rows with ``labels`` (the first M rows compared)."""
    x, y = embeddings_for([0, 1, 0, 1], seed=8)
    r, _ = embeddings_for(range(7), seed=9)
    with pytest.warns(_pml.FallbackWarning, match="ref_emb without its own ref_labels"):
        assert_same_call(loss, lambda: CLASSES[loss](0.2), lambda: peer(loss)(0.2), [x, y, r],
                         lambda f, i: f(i[0], i[1], ref_emb=i[2]))


# ---------------------------------------------------------------------------------------------
# Regularizers, (B, V, D), two views, dtypes, finite checks


@pytest.mark.parametrize("loss", list(CLASSES))
@pytest.mark.parametrize("reducer", ["default", "Sum", "DoNothing", "Threshold_high"])
def test_embedding_regularizer_matches_pml(no_fallback, loss, reducer):
    x, y = embeddings_for(LABELS["mixed"], seed=10)
    regularizer = dict(embedding_regularizer=PML.regularizers.LpRegularizer(), embedding_reg_weight=0.3)

    def call(f, i):
        result = f(*i)
        if isinstance(result, dict):  # two entries: the loss's and the regularizer's (already reduced)
            assert set(result) == {"loss", "embedding_reg_loss"}
            return result["loss"]["losses"] * 1 + result["embedding_reg_loss"]["losses"]
        return result

    assert_same_call(f"{loss} regularizer", lambda: CLASSES[loss](0.2, **kwargs(reducer), **regularizer),
                     lambda: peer(loss)(0.2, **kwargs(reducer), **regularizer), [x, y], call, grad_inputs=[0])


def test_pml_ntxent_with_two_views_is_simclr_nt_xent():
    z1, z2 = torch.randn(9, 6), torch.randn(9, 6)
    labels = torch.arange(9).repeat(2)
    assert_close_verbose("two views", losses.PMLNTXentLoss(0.5)(torch.cat([z1, z2]), labels),
                         losses.NTXentLoss(0.5)(z1, z2), **TIGHT)


@pytest.mark.parametrize("loss", list(CLASSES))
def test_views_layout_matches_pml_on_flattened_rows(loss):
    x, y = torch.randn(5, 3, 4), torch.tensor([0, 1, 0, 2, 1])
    expected = peer(loss)(0.2)(x.reshape(15, 4), y.repeat_interleave(3))
    assert_close_verbose(loss, CLASSES[loss](0.2)(x, y), expected, **TIGHT)


@pytest.mark.parametrize("loss", list(CLASSES))
@pytest.mark.parametrize("low", [torch.bfloat16, torch.float64])
def test_mixed_dtypes_are_promoted(loss, low):
    """embeddings float32 with ref_emb of another dtype: computed in torch.promote_types of the two
    (float64, or float32 for bfloat16); each input's gradient in its own dtype. PML itself refuses
    the mix (its matrix product needs one dtype)."""
    x, y, r, ry = ref_case("other_labels")
    r = r.to(low).requires_grad_()
    x = x.requires_grad_()
    loss_value = CLASSES[loss](0.2)(x, y, ref_emb=r, ref_labels=ry)
    promoted = torch.promote_types(torch.float32, low)
    assert loss_value.dtype == promoted
    loss_value.backward()
    assert x.grad.dtype == torch.float32 and r.grad.dtype == low
    expected = peer(loss)(0.2)(x.detach().to(promoted), y, ref_emb=r.detach().to(promoted), ref_labels=ry)
    assert_close_verbose("promoted", loss_value, expected, **TIGHT)


@pytest.mark.parametrize("loss", list(CLASSES))
def test_check_finite_on_the_classes(loss):
    clean, y = embeddings_for(LABELS["mixed"])
    dirty = clean.clone()
    dirty[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"embeddings contains NaN or Inf \(check_finite=True\)"):
        CLASSES[loss](check_finite=True)(dirty, y)
    with pytest.raises(ValueError, match=r"ref_emb contains NaN or Inf \(check_finite=True\)"):
        CLASSES[loss](check_finite=True)(clean, y, ref_emb=dirty, ref_labels=y.flip(0))
    assert torch.isfinite(CLASSES[loss](check_finite=True)(clean, y))
    with pytest.raises(TypeError, match="check_finite must be True or False"):
        CLASSES[loss](check_finite="yes")


def test_fallback_warning_names_the_class_and_strict():
    x, y = embeddings_for(LABELS["mixed"])
    with pytest.warns(_pml.FallbackWarning, match=r"PMLNTXentLoss runs unfused .*pass strict=True to refuse"):
        losses.PMLNTXentLoss(distance=PML.distances.LpDistance())(x, y)


@pytest.mark.parametrize("reducer", ["default", "Mean", "Sum"])
def test_fused_sup_con_compiles_whole(reducer):
    """The fused SupConLoss with PML's objects (a cosine-affine distance, a reducer reduced here)
    has no host synchronization: torch.compile(fullgraph=True) traces it, and it matches eager."""
    x, y = embeddings_for(LABELS["mixed"], seed=11)
    make = lambda: losses.SupConLoss(0.2, distance=PML.distances.LpDistance(power=2), **kwargs(reducer))  # noqa: E731
    torch._dynamo.reset()
    compiled = torch.compile(make(), fullgraph=True, backend="aot_eager")
    assert_same_call(f"compiled {reducer}", lambda: compiled, make, [x, y], plain, grad_inputs=[0])
