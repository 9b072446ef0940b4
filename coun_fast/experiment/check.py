"""Everything a run of an experiment would refuse on this machine, checked before any training.

:func:`coun_fast.experiment.config.parse_config` checks the file itself (keys, types, names,
hyperparameter values). :func:`check_experiment` adds what needs the machine and the data: the
device and each section's augmentation backend, the data set's files (and that a CIFAR file has
CIFAR's class count), the model against the data's images, the scenario on the data (class
names, a forget set that is neither empty nor everything, chunk counts, test images of the
forgotten and the retained classes) for every seed, and the output and cache folders (creatable,
writable, not in use by another run). ``coun-fast run --check`` runs it;
:func:`coun_fast.experiment.run_experiment` runs it first. Under ``torchrun`` (several ranks),
:func:`check_distributed_experiment` adds what such a run refuses: methods not verified under
DDP, a global batch hyperparameter or a ``+cl`` form of mixed batches it cannot run, a device
with a GPU index (or the CPU in an NCCL group), and batch sizes that the number of ranks does not
divide, in every method configuration the run may train (an enabled sweep's grid points
included).
"""

from __future__ import annotations

from pathlib import Path

import torch.distributed as dist

from coun_fast import distributed, ownership
from coun_fast.data import DatasetSplits, class_test_subsets, make_split
from coun_fast.data.loader import check_global_batch
from coun_fast.experiment.cache import cache_root
from coun_fast.experiment.config import ConfigError, ExperimentConfig, method_variants
from coun_fast.files import check_writable_location, describe_os_error
from coun_fast.models import build
from coun_fast.runfolder import is_busy
from coun_fast.train import check_runnable, parse_device, resolve_device
from coun_fast.unlearn import METHODS, resolve_hparams
from coun_fast.unlearn.base import check_global_batches, distributed_method_names
from coun_fast.unlearn.cl_plugin import check_cl_under_ranks, split_name
from coun_fast.workflow import check_fits


def _check_folder(path: Path, key: str, *, lock: bool) -> None:
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}: {str(path)!r} is a file, not a folder")
    try:
        check_writable_location(path, key)
    except OSError as error:
        raise ConfigError(f"{key}: {describe_os_error(error)}") from None
    holder = is_busy(path) if lock else None
    if holder is not None:
        raise ConfigError(f"{key}: {str(path)!r} is in use by {holder}; wait for that run to end or choose "
                          "another output folder")
    stranger = ownership.foreign(path) if key == "output" else None
    if stranger is not None:  # the runner writes and replaces files in it: only into a folder of its own
        raise ConfigError(f"{key}: {str(path)!r} holds {stranger}; choose another output folder (an experiment "
                          "writes only into an empty folder or one of its earlier runs)")


def _sections(config: ExperimentConfig) -> dict:
    """Every training configuration of ``config`` by its key: original, retrain, unlearn, each
    method's (and each point's of an enabled sweep, :func:`method_variants`)."""
    sections = {"original": config.original, "retrain": config.retrain, "unlearn": config.unlearn}
    sections.update({f"{key}.train": spec.train_config(config.unlearn) for key, spec in method_variants(config)})
    return sections


def check_experiment(config: ExperimentConfig) -> DatasetSplits:
    """Raise :class:`ConfigError`, naming the key, for anything a run of ``config`` would refuse
    later on this machine (see the module docstring); returns the loaded data set."""
    try:
        resolve_device(config.device)
    except ValueError as error:
        raise ConfigError(f"device: {error}") from None
    for key, train in _sections(config).items():
        try:
            check_runnable(train.replace(device=config.device))
        except ValueError as error:
            raise ConfigError(f"{key}: {error}") from None
    try:
        splits = config.data.load()
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(f"data: {error}") from None
    except OSError as error:
        raise ConfigError(f"data: {describe_os_error(error)}") from None
    try:
        check_fits(build(config.model.name, splits.train.num_classes, **config.model.kwargs), splits)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"model: {error}") from None
    train = splits.train
    seeds = list(config.seeds) + ([config.sweep.seed] if config.sweep is not None and config.sweep.enabled else [])
    for seed in seeds:
        try:
            split = make_split(num_train=len(train), labels=train.labels, class_names=train.classes, seed=seed,
                               **config.scenario.split_arguments())
            if split.kind == "class":  # the test images of the retained and the forgotten classes
                class_test_subsets(splits.test.labels, split.forget_classes)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"scenario: {error} (on {train.name!r}, seed {seed})") from None
    _check_folder(config.output, "output", lock=True)
    _check_folder(cache_root(config.cache), "cache", lock=False)
    return splits


def check_distributed_experiment(config: ExperimentConfig, ranks: int | None = None) -> None:
    """Raise :class:`ConfigError`, naming the key, when ``config`` asks for what the runner does not
    do under torchrun with ``ranks`` ranks (default: the running process group's size; nothing for
    one rank): a method that is not verified under DDP (:attr:`coun_fast.unlearn.base.Method.distributed`;
    all of them named in one error), a method's global batch hyperparameter that ``ranks`` does not
    divide (SCRUB's ``forget_batch_size``), a ``+cl`` form whose batches mix retain and forget rows
    (:func:`coun_fast.unlearn.cl_plugin.check_cl_under_ranks`), a device with a GPU index (each rank
    trains on its own GPU, cuda:LOCAL_RANK), a CPU device in a running NCCL group, or a section whose
    (global) batch size ``ranks`` does not divide. Method hyperparameters and batch sizes are checked
    for every configuration the run may train, each point of an enabled sweep's grid included
    (named ``sweep.grid.LABEL[POINT]``). The sweep and the sequential scenario run under torchrun
    as in one process: their steps are the runner's ordinary steps."""
    ranks = distributed.world()[1] if ranks is None else ranks
    if ranks == 1:
        return
    refused = [spec.name for spec in config.methods if not METHODS[split_name(spec.name)[0]].distributed]
    if refused:
        supported = ", ".join(distributed_method_names())
        raise ConfigError(f"methods: {', '.join(refused)} not yet supported under torchrun ({ranks} ranks); methods "
                          f"that are: {supported} (and their +cl forms); leave the others out (--methods) or run "
                          "the experiment in one process")
    for key, spec in method_variants(config):
        method = METHODS[split_name(spec.name)[0]]
        values = resolve_hparams(spec.name, dict(spec.hparams), check_ranks=False)
        try:
            check_global_batches(method, values, ranks)
            check_cl_under_ranks(method, spec.name, values, config.data.dataset, ranks)
        except ValueError as error:
            raise ConfigError(f"{key} ({spec.name}): {error}") from None
    device = None if config.device is None else parse_device(config.device)
    if device is not None and device.index is not None:
        raise ConfigError(f"device: {config.device}: under torchrun each rank trains on its own GPU, cuda:LOCAL_RANK; "
                          "give cuda (or cpu)")
    if device is not None and device.type != "cuda" and distributed.active() and dist.get_backend() == "nccl":
        raise ConfigError(f"device: {config.device}, but the process group uses NCCL, which needs GPUs; give the "
                          f"command --device {config.device} (it then joins a gloo group)")
    for key, train in _sections(config).items():
        try:
            check_global_batch(train.batch_size, ranks)
        except ValueError as error:
            raise ConfigError(f"{key}: {error}") from None


__all__ = ["check_distributed_experiment", "check_experiment"]
