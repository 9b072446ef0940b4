"""Reusable pieces of the coun_fast benchmarks.

Timing (CPU wall clock or CUDA events, warm-up excluded, quantiles over repetitions), peak extra
memory of one call (CUDA allocator statistics, or the process's peak resident set size on CPU),
isolation of each measurement in a fresh worker process, the environment header of a run, and
writing results as JSON + CSV with a plain-text table.

A benchmark script built on this module runs in two roles: the driver, which calls
:func:`run_isolated` for each measurement, and the worker (``script --worker SPEC``), which calls
:func:`serve_worker` with its own ``measure(spec) -> dict``.
"""

from __future__ import annotations

import csv
import ctypes
import ctypes.util
import datetime
import gc
import io
import json
import math
import os
import platform
import resource
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

MIB = 1024**2
RESULT_PREFIX = "@@BENCH_RESULT "
MIN_REPS = 3
# Worker environment for CPU memory measurements: glibc serves every allocation of 64 KiB or more
# with its own mmap and unmaps it on free, so the resident set follows the live tensors.
CPU_MEMORY_WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")
_STATM = Path("/proc/self/statm")
_SAMPLE_INTERVAL_S = 0.001


class TooSlow(Exception):
    """A warm-up call took longer than the allowed time for one call."""

    def __init__(self, seconds: float, limit_s: float) -> None:
        super().__init__(f"one call takes {seconds:.1f} s (> the {limit_s:g} s allowed per call)")


# ---------------------------------------------------------------------------------------------
# Timing


@dataclass(frozen=True)
class Timing:
    """Quantiles, in milliseconds, of ``reps`` timed calls."""

    p50_ms: float
    p20_ms: float
    p80_ms: float
    reps: int


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile (0 <= q <= 1) of non-empty ascending values, interpolated linearly."""
    position = q * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def summarize(samples_ms: Iterable[float]) -> Timing:
    """Median, 20th and 80th percentiles of non-empty samples."""
    values = sorted(samples_ms)
    return Timing(quantile(values, 0.5), quantile(values, 0.2), quantile(values, 0.8), len(values))


def _nothing() -> None:
    return None


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock_once(fn: Callable[[], object], device: torch.device, before: Callable[[], None] = _nothing) -> float:
    """Seconds of one call of ``fn`` (after the untimed ``before``), device work included."""
    before()
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    elapsed = time.perf_counter() - start
    del result
    return elapsed


def warm_up(
    fn: Callable[[], object],
    device: torch.device,
    calls: int,
    before: Callable[[], None] = _nothing,
    max_call_s: float | None = None,
) -> float:
    """Run ``fn`` ``calls`` (>= 1) times untimed for the results; return the last call's seconds.

    Raises:
        TooSlow: the last call took longer than ``max_call_s``.
    """
    seconds = 0.0
    for _ in range(max(1, calls)):
        seconds = clock_once(fn, device, before)
    if max_call_s is not None and seconds > max_call_s:
        raise TooSlow(seconds, max_call_s)
    return seconds


def time_cpu(fn: Callable[[], object], reps: int, before: Callable[[], None] = _nothing) -> list[float]:
    """Milliseconds of each of ``reps`` calls by ``time.perf_counter``; ``before`` runs untimed ahead
    of every call and the call's result is released after the clock stops."""
    cpu = torch.device("cpu")
    return [clock_once(fn, cpu, before) * 1e3 for _ in range(reps)]


def time_cuda(
    fn: Callable[[], object], reps: int, device: torch.device, before: Callable[[], None] = _nothing
) -> list[float]:
    """Milliseconds of each of ``reps`` calls by CUDA events on the current stream. The device is
    synchronized before each call, so a sample is the latency of one call, launches included."""
    samples = []
    for _ in range(reps):
        before()
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        result = fn()
        end.record()
        del result
        end.synchronize()
        samples.append(start.elapsed_time(end))
    return samples


