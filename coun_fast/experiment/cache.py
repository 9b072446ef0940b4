"""Content-addressed Original and Retrain models, and the reuse rules of run folders.

An Original is keyed by a hash of the data source, the model, its training recipe and the seed;
a Retrain by the Original's key, the forget split and its recipe. Both live in
``{cache}/original/{key}/`` and ``{cache}/retrain/{key}/`` (a workflow run folder plus
``key.json``, what the hash covers, for people). An entry whose ``model.pt`` exists is reused; a
killed one resumes from its ``checkpoint.pt``. ``device`` and ``progress`` are left out of the
hashes: where a model was trained and whether a bar was shown do not change its recipe (results
on another device may differ in the last bits). A file data set is identified by its path, not
its content. Two processes filling the same entry at once are not supported.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Callable

from coun_fast import checkpoint
from coun_fast.data import ForgetSplit
from coun_fast.data.cache import default_cache_dir
from coun_fast.train import TrainConfig
from coun_fast.workflow import MODEL_FILE, Run, load_run, run_unlearning, train_original

CACHE_VERSION = 1
_UNHASHED = ("device", "progress")
_LATER_DEFAULTS = {"optimizer": "sgd"}
"""TrainConfig fields added after CACHE_VERSION 1, left out of the hashes at these values (so the keys of
entries made before they existed stay valid)."""


def fingerprint(payload) -> str:
    """A 20-hex-digit SHA-256 of ``payload`` as canonical JSON (sorted keys)."""
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def recipe(config: TrainConfig) -> dict:
    """``config`` as a dict without the fields that do not change the trained model (device, progress)
    and without later fields at their old implicit value (``optimizer: sgd``)."""
    return {k: v for k, v in config.to_dict().items()
            if k not in _UNHASHED and not (k in _LATER_DEFAULTS and v == _LATER_DEFAULTS[k])}


def split_fingerprint(split: ForgetSplit) -> str:
    return fingerprint(split.to_dict())


def cache_root(cache: Path | None) -> Path:
    """``cache``, or ``$COUN_FAST_CACHE`` / ``~/.cache/coun_fast`` when None."""
    return Path(cache) if cache is not None else default_cache_dir()


def resumable(folder: Path, config: TrainConfig) -> bool:
    """Whether ``folder/checkpoint.pt`` continues a run of exactly ``config``; a checkpoint of any
    other configuration is deleted (the run starts over)."""
    path = Path(folder) / "checkpoint.pt"
    if not path.is_file():
        return False
    try:
        same = checkpoint.load(path).get("config") == config.to_dict()
    except ValueError:  # unreadable: start over
        same = False
    if not same:
        path.unlink()
    return same


@dataclasses.dataclass(frozen=True)
class Cached:
    """A cached model: the run, its key, and whether it was reused (True) or trained now."""

    run: Run
    key: str
    hit: bool


def _reuse_or_train(folder: Path, described: dict, config: TrainConfig, train: Callable[[bool], Run],
                    device) -> tuple[Run, bool]:
    if (folder / MODEL_FILE).is_file():
        return load_run(folder, device=device), True
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "key.json").write_text(json.dumps(described, indent=2, default=str))
    return train(resumable(folder, config)), False


def cached_original(source, model_name: str, model_kwargs: dict, config: TrainConfig, cache: Path | None, *,
                    device=None) -> Cached:
    """The Original for ``(source, model, config)`` (``config.seed`` is the seed): reused or trained."""
    described = {"version": CACHE_VERSION, "step": "original", "data": dataclasses.asdict(source),
                 "model": {"name": model_name, "kwargs": model_kwargs}, "config": recipe(config)}
    key = fingerprint(described)
    folder = cache_root(cache) / "original" / key
    run, hit = _reuse_or_train(
        folder, described, config,
        lambda resume: train_original(source, model_name, config, folder, model_kwargs=model_kwargs, resume=resume),
        device)
    return Cached(run, key, hit)


def cached_retrain(original: Cached, split: ForgetSplit, config: TrainConfig, cache: Path | None, *,
                   device=None) -> Cached:
    """Retrain of ``split`` (from scratch on its retain set, ``config``): reused or trained."""
    described = {"version": CACHE_VERSION, "step": "retrain", "original": original.key,
                 "split": split_fingerprint(split), "config": recipe(config)}
    key = fingerprint(described)
    folder = cache_root(cache) / "retrain" / key
    run, hit = _reuse_or_train(
        folder, described, config,
        lambda resume: run_unlearning("retrain", original.run, split, config, folder, resume=resume), device)
    return Cached(run, key, hit)


__all__ = ["CACHE_VERSION", "Cached", "cache_root", "cached_original", "cached_retrain", "fingerprint", "recipe",
           "resumable", "split_fingerprint"]
