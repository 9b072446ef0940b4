"""Look at a data set: its summary, and a PNG grid of augmented views next to the originals.

    python -m coun_fast.data digits --grid views.png
    coun-fast data cifar10 --data cifar10_jpeg.npz --recipe simclr --grid views.png
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from coun_fast.data.backends import BACKENDS
from coun_fast.data.dataset import ImageDataset
from coun_fast.data.loader import AugmentedLoader
from coun_fast.data.recipes import RECIPES
from coun_fast.data.registry import DATASETS, load_dataset


def view_grid(dataset: ImageDataset, recipe: str = "two_view", *, samples: int = 8, seed: int = 0,
              backend: str = "auto", device=None, scale: int | None = None) -> tuple[np.ndarray, list[str]]:
    """An RGB uint8 image: one row per sample (the original, then each view of ``recipe``).

    Returns the grid and the class name of each row. Tiles are enlarged ``scale`` times (default:
    to about 96 pixels) with nearest-neighbour sampling so small images stay readable.
    """
    loader = AugmentedLoader(dataset, recipe, batch_size=min(samples, len(dataset)), backend=backend,
                             device=device, seed=seed)
    inputs, _, indices = next(iter(loader))
    views = inputs if isinstance(inputs, tuple) else (inputs,)
    mean = torch.tensor(loader.normalization.mean).view(1, 3, 1, 1)
    std = torch.tensor(loader.normalization.std).view(1, 3, 1, 1)
    originals = dataset.decoded().images[indices.cpu().numpy()]
    columns = [originals] + [
        ((v.float().cpu() * std + mean).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy() for v in views
    ]
    height, width = loader.image_size
    scale = scale or max(1, round(96 / max(height, width)))
    gap = 2
    rows = len(originals)
    grid = np.full((rows * (height * scale + gap) + gap, len(columns) * (width * scale + gap) + gap, 3), 255, np.uint8)
    for c, column in enumerate(columns):
        for r, tile in enumerate(column):
            tile = tile.repeat(scale, 0).repeat(scale, 1)
            y, x = gap + r * (height * scale + gap), gap + c * (width * scale + gap)
            grid[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
    names = [dataset.classes[label] for label in dataset.labels[indices.cpu().numpy()]]
    return grid, names


def save_grid(path: str, grid: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(grid).save(path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=DATASETS, help="which data set to read")
    parser.add_argument("--data", metavar="PATH", default=None,
                        help="its location: a CIFAR pickle folder, an image folder, or a packed-JPEG .npz "
                             "(digits and synthetic need none)")
    parser.add_argument("--split", choices=("train", "test"), default="train", help="split to show (default: train)")
    parser.add_argument("--image-size", type=int, default=None, metavar="PIXELS",
                        help="resize images to this square size when loading (folders, digits)")
    parser.add_argument("--grid", metavar="PNG", default=None,
                        help="write a grid of augmented samples here: each row an original and its views")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="two_view", help="augmentation of the grid")
    parser.add_argument("--samples", type=int, default=8, help="rows of the grid (default: 8)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="augmentation backend (default: auto)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples and views (default: 0)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    splits = load_dataset(args.dataset, args.data, image_size=args.image_size)
    dataset = getattr(splits, args.split)
    summary = dataset.summary()
    summary["normalization"] = {"mean": list(splits.train.normalization.mean), "std": list(splits.train.normalization.std)}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            if key == "class_counts":
                value = ", ".join(f"{n}: {c}" for n, c in zip(dataset.classes, value))
            elif key == "classes":
                continue
            print(f"{key:<14} {value}")
    if args.grid:
        grid, names = view_grid(dataset, args.recipe, samples=args.samples, seed=args.seed, backend=args.backend)
        save_grid(args.grid, grid)
        views = RECIPES[args.recipe].views
        print(f"wrote {args.grid}: {len(names)} rows (original + {views} view{'s' * (views > 1)} of '{args.recipe}'), "
              f"classes {', '.join(names)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m coun_fast.data",
        description="Summarize a data set (size, image size, classes, per-class counts, normalization) and "
                    "optionally write a PNG grid of augmented samples so you can look at the views.",
    )
    add_arguments(parser)
    return parser
