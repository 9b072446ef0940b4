"""benchmarks/bench_losses.py's peers and load records (issue 27, item 5): lightly's and PML's
NTXentLoss as providers where installed, the fused speedup over a peer, and each cell's load
average and other-process load, a disturbed cell marked (the benchmark itself is a script)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

from peers import lightly_ntxent, pml

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    if not (BENCHMARKS / "bench_losses.py").is_file():
        pytest.skip("benchmarks/ is not beside the tests")
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("bench_losses")
    finally:
        sys.path.remove(str(BENCHMARKS))


def config(bench, providers):
    return bench.make_config(bench.parse_args(["--device", "cpu", "--quick", "--providers", *providers]))


def test_peers_are_providers_only_for_their_losses(bench):
    cfg = config(bench, ["reference", "fused", "pml", "lightly"])
    unavailable = {}
    assert bench.providers_for("nt_xent", cfg, unavailable) == ["reference", "fused", "pml", "lightly"]
    assert bench.providers_for("sup_con", cfg, unavailable) == ["reference", "fused", "pml"]
    assert bench.providers_for("cross_view_info_nce", cfg, unavailable) == ["reference", "fused"]
    assert bench.providers_for("nt_xent", cfg, {"lightly": "not installed"}) == ["reference", "fused", "pml"]


def test_unavailable_peers_say_why(bench, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(bench.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("lightly", "pytorch_metric_learning") else real(name, *a))
    reasons = bench.unavailable_providers(config(bench, ["fused", "pml", "lightly"]))
    assert reasons == {"pml": "pytorch-metric-learning is not installed (pip install pytorch-metric-learning)",
                       "lightly": "lightly is not installed (pip install lightly)"}


@pytest.mark.skipif(lightly_ntxent() is None, reason="lightly is not installed")
def test_lightly_provider_is_lightly_ntxent(bench):
    z1, z2 = bench.make_inputs("nt_xent", 16, 8, torch.float32, torch.device("cpu"))
    expected = lightly_ntxent()(temperature=bench.TEMPERATURE["nt_xent"])(z1, z2)
    assert torch.equal(bench.make_call("lightly", "nt_xent")(z1, z2), expected)
    torch.testing.assert_close(bench.make_call("fused", "nt_xent")(z1, z2), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(pml() is None, reason="pytorch-metric-learning is not installed")
def test_pml_provider_is_pml_ntxent(bench):
    z1, z2 = bench.make_inputs("nt_xent", 16, 8, torch.float32, torch.device("cpu"))
    torch.testing.assert_close(bench.make_call("pml", "nt_xent")(z1, z2), bench.make_call("fused", "nt_xent")(z1, z2),
                               rtol=1e-5, atol=1e-6)


def test_cells_record_load_and_mark_disturbed_ones(bench, monkeypatch):
    """The load average before and after, other processes' cores, and the mark above the limit;
    a peer's row gets the fused speedup of the same subject and mode."""
    cfg = config(bench, ["reference", "fused", "lightly"])
    timings = {"reference": 4.0, "fused": 1.0, "lightly": 10.0}
    others = iter([0.0, 0.0, 0.9])
    loads = iter([0.5, 0.6, 0.6, 0.7, 0.7, 1.9])

    class FakeLoad:
        def cores(self):
            return next(others)

    monkeypatch.setattr(bench, "_measure_cell", lambda c, loss, provider, m, d: {
        mode: {"status": "ok", "reps": 3, "p50_ms": timings[provider], "p20_ms": 1.0, "p80_ms": 1.0,
               "peak_bytes": 1024} for mode in bench.MODES})
    monkeypatch.setattr(bench.harness, "OtherLoad", FakeLoad)
    monkeypatch.setattr(bench, "_load_average", lambda: next(loads))
    cfg = bench.Config(**{**cfg.__dict__, "losses": ["nt_xent"], "sizes": [256], "dims": [64]})
    rows = bench.run_grid(cfg, {})
    full = {r["provider"]: r for r in rows if r["mode"] == "full"}
    assert [full[p]["under_load"] for p in ("reference", "fused", "lightly")] == [False, False, True]
    lightly = full["lightly"]
    assert (lightly["load_before"], lightly["load_after"], lightly["other_load"]) == (0.7, 1.9, 0.9)
    assert full["lightly"]["fused_speedup"] == 10.0 and full["fused"]["fused_speedup"] is None
    assert "UNDER LOAD (0.90 other cores)" in bench.progress_line(full["lightly"])
    assert "fused 10.00x faster" in bench.progress_line(full["lightly"])
    assert "LOAD" in bench.harness.format_table(rows, bench.TABLE_COLUMNS)
