"""End-to-end speed of unlearning: coun_fast's training step against a paper-style loop and the
model-only ceiling, in one process, on the same data, seed and hyperparameters.

    python benchmarks/bench_unlearning.py --quick --device cpu          # tiny data, every path, < 3 min
    python benchmarks/bench_unlearning.py --data cifar10_jpeg.npz       # CIFAR-10, ResNet-18, 10% random

For each method (CoUn: two views and the contrastive term; FT: one view, the single-view epoch of
Original and Retrain too) three paths train the same starting model on the retain set:

* ``coun_fast``: ``coun_fast.train.fit`` with its defaults (on a GPU: bf16 autocast, channels_last,
  the step captured in a CUDA graph, the fused loss on tensor cores; the ``auto`` augmentation
  backend); ``--variants`` adds the same with those GPU switches off (``exact``, ``eager``,
  ``exact+eager``) or changed (``occupancy``: the tensor-core kernels' opt-in occupancy variant;
  ``compile``: the model torch.compile'd inside the CUDA-graph step);
* ``paper``: the paper's listing as research code writes it: per-sample CPU transforms (torchvision
  where it imports, else Pillow/NumPy) in a ``DataLoader`` with worker processes, float32, a forward
  hook on the penultimate layer for the features, two forward passes, ``F.cosine_similarity`` N x N
  matrices and ``log_softmax``;
* ``ceiling``: the model alone, stepped as ``coun_fast`` steps it (precision, memory format,
  optimizer, the CUDA-graph step on a GPU), fed
  views of random data already on the device: no augmentation and no contrastive loss (CoUn's
  ceiling runs both views forward and backward, with cross-entropy on each).

Each path trains ``--warmup-epochs`` untimed epochs, then ``--epochs`` timed ones (the median epoch
is reported), then one more epoch under ``torch.profiler`` for the per-phase breakdown (data,
forward, loss, backward, optimizer, other). The coun_fast and paper models are then evaluated (UA,
RA, TA, MIA-Efficacy): after the same epochs from the same start they should agree within seed
noise. Results (JSON, CSV, markdown, a bar chart) go to ``--out`` (benchmarks/results).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import _harness as harness

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent
PATHS = ("coun_fast", "paper", "ceiling")
# Extra coun_fast paths (--variants): the default's GPU switches turned off or changed, each measured
# beside it: exact (the loss on the exact float32 kernels instead of tensor cores), eager (no
# CUDA-graph step), occupancy (the tensor-core kernels' opt-in occupancy variant), compile (the
# model torch.compile'd, its step still captured in a CUDA graph).
VARIANTS = {"exact": {"tensor_cores": False}, "eager": {"cuda_graph": False},
            "exact+eager": {"tensor_cores": False, "cuda_graph": False},
            "occupancy": {"tensor_cores": "occupancy"}, "compile": {"compile": True, "cuda_graph": True}}
METHODS = ("coun", "ft")
PHASES = ("data", "forward", "loss", "backward", "optimizer")


@dataclasses.dataclass(frozen=True)
class Config:
    device: str
    dataset: str
    data: str | None
    image_size: int | None
    model: str
    methods: tuple[str, ...]
    ratio: float
    batch_size: int
    lr: float
    lam: float
    temperature: float
    original_epochs: int
    warmup_epochs: int
    epochs: int
    workers: int
    seed: int
    profile: bool
    metrics: bool
    out: Path
    variants: tuple[str, ...] = ()

    @property
    def paths(self) -> tuple[str, ...]:
        """The paths in the order they run: coun_fast, its variants ("coun_fast+eager", ...), paper, ceiling."""
        return (PATHS[0], *(f"coun_fast+{v}" for v in self.variants), *PATHS[1:])


def parse_args(argv: list[str] | None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    parser.add_argument("--data", default=None, help="the CIFAR-10 file (packed .npz) or folder; default: --quick's data")
    parser.add_argument("--dataset", default="cifar10", help="data set name for --data (default cifar10)")
    parser.add_argument("--model", default=None, help="default resnet18 (small_cnn with --quick)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--ratio", type=float, default=0.1, help="random forget ratio (default 0.1)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 256 (64 with --quick)")
    parser.add_argument("--lr", type=float, default=None, help="unlearning lr (default 0.05; 0.01 with --quick)")
    parser.add_argument("--lam", type=float, default=1.0, help="CoUn's lambda")
    parser.add_argument("--temperature", type=float, default=0.1, help="CoUn's tau")
    parser.add_argument("--original-epochs", type=int, default=None,
                        help="epochs of the Original the methods start from (default 10)")
    parser.add_argument("--warmup-epochs", type=int, default=1, help="untimed epochs per path first")
    parser.add_argument("--epochs", type=int, default=None, help="timed epochs per path (default 3; 1 with --quick)")
    parser.add_argument("--workers", type=int, default=None,
                        help="the paper path's DataLoader workers (default min(8, CPU cores))")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-profile", action="store_true", help="skip the profiled epoch (per-phase breakdown)")
    parser.add_argument("--no-metrics", action="store_true", help="skip evaluating the trained models")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: scikit-learn digits at 16x16, small_cnn, batch 64, 1 timed epoch")
    parser.add_argument("--variants", nargs="+", choices=tuple(VARIANTS), default=[],
                        help="extra coun_fast paths with the default's GPU switches off: exact (the loss on the "
                             "exact float32 kernels, not tensor cores), eager (no CUDA-graph step), exact+eager")
    parser.add_argument("--out", type=Path, default=SCRIPT.parent / "results")
    args = parser.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device != "cuda" and args.variants:
        parser.error("--variants compares GPU switches: it needs --device cuda")
    quick = args.quick
    if args.data is None and not quick:
        parser.error("give --data (the CIFAR-10 file) or --quick")
    cores = os.cpu_count() or 1
    return Config(
        device=device, dataset="digits" if args.data is None else args.dataset, data=args.data,
        image_size=16 if args.data is None else None, model=args.model or ("small_cnn" if quick else "resnet18"),
        methods=tuple(args.methods), ratio=args.ratio, batch_size=args.batch_size or (64 if quick else 256),
        lr=args.lr or (0.01 if quick else 0.05), lam=args.lam, temperature=args.temperature,
        original_epochs=args.original_epochs if args.original_epochs is not None else 10,
        warmup_epochs=args.warmup_epochs, epochs=args.epochs or (1 if quick else 3),
        workers=args.workers if args.workers is not None else min(8, cores), seed=args.seed,
        profile=not args.no_profile, metrics=not args.no_metrics, out=args.out, variants=tuple(args.variants),
    )


# ---------------------------------------------------------------------------------------------
# Shared set-up


@dataclasses.dataclass
class Setup:
    splits: object
    split: object
    normalization: object
    original: nn.Module
    original_seconds: float


def prepare(config: Config) -> Setup:
    """The data set, a random forget split and the Original every path starts from."""
    from coun_fast import data as data_module
    from coun_fast import models
    from coun_fast.train import CrossEntropy, TrainConfig, fit

    splits = data_module.load_dataset(config.dataset, config.data, image_size=config.image_size)
    split = data_module.random_split(len(splits.train), config.ratio, seed=config.seed)
    normalization = splits.train.normalization
    torch.manual_seed(config.seed)
    original = models.build(config.model, num_classes=splits.train.num_classes)
    seconds = 0.0
    if config.original_epochs:
        train_config = TrainConfig(epochs=config.original_epochs, batch_size=config.batch_size, lr=0.1,
                                   seed=config.seed, device=config.device, progress=False)
        result = fit(original, splits.train, CrossEntropy(), train_config, normalization=normalization,
                     description="original")
        seconds = result.seconds
    return Setup(splits, split, normalization, original.to(config.device).eval(), seconds)


def unlearn_config(config: Config, epochs: int, cuda_graph: bool | None = None, compile: bool = False):
    """The unlearning optimiser all paths share: the paper's (SGD, momentum 0.9, wd 5e-4, cosine to 1e-4)."""
    from coun_fast.train import TrainConfig

    return TrainConfig(epochs=epochs, batch_size=config.batch_size, lr=config.lr, schedule="cosine", min_lr=1e-4,
                       seed=config.seed, device=config.device, progress=False, cuda_graph=cuda_graph,
                       compile=compile)


