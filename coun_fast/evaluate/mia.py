"""Membership-inference attacks of the SalUn / l1-sparse evaluation protocol (SalUn's ``SVC_MIA.py``).

Every attack trains the same classifier, ``sklearn.svm.SVC(C=3, gamma="auto", kernel="rbf")``, on
per-sample features of a model's softmax output, with no feature scaling; members (label 1) are
retain samples of the unlearned model's training set, non-members (label 0) are test samples. The
five feature sets of OPTML-Group/Unlearn-Saliency ``Classification/evaluation/SVC_MIA.py``
(``SVC_MIA``, L85-150), :data:`ATTACKS`, computed in float32 from the float32 probabilities p of
each sample with label y:

* ``confidence`` (the paper's "MIA"): p_y (L105-108);
* ``correctness``: 1 if argmax p = y else 0 (L92-103);
* ``entropy``: -sum_c p_c log p_c over the p_c > 0 (``entropy``, L8-9);
* ``m_entropy``, the modified entropy, as their ``m_entropy`` (L12-22) computes it on a whole set:
  -sum_c q_c log p_c with q_c = 1 - p_c for every class c that is the label of SOME sample of the
  set (their ``[:, labels]`` indexes columns with the whole label vector) and q_c = p_c otherwise,
  log p_c read as log 1e-30 where p_c = 0 (their "reverse" log is log p too). ``m_entropy_variant=
  "song"`` gives the per-sample definition of Song and Mittal (USENIX Security 2021) the code
  means: -(1 - p_y) log p_y - sum_{c != y} p_c log(1 - p_c) (logs of 0 read as log 1e-30);
* ``prob``: the whole vector p (K features; ``gamma="auto"`` is then 1 / K) (L139-141).

* :func:`mia_efficacy` (the paper's "MIA" column with ``attack="confidence"``): shadow members are
  the **first** ``len(test)`` retain samples in dataset order (not a random draw), shadow
  non-members the whole test set (``main_forget.py``: ``SVC_MIA(shadow_train=retain[:len(test)],
  shadow_test=test, target_train=None, target_test=forget)``); the attack then labels every forget
  sample, and the score is the percentage called non-member. Match Retrain's value, not 100 (about
  11% on CIFAR-10 ResNet-18 10% random, 100 for class-wise forgetting).
* :func:`mia_privacy` (secondary): half the test size from retain and test train the attack, the
  rest of retain and test are its targets; the score is the balanced attack accuracy (50 = private).

A set is given as a :class:`~coun_fast.evaluate.predict.Predictions` (anything with ``probs`` and
``labels``), as a ``(probs, labels)`` pair, or, for the confidence attack only, as the 1-D array of
its true-label confidences in [0, 1]. Sets are in dataset order. Fitting the SVC on 10,000 + 10,000
points takes seconds on a CPU (libsvm is single-threaded).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["ATTACKS", "M_ENTROPY_VARIANTS", "SHORT_RETAIN", "attack_features", "mia_efficacy", "mia_privacy",
           "svc_attack", "true_label_confidence"]

ATTACKS = ("confidence", "correctness", "entropy", "m_entropy", "prob")
"""The SVC attacks of SalUn's ``SVC_MIA``, by their names there."""
M_ENTROPY_VARIANTS = ("salun", "song")
"""``m_entropy`` as SalUn's code computes it, or as Song and Mittal define it."""
SHORT_RETAIN = ("error", "truncate")
"""What :func:`mia_efficacy` does when retain has fewer samples than test."""
_LOG_FLOOR = float(np.log(np.float32(1e-30)))


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


