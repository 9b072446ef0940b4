"""Run an experiment: per seed the Original, the split, Retrain and every method; then the results.

Layout of ``config.output``::

    config.json                 the validated experiment
    seed_<s>/Retrain/metrics.json, seed_<s>/Original/metrics.json   (models in the cache)
    seed_<s>/<label>/           a workflow run folder (model.pt, split.npz, checkpoint.pt) + metrics.json
    sweep/...                   the grid runs on the sweep seed; best_hparams.json
    results.json, results.csv, results.md, avg_gap.png, ua_mia.png, curves.png

Sequential scenarios add a ``stage_<k>`` level below each of these folders. ``metrics.json``
holds the row and the hash of everything that made it (method, hyperparameters, recipe, split,
starting model): a run whose hash matches is skipped on the next call (resume); one that does
not is run again, continuing a killed run from its checkpoint when ``run_key.txt`` shows the
checkpoint belongs to the same hash.

The whole experiment is checked first (:func:`coun_fast.experiment.check.check_experiment`) and
runs under the lock of its output folder (a second run on it is refused at once). Each method's
folder is written as a unit, its evaluation included (:func:`coun_fast.runfolder.staged`): a
stale folder of another hash is replaced only when the new run has finished. Every other file
is replaced atomically; ``config.json`` and the results are written together at the end.

On a GPU, each evaluation's metrics (the MIA's SVC fit, seconds of CPU) are computed in worker
threads while the next model trains (:mod:`coun_fast.experiment.background`); a method's folder
is then committed once its row is stored, and its step line follows. A sequential stage, the
sweep's choice and the results wait for the evaluations they read. ``overlap_evaluation`` of
:func:`run_experiment` (``--overlap-evaluation``) sets this; the rows are the same either way.

Under ``torchrun`` (a process group of several ranks) every rank trains every step together (the
Original and Retrain of each seed and stage, each method, each sweep point;
:func:`coun_fast.train.fit` under DistributedDataParallel) and rank 0 alone does the rest: it
takes the locks, writes the cache entries, the run folders and ``best_hparams.json``, evaluates
(the other ranks wait), writes the results and charts and logs the step lines. Whether a cached
model or a finished method run is reused is decided on rank 0 and broadcast, so every rank skips
the same steps; the sweep's choice is made from the rows rank 0 evaluated, which every rank
receives, so every rank runs the seeds with the same point. A sequential stage starts, on every
rank, from the run folder rank 0 wrote for the stage before (so all ranks hold rank 0's weights
and buffers, as with a cached model). What such a run refuses (methods not verified under DDP, a
GPU index in the device, batch sizes that the rank count does not divide, in any method
configuration or sweep point) is checked before any work
(:func:`coun_fast.experiment.check.check_distributed_experiment`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import subprocess
import time
from concurrent.futures import Future
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from coun_fast import checkpoint, distributed
from coun_fast.data import ForgetSplit, class_test_subsets
from coun_fast.evaluate import accuracy, avg_gap, predict
from coun_fast.experiment import plots
from coun_fast.experiment.background import Evaluations, default_workers, done
from coun_fast.experiment.cache import Cached, cached_original, cached_retrain, fingerprint, recipe, split_fingerprint
from coun_fast.experiment.check import check_distributed_experiment, check_experiment
from coun_fast.experiment.config import ExperimentConfig, MethodSpec, grid_points, point_name
from coun_fast.experiment.results import (RESULTS_FORMAT, markdown_report, read_json, summarize, write_csv,
                                          write_json)
from coun_fast.files import relative_path, write_text_atomic
from coun_fast.runfolder import locked, staged_by_main
from coun_fast.train import TrainConfig, effective_precision, resolve_device
from coun_fast.workflow import Run, RunPredictions, make_forget_split, predict_run, prepare_unlearning

logger = logging.getLogger(__name__)
"""The runner's step lines, one INFO record per step (``coun-fast run`` shows them; in Python,
``logging.basicConfig(level=logging.INFO)``, or pass ``log=print`` to :func:`run_experiment`)."""

CURVE_RETAIN_SAMPLES = 1000
"""At most this many retain (and test) samples, a fixed random subset per seed, give the per-epoch
retain (and test) accuracy."""
METRICS_FILE = "metrics.json"
RUN_KEY_FILE = "run_key.txt"
_KEPT = ("UA", "RA", "TA", "MIA", "FA", "forgotten_class_test_acc", "seconds", "PFLOPs")


class EpochAccuracy:
    """``on_epoch_end`` hook: accuracy (%) of the model on each of ``sets``, ``{name: (data set,
    indices)}`` (see :func:`curve_sets`)."""

    def __init__(self, sets: dict, normalization, backend: str = "auto") -> None:
        self.sets = sets
        self.options = dict(normalization=normalization, backend=backend)

    def __call__(self, model, epoch: int) -> dict:
        return {name: accuracy(predict(model, data, indices, **self.options))
                for name, (data, indices) in self.sets.items()}


def curve_sets(train, test, split: ForgetSplit, seed: int) -> dict:
    """What the per-epoch curves measure: the whole forget set (``forget_acc``), fixed subsets of
    the retain set (``retain_acc``) and of the test set (``test_acc``; for class-wise forgetting
    the retained classes' test images, plus ``forgotten_class_test_acc`` on the forgotten
    classes')."""
    sets = {"forget_acc": (train, split.forget), "retain_acc": (train, fixed_subset(split.retain, seed))}
    if split.kind == "class":
        retained, forgotten = class_test_subsets(test.labels, split.forget_classes)
        sets["test_acc"] = (test, fixed_subset(retained, seed))
        sets["forgotten_class_test_acc"] = (test, fixed_subset(forgotten, seed))
    else:
        sets["test_acc"] = (test, fixed_subset(np.arange(len(test)), seed))
    return sets


def fixed_subset(indices: np.ndarray, seed: int, size: int = CURVE_RETAIN_SAMPLES) -> np.ndarray:
    """A sorted random subset of ``indices`` of at most ``size`` of them, fixed by ``seed``."""
    if len(indices) <= size:
        return np.asarray(indices)
    rng = np.random.default_rng([seed, 0xC0])
    return np.sort(rng.choice(indices, size, replace=False))


def _row(label: str, method: str, seed: int, stage: int, metrics: dict, reference: dict, **extra) -> dict:
    row = {"label": label, "method": method, "seed": seed, "stage": stage}
    row.update({k: float(metrics[k]) for k in _KEPT if metrics.get(k) is not None})
    row["Avg.Gap"] = avg_gap(metrics, reference)
    row.update(extra)
    return row


def _finished(folder: Path, key: str) -> dict | None:
    """The row stored in ``folder/metrics.json`` when it was made with ``key``, as rank 0 reads
    it (every rank gets its answer)."""
    return distributed.on_main(lambda: _stored_row(folder, key), f"read {str(folder / METRICS_FILE)!r}")


def _stored_row(folder: Path, key: str) -> dict | None:
    """The row of ``folder/metrics.json`` when it was made with ``key``, else None; ValueError (one
    line naming the file) for a damaged file: a row is reused only as it was written."""
    path = folder / METRICS_FILE
    if not path.is_file():
        return None
    stored = read_json(path, legacy_keys=("key", "row"))
    if set(stored) != {"key", "row"} or not isinstance(stored["row"], dict):
        raise ValueError(f"{str(path)!r} is not a coun_fast metrics file (it holds {sorted(stored)}, not key and row)")
    return stored["row"] if stored["key"] == key else None


def _store(folder: Path, key: str, row: dict) -> dict:
    """Write ``row`` with its ``key`` into ``folder/metrics.json`` (on rank 0 alone); returns ``row``."""
    if distributed.is_main():
        folder.mkdir(parents=True, exist_ok=True)
        write_json({"key": key, "row": row}, folder / METRICS_FILE, digest=True)
    return row


def _row_store(into: Path, key: str, label: str, method: str, seed: int, stage: int, reference: Future | None,
               **extra) -> Callable[[dict], dict]:
    """The ``row(metrics)`` of an evaluation: its row, with Avg.Gap to ``reference``'s row once that
    is there (None: to the metrics themselves, Retrain's case), stored in ``into``. It holds plain
    values alone: a worker thread that ran it must not hold the last reference to a model (and so
    free GPU memory while the main thread captures a CUDA graph)."""
    def row(metrics: dict) -> dict:
        against = metrics if reference is None else reference.result()
        return _store(into, key, _row(label, method, seed, stage, metrics, against, **extra))
    return row


@dataclasses.dataclass
class Stage:
    """One forgetting step of a seed: its split, its Retrain and (the future of) Retrain's row."""

    index: int
    split: ForgetSplit
    retrain: Cached
    reference: Future


@dataclasses.dataclass
class SeedSetup:
    """What every method of one seed shares: the Original, the stages, the reference rows (futures)."""

    seed: int
    original: Cached
    stages: list[Stage]
    rows: list[Future]


class Runner:
    """Runs the steps of ``config``; ``progress`` shows training bars, ``log`` receives one line per step;
    ``splits``: the experiment's data set when already loaded."""

    def __init__(self, config: ExperimentConfig, *, progress: bool = True,
                 log: Callable[[str], None] | None = logger.info, splits=None):
        self.config = config
        self.progress = progress
        self.log = log
        self.device = resolve_device(config.device)
        self.started = time.perf_counter()
        self.stage_seconds: dict[str, float] = {}  # wall time of each step, training and evaluation
        self._splits = splits
        self.evaluations = Evaluations()  # inline; run_experiment may set workers that overlap training

    def data_splits(self):
        """The experiment's data set (training and test splits), loaded once."""
        if self._splits is None:
            self._splits = self.config.data.load()
        return self._splits

    def say(self, text: str) -> None:
        """One step line to ``log`` (rank 0's alone under torchrun)."""
        if self.log is not None and distributed.is_main():
            self.log(f"[{time.perf_counter() - self.started:7.1f}s] {text}")

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Adds the wall time of the block (training, evaluation, cache reads) to ``stage``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + time.perf_counter() - started

    def timings(self) -> dict:
        """Wall time so far: in all, and per stage (e.g. "seed 0 Original", "seed 0 CoUn")."""
        return {"total_seconds": time.perf_counter() - self.started, "stages": dict(self.stage_seconds)}

    def say_timings(self) -> None:
        times = self.timings()
        stages = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in times["stages"].items())
        self.say(f"wall time: {times['total_seconds']:.1f} s in all; per stage: {stages}")

    def train_config(self, base: TrainConfig, seed: int) -> TrainConfig:
        return base.replace(seed=seed, device=self.config.device, progress=self.progress)

    def _stage_folder(self, base: Path, stage: int, stages: int) -> Path:
        return base / f"stage_{stage}" if stages > 1 else base

    def _where(self, seed: int, stage: int, stages: int) -> str:
        return f"seed {seed}" + (f" stage {stage + 1}/{stages}" if stages > 1 else "")

    def evaluate(self, predict: Callable[[], RunPredictions], row: Callable[[dict], dict], what: str, *,
                 contexts: contextlib.ExitStack | None = None, then: Callable[[dict], None] | None = None) -> Future:
        """The future of ``row(metrics)`` (which stores the row) for the run ``predict()`` predicts,
        through :attr:`evaluations`: ``predict()`` here, its metrics in the background when they
        overlap training. The evaluation takes over ``contexts`` (what is entered in the stack),
        which exit, and ``then(row)`` is called, once the row is stored.
        Under torchrun all of it runs on rank 0 while the other ranks wait, and every rank gets
        the row."""
        if self.evaluations.background:  # never under torchrun (see run_experiment)
            predictions = predict()  # on failure ``contexts`` stay the caller's, who exits them with the error
            compute = lambda: row(predictions.metrics())  # noqa: E731
        else:
            compute = lambda: distributed.on_main(lambda: row(predict().metrics()), f"evaluate {what}")  # noqa: E731
        return self.evaluations.submit(compute, contexts=None if contexts is None else contexts.pop_all(), then=then)

    def wait_for_evaluations(self) -> None:
        """Finish every pending evaluation; the wait counts as the stage "waiting for evaluations".
        (Evaluations that do not overlap training are finished when submitted: none is pending.)"""
        if self.evaluations.background:
            with self.timed("waiting for evaluations"):
                self.evaluations.collect(wait=True)

    # -- shared steps --------------------------------------------------------------------------
    def setup(self, seed: int, root: Path) -> SeedSetup:
        """The Original (cached), the split of ``seed``, and per stage Retrain (cached) and the
        Retrain and Original rows (evaluations stored under ``root``)."""
        c = self.config
        with self.timed(f"seed {seed} Original"):
            original = cached_original(c.data, c.model.name, c.model.kwargs, self.train_config(c.original, seed),
                                       c.cache, device=self.device)
        self.say(f"seed {seed}: Original {'reused from the cache' if original.hit else 'trained'} "
                 f"({original.run.folder})")
        split = make_forget_split(original.run, seed=seed, **c.scenario.split_arguments())
        stages, rows = [], []
        for k in range(split.num_stages):
            part = split.stage(k)
            where = self._where(seed, k, split.num_stages)
            with self.timed(f"{where} Retrain"):
                retrain = cached_retrain(original, part, self.train_config(c.retrain, seed), c.cache,
                                         device=self.device)
            self.say(f"{where}: forget {len(part.forget)} of {len(part.train_indices)}; Retrain "
                     f"{'reused from the cache' if retrain.hit else 'trained'}")
            folder = self._stage_folder(root / "Retrain", k, split.num_stages)
            stored = _finished(folder, retrain.key)
            if stored is not None:
                reference = done(stored)
            else:
                row = _row_store(folder, retrain.key, "Retrain", "retrain", seed, k, None,
                                 folder=str(retrain.run.folder))
                reference = self.evaluate(partial(predict_run, retrain.run, split=part, device=self.device), row,
                                          f"{where} Retrain")
            rows.append(reference)
            folder = self._stage_folder(root / "Original", k, split.num_stages)
            key = fingerprint([original.key, retrain.key])
            stored = _finished(folder, key)
            if stored is not None:
                rows.append(done(stored))
            else:
                row = _row_store(folder, key, "Original", "original", seed, k, reference,
                                 folder=str(original.run.folder))
                rows.append(self.evaluate(partial(predict_run, original.run, split=part, device=self.device), row,
                                          f"{where} Original"))
            stages.append(Stage(k, part, retrain, reference))
        return SeedSetup(seed, original, stages, rows)

    # -- methods -------------------------------------------------------------------------------
    def method_rows(self, setup: SeedSetup, spec: MethodSpec, base: Path, *, what: str = "") -> list[Future]:
        """Run (or reuse) ``spec`` at every stage of ``setup``: stage 0 starts from the Original,
        stage k from this method's model of stage k-1. One row (a future) per stage."""
        start: Run | Path = setup.original.run
        start_key = setup.original.key
        config = self.train_config(spec.train_config(self.config.unlearn), setup.seed)
        rows = []
        for stage in setup.stages:
            if stage.index > 0:
                self.wait_for_evaluations()  # this stage starts from the folder of the last, committed with its row
            folder = self._stage_folder(base, stage.index, len(setup.stages))
            where = f"{self._where(setup.seed, stage.index, len(setup.stages))} {what or spec.label}"
            key = fingerprint({"method": spec.name, "hparams": spec.hparams, "config": recipe(config),
                               "start": start_key, "split": split_fingerprint(stage.split)})
            stored = _finished(folder, key)
            if stored is not None:
                self.say(f"{where}: finished before, skipped")
                rows.append(done(stored))
            else:
                with self.timed(where):
                    rows.append(self._run_method(setup, stage, spec, config, start, folder, key, where))
                self.evaluations.collect()  # finish (commit, log) the evaluations done meanwhile
            start, start_key = folder, key
        return rows

    def _run_method(self, setup: SeedSetup, stage: Stage, spec: MethodSpec, config: TrainConfig,
                    start: "Run | Path", folder: Path, key: str, where: str) -> Future:
        """Run, evaluate and store one method in ``folder``, written as a unit (a killed run of the
        same ``key`` continues from its checkpoint; a folder of another key is replaced at the end,
        once the evaluation has stored its row: see :meth:`evaluate`)."""
        original = setup.original.run
        curve = None
        if self.config.curves:
            curve = EpochAccuracy(curve_sets(*self.data_splits(), stage.split, setup.seed), original.normalization,
                                  config.augment_backend)
        step = prepare_unlearning(spec.name, start, stage.split, config, hparams=spec.hparams)

        def belongs(work: Path) -> None:
            marker = work / RUN_KEY_FILE
            if not marker.is_file() or marker.read_text() != key:
                raise ValueError(f"{work} holds a run of another key")
            step.belongs(work)

        # the experiment's lock covers its folders; a stale folder of another key is replaced
        with contextlib.ExitStack() as contexts:
            work = contexts.enter_context(staged_by_main(folder, overwrite=True, resume="auto", belongs=belongs,
                                                         lock=False))
            distributed.on_main(lambda: write_text_atomic(work / RUN_KEY_FILE, key), f"write {RUN_KEY_FILE!r}")
            run = step.run(work, folder, resume=True, on_epoch_end=curve)
            points = [] if curve is None else [{k: r[k] for k in ("epoch", *curve.sets)}
                                               for r in run.record["history"] if "forget_acc" in r]
            row = _row_store(work, key, spec.label, spec.name, setup.seed, stage.index, stage.reference,
                             hparams=run.record["hparams"], train=spec.train,
                             folder=relative_path(folder, self.config.output), curve=points)

            def then(row: dict) -> None:
                self.say(f"{where}: {row.get('seconds', 0.0):.1f} s, UA {row['UA']:.2f} RA {row['RA']:.2f} "
                         f"TA {row['TA']:.2f} MIA {row['MIA']:.2f}, Avg.Gap {row['Avg.Gap']:.2f}")
            # the folder is committed when the row is stored, now or after the next steps' training
            return self.evaluate(partial(predict_run, run, split=stage.split, device=self.device), row,
                                 f"{spec.label} of seed {setup.seed}", contexts=contexts, then=then)

    # -- sweep ---------------------------------------------------------------------------------
    def sweep(self, methods: tuple[MethodSpec, ...]) -> dict:
        """Try each method's grid on the sweep seed; per label the point of least mean Avg.Gap
        (over stages). Writes ``sweep/best_hparams.json``; returns ``{label: {best, Avg.Gap, trials}}``."""
        sweep = self.config.sweep
        root = self.config.output / "sweep"
        setup = self.setup(sweep.seed, root / f"seed_{sweep.seed}")
        chosen = {}
        for spec in methods:
            grid = sweep.grid.get(spec.label)
            if not grid:
                continue
            trials = []
            for values in grid_points(grid):
                name = point_name(values)
                rows = self.method_rows(setup, spec.with_values(values), root / spec.label / name,
                                        what=f"sweep {spec.label} {name}")
                trials.append({"values": values, "rows": rows})
            self.wait_for_evaluations()
            trials = [{"values": trial["values"],
                       "Avg.Gap": sum(row.result()["Avg.Gap"] for row in trial["rows"]) / len(trial["rows"])}
                      for trial in trials]
            best = min(trials, key=lambda trial: trial["Avg.Gap"])
            chosen[spec.label] = {"best": best["values"], "Avg.Gap": best["Avg.Gap"], "trials": trials}
            self.say(f"sweep {spec.label}: best {point_name(best['values'])} (Avg.Gap {best['Avg.Gap']:.2f} "
                     f"on seed {sweep.seed})")
        distributed.on_main(lambda: write_json(chosen, root / "best_hparams.json"),
                            f"write {str(root / 'best_hparams.json')!r}")
        return chosen


