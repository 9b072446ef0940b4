"""Benchmark of coun_fast's contrastive losses: time and peak extra memory of the fused kernels
against the eager reference, the compiled reference and pytorch-metric-learning, and the latency of
small calls (GPU time and host wall time).

    python benchmarks/bench_losses.py                       # every loss, D in {128, 512}
    python benchmarks/bench_losses.py --quick               # a smoke run of a few minutes
    python benchmarks/bench_losses.py --gpu-quick           # the GPU targets, under 2 minutes
    python benchmarks/bench_losses.py --losses nt_xent --dims 128 --sizes 1024 2048 4096 8192

Each (loss, provider, M, D) is measured in fresh worker processes: one times the forward and the
forward+backward call (on CUDA it also takes the peak extra memory), on the CPU another measures
the peak extra memory. See benchmarks/README.md.

The peers coun_fast replaces are providers when installed: "pml" (pytorch-metric-learning's
NTXentLoss for nt_xent, SupConLoss for sup_con) and "lightly" (lightly's NTXentLoss for nt_xent).
Every cell records the 1-minute load average before and after it and the CPU time other processes
took while it ran (cores); a cell where they took more than UNDER_LOAD_CORES is marked under load.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch

import _harness as harness

LOSSES = ("nt_xent", "cross_view_info_nce", "sup_con")
# fused: the kernels as a user gets them (on CUDA the tensor-core path for bfloat16 and float16, see
# coun_fast.ops.backend); fused+exact / fused+tc / fused+tc-occupancy: the exact float32 path / the
# tensor-core path / its opt-in occupancy variant, forced (CUDA only).
PROVIDERS = ("reference", "fused", "fused+exact", "fused+tc", "fused+tc-occupancy", "reference+compile", "pml",
             "lightly")
CUDA_ONLY_PROVIDERS = ("fused+exact", "fused+tc", "fused+tc-occupancy")
TENSOR_CORE_SETTINGS = {"fused+exact": False, "fused+tc": True, "fused+tc-occupancy": "occupancy"}
MODES = ("forward", "full")
TEMPERATURE = {"nt_xent": 0.5, "cross_view_info_nce": 0.1, "sup_con": 0.1}
PEER_LOSSES = {"pml": ("nt_xent", "sup_con"), "lightly": ("nt_xent",)}  # the losses each peer has
PML_LOSSES = PEER_LOSSES["pml"]
UNDER_LOAD_CORES = 0.25  # other processes' average busy cores during a cell above which it is marked
SUPCON_CLASSES = 100
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_SIZES = {"cpu": [256, 512, 1024, 2048, 4096, 8192], "cuda": [1024, 2048, 4096, 8192, 16384, 32768, 65536]}
DEFAULT_REPS = {"cpu": 10, "cuda": 30}
FLOP_FORMULA = ("TFLOP/s = 4*M^2*D per forward+backward (2*M^2*D per forward) / median time; M = rows of "
                "the similarity matrix: 2N for nt_xent, N for cross_view_info_nce (its N x N matrix), "
                "the rows for sup_con")
EXECUTED_FLOP_FORMULA = (
    "executed FLOPs = the matrix products a provider runs per call: the reference (eager or compiled) "
    "2*M^2*D forward, 6*M^2*D forward+backward (one M x M product, two gradient products); the fused "
    "kernels the same for one input against itself (nt_xent, sup_con) and twice that for "
    "cross_view_info_nce, whose forward runs each direction and whose backward recomputes the tile "
    "for each input; share = executed TFLOP/s / the device's dense matrix-product rate measured in "
    "the same run (an 8192^3 product in the run's dtype, bfloat16 for float32 runs)")
LATENCY_CASES = {  # name: (loss, M, D) measured by --latency
    "coun": ("cross_view_info_nce", 256, 512),   # CoUn: 256 pairs of 512-d ResNet-18 features
    "tiny": ("nt_xent", 4, 8),                    # host overhead: kernels take nothing here
}
SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent


# ---------------------------------------------------------------------------------------------
# Problems and providers (worker side)


def pairs(loss: str, m: int) -> int:
    """N of the row: samples per view (nt_xent: M / 2; cross_view_info_nce: M; sup_con: M rows)."""
    return m // 2 if loss == "nt_xent" else m


def make_inputs(loss: str, m: int, d: int, dtype: torch.dtype, device: torch.device) -> tuple:
    """The arguments of one call: leaf features requiring grad (two (N, D) views, or (M, D) features
    and (M,) labels drawn from SUPCON_CLASSES classes for sup_con), seeded."""
    generator = torch.Generator().manual_seed(0)

    def features(rows: int) -> torch.Tensor:
        return torch.randn(rows, d, generator=generator).to(device=device, dtype=dtype).requires_grad_()

    if loss == "sup_con":
        labels = torch.randint(0, SUPCON_CLASSES, (m,), generator=generator).to(device)
        return features(m), labels
    n = pairs(loss, m)
    return features(n), features(n)


def _coun_call(loss: str, backend: str) -> Callable[..., torch.Tensor]:
    from coun_fast import functional

    return partial(getattr(functional, loss), temperature=TEMPERATURE[loss], backend=backend)


def _pml_nt_xent() -> Callable[..., torch.Tensor]:
    """PML's NTXentLoss on cat(z1, z2) with labels arange(N) twice: each row's positive is its other
    view and its negatives the 2N - 2 other rows, as in nt_xent (same temperature semantics)."""
    from pytorch_metric_learning.losses import NTXentLoss

    criterion = NTXentLoss(temperature=TEMPERATURE["nt_xent"])

    def call(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        labels = torch.arange(z1.shape[0], device=z1.device).repeat(2)
        return criterion(torch.cat([z1, z2]), labels)

    return call


def _pml_sup_con() -> Callable[..., torch.Tensor]:
    from pytorch_metric_learning.losses import SupConLoss

    return SupConLoss(temperature=TEMPERATURE["sup_con"])


def _lightly_class():
    """lightly's NTXentLoss class, or None; loaded as the tests load it (tests/peers.py: lightly's
    loss module alone, torchvision a placeholder where it does not import)."""
    if str(REPO / "tests") not in sys.path:
        sys.path.insert(0, str(REPO / "tests"))
    from peers import lightly_ntxent

    return lightly_ntxent()


def _lightly_nt_xent() -> Callable[..., torch.Tensor]:
    """lightly's NTXentLoss(temperature)(z1, z2): SimCLR's NT-Xent over the 2N rows, as nt_xent."""
    return _lightly_class()(temperature=TEMPERATURE["nt_xent"])


def _with_tensor_cores(call: Callable[..., torch.Tensor], enabled: bool | str) -> Callable[..., torch.Tensor]:
    from coun_fast.ops import backend as backends

    def wrapped(*args: torch.Tensor) -> torch.Tensor:
        with backends.tensor_cores(enabled):
            return call(*args)

    return wrapped


def make_call(provider: str, loss: str) -> Callable[..., torch.Tensor]:
    """The loss function of ``provider``, taking :func:`make_inputs`' arguments."""
    if provider == "fused":
        return _coun_call(loss, "fused")
    if provider in TENSOR_CORE_SETTINGS:
        return _with_tensor_cores(_coun_call(loss, "fused"), TENSOR_CORE_SETTINGS[provider])
    if provider == "reference":
        return _coun_call(loss, "reference")
    if provider == "reference+compile":
        return torch.compile(_coun_call(loss, "reference"))
    if provider == "pml":
        return _pml_nt_xent() if loss == "nt_xent" else _pml_sup_con()
    if provider == "lightly":
        return _lightly_nt_xent()
    raise ValueError(f"unknown provider {provider!r}")


