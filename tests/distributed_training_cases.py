"""The runs of tests/test_distributed_training.py, shared by the test (one process) and its
worker (each rank of a gloo group): the same data, initial weights and configuration on both sides.

TinyNet has BatchNorm: the runs use ``sync_batchnorm=True`` so that K ranks normalize with the
statistics of the global batch, as one process does, and no dropout (p = 0: a rank draws its own
dropout masks, which one process cannot reproduce).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from coun_fast.data.embedded import synthetic
from coun_fast.train import TrainConfig, fit
from coun_fast.unlearn.base import ForgetData, forget_stream
from coun_fast.unlearn.coun import CoUnObjective
from coun_fast.unlearn.gradient_ascent import GradientAscentObjective
from coun_fast.unlearn.l1_sparse import L1SparseObjective
from coun_fast.unlearn.neggrad_plus import NegGradPlusObjective
from nets import TinyNet

EPOCHS = 2
CONFIG = TrainConfig(epochs=EPOCHS, batch_size=16, lr=0.05, schedule="cosine", min_lr=1e-3, device="cpu",
                     progress=False, augment_backend="cpu", sync_batchnorm=True, checkpoint_every=0)
COUN = {
    "coun": dict(lam=1.0, temperature=0.2, cl_scope="global"),
    "coun_rank": dict(lam=1.0, temperature=0.2, cl_scope="rank"),
    "ft": dict(lam=0.0),
}
FORGET = np.arange(0, 96, 3)  # 32 forget samples (2 global batches), 64 retain samples (4)
RETAIN = np.setdiff1d(np.arange(96), FORGET)


def data():
    """96 training images of 8x8 in 4 classes: 6 global batches of 16 per epoch."""
    return synthetic(num_classes=4, train_per_class=24, test_per_class=4, image_size=8, seed=0)


def initial_model() -> TinyNet:
    torch.manual_seed(0)
    model = TinyNet()
    model.body[-1].p = 0.0  # no dropout (see the module's docstring)
    return model


class Stopped(Exception):
    """Raised by :class:`StopAfter` (on every rank at the same step, like a kill of the whole job)."""


class StopAfter:
    """``objective`` that raises :class:`Stopped` at its call number ``calls`` + 1."""

    def __init__(self, objective, calls: int) -> None:
        self.objective, self.calls = objective, calls

    def __getattr__(self, name):
        return getattr(self.objective, name)

    def __call__(self, model, batch):
        self.calls -= 1
        if self.calls < 0:
            raise Stopped
        return self.objective(model, batch)


def objective(name: str, train):
    """``(objective, training indices)`` of run ``name``: CoUn of :data:`COUN`, GA on the forget
    set, l1-sparse or NegGrad+ (a forget stream beside the retain loop)."""
    if name in COUN:
        return CoUnObjective(**COUN[name]), None
    if name == "ga":
        return GradientAscentObjective(), FORGET
    if name == "l1_sparse":  # its penalty weight is set per epoch by start_epoch
        return L1SparseObjective(gamma=5e-3, l1_epochs=2), RETAIN
    if name == "neggrad_plus":
        data = ForgetData(train, RETAIN, train.normalization, FORGET)
        return NegGradPlusObjective(0.9, forget_stream(data, CONFIG, "train"), "train"), RETAIN
    raise KeyError(name)


METHODS = {
    "retrain": ("retrain", {}), "not": ("not", {}), "boundary_shrink": ("boundary_shrink", {}),
    "ft+cl": ("ft+cl", {}), "ga+cl": ("ga+cl", {}),
    # their side streams reduced over the ranks: relabelled forget rows (a mixed loop; a forget pass
    # through DDP), a saliency pass split by batches and its mask, max steps, teachers, SSD's
    # importances split by batches, CU's gathered retain batch (its last forget batch of 8 rows
    # keeps 8 retain rows, all on rank 0 of 2) and its stopping rule on rank 0
    "rl": ("rl", {}), "rl_forget_pass": ("rl", {"variant": "forget_then_retain"}),
    "salun": ("salun", {"variant": "forget_then_retain"}), "salun_union": ("salun", {"threshold": 0.3}),
    "bad_teacher": ("bad_teacher", {}), "scrub": ("scrub", {"msteps": 1, "forget_batch_size": 8}),
    "ssd": ("ssd", {"importance_batch_size": 16, "alpha": 1.0}), "cu": ("cu", {}),
}
"""Runs through :func:`coun_fast.unlearn.unlearn` (their plan prepares the model): name ->
(method, hyperparameters)."""


THREE_RANKS = {"rl_forget_pass": {}, "salun": {}, "scrub": {"forget_batch_size": 6}, "ssd": {}, "cu": {},
               "bad_teacher": {"retain_fraction": 1 / 3}}
"""Runs of :data:`METHODS` that 3 ranks repeat with :data:`THREE_RANKS_CONFIG` (hyperparameters
changed so): the last global batches of 6 rows (the loop's, RL's forget pass, CU's last forget batch,
whose 6 retain rows are all on rank 0), SSD's 2 forget batches on ranks 0 and 1 alone. Every last
batch splits evenly over the 3 ranks (Bad Teacher's loop: 24 forget + 24 retain samples): a step
over uneven shares averages the ranks' means, not the one-process mean (README, Several GPUs)."""
THREE_RANKS_CONFIG = CONFIG.replace(batch_size=18)


def run_method(name: str, splits, config: TrainConfig = CONFIG, changes: dict | None = None) -> dict:
    """Unlearn a random quarter of ``splits.train`` from :func:`initial_model` with run ``name`` of
    :data:`METHODS` (its hyperparameters updated with ``changes``) under ``config``; the final
    weights and, under ``"images"``, the images its cost counts."""
    from coun_fast.data.splits import random_split
    from coun_fast.unlearn import unlearn

    method, hparams = METHODS[name]
    result = unlearn(method, initial_model(), splits.train, random_split(len(splits.train), 0.25, seed=0), config,
                     hparams={**hparams, **(changes or {})}, test=splits.test)
    weights = {key: value.detach().clone() for key, value in result.model.state_dict().items()}
    return {**weights, "images": torch.tensor([result.train.trained_images, result.train.extra_forward_images])}


def run(name: str, train, *, run_dir=None, resume: bool = False, stop_after_epochs: int | None = None) -> dict:
    """Train run ``name`` (:func:`objective`) from :func:`initial_model`; its final weights and,
    under the key ``"images"``, the images its cost counts (trained, forward only)."""
    model = initial_model()
    loss, indices = objective(name, train)
    if stop_after_epochs is not None:
        loss = StopAfter(loss, stop_after_epochs * len(train) // CONFIG.batch_size)
    result = fit(model, train, loss, CONFIG, indices=indices, run_dir=run_dir, resume=resume, record={"case": name})
    weights = {key: value.detach().clone() for key, value in model.state_dict().items()}
    return {**weights, "images": torch.tensor([result.trained_images, result.extra_forward_images])}


WORKFLOW_CONFIG = TrainConfig(epochs=2, batch_size=64, lr=0.01, schedule="cosine", min_lr=1e-4, device="cpu",
                              progress=False, augment_backend="cpu", sync_batchnorm=True, checkpoint_every=0)
"""The unlearning run of the workflow case: small_cnn's Original on the embedded digits (8x8)."""


def prepare_workflow(directory: Path) -> None:
    """One process: the Original, a split, and a CoUn run killed after its first epoch (its
    partial folder waits in ``directory``)."""
    from coun_fast.workflow import DataSource, make_forget_split, run_unlearning, train_original

    original = train_original(DataSource("digits", image_size=8), "small_cnn", WORKFLOW_CONFIG.replace(epochs=1),
                              directory / "original")
    split = make_forget_split(original, "random", ratio=0.1, seed=0)
    split.save(directory / "split.npz")

    def kill_after_the_first_epoch(model, epoch):
        raise Stopped

    try:
        run_unlearning("coun", original, split, WORKFLOW_CONFIG, directory / "coun",
                       on_epoch_end=kill_after_the_first_epoch)
    except Stopped:
        pass


def resume_workflow(directory: Path) -> dict:
    """Every rank: resume the killed CoUn run of :func:`prepare_workflow`; its record."""
    from coun_fast.data import ForgetSplit
    from coun_fast.workflow import run_unlearning

    split = ForgetSplit.load(directory / "split.npz")
    return run_unlearning("coun", directory / "original", split, WORKFLOW_CONFIG, directory / "coun",
                          resume=True).record


COUN_METHOD = {"name": "coun", "label": "CoUn", "hparams": {"lam": 0.5, "temperature": 0.1}}
EXPERIMENTS = {
    "tiny": {},
    # CoUn's grid of two points on the held-out seed 5, then seed 0 with the chosen point
    "sweep": {"methods": [COUN_METHOD], "sweep": {"seed": 5, "enabled": True, "grid": {"CoUn": {"lam": [0.0, 0.5]}}}},
    # two stages of 10% each; CoUn's stage 1 starts from its stage 0 run folder
    "sequential": {"methods": [COUN_METHOD], "scenario": {"kind": "sequential", "ratio": 0.2, "chunks": 2}},
}
"""The experiments that 2 ranks run against one process: :func:`experiment_file`'s top-level
changes, by name."""


def experiment(output: Path, cache: Path, **changes):
    """:func:`experiment_file`'s experiment, parsed."""
    from coun_fast.experiment import parse_config

    return parse_config(experiment_file(output, cache, **changes))


def experiment_file(output: Path, cache: Path, **changes) -> dict:
    """A tiny experiment file's content (synthetic 8x8 images, a narrow small_cnn, FT and CoUn, one
    seed, 2 epochs per step, SyncBatchNorm, per-epoch curves) writing into ``output``, its models
    cached in ``cache``; ``changes``: top-level keys replaced."""
    train = {"epochs": 2, "lr": 0.05, "batch_size": 32, "sync_batchnorm": True, "augment_backend": "cpu"}
    raw = {
        "name": "ddp_tiny", "data": {"dataset": "synthetic", "image_size": 8},
        "model": {"name": "small_cnn", "kwargs": {"widths": [8, 16]}},
        "original": {"preset": "paper", **train}, "unlearn": {"preset": "paper_unlearn", **train, "lr": 0.01},
        "scenario": {"kind": "random", "ratio": 0.1},
        "methods": [{"name": "ft", "label": "FT"}, COUN_METHOD],
        "seeds": [0], "device": "cpu", "output": str(output), "cache": str(cache), "curves": True,
    }
    return {**raw, **changes}


def errors(train, directory: Path) -> dict[str, str]:
    """What a distributed run must refuse, each error's message (or "no error"); the refused
    experiments would write into ``directory/refused`` and ``directory/refused_cache``. SalUn and
    SCRUB stand for a method not verified under DDP (every registered method is, now) with their
    registry entries marked so while the refusals run."""
    import dataclasses

    from coun_fast.data.splits import random_split
    from coun_fast.experiment import run_experiment
    from coun_fast.step import graph_unsupported
    from coun_fast.unlearn import METHODS as REGISTRY
    from coun_fast.unlearn import resolve_hparams, unlearn

    class WithPass(CoUnObjective):
        def start_epoch(self, model, optimizer, epoch):
            pass

    found = {}
    split = random_split(len(train), 0.25, seed=0)
    registered = {name: REGISTRY[name] for name in ("salun", "scrub")}
    unverified = {name: dataclasses.replace(method, distributed=False) for name, method in registered.items()}
    for case, attempt in {
        "indivisible_batch": lambda: fit(initial_model(), train, CoUnObjective(), CONFIG.replace(batch_size=15)),
        "salun": lambda: REGISTRY.update(unverified) or resolve_hparams("salun"),
        "salun+cl": lambda: resolve_hparams("salun+cl"),
        "experiment_methods": lambda: run_experiment(experiment(
            directory / "refused", directory / "refused_cache",
            methods=["ft", "salun", {"name": "scrub", "label": "SCRUB"}, "ga+cl"]), progress=False, log=None),
        "registry_restored": lambda: REGISTRY.update(registered),
        "scrub_forget_batch": lambda: resolve_hparams("scrub", {"forget_batch_size": 7}),
        "mixed_cl": lambda: unlearn("salun+cl", initial_model(), train, split, CONFIG),
        "bad_teacher_cl": lambda: unlearn("bad_teacher+cl", initial_model(), train, split, CONFIG),
        "experiment_forget_batch": lambda: run_experiment(experiment(
            directory / "refused", directory / "refused_cache",
            methods=["ft", {"name": "scrub", "hparams": {"forget_batch_size": 9}}]), progress=False, log=None),
        "experiment_mixed_cl": lambda: run_experiment(experiment(
            directory / "refused", directory / "refused_cache", methods=["ft", "rl+cl"]), progress=False, log=None),
        "cl_scope": lambda: resolve_hparams("coun", {"cl_scope": "node"}),
        "start_epoch": lambda: fit(initial_model(), train, WithPass(), CONFIG),
        "cuda_graph": lambda: fit(initial_model(), train, CoUnObjective(), CONFIG.replace(cuda_graph=True)),
        "experiment_batch": lambda: run_experiment(experiment(
            directory / "refused", directory / "refused_cache", unlearn={"batch_size": 15}), progress=False, log=None),
        "experiment_sweep_batch": lambda: run_experiment(experiment(
            directory / "refused", directory / "refused_cache",
            sweep={"seed": 5, "enabled": True, "grid": {"CoUn": {"lam": [0.1], "batch_size": [32, 15]}}}),
            progress=False, log=None),
        "experiment_sweep_forget_batch": lambda: run_experiment(experiment(
            directory / "refused", directory / "refused_cache", methods=["ft", {"name": "scrub", "label": "SCRUB"}],
            sweep={"seed": 5, "enabled": True, "grid": {"SCRUB": {"forget_batch_size": [8, 9]}}}),
            progress=False, log=None),
        "experiment_device": lambda: run_experiment(experiment(
            directory / "refused", directory / "refused_cache", device="cuda:1"), progress=False, log=None),
    }.items():
        try:
            attempt()
            found[case] = "no error"
        except ValueError as error:
            found[case] = str(error)
    found["graph"] = graph_unsupported(CoUnObjective(), torch.device("cuda")) or "capturable"
    return found
