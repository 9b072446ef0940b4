"""Bad input raises TypeError / ValueError naming the argument; installation info."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

import coun_fast
from coun_fast import _ext, losses
from coun_fast import functional as F
from coun_fast.ops import backend as backends
from coun_fast.ops.contrastive import PATH_EXACT, REDUCTIONS, RULE_INDEX, contrastive_forward

INFO_KEYS = ("version", "cpu_kernels", "cpu_isa", "cuda_compiled", "cuda_archs", "cuda_available", "dali_available",
             "torch_version")


def x(*shape: int, dtype: torch.dtype = torch.float32, device: str = "cpu") -> torch.Tensor:
    return torch.randn(*shape, device=device).to(dtype)


def labels(*values: int) -> torch.Tensor:
    return torch.tensor(values)


SHAPE_ERRORS = {
    "nt_xent_rows": (lambda: F.nt_xent(x(4, 5), x(3, 5)), "z1 and z2 must have the same shape"),
    "nt_xent_dim": (lambda: F.nt_xent(x(4, 5), x(4, 6)), "z1 and z2 must have the same shape"),
    "cross_view_rows": (lambda: F.cross_view_info_nce(x(4, 5), x(5, 5)), "z1 and z2 must have the same shape"),
    "info_nce_dim": (lambda: F.info_nce(x(4, 5), x(4, 6), 0.1), "anchors and candidates must have the same feature"),
    "similarity_dim": (lambda: F.similarity(x(4, 5), x(4, 6)), "a and b must have the same feature dimension"),
    "z1_1d": (lambda: F.nt_xent(x(5), x(5)), "z1 must be 2-D"),
    "anchors_3d": (lambda: F.info_nce(x(2, 3, 4), None, 0.1), "anchors must be 2-D"),
    "candidates_1d": (lambda: F.info_nce(x(3, 4), x(4), 0.1), "candidates must be 2-D"),
    "sup_con_4d": (lambda: F.sup_con(x(2, 2, 2, 2), labels(0, 1)), "features must be 2-D"),
    "sup_con_views_labels": (lambda: F.sup_con(x(3, 2, 4), labels(0, 1)), r"labels must have shape \(6,\)"),
}


@pytest.mark.parametrize("case", list(SHAPE_ERRORS))
def test_mismatched_shapes(case):
    call, message = SHAPE_ERRORS[case]
    with pytest.raises(ValueError, match=message):
        call()


DEVICE_ERRORS = {
    "nt_xent": (lambda: F.nt_xent(x(4, 5), x(4, 5, device="meta")), "z2 is on meta but z1 is on cpu"),
    "cross_view": (lambda: F.cross_view_info_nce(x(4, 5), x(4, 5, device="meta")), "z2 is on meta"),
    "info_nce": (lambda: F.info_nce(x(4, 5), x(4, 5, device="meta"), 0.1), "candidates is on meta"),
    "similarity": (lambda: F.similarity(x(4, 5, device="meta"), x(4, 5)), "b is on cpu but a is on meta"),
    "positive_index": (lambda: F.info_nce(x(3, 5), x(3, 5), 0.1, positive_index=torch.arange(3, device="meta")),
                       "positive_index is on meta"),
    "anchor_labels": (lambda: F.info_nce(x(3, 5), None, 0.1, anchor_labels=labels(0, 0, 1).to("meta")),
                      "anchor_labels is on meta"),
    "sup_con_labels": (lambda: F.sup_con(x(3, 5), labels(0, 0, 1).to("meta")),
                       "labels is on meta"),
}


@pytest.mark.parametrize("case", list(DEVICE_ERRORS))
def test_mismatched_devices(case):
    call, message = DEVICE_ERRORS[case]
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.uint8], ids=str)
def test_non_float_features(dtype):
    bad = torch.ones(4, 5, dtype=dtype)
    with pytest.raises(TypeError, match="z1 must have a floating-point dtype"):
        F.nt_xent(bad, x(4, 5))
    with pytest.raises(TypeError, match="z2 must have a floating-point dtype"):
        F.cross_view_info_nce(x(4, 5), bad)
    with pytest.raises(TypeError, match="features must have a floating-point dtype"):
        F.sup_con(bad, labels(0, 0, 1, 1))
    with pytest.raises(TypeError, match="candidates must have a floating-point dtype"):
        F.info_nce(x(4, 5), bad, 0.1)


@pytest.mark.parametrize("value", [[[1.0, 2.0]], None, 3.0], ids=["list", "none", "float"])
def test_non_tensor_features(value):
    with pytest.raises(TypeError, match="anchors must be a torch.Tensor"):
        F.info_nce(value, x(1, 2), 0.1)


@pytest.mark.parametrize("value", [0, 0.0, -0.1, -math.inf, math.inf, math.nan], ids=str)
def test_temperature_out_of_range(value):
    with pytest.raises(ValueError, match="temperature must be finite and > 0"):
        F.nt_xent(x(3, 4), x(3, 4), value)
    with pytest.raises(ValueError, match="temperature must be finite and > 0"):
        F.similarity(x(3, 4), None, value)
    with pytest.raises(ValueError, match="temperature must be finite and > 0"):
        losses.SupConLoss(value)


@pytest.mark.parametrize("value", [True, False, "0.1", None, torch.tensor(0.1), 1j], ids=repr)
def test_temperature_of_wrong_type(value):
    with pytest.raises(TypeError, match="temperature must be a real number > 0"):
        F.cross_view_info_nce(x(3, 4), x(3, 4), value)
    with pytest.raises(TypeError, match="temperature must be a real number > 0"):
        losses.NTXentLoss(value)


@pytest.mark.parametrize("shape", [(0, 5), (4, 0), (0, 0)], ids=str)
def test_empty_batch(shape):
    with pytest.raises(ValueError, match="z1 must have at least one row and one feature"):
        F.nt_xent(torch.zeros(shape), torch.zeros(shape))
    with pytest.raises(ValueError, match="features must have at least one row and one feature"):
        F.sup_con(torch.zeros(shape), torch.zeros(shape[0], dtype=torch.int64))
    with pytest.raises(ValueError, match="a must have at least one row and one feature"):
        F.similarity(torch.zeros(shape))


LABEL_ERRORS = {
    "short": (lambda: F.sup_con(x(4, 3), labels(0, 1, 1)), ValueError, r"labels must have shape \(4,\)"),
    "long": (lambda: F.sup_con(x(4, 3), labels(0, 1, 1, 0, 2)), ValueError, r"labels must have shape \(4,\)"),
    "2d": (lambda: F.sup_con(x(4, 3), torch.zeros(4, 1, dtype=torch.int64)), ValueError, "labels must have shape"),
    "float": (lambda: F.sup_con(x(4, 3), torch.zeros(4)), TypeError, "labels must have an integer dtype"),
    "bool": (lambda: F.sup_con(x(4, 3), torch.zeros(4, dtype=torch.bool)), TypeError, "labels must have an integer"),
    "list": (lambda: F.sup_con(x(4, 3), [0, 0, 1, 1]), TypeError, "labels must be a 1-D integer torch.Tensor"),
    "anchor_labels": (lambda: F.info_nce(x(4, 3), x(5, 3), 0.1, anchor_labels=labels(0, 1, 2),
                                         candidate_labels=labels(0, 1, 2, 3, 4)),
                      ValueError, r"anchor_labels must have shape \(4,\)"),
    "candidate_labels": (lambda: F.info_nce(x(4, 3), x(5, 3), 0.1, anchor_labels=labels(0, 1, 2, 3),
                                            candidate_labels=labels(0, 1)),
                         ValueError, r"candidate_labels must have shape \(5,\), one entry per row of candidates"),
    "candidate_labels_float": (lambda: F.info_nce(x(2, 3), x(2, 3), 0.1, anchor_labels=labels(0, 1),
                                                  candidate_labels=torch.zeros(2)),
                               TypeError, "candidate_labels must have an integer dtype"),
    "candidate_labels_missing": (lambda: F.info_nce(x(2, 3), x(2, 3), 0.1, anchor_labels=labels(0, 1)),
                                 ValueError, "candidate_labels is required"),
    "candidate_labels_alone": (lambda: F.info_nce(x(2, 3), x(2, 3), 0.1, candidate_labels=labels(0, 1)),
                               ValueError, "candidate_labels was given without anchor_labels"),
    "index_and_labels": (lambda: F.info_nce(x(2, 3), None, 0.1, positive_index=labels(1, 0),
                                            anchor_labels=labels(0, 0)),
                         ValueError, "either positive_index or labels"),
}


@pytest.mark.parametrize("case", list(LABEL_ERRORS))
def test_bad_labels(case):
    call, error, message = LABEL_ERRORS[case]
    with pytest.raises(error, match=message):
        call()


INDEX_ERRORS = {
    "too_large": (lambda: F.info_nce(x(3, 4), x(5, 4), 0.1, positive_index=labels(0, 5, 1)),
                  r"positive_index entries must lie in \[0, 5\); got values from 0 to 5"),
    "negative": (lambda: F.info_nce(x(3, 4), x(5, 4), 0.1, positive_index=labels(-1, 2, 1)),
                 r"positive_index entries must lie in \[0, 5\)"),
    "wrong_length": (lambda: F.info_nce(x(3, 4), x(5, 4), 0.1, positive_index=labels(0, 1)),
                     r"positive_index must have shape \(3,\)"),
    "self_positive": (lambda: F.info_nce(x(3, 4), x(3, 4), 0.1, positive_index=labels(2, 1, 0), exclude_self=True),
                      r"positive_index\[1\] = 1 points at the anchor itself"),
    "default_pairs_m_ne_n": (lambda: F.info_nce(x(3, 4), x(5, 4), 0.1), "give positive_index or anchor_labels"),
    "default_pairs_exclude_self": (lambda: F.info_nce(x(3, 4), x(3, 4), 0.1, exclude_self=True),
                                   "give positive_index or anchor_labels"),
    "exclude_self_m_ne_n": (lambda: F.info_nce(x(3, 4), x(4, 4), 0.1, positive_index=labels(0, 1, 2),
                                               exclude_self=True),
                            "exclude_self needs as many candidates as anchors; got 3 anchors and 4 candidates"),
    "exclude_self_labels_m_ne_n": (lambda: F.info_nce(x(3, 4), x(4, 4), 0.1, anchor_labels=labels(0, 1, 2),
                                                      candidate_labels=labels(0, 1, 2, 3), exclude_self=True),
                                   "exclude_self needs as many candidates as anchors"),
    "symmetric_not_permutation": (lambda: F.info_nce(x(3, 4), x(3, 4), 0.1, positive_index=labels(0, 0, 2),
                                                     symmetric=True),
                                  "positive_index must be a permutation of 0..2 when symmetric=True"),
    "symmetric_fewer_anchors": (lambda: F.info_nce(x(3, 4), x(4, 4), 0.1, positive_index=labels(2, 0, 1),
                                                   symmetric=True, backend="reference"), "positive_index"),
    "symmetric_fewer_anchors_fused": (lambda: F.info_nce(x(3, 4), x(4, 4), 0.1, positive_index=labels(2, 0, 1),
                                                         symmetric=True, backend="fused"), "positive_index"),
    "symmetric_more_anchors": (lambda: F.info_nce(x(4, 4), x(3, 4), 0.1, positive_index=labels(0, 1, 2, 0),
                                                  symmetric=True), "positive_index must be a permutation"),
    "symmetric_self": (lambda: F.info_nce(x(3, 4), None, 0.1, symmetric=True), "symmetric=True needs separate"),
    "paired_too_many": (lambda: F.info_nce(x(3, 4), x(5, 4), 0.1, paired_candidates=4),
                        r"paired_candidates must lie in \[0, min\(M, N\)\] = \[0, 3\]; got 4"),
    "paired_negative": (lambda: F.info_nce(x(3, 4), x(5, 4), 0.1, paired_candidates=-1), "paired_candidates"),
    "paired_symmetric": (lambda: F.info_nce(x(3, 4), x(3, 4), 0.1, paired_candidates=3, symmetric=True),
                         "paired_candidates needs separate candidates, exclude_self=False and symmetric=False"),
    "paired_self": (lambda: F.info_nce(x(3, 4), None, 0.1, paired_candidates=2, positive_index=labels(0, 1, 2)),
                    "paired_candidates needs separate candidates"),
    "paired_default_needs_all": (lambda: F.info_nce(x(3, 4), x(5, 4), 0.1, paired_candidates=2),
                                 "needs paired_candidates == M = 3; got 2"),
    "index_float": (lambda: F.info_nce(x(3, 4), x(3, 4), 0.1, positive_index=torch.zeros(3)),
                    "positive_index must have an integer dtype"),
    "paired_float": (lambda: F.info_nce(x(3, 4), x(5, 4), 0.1, paired_candidates=3.0),
                     "paired_candidates must be an int; got float"),
}


@pytest.mark.parametrize("case", list(INDEX_ERRORS))
def test_bad_positive_index_and_flags(case):
    call, message = INDEX_ERRORS[case]
    error = TypeError if case in ("index_float", "paired_float") else ValueError
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("backend", ["Fused", "cuda", "", None, "triton"], ids=repr)
def test_unknown_backend(backend):
    with pytest.raises(ValueError, match="backend must be one of 'auto', 'fused', 'reference'"):
        F.nt_xent(x(3, 4), x(3, 4), backend=backend)
    with pytest.raises(ValueError, match="backend must be one of"):
        F.similarity(x(3, 4), backend=backend)
    with pytest.raises(ValueError, match="backend must be one of"):
        losses.SupConLoss(backend=backend)(x(3, 4), labels(0, 0, 1))


@pytest.mark.parametrize("reduction", ["avg", "MEAN", "", None], ids=repr)
def test_unknown_reduction(reduction):
    with pytest.raises(ValueError, match="reduction must be one of 'mean', 'sum', 'none'"):
        F.info_nce(x(3, 4), x(3, 4), 0.1, reduction=reduction)
    with pytest.raises(ValueError, match="reduction must be one of"):
        losses.InfoNCE(reduction=reduction)


@pytest.mark.parametrize("call", [
    lambda z: F.nt_xent(z, z, backend="fused"),
    lambda z: F.sup_con(z, torch.zeros(3, dtype=torch.int64), backend="fused"),
    lambda z: F.similarity(z, backend="fused"),
], ids=["nt_xent", "sup_con", "similarity"])
def test_fused_rejects_dimension_above_maximum(call):
    with pytest.raises(ValueError, match=f"feature dimension {backends.MAX_DIM + 1} is above the fused kernels' "
                                         f"maximum of {backends.MAX_DIM}"):
        call(x(3, backends.MAX_DIM + 1))


def test_auto_falls_back_to_reference_above_maximum_dimension():
    z1, z2 = x(3, backends.MAX_DIM + 1), x(3, backends.MAX_DIM + 1)
    assert torch.equal(F.nt_xent(z1, z2, backend="auto"), F.nt_xent(z1, z2, backend="reference"))


def test_fused_rejects_float64():
    with pytest.raises(ValueError, match="dtype float64 is not supported"):
        F.cross_view_info_nce(x(3, 4, dtype=torch.float64), x(3, 4, dtype=torch.float64), backend="fused")


def test_fused_error_lists_every_reason():
    z = x(3, backends.MAX_DIM + 7, dtype=torch.float64)
    with pytest.raises(ValueError, match="dtype float64 is not supported.*maximum of"):
        F.nt_xent(z, z, backend="fused")


@pytest.mark.parametrize("call", [
    lambda z: F.nt_xent(z, z, backend="fused"),
    lambda z: F.sup_con(z, labels(0, 0, 1).to("meta"), backend="fused"),
    lambda z: F.info_nce(z, z, 0.1, anchor_labels=labels(0, 0, 1).to("meta"),
                         candidate_labels=labels(0, 1, 1).to("meta"), backend="fused"),
    lambda z: F.similarity(z, backend="fused"),
], ids=["nt_xent", "sup_con", "info_nce", "similarity"])
def test_fused_rejects_unsupported_device(call):
    with pytest.raises(ValueError, match="device 'meta' is not supported"):
        call(x(3, 4, device="meta"))


def test_extension_enforces_the_same_maximum_dimension():
    assert _ext.C is not None, _ext.LOAD_ERROR
    assert _ext.C.MAX_DIM == backends.MAX_DIM
    assert coun_fast.info()["max_dim"] == backends.MAX_DIM
    with pytest.raises(ValueError, match=rf"feature dimension must be in \[1, {backends.MAX_DIM}\]"):
        contrastive_forward(x(2, backends.MAX_DIM + 1), None, 0.1, RULE_INDEX, torch.arange(2), None, None, False,
                            0, False, REDUCTIONS["mean"], PATH_EXACT)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=str)
def test_non_finite_input_with_check_finite(bad):
    clean, dirty = x(4, 5), x(4, 5)
    dirty[2, 3] = bad
    with pytest.raises(ValueError, match=r"z2 contains NaN or Inf \(check_finite=True\)"):
        F.nt_xent(clean, dirty, check_finite=True)
    with pytest.raises(ValueError, match="z1 contains NaN or Inf"):
        F.cross_view_info_nce(dirty, clean, check_finite=True)
    with pytest.raises(ValueError, match="features contains NaN or Inf"):
        F.sup_con(dirty, labels(0, 0, 1, 1), check_finite=True)
    with pytest.raises(ValueError, match="candidates contains NaN or Inf"):
        F.info_nce(clean, dirty, 0.1, check_finite=True)
    assert not torch.isfinite(F.nt_xent(clean, dirty)), "without check_finite the loss is not finite"


def test_info_has_documented_keys_and_types():
    report = coun_fast.info()
    assert set(INFO_KEYS) <= set(report)
    assert report["version"] == coun_fast.__version__
    assert report["cpu_kernels"] is True
    assert report["cpu_isa"] in ("avx512", "avx2", "baseline", "native")
    assert isinstance(report["cuda_archs"], list) and all(isinstance(a, str) for a in report["cuda_archs"])
    for key in ("cuda_compiled", "cuda_available", "dali_available"):
        assert isinstance(report[key], bool), key
    assert report["torch_version"] == torch.__version__
    if not report["cuda_compiled"]:
        assert report["cuda_archs"] == [] and report["cuda_available"] is False


def test_info_module_runs_and_prints_keys():
    result = subprocess.run([sys.executable, "-m", "coun_fast.info"], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    printed = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    assert set(INFO_KEYS) <= printed, result.stdout
    assert torch.__version__ in result.stdout


@pytest.mark.parametrize("value, setting", [("", True), ("1", True), ("off", False), ("No", False),
                                            ("occupancy", "occupancy"), (" Occupancy ", "occupancy")])
def test_tensor_cores_switch_from_the_environment(monkeypatch, value, setting):
    monkeypatch.setenv(backends.TENSOR_CORES_ENV, value)
    assert backends.tensor_cores_setting() == setting
    assert backends.tensor_cores_enabled() == (setting is not False)
    with backends.tensor_cores(False):  # the context manager wins over the environment
        assert backends.tensor_cores_setting() is False
        with backends.tensor_cores("occupancy"):
            assert backends.tensor_cores_setting() == "occupancy"
        assert backends.tensor_cores_setting() is False
    assert backends.tensor_cores_setting() == setting


def test_tensor_cores_switch_refuses_unknown_settings():
    with pytest.raises(ValueError, match="enabled must be True, False or 'occupancy'; got 'fast'"):
        with backends.tensor_cores("fast"):
            pass