def _clear_grads(inputs: tuple) -> None:
    """Set the gradient of every input that requires one to None (untimed, before each call)."""
    for tensor in inputs:
        if tensor.requires_grad:
            tensor.grad = None


def _backward(call: Callable[..., torch.Tensor], inputs: tuple) -> None:
    """One forward+backward call."""
    call(*inputs).backward()


def _guarded(measure: Callable[[], dict]) -> dict:
    """``measure()`` with status "ok", or the failure's status."""
    try:
        return {"status": "ok", **measure()}
    except Exception as exc:  # recorded in the results; the other mode and the run go on
        return {"status": harness.failure_status(exc)}


def _setup_status(exc: Exception, provider: str) -> str:
    """Status of a failure before measuring: for the compiled provider, anything but OOM or slowness
    is a compilation failure."""
    if provider == "reference+compile" and not harness.is_oom(exc) and not isinstance(exc, harness.TooSlow):
        return harness.failure_status(exc, "skipped: torch.compile failed")
    return harness.failure_status(exc, "skipped")


def measure(spec: dict) -> dict:
    """Worker: ``{mode: {"status", ...}}`` for the forward and the full (forward+backward) call of
    one (loss, provider, M, D), with timings (task "time") or the peak extra bytes (task "memory").

    The first call(s) (two for the compiled provider, the first compiling) are untimed warm-up; a
    warm-up call slower than ``max_call_s`` skips the measurement."""
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    if spec["device"] == "cpu":
        harness.limit_data_memory(spec["mem_limit"])
    device = torch.device(spec["device"])
    if spec["task"] == "matmul":
        return {"status": "ok", "tflops": harness.matmul_tflops(device, DTYPES[spec["dtype"]])}
    if spec["task"] == "latency":
        return _latency_task(spec, device)
    try:
        inputs = make_inputs(spec["loss"], spec["m"], spec["d"], DTYPES[spec["dtype"]], device)
        call = make_call(spec["provider"], spec["loss"])
        clear = partial(_clear_grads, inputs)
        calls = {"forward": partial(call, *inputs), "full": partial(_backward, call, inputs)}
        warmups = 2 if spec["provider"] == "reference+compile" else 1
        harness.warm_up(calls["full"], device, warmups, clear, spec["max_call_s"])
    except Exception as exc:  # a provider that cannot run this problem is skipped, the run goes on
        status = _setup_status(exc, spec["provider"])
        return {mode: {"status": status} for mode in MODES}
    task = _memory_task if spec["task"] == "memory" else _timing_task
    return {mode: _guarded(partial(task, fn, device, clear, spec)) for mode, fn in calls.items()}


