"""The unlearning workflow as Python functions; the ``coun-fast`` command only wraps these.

    original = train_original(DataSource("cifar10", "cifar10_jpeg.npz"), "resnet18", config, "runs/original")
    split = make_forget_split(original, "random", ratio=0.1, seed=0)
    coun = run_unlearning("coun", original, split, unlearn_config, "runs/coun")
    metrics = evaluate_run(coun)

Every step writes its folder as a unit (:func:`coun_fast.runfolder.staged`): under the folder's
lock, in a partial folder renamed into place when the step succeeds, so a failed or refused step
never changes an existing folder; a finished one is replaced only with ``overwrite=True``. A
folder holds ``model.pt`` (weights, architecture, the run's record), ``checkpoint.pt`` (for
``resume``), and for unlearning runs ``split.npz`` (the forget/retain indices). A record holds
the data source and the data set's identity, normalization, the Original's training indices, the
configuration, seed, history, cost, versions, device and number of ranks (``ranks``: 1 but under
``torchrun``), so a later step needs only the path.

A user's own data enters as :class:`~coun_fast.data.DatasetSplits` in place of the
:class:`DataSource` (e.g. ``DatasetSplits(ImageDataset.from_torch(train), ImageDataset.from_torch(test))``):
its record then says ``dataset: memory``, the returned :class:`Run` keeps the data for the next
steps, and a run loaded from disk later takes it again through ``data=``, checked against the
identity its record holds like any other data set.

Each step is checked before any training (:func:`prepare_original`, :func:`prepare_unlearning`):
the device, the hyperparameters, the model against the data, the split against the data set and
the Original, the output folder. Checkpoints record the run's identity (data set, architecture,
method and hyperparameters, starting model, split): ``resume`` refuses one of another run, saying
what differs. :func:`evaluate_run` refuses a split other than the one the model unlearned, and a
Retrain run that is not comparable with the run (:func:`compare_with_retrain`).

Under ``torchrun`` (a process group of several ranks), every rank runs the steps together
(:func:`coun_fast.train.fit` trains with DistributedDataParallel) and rank 0 alone writes the run
folder (:func:`coun_fast.runfolder.staged_by_main`; every rank returns the same :class:`Run`, but
for the wall times in its record, which are each rank's own); only the methods that declare
:attr:`~coun_fast.unlearn.base.Method.distributed` may run there.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from coun_fast import checkpoint, distributed
from coun_fast.data import DatasetSplits, ForgetSplit, check_within_training, load_dataset, make_split
from coun_fast.data.identity import check_same_dataset, dataset_identity
from coun_fast.data.recipes import Normalization
from coun_fast.evaluate import (ATTACKS, Cost, avg_gap, centroid_distances, metrics_from_predictions, predict,
                                prediction_distribution, unlearning_predictions)
from coun_fast.identity import plain, weights_digest
from coun_fast.models import build, check_compatible, forward_flops, model_config, rebuild
from coun_fast.runfolder import CHECKPOINT, check_target, staged_by_main
from coun_fast.run_identity import check_comparable
from coun_fast.train import CrossEntropy, TrainConfig, check_resumable, check_runnable, fit
from coun_fast.unlearn import resolve_hparams, unlearn

MODEL_FILE = "model.pt"
SPLIT_FILE = "split.npz"
IN_MEMORY = "memory"
"""The ``dataset`` a record names when its data was given in memory (nothing to reload it from)."""


@dataclasses.dataclass(frozen=True)
class DataSource:
    """Where the data comes from: a name of :data:`coun_fast.data.DATASETS`, its path, an image size."""

    dataset: str = "digits"
    path: str | None = None
    image_size: int | None = None

    def load(self) -> DatasetSplits:
        if self.dataset == IN_MEMORY:
            raise ValueError("this run's data was given in memory (DatasetSplits), so its record cannot reload "
                             "it; pass the same data again with data=")
        return load_dataset(self.dataset, self.path, image_size=self.image_size)


def _source_and_data(source: "DataSource | DatasetSplits") -> tuple[DataSource, DatasetSplits, bool]:
    """``(what the record keeps, the data, whether the data was given in memory)``."""
    if isinstance(source, DatasetSplits):
        return DataSource(IN_MEMORY), source, True
    if not isinstance(source, DataSource):
        raise TypeError(f"source must be a DataSource or DatasetSplits (e.g. of ImageDataset.from_torch); got "
                        f"{type(source).__name__}")
    return source, source.load(), False


@dataclasses.dataclass
class Run:
    """A finished step: its model, its record and the folder it was written to; ``data``, the
    data set it was made with when that was given in memory (later steps use it)."""

    model: nn.Module
    record: dict
    folder: Path
    data: DatasetSplits | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def source(self) -> DataSource:
        return DataSource(**self.record["data"])

    @property
    def normalization(self) -> Normalization:
        return Normalization(tuple(self.record["normalization"]["mean"]), tuple(self.record["normalization"]["std"]))

    def load_data(self, data: DatasetSplits | None = None) -> tuple[DatasetSplits, dict]:
        """The run's data set and its identity, checked against the identity the run recorded (the
        files at the recorded path may have changed since): ``data`` when given, else the data the
        run keeps in memory, else the data set its record names, loaded anew."""
        if data is not None and not isinstance(data, DatasetSplits):
            raise TypeError(f"data must be DatasetSplits (training and test ImageDatasets); got {type(data).__name__}")
        splits = data if data is not None else self.data if self.data is not None else self.source.load()
        identity = dataset_identity(splits)
        check_same_dataset(self.record.get("dataset"), identity, f"the model in {str(self.folder)!r}")
        return splits, identity


# -- model files -----------------------------------------------------------------------------------
def save_run(folder: str | Path, model: nn.Module, record: dict) -> Run:
    """Write ``folder/model.pt`` (weights on the CPU, architecture, record as plain values)
    atomically; in a distributed run (every rank calls it), rank 0 writes it and the others return
    the same run (they raise rank 0's error when it fails)."""
    folder = Path(folder)
    record = plain(record)

    def write() -> None:
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        checkpoint.save(folder / MODEL_FILE, {"model": state, "build_args": model_config(model), "record": record})

    distributed.on_main(write, f"write {str(folder / MODEL_FILE)!r}")
    return Run(model, record, folder)


_RECORD_KEYS = ("data", "normalization", "train_indices")


def load_run(path: str | Path, *, device="cpu") -> Run:
    """A step's model and record from its folder or its ``model.pt`` (read safely, every part
    checked: a damaged or foreign file is a ValueError naming it)."""
    path = Path(path)
    file = path / MODEL_FILE if path.is_dir() else path
    state = checkpoint.load(file)
    if "build_args" not in state or "record" not in state:
        raise ValueError(f"{str(file)!r} is a checkpoint, not a finished model file (no build_args/record); "
                         f"use the {MODEL_FILE} of a finished run")
    weights, args, record = state.get("model"), state["build_args"], state["record"]
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in weights.items()):
        raise ValueError(f"{str(file)!r} is damaged: its 'model' is not a mapping of names to tensors")
    missing = [key for key in _RECORD_KEYS if key not in record] if isinstance(record, dict) else list(_RECORD_KEYS)
    if missing:
        raise ValueError(f"{str(file)!r} is damaged: its record lacks {missing}")
    if not isinstance(args, dict):
        raise ValueError(f"{str(file)!r} is damaged: its build_args are not a mapping")
    try:
        model = rebuild(args)
        check_compatible(model, weights)
        model.load_state_dict(weights)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{str(file)!r}: {error}") from None
    return Run(model.to(device).eval(), record, file.parent)


