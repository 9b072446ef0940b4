"""Benchmark of coun_fast's augmentation pipelines: source images per second of ``AugmentedLoader``
with each backend (``cpu``, ``torch``, ``dali``) and recipe, against a baseline measured in the same
run, a straightforward per-sample PIL/NumPy loader in a ``torch.utils.data.DataLoader`` with 2
worker processes (and the same loader with ``num_workers=0``).

    python benchmarks/bench_pipelines.py --data /path/to/cifar10_jpeg.npz    # real CIFAR-10
    python benchmarks/bench_pipelines.py --quick                             # generated data, < 1 min
    python benchmarks/bench_pipelines.py --image-size 64                     # generated 64x64 data
    python benchmarks/bench_pipelines.py --device cuda                       # torch and dali on the GPU

Each loader is measured in its own fresh worker process (all recipes in turn). A measurement is
``--batches`` full batches timed together, after ``--warmup`` untimed batches; it is repeated
``--reps`` times and the median is reported. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import math
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

import _harness as harness

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent
PACKAGE_BACKENDS = ("cpu", "torch", "dali")
RECIPES = ("train", "two_view", "simclr", "eval")
EXTRA_RECIPES = ("chjgn",)  # accepted by --recipes, not run by default
BASELINE = "pil-{}w"  # the per-sample PIL/NumPy DataLoader with that many worker processes
TIMING_METHOD = ("time.perf_counter around --batches consecutive batches of one loader (each batch's "
                 "tensors touched: one value per 4 KiB page summed on their device), device synchronized "
                 "before and after; --warmup batches first, untimed; median over --reps measurements")
QUICK = {"batch_size": 256, "batches": 3, "warmup": 1, "reps": 3, "num_images": 10_000}
DEFAULTS = {"batch_size": 512, "batches": 10, "warmup": 2, "reps": 5, "num_images": 50_000}


# ---------------------------------------------------------------------------------------------
# The baseline: what research code does (one PIL image at a time, in DataLoader workers)


def _random_resized_box(width: int, height: int, scale: tuple[float, float],
                        ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a random resized crop: area fraction uniform in ``scale``,
    log aspect ratio uniform in ``log(ratio)``; ten tries, else the whole image clipped to ``ratio``."""
    area = width * height
    for _ in range(10):
        target = area * random.uniform(*scale)
        aspect = math.exp(random.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left, top = random.randint(0, width - w), random.randint(0, height - h)
            return left, top, left + w, top + h
    w, h = width, height
    if width / height < ratio[0]:
        h = int(round(width / ratio[0]))
    elif width / height > ratio[1]:
        w = int(round(height * ratio[1]))
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


class PilAugmentDataset(torch.utils.data.Dataset):
    """A map-style data set over uint8 (N, H, W, 3) images that augments one sample per
    ``__getitem__`` with PIL and NumPy, as research code does; returns (view or views, label, index).

    ``recipe``: ``train`` (pad-4 random crop, horizontal flip, to float, normalize), ``two_view``
    (that twice), ``simclr`` (random resized crop scale (0.2, 1) with a PIL bilinear resize, flip,
    colour jitter 0.4/0.4/0.4/0.1 with p=0.8 through ``ImageEnhance`` and an HSV hue shift,
    grayscale p=0.2; twice), ``chjgn`` (pad crop, flip, jitter 0.8/0.8/0.8/0.2 p=0.8, grayscale
    p=0.2; twice) or ``eval`` (to float, normalize). Randomness: Python's ``random``, which the
    DataLoader seeds in each worker.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, recipe: str, mean, std) -> None:
        from PIL import Image, ImageEnhance, ImageOps

        self._image, self._enhance, self._ops = Image, ImageEnhance, ImageOps
        self.images, self.labels, self.recipe = images, labels, recipe
        self.mean = np.asarray(mean, np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, np.float32).reshape(3, 1, 1)
        self.views = 1 if recipe in ("train", "eval") else 2

    def __len__(self) -> int:
        return len(self.images)

    def _pad_crop(self, img, padding: int = 4):
        width, height = img.size
        padded = self._ops.expand(img, border=padding, fill=0)
        left, top = random.randint(0, 2 * padding), random.randint(0, 2 * padding)
        return padded.crop((left, top, left + width, top + height))

    def _flip(self, img):
        return img.transpose(self._image.Transpose.FLIP_LEFT_RIGHT) if random.random() < 0.5 else img

    def _jitter(self, img, strength: tuple[float, float, float, float]):
        brightness, contrast, saturation, hue = strength
        img = self._enhance.Brightness(img).enhance(random.uniform(max(0.0, 1 - brightness), 1 + brightness))
        img = self._enhance.Contrast(img).enhance(random.uniform(max(0.0, 1 - contrast), 1 + contrast))
        img = self._enhance.Color(img).enhance(random.uniform(max(0.0, 1 - saturation), 1 + saturation))
        hsv = np.array(img.convert("HSV"))
        hsv[..., 0] += np.uint8(int(random.uniform(-hue, hue) * 255) % 256)  # wraps around, mod 256
        return self._image.fromarray(hsv, "HSV").convert("RGB")

    def _colour(self, img, strength):
        if random.random() < 0.8:
            img = self._jitter(img, strength)
        if random.random() < 0.2:
            img = img.convert("L").convert("RGB")
        return img

    def _to_tensor(self, img) -> torch.Tensor:
        x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
        return torch.from_numpy((x - self.mean) / self.std)

    def _view(self, img) -> torch.Tensor:
        if self.recipe in ("train", "two_view"):
            img = self._flip(self._pad_crop(img))
        elif self.recipe == "simclr":
            width, height = img.size
            box = _random_resized_box(width, height, (0.2, 1.0), (3 / 4, 4 / 3))
            img = img.resize((width, height), self._image.Resampling.BILINEAR, box=box)
            img = self._colour(self._flip(img), (0.4, 0.4, 0.4, 0.1))
        elif self.recipe == "chjgn":
            img = self._colour(self._flip(self._pad_crop(img)), (0.8, 0.8, 0.8, 0.2))
        return self._to_tensor(img)

    def __getitem__(self, index: int):
        img = self._image.fromarray(self.images[index])
        views = tuple(self._view(img) for _ in range(self.views))
        return (views[0] if self.views == 1 else views), int(self.labels[index]), index


def baseline_loader(images: np.ndarray, labels: np.ndarray, recipe: str, mean, std, *, batch_size: int,
                    workers: int, seed: int, pin_memory: bool) -> torch.utils.data.DataLoader:
    """The baseline DataLoader: shuffled, full batches, ``workers`` persistent worker processes."""
    return torch.utils.data.DataLoader(
        PilAugmentDataset(images, labels, recipe, mean, std), batch_size=batch_size, shuffle=True,
        num_workers=workers, persistent_workers=workers > 0, drop_last=True, pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
    )


# ---------------------------------------------------------------------------------------------
# Measuring (worker side)


def _endless(loader) -> Iterator:
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def _views_of(inputs) -> list[torch.Tensor]:
    return list(inputs) if isinstance(inputs, (tuple, list)) else [inputs]


def _touch(views: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """A sum over one value per 4 KiB page of every view (and the labels), computed on their
    device: every output page is read, so nothing the loader defers goes unpaid."""
    total = labels.sum().to(torch.float32)
    for view in views:
        total = total + view.reshape(-1)[::1024].sum(dtype=torch.float32)
    return total


def _dali_threads(loader) -> int | None:
    """DALI's ``num_threads`` in the loader's pipelines; None where it cannot be read."""
    pipelines = getattr(loader.augmenter, "_pipelines", None) or {}
    threads = {getattr(p, "num_threads", None) for p in pipelines.values()} - {None}
    if len(threads) == 1:
        return int(threads.pop())
    return getattr(loader.augmenter, "_threads", None)


def _make_loader(spec: dict, recipe: str, images: np.ndarray, labels: np.ndarray, device: torch.device):
    """(loader, where its batches must be moved or None, info) for the spec's backend and ``recipe``."""
    backend, mean, std = spec["backend"], spec["mean"], spec["std"]
    if backend in PACKAGE_BACKENDS:
        from coun_fast.data import AugmentedLoader, ImageDataset

        dataset = ImageDataset(name=spec["data_name"], split="train", labels=labels,
                               classes=tuple(str(c) for c in range(spec["num_classes"])), images=images)
        where = torch.device("cpu") if backend == "cpu" else device
        loader = AugmentedLoader(dataset, recipe, batch_size=spec["batch_size"], backend=backend, device=where,
                                 shuffle=True, drop_last=True, seed=spec["seed"], normalization=(mean, std))
        info = {"dali_threads": _dali_threads(loader) if backend == "dali" else None, "loader_workers": 0,
                "output_device": str(where)}
        return loader, None, info
    pin = device.type == "cuda"
    loader = baseline_loader(images, labels, recipe, mean, std, batch_size=spec["batch_size"],
                             workers=spec["workers"], seed=spec["seed"], pin_memory=pin)
    info = {"dali_threads": None, "loader_workers": spec["workers"], "output_device": str(device)}
    return loader, (device if pin else None), info


def measure_recipe(spec: dict, recipe: str, images: np.ndarray, labels: np.ndarray) -> dict:
    """Time one (loader, recipe): ``reps`` measurements of ``batches`` batches after ``warmup``."""
    device = torch.device(spec["device"])
    random.seed(spec["seed"])  # the baseline's per-sample draws when it runs in this process
    start = time.perf_counter()
    loader, move_to, info = _make_loader(spec, recipe, images, labels, device)
    stream = _endless(loader)
    expected_views = 1 if recipe in ("train", "eval") else 2
    size = images.shape[1:3]

    def take() -> tuple[torch.Tensor, int]:
        inputs, batch_labels = next(stream)[:2]
        views = _views_of(inputs)
        if move_to is not None:  # the baseline on a GPU run: host-to-device copy, as a training loop does
            views = [v.to(move_to, non_blocking=True) for v in views]
            batch_labels = batch_labels.to(move_to, non_blocking=True)
        count = len(batch_labels)
        if len(views) != expected_views or any(tuple(v.shape) != (count, 3, *size) for v in views):
            raise ValueError(f"unexpected batch: {len(views)} views of shapes {[tuple(v.shape) for v in views]}")
        return _touch(views, batch_labels), count

    try:
        for _ in range(spec["warmup"]):
            take()
        harness.synchronize(device)
        setup_s = time.perf_counter() - start
        samples_ms, checksum, images_seen = [], 0.0, None
        for _ in range(spec["reps"]):
            harness.synchronize(device)
            begin = time.perf_counter()
            touched, count = [], 0
            for _ in range(spec["batches"]):
                value, n = take()
                touched.append(value)
                count += n
            harness.synchronize(device)
            samples_ms.append((time.perf_counter() - begin) * 1e3)
            checksum += float(sum(t.item() for t in touched))
            images_seen = count
    finally:
        stream.close()
        del stream, loader  # persistent DataLoader workers shut down here
    if not math.isfinite(checksum):
        raise ValueError(f"non-finite values in the batches (checksum {checksum})")
    timing = harness.summarize(samples_ms)
    return {"status": "ok", **harness.timing_dict(timing), "images": images_seen, "views": expected_views,
            "samples_ms": samples_ms, "setup_s": setup_s, "torch_threads": torch.get_num_threads(), **info}


def measure(spec: dict) -> dict:
    """Worker: ``{recipe: result}`` for one loader (a package backend or the baseline) and every
    recipe of the spec, each failure recorded in its recipe's result."""
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    images = np.load(spec["images_path"])
    labels = np.load(spec["labels_path"])
    results = {}
    for recipe in spec["recipes"]:
        try:
            results[recipe] = measure_recipe(spec, recipe, images, labels)
        except Exception as exc:  # recorded in the results; the other recipes go on
            results[recipe] = {"status": harness.failure_status(exc)}
    return results


# ---------------------------------------------------------------------------------------------
# Driver


@dataclass(frozen=True)
class Config:
    device: str
    data: Path | None
    image_size: int
    num_images: int
    backends: list[str]
    recipes: list[str]
    batch_size: int
    batches: int
    warmup: int
    reps: int
    workers: int
    threads: int | None
    seed: int
    timeout_s: float
    out: Path

    @property
    def baseline(self) -> str:
        return BASELINE.format(self.workers)

    @property
    def loaders(self) -> list[str]:
        """The measured loaders: the baseline first, then its in-process variant, then the backends."""
        return [self.baseline, BASELINE.format(0), *self.backends]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None,
                        help="packed-JPEG CIFAR-10 .npz (decoded once by coun_fast); default: generated data")
    parser.add_argument("--image-size", type=int, default=32, help="side of the generated images (default 32)")
    parser.add_argument("--num-images", type=int, default=None,
                        help="generated images (default 50000; --quick 10000)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="where torch and dali run (the cpu backend always on the CPU); default cuda when available")
    parser.add_argument("--backends", nargs="+", choices=PACKAGE_BACKENDS, default=list(PACKAGE_BACKENDS))
    parser.add_argument("--recipes", nargs="+", choices=RECIPES + EXTRA_RECIPES, default=list(RECIPES))
    parser.add_argument("--batch-size", type=int, default=None, help="default 512 (--quick 256)")
    parser.add_argument("--batches", type=int, default=None, help="timed batches per measurement; default 10 (--quick 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed batches first; default 2 (--quick 1)")
    parser.add_argument("--reps", type=int, default=None, help="measurements per loader and recipe (median); default 5 (--quick 3)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the baseline DataLoader (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in the workers; default torch's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds before a loader's worker process is killed")
    parser.add_argument("--out", type=Path, default=SCRIPT.parent / "results")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: batch 256, 1 warm-up + 3 timed batches, 10000 generated images "
                             "(explicit options still win)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def make_config(args: argparse.Namespace) -> Config:
    """The run's settings: explicit options, else the --quick values, else the defaults."""
    base = QUICK if args.quick else DEFAULTS

    def pick(name: str) -> int:
        return harness.option(args, base, name)

    config = Config(
        device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        data=args.data, image_size=args.image_size, num_images=pick("num_images"),
        backends=args.backends, recipes=args.recipes, batch_size=pick("batch_size"), batches=pick("batches"),
        warmup=pick("warmup"), reps=pick("reps"), workers=args.workers, threads=args.threads, seed=args.seed,
        timeout_s=args.timeout, out=args.out,
    )
    harness.require_positive(config, ("batch_size", "batches", "reps", "num_images", "image_size", "workers"))
    if config.warmup < 0:
        raise SystemExit("--warmup must be >= 0")
    if config.data is not None and args.image_size != 32:
        raise SystemExit("--image-size sets the size of generated data; it does not apply with --data")
    return config


def load_images(config: Config) -> tuple[np.ndarray, np.ndarray, dict]:
    """uint8 (N, H, W, 3) images, int64 labels and a description: the CIFAR-10 training split of
    ``--data`` decoded by coun_fast, or seeded uniform random pixels (their content does not change
    the cost of any step measured here) with random labels from 10 classes."""
    if config.data is not None:
        from coun_fast.data import load_dataset

        start = time.perf_counter()
        train = load_dataset("cifar10", config.data).train
        images, labels = np.ascontiguousarray(train.images), train.labels
        return images, labels, {"source": "cifar10", "path": str(config.data), "split": "train",
                                "load_s": time.perf_counter() - start}
    rng = np.random.default_rng(config.seed)
    shape = (config.num_images, config.image_size, config.image_size, 3)
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    labels = rng.integers(0, 10, config.num_images).astype(np.int64)
    return images, labels, {"source": "generated", "generator": "uniform random uint8 pixels, numpy seed --seed"}


def unavailable_backends(config: Config) -> dict[str, str]:
    """Backends of the configuration that cannot run here, with the reason."""
    reasons = {}
    if "dali" in config.backends:
        try:
            importlib.import_module("nvidia.dali")
        except Exception as exc:  # not installed, or a broken install
            reasons["dali"] = f"NVIDIA DALI is not importable ({type(exc).__name__}: {exc})"
        else:
            try:
                importlib.import_module("coun_fast.data.augment_dali")
            except Exception as exc:  # the backend's module is missing or broken
                reasons["dali"] = f"coun_fast.data.augment_dali is not importable ({type(exc).__name__}: {exc})"
    return reasons


def _version(distribution: str, module: str | None = None) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        pass
    if module:
        try:
            return str(importlib.import_module(module).__version__)
        except Exception:
            return None
    return None


def _dali_version() -> str | None:
    try:
        import nvidia.dali

        return str(nvidia.dali.__version__)
    except Exception:
        return None


def make_row(config: Config, loader: str, recipe: str, result: dict, size: tuple[int, int]) -> dict:
    """One results row (the CSV columns, in order); the ratio is filled in by :func:`add_ratios`."""
    ok = result.get("status") == "ok"
    p50 = result.get("p50_ms")
    images = result.get("images")
    views = result.get("views") or (1 if recipe in ("train", "eval") else 2)
    per_s = images / (p50 * 1e-3) if ok and p50 else None
    baseline = loader.startswith("pil-")
    return {
        "subject": f"{recipe} {size[0]}x{size[1]} B={config.batch_size}",
        "recipe": recipe,
        "backend": loader,
        "kind": "baseline" if baseline else "package",
        "device": result.get("output_device") or ("cpu" if loader == "cpu" else config.device),
        "views": views,
        "batch_size": config.batch_size,
        "batches": config.batches,
        "warmup": config.warmup,
        "reps": result.get("reps"),
        "images": images,
        "p50_ms": p50,
        "p20_ms": result.get("p20_ms"),
        "p80_ms": result.get("p80_ms"),
        "ms_per_batch": p50 / config.batches if ok and p50 else None,
        "images_per_s": per_s,
        "views_per_s": per_s * views if per_s else None,
        "ratio_vs_baseline": None,
        "torch_threads": result.get("torch_threads"),
        "dali_threads": result.get("dali_threads"),
        "loader_workers": result.get("loader_workers"),
        "setup_s": result.get("setup_s"),
        "other_load": result.get("other_load"),
        "samples_ms": [round(v, 2) for v in result["samples_ms"]] if ok else None,
        "status": result.get("status", "error: no result"),
    }


def add_ratios(rows: list[dict], baseline: str) -> None:
    """images/s of each row over the baseline's for the same recipe (> 1: faster than the baseline)."""
    reference = {r["recipe"]: r["images_per_s"] for r in rows if r["backend"] == baseline and r["images_per_s"]}
    for row in rows:
        if row["images_per_s"] and row["recipe"] in reference:
            row["ratio_vs_baseline"] = row["images_per_s"] / reference[row["recipe"]]


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}".replace(",", "")