def _timing_task(fn: Callable[[], object], device: torch.device, clear: Callable[[], None], spec: dict) -> dict:
    timing = harness.time_call(fn, device, spec["reps"], clear, budget_s=spec["budget_s"])
    result = harness.timing_dict(timing)
    if device.type == "cuda":  # the CUDA allocator's statistics need no separate process
        result["peak_bytes"] = harness.peak_extra_cuda(fn, device, clear)
    return result


def _latency_task(spec: dict, device: torch.device) -> dict:
    """GPU time per forward+backward (CUDA graph replays; CUDA only) and host wall time per eager
    forward+backward call of one small problem."""
    try:
        inputs = make_inputs(spec["loss"], spec["m"], spec["d"], DTYPES[spec["dtype"]], device)
        call = make_call(spec["provider"], spec["loss"])
        full = partial(_backward, call, inputs)
        result = {"status": "ok", "wall_us": harness.wall_per_call_us(full, device)}
        if device.type == "cuda":
            result["gpu_us"] = harness.graph_replay_ms(full, device) * 1e3
        return result
    except Exception as exc:  # recorded; the run goes on
        return {"status": harness.failure_status(exc)}


def _memory_task(fn: Callable[[], object], device: torch.device, clear: Callable[[], None], spec: dict) -> dict:
    return {"peak_bytes": harness.peak_extra_bytes(fn, device, clear)}


# ---------------------------------------------------------------------------------------------
# Driver


@dataclass(frozen=True)
class Config:
    """What the driver measures and how."""

    device: str
    dtype: str
    losses: list[str]
    providers: list[str]
    sizes: list[int]
    dims: list[int]
    reps: int
    budget_s: float
    max_call_s: float
    cell_timeout_s: float
    threads: int | None
    mem_limit: int | None
    out: Path
    latency: bool
    memory_sizes: list[int]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    parser.add_argument("--losses", nargs="+", choices=LOSSES, default=list(LOSSES))
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, default=None,
                        help="default: all (--gpu-quick: reference fused+exact fused+tc reference+compile)")
    parser.add_argument("--sizes", nargs="+", type=int, default=None,
                        help="M values (rows of the similarity matrix); default 256..8192 on CPU, 1024..65536 on CUDA")
    parser.add_argument("--dims", nargs="+", type=int, default=None, help="D values; default 128 512")
    parser.add_argument("--reps", type=int, default=None, help="timed calls per measurement; default 10 (CPU), 30 (CUDA)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds of timed calls per measurement; fewer reps (at least 3) when one call is slow; default 15")
    parser.add_argument("--max-call-s", type=float, default=None,
                        help="skip a provider (and its larger sizes) when one call takes longer; default 30")
    parser.add_argument("--cell-timeout", type=float, default=600.0, help="seconds before a worker process is killed")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads; default torch's")
    parser.add_argument("--mem-limit-gib", type=float, default=None,
                        help="CPU workers' data-memory cap (RLIMIT_DATA); default 90%% of MemAvailable, 0 for none")
    parser.add_argument("--out", type=Path, default=SCRIPT.parent / "results")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: sizes 256 512, D 128, 3 reps, 2 s per call at most (explicit options still win)")
    parser.add_argument("--latency", action="store_true",
                        help="also measure small calls: GPU time (graph replays) and wall time per forward+backward "
                             "at CoUn's shape (cross_view_info_nce, 256 x 512) and a tiny one (nt_xent, 4 x 8)")
    parser.add_argument("--gpu-quick", action="store_true",
                        help="the GPU targets in under 2 minutes: bfloat16 nt_xent at M=32768, D 128 and 512 (every "
                             "provider but pml), the fused paths at M=131072, D=128, and --latency")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _mem_limit(device: str, gib: float | None) -> int | None:
    if device != "cpu":
        return None
    if gib is not None:
        return int(gib * 1024**3) or None
    available = harness.available_memory_bytes()
    return int(0.9 * available) if available else None