def _probabilities(value, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(probs (N, K) float32, labels (N,) int64)`` of a set given as Predictions or a pair."""
    if hasattr(value, "probs") and hasattr(value, "labels"):
        probs, labels = value.probs, value.labels
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        probs, labels = value
    else:
        raise ValueError(f"{name} must be Predictions or a (probs, labels) pair for this attack; got "
                         f"{type(value).__name__}")
    probs = _as_numpy(probs, f"{name} probs")
    try:
        true_label_confidence(probs, labels)  # checks the shapes and the label range
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None
    if probs.size == 0:
        raise ValueError(f"{name} is empty; the attack needs at least one sample")
    finite = np.issubdtype(probs.dtype, np.floating) and np.isfinite(probs).all()
    if not finite or not 0 <= probs.min() <= probs.max() <= 1:
        raise ValueError(f"{name}: probs must be finite probabilities in [0, 1]")
    return probs.astype(np.float32), _as_numpy(labels, f"{name} labels").astype(np.int64)


def attack_features(probs, labels, attack: str = "confidence", *, m_entropy_variant: str = "salun") -> np.ndarray:
    """The (N, d) features of ``attack`` (see the module docstring) for one set: ``probs`` (N, K)
    softmax probabilities, ``labels`` (N,) their true labels. float32, as the reference harness."""
    if attack not in ATTACKS:
        raise ValueError(f"attack must be one of {', '.join(map(repr, ATTACKS))}; got {attack!r}")
    if m_entropy_variant not in M_ENTROPY_VARIANTS:
        raise ValueError(f"m_entropy_variant must be one of {', '.join(map(repr, M_ENTROPY_VARIANTS))}; "
                         f"got {m_entropy_variant!r}")
    p, y = _probabilities((probs, labels), "probs")
    p, y = torch.from_numpy(p), torch.from_numpy(y)
    rows = torch.arange(len(y))
    if attack == "confidence":
        out = p[rows, y][:, None]
    elif attack == "correctness":
        out = (p.argmax(1) == y).float()[:, None]
    elif attack == "prob":
        out = p
    else:
        log_p = torch.where(p > 0, p.log(), torch.full_like(p, _LOG_FLOOR))
        if attack == "entropy":
            out = -torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(1, keepdim=True)
        elif m_entropy_variant == "salun":
            reversed_columns = torch.zeros(p.shape[1], dtype=torch.bool)
            reversed_columns[y] = True
            weights = torch.where(reversed_columns[None, :], 1 - p, p)
            out = -(weights * log_p).sum(1, keepdim=True)
        else:
            one_minus = 1 - p
            log_one_minus = torch.where(one_minus > 0, one_minus.log(), torch.full_like(p, _LOG_FLOOR))
            is_label = torch.zeros_like(p, dtype=torch.bool)
            is_label[rows, y] = True
            terms = torch.where(is_label, one_minus * log_p, p * log_one_minus)
            out = -terms.sum(1, keepdim=True)
    return out.numpy().astype(np.float32)


class _Set:
    """One set of an attack, validated: confidences (1-D, confidence attack only) or (probs, labels)."""

    def __init__(self, value, name: str, attack: str) -> None:
        self.name = name
        if attack == "confidence" and not hasattr(value, "probs") and not isinstance(value, tuple):
            self.confidences, self.probs, self.labels = _confidences(value, name), None, None
        else:
            self.confidences = None
            self.probs, self.labels = _probabilities(value, name)

    def __len__(self) -> int:
        return len(self.confidences) if self.confidences is not None else len(self.labels)

    def features(self, attack: str, m_entropy_variant: str, rows: slice = slice(None)) -> np.ndarray:
        """(n, d) features of ``rows`` of the set, computed on those rows alone (``m_entropy``'s
        columns depend on the labels present, as in the reference harness, which computes each
        loader's features separately)."""
        if self.confidences is not None:
            return self.confidences[rows][:, None]
        return attack_features(self.probs[rows], self.labels[rows], attack, m_entropy_variant=m_entropy_variant)


def svc_attack(members: np.ndarray, non_members: np.ndarray):
    """The fitted attack: ``SVC(C=3, gamma="auto", kernel="rbf")`` on (N, d) features (1-D arrays
    are one feature), members = 1.

    ``gamma="auto"`` is ``1 / d``; no scaling is applied, exactly as in the reference harness.
    Returns the fitted ``sklearn.svm.SVC``.
    """
    from sklearn.svm import SVC

    members, non_members = np.asarray(members), np.asarray(non_members)
    features = np.concatenate([members.reshape(len(members), -1), non_members.reshape(len(non_members), -1)])
    targets = np.concatenate([np.ones(len(members)), np.zeros(len(non_members))])
    return SVC(C=3, gamma="auto", kernel="rbf").fit(features, targets)


def mia_efficacy(retain, test, forget, *, attack: str = "confidence", m_entropy_variant: str = "salun",
                 short_retain: str = "error") -> float:
    """MIA-Efficacy (%): the share of forget samples the ``attack`` calls non-members.

    Args:
        retain: the retain samples, in dataset order; the first ``len(test)`` are the attack's
            members (label 1). Predictions, a ``(probs, labels)`` pair, or (confidence attack)
            the 1-D true-label confidences.
        test: the test samples, all non-members (label 0); for class-wise forgetting the retained
            classes' test samples only.
        forget: the forget samples, the attack's targets.
        attack: one of :data:`ATTACKS` (SalUn's five; ``confidence`` is the paper's MIA).
        m_entropy_variant: ``salun`` (their code, as written) or ``song`` (see the module docstring).
        short_retain: when retain has fewer samples than test, ``"error"`` (default) raises
            ValueError (the reference harness would fail on it too); ``"truncate"`` trains on the
            first ``n = min(len(retain), len(test))`` of each, which keeps the classes balanced.

    Returns:
        ``100 * mean(SVC.predict(forget) == 0)``, in [0, 100]. Deterministic for given inputs.
    """
    if attack not in ATTACKS:
        raise ValueError(f"attack must be one of {', '.join(map(repr, ATTACKS))}; got {attack!r}")
    if short_retain not in SHORT_RETAIN:
        raise ValueError(f"short_retain must be one of {SHORT_RETAIN}; got {short_retain!r}")
    retain, test, forget = _Set(retain, "retain", attack), _Set(test, "test", attack), _Set(forget, "forget", attack)
    size = len(test)
    if len(retain) < size:
        if short_retain == "error":
            raise ValueError(
                f"retain has {len(retain)} samples but test has {size}; MIA-Efficacy takes the first len(test) "
                f"retain samples as members. Pass short_retain='truncate' to train on the first {len(retain)} of "
                f"each instead"
            )
        size = len(retain)
    members = retain.features(attack, m_entropy_variant, slice(0, size))
    non_members = test.features(attack, m_entropy_variant, slice(0, size))
    attack_model = svc_attack(members, non_members)
    return float(100.0 * np.mean(attack_model.predict(forget.features(attack, m_entropy_variant)) == 0))


def mia_privacy(retain, test, *, attack: str = "confidence", m_entropy_variant: str = "salun") -> float:
    """MIA-Privacy (%): balanced accuracy of the ``attack`` on held-out retain and test samples.

    With ``h = len(test) // 2``: the attack trains on ``retain[:h]`` (members) and ``test[:h]``
    (non-members) and is scored on ``retain[h:]`` (all the rest of retain) and ``test[h:]``:
    ``100 * (share of retain[h:] called member + share of test[h:] called non-member) / 2``. 50
    means the attack cannot tell training data from test data. Needs at least 2 test samples and
    more than ``h`` retain samples. Sets as for :func:`mia_efficacy`; features are computed on each
    of the four parts separately (the reference harness's one loader per part).
    """
    if attack not in ATTACKS:
        raise ValueError(f"attack must be one of {', '.join(map(repr, ATTACKS))}; got {attack!r}")
    retain, test = _Set(retain, "retain", attack), _Set(test, "test", attack)
    half = len(test) // 2
    if half == 0:
        raise ValueError(f"test needs at least 2 samples for MIA-Privacy; got {len(test)}")
    if len(retain) <= half:
        raise ValueError(f"retain needs more than {half} samples (half of test) for MIA-Privacy; got {len(retain)}")
    features = {(name, part): data.features(attack, m_entropy_variant, rows)
                for name, data in (("retain", retain), ("test", test))
                for part, rows in (("shadow", slice(0, half)), ("target", slice(half, None)))}
    attack_model = svc_attack(features["retain", "shadow"], features["test", "shadow"])
    members_found = np.mean(attack_model.predict(features["retain", "target"]) == 1)
    non_members_found = np.mean(attack_model.predict(features["test", "target"]) == 0)
    return float(100.0 * (members_found + non_members_found) / 2)