def _git_sha() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def write_results(config: ExperimentConfig, rows: list[dict], *, sweep: dict | None, device,
                  timings: dict | None = None) -> dict:
    """results.json / .csv / .md and the three charts in ``config.output``, each replaced atomically;
    returns the JSON payload (format :data:`~coun_fast.experiment.results.RESULTS_FORMAT`: paths
    inside ``config.output`` relative to it)."""
    out = config.output
    summary = summarize(rows)
    title = f"{config.name}: {config.data.dataset}, {config.model.name}, {config.scenario.describe()}"
    original_precision = effective_precision(config.original.precision, device)
    unlearn_precision = effective_precision(config.unlearn.precision, device)
    details = (f"Seeds {list(config.seeds)}; Original {config.original.epochs} epochs ({original_precision}), "
               f"unlearning {config.unlearn.epochs} epochs ({unlearn_precision}) (per-method overrides in "
               "results.json)."
               + (" Hyperparameters chosen by the sweep on seed "
                  f"{config.sweep.seed}: see sweep/best_hparams.json." if sweep else ""))
    files = {"json": out / "results.json", "csv": out / "results.csv", "markdown": out / "results.md",
             "avg_gap": out / "avg_gap.png", "ua_mia": out / "ua_mia.png", "curves": out / "curves.png"}
    write_json(config.to_dict(relative=True), out / "config.json")
    payload = {
        "format_version": RESULTS_FORMAT, "config": config.to_dict(relative=True),
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "environment": {**checkpoint.environment(device), "git_sha": _git_sha()},
        "statistics": "mean and sample std (ddof=1; 0 for one seed) over seeds; Avg.Gap of the means",
        "sweep": sweep or None, "summary": summary, "runs": rows, "files": {k: relative_path(v, out) for k, v in files.items()},
        "timings": timings,
    }
    write_json(payload, files["json"], digest=True)
    write_csv(rows, files["csv"])
    write_text_atomic(files["markdown"], markdown_report(summary, title=title, details=details))
    plots.avg_gap_chart(summary, files["avg_gap"], title=f"Avg.Gap: {config.name}")
    plots.ua_mia_chart(summary, files["ua_mia"], title=f"UA vs MIA: {config.name}")
    plots.curves_chart(rows, files["curves"], title=f"Per-epoch accuracy: {config.name}")
    return payload