def make_config(args: argparse.Namespace) -> Config:
    """The run's settings: explicit options, else the --quick / --gpu-quick values, else the
    device's defaults."""
    if args.gpu_quick:
        return Config(device="cuda", dtype="bfloat16", losses=["nt_xent"],
                      providers=args.providers or ["reference", "fused+exact", "fused+tc", "reference+compile"],
                      sizes=[32768],
                      dims=[128, 512], reps=args.reps or 10, budget_s=args.budget_s or 3.0,
                      max_call_s=args.max_call_s or 10.0, cell_timeout_s=min(args.cell_timeout, 120.0),
                      threads=args.threads, mem_limit=None, out=args.out, latency=True, memory_sizes=[131072])
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    quick = args.quick
    return Config(
        device=device,
        dtype=args.dtype,
        losses=args.losses,
        providers=args.providers or list(PROVIDERS),
        sizes=args.sizes or ([256, 512] if quick else DEFAULT_SIZES[device]),
        dims=args.dims or ([128] if quick else [128, 512]),
        reps=args.reps or (3 if quick else DEFAULT_REPS[device]),
        budget_s=args.budget_s or (2.0 if quick else 15.0),
        max_call_s=args.max_call_s or (2.0 if quick else 30.0),
        cell_timeout_s=args.cell_timeout,
        threads=args.threads,
        mem_limit=_mem_limit(device, args.mem_limit_gib),
        out=args.out,
        latency=args.latency,
        memory_sizes=[],
    )


def unavailable_providers(config: Config) -> dict[str, str]:
    """Providers of the configuration that cannot run at all here, with the reason."""
    reasons = {}
    for provider in CUDA_ONLY_PROVIDERS:
        if provider in config.providers and config.device != "cuda":
            reasons[provider] = "the tensor-core path runs on CUDA only"
    if "pml" in config.providers and importlib.util.find_spec("pytorch_metric_learning") is None:
        reasons["pml"] = "pytorch-metric-learning is not installed (pip install pytorch-metric-learning)"
    if "lightly" in config.providers:
        if importlib.util.find_spec("lightly") is None:
            reasons["lightly"] = "lightly is not installed (pip install lightly)"
        elif _lightly_class() is None:
            reasons["lightly"] = "lightly is installed but its NTXentLoss does not import here"
    return reasons


def providers_for(loss: str, config: Config, unavailable: dict[str, str]) -> list[str]:
    """The providers measured for ``loss``: a peer only where it has the loss; reference first."""
    chosen = [p for p in PROVIDERS if p in config.providers and p not in unavailable]
    return [p for p in chosen if p not in PEER_LOSSES or loss in PEER_LOSSES[p]]


def _spec(config: Config, task: str, loss: str, provider: str, m: int, d: int) -> dict:
    return {"task": task, "loss": loss, "provider": provider, "m": m, "d": d, "dtype": config.dtype,
            "device": config.device, "reps": config.reps, "budget_s": config.budget_s,
            "max_call_s": config.max_call_s, "threads": config.threads, "mem_limit": config.mem_limit}


def _run_worker(config: Config, task: str, loss: str, provider: str, m: int, d: int) -> dict:
    """Per-mode results of one worker; a failure of the whole worker applies to both modes."""
    env = harness.CPU_MEMORY_WORKER_ENV if task == "memory" and config.device == "cpu" else None
    result = harness.run_isolated(SCRIPT, _spec(config, task, loss, provider, m, d), config.cell_timeout_s, env)
    if "status" in result:
        return {mode: result for mode in MODES}
    return result


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def measure_cell(config: Config, loss: str, provider: str, m: int, d: int) -> dict[str, dict]:
    """``{mode: {"status", timing fields, "peak_bytes", load fields}}`` of one (loss, provider, M, D);
    memory is measured only for the modes whose timing succeeded. Load fields: the 1-minute load
    average before and after, other processes' busy cores during the cell, and whether that
    exceeds UNDER_LOAD_CORES."""
    before, other = _load_average(), harness.OtherLoad()
    cell = _measure_cell(config, loss, provider, m, d)
    cores = other.cores()
    load = {"load_before": before, "load_after": _load_average(), "other_load": cores,
            "under_load": cores is not None and cores > UNDER_LOAD_CORES}
    return {mode: {**result, **load} for mode, result in cell.items()}


def _measure_cell(config: Config, loss: str, provider: str, m: int, d: int) -> dict[str, dict]:
    timings = _run_worker(config, "time", loss, provider, m, d)
    if config.device == "cuda" or not any(timings[mode]["status"] == "ok" for mode in MODES):
        return timings  # on CUDA the timing worker took the peak memory too
    memory = _run_worker(config, "memory", loss, provider, m, d)
    cell = {}
    for mode in MODES:
        merged = {**timings[mode]}
        if merged["status"] == "ok":
            merged["status"] = memory[mode]["status"]
            merged["peak_bytes"] = memory[mode].get("peak_bytes")
        cell[mode] = merged
    return cell


def tflops(mode: str, m: int, d: int, ms: float | None) -> float | None:
    """Throughput by the stated formula: 4 M^2 D (full) or 2 M^2 D (forward) per call."""
    if not ms:
        return None
    flops = (4 if mode == "full" else 2) * m * m * d
    return flops / (ms * 1e-3) / 1e12


