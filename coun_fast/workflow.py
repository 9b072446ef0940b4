"""The unlearning workflow as Python functions; the ``coun-fast`` command only wraps these.

    original = train_original(DataSource("cifar10", "cifar10_jpeg.npz"), "resnet18", config, "runs/original")
    split = make_forget_split(original, "random", ratio=0.1, seed=0)
    coun = run_unlearning("coun", original, split, unlearn_config, "runs/coun")
    metrics = evaluate_run(coun)

Every step writes its folder: ``model.pt`` (weights, architecture, the run's record),
``checkpoint.pt`` (for ``resume``), and for unlearning runs ``split.npz`` (the forget/retain
indices). A record holds the data source, normalization, the Original's training indices, the
configuration, seed, history, cost, versions and device, so a later step needs only the path.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import nn

from coun_fast import checkpoint
from coun_fast.data import DatasetSplits, ForgetSplit, check_within_training, load_dataset, make_split
from coun_fast.data.recipes import Normalization
from coun_fast.evaluate import Cost, avg_gap, centroid_distances, predict, prediction_distribution, unlearning_metrics
from coun_fast.models import build, check_compatible, forward_flops, model_config, rebuild
from coun_fast.train import CrossEntropy, TrainConfig, fit
from coun_fast.unlearn import get_method, unlearn
from coun_fast.unlearn.cl_plugin import split_name

MODEL_FILE = "model.pt"
SPLIT_FILE = "split.npz"


@dataclasses.dataclass(frozen=True)
class DataSource:
    """Where the data comes from: a name of :data:`coun_fast.data.DATASETS`, its path, an image size."""

    dataset: str = "digits"
    path: str | None = None
    image_size: int | None = None

    def load(self) -> DatasetSplits:
        return load_dataset(self.dataset, self.path, image_size=self.image_size)


@dataclasses.dataclass
class Run:
    """A finished step: its model, its record and the folder it was written to."""

    model: nn.Module
    record: dict
    folder: Path

    @property
    def source(self) -> DataSource:
        return DataSource(**self.record["data"])

    @property
    def normalization(self) -> Normalization:
        return Normalization(tuple(self.record["normalization"]["mean"]), tuple(self.record["normalization"]["std"]))


# -- model files -----------------------------------------------------------------------------------
def save_run(folder: str | Path, model: nn.Module, record: dict) -> Run:
    """Write ``folder/model.pt`` (weights on the CPU, architecture, record) atomically."""
    folder = Path(folder)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    checkpoint.save(folder / MODEL_FILE, {"model": state, "build_args": model_config(model), "record": record})
    return Run(model, record, folder)


def load_run(path: str | Path, *, device="cpu") -> Run:
    """A step's model and record from its folder or its ``model.pt``."""
    path = Path(path)
    file = path / MODEL_FILE if path.is_dir() else path
    state = checkpoint.load(file)
    if "build_args" not in state or "record" not in state:
        raise ValueError(f"{str(file)!r} is a checkpoint, not a finished model file (no build_args/record); "
                         f"use the {MODEL_FILE} of a finished run")
    model = rebuild(state["build_args"])
    check_compatible(model, state["model"])
    model.load_state_dict(state["model"])
    return Run(model.to(device).eval(), state["record"], file.parent)


def _as_run(run: "Run | str | Path") -> Run:
    return run if isinstance(run, Run) else load_run(run)


def _check_classes(model: nn.Module, splits: DatasetSplits, where: str) -> None:
    classes = model_config(model)["num_classes"]
    if classes != splits.train.num_classes:
        raise ValueError(f"{where} has {classes} classes but the data set {splits.train.name!r} has "
                         f"{splits.train.num_classes}; use a model trained on this data set")


def _cost(result, model: nn.Module, splits: DatasetSplits) -> dict:
    """Wall time, images and PFLOPs by the paper's count (3 forward-equivalents per trained image)."""
    height, width = splits.train.decoded().image_size
    flops = forward_flops(model, (3, height, width))
    return Cost.from_result(result, flops, device=str(next(model.parameters()).device)).as_dict()


# -- steps -----------------------------------------------------------------------------------------
def train_original(
    source: DataSource, model_name: str, config: TrainConfig, folder: str | Path, *,
    model_kwargs: dict | None = None, resume: bool = False,
) -> Run:
    """Train the Original model on the whole training split of ``source``."""
    splits = source.load()
    torch.manual_seed(config.seed)
    model = build(model_name, splits.train.num_classes, **(model_kwargs or {}))
    norm = splits.train.normalization
    record = {
        "kind": "original", "data": dataclasses.asdict(source),
        "normalization": {"mean": list(norm.mean), "std": list(norm.std)},
        "train_indices": np.arange(len(splits.train), dtype=np.int64), "config": config.to_dict(),
    }
    result = fit(model, splits.train, CrossEntropy(), config, normalization=norm, run_dir=folder, resume=resume,
                 record={"kind": "original", "data": record["data"]}, description="original")
    record.update(history=result.history, cost=_cost(result, model, splits),
                  environment=checkpoint.environment(next(model.parameters()).device))
    return save_run(folder, model, record)


