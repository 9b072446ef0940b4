"""Issue 27, item 4: ``check_finite`` on the loss classes as on the functional forms, and the one
mixed-dtype rule (two feature inputs of different dtypes are computed in torch.promote_types of
them; each input's gradient comes back in its own dtype), for every functional form and class."""

from __future__ import annotations

import pytest
import torch

from coun_fast import functional as F
from coun_fast import losses
from helpers import assert_close_verbose

LABELS = torch.tensor([0, 1, 0, 2, 1, 2])
MIXES = [(torch.float32, torch.float64), (torch.float64, torch.float32), (torch.float32, torch.bfloat16),
         (torch.bfloat16, torch.float32), (torch.bfloat16, torch.float16), (torch.float16, torch.float32)]
# name: (the call on two (6, 5) feature tensors, whether the result is float32 whatever the dtypes)
CALLS = {
    "info_nce": (lambda a, b: F.info_nce(a, b, 0.2), True),
    "info_nce_labels": (lambda a, b: F.info_nce(a, b, 0.2, anchor_labels=LABELS, candidate_labels=LABELS), True),
    "info_nce_symmetric": (lambda a, b: F.info_nce(a, b, 0.2, symmetric=True), True),
    "cross_view_info_nce": (lambda a, b: F.cross_view_info_nce(a, b), True),
    "nt_xent": (lambda a, b: F.nt_xent(a, b), True),
    "NTXentLoss": (lambda a, b: losses.NTXentLoss()(a, b), False),
    "NTXentLoss_bank": (lambda a, b: _seeded(lambda: losses.NTXentLoss(memory_bank_size=(7, 5)))(a, b), False),
    "CrossViewInfoNCE": (lambda a, b: losses.CrossViewInfoNCE()(a, b), True),
    "InfoNCE": (lambda a, b: losses.InfoNCE()(a, b), True),
    "SupConLoss_ref_emb": (lambda a, b: losses.SupConLoss()(a, LABELS, ref_emb=b, ref_labels=LABELS.flip(0)),
                           False),
    "PMLNTXentLoss_ref_emb": (lambda a, b: losses.PMLNTXentLoss()(a, LABELS, ref_emb=b, ref_labels=LABELS.flip(0)),
                              False),
}


def _seeded(make):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return make()


def expected_dtype(a: torch.dtype, b: torch.dtype, float32_result: bool) -> torch.dtype:
    promoted = torch.promote_types(a, b)
    if float32_result:  # the functional forms and the package's own classes: float32, or float64
        return torch.float64 if promoted == torch.float64 else torch.float32
    return promoted  # the drop-ins: the (promoted) inputs' dtype, as the peers return


@pytest.mark.parametrize("name", list(CALLS))
@pytest.mark.parametrize("dtypes", MIXES, ids=lambda d: f"{str(d[0])[6:]}-{str(d[1])[6:]}")
def test_mixed_dtypes_are_promoted(name, dtypes):
    """The loss and gradients of a mixed call equal those of the same call on both inputs cast to
    the promoted dtype first; the result's dtype follows the rule; gradients in each input's dtype."""
    call, float32_result = CALLS[name]
    generator = torch.Generator().manual_seed(1)
    a0, b0 = torch.randn(6, 5, generator=generator), torch.randn(6, 5, generator=generator)
    a, b = a0.to(dtypes[0]).requires_grad_(), b0.to(dtypes[1]).requires_grad_()
    loss = call(a, b)
    assert loss.dtype == expected_dtype(*dtypes, float32_result), (name, loss.dtype)
    loss.backward()
    assert a.grad.dtype == dtypes[0] and b.grad.dtype == dtypes[1]
    promoted = torch.promote_types(*dtypes)
    pa, pb = a.detach().to(promoted).requires_grad_(), b.detach().to(promoted).requires_grad_()
    reference = call(pa, pb)
    reference.backward()
    assert_close_verbose(f"{name} loss", loss.float(), reference.float(), rtol=1e-6, atol=1e-6)
    assert_close_verbose(f"{name} grad a", a.grad.float(), pa.grad.to(dtypes[0]).float(), rtol=1e-6, atol=1e-6)
    assert_close_verbose(f"{name} grad b", b.grad.float(), pb.grad.to(dtypes[1]).float(), rtol=1e-6, atol=1e-6)


# name: (the class's call on a clean and a dirty (6, 5) tensor, the argument named in the error)
CLASS_CALLS = {
    "NTXentLoss": (lambda c, d, **k: losses.NTXentLoss(**k)(c, d), "out1"),
    "NTXentLoss_bank": (lambda c, d, **k: losses.NTXentLoss(memory_bank_size=(8, 5), **k)(d, c), "out0"),
    "CrossViewInfoNCE": (lambda c, d, **k: losses.CrossViewInfoNCE(**k)(c, d), "z2"),
    "InfoNCE": (lambda c, d, **k: losses.InfoNCE(**k)(c, d), "candidates"),
    "SupConLoss": (lambda c, d, **k: losses.SupConLoss(**k)(d, LABELS), "embeddings"),
    "SupConLoss_ref_emb": (lambda c, d, **k: losses.SupConLoss(**k)(c, LABELS, ref_emb=d, ref_labels=LABELS),
                           "ref_emb"),
    "PMLNTXentLoss": (lambda c, d, **k: losses.PMLNTXentLoss(**k)(d, LABELS), "embeddings"),
}


@pytest.mark.parametrize("name", list(CLASS_CALLS))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_check_finite_on_the_classes(name, bad):
    """As in the functional forms: a one-line ValueError naming the argument, before any compute;
    without check_finite the call runs, and its loss is not finite, except under PML's default
    AvgNonZeroReducer, which leaves NaN losses out (NaN is not > 0) as PML does."""
    call, argument = CLASS_CALLS[name]
    clean = torch.randn(6, 5)
    dirty = clean.clone()
    dirty[3, 2] = bad
    with pytest.raises(ValueError, match=rf"^{argument} contains NaN or Inf \(check_finite=True\)$"):
        call(clean, dirty, check_finite=True)
    assert torch.isfinite(call(clean, clean.flip(0), check_finite=True))
    unchecked = call(clean, dirty)
    assert torch.isfinite(unchecked) if name.startswith("SupConLoss") else not torch.isfinite(unchecked)


@pytest.mark.parametrize("make", [losses.NTXentLoss, losses.CrossViewInfoNCE, losses.InfoNCE, losses.SupConLoss,
                                  losses.PMLNTXentLoss])
def test_check_finite_must_be_a_bool(make):
    with pytest.raises(TypeError, match="check_finite must be True or False"):
        make(check_finite=1)