def _ratio_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _status_text(status: str) -> str:
    return status if len(status) <= 70 else status[:67] + "..."


def table_columns(baseline: str) -> tuple:
    return (
        ("recipe", lambda r: r["recipe"]),
        ("backend", lambda r: r["backend"]),
        ("device", lambda r: r["device"]),
        ("views", lambda r: str(r["views"])),
        ("images/s", lambda r: _rate(r["images_per_s"])),
        ("views/s", lambda r: _rate(r["views_per_s"])),
        (f"vs {baseline}", lambda r: _ratio_text(r["ratio_vs_baseline"])),
        ("ms/batch", lambda r: "-" if r["ms_per_batch"] is None else f"{r['ms_per_batch']:.1f}"),
        ("p20-p80 ms", lambda r: "-" if r["p20_ms"] is None else f"{r['p20_ms']:.0f}-{r['p80_ms']:.0f}"),
        ("threads", lambda r: "-" if r["torch_threads"] is None else str(r["torch_threads"])),
        ("dali thr", lambda r: "-" if r["dali_threads"] is None else str(r["dali_threads"])),
        ("other load", lambda r: "-" if r["other_load"] is None else f"{r['other_load']:.2f}"),
        ("status", lambda r: _status_text(r["status"])),
    )


def progress_line(row: dict) -> str:
    head = f"{row['recipe']:<9} {row['backend']:<7}"
    if row["status"] != "ok":
        return f"{head} {row['status']}"
    return (f"{head} {row['images_per_s']:9.0f} images/s {row['views_per_s']:9.0f} views/s "
            f"({row['ms_per_batch']:.1f} ms/batch, setup {row['setup_s']:.1f} s)")


