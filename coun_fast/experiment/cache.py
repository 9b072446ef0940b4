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

The number of ranks that trains an entry changes the model (each rank's BatchNorm statistics,
the order of the sums), so a model trained by K > 1 ranks has its own key: ``ranks: K`` enters
the hashed description (``key.json``), beside ``sync_batchnorm`` in the recipe; one process adds
nothing, so the keys of single-process entries are those of earlier versions. Every entry records
its number of ranks (``ranks`` in its record; an entry of an older coun_fast, in its checkpoint),
and a reused entry of another number than the run's is refused, as is a cached Retrain that is
not comparable with its Original (:func:`coun_fast.run_identity.check_comparable`: data set,
training indices, classes, architecture) or that unlearned another split than the one asked.

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

from coun_fast import checkpoint, distributed
from coun_fast.data import ForgetSplit
from coun_fast.data.cache import default_cache_dir
from coun_fast.files import write_text_atomic
from coun_fast.identity import describe_differences, fingerprint
from coun_fast.run_identity import check_comparable
from coun_fast.runfolder import CHECKPOINT, locked, staged_by_main
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


def _with_ranks(described: dict, ranks: int) -> dict:
    """``described`` with ``ranks`` when several trained the model (one adds nothing: the keys of
    single-process entries stay those of earlier versions)."""
    return described if ranks == 1 else {**described, "ranks": ranks}


def original_description(source, model_name: str, model_kwargs: dict, config: TrainConfig, *,
                         ranks: int = 1) -> dict:
    """What an Original's key hashes (its entry's ``key.json``): the data source, the model, the
    recipe (:func:`recipe`) and the number of ranks that trains it."""
    return _with_ranks({"version": CACHE_VERSION, "step": "original", "data": dataclasses.asdict(source),
                        "model": {"name": model_name, "kwargs": model_kwargs}, "config": recipe(config)}, ranks)


def retrain_description(original_key: str, split: ForgetSplit, config: TrainConfig, *, ranks: int = 1) -> dict:
    """What a Retrain's key hashes: its Original's key, the split, the recipe and the number of ranks."""
    return _with_ranks({"version": CACHE_VERSION, "step": "retrain", "original": original_key,
                        "split": split_fingerprint(split), "config": recipe(config)}, ranks)


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


_ANEW = "delete the entry to train it anew"


def _recorded_ranks(run: Run) -> int:
    """How many ranks trained the entry ``run``: its record says (an entry of an older coun_fast:
    the world size its checkpoint holds; 1 without one)."""
    ranks = run.record.get("ranks")
    if ranks is None:
        path = run.folder / CHECKPOINT
        ranks = checkpoint.load(path).get("world_size", 1) if path.is_file() else 1
    return int(ranks)


def _check_ranks(run: Run, ranks: int) -> None:
    """ValueError unless the entry ``run`` was trained by ``ranks`` ranks."""
    recorded = _recorded_ranks(run)
    if recorded != ranks:
        def count(k: int) -> str:
            return f"{k} rank" + ("s" if k != 1 else "")

        raise ValueError(f"the cache entry {str(run.folder)!r} was trained by {count(recorded)}, but this run has "
                         f"{count(ranks)}: the number of ranks changes the model, and its key should have told them "
                         f"apart (an entry of an older coun_fast); {_ANEW}")


def _reuse_or_make(folder: Path, described: dict, prepare: Callable[[], object], device,
                   check: Callable[[Run], None]) -> tuple[Run, bool]:
    """The finished entry ``folder`` (``check``-ed: ValueError when it is not the one asked), or
    the step ``prepare()`` gives run into it now (resuming a partial entry of the same run);
    ``(run, reused)``. Under torchrun: see the module docstring."""
    def reuse() -> Run:
        run = load_run(folder, device=device)
        check(run)
        return run

    if _finished_entry(folder):
        return reuse(), True
    step = prepare()  # every check before the lock is taken and any work is done
    with contextlib.ExitStack() as stack:  # the lock, on rank 0 alone
        distributed.on_main(lambda: stack.enter_context(locked(folder, what="cache entry")) and None,
                            f"lock the cache entry {str(folder)!r}")
        if _finished_entry(folder):  # finished by another process meanwhile
            return reuse(), True
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
    """The Original for ``(source, model, config)`` (``config.seed`` is the seed) and the number of
    ranks of this process group: reused or trained."""
    ranks = distributed.world()[1]
    described = original_description(source, model_name, model_kwargs, config, ranks=ranks)
    key = fingerprint(described)
    folder = cache_root(cache) / "original" / key
    run, hit = _reuse_or_make(folder, described,
                              lambda: prepare_original(source, model_name, config, model_kwargs=model_kwargs), device,
                              lambda entry: _check_ranks(entry, ranks))
    return Cached(run, key, hit)


def _check_retrain(entry: Run, original: Run, split: ForgetSplit, ranks: int) -> None:
    """ValueError unless the cached Retrain ``entry`` is one of ``split`` from ``original``, trained by ``ranks``."""
    _check_ranks(entry, ranks)
    check_comparable(original, entry, what=f"the cached Retrain {str(entry.folder)!r}",
                     against=f"its Original {str(original.folder)!r}", fix=_ANEW)
    asked = {"forget": split.forget.tolist(), "retain": split.retain.tolist()}
    recorded = {k: (entry.record.get("split") or {}).get(k) for k in asked}
    if recorded != asked:
        raise ValueError(f"the cached Retrain {str(entry.folder)!r} unlearned another split than the one asked "
                         f"({describe_differences(recorded, asked)}); {_ANEW}")


def cached_retrain(original: Cached, split: ForgetSplit, config: TrainConfig, cache: Path | None, *,
                   device=None) -> Cached:
    """Retrain of ``split`` (from scratch on its retain set, ``config``): reused or trained."""
    ranks = distributed.world()[1]
    described = retrain_description(original.key, split, config, ranks=ranks)
    key = fingerprint(described)
    folder = cache_root(cache) / "retrain" / key
    run, hit = _reuse_or_make(folder, described,
                              lambda: prepare_unlearning("retrain", original.run, split, config), device,
                              lambda entry: _check_retrain(entry, original.run, split, ranks))
    return Cached(run, key, hit)


__all__ = ["CACHE_VERSION", "Cached", "cache_root", "cached_original", "cached_retrain", "fingerprint",
           "original_description", "recipe", "retrain_description", "split_fingerprint"]
