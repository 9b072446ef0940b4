"""Whether two finished runs may be combined: each run's identity, compared before any work.

A step that combines two run folders (``evaluate --retrain``: a run's Avg.Gap to a Retrain; the
experiment cache: a cached Retrain beside its Original) needs both made on the same data set
(its identity: name, sizes, number of classes, label and content digests, see
:func:`coun_fast.data.identity.dataset_identity`), from the same training indices, with the same
number of classes, of the same architecture (name and every build argument) and, where both
unlearned one, of the same forget split. :func:`check_comparable` refuses a mismatch, naming
what differs; comparing two architectures on purpose is the caller's explicit choice
(``allow_other_architecture``), and the difference is then returned for the report to show.

A part of the identity that only one of the two records holds (an Original has no split; a
record of an older coun_fast has no data set identity, or lacks a field of it added later) is
left out of the comparison; the build arguments are compared whole (a wrapper's
``projection_dim`` is a difference).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from torch import nn

from coun_fast.identity import array_digest, describe_differences, differences, plain
from coun_fast.models import model_config

ALLOW_OTHER_ARCHITECTURE = "--allow-other-architecture (allow_other_architecture=True)"
"""How a user compares two architectures on purpose (the command's option, the Python keyword)."""

_REASONS = {
    "dataset": "was made on another data set",
    "train_indices": "was trained on other training indices",
    "num_classes": "has another number of classes",
    "model": "is of another architecture",
    "split": "unlearned another split",
}
"""The parts of a run's identity, in the order they are compared, and how a difference reads."""


class _Run(Protocol):  # coun_fast.workflow.Run (which imports this module)
    model: nn.Module
    record: dict


def run_identity(run: _Run) -> dict[str, Any]:
    """What must agree for two runs to be combined, as plain values: ``dataset`` (the identity
    its record holds), ``train_indices`` (a digest of the Original's training indices),
    ``num_classes``, ``model`` (the build arguments) and ``split`` (the forget and retain indices;
    None for an Original)."""
    record, args = run.record, model_config(run.model)
    split = record.get("split")
    indices = record.get("train_indices")
    return plain({
        "dataset": record.get("dataset"),
        "train_indices": None if indices is None else array_digest(np.asarray(indices, dtype=np.int64)),
        "num_classes": args.get("num_classes"),
        "model": args,
        "split": None if split is None else {"forget": split["forget"], "retain": split["retain"]},
    })


def _shared(mine: dict, theirs: dict) -> tuple[dict, dict]:
    """The entries of two data set identities that both hold (a later coun_fast may record more)."""
    return {k: v for k, v in mine.items() if k in theirs}, {k: v for k, v in theirs.items() if k in mine}


def architecture_difference(reference: _Run, other: _Run) -> str | None:
    """How ``other``'s architecture differs from ``reference``'s, in one line (``model.key: other's
    -> reference's``); None when it does not."""
    mine, theirs = plain(model_config(reference.model)), plain(model_config(other.model))
    return None if mine == theirs else describe_differences({"model": theirs}, {"model": mine})


def check_comparable(reference: _Run, other: _Run, *, what: str, against: str,
                     allow_other_architecture: bool = False, fix: str | None = None) -> str | None:
    """ValueError unless ``other`` may be combined with ``reference``: one line that names both
    (``what`` describes ``other``, ``against`` the reference, e.g. ``"the Retrain 'r'"``), reads
    ``<what> was made on another data set and ... than <against> (<key.path: other's value ->
    reference's>; ...)`` and ends with ``fix`` when given, else, when only the architecture
    differs, with how to allow that (:data:`ALLOW_OTHER_ARCHITECTURE`). Records only: call it
    before any work is done.

    With ``allow_other_architecture`` the build arguments are not compared (the number of classes
    still is); returns how the architectures differ (None when they do not), for the report.
    """
    mine, theirs = run_identity(reference), run_identity(other)
    compared = [key for key in _REASONS if mine[key] is not None and theirs[key] is not None
                and not (key == "model" and allow_other_architecture)]
    if "dataset" in compared:
        mine["dataset"], theirs["dataset"] = _shared(mine["dataset"], theirs["dataset"])
    differing = [key for key in compared if differences(mine[key], theirs[key])]
    if differing:
        reasons = " and ".join(_REASONS[key] for key in differing)
        hint = (f"; {fix}" if fix else f"; pass {ALLOW_OTHER_ARCHITECTURE} to compare two architectures on purpose"
                if differing == ["model"] else "")
        raise ValueError(f"{what} {reasons} than {against} "
                         f"({describe_differences({k: theirs[k] for k in differing}, {k: mine[k] for k in differing})})"
                         f"{hint}")
    return architecture_difference(reference, other)


__all__ = ["ALLOW_OTHER_ARCHITECTURE", "architecture_difference", "check_comparable", "run_identity"]