def executed_flops(loss: str, provider: str, mode: str, m: int, d: int) -> float | None:
    """The matrix-product FLOPs ``provider`` executes in one call (EXECUTED_FLOP_FORMULA); None for
    the peers (pytorch-metric-learning, lightly), whose count this benchmark does not model."""
    if provider in PEER_LOSSES:
        return None
    per_product = 2.0 * m * m * d
    products = 1 if mode == "forward" else 3
    if provider.startswith("fused") and loss == "cross_view_info_nce":
        products *= 2
    return products * per_product


def make_row(config: Config, loss: str, provider: str, mode: str, m: int, d: int, result: dict,
             matmul_tflops: float | None = None) -> dict:
    """One results row (the CSV columns, in order); ratios are filled in by :func:`add_ratios`."""
    peak = result.get("peak_bytes")
    flops = executed_flops(loss, provider, mode, m, d)
    p50 = result.get("p50_ms")
    executed = flops / (p50 * 1e-3) / 1e12 if flops and p50 else None
    return {
        "subject": f"{loss} M={m} D={d}",
        "provider": provider,
        "mode": mode,
        "loss": loss,
        "M": m,
        "N": pairs(loss, m),
        "D": d,
        "dtype": config.dtype,
        "device": config.device,
        "reps": result.get("reps"),
        "p50_ms": result.get("p50_ms"),
        "p20_ms": result.get("p20_ms"),
        "p80_ms": result.get("p80_ms"),
        "tflops": tflops(mode, m, d, result.get("p50_ms")),
        "executed_gflop": None if flops is None else flops / 1e9,
        "executed_tflops": executed,
        "matmul_share": executed / matmul_tflops if executed and matmul_tflops else None,
        "peak_extra_mib": None if peak is None else peak / harness.MIB,
        "speedup_vs_reference": None,
        "memory_vs_reference": None,
        "fused_speedup": None,
        "load_before": result.get("load_before"),
        "load_after": result.get("load_after"),
        "other_load": result.get("other_load"),
        "under_load": result.get("under_load"),
        "status": result["status"],
    }


def add_ratios(row: dict, reference: dict | None) -> None:
    """Fill the row's speedup (reference median / its median) and memory fraction (its peak /
    reference's peak) against the eager reference row of the same subject and mode."""
    if reference is None or row["status"] != "ok" or reference["status"] != "ok":
        return
    if row["p50_ms"] and reference["p50_ms"]:
        row["speedup_vs_reference"] = reference["p50_ms"] / row["p50_ms"]
    if reference["peak_extra_mib"]:
        row["memory_vs_reference"] = row["peak_extra_mib"] / reference["peak_extra_mib"]


def add_fused_speedup(row: dict, fused: dict | None) -> None:
    """For a peer's row: how many times faster the fused kernels ran the same subject and mode in
    the same run (the peer's median / fused's median)."""
    if fused is None or row["provider"] not in PEER_LOSSES or row["status"] != "ok" or fused["status"] != "ok":
        return
    if row["p50_ms"] and fused["p50_ms"]:
        row["fused_speedup"] = row["p50_ms"] / fused["p50_ms"]


def describe_ratio(row: dict) -> str:
    """E.g. "fused vs reference: 3.1x faster, 1/45 of the memory"; "" without ratios."""
    speedup, memory = row["speedup_vs_reference"], row["memory_vs_reference"]
    if row["provider"] == "reference" or speedup is None:
        return ""
    factor = speedup if speedup >= 1 else 1 / speedup
    pace = f"{factor:.{1 if factor >= 10 else 2}f}x " + ("faster" if speedup >= 1 else "slower")
    if memory is None:
        amount = "memory not compared"
    elif memory == 0:
        amount = "no measurable extra memory"
    elif memory <= 1:
        amount = f"1/{1 / memory:.{0 if memory < 0.1 else 1}f} of the memory"
    else:
        amount = f"{memory:.1f}x the memory"
    return f"{row['provider']} vs reference: {pace}, {amount}"


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _speedup_text(speedup: float | None) -> str:
    """A speedup as "7.14x" (three significant digits below 0.1x); "-" when absent."""
    if speedup is None:
        return "-"
    return f"{speedup:.2f}x" if speedup >= 0.1 else f"{speedup:.2g}x"


def _memory_fraction_text(fraction: float | None) -> str:
    """A memory fraction as "1/45" when small, else with two decimals; "-" when absent."""
    if fraction is None:
        return "-"
    if 0 < fraction < 0.5:
        return f"1/{1 / fraction:.0f}"
    return f"{fraction:.2f}"


