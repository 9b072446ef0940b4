"""The CPU kernels' instruction-set variants against a build for this machine only (-march=native).

    python benchmarks/bench_cpu_variants.py              # builds the native module, then measures
    python benchmarks/bench_cpu_variants.py --native PATH/_C.so --rounds 30

The portable build (the default, COUN_FAST_CPU_ARCH=portable) holds a baseline, an AVX2 and an
AVX-512 variant of the CPU kernels and runs the best one the CPU supports. This script answers
"what does portability cost against COUN_FAST_CPU_ARCH=native": it loads, in one process, the
installed module once per variant (each a private copy, capped with COUN_FAST_CPU_KERNELS) and a
native build, and times fused forward+backward calls of each loss, interleaving the modules call by
call so that load on the machine hits all of them alike. Each cell reports the median over
``--rounds`` rounds of each module's time and its ratio to the native build's.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness  # noqa: E402

from coun_fast import _ext  # noqa: E402
from coun_fast import functional as F  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("baseline", "avx2", "avx512")


def build_native(directory: Path) -> Path:
    """The extension built with COUN_FAST_CPU_ARCH=native and no CUDA kernels, in ``directory``."""
    import pybind11

    subprocess.run(["cmake", "-S", str(REPO), "-B", str(directory), "-G", "Ninja", "-DCOUN_FAST_CUDA=OFF",
                    "-DCOUN_FAST_CPU_ARCH=native", f"-DPython_EXECUTABLE={sys.executable}",
                    f"-Dpybind11_DIR={pybind11.get_cmake_dir()}"], check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(directory)], check=True, capture_output=True)
    return next(directory.glob(f"_C{sysconfig.get_config_var('EXT_SUFFIX')}"))


def load_copy(path: Path, directory: Path, tag: str):
    """A private copy of an extension module file, loaded as its own module (own static state)."""
    copy = directory / tag / path.name
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, copy)
    name = f"coun_fast_variant_{tag}._C"  # a name of its own (the init function is still PyInit__C)
    loader = importlib.machinery.ExtensionFileLoader(name, str(copy))
    spec = importlib.util.spec_from_file_location(name, str(copy), loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def bind_variant(module, cap: str | None) -> str:
    """Make the module pick its variant now (the choice is made at its first call), under ``cap``."""
    saved = os.environ.pop("COUN_FAST_CPU_KERNELS", None)
    if cap is not None:
        os.environ["COUN_FAST_CPU_KERNELS"] = cap
    try:
        return module.cpu_kernel_variant()
    finally:
        os.environ.pop("COUN_FAST_CPU_KERNELS", None)
        if saved is not None:
            os.environ["COUN_FAST_CPU_KERNELS"] = saved


CALLS = {
    "nt_xent": lambda z1, z2, labels: F.nt_xent(z1, z2, 0.5, backend="fused"),
    "cross_view_info_nce": lambda z1, z2, labels: F.cross_view_info_nce(z1, z2, 0.1, backend="fused"),
    "sup_con": lambda z1, z2, labels: F.sup_con(torch.cat([z1, z2]), labels, 0.1, backend="fused"),
}


def time_once(module, call, z1, z2, labels) -> float:
    _ext.C = module
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    start = time.perf_counter()
    call(a, b, labels).backward()
    return (time.perf_counter() - start) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--native", type=Path, help="a native build of coun_fast._C (default: build one)")
    parser.add_argument("--losses", nargs="+", default=list(CALLS), choices=list(CALLS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 512, 2048], help="N (pairs)")
    parser.add_argument("--dims", nargs="+", type=int, default=[128, 512])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timed calls per module and cell")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if _ext.C is None:
        parser.error(f"the extension did not load: {_ext.LOAD_ERROR}")
    torch.set_num_threads(args.threads)
    installed = Path(_ext.C.__file__)
    scratch = Path(tempfile.mkdtemp(prefix="coun_fast_variants_"))
    original = _ext.C
    try:
        native_path = args.native or build_native(scratch / "native_build")
        modules = {"native": load_copy(native_path, scratch, "native")}
        if bind_variant(modules["native"], None) != "native":
            parser.error(f"{native_path} is not a native build (its variant: {modules['native'].cpu_kernel_variant()})")
        for cap in VARIANTS:
            module = load_copy(installed, scratch, cap)
            if bind_variant(module, cap) == cap:  # skip variants not built or not supported here
                modules[cap] = module
        print(f"modules: {', '.join(modules)}; {args.threads} threads; {_harness.cpu_model()}")
        rows = []
        generator = torch.Generator().manual_seed(0)
        for loss in args.losses:
            for n in args.sizes:
                for dim in args.dims:
                    z1, z2 = torch.randn(n, dim, generator=generator), torch.randn(n, dim, generator=generator)
                    labels = torch.randint(0, 10, (2 * n,), generator=generator)
                    samples = {name: [] for name in modules}
                    for name, module in modules.items():  # warm-up
                        time_once(module, CALLS[loss], z1, z2, labels)
                    for _ in range(args.rounds):
                        for name, module in modules.items():
                            samples[name].append(time_once(module, CALLS[loss], z1, z2, labels))
                    medians = {name: statistics.median(values) for name, values in samples.items()}
                    row = {"loss": loss, "N": n, "D": dim, "rounds": args.rounds,
                           **{f"{name}_ms": value for name, value in medians.items()},
                           **{f"{name}_vs_native": medians[name] / medians["native"] for name in medians
                              if name != "native"}}
                    rows.append(row)
                    print(f"{loss:<20} N={n:<5} D={dim:<4} " + "  ".join(
                        f"{name} {value:8.2f} ms" for name, value in medians.items()), flush=True)
    finally:
        _ext.C = original
        shutil.rmtree(scratch, ignore_errors=True)
    ratios = {name: statistics.geometric_mean([row[f"{name}_vs_native"] for row in rows])
              for name in modules if name != "native"}
    columns = [("loss", lambda r: r["loss"]), ("N", lambda r: str(r["N"])), ("D", lambda r: str(r["D"]))]
    columns += [(f"{name} ms", lambda r, n=name: f"{r[f'{n}_ms']:.2f}") for name in modules]
    columns += [(f"{name}/native", lambda r, n=name: f"{r[f'{n}_vs_native']:.3f}") for name in ratios]
    print()
    print(_harness.format_table(rows, columns))
    print("\ngeometric mean of time / native time: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    header = _harness.environment_header("bench_cpu_variants", torch.device("cpu"), REPO, args.threads,
                                         {"geomean_vs_native": ratios, "native_module": str(native_path)})
    stem = f"cpu_variants_{_harness.utc_timestamp()}"
    for path in _harness.write_results(rows, header, args.out, stem):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
