"""Benchmark of streaming a data set larger than memory: images per second and peak memory of
``AugmentedLoader`` over a packed (sharded) data set with each decoding path, against a plain
per-sample PIL ``DataLoader`` with workers reading the image folder, measured in the same run.

    python benchmarks/bench_large_data.py                    # 50,000 generated JPEGs, CPU paths
    python benchmarks/bench_large_data.py --quick            # 5,000 images, fewer batches
    python benchmarks/bench_large_data.py --device cuda      # GPU decoding (DALI nvjpeg, torchvision)

Steps: (1) generate an image folder of realistic JPEGs (textured backgrounds with shapes, edges
and noise; shorter side ``--image-size``, aspect ratios 1 to 4/3, quality 90; ImageNet layout,
100 classes) unless ``--data-dir`` already holds one; (2) pack it with ``coun_fast.data.pack``
(timed); (3) each loader in its own fresh worker process: ``--warmup`` untimed batches, then
``--reps`` measurements of ``--batches`` batches of ``--batch-size``; the median gives images/s.
While a loader runs, a thread samples every 0.1 s the proportional set size (PSS, shared pages
split between the processes that map them) of the worker process and all its descendants
(DataLoader workers, DALI threads are in-process); the peak is reported, with the worker
process's own peak RSS (VmHWM). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import _harness as harness
from bench_pipelines import _random_resized_box, _touch, _views_of

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent
PACKAGE_BACKENDS = ("cpu", "torch", "dali")
RECIPES = ("two_view", "train", "eval")
QUICK = {"num_images": 5_000, "batch_size": 128, "batches": 4, "warmup": 1, "reps": 3}
DEFAULTS = {"num_images": 50_000, "batch_size": 256, "batches": 8, "warmup": 2, "reps": 3}
NUM_CLASSES = 100
MARKER = "bench_large_data.json"
TIMING_METHOD = ("time.perf_counter around --batches consecutive batches (each batch's tensors touched on their "
                 "device), device synchronized before and after; --warmup batches first, untimed; median over --reps")
MEMORY_METHOD = ("peak over 0.1 s samples of the summed PSS (/proc/PID/smaps_rollup) of the measuring process and "
                 "all its descendants, from the loader's construction to its last batch; and that process's VmHWM")


# ---------------------------------------------------------------------------------------------
# Generated data


def _textures(seed: int, count: int = 24, side: int = 512) -> np.ndarray:
    """``count`` multi-scale noise fields (side x side x 3 float32, about 1/f spectra)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    fields = np.zeros((count, side, side, 3), np.float32)
    for n in range(count):
        amplitude = 1.0
        for cells in (4, 8, 16, 32, 64, 128):
            coarse = rng.normal(0, 1, (cells, cells, 3)).astype(np.float32)
            fields[n] += amplitude * np.stack([np.asarray(Image.fromarray(coarse[..., c]).resize(
                (side, side), Image.Resampling.BICUBIC)) for c in range(3)], -1)
            amplitude *= 0.7
        fields[n] = (fields[n] - fields[n].mean()) / fields[n].std()
    return fields