def _as_run(run: "Run | str | Path") -> Run:
    return run if isinstance(run, Run) else load_run(run)


def _check_classes(model: nn.Module, splits: DatasetSplits, where: str) -> None:
    classes = model_config(model)["num_classes"]
    if classes != splits.train.num_classes:
        raise ValueError(f"{where} has {classes} classes but the data set {splits.train.name!r} has "
                         f"{splits.train.num_classes}; use a model trained on this data set")


def check_fits(model: nn.Module, splits: DatasetSplits) -> None:
    """ValueError unless ``model`` takes the data set's images (one forward pass of a zero image,
    in eval mode, no state changed)."""
    height, width = splits.train.view_size
    try:
        forward_flops(model, (3, height, width))
    except (RuntimeError, ValueError, AssertionError) as error:
        name = model_config(model)["name"]
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"model {name!r} does not take the {height}x{width} images of {splits.train.name!r}: "
                         f"{first}") from None


def _cost(result, model: nn.Module, splits: DatasetSplits) -> dict:
    """Wall time, images and PFLOPs by the paper's count (3 forward-equivalents per trained image)."""
    height, width = splits.train.view_size
    flops = forward_flops(model, (3, height, width))
    return Cost.from_result(result, flops, device=str(next(model.parameters()).device)).as_dict()


