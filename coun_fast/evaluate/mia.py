"""Membership-inference attacks of the SalUn / l1-sparse evaluation protocol (confidence feature).

Both attacks train the same classifier, ``sklearn.svm.SVC(C=3, gamma="auto", kernel="rbf")``,
on one scalar per sample: the softmax probability of the sample's true label
(:func:`true_label_confidence`), with no feature scaling. Members (label 1) are retain samples
of the unlearned model's training set, non-members (label 0) are test samples.

* :func:`mia_efficacy` (the paper's "MIA" column): shadow members are the **first**
  ``len(test)`` retain samples in dataset order (not a random draw), shadow non-members the whole
  test set; the attack then labels every forget sample, and the score is the percentage called
  non-member. Match Retrain's value, not 100 (about 11% on CIFAR-10 ResNet-18 10% random, 100 for
  class-wise forgetting).
* :func:`mia_privacy` (secondary): half the test size from retain and test train the attack, the
  rest of retain and test are its targets; the score is the balanced attack accuracy (50 = private).

Inputs are 1-D arrays of confidences in [0, 1], in dataset order. Fitting the SVC on
10,000 + 10,000 points takes seconds on a CPU (libsvm is single-threaded).
"""

from __future__ import annotations

import numpy as np

__all__ = ["true_label_confidence", "mia_efficacy", "mia_privacy", "svc_attack", "SHORT_RETAIN"]

SHORT_RETAIN = ("error", "truncate")
"""What :func:`mia_efficacy` does when retain has fewer samples than test."""


def true_label_confidence(probs, labels) -> np.ndarray:
    """``probs[i, labels[i]]`` for each row: the probability of the true label, as float64 (N,).

    ``probs`` is (N, K) softmax probabilities (NumPy or torch), ``labels`` (N,) integer class
    indices in ``[0, K)``. Raises ValueError (naming the argument) for wrong shapes or labels
    out of range.
    """
    probs = _as_numpy(probs, "probs")
    labels = _as_numpy(labels, "labels")
    if probs.ndim != 2:
        raise ValueError(f"probs must be 2-D (samples, classes); got shape {probs.shape}")
    if labels.ndim != 1 or labels.shape[0] != probs.shape[0]:
        raise ValueError(f"labels must be 1-D with one entry per row of probs ({probs.shape[0]}); got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices; got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(
            f"labels must lie in [0, {probs.shape[1]}) for {probs.shape[1]} classes; got values in "
            f"[{labels.min()}, {labels.max()}]"
        )
    return probs[np.arange(labels.size), labels.astype(np.int64)].astype(np.float64)


def _as_numpy(values, name: str) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, on any device
        values = values.detach().float().cpu().numpy() if values.is_floating_point() else values.detach().cpu().numpy()
    try:
        return np.asarray(values)
    except Exception as error:  # ragged lists and the like
        raise ValueError(f"{name} must be array-like; {error}") from None


def _confidences(values, name: str) -> np.ndarray:
    """A validated 1-D float64 array: non-empty, real, finite, in [0, 1]."""
    array = _as_numpy(values, name)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of confidences (one per sample); got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty; the attack needs at least one sample")
    if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{name} must hold real numbers (probabilities); got dtype {array.dtype}")
    array = array.astype(np.float64)
    bad = ~np.isfinite(array)
    if bad.any():
        raise ValueError(f"{name} must be finite; {int(bad.sum())} of {array.size} values are NaN or infinite")
    outside = (array < 0) | (array > 1)
    if outside.any():
        raise ValueError(
            f"{name} must be probabilities in [0, 1]; {int(outside.sum())} values lie outside "
            f"(min {array.min():.4g}, max {array.max():.4g})"
        )
    return array


def svc_attack(members: np.ndarray, non_members: np.ndarray):
    """The fitted attack: ``SVC(C=3, gamma="auto", kernel="rbf")`` on 1-D features, members = 1.

    ``gamma="auto"`` is ``1 / n_features`` = 1 for one feature; no scaling is applied, exactly as
    in the reference harness. Returns the fitted ``sklearn.svm.SVC``.
    """
    from sklearn.svm import SVC

    features = np.concatenate([members, non_members]).reshape(-1, 1)
    targets = np.concatenate([np.ones(members.size), np.zeros(non_members.size)])
    return SVC(C=3, gamma="auto", kernel="rbf").fit(features, targets)


def mia_efficacy(retain_conf, test_conf, forget_conf, *, short_retain: str = "error") -> float:
    """MIA-Efficacy (%): the share of forget samples the confidence attack calls non-members.

    Args:
        retain_conf: true-label confidences of the retain samples, in dataset order; the first
            ``len(test_conf)`` are the attack's members (label 1).
        test_conf: true-label confidences of the test samples; all are non-members (label 0).
            For class-wise forgetting pass the retained classes' test samples only.
        forget_conf: true-label confidences of the forget samples, the attack's targets.
        short_retain: when retain has fewer samples than test, ``"error"`` (default) raises
            ValueError (the reference harness would fail on it too); ``"truncate"`` trains on the
            first ``n = min(len(retain), len(test))`` of each, which keeps the classes balanced.

    Returns:
        ``100 * mean(SVC.predict(forget) == 0)``, in [0, 100]. Deterministic for given inputs.
    """
    retain = _confidences(retain_conf, "retain_conf")
    test = _confidences(test_conf, "test_conf")
    forget = _confidences(forget_conf, "forget_conf")
    if short_retain not in SHORT_RETAIN:
        raise ValueError(f"short_retain must be one of {SHORT_RETAIN}; got {short_retain!r}")
    if retain.size < test.size:
        if short_retain == "error":
            raise ValueError(
                f"retain_conf has {retain.size} samples but test_conf has {test.size}; MIA-Efficacy takes the "
                f"first len(test) retain samples as members. Pass short_retain='truncate' to train on the "
                f"first {retain.size} of each instead"
            )
        test = test[: retain.size]
    attack = svc_attack(retain[: test.size], test)
    return float(100.0 * np.mean(attack.predict(forget.reshape(-1, 1)) == 0))


def mia_privacy(retain_conf, test_conf) -> float:
    """MIA-Privacy (%): balanced accuracy of the confidence attack on held-out retain and test.

    With ``h = len(test_conf) // 2``: the attack trains on ``retain[:h]`` (members) and
    ``test[:h]`` (non-members) and is scored on ``retain[h:]`` (all the rest of retain) and
    ``test[h:]``: ``100 * (share of retain[h:] called member + share of test[h:] called
    non-member) / 2``. 50 means the attack cannot tell training data from test data.
    Needs at least 2 test samples and more than ``h`` retain samples.
    """
    retain = _confidences(retain_conf, "retain_conf")
    test = _confidences(test_conf, "test_conf")
    half = test.size // 2
    if half == 0:
        raise ValueError(f"test_conf needs at least 2 samples for MIA-Privacy; got {test.size}")
    if retain.size <= half:
        raise ValueError(f"retain_conf needs more than {half} samples (half of test_conf) for MIA-Privacy; got {retain.size}")
    attack = svc_attack(retain[:half], test[:half])
    members_found = np.mean(attack.predict(retain[half:].reshape(-1, 1)) == 1)
    non_members_found = np.mean(attack.predict(test[half:].reshape(-1, 1)) == 0)
    return float(100.0 * (members_found + non_members_found) / 2)
