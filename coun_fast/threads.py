"""How many CPU threads a computation gets: from the cores that are free, the size of the work, or the user's pin.

On a machine shared with other jobs, intra-op threads that outnumber the free cores make every
parallel region wait for a thread the scheduler has parked behind another process: training a
small model with 2 threads beside one busy process on 2 cores ran 25x slower than idle, with 1
thread it kept 0.9x. :func:`choose` therefore decides the count:

* a pin wins: :func:`pin` (the Python API; ``coun-fast --threads N``), else the environment
  variable ``COUN_FAST_THREADS`` (a positive integer, ``auto``, or ``torch``: leave torch's count
  as it is, the behaviour before this policy), else an explicit ``OMP_NUM_THREADS`` (torchrun sets
  it to 1 for its ranks);
* otherwise (``auto``) the smallest of: torch's current count (``torch.get_num_threads()``: the
  physical cores, or what the caller set), the free cores (the cores this process may use,
  :func:`usable_cores`, less the cores other processes keep busy during a short /proc/stat sample,
  :func:`busy_cores`; a core counts as free while less than half of it is busy), and for work of a
  known size one thread per :data:`WORK_PER_THREAD` multiply-adds (small models and small batches
  on one thread).

The choice is logged at info level with its reason. It is made once per call of :func:`choose`
(:func:`coun_fast.train.fit` chooses at its start and keeps the count for the whole run): the
results of a computation depend on its thread count in the last bits, which training amplifies
(small_cnn on digits: weights apart by up to 0.07 after 2 epochs with 1 and with 2 threads), so a
count that changed mid-run with the load would make runs irreproducible. The same inputs and the
same thread count give the same results; pin the count (``--threads``, ``COUN_FAST_THREADS``) for
results that must not depend on the machine's load when a run starts.
The fused CPU kernels take the same count (``torch.get_num_threads()``); their own thread pool
sleeps on a condition variable between calls and never spins.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import resource
import time
from pathlib import Path
from typing import Iterator

# torch is imported inside the functions that use it: coun_fast/__init__.py applies OMP_ENV before it loads.
log = logging.getLogger("coun_fast.threads")

ENV = "COUN_FAST_THREADS"
"""The environment variable that pins the count: a positive integer, ``auto`` or ``torch``."""
WORK_PER_THREAD = 5_000_000
"""Multiply-adds of one forward pass of a batch per thread of an ``auto`` choice: below twice
this, one thread. On the idle 2-core machine (small_cnn on digits at 16x16, 2.6M multiply-adds a
sample) a second thread trained 1.04x faster at batch 1 and 2, 1.07x at 4, 1.15x at 8, 1.35x at
16: below about 10M a second core gains a few percent, and takes a core that other work could use."""
OMP_ENV = {"GOMP_SPINCOUNT": "10000"}
"""The OpenMP settings that importing coun_fast before torch puts into the environment (unless it
sets them already), as the ``coun-fast`` command does: a thread of torch's OpenMP runtime (libgomp)
that waits at the end of a parallel region spins 10,000 times (microseconds) instead of 300,000
before it sleeps, so it does not hold a core that another process (or the fused kernels' pool)
needs. ``OMP_WAIT_POLICY=PASSIVE`` (sleep at once) cost the demo's training a third of its idle
speed on the 2-core machine (3,850 against 5,650 images/s); this spin count costs nothing
measurable there. OpenMP reads these once, when torch loads it: after ``import torch`` they change
nothing."""
SAMPLE_S = 0.1
"""Seconds of the /proc/stat sample that measures the other processes' load."""

_pinned: int | str | None = None  # set by pin(): a count, "auto", "torch", or None (not pinned here)
_ceiling: int | None = None  # torch's count before apply_to_process() lowered it


@dataclasses.dataclass(frozen=True)
class Choice:
    """A thread count and why it was chosen (for the log)."""

    threads: int
    reason: str


def parse(value: object, what: str = ENV) -> int | str:
    """``value`` as a pin: a positive integer, ``"auto"`` or ``"torch"``; ValueError naming ``what``
    (the option or variable it came from) otherwise."""
    text = str(value).strip().lower()
    if text in ("auto", "torch"):
        return text
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1 or isinstance(value, bool):
        raise ValueError(f"{what} must be a positive integer, 'auto' or 'torch'; got {value!r}")
    return count


def pin(threads: int | str | None) -> None:
    """Pin the thread count of every later :func:`choose` in this process: a positive integer,
    ``"auto"`` (the load- and size-based choice, even when the environment pins a count),
    ``"torch"`` (torch's current count), or None to fall back to the environment. ValueError for
    anything else."""
    global _pinned
    _pinned = None if threads is None else parse(threads, "threads")


def pinned() -> tuple[int | str, str] | None:
    """The pin in force (a count or ``"torch"``) and where it comes from, or None for the ``auto``
    choice. ValueError for a bad ``COUN_FAST_THREADS``."""
    if _pinned is not None:
        return None if _pinned == "auto" else (_pinned, "pinned by coun_fast.threads.pin / --threads")
    text = os.environ.get(ENV, "").strip()
    if text:
        value = parse(text, ENV)
        return None if value == "auto" else (value, f"pinned by {ENV}={text}")
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) >= 1:
        return int(omp), f"pinned by OMP_NUM_THREADS={omp}"
    return None


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _busy_seconds() -> float | None:
    """Busy CPU seconds of the cores this process may use, since boot (/proc/stat), or None."""
    try:
        allowed = {f"cpu{index}" for index in os.sched_getaffinity(0)}
        lines = Path("/proc/stat").read_text().splitlines()
    except (AttributeError, OSError):
        return None
    busy = 0
    for line in lines:
        fields = line.split()
        if fields and fields[0] in allowed:
            values = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
            busy += sum(values) - values[3] - values[4]
    return busy / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def busy_cores(sample_s: float = SAMPLE_S) -> float | None:
    """How many of the usable cores other processes keep busy: the cores' busy time over a
    ``sample_s`` sample, less this process's own; None where /proc/stat cannot be read."""
    start, own_start, clock = _busy_seconds(), _own_seconds(), time.monotonic()
    if start is None:
        return None
    time.sleep(sample_s)
    end, own_end, wall = _busy_seconds(), _own_seconds(), time.monotonic() - clock
    if end is None or wall <= 0:
        return None
    return max(0.0, ((end - start) - (own_end - own_start)) / wall)