def make_forget_split(original: "Run | str | Path", kind: str = "random", *, ratio: float | None = None,
                      classes=None, num_chunks: int | None = None, seed: int = 0) -> ForgetSplit:
    """A forget/retain split of the Original's training set (checked to lie inside it)."""
    original = _as_run(original)
    splits = original.source.load()
    train_indices = np.asarray(original.record["train_indices"])
    split = make_split(kind, num_train=len(splits.train), labels=splits.train.labels,
                       class_names=splits.train.classes, ratio=ratio, classes=classes, num_chunks=num_chunks,
                       seed=seed, train_indices=train_indices)
    check_within_training(split, train_indices)
    return split


def run_unlearning(
    method: str, original: "Run | str | Path", split: ForgetSplit, config: TrainConfig, folder: str | Path, *,
    hparams: dict | None = None, resume: bool = False, on_epoch_end=None,
) -> Run:
    """Unlearn ``split.forget`` from the Original with ``method``; writes the model and the split."""
    get_method(split_name(method)[0])  # an unknown method fails before any data is loaded
    original = _as_run(original)
    splits = original.source.load()
    _check_classes(original.model, splits, "the Original model")
    check_within_training(split, np.asarray(original.record["train_indices"]))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    split.save(folder / SPLIT_FILE)
    result = unlearn(method, original.model, splits.train, split, config, normalization=original.normalization,
                     hparams=hparams, test=splits.test, run_dir=folder, resume=resume, on_epoch_end=on_epoch_end,
                     record={"kind": "unlearned", "method": method, "original": str(original.folder),
                             "split": split.to_dict()})
    record = {
        "kind": "unlearned", "method": method, "hparams": result.hparams, "data": original.record["data"],
        "normalization": original.record["normalization"], "train_indices": original.record["train_indices"],
        "original": str(original.folder), "split_file": SPLIT_FILE, "split": split.to_dict(),
        "config": config.to_dict(),
        "history": result.train.history,
        "cost": _cost(result.train, result.model, splits),
        "environment": checkpoint.environment(next(result.model.parameters()).device),
    }
    return save_run(folder, result.model, record)


def evaluate_run(run: "Run | str | Path", *, split: "ForgetSplit | str | Path | None" = None,
                 retrain: "dict | None" = None, device=None, analyses: bool = False,
                 mia_attack: str = "confidence") -> dict:
    """UA, RA, TA, MIA (and Avg.Gap when ``retrain`` metrics are given), plus the run's cost.

    ``mia_attack`` picks the SVC attack of the MIA column (SalUn's ``confidence`` by default; see
    :data:`coun_fast.evaluate.mia.ATTACKS`).

    ``split`` defaults to the run's own ``split.npz``; an Original (which has none) needs one.
    ``analyses=True`` adds the paper's representation analyses: ``forget_predictions`` (share in %
    of the forget samples predicted as each class, top 5) and ``centroid_distances`` (average
    distance of the forget features to each retain class centroid, divided by the largest).
    """
    run = _as_run(run)
    if split is None:
        own = run.folder / SPLIT_FILE
        if not own.is_file():
            raise ValueError(f"{str(run.folder)!r} has no {SPLIT_FILE}; pass the split to evaluate against "
                             "(e.g. the split.npz of an unlearning run)")
        split = own
    if not isinstance(split, ForgetSplit):
        split = ForgetSplit.load(split)
    splits = run.source.load()
    _check_classes(run.model, splits, f"the model of {str(run.folder)!r}")
    check_within_training(split, np.asarray(run.record["train_indices"]))
    if device is not None:
        run.model.to(device)
    metrics = unlearning_metrics(run.model, splits.train, splits.test, split, normalization=run.normalization,
                                 mia_attack=mia_attack)
    if retrain is not None:
        metrics["Avg.Gap"] = avg_gap(metrics, retrain)
    metrics.update({k: v for k, v in run.record.get("cost", {}).items() if k in ("seconds", "PFLOPs")})
    if analyses:
        metrics.update(representation_analyses(run, splits, split))
    return metrics


def representation_analyses(run: Run, splits: DatasetSplits, split: ForgetSplit) -> dict:
    """The forget samples' predicted-class distribution and their distances to retain class centroids."""
    forget = predict(run.model, splits.train, split.forget, normalization=run.normalization, features=True)
    retain = predict(run.model, splits.train, split.retain, normalization=run.normalization, features=True)
    classes = splits.train.classes
    distances = centroid_distances(forget.features, retain.features, retain.labels, len(classes))
    return {
        "forget_predictions": prediction_distribution(forget, classes, top=5),
        "centroid_distances": {name: float(d) for name, d in zip(classes, distances)},
    }