def lam_of(method: str, config: Config) -> float:
    return config.lam if method == "coun" else 0.0


@dataclasses.dataclass
class PathResult:
    epoch_seconds: list[float]
    images_per_epoch: int
    phases_ms: dict[str, float] | None = None  # per step
    model: nn.Module | None = None
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def epoch_s(self) -> float:
        return statistics.median(self.epoch_seconds)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def phase_breakdown(profile: torch.profiler.profile, device: torch.device, steps: int, wall_s: float) -> dict:
    """Milliseconds per step in each phase's record_function range (device time of its kernels on a
    GPU, host time on the CPU); "loss" is nested in "forward" and subtracted from it; "other" is
    the rest of the wall time of the profiled epoch."""
    totals = {}
    for event in profile.key_averages():
        if event.key in PHASES:
            value = event.device_time_total if device.type == "cuda" else event.cpu_time_total
            totals[event.key] = totals.get(event.key, 0.0) + value / 1e3  # us -> ms
    if "loss" in totals and "forward" in totals:
        totals["forward"] = max(0.0, totals["forward"] - totals["loss"])
    per_step = {phase: totals.get(phase, 0.0) / max(steps, 1) for phase in PHASES}
    per_step["other"] = max(0.0, wall_s * 1e3 / max(steps, 1) - sum(per_step.values()))
    return per_step


