"""The ``coun-fast`` command.

    coun-fast demo      the whole workflow on an embedded data set: Original, Retrain, FT, CoUn, metrics
    coun-fast train     train an Original model
    coun-fast unlearn   unlearn a forget set from an Original (coun, ft, retrain, ...)
    coun-fast evaluate  UA, RA, TA, MIA-Efficacy and Avg.Gap of runs
    coun-fast run       an experiment file: methods x seeds x scenario, cached Original/Retrain, tables, charts
    coun-fast data      a data set's summary, and a PNG grid of augmented views
    coun-fast kernels   the fused contrastive losses against the PyTorch reference
    coun-fast info      what this installation can do (extension, CUDA, DALI, versions)

Every subcommand explains its options with --help. Results (tables, "wrote ...") go to standard
output; the steps of a run, warnings and progress bars to standard error, through :mod:`logging`:
``-q`` keeps only warnings and errors (and turns the progress bars off), the default adds each
command's step lines, ``-v`` every informational record of the package (e.g. which augmentation
backend a loader picked, and why), ``-vv`` the debug records too.

Under ``torchrun --nproc_per_node=K`` (the environment says ``WORLD_SIZE`` > 1), ``train``,
``unlearn`` and ``run`` run on all K ranks (:data:`DISTRIBUTED_COMMANDS`): the command joins the
process group first (NCCL on GPUs, each rank on cuda:LOCAL_RANK; gloo on the CPU) and ends it at
exit; rank 0 writes the run folders and prints the results, the other ranks print only warnings
and errors. ``evaluate``, ``data``, ``kernels``, ``info`` and ``run --check`` / ``run --list`` run
on rank 0 alone (the others exit at once); ``demo`` is refused (not yet supported under torchrun).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from typing import Iterator

from tqdm.contrib.logging import logging_redirect_tqdm

from coun_fast import commands as commands_module
from coun_fast import demo, distributed, kernel_demo
from coun_fast._version import __version__
from coun_fast.capabilities import format_info, info
from coun_fast.data import preview
from coun_fast.files import describe_os_error


def _info(_args: argparse.Namespace) -> int:
    print(format_info(info()))
    return 0


def _no_arguments(_parser: argparse.ArgumentParser) -> None:
    pass


# (name, one-line help, description, add_arguments, run), in the order --help lists them.
SUBCOMMANDS = [
    ("demo", "the whole unlearning workflow on an embedded data set, with the metrics table",
     demo.__doc__.split("\n\n", 1)[1].strip(), demo.add_arguments, demo.run),
    ("train", "train an Original model on a data set",
     "Train the Original model on the whole training split (the paper's recipe by default: SGD 0.1, momentum "
     "0.9, wd 5e-4, batch 256, 182 epochs, lr x0.1 at 50% and 75%). Writes the run folder OUT (model.pt, "
     "checkpoint.pt) as a unit: a failed run leaves an existing OUT untouched, --overwrite replaces a finished "
     "one, --resume continues a killed one.", commands_module.add_train_arguments, commands_module.run_train),
    ("unlearn", "unlearn a forget set from an Original model",
     "Make a forget request (random ratio, whole classes, or sequential chunks) of the Original's training set "
     "and run an unlearning method from the Original. CoUn, FT and Retrain never read the forget set. Retrain "
     "uses the Original's recipe unless --preset/options say otherwise. Writes the run folder OUT (model.pt, "
     "split.npz, checkpoint.pt) as a unit: a failed run leaves an existing OUT untouched, --overwrite replaces a "
     "finished one, --resume continues a killed one.",
     commands_module.add_unlearn_arguments, commands_module.run_unlearn),
    ("evaluate", "UA, RA, TA, MIA-Efficacy and Avg.Gap of runs",
     "Evaluate runs on their forget/retain split: UA (100 - forget accuracy), RA, TA, MIA-Efficacy (SalUn's "
     "confidence SVC), and with --retrain the Avg.Gap to Retrain. Prints a markdown table.",
     commands_module.add_evaluate_arguments, commands_module.run_evaluate),
    ("run", "run an experiment file (methods x seeds), with tables and charts",
     commands_module.RUN_DESCRIPTION, commands_module.add_run_arguments, commands_module.run_experiment_command),
    ("data", "summarize a data set and draw augmented samples", preview.build_parser().description,
     preview.add_arguments, preview.run),
    ("kernels", "compare the fused losses with the PyTorch reference",
     "Compute NT-Xent, CoUn's cross-view InfoNCE and SupCon on random features with the fused kernels and "
     "with the pure-PyTorch reference; print both losses, the largest gradient difference, and the time of "
     "forward+backward for each.", kernel_demo.add_arguments, kernel_demo.run),
    ("info", "show what this installation can do", "Show the extension, CUDA, DALI and version report.",
     _no_arguments, _info),
]


# -- output: logging and verbosity ------------------------------------------------------------------
STEP_LOGGERS = ("coun_fast.experiment", "coun_fast.demo")
"""The loggers whose INFO records are a command's step lines, shown by default; the package's
other INFO records (data loading, backends, caches) need ``-v``."""


class _Verbosity(logging.Filter):
    """Lets through what ``verbosity`` (-1 quiet, 0 default, 1 ``-v``, 2 ``-vv``) shows."""

    def __init__(self, verbosity: int) -> None:
        super().__init__()
        self.verbosity = verbosity

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING or self.verbosity >= 2:
            return True
        if record.levelno < logging.INFO or self.verbosity < 0:
            return False
        return self.verbosity >= 1 or record.name.startswith(STEP_LOGGERS)


class _Format(logging.Formatter):
    """Step lines as they are; warnings and errors prefixed with their level; with ``-v`` every
    record with the logger's name."""

    def __init__(self, verbosity: int) -> None:
        super().__init__()
        self.verbosity = verbosity

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self.verbosity >= 1:
            return f"{record.levelname.lower()} {record.name}: {text}"
        return f"{record.levelname.lower()}: {text}" if record.levelno >= logging.WARNING else text