def time_call(
    fn: Callable[[], object],
    device: torch.device,
    reps: int,
    before: Callable[[], None] = _nothing,
    warmup: int = 1,
    budget_s: float | None = None,
    min_reps: int = MIN_REPS,
) -> Timing:
    """Quantiles of ``fn``'s time on ``device`` (CUDA events on CUDA, ``perf_counter`` otherwise).

    ``warmup`` untimed calls come first; the last of them estimates one call, and the number of
    timed calls is lowered from ``reps`` so that they fit in ``budget_s``, but not below
    ``min(min_reps, reps)``. ``before`` (e.g. setting gradients to None) runs untimed ahead of
    every call.
    """
    estimate = warm_up(fn, device, warmup, before)
    if budget_s is not None and estimate > 0:
        reps = max(min(min_reps, reps), min(reps, int(budget_s / estimate)))
    if device.type == "cuda":
        return summarize(time_cuda(fn, reps, device, before))
    return summarize(time_cpu(fn, reps, before))


def matmul_tflops(device: torch.device, dtype: torch.dtype, size: int = 8192, reps: int = 10) -> float:
    """The device's measured dense matrix-product rate: median TFLOP/s of ``size``^3 products of
    random ``dtype`` matrices (cuBLAS through torch; CUDA events), warm-up excluded."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    timing = time_call(lambda: a @ b, device, reps, warmup=3)
    return 2 * size**3 / (timing.p50_ms * 1e-3) / 1e12


def graph_replay_ms(fn: Callable[[], object], device: torch.device, replays: int = 200, rounds: int = 5) -> float:
    """GPU time of one call of ``fn`` (forward and backward of a loss, say), without launch gaps:
    ``fn`` is captured in a CUDA graph after three warm-up calls on a side stream, the graph is
    replayed ``replays`` times between two CUDA events, and the median over ``rounds`` of the
    per-replay time is returned, in milliseconds."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    samples = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / replays)
    return quantile(sorted(samples), 0.5)


def wall_per_call_us(fn: Callable[[], object], device: torch.device, calls: int = 200, rounds: int = 7,
                     budget_s: float = 2.0) -> float:
    """Host wall time of one eager call of ``fn`` issued back to back, in microseconds. On a GPU:
    ``calls`` calls between two clock reads (the device synchronized at both ends), median over
    ``rounds``, fewer calls per round (at least 3) when one call is slow, so a round takes about
    ``budget_s / rounds``: what a training step pays per call when the device keeps up. On the CPU
    (nothing to synchronize): the median of single calls, which a busy machine's preemptions
    disturb less than a round's total."""
    estimate = warm_up(fn, device, 3)
    if estimate > 0:
        calls = max(3, min(calls, int(budget_s / rounds / estimate)))
    if device.type != "cuda":
        return quantile(sorted(clock_once(fn, device) * 1e6 for _ in range(calls * rounds)), 0.5)
    samples = []
    for _ in range(rounds):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        synchronize(device)
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return quantile(sorted(samples), 0.5)


def timing_method(device: torch.device) -> str:
    """How :func:`time_call` times on ``device``, in words."""
    if device.type == "cuda":
        return "CUDA events around each call, device synchronized before each call, warm-up excluded"
    return "time.perf_counter around each call, warm-up excluded"


# ---------------------------------------------------------------------------------------------
# Peak memory