def _profiled(device: torch.device):
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return torch.profiler.profile(activities=activities)


# ---------------------------------------------------------------------------------------------
# Path (a): coun_fast


def run_coun_fast(method: str, setup: Setup, config: Config, variant: str | None = None) -> PathResult:
    """coun_fast's defaults, or with a variant's switches (VARIANTS)."""
    from coun_fast.ops import backend as backends
    from coun_fast.train import fit
    from coun_fast.unlearn.coun import CoUnObjective

    switches = VARIANTS[variant] if variant else {}
    graph, compiled = switches.get("cuda_graph"), switches.get("compile", False)  # None: fit's default
    objective = CoUnObjective(lam_of(method, config), config.temperature)
    model = copy.deepcopy(setup.original)
    epochs = config.warmup_epochs + config.epochs
    with backends.tensor_cores(switches.get("tensor_cores", backends.tensor_cores_setting())):
        result = fit(model, setup.splits.train, objective, unlearn_config(config, epochs, graph, compiled),
                     indices=setup.split.retain, normalization=setup.normalization,
                     description=f"coun_fast{'+' + variant if variant else ''} {method}")
        seconds = [row["seconds"] for row in result.history[config.warmup_epochs:]]
        images = len(setup.split.retain)
        phases = None
        if config.profile:
            probe = copy.deepcopy(setup.original)
            with _profiled(torch.device(config.device)) as profile:
                started = time.perf_counter()
                fit(probe, setup.splits.train, objective, unlearn_config(config, 1, graph, compiled),
                    indices=setup.split.retain, normalization=setup.normalization)
                wall = time.perf_counter() - started
            phases = phase_breakdown(profile, torch.device(config.device), images // config.batch_size, wall)
    return PathResult(seconds, images, phases, model)


# ---------------------------------------------------------------------------------------------
# Path (b): the paper's listing, as research code writes it


def torchvision_transforms():
    """torchvision.transforms, or None where torchvision is absent or does not import with this torch."""
    if importlib.util.find_spec("torchvision") is None:
        return None
    try:
        from torchvision import transforms
    except Exception:  # PyPI's torchvision does not import with a CPU-only torch
        return None
    return transforms


class PaperViews(torch.utils.data.Dataset):
    """Per-sample CPU augmentation of uint8 images: the paper's CHN (random crop with 4-pixel zero
    padding, horizontal flip, to tensor, normalize) with torchvision when it imports, else with
    Pillow/NumPy (benchmarks/bench_pipelines.py); two independent views for CoUn."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, views: int, normalization) -> None:
        self.images, self.labels, self.views = images, labels, views
        transforms = torchvision_transforms()
        self.library = "torchvision" if transforms is not None else "pillow"
        if transforms is not None:
            from PIL import Image

            self._image = Image
            self.transform = transforms.Compose([
                transforms.RandomCrop(images.shape[1], padding=4), transforms.RandomHorizontalFlip(),
                transforms.ToTensor(), transforms.Normalize(normalization.mean, normalization.std)])
        else:
            from bench_pipelines import PilAugmentDataset

            self.fallback = PilAugmentDataset(images, labels, "train", normalization.mean, normalization.std)

    def __len__(self) -> int:
        return len(self.images)

    def _view(self, index: int) -> torch.Tensor:
        if self.library == "torchvision":
            return self.transform(self._image.fromarray(self.images[index]))
        return self.fallback[index][0]

    def __getitem__(self, index: int):
        views = tuple(self._view(index) for _ in range(self.views))
        return views, int(self.labels[index])


def _penultimate(model: nn.Module):
    """The paper's forward hook: the output of the penultimate layer (the global pooling) of
    coun_fast's models, stored on each forward; None for models without a ``pool`` module (then
    the loop calls forward_features and forward_head itself, the same computation)."""
    store = {}
    pool = getattr(model, "pool", None)
    if pool is None:
        return None
    pool.register_forward_hook(lambda module, inputs, output: store.__setitem__("features", output))
    return store


def paper_loss(f1: torch.Tensor, f2: torch.Tensor, temperature: float) -> torch.Tensor:
    """The listing's L_CL: N x N cosine similarities through F.cosine_similarity, both directions'
    log_softmax diagonals."""
    s12 = F.cosine_similarity(f1[:, None, :], f2[None, :, :], dim=-1) / temperature
    s21 = F.cosine_similarity(f2[:, None, :], f1[None, :, :], dim=-1) / temperature
    return -(torch.diagonal(F.log_softmax(s12, dim=1)).mean() + torch.diagonal(F.log_softmax(s21, dim=1)).mean())


def run_paper(method: str, setup: Setup, config: Config) -> PathResult:
    from coun_fast.train import lr_factor

    device = torch.device(config.device)
    lam = lam_of(method, config)
    views = 2 if lam > 0 else 1
    train = setup.splits.train.decoded()
    retain = np.asarray(setup.split.retain)
    dataset = PaperViews(train.images[retain], train.labels[retain], views, setup.normalization)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=config.batch_size, shuffle=True, num_workers=config.workers,
        persistent_workers=config.workers > 0, drop_last=False, pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(config.seed))
    model = copy.deepcopy(setup.original).to(device)
    store = _penultimate(model)
    epochs = config.warmup_epochs + config.epochs + (1 if config.profile else 0)
    train_config = unlearn_config(config, config.warmup_epochs + config.epochs)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, weight_decay=5e-4)

    def forward(x):
        if store is None:
            features = model.forward_features(x)
            return model.forward_head(features), features
        logits = model(x)
        return logits, store["features"].view(x.shape[0], -1)

    seconds, phases, trained = [], None, None
    for epoch in range(epochs):
        profiling = config.profile and epoch == epochs - 1
        for group in optimizer.param_groups:
            group["lr"] = config.lr * lr_factor(train_config, min(epoch, train_config.epochs - 1))
        model.train()
        context = _profiled(device) if profiling else _nullcontext()
        with context as profile:
            _synchronize(device)
            started = time.perf_counter()
            iterator = iter(loader)
            steps = 0
            while True:
                with torch.profiler.record_function("data"):
                    try:
                        batch_views, labels = next(iterator)
                    except StopIteration:
                        break
                    batch_views = [v.to(device, non_blocking=True) for v in batch_views]
                    labels = labels.to(device, non_blocking=True)
                with torch.profiler.record_function("forward"):
                    logits, f1 = forward(batch_views[0])
                    f2 = forward(batch_views[1])[1] if views == 2 else None
                    with torch.profiler.record_function("loss"):
                        loss = F.cross_entropy(logits, labels)
                        if views == 2:
                            loss = loss + lam * paper_loss(f1, f2, config.temperature)
                with torch.profiler.record_function("backward"):
                    optimizer.zero_grad()
                    loss.backward()
                with torch.profiler.record_function("optimizer"):
                    optimizer.step()
                steps += 1
            _synchronize(device)
            wall = time.perf_counter() - started
        if profiling:
            phases = phase_breakdown(profile, device, steps, wall)
        elif epoch >= config.warmup_epochs:
            seconds.append(wall)
        if epoch == config.warmup_epochs + config.epochs - 1:
            trained = copy.deepcopy(model).eval()
    return PathResult(seconds, len(retain), phases, trained)


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# ---------------------------------------------------------------------------------------------
# Path (c): the model alone


class _ModelOnly:
    """The ceiling's objective: cross-entropy of each view, no contrastive term."""

    recipe, extra_forward_views, graph_capturable = "two_view", 0, True

    def __call__(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict]:
        views = batch.inputs if isinstance(batch.inputs, tuple) else (batch.inputs,)
        return sum(F.cross_entropy(model(x), batch.labels) for x in views), {}


