"""Data: in-memory data sets, forget/retain splits, and per-sample augmentation on the device.

>>> from coun_fast import data
>>> splits = data.load_dataset("digits")                      # or "cifar10", path, ...
>>> split = data.random_split(len(splits.train), 0.1, seed=0)
>>> loader = data.AugmentedLoader(splits.train, "two_view", indices=split.retain, batch_size=256)
>>> for (x1, x2), y, idx in loader:
...     ...

Backends: ``dali`` (GPU, or CPU with ``device_id=None``), ``torch`` (the package's own batched ops
on the device) and ``cpu`` (the plain reference); ``auto`` picks one and logs why.

Data sets larger than memory: :func:`coun_fast.data.pack.pack` (``coun-fast data pack``) writes memory-mapped
JPEG shards; ``load_dataset("sharded", out)`` (or ``open_sharded``) reads them as
:class:`ShardedDataset`, which the loader streams batch by batch (:mod:`.shards`, :mod:`.stream`).
"""

from coun_fast.data.dataset import DatasetSplits, ImageDataset
from coun_fast.data.loader import AugmentedLoader, Batch
from coun_fast.data.recipes import RECIPES, Normalization, Recipe, channel_stats, get_recipe
from coun_fast.data.registry import DATASETS, load_dataset
from coun_fast.data.shards import ShardedDataset, open_sharded
from coun_fast.data.splits import (
    ForgetSplit,
    check_within_training,
    class_split,
    class_test_subsets,
    make_split,
    random_split,
    sequential_split,
)

__all__ = [
    "AugmentedLoader",
    "Batch",
    "DATASETS",
    "DatasetSplits",
    "ForgetSplit",
    "ImageDataset",
    "Normalization",
    "RECIPES",
    "Recipe",
    "ShardedDataset",
    "channel_stats",
    "check_within_training",
    "class_split",
    "class_test_subsets",
    "get_recipe",
    "load_dataset",
    "make_split",
    "open_sharded",
    "random_split",
    "sequential_split",
]
