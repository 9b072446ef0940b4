"""One rank of tests/test_distributed_training.py's experiment tests:
``python distributed_experiment_worker.py RANK WORLD DIR [CASE]``.

Joins a gloo process group (file rendezvous in DIR) and runs the experiment CASE (a name of
:data:`distributed_training_cases.EXPERIMENTS`, default ``tiny``) into DIR/two_ranks (models cached
in DIR/cache), then runs it again (every step finished before: skipped on every rank); both
payloads go to DIR/rank{RANK}.pt.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distributed_training_cases import EXPERIMENTS, experiment  # noqa: E402
from helpers import rank_of_group  # noqa: E402

from coun_fast.experiment import run_experiment  # noqa: E402


def main() -> None:
    case = sys.argv[4] if len(sys.argv) > 4 else "tiny"
    with rank_of_group(sys.argv[1:]) as (rank, _, directory):
        config = experiment(directory / "two_ranks", directory / "cache", **EXPERIMENTS[case])
        first = run_experiment(config, progress=False, log=None)
        again = run_experiment(config, progress=False, log=None)
        torch.save({"first": first, "again": again}, directory / f"rank{rank}.pt")


if __name__ == "__main__":
    main()