def _spec(config: Config, loader: str, images_path: Path, labels_path: Path, data: dict) -> dict:
    baseline = loader.startswith("pil-")
    return {
        "backend": "baseline" if baseline else loader,
        "workers": int(loader[4:-1]) if baseline else 0,
        "recipes": config.recipes, "device": config.device, "batch_size": config.batch_size,
        "batches": config.batches, "warmup": config.warmup, "reps": config.reps, "threads": config.threads,
        "seed": config.seed, "images_path": str(images_path), "labels_path": str(labels_path),
        "mean": data["mean"], "std": data["std"], "num_classes": data["num_classes"], "data_name": data["name"],
    }


def run_all(config: Config, images_path: Path, labels_path: Path, data: dict,
            unavailable: dict[str, str]) -> list[dict]:
    """Measure every loader in its own worker process; rows ordered by recipe, then loader."""
    size = (data["shape"][1], data["shape"][2])
    results: dict[str, dict] = {}
    for loader in config.loaders:
        if loader in unavailable:
            results[loader] = {r: {"status": f"skipped: {unavailable[loader]}"} for r in config.recipes}
        else:
            print(f"measuring {loader} ...", flush=True)
            spec = _spec(config, loader, images_path, labels_path, data)
            load = harness.OtherLoad()
            outcome = harness.run_isolated(SCRIPT, spec, config.timeout_s)
            results[loader] = {r: outcome for r in config.recipes} if "status" in outcome else outcome
            other = load.cores()
            for result in results[loader].values():
                result.setdefault("other_load", other)
        for recipe in config.recipes:
            print("  " + progress_line(make_row(config, loader, recipe, results[loader][recipe], size)), flush=True)
    rows = [make_row(config, loader, recipe, results[loader][recipe], size)
            for recipe in config.recipes for loader in config.loaders]
    add_ratios(rows, config.baseline)
    return rows


