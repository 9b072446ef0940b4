"""Results files: relative paths inside the results folder, a format version, atomic writes
(the runner's are covered in test_experiment.py; here the helpers and the benchmarks' harness)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from coun_fast.files import relative_path, relative_paths

ROOT = Path(__file__).resolve().parent.parent


def test_relative_path_inside_and_outside(tmp_path):
    assert relative_path(tmp_path / "a" / "b", tmp_path) == "a/b"
    assert relative_path(tmp_path, tmp_path) == "."
    assert relative_path("/elsewhere/data.npz", tmp_path) == "/elsewhere/data.npz"
    value = {"out": str(tmp_path), "rows": [{"folder": str(tmp_path / "x")}, 3, None], "data": "/elsewhere",
             "command": "python bench.py --out results", "name": "relative/already"}
    assert relative_paths(value, tmp_path) == {"out": ".", "rows": [{"folder": "x"}, 3, None], "data": "/elsewhere",
                                               "command": "python bench.py --out results", "name": "relative/already"}


def _harness():
    path = ROOT / "benchmarks" / "_harness.py"
    if not path.is_file():
        pytest.skip("benchmarks/ is not beside the tests")
    spec = importlib.util.spec_from_file_location("bench_harness_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_benchmark_results_have_a_format_version_and_relative_paths(tmp_path):
    harness = _harness()
    header = {"config": {"out": str(tmp_path)}, "device": "cpu"}
    rows = [{"provider": "fused", "ms": 1.5, "trace": str(tmp_path / "trace.json")}]
    json_path, csv_path = harness.write_results(rows, header, tmp_path, "losses_cpu_x")
    stored = json.loads(json_path.read_text())
    assert stored == {"format_version": 1, "header": {"config": {"out": "."}, "device": "cpu"},
                      "rows": [{"provider": "fused", "ms": 1.5, "trace": "trace.json"}]}
    assert csv_path.read_text().splitlines() == ["provider,ms,trace", "fused,1.5,trace.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["losses_cpu_x.csv", "losses_cpu_x.json"]  # no temporaries