def check_split_of(run: Run, split: ForgetSplit, where: str) -> None:
    """ValueError unless ``split`` (read from ``where``) is the split the unlearned ``run`` recorded
    (an Original records none: any split of its training set will do)."""
    recorded = run.record.get("split")
    if recorded is None:
        return
    mine = ForgetSplit.from_dict(recorded)
    if np.array_equal(mine.forget, split.forget) and np.array_equal(mine.retain, split.retain):
        return
    outside = np.setdiff1d(split.forget, mine.forget).size
    raise ValueError(f"{where} is not the split the model in {str(run.folder)!r} unlearned: its forget set has "
                     f"{split.forget.size} indices, {outside} of them not among the model's {mine.forget.size}; "
                     "evaluate it with its own split")


# -- steps -----------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Step:
    """A step checked and ready to run: its configuration and its identity (what a checkpoint of
    it records, and what a resumed run must match)."""

    config: TrainConfig
    identity: dict

    def belongs(self, work: Path) -> None:
        """ValueError, saying what differs, unless the checkpoint in ``work`` is one of this very run."""
        check_resumable(work / CHECKPOINT, self.config, self.identity)


@dataclasses.dataclass(kw_only=True)
class OriginalStep(_Step):
    """An Original's training, checked and ready (:func:`prepare_original`): :meth:`run` writes it
    into a working folder (the caller stages and locks it, see :func:`coun_fast.runfolder.staged`)."""

    source: DataSource
    splits: DatasetSplits
    model: nn.Module
    in_memory: bool = False

    def run(self, work: Path, folder: Path, *, resume: bool = False) -> Run:
        """Train (continuing ``work``'s checkpoint with ``resume``) and write ``work/model.pt``;
        the returned run names ``folder``, where ``work`` is about to be moved."""
        distributed.on_main(lambda: Path(work).mkdir(parents=True, exist_ok=True), f"create {str(work)!r}")
        norm = self.splits.train.normalization
        result = fit(self.model, self.splits.train, CrossEntropy(), self.config, normalization=norm, run_dir=work,
                     resume=resume, record=self.identity, description="original")
        record = {
            "kind": "original", "data": dataclasses.asdict(self.source), "dataset": self.identity["data"],
            "normalization": {"mean": list(norm.mean), "std": list(norm.std)},
            "train_indices": np.arange(len(self.splits.train), dtype=np.int64), "config": self.config.to_dict(),
            "history": result.history, "cost": _cost(result, self.model, self.splits),
            "environment": checkpoint.environment(next(self.model.parameters()).device),
            "ranks": distributed.world()[1],
        }
        saved = save_run(work, self.model, record)
        return Run(self.model, saved.record, Path(folder), data=self.splits if self.in_memory else None)


def prepare_original(source: "DataSource | DatasetSplits", model_name: str, config: TrainConfig, *,
                     model_kwargs: dict | None = None) -> OriginalStep:
    """Check an Original's training before any of it runs: the device and augmentation backend,
    the data set (a :class:`DataSource`, or :class:`DatasetSplits` given in memory), the model
    and that it takes the data's images."""
    check_runnable(config)
    source, splits, in_memory = _source_and_data(source)
    torch.manual_seed(config.seed)
    model = build(model_name, splits.train.num_classes, **(model_kwargs or {}))
    check_fits(model, splits)
    identity = {"kind": "original", "data": dataset_identity(splits), "model": model_config(model)}
    return OriginalStep(config, plain(identity), source=source, splits=splits, model=model, in_memory=in_memory)