def headline(rows: list[dict], baseline: str) -> list[str]:
    """The DALI two_view row against the baseline's, when the run has both."""
    def find(backend: str) -> dict | None:
        return next((r for r in rows if r["recipe"] == "two_view" and r["backend"] == backend
                     and r["images_per_s"]), None)

    dali, base = find("dali"), find(baseline)
    if not (dali and base):
        return []
    verdict = "matches or beats" if dali["images_per_s"] >= base["images_per_s"] else "is SLOWER than"
    return [f"two_view: dali ({dali['device']}) {dali['images_per_s']:.0f} images/s vs {baseline} "
            f"{base['images_per_s']:.0f} images/s ({dali['ratio_vs_baseline']:.2f}x): dali {verdict} the baseline"]


def main(argv: list[str] | None = None) -> int:
    return harness.run_script(parse_args(argv), measure, make_config, drive)


def drive(config: Config) -> int:
    """The driver's run, after the device check (harness.run_script)."""
    unavailable = unavailable_backends(config)
    for backend, reason in unavailable.items():
        print(f"skipping backend {backend}: {reason}")
    device = torch.device(config.device)
    started = time.perf_counter()
    images, labels, data = load_images(config)
    from coun_fast.data import channel_stats

    if len(images) < config.batch_size:
        print(f"the data has {len(images)} images, fewer than one batch of {config.batch_size}", file=sys.stderr)
        return 2
    norm = channel_stats(images)
    data.update({"name": data["source"], "shape": list(images.shape), "num_classes": int(labels.max()) + 1,
                 "mean": list(norm.mean), "std": list(norm.std)})
    print(f"data: {data['source']} {tuple(images.shape)} uint8, mean {np.round(norm.mean, 4).tolist()}, "
          f"std {np.round(norm.std, 4).tolist()}")
    scratch = Path(tempfile.mkdtemp(prefix="bench_pipelines_"))
    try:
        images_path, labels_path = scratch / "images.npy", scratch / "labels.npy"
        np.save(images_path, images)
        np.save(labels_path, labels)
        del images
        header = harness.environment_header("pipelines", device, REPO, torch.get_num_threads(), {
            "timing_method": TIMING_METHOD,
            "memory_method": "not measured",
            "dali_version": _dali_version(),
            "pillow_version": _version("pillow", "PIL"),
            "numpy_version": np.__version__,
            "data": data,
            "baseline": (f"{config.baseline}: torch.utils.data.DataLoader(batch_size, shuffle=True, "
                         f"num_workers={config.workers}, persistent_workers=True, drop_last=True) over a Dataset "
                         "that augments one PIL image per __getitem__ with PIL/NumPy (see PilAugmentDataset); "
                         "pil-0w: the same with num_workers=0; on a CUDA run with pin_memory=True and each "
                         "batch copied to the GPU"),
            "unavailable_backends": unavailable,
            "settings": {"batch_size": config.batch_size, "batches": config.batches, "warmup": config.warmup,
                         "reps": config.reps, "workers": config.workers, "threads": config.threads,
                         "seed": config.seed, "recipes": config.recipes, "backends": config.backends},
        })
        run_load = harness.OtherLoad()
        rows = run_all(config, images_path, labels_path, data, unavailable)
        header["other_load_cores"] = run_load.cores()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    header["wall_s"] = time.perf_counter() - started
    stem = f"pipelines_{config.device}_{header['timestamp']}"
    json_path, csv_path = harness.write_results(rows, header, config.out, stem)
    dali_threads = sorted({r["dali_threads"] for r in rows if r["dali_threads"] is not None})
    print()
    print(harness.format_table(rows, table_columns(config.baseline)))
    print()
    print(f"images/s: source images per second; views/s = images/s x views per image; ratio: images/s over "
          f"{config.baseline}'s for the same recipe. Median of {config.reps} x {config.batches} batches of "
          f"{config.batch_size} after {config.warmup} warm-up batches.")
    print(f"torch threads {header['threads']} (driver), DALI num_threads {dali_threads or '-'}, "
          f"{config.baseline}: {config.workers} DataLoader worker processes (torch uses 1 thread in each)")
    for line in headline(rows, config.baseline):
        print(line)
    other = header["other_load_cores"]
    if other is not None:
        print(f"other processes kept {other:.2f} of {os.cpu_count()} cores busy on average during the measurements"
              + (" -- timings are disturbed; rerun on a quiet machine" if other > 0.25 else ""))
    print(f"total {header['wall_s']:.0f} s\nwrote {json_path}\nwrote {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