def _make_image(rng: np.random.Generator, textures: np.ndarray, label: int, side: int) -> bytes:
    """One realistic-looking JPEG: a crop of a texture tinted by class, 6-15 outlined shapes, noise."""
    from PIL import Image, ImageDraw

    long = int(side * rng.choice([1.0, 1.125, 1.25, 4 / 3]))
    height, width = (side, long) if rng.random() < 0.7 else (long, side)
    texture = textures[rng.integers(len(textures))]
    top, left = rng.integers(0, texture.shape[0] - height + 1), rng.integers(0, texture.shape[1] - width + 1)
    tint = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256], np.float32) * 0.5 + 40
    base = texture[top : top + height, left : left + width] * rng.uniform(25, 50) + tint + rng.uniform(-20, 20, 3)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(6, 16)):
        x0, y0 = int(rng.integers(-width // 4, width)), int(rng.integers(-height // 4, height))
        w, h = (int(v) for v in rng.integers(side // 16, side // 2, 2))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x0, y0, x0 + w, y0 + h], fill=tuple(int(v) for v in rng.integers(0, 256, 3)),
              outline=tuple(int(v) for v in rng.integers(0, 256, 3)), width=int(rng.integers(1, 4)))
    pixels = np.asarray(image, np.int16) + rng.integers(-8, 9, (height, width, 3), dtype=np.int16)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _generate_part(args: tuple) -> int:
    root, split, start, stop, side, seed = args
    textures = _textures(seed)
    written = 0
    for index in range(start, stop):
        rng = np.random.default_rng([seed, index, split == "val"])
        label = index % NUM_CLASSES
        path = Path(root) / split / f"class_{label:03d}" / f"{index:06d}.jpg"
        path.write_bytes(_make_image(rng, textures, label, side))
        written += 1
    return written


def generate_folder(root: Path, num_images: int, side: int, seed: int, processes: int) -> dict:
    """The image folder root/train/class_XXX/*.jpg (+ val/, 2 % of the count); reused when its
    marker says it was made with the same settings."""
    settings = {"num_images": num_images, "image_size": side, "seed": seed, "classes": NUM_CLASSES, "version": 1}
    marker = root / MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("settings") == settings:
        return json.loads(marker.read_text())
    shutil.rmtree(root, ignore_errors=True)
    counts = {"train": num_images, "val": max(NUM_CLASSES, num_images // 50)}
    for split in counts:
        for label in range(NUM_CLASSES):
            (root / split / f"class_{label:03d}").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    jobs = [(str(root), split, start, min(start + 1000, count), side, seed)
            for split, count in counts.items() for start in range(0, count, 1000)]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        written = sum(pool.imap_unordered(_generate_part, jobs))
    files = list(root.rglob("*.jpg"))
    info = {"settings": settings, "images": written, "seconds": time.perf_counter() - started,
            "bytes": sum(f.stat().st_size for f in files)}
    marker.write_text(json.dumps(info))
    return info


# ---------------------------------------------------------------------------------------------
# The baseline: a per-sample PIL DataLoader over the image folder, as research code reads ImageNet


class FolderViews(torch.utils.data.Dataset):
    """``(view or views, label, index)`` per ``__getitem__``: the file opened with PIL, converted
    to RGB, then per view torchvision's recipe written with PIL and NumPy: ``two_view``/``train``
    RandomResizedCrop(size) (scale 0.08-1, ratio 3/4-4/3, PIL bilinear resize of the box) and a
    random horizontal flip; ``eval`` the centre crop of 87.5 % of the shorter side resized to
    ``size`` (Resize(256) + CenterCrop(224)); then ToTensor and Normalize."""

    def __init__(self, files: list[Path], labels: list[int], recipe: str, size: int, mean, std) -> None:
        self.files, self.labels, self.recipe, self.size = files, labels, recipe, size
        self.views = 2 if recipe == "two_view" else 1
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.files)

    def _view(self, image):
        from PIL import Image

        width, height = image.size
        if self.recipe == "eval":
            side = round(0.875 * min(width, height))
            left, top = (width - side) // 2, (height - side) // 2
            box = (left, top, left + side, top + side)
        else:
            box = _random_resized_box(width, height, (0.08, 1.0), (3 / 4, 4 / 3))
        view = image.resize((self.size, self.size), Image.Resampling.BILINEAR, box=box)
        if self.recipe != "eval" and random.random() < 0.5:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.array(view, dtype=np.uint8)).permute(2, 0, 1).float().div(255)
        return (x - self.mean) / self.std

    def __getitem__(self, index: int):
        from PIL import Image

        with open(self.files[index], "rb") as f:
            image = Image.open(f).convert("RGB")
        views = tuple(self._view(image) for _ in range(self.views))
        return (views[0] if self.views == 1 else views), self.labels[index], index


def folder_files(root: Path) -> tuple[list[Path], list[int]]:
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    files, labels = [], []
    for label, name in enumerate(classes):
        found = sorted((root / "train" / name).glob("*.jpg"))
        files += found
        labels += [label] * len(found)
    return files, labels


# ---------------------------------------------------------------------------------------------
# Measuring (worker side)


def _descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents.setdefault(int(fields[1]), []).append(int(entry))
    found, stack = [], [pid]
    while stack:
        for child in parents.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class TreeMemory:
    """Peak summed PSS of this process and its descendants, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.1) -> None:
        self.peak, self.interval = 0, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(_pss(p) for p in [me, *_descendants(me)]))
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def _make_loader(spec: dict, recipe: str):
    """(loader, device to move batches to or None, info)."""
    device = torch.device(spec["device"])
    if spec["loader"].startswith("pil-"):
        files, labels = folder_files(Path(spec["folder"]))
        data = FolderViews(files, labels, recipe, spec["view_size"], spec["mean"], spec["std"])
        pin = device.type == "cuda"
        loader = torch.utils.data.DataLoader(
            data, batch_size=spec["batch_size"], shuffle=True, num_workers=spec["workers"],
            persistent_workers=spec["workers"] > 0, drop_last=True, pin_memory=pin,
            generator=torch.Generator().manual_seed(spec["seed"]))
        return loader, (device if pin else None), {"decoder": "pillow (per sample)", "workers": spec["workers"]}
    from coun_fast.data import AugmentedLoader, load_dataset

    train = load_dataset("sharded", spec["packed"], image_size=spec["view_size"]).train
    where = torch.device("cpu") if spec["loader"] == "cpu" else device
    loader = AugmentedLoader(train, recipe, batch_size=spec["batch_size"], backend=spec["loader"], device=where,
                             drop_last=True, seed=spec["seed"], workers=spec["workers"])
    return loader, None, {"decoder": loader.augmenter.decoder, "workers": loader.augmenter.workers}


def measure_recipe(spec: dict, recipe: str) -> dict:
    device = torch.device(spec["device"])
    random.seed(spec["seed"])
    memory = TreeMemory()
    started = time.perf_counter()
    loader, move_to, info = _make_loader(spec, recipe)
    views_expected = 2 if recipe == "two_view" else 1
    size = spec["view_size"]

    def endless():
        while True:
            yield from loader

    stream = endless()

    def take() -> tuple[torch.Tensor, int]:
        inputs, labels = next(stream)[:2]
        views = _views_of(inputs)
        if move_to is not None:
            views = [v.to(move_to, non_blocking=True) for v in views]
            labels = labels.to(move_to, non_blocking=True)
        if len(views) != views_expected or any(tuple(v.shape) != (len(labels), 3, size, size) for v in views):
            raise ValueError(f"unexpected batch: {[tuple(v.shape) for v in views]}")
        return _touch(views, labels), len(labels)

    try:
        for _ in range(spec["warmup"]):
            take()
        harness.synchronize(device)
        setup_s = time.perf_counter() - started
        samples_ms, checksum, count = [], 0.0, 0
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
    finally:
        stream.close()
        peak_pss = memory.stop()
        if hasattr(loader, "close"):
            loader.close()
        del stream, loader
    if not math.isfinite(checksum):
        raise ValueError(f"non-finite values in the batches (checksum {checksum})")
    timing = harness.summarize(samples_ms)
    return {"status": "ok", **harness.timing_dict(timing), "images": count, "views": views_expected,
            "setup_s": setup_s, "peak_pss_mib": peak_pss / 2**20,
            "peak_rss_mib": harness._status_kib("VmHWM") / 1024, **info}


def measure(spec: dict) -> dict:
    torch.set_num_threads(spec["threads"] or torch.get_num_threads())
    results = {}
    for recipe in spec["recipes"]:
        try:
            results[recipe] = measure_recipe(spec, recipe)
        except Exception as exc:  # recorded; the other recipes go on
            results[recipe] = {"status": harness.failure_status(exc)}
    return results


# ---------------------------------------------------------------------------------------------
# Driver


@dataclass(frozen=True)
class Config:
    device: str
    num_images: int
    image_size: int
    view_size: int
    recipes: list[str]
    backends: list[str]
    batch_size: int
    batches: int
    warmup: int
    reps: int
    workers: int
    threads: int | None
    seed: int
    data_dir: Path | None
    keep: bool
    timeout_s: float
    out: Path

    @property
    def baseline(self) -> str:
        return f"pil-{self.workers}w"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, help="generated training images (default 50000; --quick 5000)")
    parser.add_argument("--image-size", type=int, default=256, help="shorter side of the generated images (256)")
    parser.add_argument("--view-size", type=int, default=224, help="side of the views (224)")
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=["two_view"])
    parser.add_argument("--backends", nargs="+", choices=PACKAGE_BACKENDS, default=list(PACKAGE_BACKENDS))
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default cuda when available")
    parser.add_argument("--batch-size", type=int, help="default 256 (--quick 128)")
    parser.add_argument("--batches", type=int, help="timed batches per measurement (default 8; --quick 4)")
    parser.add_argument("--warmup", type=int, help="untimed batches first (default 2; --quick 1)")
    parser.add_argument("--reps", type=int, help="measurements per loader (median; default 3)")
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding worker processes of the baseline and of the package's Pillow paths "
                             "(default: one per core, at most 16)")
    parser.add_argument("--threads", type=int, help="torch threads in the measuring processes (default torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path,
                        help="where the image folder and the packed shards go (kept, and reused when they match); "
                             "default: a temporary folder, deleted at the end unless --keep")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data folder")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds before a loader's process is killed")
    parser.add_argument("--out", type=Path, default=SCRIPT.parent / "results")
    parser.add_argument("--quick", action="store_true", help="5000 images, batch 128, fewer batches")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def make_config(args: argparse.Namespace) -> Config:
    base = QUICK if args.quick else DEFAULTS

    def pick(name: str) -> int:
        return harness.option(args, base, name)

    from coun_fast.data.stream import default_workers

    config = Config(
        device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"), num_images=pick("num_images"),
        image_size=args.image_size, view_size=args.view_size, recipes=args.recipes, backends=args.backends,
        batch_size=pick("batch_size"), batches=pick("batches"), warmup=pick("warmup"), reps=pick("reps"),
        workers=default_workers() if args.workers is None else args.workers, threads=args.threads, seed=args.seed,
        data_dir=args.data_dir, keep=args.keep, timeout_s=args.timeout, out=args.out,
    )
    harness.require_positive(config, ("num_images", "image_size", "view_size", "batch_size", "batches", "reps", "workers"))
    if config.num_images < config.batch_size * (config.warmup + config.batches):
        raise SystemExit("--num-images must cover the warm-up and timed batches of one measurement")
    return config


def make_row(config: Config, loader: str, recipe: str, result: dict) -> dict:
    ok = result.get("status") == "ok"
    per_s = result["images"] / (result["p50_ms"] * 1e-3) if ok else None
    return {
        "recipe": recipe, "loader": loader, "kind": "baseline" if loader.startswith("pil-") else "package",
        "device": "cpu" if loader == "cpu" else config.device, "decoder": result.get("decoder"),
        "workers": result.get("workers"), "views": result.get("views"), "view_size": config.view_size,
        "batch_size": config.batch_size, "batches": config.batches, "reps": result.get("reps"),
        "images": result.get("images"), "p50_ms": result.get("p50_ms"), "p20_ms": result.get("p20_ms"),
        "p80_ms": result.get("p80_ms"), "images_per_s": per_s, "ratio_vs_baseline": None,
        "peak_pss_mib": result.get("peak_pss_mib"), "peak_rss_mib": result.get("peak_rss_mib"),
        "setup_s": result.get("setup_s"), "other_load": result.get("other_load"),
        "status": result.get("status", "error: no result"),
    }


def _fmt(value, pattern: str = "{:.0f}") -> str:
    return "-" if value is None else pattern.format(value)


COLUMNS = (
    ("recipe", lambda r: r["recipe"]), ("loader", lambda r: r["loader"]), ("device", lambda r: r["device"]),
    ("decoder", lambda r: r["decoder"] or "-"), ("workers", lambda r: _fmt(r["workers"])),
    ("images/s", lambda r: _fmt(r["images_per_s"])), ("vs baseline", lambda r: _fmt(r["ratio_vs_baseline"], "{:.2f}x")),
    ("peak PSS MiB", lambda r: _fmt(r["peak_pss_mib"])), ("peak RSS MiB", lambda r: _fmt(r["peak_rss_mib"])),
    ("other load", lambda r: _fmt(r["other_load"], "{:.2f}")), ("status", lambda r: r["status"][:60]),
)


def main(argv: list[str] | None = None) -> int:
    return harness.run_script(parse_args(argv), measure, make_config, drive)


def drive(config: Config) -> int:
    """The driver's run, after the device check (harness.run_script)."""
    started = time.perf_counter()
    scratch = None
    root = config.data_dir
    if root is None:
        scratch = Path(tempfile.mkdtemp(prefix="bench_large_data_"))
        root = scratch
    root.mkdir(parents=True, exist_ok=True)
    try:
        folder = root / "images"
        print(f"generating {config.num_images} JPEGs in {folder} ...", flush=True)
        generated = generate_folder(folder, config.num_images, config.image_size, config.seed, os.cpu_count() or 1)
        print(f"  {generated['images']} images, {generated['bytes'] / 2**20:.0f} MiB "
              f"({generated['seconds']:.0f} s when made)", flush=True)
        from coun_fast.data.pack import is_packed, pack
        from coun_fast.data.shards import open_sharded

        packed, packed_from = root / "packed", root / "packed_from.json"
        pack_s = None
        fresh = is_packed(packed) and packed_from.is_file() and json.loads(packed_from.read_text()) == generated["settings"]
        if not fresh:
            print(f"packing into {packed} ...", flush=True)
            begin = time.perf_counter()
            pack(folder, packed, overwrite=True, progress=False, stats_images=5_000)
            pack_s = time.perf_counter() - begin
            packed_from.write_text(json.dumps(generated["settings"]))
        train = open_sharded(packed).train
        norm = train.normalization
        total = len(train) + len(open_sharded(packed).test)
        if pack_s is not None:
            print(f"  packed {total} images in {pack_s:.1f} s ({total / pack_s:.0f} images/s), "
                  f"{len(train.shards)} train shards, {train.stored_bytes / 2**20:.0f} MiB", flush=True)
        spec_base = {"device": config.device, "view_size": config.view_size, "batch_size": config.batch_size,
                     "batches": config.batches, "warmup": config.warmup, "reps": config.reps, "seed": config.seed,
                     "threads": config.threads, "recipes": config.recipes, "folder": str(folder),
                     "packed": str(packed), "mean": list(norm.mean), "std": list(norm.std)}
        loaders = [config.baseline, *config.backends]
        results = {}
        run_load = harness.OtherLoad()
        for loader in loaders:
            print(f"measuring {loader} ...", flush=True)
            load = harness.OtherLoad()
            outcome = harness.run_isolated(SCRIPT, {**spec_base, "loader": loader, "workers": config.workers},
                                           config.timeout_s)
            results[loader] = {r: outcome for r in config.recipes} if "status" in outcome else outcome
            other = load.cores()
            for recipe in config.recipes:
                results[loader][recipe] = {**results[loader][recipe], "other_load": other}
                row = make_row(config, loader, recipe, results[loader][recipe])
                shown = row["status"] if row["status"] != "ok" else (
                    f"{row['images_per_s']:.0f} images/s, peak PSS {row['peak_pss_mib']:.0f} MiB")
                print(f"  {recipe}: {shown}", flush=True)
        rows = [make_row(config, loader, recipe, results[loader][recipe]) for recipe in config.recipes
                for loader in loaders]
        reference = {r["recipe"]: r["images_per_s"] for r in rows if r["loader"] == config.baseline and r["images_per_s"]}
        for row in rows:
            if row["images_per_s"] and row["recipe"] in reference:
                row["ratio_vs_baseline"] = row["images_per_s"] / reference[row["recipe"]]
        header = harness.environment_header("large_data", torch.device(config.device), REPO, torch.get_num_threads(), {
            "timing_method": TIMING_METHOD, "memory_method": MEMORY_METHOD,
            "data": {"generated": generated, "packed": str(packed), "train_images": len(train),
                     "train_shards": len(train.shards), "stored_mib": train.stored_bytes / 2**20, "pack_s": pack_s,
                     "normalization": {"mean": list(norm.mean), "std": list(norm.std)}},
            "baseline": (f"{config.baseline}: torch.utils.data.DataLoader(batch_size, shuffle=True, num_workers="
                         f"{config.workers}, persistent_workers=True, drop_last=True) over the image folder, one "
                         "PIL image per __getitem__ (see FolderViews); on a CUDA run pin_memory=True and each batch "
                         "copied to the GPU"),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in config.__dict__.items()},
            "other_load_cores": run_load.cores(),
        })
    finally:
        if scratch is not None and not config.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    header["wall_s"] = time.perf_counter() - started
    stem = f"large_data_{config.device}_{header['timestamp']}"
    json_path, csv_path = harness.write_results(rows, header, config.out, stem)
    print()
    print(harness.format_table(rows, COLUMNS))
    print()
    print(f"images/s: source images per second (each with {', '.join(sorted({str(r['views']) for r in rows if r['views']}))} "
          f"view(s) of {config.view_size} px); median of {config.reps} x {config.batches} batches of {config.batch_size}; "
          f"ratio over {config.baseline} for the same recipe. Peak PSS: the measuring process and its workers.")
    for row in rows:
        if row["loader"] == "cpu" and row["ratio_vs_baseline"]:
            verdict = "meets" if row["ratio_vs_baseline"] >= 1 else "MISSES"
            print(f"{row['recipe']}: cpu path {row['ratio_vs_baseline']:.2f}x {config.baseline} "
                  f"({verdict} the >= 1x target)")
        if config.device == "cuda" and row["loader"] in ("dali", "torch") and row["ratio_vs_baseline"]:
            verdict = "meets" if row["ratio_vs_baseline"] >= 10 else "MISSES"
            print(f"{row['recipe']}: {row['loader']} ({row['decoder']}) {row['ratio_vs_baseline']:.1f}x "
                  f"{config.baseline} ({verdict} the >= 10x GPU target)")
    other = header["other_load_cores"]
    if other is not None and other > 0.25:
        print(f"other processes kept {other:.2f} cores busy on average: timings are disturbed")
    print(f"total {header['wall_s']:.0f} s\nwrote {json_path}\nwrote {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
