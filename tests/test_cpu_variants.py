"""The instruction-set variants of the CPU kernels (csrc/cpu/cpu_dispatch.cpp).

The portable build compiles the kernels once per variant (baseline, AVX2, AVX-512) and picks one
at run time. Two things make that safe, and both are checked here: every variant computes the same
loss (each one against the float64 oracle, forced with COUN_FAST_CPU_KERNELS), and the AVX
variants' object code defines nothing outside their own namespace that the linker could merge with
another variant's copy (an AVX copy of a shared inline function would crash a baseline CPU).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import coun_fast

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "csrc" / "cpu" / "contrastive_cpu.cpp"


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    match = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
    return set(match.group(1).split()) if match else set()


def built_variants() -> dict[str, list[str]]:
    """The variants CMakeLists.txt builds for the portable target, with their compiler flags."""
    text = (ROOT / "CMakeLists.txt").read_text()
    return {name: [f for f in flags.split(";") if f]
            for name, flags in re.findall(r'coun_fast_cpu_variant\((\w+) "([^"]*)"\)', text) if "$" not in flags}


REQUIRED_FLAGS = {"baseline": set(), "avx2": {"avx2", "fma"},
                  "avx512": {"avx512f", "avx512vl", "avx512bw", "avx512dq", "avx2", "fma"}}

def run_variant(variant: str) -> dict:
    """The CPU kernels' variant and its worst relative error against float64, in a fresh process."""
    script = r"""
import json, torch, coun_fast
from coun_fast import functional as F
g = torch.Generator().manual_seed(0)
calls = {
    "nt_xent": lambda a, b, tau, backend: F.nt_xent(a, b, tau, backend=backend),
    "cross_view": lambda a, b, tau, backend: F.cross_view_info_nce(a, b, tau, backend=backend),
    "sup_con": lambda a, b, tau, backend: F.sup_con(torch.cat([a, b]), torch.arange(2 * a.shape[0]) % 5, tau,
                                                    backend=backend),
}
worst = 0.0
for n, d, tau in [(1, 3, 0.5), (33, 31, 0.1), (130, 257, 0.07)]:
    z1, z2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    for name, call in calls.items():
        a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        a64, b64 = z1.double().requires_grad_(), z2.double().requires_grad_()
        loss, loss64 = call(a, b, tau, "fused"), call(a64, b64, tau, "reference")
        grads = torch.autograd.grad(loss, (a, b))
        grads64 = torch.autograd.grad(loss64, (a64, b64))
        for x, y in [(loss, loss64), *zip(grads, grads64)]:
            worst = max(worst, float(((x.double() - y).abs() / (y.abs().max() + 1e-12)).max()))
print(json.dumps({"variant": coun_fast.info()["cpu_isa"], "worst": worst}))
"""
    # From a file in an empty folder: `python -c` would put the working directory first on sys.path,
    # which, in an unpacked sdist, is the source tree without the built extension.
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "variant_check.py"
        path.write_text(script)
        result = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=300,
                                env={**os.environ, "COUN_FAST_CPU_KERNELS": variant})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("variant", ["baseline", "avx2", "avx512"])
def test_each_variant_matches_float64(variant):
    isa = coun_fast.info()["cpu_isa"]
    if isa == "native":
        pytest.skip("a native build (COUN_FAST_CPU_ARCH=native) has one variant")
    if variant != "baseline" and variant not in built_variants():
        pytest.skip(f"{variant} is not built on this platform")
    if not REQUIRED_FLAGS[variant] <= cpu_flags():
        pytest.skip(f"this CPU does not run {variant}")
    report = run_variant(variant)
    assert report["variant"] == variant
    assert report["worst"] < 2e-5, report


def test_the_best_supported_variant_is_picked():
    isa = coun_fast.info()["cpu_isa"]
    if isa in ("native", None):
        pytest.skip("not a portable build")
    flags, variants = cpu_flags(), built_variants()
    best = next((v for v in ("avx512", "avx2") if v in variants and REQUIRED_FLAGS[v] <= flags), "baseline")
    assert isa == best


@pytest.mark.skipif(shutil.which("g++") is None or shutil.which("nm") is None, reason="needs g++ and nm")
@pytest.mark.parametrize("variant", [v for v in built_variants() if v != "baseline"])
def test_avx_variants_define_nothing_the_linker_could_share(variant, tmp_path):
    """Compiled as CMakeLists.txt compiles it, an AVX variant's object file defines functions and data
    only in coun_fast::cpu::<variant> (local symbols aside): no weak copy of a standard-library or
    header function, which the linker could keep in place of the baseline one."""
    flags = built_variants()[variant]
    target = tmp_path / f"{variant}.o"
    subprocess.run(["g++", "-std=c++17", "-O3", "-DNDEBUG", "-fPIC", "-fvisibility=hidden",
                    "-fvisibility-inlines-hidden", f"-DCOUN_FAST_CPU_VARIANT={variant}", *flags,
                    f"-I{ROOT / 'csrc' / 'include'}", f"-I{ROOT / 'csrc'}", "-c", str(SOURCE), "-o", str(target)],
                   check=True, timeout=600)
    symbols = subprocess.run(["nm", "-C", "--defined-only", str(target)], capture_output=True, text=True,
                             check=True).stdout.splitlines()
    shared = [line for line in symbols
              if re.match(r"^\S+ [A-Z] ", line) and f"coun_fast::cpu::{variant}::" not in line
              and "DW.ref.__gxx_personality_v0" not in line]
    assert not shared, "symbols the linker could merge across variants:\n" + "\n".join(shared)