def progress_line(row: dict) -> str:
    """One printed line per row, as rows are measured."""
    head = f"{row['loss']:<20} {row['provider']:<17} {row['mode']:<7} M={row['M']:<6} D={row['D']:<4}"
    if row["status"] != "ok":
        return f"{head} {row['status']}"
    ratio = describe_ratio(row)
    peer = f"  | fused {row['fused_speedup']:.2f}x faster" if row["fused_speedup"] else ""
    load = "" if row["load_before"] is None else f"  load {row['load_before']:.2f}->{row['load_after']:.2f}"
    marked = f"  UNDER LOAD ({row['other_load']:.2f} other cores)" if row["under_load"] else ""
    return (f"{head} p50 {row['p50_ms']:.2f} ms  peak +{row['peak_extra_mib']:.1f} MiB"
            + (f"  | {ratio}" if ratio else "") + peer + load + marked)


def run_grid(config: Config, unavailable: dict[str, str], matmul_tflops: float | None = None,
             sizes: list[int] | None = None, dims: list[int] | None = None,
             providers: list[str] | None = None) -> list[dict]:
    """Measure every (loss, D, M, provider); after a failure (OOM, too slow, error) the provider's
    larger sizes for that loss and D are recorded as skipped rather than run. ``sizes``, ``dims``
    and ``providers`` narrow the configuration's (the --gpu-quick memory grid)."""
    rows = []
    blocked: dict[tuple, str] = {}
    for loss in config.losses:
        for d in dims or config.dims:
            for m in sizes or config.sizes:
                references, fused = {}, {}
                for provider in providers or providers_for(loss, config, unavailable):
                    key = (loss, d, provider)
                    if loss == "nt_xent" and m % 2:
                        cell = {mode: {"status": "skipped: nt_xent needs an even M = 2N"} for mode in MODES}
                    elif key in blocked:
                        cell = {mode: {"status": blocked[key]} for mode in MODES}
                    else:
                        cell = measure_cell(config, loss, provider, m, d)
                        failed = [cell[mode]["status"] for mode in MODES if cell[mode]["status"] != "ok"]
                        if failed:
                            blocked[key] = f"skipped after M={m} ({failed[0].removeprefix('skipped: ')})"
                    for mode in MODES:
                        row = make_row(config, loss, provider, mode, m, d, cell[mode], matmul_tflops)
                        if provider == "reference":
                            references[mode] = row
                        if provider == "fused":
                            fused[mode] = row
                        add_ratios(row, references.get(mode))
                        add_fused_speedup(row, fused.get(mode))
                        print(progress_line(row), flush=True)
                        rows.append(row)
    return rows


TABLE_COLUMNS = (
    ("loss", lambda r: r["loss"]),
    ("mode", lambda r: r["mode"]),
    ("M", lambda r: str(r["M"])),
    ("N", lambda r: str(r["N"])),
    ("D", lambda r: str(r["D"])),
    ("provider", lambda r: r["provider"]),
    ("p50 ms", lambda r: _fmt(r["p50_ms"], 2)),
    ("p20 ms", lambda r: _fmt(r["p20_ms"], 2)),
    ("p80 ms", lambda r: _fmt(r["p80_ms"], 2)),
    ("TFLOP/s", lambda r: "-" if r["tflops"] is None else f"{r['tflops']:.3g}"),
    ("exec TF/s", lambda r: "-" if r["executed_tflops"] is None else f"{r['executed_tflops']:.3g}"),
    ("of matmul", lambda r: "-" if r["matmul_share"] is None else f"{100 * r['matmul_share']:.1f}%"),
    ("peak MiB", lambda r: _fmt(r["peak_extra_mib"], 1)),
    ("speedup", lambda r: _speedup_text(r["speedup_vs_reference"])),
    ("mem/ref", lambda r: _memory_fraction_text(r["memory_vs_reference"])),
    ("fused x", lambda r: _speedup_text(r["fused_speedup"])),
    ("load", lambda r: "-" if r["load_before"] is None else f"{r['load_before']:.1f}->{r['load_after']:.1f}"),
    ("other", lambda r: _fmt(r["other_load"], 2) + (" LOAD" if r["under_load"] else "")),
    ("status", lambda r: r["status"] if len(r["status"]) <= 60 else r["status"][:57] + "..."),
)


def cpu_targets(rows: list[dict]) -> list[str]:
    """The issue's CPU checks, where the run has their rows: fp32 nt_xent D=128 fwd+bwd, fused at
    least 1.5x faster than the eager reference at M=4096 and at most 1/20 of its peak extra memory
    at M=8192."""
    def find(m: int) -> dict | None:
        return next((r for r in rows if r["loss"] == "nt_xent" and r["provider"] == "fused" and r["mode"] == "full"
                     and r["M"] == m and r["D"] == 128 and r["dtype"] == "float32" and r["device"] == "cpu"), None)

    lines = []
    speed, memory = find(4096), find(8192)
    if speed and speed["speedup_vs_reference"] is not None:
        value = speed["speedup_vs_reference"]
        lines.append(f"target fused >= 1.5x faster (M=4096): {value:.2f}x -> {'met' if value >= 1.5 else 'NOT met'}")
    if memory and memory["memory_vs_reference"] is not None:
        value = memory["memory_vs_reference"]
        verdict = "met" if value <= 1 / 20 else "NOT met"
        lines.append(f"target fused peak <= 1/20 of reference (M=8192): {value:.4f} (1/{1 / value:.0f}) -> {verdict}"
                     if value else f"target fused peak <= 1/20 of reference (M=8192): no measurable extra memory -> met")
    return lines