def run_experiment(config: ExperimentConfig, *, progress: bool = True,
                   log: Callable[[str], None] | None = logger.info, overlap_evaluation: bool | None = None) -> dict:
    """Run ``config`` (resuming what its output folder already holds) and write its results.

    With an enabled sweep, each method's grid is tried on the sweep seed first and the best point
    is used for the main seeds. Returns the results.json payload (``runs``: one row per
    method x seed x stage, Retrain and Original included; ``summary``: :func:`summarize`).
    Everything is checked first (:func:`coun_fast.experiment.check.check_experiment`); the run
    holds the output folder's lock throughout.

    ``overlap_evaluation``: compute each evaluation's metrics (the MIA's SVC fit, seconds on a CPU)
    in worker threads while the next model trains (:mod:`coun_fast.experiment.background`; the
    rows and files are the same either way). None (default): when training on a GPU. Not under
    torchrun.

    Under torchrun (a process group of several ranks, which the caller has initialized) every rank
    calls it: they train together, rank 0 alone writes and evaluates (see the module docstring),
    and every rank returns the same payload. What such a run refuses is checked first, on every rank.
    """
    check_distributed_experiment(config)
    if overlap_evaluation and distributed.active():
        raise ValueError("overlap_evaluation: evaluations cannot overlap training under torchrun (rank 0 "
                         "evaluates while the other ranks wait); leave it None or False")
    checked = {}

    def check() -> None:  # on rank 0 (the others wait for its verdict); it loads the data set
        checked["splits"] = check_experiment(config)
    distributed.on_main(check, "check the experiment")
    splits = checked["splits"] if "splits" in checked else config.data.load()
    with contextlib.ExitStack() as stack:  # the output folder's lock, on rank 0 alone
        def lock() -> None:
            stack.enter_context(locked(config.output, what="experiment output"))
            config.output.mkdir(parents=True, exist_ok=True)
        distributed.on_main(lock, f"lock the experiment output {str(config.output)!r}")
        return _run_locked(config, splits, progress=progress, log=log, overlap_evaluation=overlap_evaluation)


