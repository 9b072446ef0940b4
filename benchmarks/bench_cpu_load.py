"""CPU throughput on an idle machine and beside one busy process: torch's thread count against coun_fast's policy.

    python benchmarks/bench_cpu_load.py                      # 2 rounds, a few minutes on 2 cores
    python benchmarks/bench_cpu_load.py --quick              # 1 round, shorter measurements
    python benchmarks/bench_cpu_load.py --wait-quiet 900     # first wait (up to 900 s) for a 1-min load average < 0.5

Workloads: ``demo`` (fit of the demo's Original: small_cnn on digits at 16x16, batch 64; images/s
of the epochs after the first), ``train`` (``coun-fast train --dataset digits --model small_cnn
--device cpu``'s fit: the paper preset, batch 256, digits at the data set's default size), and
the fused NT-Xent forward+backward on float32 features of D=128 with M=256 and M=4096 rows in all
(calls/s). Policies: ``torch`` (``COUN_FAST_THREADS=torch``: torch's own count and libgomp's
default wait policy, what coun_fast did before ``coun_fast.threads``) and ``auto`` (the default:
the count from the free cores and the size of the work, and :data:`coun_fast.threads.OMP_ENV`, the
OpenMP settings of the ``coun-fast`` command).
Loads: ``idle`` and ``busy`` (beside one core-bound Python loop that this script starts and
stops). Every (round, workload, policy, load) runs in a fresh worker process; rounds repeat the
whole grid, so that a change of the machine's load hits every cell alike. The summary gives, per
workload and policy, the median rate over the rounds idle and busy and their ratio (busy / idle);
the target is a ratio >= 0.5 for ``auto`` on every workload. Cells during which other processes
kept >= 0.25 cores busy are left out of the medians when undisturbed ones exist (``cells``: how
many idle + busy cells each median has).

Other engineers' jobs distort the result: each row records the cores that processes other than
this script's kept busy while it ran (``other_cores``, /proc/stat), and the header the load
averages before and after. Results: ``benchmarks/results/cpu_load_<timestamp>.{json,csv,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as harness  # noqa: E402

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent
WORKLOADS = ("demo", "train", "loss_256", "loss_4096")
POLICIES = ("torch", "auto")
LOADS = ("idle", "busy")
BUSY_LOOP = "while True:\n    pass\n"


@dataclasses.dataclass
class Config:
    rounds: int = 2
    epochs: int = 3
    loss_seconds: float = 2.0
    workloads: tuple = WORKLOADS
    wait_quiet: float = 0.0
    quiet_load: float = 0.5
    timeout: float = 600.0
    out: Path = REPO / "benchmarks" / "results"
    device: str = "cpu"
    threads: int | None = None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=None, help="repetitions of the whole grid (2; --quick 1)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of each training run, the first not timed (3)")
    parser.add_argument("--loss-seconds", type=float, default=None, help="seconds of timed loss calls per cell (2)")
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=None, help="default: all")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                        help="first wait up to S seconds for the 1-min load average to fall below --quiet-load")
    parser.add_argument("--quiet-load", type=float, default=0.5, help="the load average that counts as quiet (0.5)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before a worker is killed (600)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="results folder")
    parser.add_argument("--quick", action="store_true", help="1 round, 2 epochs, 1 s of loss calls")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def make_config(args: argparse.Namespace) -> Config:
    base = dict(rounds=1, epochs=2, loss_seconds=1.0) if args.quick else dict(rounds=2, epochs=3, loss_seconds=2.0)
    config = Config(rounds=harness.option(args, base, "rounds"), epochs=harness.option(args, base, "epochs"),
                    loss_seconds=harness.option(args, base, "loss_seconds"),
                    workloads=tuple(args.workloads or WORKLOADS), wait_quiet=args.wait_quiet,
                    quiet_load=args.quiet_load, timeout=args.timeout, out=args.out)
    harness.require_positive(config, ["rounds"])
    if config.epochs < 2:
        raise SystemExit("--epochs must be >= 2 (the first epoch is not timed)")
    return config


# ---------------------------------------------------------------------------------------------
# Worker


class _Choices(logging.Handler):
    """The messages of coun_fast.threads (what each choice was and why)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _train_rate(workload: str, epochs: int) -> float:
    """Images/s of a fit of ``workload``'s recipe over the epochs after the first."""
    from coun_fast.train import PRESETS, TrainConfig
    from coun_fast.workflow import DataSource, train_original

    if workload == "demo":  # coun_fast.demo's Original
        config, source = TrainConfig(epochs=epochs, lr=0.05, batch_size=64), DataSource("digits", None, 16)
    else:  # coun-fast train --dataset digits --model small_cnn
        config, source = PRESETS["paper"].replace(epochs=epochs), DataSource("digits")
    config = config.replace(device="cpu", progress=False, seed=0)
    with tempfile.TemporaryDirectory() as folder:
        run = train_original(source, "small_cnn", config, Path(folder) / "run")
    timed = run.record["history"][1:]
    return sum(row["images_per_s"] * row["seconds"] for row in timed) / sum(row["seconds"] for row in timed)


