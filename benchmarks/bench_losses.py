"""Benchmark of coun_fast's contrastive losses: time and peak extra memory of the fused kernels
against the eager reference, the compiled reference and pytorch-metric-learning.

    python benchmarks/bench_losses.py                       # every loss, D in {128, 512}
    python benchmarks/bench_losses.py --quick               # a smoke run of a few minutes
    python benchmarks/bench_losses.py --losses nt_xent --dims 128 --sizes 1024 2048 4096 8192

Each (loss, provider, M, D) is measured in fresh worker processes: one times the forward and the
forward+backward call, another measures their peak extra memory. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch

import _harness as harness

LOSSES = ("nt_xent", "cross_view_info_nce", "sup_con")
PROVIDERS = ("reference", "fused", "reference+compile", "pml")
MODES = ("forward", "full")
TEMPERATURE = {"nt_xent": 0.5, "cross_view_info_nce": 0.1, "sup_con": 0.1}
PML_LOSSES = ("nt_xent", "sup_con")
SUPCON_CLASSES = 100
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_SIZES = {"cpu": [256, 512, 1024, 2048, 4096, 8192], "cuda": [1024, 2048, 4096, 8192, 16384, 32768, 65536]}
DEFAULT_REPS = {"cpu": 10, "cuda": 30}
FLOP_FORMULA = ("TFLOP/s = 4*M^2*D per forward+backward (2*M^2*D per forward) / median time; M = rows of "
                "the similarity matrix: 2N for nt_xent, N for cross_view_info_nce (its N x N matrix), "
                "the rows for sup_con")
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


def make_call(provider: str, loss: str) -> Callable[..., torch.Tensor]:
    """The loss function of ``provider``, taking :func:`make_inputs`' arguments."""
    if provider == "fused":
        return _coun_call(loss, "fused")
    if provider == "reference":
        return _coun_call(loss, "reference")
    if provider == "reference+compile":
        return torch.compile(_coun_call(loss, "reference"))
    if provider == "pml":
        return _pml_nt_xent() if loss == "nt_xent" else _pml_sup_con()
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
    return harness.timing_dict(timing)


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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    parser.add_argument("--losses", nargs="+", choices=LOSSES, default=list(LOSSES))
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
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
    """The run's settings: explicit options, else the --quick values, else the device's defaults."""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    quick = args.quick
    return Config(
        device=device,
        dtype=args.dtype,
        losses=args.losses,
        providers=args.providers,
        sizes=args.sizes or ([256, 512] if quick else DEFAULT_SIZES[device]),
        dims=args.dims or ([128] if quick else [128, 512]),
        reps=args.reps or (3 if quick else DEFAULT_REPS[device]),
        budget_s=args.budget_s or (2.0 if quick else 15.0),
        max_call_s=args.max_call_s or (2.0 if quick else 30.0),
        cell_timeout_s=args.cell_timeout,
        threads=args.threads,
        mem_limit=_mem_limit(device, args.mem_limit_gib),
        out=args.out,
    )


def unavailable_providers(config: Config) -> dict[str, str]:
    """Providers of the configuration that cannot run at all here, with the reason."""
    reasons = {}
    if "pml" in config.providers and importlib.util.find_spec("pytorch_metric_learning") is None:
        reasons["pml"] = "pytorch-metric-learning is not installed (pip install pytorch-metric-learning)"
    return reasons


def providers_for(loss: str, config: Config, unavailable: dict[str, str]) -> list[str]:
    """The providers measured for ``loss``: PML only where it has the loss; reference first."""
    chosen = [p for p in PROVIDERS if p in config.providers and p not in unavailable]
    return [p for p in chosen if p != "pml" or loss in PML_LOSSES]


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


def measure_cell(config: Config, loss: str, provider: str, m: int, d: int) -> dict[str, dict]:
    """``{mode: {"status", timing fields, "peak_bytes"}}`` of one (loss, provider, M, D); memory is
    measured only for the modes whose timing succeeded."""
    timings = _run_worker(config, "time", loss, provider, m, d)
    if not any(timings[mode]["status"] == "ok" for mode in MODES):
        return timings
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


def make_row(config: Config, loss: str, provider: str, mode: str, m: int, d: int, result: dict) -> dict:
    """One results row (the CSV columns, in order); ratios are filled in by :func:`add_ratios`."""
    peak = result.get("peak_bytes")
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
        "peak_extra_mib": None if peak is None else peak / harness.MIB,
        "speedup_vs_reference": None,
        "memory_vs_reference": None,
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
    return (f"{head} p50 {row['p50_ms']:.2f} ms  peak +{row['peak_extra_mib']:.1f} MiB"
            + (f"  | {ratio}" if ratio else ""))


def run_grid(config: Config, unavailable: dict[str, str]) -> list[dict]:
    """Measure every (loss, D, M, provider); after a failure (OOM, too slow, error) the provider's
    larger sizes for that loss and D are recorded as skipped rather than run."""
    rows = []
    blocked: dict[tuple, str] = {}
    for loss in config.losses:
        for d in config.dims:
            for m in config.sizes:
                references = {}
                for provider in providers_for(loss, config, unavailable):
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
                        row = make_row(config, loss, provider, mode, m, d, cell[mode])
                        if provider == "reference":
                            references[mode] = row
                        add_ratios(row, references.get(mode))
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
    ("peak MiB", lambda r: _fmt(r["peak_extra_mib"], 1)),
    ("speedup", lambda r: _speedup_text(r["speedup_vs_reference"])),
    ("mem/ref", lambda r: _memory_fraction_text(r["memory_vs_reference"])),
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return harness.serve_worker(args.worker, measure)
    config = make_config(args)
    refused = harness.prepare_driver(config.device, config.threads)
    if refused is not None:
        return refused
    unavailable = unavailable_providers(config)
    for provider, reason in unavailable.items():
        print(f"skipping provider {provider}: {reason}")
    if "pml" in config.providers and "cross_view_info_nce" in config.losses:
        print("provider pml: no cross_view_info_nce equivalent in pytorch-metric-learning; measured for "
              + ", ".join(PML_LOSSES))
    print(FLOP_FORMULA)
    device = torch.device(config.device)
    header = harness.environment_header("losses", device, REPO, torch.get_num_threads(), {
        "flop_formula": FLOP_FORMULA,
        "dtype": config.dtype,
        "temperatures": TEMPERATURE,
        "sup_con_classes": SUPCON_CLASSES,
        "pytorch_metric_learning": _pml_version(),
        "unavailable_providers": unavailable,
        "settings": {"reps": config.reps, "budget_s": config.budget_s, "max_call_s": config.max_call_s,
                     "mem_limit_bytes": config.mem_limit},
    })
    rows = run_grid(config, unavailable)
    stem = f"losses_{config.device}_{header['timestamp']}"
    json_path, csv_path = harness.write_results(rows, header, config.out, stem)
    print()
    print(harness.format_table(rows, TABLE_COLUMNS))
    print()
    print(FLOP_FORMULA)
    print("speedup = reference p50 / provider p50; mem/ref = provider peak extra memory / reference's")
    for line in cpu_targets(rows):
        print(line)
    print(f"wrote {json_path}\nwrote {csv_path}")
    return 0


def _pml_version() -> str | None:
    if importlib.util.find_spec("pytorch_metric_learning") is None:
        return None
    import pytorch_metric_learning

    return pytorch_metric_learning.__version__


if __name__ == "__main__":
    sys.exit(main())
