"""One pass of a model over (part of) a data set: logits, labels, indices, optional features.

:func:`predict` runs the model in eval mode under ``torch.inference_mode`` on the ``eval`` recipe
(no augmentation, only normalisation), in the order of ``indices`` (no shuffling), and returns a
:class:`Predictions` of NumPy arrays on the CPU. Every metric of :mod:`coun_fast.evaluate` is a
function of one such pass, so each sample is predicted once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import numpy as np
import torch
from torch import nn

from coun_fast.data.dataset import ImageDataset
from coun_fast.data.loader import AugmentedLoader
from coun_fast.evaluate.mia import true_label_confidence

__all__ = ["Predictions", "predict", "eval_mode", "PRECISIONS"]

PRECISIONS = ("fp32", "bf16", "auto")
"""``precision`` values of :func:`predict`; ``auto`` is bf16 autocast on CUDA, fp32 elsewhere."""


@dataclasses.dataclass(frozen=True, eq=False)
class Predictions:
    """A model's outputs on samples of a data set, in the order they were given.

    Attributes:
        logits: (N, K) float32 logits.
        labels: (N,) int64 true labels.
        indices: (N,) int64 indices of the samples in their data set.
        features: (N, F) float32 pooled penultimate features, or None when not requested.
    """

    logits: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    features: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.logits.ndim != 2 or len(self.logits) != n or self.indices.shape != (n,):
            raise ValueError(
                f"logits (N, K), labels (N,) and indices (N,) must agree; got {self.logits.shape}, "
                f"{self.labels.shape}, {self.indices.shape}"
            )
        if self.features is not None and (self.features.ndim != 2 or len(self.features) != n):
            raise ValueError(f"features must be (N, F) with N={n}; got {self.features.shape}")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return int(self.logits.shape[1])

    @functools.cached_property
    def probs(self) -> np.ndarray:
        """(N, K) float32 softmax probabilities (computed once, in float32 like the reference harness)."""
        return torch.softmax(torch.from_numpy(self.logits), dim=1).numpy()

    @property
    def predicted(self) -> np.ndarray:
        """(N,) int64 arg-max classes."""
        return self.logits.argmax(axis=1).astype(np.int64)

    @property
    def correct(self) -> np.ndarray:
        """(N,) bool: the prediction equals the label."""
        return self.predicted == self.labels

    @property
    def confidence(self) -> np.ndarray:
        """(N,) float64 probability of the true label, the MIA feature (see :mod:`.mia`)."""
        return true_label_confidence(self.probs, self.labels)

    def take(self, positions) -> "Predictions":
        """The rows at ``positions`` (integer positions into this object, or a boolean mask)."""
        positions = np.asarray(positions)
        if positions.dtype == np.bool_:
            if positions.shape != (len(self),):
                raise ValueError(f"a boolean mask for positions must have shape ({len(self)},); got {positions.shape}")
            positions = np.flatnonzero(positions)
        elif positions.ndim != 1 or (positions.size and not np.issubdtype(positions.dtype, np.integer)):
            raise ValueError(
                f"positions must be 1-D integer positions or a boolean mask; got {positions.dtype} {positions.shape}"
            )
        return Predictions(
            self.logits[positions],
            self.labels[positions],
            self.indices[positions],
            None if self.features is None else self.features[positions],
        )

    def select(self, indices) -> "Predictions":
        """The rows whose data-set index is in ``indices`` (each must be present), in ``indices``' order."""
        wanted = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(self) == 0:
            if wanted.size:
                raise ValueError(f"these predictions are empty; they lack all {wanted.size} requested indices")
            return self.take(wanted)
        order = np.argsort(self.indices, kind="stable")
        found = np.searchsorted(self.indices, wanted, sorter=order)
        found = np.minimum(found, len(order) - 1)
        positions = order[found]
        missing = self.indices[positions] != wanted
        if missing.any():
            raise ValueError(
                f"indices holds {int(missing.sum())} data-set indices these predictions lack, "
                f"e.g. {wanted[missing][:5].tolist()}"
            )
        return self.take(positions)


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _autocast(precision: str, device: torch.device):
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Put every submodule in eval mode; restore each one's own ``training`` flag afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def predict(
    model: nn.Module,
    dataset: ImageDataset,
    indices=None,
    *,
    normalization,
    batch_size: int = 512,
    device=None,
    features: bool = False,
    precision: str = "fp32",
    backend: str = "auto",
) -> Predictions:
    """Run ``model`` on ``dataset[indices]`` without augmentation and collect its outputs.

    Args:
        model: a classifier; ``model(x)`` gives logits. With ``features=True`` it must follow the
            package's timm convention: ``forward_features(x)`` -> pooled (B, F) and
            ``forward_head(f)`` -> logits.
        dataset: the data set to read.
        indices: the samples, default all; outputs come in this order (no shuffling).
        normalization: ``(mean, std)`` on the [0, 1] scale, the one the model was trained with
            (the training split's statistics, also for the test split). Required.
        batch_size: samples per forward pass (>= 1).
        device: where to run; default the device of the model's parameters. The model is never
            moved: a ``device`` other than the model's raises ValueError.
        features: also return the pooled penultimate features.
        precision: ``"fp32"`` (default), ``"bf16"`` (autocast) or ``"auto"`` (bf16 on CUDA only).
            Outputs are float32 either way.
        backend: the loader backend (see :class:`coun_fast.data.AugmentedLoader`).

    The model runs in eval mode under ``torch.inference_mode``; afterwards every submodule is back
    in the train/eval mode it had. Returns a :class:`Predictions` on the CPU.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if normalization is None:
        raise ValueError("normalization must be given: the (mean, std) the model was trained with")
    if features and not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        raise TypeError(f"features=True needs model.forward_features and model.forward_head; {type(model).__name__} lacks them")
    model_device = _model_device(model)
    run_device = model_device if device is None else torch.device(device)
    if run_device.type == "cuda" and run_device.index is None and model_device.type == "cuda":
        run_device = model_device
    if run_device != model_device:
        raise ValueError(f"device {run_device} differs from the model's device {model_device}; move the model first")
    autocast = _autocast(precision, run_device)
    loader = AugmentedLoader(
        dataset, "eval", batch_size=batch_size, indices=indices, shuffle=False,
        normalization=normalization, device=run_device, backend=backend,
    )
    logits, labels, where, feats = [], [], [], []
    with eval_mode(model), torch.inference_mode(), autocast:
        for batch in loader:
            if features:
                f = model.forward_features(batch.inputs)
                if f.dim() != 2:
                    raise ValueError(
                        f"model.forward_features must return pooled (B, F) features; got shape {tuple(f.shape)}"
                    )
                out = model.forward_head(f)
                feats.append(f.float())
            else:
                out = model(batch.inputs)
            if out.dim() != 2 or out.shape[0] != batch.labels.shape[0]:
                raise ValueError(
                    f"the model must return logits (B, K); got shape {tuple(out.shape)} for B={batch.labels.shape[0]}"
                )
            logits.append(out.float())  # kept on the device: one transfer at the end, no sync per batch
            labels.append(batch.labels)
            where.append(batch.indices)
    return Predictions(
        logits=torch.cat(logits).cpu().numpy(),
        labels=torch.cat(labels).cpu().numpy().astype(np.int64),
        indices=torch.cat(where).cpu().numpy().astype(np.int64),
        features=torch.cat(feats).cpu().numpy() if features else None,
    )