def train_original(
    source: "DataSource | DatasetSplits", model_name: str, config: TrainConfig, folder: str | Path, *,
    model_kwargs: dict | None = None, resume: bool = False, overwrite: bool = False,
) -> Run:
    """Train the Original model on the whole training split of ``source`` (a :class:`DataSource`,
    or :class:`DatasetSplits` in memory) into the run folder ``folder``. ``resume`` continues a killed run of the same folder; ``overwrite`` replaces a
    finished run there (only when this one succeeds). Everything is checked before training."""
    check_target(folder, overwrite=overwrite, resume=resume)
    step = prepare_original(source, model_name, config, model_kwargs=model_kwargs)
    with staged_by_main(folder, overwrite=overwrite, resume=resume, belongs=step.belongs) as work:
        return step.run(work, Path(folder), resume=resume)


def make_forget_split(original: "Run | str | Path", kind: str = "random", *, ratio: float | None = None,
                      classes=None, num_chunks: int | None = None, seed: int = 0,
                      data: DatasetSplits | None = None) -> ForgetSplit:
    """A forget/retain split of the Original's training set (checked to lie inside it), recording
    the data set's identity. ``data``: the Original's data set when it was given in memory."""
    original = _as_run(original)
    splits, identity = original.load_data(data)
    train_indices = np.asarray(original.record["train_indices"])
    split = make_split(kind, num_train=len(splits.train), labels=splits.train.labels,
                       class_names=splits.train.classes, ratio=ratio, classes=classes, num_chunks=num_chunks,
                       seed=seed, train_indices=train_indices)
    check_within_training(split, train_indices)
    return dataclasses.replace(split, dataset=identity)


@dataclasses.dataclass(kw_only=True)
class UnlearningStep(_Step):
    """An unlearning run, checked and ready (:func:`prepare_unlearning`); :meth:`run` writes it into
    a working folder the caller has staged and locked."""

    method: str
    hparams: dict
    original: Run
    splits: DatasetSplits
    split: ForgetSplit
    in_memory: bool = False

    def run(self, work: Path, folder: Path, *, resume: bool = False, on_epoch_end=None) -> Run:
        """Unlearn (continuing ``work``'s checkpoint with ``resume``); write ``work/split.npz`` and
        ``work/model.pt``; the returned run names ``folder``, where ``work`` is about to be moved."""
        original = self.original
        distributed.on_main(lambda: Path(work).mkdir(parents=True, exist_ok=True) or self.split.save(work / SPLIT_FILE),
                            f"write {str(Path(work) / SPLIT_FILE)!r}")
        result = unlearn(self.method, original.model, self.splits.train, self.split, self.config,
                         normalization=original.normalization, hparams=self.hparams, test=self.splits.test,
                         run_dir=work, resume=resume, on_epoch_end=on_epoch_end, record=self.identity)
        record = {
            "kind": "unlearned", "method": self.method, "hparams": result.hparams, "data": original.record["data"],
            "dataset": self.identity["data"], "normalization": original.record["normalization"],
            "train_indices": original.record["train_indices"], "original": str(original.folder),
            "split_file": SPLIT_FILE, "split": self.split.to_dict(), "config": self.config.to_dict(),
            "history": result.train.history, "cost": _cost(result.train, result.model, self.splits),
            "environment": checkpoint.environment(next(result.model.parameters()).device),
            "ranks": distributed.world()[1],
        }
        saved = save_run(work, result.model, record)
        return Run(result.model, saved.record, Path(folder), data=self.splits if self.in_memory else None)


def prepare_unlearning(method: str, original: "Run | str | Path", split: ForgetSplit, config: TrainConfig, *,
                       hparams: dict | None = None, data: DatasetSplits | None = None) -> UnlearningStep:
    """Check an unlearning run before any of it runs: the method and its hyperparameters, the
    device and backend, the Original against its data set (``data`` when it was given in
    memory), and the split against both (made on the same data set, inside the Original's
    training indices)."""
    hparams = resolve_hparams(method, hparams)
    check_runnable(config)
    original = _as_run(original)
    in_memory = data is not None or original.data is not None
    splits, data = original.load_data(data)
    _check_classes(original.model, splits, "the Original model")
    check_same_dataset(split.dataset, data, "the split")
    check_within_training(split, np.asarray(original.record["train_indices"]))
    identity = {"kind": "unlearned", "method": method, "hparams": hparams, "data": data,
                "model": model_config(original.model), "original": weights_digest(original.model.state_dict()),
                "split": split.to_dict()}
    return UnlearningStep(config, plain(identity), method=method, hparams=hparams, original=original, splits=splits,
                          split=split, in_memory=in_memory)


