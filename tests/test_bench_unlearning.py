"""benchmarks/bench_unlearning.py's estimate of the paper protocol's training time from measured
epochs (the benchmark itself runs in CI as `--quick --device cpu`)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    if not (BENCHMARKS / "bench_unlearning.py").is_file():
        pytest.skip("benchmarks/ is not beside the tests")
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("bench_unlearning")
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_protocol_estimate_from_the_epochs_of_the_protocols_setting(bench):
    rows = [{"method": "coun", "path": "coun_fast", "epoch_s": 2.0}, {"method": "ft", "path": "coun_fast", "epoch_s": 1.0},
            {"method": "coun", "path": "coun_fast+eager", "epoch_s": 3.0},  # no FT epoch: no estimate
            {"method": "coun", "path": "paper", "epoch_s": 4.0}, {"method": "ft", "path": "paper", "epoch_s": 2.0}]
    setup = SimpleNamespace(splits=SimpleNamespace(train=range(50000)), split=SimpleNamespace(retain=range(45000)))
    protocol = SimpleNamespace(dataset="cifar10", model="resnet18", batch_size=256, ratio=0.1)
    lines = bench.protocol_estimate(rows, protocol, setup)
    # 182 Original epochs of 50,000 images at the FT rate, 182 Retrain and 50 FT epochs, 50 CoUn epochs
    total = 182 * 1.0 * 50000 / 45000 + 182 * 1.0 + 50 * 1.0 + 50 * 2.0
    assert lines == [f"coun_fast: paper protocol, one seed, estimated from these epochs (training only): 182 x 1.111 + "
                     f"182 x 1.000 + 50 x 1.000 + 50 x 2.000 s = {total:.0f} s ({total / 60:.1f} min; the target, "
                     "<= 9 min, is for the whole run)"]
    other = SimpleNamespace(dataset="digits", model="small_cnn", batch_size=64, ratio=0.1)
    assert bench.protocol_estimate(rows, other, setup) == []  # not the protocol's setting
