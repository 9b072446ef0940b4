"""The ``coun-fast`` command.

    coun-fast info    what this installation can do (extension, CUDA, DALI, versions)
    coun-fast demo    the fused contrastive losses against the PyTorch reference, on random features
    coun-fast data    a data set's summary, and a PNG grid of augmented views
"""

from __future__ import annotations

import argparse
import sys

from coun_fast import demo
from coun_fast.capabilities import format_info, info
from coun_fast.data import preview


def _info(_args: argparse.Namespace) -> int:
    print(format_info(info()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coun-fast",
        description="Fast contrastive machine unlearning: fused contrastive losses (CPU and CUDA) and tools.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info_parser = commands.add_parser("info", help="show what this installation can do",
                                      description="Show the extension, CUDA, DALI and version report.")
    info_parser.set_defaults(run=_info)

    demo_parser = commands.add_parser(
        "demo", help="compare the fused losses with the PyTorch reference",
        description=("Compute NT-Xent, CoUn's cross-view InfoNCE and SupCon on random features with the fused "
                     "kernels and with the pure-PyTorch reference; print both losses, the largest gradient "
                     "difference, and the time of forward+backward for each."))
    demo.add_arguments(demo_parser)
    demo_parser.set_defaults(run=demo.run)

    data_parser = commands.add_parser(
        "data", help="summarize a data set and draw augmented samples",
        description=preview.build_parser().description)
    preview.add_arguments(data_parser)
    data_parser.set_defaults(run=preview.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