def run_unlearning(
    method: str, original: "Run | str | Path", split: ForgetSplit, config: TrainConfig, folder: str | Path, *,
    hparams: dict | None = None, resume: bool = False, overwrite: bool = False, on_epoch_end=None,
    data: DatasetSplits | None = None,
) -> Run:
    """Unlearn ``split.forget`` from the Original with ``method`` into the run folder ``folder``
    (the model and the split). ``resume`` continues a killed run of the same folder (refused when
    its checkpoint is of another run); ``overwrite`` replaces a finished run there (only when this
    one succeeds). ``data``: the Original's data set when it was given in memory. Everything is
    checked before training."""
    check_target(folder, overwrite=overwrite, resume=resume)
    step = prepare_unlearning(method, original, split, config, hparams=hparams, data=data)
    with staged_by_main(folder, overwrite=overwrite, resume=resume, belongs=step.belongs) as work:
        return step.run(work, Path(folder), resume=resume, on_epoch_end=on_epoch_end)


@dataclasses.dataclass(frozen=True)
class RunPredictions:
    """What an evaluation needs of a run's model (:func:`predict_run`): its predictions on a split's
    forget, retain and test samples, and the run's recorded cost. :meth:`metrics` computes the rest
    without the model, on the CPU (the MIA's SVC fit), so it may run in another thread while the
    model trains on."""

    predictions: dict
    """``forget``, ``retain``, ``test`` (and ``forgotten_test`` for a class-wise split) :class:`Predictions`."""
    cost: dict
    """The run's ``seconds`` and ``PFLOPs`` from its record."""
    mia_attack: str
    predict_seconds: float

    def metrics(self, retrain: "dict | None" = None) -> dict:
        """UA, RA, TA, MIA, FA, ``eval_seconds`` (model passes and metrics), the run's cost, and
        Avg.Gap when ``retrain`` metrics are given (see :func:`evaluate_run`)."""
        started = time.perf_counter()
        metrics = metrics_from_predictions(**self.predictions, mia_attack=self.mia_attack)
        metrics["eval_seconds"] = self.predict_seconds + time.perf_counter() - started
        if retrain is not None:
            metrics["Avg.Gap"] = avg_gap(metrics, retrain)
        metrics.update(self.cost)
        return metrics


def predict_run(run: "Run | str | Path", *, split: "ForgetSplit | str | Path | None" = None, device=None,
                mia_attack: str = "confidence", data: DatasetSplits | None = None) -> RunPredictions:
    """The model passes of :func:`evaluate_run` (arguments as there), after its checks; the
    metrics follow from :meth:`RunPredictions.metrics`."""
    run = _as_run(run)
    return _predict(run, *_evaluation_data(run, split, data), device=device, mia_attack=mia_attack)


def _predict(run: "Run", splits: DatasetSplits, split: ForgetSplit, *, device, mia_attack: str) -> RunPredictions:
    if mia_attack not in ATTACKS:
        raise ValueError(f"mia_attack must be one of {', '.join(map(repr, ATTACKS))}; got {mia_attack!r}")
    if device is not None:
        run.model.to(device)
    started = time.perf_counter()
    predictions = unlearning_predictions(run.model, splits.train, splits.test, split,
                                         normalization=run.normalization)
    cost = {k: v for k, v in run.record.get("cost", {}).items() if k in ("seconds", "PFLOPs")}
    return RunPredictions(predictions, cost, mia_attack, time.perf_counter() - started)


def _evaluation_data(run: "Run", split, data: DatasetSplits | None) -> tuple[DatasetSplits, ForgetSplit]:
    """The run's data set and the split to evaluate it on, checked against each other and the run."""
    if split is None:
        split = run.folder / SPLIT_FILE
        if not split.is_file():
            raise ValueError(f"{str(run.folder)!r} has no {SPLIT_FILE}; pass the split to evaluate against "
                             "(e.g. the split.npz of an unlearning run)")
    where = "the split" if isinstance(split, ForgetSplit) else repr(str(split))
    if not isinstance(split, ForgetSplit):
        split = ForgetSplit.load(split)
    splits, identity = run.load_data(data)
    _check_classes(run.model, splits, f"the model of {str(run.folder)!r}")
    check_same_dataset(split.dataset, identity, where)
    check_split_of(run, split, where)
    check_within_training(split, np.asarray(run.record["train_indices"]))
    return splits, split


