"""Content-addressed Original and Retrain models.

An Original is keyed by a hash of the data source, the model, its training recipe and the seed;
a Retrain by the Original's key, the forget split (with the data set's identity) and its recipe.
Both live in ``{cache}/original/{key}/`` and ``{cache}/retrain/{key}/`` (a workflow run folder
plus ``key.json``, what the hash covers, for people). An entry is written as a unit
(:func:`coun_fast.runfolder.staged`): it appears only when finished, under its lock, and a
finished entry is reused as it is. A killed entry resumes from the checkpoint in its partial
folder when that checkpoint is of the same run, and starts over otherwise. ``device``,
``progress`` and ``checkpoint_every`` are left out of the hashes: where a model was trained,
whether a bar was shown and how often a checkpoint was written do not change its recipe (results
on another device may differ in the last bits). A file data set is identified by its path in the
key and by its content in the models' records. Two
processes filling the same entry at once: the second is refused at once, naming the first.

Under ``torchrun`` (several ranks) every rank trains a missing entry together; rank 0 alone takes
the lock and writes it (:func:`coun_fast.runfolder.staged_by_main`), decides whether the entry is
reused (the same decision on every rank), and the other ranks read the model from the entry once
rank 0 has written it, so that every rank holds rank 0's weights and buffers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Callable

from coun_fast import distributed
from coun_fast.data import ForgetSplit
from coun_fast.data.cache import default_cache_dir
from coun_fast.files import write_text_atomic
from coun_fast.identity import fingerprint
from coun_fast.runfolder import locked, staged_by_main
from coun_fast.train import TrainConfig
from coun_fast.workflow import MODEL_FILE, Run, load_run, prepare_original, prepare_unlearning

CACHE_VERSION = 2
"""2: entries written as a unit; splits and records carry the data set's identity."""
_UNHASHED = ("device", "progress", "checkpoint_every")
_LATER_DEFAULTS = {"optimizer": "sgd"}
"""TrainConfig fields added after CACHE_VERSION 1, left out of the hashes at these values (so the keys of
entries made before they existed stay valid)."""


def recipe(config: TrainConfig) -> dict:
    """``config`` as a dict without the fields that do not change the trained model (:data:`_UNHASHED`)
    and without later fields at their old implicit value (``optimizer: sgd``)."""
    return {k: v for k, v in config.to_dict().items()
            if k not in _UNHASHED and not (k in _LATER_DEFAULTS and v == _LATER_DEFAULTS[k])}


def split_fingerprint(split: ForgetSplit) -> str:
    return fingerprint(split.to_dict())


def cache_root(cache: Path | None) -> Path:
    """``cache``, or ``$COUN_FAST_CACHE`` / ``~/.cache/coun_fast`` when None."""
    return Path(cache) if cache is not None else default_cache_dir()


@dataclasses.dataclass(frozen=True)
class Cached:
    """A cached model: the run, its key, and whether it was reused (True) or trained now."""

    run: Run
    key: str
    hit: bool


def _finished_entry(folder: Path) -> bool:
    """Whether ``folder`` holds a finished entry, as rank 0 sees it (every rank gets its answer)."""
    finished = distributed.on_main(lambda: (folder / MODEL_FILE).is_file(), f"look up the cache entry {str(folder)!r}")
    return bool(finished)


def _reuse_or_make(folder: Path, described: dict, prepare: Callable[[], object], device) -> tuple[Run, bool]:
    """The finished entry ``folder``, or the step ``prepare()`` gives run into it now (resuming a
    partial entry of the same run); ``(run, reused)``. Under torchrun: see the module docstring."""
    if _finished_entry(folder):
        return load_run(folder, device=device), True
    step = prepare()  # every check before the lock is taken and any work is done
    with contextlib.ExitStack() as stack:  # the lock, on rank 0 alone
        distributed.on_main(lambda: stack.enter_context(locked(folder, what="cache entry")) and None,
                            f"lock the cache entry {str(folder)!r}")
        if _finished_entry(folder):  # finished by another process meanwhile
            return load_run(folder, device=device), True
        with staged_by_main(folder, overwrite=True, resume="auto", belongs=step.belongs, lock=False) as work:
            text = json.dumps(described, indent=2, default=str)
            distributed.on_main(lambda: write_text_atomic(work / "key.json", text),
                                f"write the cache entry's key {str(work / 'key.json')!r}")
            run = step.run(work, folder, resume=True)
    if not distributed.is_main():  # rank 0's weights and buffers (BatchNorm statistics are each rank's own)
        run = load_run(folder, device=device)
    return run, False


def cached_original(source, model_name: str, model_kwargs: dict, config: TrainConfig, cache: Path | None, *,
                    device=None) -> Cached:
    """The Original for ``(source, model, config)`` (``config.seed`` is the seed): reused or trained."""
    described = {"version": CACHE_VERSION, "step": "original", "data": dataclasses.asdict(source),
                 "model": {"name": model_name, "kwargs": model_kwargs}, "config": recipe(config)}
    key = fingerprint(described)
    folder = cache_root(cache) / "original" / key
    run, hit = _reuse_or_make(folder, described,
                              lambda: prepare_original(source, model_name, config, model_kwargs=model_kwargs), device)
    return Cached(run, key, hit)


def cached_retrain(original: Cached, split: ForgetSplit, config: TrainConfig, cache: Path | None, *,
                   device=None) -> Cached:
    """Retrain of ``split`` (from scratch on its retain set, ``config``): reused or trained."""
    described = {"version": CACHE_VERSION, "step": "retrain", "original": original.key,
                 "split": split_fingerprint(split), "config": recipe(config)}
    key = fingerprint(described)
    folder = cache_root(cache) / "retrain" / key
    run, hit = _reuse_or_make(folder, described,
                              lambda: prepare_unlearning("retrain", original.run, split, config), device)
    return Cached(run, key, hit)


__all__ = ["CACHE_VERSION", "Cached", "cache_root", "cached_original", "cached_retrain", "fingerprint", "recipe",
           "split_fingerprint"]