def _loss_rate(rows: int, seconds: float, policy: str) -> float:
    """Forward+backward calls/s of the fused NT-Xent on ``rows`` rows of D=128 in all."""
    from coun_fast import functional, threads

    generator = torch.Generator().manual_seed(0)
    z1, z2 = (torch.randn(rows // 2, 128, generator=generator).requires_grad_() for _ in range(2))

    def call() -> None:
        z1.grad = z2.grad = None
        functional.nt_xent(z1, z2, 0.1, backend="fused").backward()

    choice = threads.choose() if policy == "auto" else threads.Choice(torch.get_num_threads(), "torch's count")
    with threads.using(choice, f"nt_xent M={rows}"):
        call()  # warm-up
        calls, started = 0, time.perf_counter()
        while calls < 3 or time.perf_counter() - started < seconds:
            call()
            calls += 1
        return calls / (time.perf_counter() - started)


def measure(spec: dict) -> dict:
    choices = _Choices()
    logging.getLogger("coun_fast.threads").addHandler(choices)
    logging.getLogger("coun_fast.threads").setLevel(logging.INFO)
    workload = spec["workload"]
    if workload in ("demo", "train"):
        rate, unit = _train_rate(workload, spec["epochs"]), "images/s"
    else:
        rate, unit = _loss_rate(int(workload.split("_")[1]), spec["loss_seconds"], spec["policy"]), "calls/s"
    return {"rate": rate, "unit": unit, "choice": choices.messages[-1] if choices.messages else ""}


# ---------------------------------------------------------------------------------------------
# Driver


def _policy_env(policy: str) -> dict[str, str]:
    """The worker's environment for ``policy``: what a user gets from the ``coun-fast`` command."""
    from coun_fast import threads

    if policy == "torch":
        return {threads.ENV: "torch"}
    return {threads.ENV: "auto", **threads.OMP_ENV}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_cell(config: Config, round_: int, workload: str, policy: str, load: str) -> dict:
    """One measurement in a fresh worker, beside a busy loop when ``load`` is busy."""
    spec = {"workload": workload, "policy": policy, "epochs": config.epochs, "loss_seconds": config.loss_seconds}
    other = harness.OtherLoad()
    loadavg = os.getloadavg()[0]
    competitor = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if load == "busy" else None
    competitor_s = 0.0
    try:
        if competitor is not None:
            time.sleep(0.5)  # running before the worker samples the load
        result = harness.run_isolated(SCRIPT, spec, config.timeout, _policy_env(policy))
    finally:
        if competitor is not None:
            competitor_s = _cpu_seconds(competitor.pid)
            competitor.kill()
            competitor.wait()
    other_cores = other.cores()
    return {"round": round_, "workload": workload, "policy": policy, "load": load,
            "rate": result.get("rate"), "unit": result.get("unit"), "status": result.get("status", "ok"),
            "choice": result.get("choice", ""), "competitor_cpu_s": round(competitor_s, 2),
            "other_cores": None if other_cores is None else round(other_cores, 2), "loadavg_1min_before": loadavg}


DISTURBED_CORES = 0.25
"""A cell during which other processes kept this many cores busy or more is disturbed: left out of
the summary's medians where undisturbed cells of the same kind exist (the rows keep it)."""


def _undisturbed(cells: list[dict]) -> list[dict]:
    quiet = [row for row in cells if row["other_cores"] is not None and row["other_cores"] < DISTURBED_CORES]
    return quiet or cells


def summarize(rows: list[dict], config: Config) -> list[dict]:
    """Per workload and policy: median rates over the rounds' undisturbed cells idle and busy, and
    their ratio."""
    summary = []
    for workload in config.workloads:
        for policy in POLICIES:
            cells = {load: _undisturbed([row for row in rows if (row["workload"], row["policy"], row["load"]) ==
                                         (workload, policy, load) and row["rate"] is not None]) for load in LOADS}
            rates = {load: [row["rate"] for row in cells[load]] for load in LOADS}
            idle = statistics.median(rates["idle"]) if rates["idle"] else None
            busy = statistics.median(rates["busy"]) if rates["busy"] else None
            choices = {load: sorted({row["choice"].split(" (")[0].split(": ", 1)[-1] for row in cells[load]})
                       for load in LOADS}
            unit = next((row["unit"] for row in rows if row["workload"] == workload and row["unit"]), "")
            summary.append({"workload": workload, "policy": policy, "unit": unit, "idle": idle, "busy": busy,
                            "cells": f"{len(rates['idle'])}+{len(rates['busy'])}",
                            "ratio": busy / idle if idle and busy else None,
                            "threads_idle": "; ".join(choices["idle"]), "threads_busy": "; ".join(choices["busy"])})
    for row in summary:  # each policy's rate against torch's under the same load
        torch_row = next(r for r in summary if r["workload"] == row["workload"] and r["policy"] == "torch")
        for load in LOADS:
            row[f"{load}_vs_torch"] = row[load] / torch_row[load] if row[load] and torch_row[load] else None
    return summary


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _number(value) -> str:
    return "-" if value is None else f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


COLUMNS = [
    ("workload", lambda r: r["workload"]), ("policy", lambda r: r["policy"]), ("unit", lambda r: r["unit"]),
    ("idle", lambda r: _number(r["idle"])), ("busy", lambda r: _number(r["busy"])),
    ("busy/idle", lambda r: _ratio(r["ratio"])),
    ("idle vs torch", lambda r: _ratio(r["idle_vs_torch"])), ("busy vs torch", lambda r: _ratio(r["busy_vs_torch"])),
    ("cells", lambda r: r["cells"]), ("threads idle", lambda r: r["threads_idle"] or "-"), ("threads busy", lambda r: r["threads_busy"] or "-"),
]


def wait_until_quiet(config: Config) -> bool:
    """Wait up to ``config.wait_quiet`` s for the 1-min load average below ``config.quiet_load``."""
    deadline = time.monotonic() + config.wait_quiet
    while os.getloadavg()[0] >= config.quiet_load:
        if time.monotonic() >= deadline:
            return False
        time.sleep(10)
    return True


PINS = ("OMP_NUM_THREADS", "COUN_FAST_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
"""Variables of the driver's environment that would pin the workers' threads: removed."""


def drive(config: Config) -> int:
    removed = {key: os.environ.pop(key) for key in PINS if key in os.environ}
    if removed:
        print(f"not passed to the workers: {removed}", flush=True)
    quiet = wait_until_quiet(config)
    before = os.getloadavg()
    started = time.perf_counter()
    rows = []
    for round_ in range(config.rounds):
        for workload in config.workloads:
            for policy in POLICIES:
                for load in LOADS:
                    row = run_cell(config, round_, workload, policy, load)
                    rows.append(row)
                    print(f"round {round_} {workload:<9} {policy:<5} {load:<4} {_number(row['rate']):>9} "
                          f"{row['unit'] or row['status']}  other cores {row['other_cores']}  {row['choice']}",
                          flush=True)
    after = os.getloadavg()
    summary = summarize(rows, config)
    table = harness.format_table(summary, COLUMNS)
    worst = min((row["ratio"] for row in summary if row["policy"] == "auto" and row["ratio"] is not None),
                default=None)
    others = [row["other_cores"] for row in rows if row["other_cores"] is not None]
    verdict = (f"auto keeps >= 0.5x of its idle rate beside one busy process on every workload: "
               f"{'yes' if worst is not None and worst >= 0.5 else 'NO'} (worst "
               f"{'-' if worst is None else f'{worst:.2f}'}x)")
    load_line = (f"load average (1, 5, 15 min) before {before[0]:.2f} {before[1]:.2f} {before[2]:.2f}, after "
                 f"{after[0]:.2f} {after[1]:.2f} {after[2]:.2f}; other processes' cores during the cells: median "
                 f"{statistics.median(others) if others else float('nan'):.2f}, max "
                 f"{max(others) if others else float('nan'):.2f}"
                 + ("" if quiet else f" (the machine was NOT quiet: load average >= {config.quiet_load} when it began)"))
    device = torch.device("cpu")
    header = harness.environment_header("cpu_load", device, REPO, torch.get_num_threads(), {
        "config": {**dataclasses.asdict(config), "out": str(config.out)},
        "loadavg_before": before, "loadavg_after": after, "quiet_at_start": quiet,
        "usable_cores": _usable_cores(), "removed_environment": removed, "summary": summary, "verdict": verdict,
        "total_seconds": time.perf_counter() - started,
    })
    stem = f"cpu_load_{header['timestamp']}"
    json_path, csv_path = harness.write_results(rows, header, config.out, stem)
    from coun_fast.files import write_text_atomic

    markdown_path = config.out / f"{stem}.md"
    write_text_atomic(markdown_path, f"# {stem}\n\n{harness.device_name(device)}, {os.cpu_count()} cores; "
                                     f"{header['command']}; git {header['git_sha'][:10]}"
                                     f"{' (dirty)' if header['git_dirty'] else ''}\n\n```\n{table}\n```\n\n"
                                     f"{verdict}\n\n{load_line}\n")
    print()
    print(table)
    print()
    print(verdict)
    print(load_line)
    print(f"wrote {json_path}\nwrote {csv_path}\nwrote {markdown_path}")
    return 0


def _usable_cores() -> int:
    from coun_fast import threads

    return threads.usable_cores()


def main(argv: list[str] | None = None) -> int:
    return harness.run_script(parse_args(argv), measure, make_config, drive)


if __name__ == "__main__":
    sys.exit(main())
