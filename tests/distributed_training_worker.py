"""One rank of tests/test_distributed_training.py: ``python distributed_training_worker.py RANK WORLD DIR``.

Joins a gloo process group (file rendezvous in DIR) and, with :func:`coun_fast.train.fit` under
DistributedDataParallel, trains the runs that the test compares with one process (the cases are
in :func:`distributed_training_cases.runs`): each run's final weights, and the errors that a
distributed run must raise, go to DIR/rank{RANK}.pt.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distributed_training_cases import (METHODS, THREE_RANKS, THREE_RANKS_CONFIG, Stopped, data,  # noqa: E402
                                        errors, resume_workflow, run, run_method)
from helpers import rank_of_group  # noqa: E402


def main() -> None:
    with rank_of_group(sys.argv[1:]) as (rank, _, directory):
        results = {}
        splits = data()
        train = splits.train
        if sys.argv[4:] == ["three_ranks"]:  # the runs that 3 ranks repeat
            results = {name: run_method(name, splits, THREE_RANKS_CONFIG, changes)
                       for name, changes in THREE_RANKS.items()}
            torch.save(results, directory / f"rank{rank}.pt")
            return
        for name in ("coun", "ft", "coun_rank", "ga", "l1_sparse", "neggrad_plus"):
            results[name] = run(name, train)
        for name in METHODS:
            results[name] = run_method(name, splits)
        # a run that one process stopped after its first epoch, resumed here by the ranks
        results["resumed_here"] = run("coun", train, run_dir=directory / "stopped_in_one", resume=True)
        # the other way: stopped here after the first epoch (the test resumes it in one process)
        try:
            run("coun", train, run_dir=directory / "stopped_here", stop_after_epochs=1)
        except Stopped:
            pass
        results["workflow"] = resume_workflow(directory)  # a run folder that one process left unfinished
        results["errors"] = errors(train, directory)
        torch.save(results, directory / f"rank{rank}.pt")


if __name__ == "__main__":
    main()
