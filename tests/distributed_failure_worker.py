"""One rank of the failure tests of tests/test_distributed_training.py:
``python distributed_failure_worker.py RANK WORLD DIR CASE``.

Joins a gloo group (file rendezvous in DIR) and trains FT with :func:`coun_fast.train.fit` under
DistributedDataParallel, failing on purpose on one rank (CASE):

* ``evaluation``: rank 0's per-epoch evaluation raises (the others wait for it);
* ``checkpoint``: rank 0 cannot write the checkpoint (a folder stands where the file goes);
* ``step``: rank 1 raises in its third training step (rank 0 waits for its gradients).

The test checks that every rank ends, with a non-zero exit and the error, instead of waiting.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distributed_training_cases import CONFIG, data, initial_model  # noqa: E402
from helpers import rank_of_group  # noqa: E402

from coun_fast.train import CrossEntropy, fit  # noqa: E402


class FailingStep(CrossEntropy):
    """Cross-entropy that raises in the third call on rank 1."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank, self.calls = rank, 0

    def __call__(self, model, batch):
        self.calls += 1
        if self.rank == 1 and self.calls == 3:
            raise RuntimeError("rank 1 fails in its third step")
        return super().__call__(model, batch)


def main() -> None:
    with rank_of_group(sys.argv[1:4]) as (rank, _, directory):
        case, train = sys.argv[4], data().train

        def evaluation_fails(model, epoch):
            raise OSError("No space left on device (injected)")

        if case == "evaluation":
            fit(initial_model(), train, CrossEntropy(), CONFIG, on_epoch_end=evaluation_fails)
        elif case == "checkpoint":
            (directory / "run" / "checkpoint.pt").mkdir(parents=True, exist_ok=True)
            fit(initial_model(), train, CrossEntropy(), CONFIG, run_dir=directory / "run")
        elif case == "step":
            fit(initial_model(), train, FailingStep(rank), CONFIG)
        else:
            raise SystemExit(f"unknown case {case!r}")
        print("finished without an error")


if __name__ == "__main__":
    main()