def measure_latency(config: Config, unavailable: dict[str, str]) -> list[dict]:
    """GPU time (CUDA) and wall time per forward+backward of the LATENCY_CASES, per provider."""
    rows = []
    for case, (loss, m, d) in LATENCY_CASES.items():
        # On CUDA the forced fused paths that were asked for (plain "fused" is one of them); on the
        # CPU the one kernel.
        fused = [p for p in CUDA_ONLY_PROVIDERS if p in config.providers] if config.device == "cuda" else ["fused"]
        for provider in ("reference", *fused):
            if provider in unavailable:
                continue
            spec = {**_spec(config, "latency", loss, provider, m, d)}
            result = harness.run_isolated(SCRIPT, spec, config.cell_timeout_s)
            rows.append({"case": case, "loss": loss, "M": m, "D": d, "dtype": config.dtype, "device": config.device,
                         "provider": provider, "gpu_us": result.get("gpu_us"), "wall_us": result.get("wall_us"),
                         "status": result["status"]})
            print(f"latency {case:<5} {provider:<11} " + (
                f"GPU {result['gpu_us']:.1f} us  " if result.get("gpu_us") is not None else "")
                  + (f"wall {result['wall_us']:.1f} us" if result.get("wall_us") is not None else result["status"]),
                  flush=True)
    return rows


LATENCY_COLUMNS = (
    ("case", lambda r: r["case"]),
    ("loss", lambda r: r["loss"]),
    ("M", lambda r: str(r["M"])),
    ("D", lambda r: str(r["D"])),
    ("provider", lambda r: r["provider"]),
    ("GPU us/call", lambda r: _fmt(r["gpu_us"], 1)),
    ("wall us/call", lambda r: _fmt(r["wall_us"], 1)),
    ("status", lambda r: r["status"][:60]),
)


def _find(rows: list[dict], **fields) -> dict | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in fields.items()) and r["status"] == "ok"), None)


def gpu_targets(rows: list[dict], latency: list[dict]) -> list[str]:
    """The tensor-core targets, where the run has their rows (bfloat16 nt_xent forward+backward):
    at M=32768, D=128 at least 5x the compiled reference and 35% of the measured matrix-product rate
    (executed FLOPs); at D=512 at least 3x the compiled reference; M=131072, D=128 in under 300 MiB
    of extra memory; CoUn's shape at most 30 us of GPU time and 100 us of wall time per call."""
    lines = []
    for d, factor in ((128, 5.0), (512, 3.0)):
        fused = _find(rows, loss="nt_xent", provider="fused+tc", mode="full", M=32768, D=d)
        compiled = _find(rows, loss="nt_xent", provider="reference+compile", mode="full", M=32768, D=d)
        if fused and compiled:
            ratio = compiled["p50_ms"] / fused["p50_ms"]
            lines.append(f"target fused+tc >= {factor:g}x reference+compile (M=32768, D={d}): {ratio:.2f}x -> "
                         + ("met" if ratio >= factor else "NOT met"))
        if fused and d == 128 and fused["matmul_share"] is not None:
            share = fused["matmul_share"]
            lines.append(f"target fused+tc >= 35% of the matmul rate (M=32768, D=128, executed FLOPs): "
                         f"{100 * share:.1f}% -> " + ("met" if share >= 0.35 else "NOT met"))
    big = _find(rows, loss="nt_xent", provider="fused+tc", mode="full", M=131072, D=128)
    if big and big["peak_extra_mib"] is not None:
        value = big["peak_extra_mib"]
        lines.append(f"target fused+tc extra memory < 300 MiB (M=131072, D=128): {value:.1f} MiB -> "
                     + ("met" if value < 300 else "NOT met"))
    for d in (128, 512):  # the opt-in variant against the default, same run (no target)
        fused = _find(rows, loss="nt_xent", provider="fused+tc", mode="full", M=32768, D=d)
        variant = _find(rows, loss="nt_xent", provider="fused+tc-occupancy", mode="full", M=32768, D=d)
        if fused and variant:
            lines.append(f"fused+tc-occupancy vs fused+tc (M=32768, D={d}): {fused['p50_ms'] / variant['p50_ms']:.2f}x")
    coun = _find(latency, case="coun", provider="fused+tc")
    if coun and coun["gpu_us"] is not None:
        lines.append(f"target CoUn shape GPU time <= 30 us: {coun['gpu_us']:.1f} us -> "
                     + ("met" if coun["gpu_us"] <= 30 else "NOT met"))
        lines.append(f"target CoUn shape wall time <= 100 us: {coun['wall_us']:.1f} us -> "
                     + ("met" if coun["wall_us"] <= 100 else "NOT met"))
    return lines


