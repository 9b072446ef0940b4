"""benchmarks/profile_losses.py on the CPU: it runs a case and prints both of its tables, and
refuses a bad option."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "profile_losses.py"


def run(*arguments: str) -> subprocess.CompletedProcess:
    if not SCRIPT.is_file():
        pytest.skip("benchmarks/ is not beside the tests")
    return subprocess.run([sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True, timeout=120)


def test_prints_the_kernel_and_host_tables():
    done = run("--cases", "tiny", "--calls", "3", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert "=== tiny ('nt_xent', 4, 8) bfloat16 fused: kernels over 3 calls" in done.stdout
    assert "_ContrastiveLoss" in done.stdout  # the profiler's table names the op
    assert "=== tiny: host time by function over 3 calls" in done.stdout and "tottime" in done.stdout


def test_once_runs_one_call_and_bad_options_are_refused():
    done = run("--cases", "tiny", "--once", "--device", "cpu")
    assert done.returncode == 0 and done.stdout.strip() == "case tiny: one call", done.stderr
    refused = run("--calls", "0", "--device", "cpu")
    assert refused.returncode == 2 and "--calls must be >= 1; got 0" in refused.stderr