def run_ceiling(method: str, setup: Setup, config: Config) -> PathResult:
    """The model alone, stepped as coun_fast steps it (precision, memory format, optimizer and, on a
    GPU, the CUDA-graph step), on views of random data already on the device."""
    from coun_fast.data.loader import Batch
    from coun_fast.step import graph_unsupported, make_step
    from coun_fast.train import channels_last_for, make_optimizer, precision_autocast, resolve_device

    train_config = unlearn_config(config, config.warmup_epochs + config.epochs)
    device = resolve_device(train_config.device)
    channels_last = channels_last_for(train_config, device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = copy.deepcopy(setup.original).to(device=device, memory_format=memory_format)
    optimizer = make_optimizer(model, train_config)
    autocast = precision_autocast(train_config, device)
    objective = _ModelOnly()
    step_fn = make_step(model, objective, optimizer, autocast, device=device,
                        cuda_graph=graph_unsupported(objective, device) is None)
    views = 2 if lam_of(method, config) > 0 else 1
    images = len(setup.split.retain)
    steps = math.ceil(images / config.batch_size)
    shape = (config.batch_size, 3, *setup.splits.train.decoded().images.shape[1:3])
    generator = torch.Generator(device=device).manual_seed(config.seed)
    pool = [Batch(tuple(torch.randn(shape, device=device, generator=generator).contiguous(memory_format=memory_format)
                        for _ in range(views)) if views > 1 else
                  torch.randn(shape, device=device, generator=generator).contiguous(memory_format=memory_format),
                  torch.randint(0, setup.splits.train.num_classes, (config.batch_size,), device=device,
                                generator=generator), None)
            for _ in range(4)]
    seconds, phases = [], None
    epochs = config.warmup_epochs + config.epochs + (1 if config.profile else 0)
    for epoch in range(epochs):
        profiling = config.profile and epoch == epochs - 1
        model.train()
        with (_profiled(device) if profiling else _nullcontext()) as profile:
            _synchronize(device)
            started = time.perf_counter()
            for step in range(steps):
                with torch.profiler.record_function("data"):
                    batch = pool[step % len(pool)]
                step_fn(batch)
            _synchronize(device)
            wall = time.perf_counter() - started
        if profiling:
            phases = phase_breakdown(profile, device, steps, wall)
        elif epoch >= config.warmup_epochs:
            seconds.append(wall)
    return PathResult(seconds, images, phases, None)


RUNNERS = {"coun_fast": run_coun_fast, "paper": run_paper, "ceiling": run_ceiling}


def run_path(path: str, method: str, setup: Setup, config: Config) -> PathResult:
    """Runs ``path``: one of PATHS, or "coun_fast+VARIANT"."""
    if path.startswith("coun_fast+"):
        return run_coun_fast(method, setup, config, path.split("+", 1)[1])
    return RUNNERS[path](method, setup, config)


# ---------------------------------------------------------------------------------------------
# Driver


def evaluate(model: nn.Module, setup: Setup) -> dict:
    from coun_fast.evaluate import unlearning_metrics

    metrics = unlearning_metrics(model, setup.splits.train, setup.splits.test, setup.split,
                                 normalization=setup.normalization)
    return {key: float(metrics[key]) for key in ("UA", "RA", "TA", "MIA")}


def make_rows(config: Config, results: dict) -> list[dict]:
    rows = []
    for method in config.methods:
        paper = results[(method, "paper")]
        ceiling = results[(method, "ceiling")]
        for path in config.paths:
            if (method, path) not in results:  # a variant that failed (header["errors"])
                continue
            result = results[(method, path)]
            row = {"method": method, "path": path, "epoch_s": result.epoch_s,
                   "images_per_s": result.images_per_epoch / result.epoch_s,
                   "speedup_vs_paper": paper.epoch_s / result.epoch_s,
                   "vs_ceiling": result.epoch_s / ceiling.epoch_s,
                   "timed_epochs": len(result.epoch_seconds)}
            for phase in (*PHASES, "other"):
                row[f"{phase}_ms"] = None if result.phases_ms is None else result.phases_ms[phase]
            row.update({key: value for key, value in getattr(result, "metrics", {}).items()})
            rows.append(row)
    return rows


def _fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


COLUMNS = (
    ("method", lambda r: r["method"]),
    ("path", lambda r: r["path"]),
    ("epoch s", lambda r: _fmt(r["epoch_s"], 3)),
    ("img/s", lambda r: f"{r['images_per_s']:.0f}"),
    ("x paper", lambda r: _fmt(r["speedup_vs_paper"])),
    ("/ ceiling", lambda r: _fmt(r["vs_ceiling"])),
    *((f"{phase} ms", (lambda p: lambda r: _fmt(r[f"{p}_ms"], 3))(phase)) for phase in (*PHASES, "other")),
    *((key, (lambda k: lambda r: _fmt(r.get(k)))(key)) for key in ("UA", "RA", "TA", "MIA")),
)


def targets(rows: list[dict], device: str) -> list[str]:
    """The issue's GPU targets for coun_fast's default path and each variant (printed on every
    device; they are stated for an H100/H200)."""
    lines = []
    for path in dict.fromkeys(r["path"] for r in rows if r["path"].startswith("coun_fast")):
        coun = next((r for r in rows if r["method"] == "coun" and r["path"] == path), None)
        ft = next((r for r in rows if r["method"] == "ft" and r["path"] == path), None)
        if coun:
            lines.append(f"{path}: CoUn epoch <= 1.15x the model-only ceiling: {coun['vs_ceiling']:.2f}x -> "
                         + ("met" if coun["vs_ceiling"] <= 1.15 else "NOT met"))
            lines.append(f"{path}: CoUn epoch >= 3x the paper-style loop: {coun['speedup_vs_paper']:.2f}x -> "
                         + ("met" if coun["speedup_vs_paper"] >= 3 else "NOT met"))
        if ft:
            lines.append(f"{path}: single-view epoch >= 2.5x the paper-style loop: {ft['speedup_vs_paper']:.2f}x -> "
                         + ("met" if ft["speedup_vs_paper"] >= 2.5 else "NOT met"))
    if device != "cuda":
        lines = [f"({line}; the targets are for a GPU)" for line in lines]
    return lines


def protocol_estimate(rows: list[dict], config: Config, setup: Setup) -> list[str]:
    """The paper protocol's training time for one seed (Original and Retrain at the paper preset's
    epochs, FT and CoUn at the paper_unlearn preset's) from each coun_fast path's measured epochs,
    when the run is the protocol's setting (CIFAR-10, ResNet-18, batch 256, 10% forgotten); an
    Original epoch is an FT epoch scaled to the whole training split. An estimate, not a run:
    evaluation, start-up and checkpoints are not in it (`coun-fast run` times the real thing)."""
    from coun_fast.train import PRESETS

    if (config.dataset, config.model, config.batch_size, config.ratio) != ("cifar10", "resnet18", 256, 0.1):
        return []
    train_images, retain_images = len(setup.splits.train), len(setup.split.retain)
    long, short = PRESETS["paper"].epochs, PRESETS["paper_unlearn"].epochs
    lines = []
    for path in dict.fromkeys(r["path"] for r in rows if r["path"].startswith("coun_fast")):
        epoch = {r["method"]: r["epoch_s"] for r in rows if r["path"] == path}
        if "coun" not in epoch or "ft" not in epoch:
            continue
        original = epoch["ft"] * train_images / retain_images
        total = long * original + long * epoch["ft"] + short * epoch["ft"] + short * epoch["coun"]
        lines.append(f"{path}: paper protocol, one seed, estimated from these epochs (training only): "
                     f"{long} x {original:.3f} + {long} x {epoch['ft']:.3f} + {short} x {epoch['ft']:.3f} + "
                     f"{short} x {epoch['coun']:.3f} s = {total:.0f} s ({total / 60:.1f} min; the target, "
                     "<= 9 min, is for the whole run)")
    return lines


def metric_agreement(rows: list[dict]) -> list[str]:
    lines = []
    for method in {r["method"] for r in rows}:
        ours = next((r for r in rows if r["method"] == method and r["path"] == "coun_fast"), None)
        paper = next((r for r in rows if r["method"] == method and r["path"] == "paper"), None)
        if ours and paper and "UA" in ours and "UA" in paper:
            gaps = ", ".join(f"{key} {abs(ours[key] - paper[key]):.2f}" for key in ("UA", "RA", "TA", "MIA"))
            lines.append(f"{method}: |coun_fast - paper| after the same epochs: {gaps}")
    return lines


def bar_chart(rows: list[dict], paths: tuple[str, ...], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in rows))
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(paths)
    for i, name in enumerate(paths):
        values = [next((r["epoch_s"] for r in rows if r["method"] == m and r["path"] == name), 0.0) for m in methods]
        axes[0].bar(np.arange(len(methods)) + (i - (len(paths) - 1) / 2) * width, values, width, label=name)
    axes[0].set_xticks(np.arange(len(methods)), methods)
    axes[0].set_ylabel("seconds per epoch")
    axes[0].set_title("Epoch time")
    axes[0].legend()
    labels = [f"{r['method']}\n{r['path']}" for r in rows if r["data_ms"] is not None]
    bottom = np.zeros(len(labels))
    for phase in (*PHASES, "other"):
        values = np.array([r[f"{phase}_ms"] for r in rows if r["data_ms"] is not None])
        if len(values):
            axes[1].bar(labels, values, bottom=bottom, label=phase)
            bottom += values
    axes[1].set_ylabel("ms per step")
    axes[1].set_title("Per-phase time of one step (profiled epoch)")
    axes[1].legend(fontsize=7)
    axes[1].tick_params(axis="x", labelsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    refused = harness.prepare_driver(config.device, None)
    if refused is not None:
        return refused
    device = torch.device(config.device)
    started = time.perf_counter()
    setup = prepare(config)
    print(f"data {config.dataset} ({len(setup.splits.train)} train, {len(setup.split.retain)} retain), "
          f"model {config.model}, Original {config.original_epochs} epochs in {setup.original_seconds:.1f} s", flush=True)
    results, errors = {}, {}
    for method in config.methods:
        for path in config.paths:
            try:
                result = run_path(path, method, setup, config)
            except Exception as error:  # a variant's failure is a result; the base paths' is not
                if path in PATHS:
                    raise
                errors[f"{method} {path}"] = f"{type(error).__name__}: {error}"
                print(f"{method:<5} {path:<19} error: {errors[f'{method} {path}']}", flush=True)
                continue
            if config.metrics and result.model is not None:
                result.metrics = evaluate(result.model, setup)
            results[(method, path)] = result
            print(f"{method:<5} {path:<19} epoch {result.epoch_s:.3f} s "
                  f"({result.images_per_epoch / result.epoch_s:.0f} img/s)", flush=True)
    rows = make_rows(config, results)
    estimate = protocol_estimate(rows, config, setup)
    paper_library = "torchvision" if torchvision_transforms() is not None else "pillow"
    header = harness.environment_header("unlearning", device, REPO, torch.get_num_threads(), {
        "config": {**dataclasses.asdict(config), "out": str(config.out)},
        "paper_augmentation_library": paper_library,
        "phases": "ms per step in record_function ranges: device time of their kernels on a GPU, host time on "
                  "the CPU; 'loss' is nested in 'forward' and subtracted; 'other' is the rest of the profiled "
                  "epoch's wall time",
        "total_seconds": time.perf_counter() - started,
        "protocol_estimate": estimate,
        "errors": errors,
    })
    stem = f"unlearning_{config.device}_{header['timestamp']}"
    json_path, csv_path = harness.write_results(rows, header, config.out, stem)
    table = harness.format_table(rows, COLUMNS)
    markdown_path = config.out / f"{stem}.md"
    from coun_fast.files import write_text_atomic

    write_text_atomic(markdown_path,
                      f"# {stem}\n\n{harness.device_name(device)}; {header['command']}\n\n```\n{table}\n```\n"
                      + "".join(f"\n{line}\n" for line in estimate))
    chart_path = config.out / f"{stem}.png"
    bar_chart(rows, config.paths, chart_path, f"{config.model} on {config.dataset}, {harness.device_name(device)}")
    print()
    print(table)
    print()
    for line in targets(rows, config.device) + estimate + metric_agreement(rows):
        print(line)
    for name, error in errors.items():
        print(f"FAILED {name}: {error}")
    print(f"paper path augmentation: {paper_library}; total {time.perf_counter() - started:.0f} s")
    print(f"wrote {json_path}\nwrote {csv_path}\nwrote {markdown_path}\nwrote {chart_path}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