def cpu_latency_targets(latency: list[dict]) -> list[str]:
    """The CPU host-overhead target: a tiny (4 x 8) fused forward+backward in at most 100 us."""
    tiny = _find(latency, case="tiny", provider="fused", device="cpu")
    if not tiny:
        return []
    return [f"target tiny fused call (4 x 8) <= 100 us: {tiny['wall_us']:.1f} us -> "
            + ("met" if tiny["wall_us"] <= 100 else "NOT met")]


def main(argv: list[str] | None = None) -> int:
    return harness.run_script(parse_args(argv), measure, make_config, drive)


def drive(config: Config) -> int:
    """The driver's run, after the device check (harness.run_script)."""
    unavailable = unavailable_providers(config)
    for provider, reason in unavailable.items():
        print(f"skipping provider {provider}: {reason}")
    for peer, peer_losses in PEER_LOSSES.items():
        missing = [loss for loss in config.losses if loss not in peer_losses]
        if peer in config.providers and peer not in unavailable and missing:
            print(f"provider {peer}: no {', '.join(missing)} equivalent; measured for {', '.join(peer_losses)}")
    print(FLOP_FORMULA)
    device = torch.device(config.device)
    matmul_tflops = None
    if config.device == "cuda":
        matmul_dtype = config.dtype if config.dtype != "float32" else "bfloat16"
        result = harness.run_isolated(SCRIPT, {**_spec(config, "matmul", "", "", 0, 0), "dtype": matmul_dtype},
                                      config.cell_timeout_s)
        matmul_tflops = result.get("tflops")
        print(f"measured {matmul_dtype} matrix-product rate: "
              + (f"{matmul_tflops:.0f} TFLOP/s" if matmul_tflops else result["status"]), flush=True)
    header = harness.environment_header("losses", device, REPO, torch.get_num_threads(), {
        "flop_formula": FLOP_FORMULA,
        "executed_flop_formula": EXECUTED_FLOP_FORMULA,
        "measured_matmul_tflops": matmul_tflops,
        "dtype": config.dtype,
        "temperatures": TEMPERATURE,
        "sup_con_classes": SUPCON_CLASSES,
        "pytorch_metric_learning": _pml_version(),
        "lightly": _version_of("lightly"),
        "under_load_cores": UNDER_LOAD_CORES,
        "unavailable_providers": unavailable,
        "tensor_cores_env": os.environ.get("COUN_FAST_TENSOR_CORES"),
        "settings": {"reps": config.reps, "budget_s": config.budget_s, "max_call_s": config.max_call_s,
                     "mem_limit_bytes": config.mem_limit},
    })
    rows = run_grid(config, unavailable, matmul_tflops)
    if config.memory_sizes:
        rows += run_grid(config, unavailable, matmul_tflops, sizes=config.memory_sizes, dims=[128],
                         providers=[p for p in ("fused", "fused+exact", "fused+tc")
                                    if p in config.providers and p not in unavailable])
    latency = measure_latency(config, unavailable) if config.latency else []
    header["latency"] = latency
    stem = f"losses_{config.device}_{header['timestamp']}"
    json_path, csv_path = harness.write_results(rows, header, config.out, stem)
    print()
    print(harness.format_table(rows, TABLE_COLUMNS))
    if latency:
        print()
        print(harness.format_table(latency, LATENCY_COLUMNS))
    print()
    print(FLOP_FORMULA)
    print(EXECUTED_FLOP_FORMULA)
    print("speedup = reference p50 / provider p50; mem/ref = provider peak extra memory / reference's; "
          "fused x = peer p50 / fused p50 (same run); load = 1-minute load average before->after the cell; "
          f"other = other processes' busy cores during the cell (LOAD above {UNDER_LOAD_CORES})")
    marked = sum(1 for r in rows if r["under_load"])
    if marked:
        print(f"{marked} of {len(rows)} rows were measured under load (other processes busy): their timings are "
              f"disturbed")
    for line in cpu_targets(rows) + cpu_latency_targets(latency) + gpu_targets(rows, latency):
        print(line)
    print(f"wrote {json_path}\nwrote {csv_path}")
    return 0


def _pml_version() -> str | None:
    return _version_of("pytorch_metric_learning")


def _version_of(package: str) -> str | None:
    if importlib.util.find_spec(package) is None:
        return None
    return getattr(importlib.import_module(package), "__version__", None)


if __name__ == "__main__":
    sys.exit(main())