def _run_locked(config: ExperimentConfig, splits, *, progress: bool, log, overlap_evaluation: bool | None) -> dict:
    runner = Runner(config, progress=progress, log=log, splits=splits)
    if overlap_evaluation is None:
        overlap_evaluation = runner.device.type == "cuda" and not distributed.active()
    methods = config.methods
    # pending evaluations finish (their folders committed) before the lock is released, whatever happens
    with Evaluations(default_workers() if overlap_evaluation else 0) as runner.evaluations:
        chosen = runner.sweep(methods) if config.sweep is not None and config.sweep.enabled else {}
        methods = tuple(spec.with_values(chosen[spec.label]["best"]) if spec.label in chosen else spec
                        for spec in methods)
        futures = []
        for seed in config.seeds:
            root = config.output / f"seed_{seed}"
            setup = runner.setup(seed, root)
            futures += setup.rows
            for spec in methods:
                futures += runner.method_rows(setup, spec, root / spec.label)
        runner.wait_for_evaluations()
    rows = [future.result() for future in futures]
    payload = distributed.on_main(lambda: write_results(config, rows, sweep=chosen, device=runner.device,
                                                        timings=runner.timings()), "write the results")
    best = {e["label"]: e["Avg.Gap"] for e in payload["summary"]
            if e["label"] not in ("Retrain", "Original") and e["Avg.Gap"] is not None}
    runner.say(f"done: {len(rows)} rows; wrote {config.output / 'results.md'}"
               + (f"; least Avg.Gap: {min(best, key=best.get)} ({min(best.values()):.2f})" if best else ""))
    runner.say_timings()
    return payload


__all__ = ["CURVE_RETAIN_SAMPLES", "EpochAccuracy", "Runner", "curve_sets", "grid_points", "point_name", "fixed_subset",
           "run_experiment", "write_results"]
