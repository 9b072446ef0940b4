"""Look at a data set (its summary, and a PNG grid of augmented views next to the originals), or
pack one into memory-mapped shards.

    python -m coun_fast.data digits --grid views.png
    coun-fast data cifar10 --data cifar10_jpeg.npz --recipe simclr --grid views.png
    coun-fast data pack /data/imagenet /data/imagenet-shards      # see coun_fast.data.pack
    coun-fast data sharded --data /data/imagenet-shards --verify
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
from coun_fast.data.shards import is_sharded


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
    originals = _originals(dataset, indices.cpu().numpy(), loader.image_size)
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


def _originals(dataset: ImageDataset, indices: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The images at ``indices`` as uint8 (B, H, W, 3) of the views' ``size`` (sharded data sets
    decode just these, resized to it for display)."""
    if not is_sharded(dataset):
        return dataset.decoded().images[indices]
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR))
                     for image in dataset.decode(indices)])


def save_grid(path: str, grid: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(grid).save(path)


PACK_DESCRIPTION = (
    "Write a data set of any size as memory-mapped JPEG shards that the loaders stream batch by batch "
    "(load it as dataset 'sharded'). SRC is an image folder in the ImageNet layout (SRC/train/<class>/<images>, "
    "SRC/val/<class>/... or SRC/test/), a packed-JPEG .npz, or a CIFAR pickle folder. RGB and grey JPEG files "
    "are copied byte for byte, other images re-encoded as JPEG. OUT gets manifest.json (classes, counts, image "
    "sizes, normalization, SHA-256 of every shard) and the shard files; it is written in .OUT.partial and "
    "renamed into place when complete, so a failed pack leaves no OUT and an existing OUT untouched."
)


def _show_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="PATH", default=None,
                        help="its location: a CIFAR pickle folder, an image folder, a packed-JPEG .npz or a packed "
                             "(sharded) folder (digits and synthetic need none)")
    parser.add_argument("--split", choices=("train", "test"), default="train", help="split to show (default: train)")
    parser.add_argument("--image-size", type=int, default=None, metavar="PIXELS",
                        help="resize images to this square size when loading (folders, digits); for a sharded "
                             "folder the views' size")
    parser.add_argument("--grid", metavar="PNG", default=None,
                        help="write a grid of augmented samples here: each row an original and its views")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="two_view", help="augmentation of the grid")
    parser.add_argument("--samples", type=int, default=8, help="rows of the grid (default: 8)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="augmentation backend (default: auto)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples and views (default: 0)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--verify", action="store_true",
                        help="sharded: check every shard's SHA-256 against the manifest (reads all the data)")


def _pack_arguments(parser: argparse.ArgumentParser) -> None:
    from coun_fast.data.pack import SOURCE_KINDS

    parser.add_argument("src", metavar="SRC", help="an image folder (SRC/train/<class>/..., SRC/val/<class>/...), "
                                                   "a packed-JPEG .npz, or a CIFAR pickle folder")
    parser.add_argument("out", metavar="OUT", help="the folder to write (manifest.json and the shard files)")
    parser.add_argument("--format", choices=SOURCE_KINDS, default="auto", help="what SRC is (default: auto)")
    parser.add_argument("--name", help="the data set's name (default: SRC's name; cifar10/cifar100 for CIFAR)")
    parser.add_argument("--shard-size", type=float, default=256, metavar="MIB",
                        help="JPEG bytes per shard file, in MiB (default: 256)")
    parser.add_argument("--quality", type=int, default=95,
                        help="JPEG quality of images that are (re-)encoded: CIFAR, PNG, CMYK... (default: 95)")
    parser.add_argument("--stats-images", type=int, default=50_000, metavar="N",
                        help="training images decoded for the normalization statistics, evenly spaced "
                             "(default: 50000; 0: all)")
    parser.add_argument("--label-kind", choices=("fine", "coarse"), default="fine", help="CIFAR-100's labels")
    parser.add_argument("--threads", type=int, default=None, help="reading/encoding threads (default: one per core)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a packed data set in OUT (it stays untouched until the new one is complete)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``DATASET [options]`` to look at a data set, or ``pack SRC OUT [options]``."""
    commands = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET | pack")
    for name, text in DATASETS.items():
        _show_arguments(commands.add_parser(name, help=text, description=f"Summarize {name}: {text}"))
    pack = commands.add_parser("pack", help="pack a data set into memory-mapped JPEG shards (for any size)",
                               description=PACK_DESCRIPTION)
    _pack_arguments(pack)


def run_pack(args: argparse.Namespace) -> int:
    from coun_fast.data.pack import pack
    from coun_fast.data.shards import open_sharded

    out = pack(args.src, args.out, source_kind=args.format, name=args.name, shard_mib=args.shard_size,
               quality=args.quality, stats_images=args.stats_images, threads=args.threads,
               label_kind=args.label_kind, overwrite=args.overwrite, progress=not args.no_progress)
    splits = open_sharded(out)
    for data in splits:
        print(f"{data.split:<5} {len(data)} images in {len(data.shards)} shard(s), {data.stored_bytes / 1024**2:.1f} MiB")
    print(f"wrote {out} (classes: {splits.train.num_classes}; normalization mean "
          f"{[round(m, 4) for m in splits.train.normalization.mean]}, std "
          f"{[round(v, 4) for v in splits.train.normalization.std]})")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.dataset == "pack":
        return run_pack(args)
    splits = load_dataset(args.dataset, args.data, image_size=args.image_size)
    dataset = getattr(splits, args.split)
    if args.verify:
        if not is_sharded(dataset):
            raise ValueError("--verify checks the shards of a sharded data set; use it with 'coun-fast data sharded'")
        for data in splits:
            data.verify()
        print(f"verified: every shard's SHA-256 matches {data.root}/manifest.json")
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
                    "optionally write a PNG grid of augmented samples so you can look at the views; or, with "
                    "'pack SRC OUT', write a data set of any size as memory-mapped JPEG shards.",
    )
    add_arguments(parser)
    return parser