def choose(work: float | None = None, *, sample_s: float = SAMPLE_S) -> Choice:
    """The thread count for work of ``work`` multiply-adds per parallel step (None: unknown), with
    its reason; see the module's docstring for the rule. Reads the pin first, samples the load
    (``sample_s`` seconds) only for an ``auto`` choice."""
    import torch

    current = _ceiling or torch.get_num_threads()
    fixed = pinned()
    if fixed is not None:
        value, source = fixed
        if value == "torch":
            return Choice(current, f"torch's count ({source})")
        return Choice(int(value), source)
    cores = usable_cores()
    busy = busy_cores(sample_s)
    free = cores if busy is None else max(1, min(cores, math.floor(cores - busy + 0.5)))
    threads, reasons = current, [f"torch's count {current}"]
    load = "unknown load" if busy is None else f"other processes keep {busy:.1f} busy"
    if free < threads:
        threads, reasons = free, [f"{free} of {cores} cores free ({load})"]
    else:
        reasons.append(f"{free} of {cores} cores free ({load})")
    if work is not None:
        by_size = max(1, int(work // WORK_PER_THREAD))
        if by_size < threads:
            threads, reasons = by_size, [f"work of {work / 1e6:.1f}M multiply-adds per step"]
    return Choice(threads, "auto: " + "; ".join(reasons))


def apply_to_process(what: str = "this process") -> Choice:
    """Set torch's count for the rest of the process to :func:`choose` (the work unknown), for
    what no other choice covers (a command's evaluation passes, for example); later ``auto``
    choices may still go up to the count torch had before. Logged at info level."""
    import torch

    global _ceiling
    if _ceiling is None:
        _ceiling = torch.get_num_threads()
    choice = choose()
    log.info("%s: %d CPU thread%s (%s)", what, choice.threads, "" if choice.threads == 1 else "s", choice.reason)
    torch.set_num_threads(choice.threads)
    return choice


@contextlib.contextmanager
def using(choice: Choice, what: str = "computation") -> Iterator[Choice]:
    """``torch.set_num_threads(choice.threads)`` for the block (logged at info level with the
    reason), torch's previous count restored afterwards."""
    import torch

    before = torch.get_num_threads()
    log.info("%s: %d CPU thread%s (%s)", what, choice.threads, "" if choice.threads == 1 else "s", choice.reason)
    if choice.threads != before:
        torch.set_num_threads(choice.threads)
    try:
        yield choice
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)