RETRAIN_ARCHITECTURE = "retrain_architecture"
"""The entry of a run's metrics that says its Avg.Gap compares it with a Retrain of another
architecture, as the caller allowed: ``"other: <how the architectures differ>"``."""


def compare_with_retrain(run: Run, retrain: Run, *, what: str | None = None, against: str | None = None,
                         allow_other_architecture: bool = False) -> str | None:
    """:func:`coun_fast.run_identity.check_comparable` of ``run`` (``what``, default its folder)
    with the Retrain it is measured against (``against``, default ``the Retrain <folder>``):
    ValueError, naming what differs, unless both are of the same data set, training indices,
    number of classes, split and (unless ``allow_other_architecture``) architecture. Returns how
    the architectures differ (None when they do not)."""
    return check_comparable(retrain, run, what=what or repr(str(run.folder)),
                            against=against or f"the Retrain {str(retrain.folder)!r}",
                            allow_other_architecture=allow_other_architecture)


def note_other_architecture(metrics: dict, difference: str | None) -> dict:
    """``metrics`` with :data:`RETRAIN_ARCHITECTURE` set when ``difference`` (from
    :func:`compare_with_retrain`) says the Retrain is of another architecture."""
    if difference is not None:
        metrics[RETRAIN_ARCHITECTURE] = f"other: {difference}"
    return metrics


def evaluate_run(run: "Run | str | Path", *, split: "ForgetSplit | str | Path | None" = None,
                 retrain: "dict | Run | str | Path | None" = None, device=None, analyses: bool = False,
                 mia_attack: str = "confidence", data: DatasetSplits | None = None,
                 allow_other_architecture: bool = False) -> dict:
    """UA, RA, TA, MIA (and Avg.Gap when a ``retrain`` is given), plus the run's cost.

    ``retrain``: the Retrain run (a :class:`Run`, its folder or its model file), checked before
    any work to be comparable with ``run`` (:func:`compare_with_retrain`: the same data set,
    training indices, number of classes, split and architecture, else ValueError naming what
    differs) and evaluated on the same split; or its metrics (a dict as this function returns),
    taken as they are. ``allow_other_architecture=True`` compares a Retrain of another
    architecture on purpose; the metrics then hold :data:`RETRAIN_ARCHITECTURE`.
    ``data``: the run's data set when it was given in memory (a run made in this process keeps it).
    ``mia_attack`` picks the SVC attack of the MIA column (SalUn's ``confidence`` by default; see
    :data:`coun_fast.evaluate.mia.ATTACKS`).

    ``split`` defaults to the run's own ``split.npz``; an Original (which has none) needs one. The
    split must be of the run's data set, and for an unlearned run the very split it unlearned
    (as its model file records it), else ValueError.
    ``analyses=True`` adds the paper's representation analyses: ``forget_predictions`` (share in %
    of the forget samples predicted as each class, top 5) and ``centroid_distances`` (average
    distance of the forget features to each retain class centroid, divided by the largest).
    The same in two parts: :func:`predict_run` (the model passes), then :meth:`RunPredictions.metrics`.
    """
    run = _as_run(run)
    reference, difference = None, None
    if retrain is not None and not isinstance(retrain, dict):
        reference = _as_run(retrain)
        difference = compare_with_retrain(run, reference, allow_other_architecture=allow_other_architecture)
    splits, split = _evaluation_data(run, split, data)
    if reference is not None:
        known = next((d for d in (data, reference.data, run.data) if d is not None), None)
        retrain = evaluate_run(reference, split=split, device=device, mia_attack=mia_attack, data=known)
    metrics = _predict(run, splits, split, device=device, mia_attack=mia_attack).metrics(retrain)
    if analyses:
        metrics.update(representation_analyses(run, splits, split))
    return note_other_architecture(metrics, difference)


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
