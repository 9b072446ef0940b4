"""Everything a run of an experiment would refuse on this machine, checked before any training.

:func:`coun_fast.experiment.config.parse_config` checks the file itself (keys, types, names,
hyperparameter values). :func:`check_experiment` adds what needs the machine and the data: the
device and each section's augmentation backend, the data set's files (and that a CIFAR file has
CIFAR's class count), the model against the data's images, the scenario on the data (class
names, a forget set that is neither empty nor everything, chunk counts, test images of the
forgotten and the retained classes) for every seed, and the output and cache folders (creatable,
writable, not in use by another run). ``coun-fast run --check`` runs it;
:func:`coun_fast.experiment.run_experiment` runs it first.
"""

from __future__ import annotations

from pathlib import Path

from coun_fast.data import DatasetSplits, class_test_subsets, make_split
from coun_fast.experiment.cache import cache_root
from coun_fast.experiment.config import ConfigError, ExperimentConfig
from coun_fast.files import check_writable_location, describe_os_error
from coun_fast.models import build
from coun_fast.runfolder import is_busy
from coun_fast.train import check_runnable, resolve_device
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


def check_experiment(config: ExperimentConfig) -> DatasetSplits:
    """Raise :class:`ConfigError`, naming the key, for anything a run of ``config`` would refuse
    later on this machine (see the module docstring); returns the loaded data set."""
    try:
        resolve_device(config.device)
    except ValueError as error:
        raise ConfigError(f"device: {error}") from None
    sections = {"original": config.original, "retrain": config.retrain, "unlearn": config.unlearn}
    sections.update({f"methods[{i}].train": spec.train_config(config.unlearn) for i, spec in enumerate(config.methods)})
    for key, train in sections.items():
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


__all__ = ["check_experiment"]