@contextlib.contextmanager
def console_logging(verbosity: int) -> Iterator[None]:
    """While the block runs, the package's log records (logger ``coun_fast``) go to standard error,
    filtered by ``verbosity`` and written above any progress bar (tqdm); the logger's handlers and
    level are restored afterwards. Records still propagate to the root logger's handlers, if any."""
    logger = logging.getLogger("coun_fast")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_Verbosity(verbosity))
    handler.setFormatter(_Format(verbosity))
    level = logger.level
    logger.setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO if verbosity >= 0 else logging.WARNING)
    logger.addHandler(handler)
    try:
        with logging_redirect_tqdm(loggers=[logger]):
            yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _verbosity_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # On the subcommands the options default to "not given", so that `coun-fast -v run` and
    # `coun-fast run -v` both work.
    default = {} if top else {"default": argparse.SUPPRESS}
    group = parser.add_argument_group("output")
    group.add_argument("-v", "--verbose", action="count", help="more detail on standard error: -v every "
                       "informational message (e.g. the augmentation backend and why), -vv debug messages too",
                       **({"default": 0} if top else default))
    group.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors; no progress bars",
                       **default)


def _threads_option(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # Like -v: `coun-fast --threads 1 demo` and `coun-fast demo --threads 1` both work.
    parser.add_argument("--threads", metavar="N", dest="cpu_threads", default=None if top else argparse.SUPPRESS,
                        help="CPU threads: a positive integer, auto (default: the free cores, and one thread for "
                             "small work; also COUN_FAST_THREADS), or torch (torch's own count)")


COMPUTING_COMMANDS = ("demo", "train", "unlearn", "evaluate", "run", "kernels")
"""Commands whose CPU thread count :mod:`coun_fast.threads` chooses at their start."""


def _choose_threads(args: argparse.Namespace) -> None:
    """Apply ``--threads`` (ValueError for a bad value) and choose the process's CPU thread count
    for a computing command (fit chooses again for each training run)."""
    from coun_fast import threads

    if args.cpu_threads is not None:
        threads.pin(threads.parse(args.cpu_threads, "--threads"))
    if args.command in COMPUTING_COMMANDS:
        threads.apply_to_process(f"coun-fast {args.command}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coun-fast",
        description="Fast contrastive machine unlearning: CoUn and its baselines, the field's evaluation, "
                    "fused contrastive losses (CPU and CUDA) and on-device augmentation.",
        epilog="Start with 'coun-fast demo'. Each command has --help. train, unlearn and run also run on "
               "several GPUs (or CPU processes) under torchrun, e.g. 'torchrun --standalone --nproc_per_node=4 "
               "-m coun_fast unlearn ...' (README: Several GPUs).",
    )
    parser.add_argument("--version", action="version", version=f"coun-fast {__version__}")
    _verbosity_options(parser, top=True)
    _threads_option(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, summary, description, add_arguments, run in SUBCOMMANDS:
        sub = commands.add_parser(name, help=summary, description=description)
        add_arguments(sub)
        _verbosity_options(sub, top=False)
        if name in COMPUTING_COMMANDS:
            _threads_option(sub, top=False)
        sub.set_defaults(run=run)
    return parser


def _verbosity(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """-1 (``-q``), 0 or the number of ``-v``; ``-q`` also turns the progress bars off."""
    if args.quiet and args.verbose:
        parser.error("-q/--quiet and -v/--verbose contradict each other; give one of them")
    if args.quiet:
        if hasattr(args, "no_progress"):
            args.no_progress = True
        return -1
    return args.verbose


DISTRIBUTED_COMMANDS = ("train", "unlearn", "run")
"""Commands that run on every rank under torchrun (DistributedDataParallel)."""
MAIN_RANK_COMMANDS = ("evaluate", "data", "kernels", "info")
"""Commands that rank 0 alone runs under torchrun (the other ranks exit at once)."""


def _main_rank_only(args: argparse.Namespace) -> bool:
    """Whether rank 0 alone runs ``args`` under torchrun: :data:`MAIN_RANK_COMMANDS`, and ``run``
    when it only checks (``--check``) or lists (``--list``)."""
    return args.command in MAIN_RANK_COMMANDS or (args.command == "run" and (args.check or args.list))


def _launched_ranks(args: argparse.Namespace) -> int:
    """The number of ranks torchrun started (1 without torchrun); ValueError for a command that
    does not run under it, or a device that contradicts one GPU per rank."""
    ranks = distributed.launched_world_size()
    if ranks == 1 or _main_rank_only(args):
        return ranks
    if args.command not in DISTRIBUTED_COMMANDS:
        raise ValueError(f"'coun-fast {args.command}' is not yet supported under torchrun (WORLD_SIZE={ranks}); "
                         f"commands that are: {', '.join(DISTRIBUTED_COMMANDS)}")
    device = getattr(args, "device", None)
    if device is not None and ":" in str(device):
        raise ValueError(f"--device {device}: under torchrun each rank trains on its own GPU, cuda:LOCAL_RANK; give "
                         "--device cuda (or cpu), or leave it out")
    return ranks


def _device_type(args: argparse.Namespace) -> str:
    """``cuda`` or ``cpu``: where a distributed command trains (the process group's backend follows)."""
    from coun_fast.train import parse_device

    device = getattr(args, "device", None)
    if device is not None:
        return parse_device(device).type
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    joined: list[bool] = []  # set when this call joins the process group that torchrun describes
    try:
        code = _run(parser, args, joined)
    except BaseException as error:
        if not joined:
            raise
        code = distributed.exit_status(error)
    if joined:  # a rank of a torchrun job: end the group, then the process (distributed.exit_process)
        distributed.exit_process(code)
    return code


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace, joined: list[bool]) -> int:
    verbosity = _verbosity(parser, args)
    prefix = ""
    try:
        if _launched_ranks(args) > 1:
            rank = int(os.environ.get("RANK", "0"))
            if _main_rank_only(args):
                if rank != 0:
                    return 0
            elif args.command in DISTRIBUTED_COMMANDS and distributed.init_from_env(_device_type(args)):
                joined.append(True)
            if rank != 0:  # rank 0 prints the results; the others only warnings and errors
                prefix = f"[rank {rank}] "
                verbosity = -1
                if hasattr(args, "no_progress"):
                    args.no_progress = True
        with console_logging(verbosity), _quiet_stdout(bool(prefix)):
            _choose_threads(args)
            return args.run(args)
    except (ValueError, TypeError, KeyError, OSError) as error:
        # Bad input or a file-system problem: one line, no traceback (COUN_FAST_DEBUG=1 shows it).
        if os.environ.get("COUN_FAST_DEBUG"):
            raise
        parser.exit(2, f"{prefix}coun-fast {args.command}: error: {error_line(error)}\n")
    except KeyboardInterrupt as error:  # Ctrl-C: say what was kept, without a traceback
        if os.environ.get("COUN_FAST_DEBUG"):
            raise
        notes = "".join(f"; {note}" for note in getattr(error, "__notes__", []))
        parser.exit(130, f"{prefix}coun-fast {args.command}: interrupted{notes}\n")


@contextlib.contextmanager
def _quiet_stdout(quiet: bool) -> Iterator[None]:
    """Standard output discarded for the block when ``quiet`` (the ranks other than 0)."""
    if not quiet:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


def error_line(error: BaseException) -> str:
    """``error`` in one line: a file-system error as its reason and path, then any notes."""
    if isinstance(error, OSError) and error.errno is not None and error.strerror:
        text = describe_os_error(error)
    else:
        text = str(error) or type(error).__name__
    text = "; ".join([text, *getattr(error, "__notes__", [])])
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