def _status_kib(field: str) -> int:
    """A ``kB`` field of /proc/self/status, e.g. VmRSS or VmHWM."""
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rss_bytes() -> int:
    """The resident set size of this process now, from /proc/self/statm."""
    return int(_STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where that is not possible
    (not Linux >= 4.0, or /proc/self/clear_refs not writable)."""
    try:
        _CLEAR_REFS.write_text("5")
        _status_kib("VmHWM")
    except (OSError, KeyError):
        return False
    return True


def release_cpu_memory() -> None:
    """Collect garbage and hand free heap memory back to the OS (glibc ``malloc_trim``; elsewhere
    only the collection)."""
    gc.collect()
    name = ctypes.util.find_library("c")
    if name is None:
        return
    libc = ctypes.CDLL(name)
    if hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


class _RssSampler:
    """Highest RSS seen by a thread reading /proc/self/statm about every millisecond. A fallback
    for kernels without a resettable VmHWM: it can miss peaks shorter than the interval and any
    taken while a kernel holds the GIL."""

    def __init__(self) -> None:
        self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(_SAMPLE_INTERVAL_S)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, rss_bytes())


def cpu_memory_method() -> str:
    """How :func:`peak_extra_cpu` measures in this environment, in words."""
    if reset_peak_rss():
        return ("peak RSS (VmHWM, reset through /proc/self/clear_refs) minus RSS just before the call, "
                "in a fresh worker process with glibc mmap threshold 64 KiB, after one warm-up call")
    return ("highest RSS sampled every ~1 ms from /proc/self/statm minus RSS just before the call, in a "
            "fresh worker process with glibc mmap threshold 64 KiB, after one warm-up call")


def peak_extra_cpu(fn: Callable[[], object], before: Callable[[], None] = _nothing) -> int:
    """Bytes by which the resident set rose above its level just before one call of ``fn``, at the
    call's peak (its result is held until the call returns, then released).

    Accurate when the process runs with :data:`CPU_MEMORY_WORKER_ENV` (large allocations map and
    unmap their own pages); counts touched pages only, and anything else the process does
    meanwhile.
    """
    before()
    release_cpu_memory()
    use_hwm = reset_peak_rss()
    baseline = _status_kib("VmRSS") * 1024 if use_hwm else rss_bytes()
    sampler = None if use_hwm else _RssSampler()
    if sampler is not None:
        sampler.start()
    result = fn()
    peak = _status_kib("VmHWM") * 1024 if use_hwm else sampler.stop()
    del result
    return max(0, peak - baseline)


def peak_extra_cuda(fn: Callable[[], object], device: torch.device, before: Callable[[], None] = _nothing) -> int:
    """Bytes by which ``torch.cuda.max_memory_allocated`` rose above the allocated memory just
    before one call of ``fn`` (inputs and other live tensors excluded)."""
    before()
    gc.collect()
    torch.cuda.synchronize(device)
    baseline = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    result = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del result
    return max(0, peak - baseline)


def peak_extra_bytes(fn: Callable[[], object], device: torch.device, before: Callable[[], None] = _nothing) -> int:
    """Peak extra memory of one call of ``fn`` on ``device``: :func:`peak_extra_cuda` or
    :func:`peak_extra_cpu`."""
    if device.type == "cuda":
        return peak_extra_cuda(fn, device, before)
    return peak_extra_cpu(fn, before)


def memory_method(device: torch.device) -> str:
    """How :func:`peak_extra_bytes` measures on ``device``, in words."""
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus memory_allocated before the call"
    return cpu_memory_method()


def available_memory_bytes() -> int | None:
    """MemAvailable of /proc/meminfo, or None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def limit_data_memory(limit_bytes: int | None) -> None:
    """Cap this process's private writable memory (RLIMIT_DATA), so that an allocation beyond it
    fails with an error instead of waking the OOM killer. None or 0 leaves the limit as it is."""
    if limit_bytes:
        resource.setrlimit(resource.RLIMIT_DATA, (limit_bytes, limit_bytes))


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` reports memory exhaustion (CUDA OOM, CPU allocator failure, MemoryError)."""
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text


def failure_status(exc: BaseException, stage: str = "error") -> str:
    """One-line status for a failed measurement: ``"OOM: ..."`` for memory exhaustion, else
    ``"<stage>: <type>: <first line of the message>"``."""
    lines = str(exc).strip().splitlines()
    message = lines[0][:200] if lines else ""
    if is_oom(exc):
        return f"OOM: {message}"
    if isinstance(exc, TooSlow):
        return f"skipped: {message}"
    return f"{stage}: {type(exc).__name__}: {message}"


class OtherLoad:
    """CPU time that processes other than this one and its descendants take while it runs: busy
    time of the whole machine from /proc/stat (steal included) minus this process tree's own
    (``getrusage`` of itself and its waited-for descendants), as an average number of busy cores.
    Other sessions sharing the machine show up here; a value well above 0 means disturbed timings."""

    def __init__(self) -> None:
        self._start = self._snapshot()

    @staticmethod
    def _snapshot() -> tuple[float, float, float] | None:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        except (OSError, IndexError):
            return None
        values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        busy = (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")
        own = sum(getattr(resource.getrusage(who), field) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                  for field in ("ru_utime", "ru_stime"))
        return time.monotonic(), busy, own

    def cores(self) -> float | None:
        """Average cores busy with other processes since construction; None where not measurable."""
        end = self._snapshot()
        if self._start is None or end is None or end[0] <= self._start[0]:
            return None
        wall, busy, own = (b - a for a, b in zip(self._start, end))
        return max(0.0, (busy - own) / wall)


# ---------------------------------------------------------------------------------------------
# Worker processes


def serve_worker(spec_json: str, measure: Callable[[dict], dict]) -> int:
    """Worker side: run ``measure(spec)`` and print its JSON result on a line starting with
    :data:`RESULT_PREFIX` (a failure becomes ``{"status": ...}``). Returns the exit code, 0."""
    spec = json.loads(spec_json)
    try:
        result = measure(spec)
    except Exception as exc:  # every failure is reported to the driver, which goes on
        result = {"status": failure_status(exc)}
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


def option(args, base: dict, name: str):
    """``args.name`` when given on the command line (not None), else ``base[name]`` (the --quick
    or default value)."""
    value = getattr(args, name)
    return base[name] if value is None else value


def require_positive(config, names: Sequence[str]) -> None:
    """Exit with ``--NAME must be >= 1`` for the first of ``config``'s fields ``names`` below 1."""
    for name in names:
        if getattr(config, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")


def prepare_driver(device: str, threads: int | None) -> int | None:
    """Driver side, before any measurement: refuse ``--device cuda`` without a usable GPU (prints
    why, returns exit code 2) and apply ``--threads``; returns None when the run can go on."""
    if device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available to torch", file=sys.stderr)
        return 2
    if threads:
        torch.set_num_threads(threads)
    return None


def run_script(args, measure: Callable[[dict], dict], make_config: Callable, drive: Callable[..., int]) -> int:
    """The entry point of a benchmark that measures in worker processes: as a worker
    (``args.worker``), :func:`serve_worker`; as the driver, ``config = make_config(args)``,
    :func:`prepare_driver` on its ``device`` and ``threads``, then ``drive(config)``. Returns the
    exit code."""
    if args.worker:
        return serve_worker(args.worker, measure)
    config = make_config(args)
    refused = prepare_driver(config.device, config.threads)
    return refused if refused is not None else drive(config)


def _kill_group(process: subprocess.Popen) -> None:
    """Kill the process group of a worker started in its own session (the worker and its children)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _parse_worker_output(stdout: str) -> dict | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    return None


def run_isolated(script: Path, spec: dict, timeout_s: float, env: dict[str, str] | None = None) -> dict:
    """Driver side: run ``python script --worker <spec as JSON>`` in a fresh process (its own
    session, environment extended by ``env``) and return the dict it reports.

    Never raises for a worker's failure: a timeout gives ``{"status": "skipped: timed out ..."}``, a
    worker killed by SIGKILL (the OOM killer, as a rule) ``{"status": "OOM: ..."}``, any other exit
    without a result ``{"status": "error: ..."}`` with the last line of its stderr.
    """
    command = [sys.executable, str(script), "--worker", json.dumps(spec)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        return {"status": f"skipped: worker timed out after {timeout_s:g} s"}
    result = _parse_worker_output(stdout)
    if result is not None:
        return result
    if process.returncode == -signal.SIGKILL:
        return {"status": "OOM: worker killed by SIGKILL (out of memory)"}
    tail = stderr.strip().splitlines()[-1][:200] if stderr.strip() else "no output"
    return {"status": f"error: worker exited with code {process.returncode}: {tail}"}


# ---------------------------------------------------------------------------------------------
# Environment


def git_sha(directory: Path) -> str:
    """``git rev-parse HEAD`` in ``directory``, or "unknown" outside a repository."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True,
                              timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() or "unknown"


def git_dirty(directory: Path) -> bool | None:
    """Whether the work tree of ``directory`` has uncommitted changes; None outside a repository."""
    try:
        done = subprocess.run(["git", "status", "--porcelain"], cwd=directory, capture_output=True, text=True,
                              timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(done.stdout.strip())


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else ``platform.processor()``, else "unknown"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def device_name(device: torch.device) -> str:
    """The GPU's name for a CUDA device, else the CPU model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def utc_timestamp() -> str:
    """The current UTC time as ``YYYYMMDDTHHMMSSZ``."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def environment_header(benchmark: str, device: torch.device, repo: Path, threads: int, extra: dict | None = None) -> dict:
    """The header of a results file: what ran where, with which software, from which commit."""
    from coun_fast import info

    report = info()
    header = {
        "benchmark": benchmark,
        "timestamp": utc_timestamp(),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "device": device.type,
        "device_name": device_name(device),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "coun_fast_version": report["version"],
        "coun_fast_info": report,
        "git_sha": git_sha(repo),
        "git_dirty": git_dirty(repo),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "timing_method": timing_method(device),
        "memory_method": memory_method(device),
    }
    header.update(extra or {})
    return header


# ---------------------------------------------------------------------------------------------
# Results


RESULTS_FORMAT = 1
"""The version of a results file's layout (its ``format_version``): 1 = ``{"format_version",
"header", "rows"}``, with every path inside the results folder relative to it."""


def write_results(rows: list[dict], header: dict, out_dir: Path, stem: str) -> tuple[Path, Path]:
    """Write ``<stem>.json`` (``{"format_version": 1, "header": ..., "rows": [...]}``) and
    ``<stem>.csv`` (the rows; the columns of the first row) under ``out_dir``, created if needed,
    each replaced atomically; paths inside ``out_dir`` are written relative to it (see
    :func:`coun_fast.files.relative_paths`). Returns the two paths."""
    from coun_fast.files import relative_paths, write_text_atomic

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out_dir / f"{stem}.json", out_dir / f"{stem}.csv"
    header, rows = relative_paths(header, out_dir), relative_paths(rows, out_dir)
    write_text_atomic(json_path, json.dumps({"format_version": RESULTS_FORMAT, "header": header, "rows": rows},
                                            indent=1) + "\n")
    columns = list(rows[0]) if rows else []
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(csv_path, text.getvalue())
    return json_path, csv_path


def format_table(rows: list[dict], columns: Sequence[tuple[str, Callable[[dict], str]]]) -> str:
    """Rows as plain text in aligned columns: ``columns`` pairs a heading with a function giving a
    row's cell text. Cells that look numeric are right-aligned, others left-aligned."""
    cells = [[heading for heading, _ in columns]] + [[render(row) for _, render in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]

    def numeric(text: str) -> bool:
        try:
            float(text.removesuffix("x"))
        except ValueError:
            return False
        return True

    lines = []
    for line in cells:
        parts = [text.rjust(width) if numeric(text) else text.ljust(width) for text, width in zip(line, widths)]
        lines.append("  ".join(parts).rstrip())
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def timing_dict(timing: Timing) -> dict:
    """A :class:`Timing` as a plain dict (for JSON between worker and driver)."""
    return asdict(timing)
