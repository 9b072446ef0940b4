"""The ``coun-fast`` command.

    coun-fast demo      the whole workflow on an embedded data set: Original, Retrain, FT, CoUn, metrics
    coun-fast train     train an Original model
    coun-fast unlearn   unlearn a forget set from an Original (coun, ft, retrain, ...)
    coun-fast evaluate  UA, RA, TA, MIA-Efficacy and Avg.Gap of runs
    coun-fast data      a data set's summary, and a PNG grid of augmented views
    coun-fast kernels   the fused contrastive losses against the PyTorch reference
    coun-fast info      what this installation can do (extension, CUDA, DALI, versions)

Every subcommand explains its options with --help.
"""

from __future__ import annotations

import argparse
import os
import sys

from coun_fast import commands as commands_module
from coun_fast import demo, kernel_demo
from coun_fast.capabilities import format_info, info
from coun_fast.data import preview


def _info(_args: argparse.Namespace) -> int:
    print(format_info(info()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coun-fast",
        description="Fast contrastive machine unlearning: CoUn and its baselines, the field's evaluation, "
                    "fused contrastive losses (CPU and CUDA) and on-device augmentation.",
        epilog="Start with 'coun-fast demo'. Each command has --help.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info_parser = commands.add_parser("info", help="show what this installation can do",
                                      description="Show the extension, CUDA, DALI and version report.")
    info_parser.set_defaults(run=_info)

    demo_parser = commands.add_parser(
        "demo", help="the whole unlearning workflow on an embedded data set, with the metrics table",
        description=demo.__doc__.split("\n\n", 1)[1].strip() if demo.__doc__ else None)
    demo.add_arguments(demo_parser)
    demo_parser.set_defaults(run=demo.run)

    train_parser = commands.add_parser(
        "train", help="train an Original model on a data set",
        description="Train the Original model on the whole training split (the paper's recipe by default: SGD "
                    "0.1, momentum 0.9, wd 5e-4, batch 256, 182 epochs, lr x0.1 at 50%% and 75%%). Writes OUT/model.pt; "
                    "--resume continues a killed run.")
    commands_module.add_train_arguments(train_parser)
    train_parser.set_defaults(run=commands_module.run_train)

    unlearn_parser = commands.add_parser(
        "unlearn", help="unlearn a forget set from an Original model",
        description="Make a forget request (random ratio, whole classes, or sequential chunks) of the Original's "
                    "training set and run an unlearning method from the Original. CoUn, FT and Retrain never "
                    "read the forget set. Retrain uses the Original's recipe unless --preset/options say otherwise. "
                    "Writes OUT/model.pt and OUT/split.npz.")
    commands_module.add_unlearn_arguments(unlearn_parser)
    unlearn_parser.set_defaults(run=commands_module.run_unlearn)

    evaluate_parser = commands.add_parser(
        "evaluate", help="UA, RA, TA, MIA-Efficacy and Avg.Gap of runs",
        description="Evaluate runs on their forget/retain split: UA (100 - forget accuracy), RA, TA, "
                    "MIA-Efficacy (SalUn's confidence SVC), and with --retrain the Avg.Gap to Retrain. Prints a "
                    "markdown table.")
    commands_module.add_evaluate_arguments(evaluate_parser)
    evaluate_parser.set_defaults(run=commands_module.run_evaluate)

    kernels_parser = commands.add_parser(
        "kernels", help="compare the fused losses with the PyTorch reference",
        description=("Compute NT-Xent, CoUn's cross-view InfoNCE and SupCon on random features with the fused "
                     "kernels and with the pure-PyTorch reference; print both losses, the largest gradient "
                     "difference, and the time of forward+backward for each."))
    kernel_demo.add_arguments(kernels_parser)
    kernels_parser.set_defaults(run=kernel_demo.run)

    data_parser = commands.add_parser(
        "data", help="summarize a data set and draw augmented samples",
        description=preview.build_parser().description)
    preview.add_arguments(data_parser)
    data_parser.set_defaults(run=preview.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, FileNotFoundError, KeyError) as error:
        # Bad input: say what is wrong without a traceback (COUN_FAST_DEBUG=1 shows it).
        if os.environ.get("COUN_FAST_DEBUG"):
            raise
        parser.exit(2, f"coun-fast {args.command}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
